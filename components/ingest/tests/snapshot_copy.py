"""Test helper: a private copy of an ingested dataset root and its splits.

The session's ``dataset_dirs`` fixture is shared by many tests; a test that deletes a
snapshot's photos, or wants to see its shards built, works on a copy instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def copy_snapshot(dataset_dirs, out: Path, shards: bool = False) -> tuple[Path, list[str]]:
    """Copies the dataset root behind ``dataset_dirs`` (without its shards unless asked) and
    rewrites each split folder to point at the copy.

    Returns:
        (the copied dataset root, [train_dir, test_dir] of the copy).
    """
    src_root = Path(dataset_dirs[0]).parent / "ds"
    root = out / "ds"
    shutil.copytree(src_root, root, ignore=None if shards else shutil.ignore_patterns("shards"))
    old, new = src_root.as_uri() + "/", root.as_uri() + "/"
    dirs = []
    for split_dir in dataset_dirs:
        split_dir = Path(split_dir)
        copy = out / split_dir.name
        copy.mkdir(parents=True)
        manifest = (split_dir / "manifest.csv").read_text()
        (copy / "manifest.csv").write_text(manifest.replace(old, new))
        meta = json.loads((split_dir / "dataset.json").read_text())
        meta = {k: (v + "/").replace(old, new)[:-1] if isinstance(v, str) else v
                for k, v in meta.items()}
        (copy / "dataset.json").write_text(json.dumps(meta))
        dirs.append(str(copy))
    return root, dirs


def remove_photos(root: Path) -> int:
    """Deletes every photo of the copied snapshot (``objects/``); returns how many."""
    photos = [p for p in (root / "objects").rglob("*") if p.is_file()]
    shutil.rmtree(root / "objects")
    return len(photos)
