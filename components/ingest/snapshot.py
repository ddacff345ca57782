"""A published dataset snapshot read back: its manifest, the versions under a dataset root, and
the split folders (a manifest of image URIs) that travel between pipeline steps."""

from __future__ import annotations

import io
import json

import pandas as pd

from components.common.storage import ObjectNotFoundError, open_store
from components.ingest.core import PUBLISHED_PREFIX, IngestError, IngestResult


def root_of_snapshot(snapshot_uri: str) -> str:
    """The dataset root of a snapshot's URI (``<root>/versions/<version>``)."""
    return snapshot_uri.rstrip("/").rsplit("/versions/", 1)[0]


def load_snapshot(dataset_root_uri: str, version: str) -> pd.DataFrame:
    """Reads a published snapshot's manifest, verified against its publish checksums."""
    root = open_store(dataset_root_uri)
    snapshot = f"versions/{version}"
    if not root.is_published(snapshot):
        raise IngestError(f"Dataset version {version!r} is not published under "
                          f"{root.uri}. List versions with `mlops data versions`.")
    data = root.read_published(snapshot, "manifest.csv")
    return pd.read_csv(io.BytesIO(data), dtype={"key": str, "sha256": str, "label": str,
                                                "split": str}, keep_default_na=False)


def published_result(dataset_root_uri: str, version: str) -> IngestResult:
    """A published dataset version read back as the result of the ingestion that published it
    (manifest, statistics, report, quarantine and duplicates, each verified), so that a
    pipeline can train on a version without reading the lake again."""
    manifest = load_snapshot(dataset_root_uri, version)
    root = open_store(dataset_root_uri)
    snapshot = f"versions/{version}"

    def table(name: str) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(root.read_published(snapshot, name)), dtype=str,
                           keep_default_na=False)

    report = json.loads(root.read_published(snapshot, "report.json"))
    report.update(decoded=0, cache_hits=0)
    return IngestResult(version=version, snapshot_uri=root.uri_of(snapshot),
                        objects_uri=root.child("objects").uri, manifest=manifest,
                        report=report,
                        stats=json.loads(root.read_published(snapshot, "stats.json")),
                        created=False, quarantine=table("quarantine.csv"),
                        duplicates=table("duplicates.csv"))


def list_versions(dataset_root_uri: str) -> list[str]:
    """Published dataset versions under a dataset root."""
    root = open_store(dataset_root_uri)
    return sorted({o.key.split("/")[1] for o in root.list("versions")
                   if o.key.endswith("/_PUBLISHED")})


def version_summaries(dataset_root_uri: str) -> list[dict]:
    """Each published version with when it was published, from which lake, how many images
    of which classes and their bytes, oldest first (a version published before these were
    recorded has no date or bytes)."""
    root = open_store(dataset_root_uri)
    out = []
    for version in list_versions(dataset_root_uri):
        report = json.loads(root.read_published(f"versions/{version}", "report.json"))
        try:
            record = root.get_json(f"{PUBLISHED_PREFIX}/{version}.json")
        except ObjectNotFoundError:
            record = {}
        counts: dict[str, int] = {}
        for split in (report.get("splits") or {}).values():
            for cls, n in split.items():
                counts[cls] = counts.get(cls, 0) + int(n)
        out.append({"version": version, "published_at": record.get("published_at"),
                    "source_uri": report.get("source_uri"), "images": report.get("ingested"),
                    "classes": counts, "bytes": record.get("bytes")})
    return sorted(out, key=lambda v: (v["published_at"] or "", v["version"]))


def write_split(result: IngestResult, split: str, path: str) -> dict:
    """Writes one split as a dataset folder (``manifest.csv``, ``dataset.json``).

    The folder holds a manifest, not the images: every row has the ``uri`` of its image in the
    snapshot's content-addressed store, so a split of 80,000 images is a small artifact and
    the images are never copied twice.

    Returns:
        The metadata to attach to the KFP artifact.
    """
    import os

    rows = result.split_manifest(split)
    os.makedirs(path, exist_ok=True)
    rows.to_csv(os.path.join(path, "manifest.csv"), index=False, lineterminator="\n")
    stats = result.stats[split]
    meta = {
        "dataset_version": result.version,
        "split": split,
        "count": int(len(rows)),
        "classes": result.report["classes"],
        "class_counts": stats["class_counts"],
        "source_uri": result.report["source_uri"],
        "snapshot_uri": result.snapshot_uri,
        "objects_uri": result.objects_uri,
    }
    with open(os.path.join(path, "dataset.json"), "w") as f:
        json.dump({**meta, "statistics": stats}, f, indent=2, sort_keys=True)
    return meta


def read_split(path: str) -> tuple[pd.DataFrame, dict]:
    """Reads a dataset folder written by :func:`write_split`."""
    import os

    with open(os.path.join(path, "dataset.json")) as f:
        meta = json.load(f)
    rows = pd.read_csv(os.path.join(path, "manifest.csv"), dtype={"key": str, "sha256": str,
                                                                  "label": str, "uri": str},
                       keep_default_na=False)
    return rows, meta


