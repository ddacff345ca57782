"""Training-ready shards: a dataset version's images preprocessed once per input size.

Training reads the same images for every search trial, the final training and evaluation;
decoding camera-sized JPEGs each time costs far more than the training itself. A dataset
version's images are therefore preprocessed once per input size, with the very function the
predictor uses (:func:`components.common.images.preprocess_image`), into a few large
``uint8`` arrays that readers memory-map. Layout, in the dataset root::

    shards/objects/<sha256>.npy            N x 3 x S x S uint8 arrays, content-addressed
    shards/<version>/<size>/index.csv      sha256, shard, row  (published atomically)

The index is published with the storage layer's atomic publish: a reader sees all of it or
none of it. Shards are deterministic (same version and size: same bytes), so two trials that
build them at the same time write the same objects and publish the same index, which the
storage layer accepts as one publish. Every shard is verified against its name (sha256) when
it is opened.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.storage import (
    LocalStore,
    ObjectNotFoundError,
    ObjectStore,
    StorageError,
    open_store,
    sha256_bytes,
)

logger = logging.getLogger(__name__)

#: Images per shard file: 4096 images of 64 px are 48 MiB.
SHARD_IMAGES = 4096


class ShardError(StorageError):
    """A shard that does not match its content hash, or an index that does not fit."""


def dataset_root_of(image_uri: str) -> str | None:
    """The dataset root an image URI of a snapshot lives in (``<root>/objects/ab/<sha>``)."""
    head, sep, _ = image_uri.rpartition("/objects/")
    return head if sep else None


def _index_prefix(version: str, size: int) -> str:
    return f"shards/{version}/{int(size)}"


def build_shards(dataset_root: str, version: str, size: int, workers: int = 8) -> pd.DataFrame:
    """Preprocesses every image of a published version at ``size`` into shards (idempotent).

    Returns:
        The index: sha256, shard (its sha256), row.
    """
    from components.ingest.core import load_snapshot, object_key
    from components.train.core import load_images

    root = open_store(dataset_root)
    prefix = _index_prefix(version, size)
    if root.is_published(prefix):
        return read_index(root, prefix)
    manifest = load_snapshot(dataset_root, version)
    shas = sorted(set(manifest["sha256"]))
    keys = manifest.drop_duplicates("sha256").set_index("sha256")["key"]
    objects = root.child("objects")
    rows = []
    for start in range(0, len(shas), SHARD_IMAGES):
        part = shas[start:start + SHARD_IMAGES]
        frame = pd.DataFrame({"sha256": part, "key": [keys[s] for s in part],
                              "uri": [objects.uri_of(object_key(s)) for s in part]})
        x = load_images(frame, size, workers=workers)  # verifies every image's hash
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(x), allow_pickle=False)
        data = buf.getvalue()
        shard = sha256_bytes(data)
        root.put(f"shards/objects/{shard}.npy", data)
        rows += [{"sha256": s, "shard": shard, "row": i} for i, s in enumerate(part)]
        logger.info("Shard %d: %d images at %d px (%.1f MiB)", start // SHARD_IMAGES,
                    len(part), size, len(data) / 2**20)
    index = pd.DataFrame(rows, columns=["sha256", "shard", "row"])
    root.publish(prefix, {"index.csv": index.to_csv(index=False, lineterminator="\n").encode()})
    logger.info("Published shards of %s at %d px: %d images in %d shards", version, size,
                len(index), index["shard"].nunique())
    return index


def read_index(root: ObjectStore, prefix: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(root.read_published(prefix, "index.csv")),
                       dtype={"sha256": str, "shard": str, "row": int}, keep_default_na=False)


def _cache_dir() -> Path:
    base = os.environ.get("MLOPS_SHARD_CACHE") or os.path.join(tempfile.gettempdir(),
                                                               "mlops-shards")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _open_shard(root: ObjectStore, shard: str) -> np.ndarray:
    """Memory-maps one shard after checking its bytes against its name."""
    key = f"shards/objects/{shard}.npy"
    if isinstance(root, LocalStore):
        path = root.root / "shards" / "objects" / f"{shard}.npy"
        if not path.is_file():
            raise ObjectNotFoundError(f"No shard {root.uri_of(key)}")
    else:  # S3: a local copy, downloaded once per machine
        path = _cache_dir() / f"{shard}.npy"
        if not path.is_file():
            data = root.get(key)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
    digest = _file_sha256(path)
    if digest != shard:
        raise ShardError(f"Shard {root.uri_of(key)} does not match its content hash "
                         f"(got {digest}): it was overwritten or corrupted. Delete "
                         f"shards/ of this version in the dataset root to rebuild it.")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_from_shards(rows: pd.DataFrame, dataset_root: str, version: str, size: int,
                     build: bool = True) -> np.ndarray:
    """The images of ``rows`` (a split's manifest) at ``size``, from the version's shards.

    Builds the shards first if they do not exist and ``build`` is set. The result is an
    in-memory ``N x 3 x S x S`` uint8 array gathered from memory-mapped shards; no JPEG is
    read.

    Raises:
        ShardError: A row's image is not in the shards, or a shard is corrupted.
    """
    root = open_store(dataset_root)
    prefix = _index_prefix(version, size)
    if root.is_published(prefix):
        index = read_index(root, prefix)
    elif build:
        index = build_shards(dataset_root, version, size)
    else:
        raise ObjectNotFoundError(f"No shards of {version} at {size} px under {root.uri}.")
    where = index.set_index("sha256")
    missing = [s for s in rows["sha256"] if s not in where.index]
    if missing:
        raise ShardError(f"{len(missing)} images of the split are not in the shards of "
                         f"{version} (first: {missing[0]}): the split is not from this version.")
    out = np.empty((len(rows), 3, size, size), np.uint8)
    located = where.loc[list(rows["sha256"])]
    for shard, group in pd.DataFrame({"shard": located["shard"].to_numpy(),
                                      "row": located["row"].to_numpy(),
                                      "pos": np.arange(len(rows))}).groupby("shard"):
        arr = _open_shard(root, shard)
        if arr.shape[1:] != (3, size, size):
            raise ShardError(f"Shard {shard} holds {arr.shape[1:]} arrays, not (3, {size}, "
                             f"{size}).")
        order = np.argsort(group["row"].to_numpy())
        out[group["pos"].to_numpy()[order]] = arr[group["row"].to_numpy()[order]]
    return out
