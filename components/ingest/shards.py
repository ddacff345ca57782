"""Training-ready shards: a dataset version's images preprocessed once per input size.

Every search trial, the final training, evaluation, the packaging parity check and the
monitoring reference read the same images; decoding camera-sized JPEGs each time costs far
more than the work done on them. A dataset version's images are therefore decoded once per
input size, with the very function the predictor uses
(:func:`components.common.images.decode_and_measure`: the pixels of
:func:`components.common.images.preprocess_image` and the input statistics of
``images.image_stats``, measured on the same decode), into a few large ``uint8`` arrays that
readers memory-map, and a table of the statistics. Layout, in the dataset root::

    shards/objects/<sha256>.npy            N x 3 x S x S uint8 arrays, content-addressed
    shards/<version>/<size>/index.csv      sha256, shard, row            (published
    shards/<version>/<size>/stats.csv      sha256, width, height, mode,   atomically,
                                           brightness, contrast, sharpness, together)
                                           colourfulness, context

The statistics are stored because they cannot be recomputed from the shards: the predictor
measures them on the draft-decoded photo (up to twice the input size, or the photo itself),
not on the resized network input, and the monitor must compare production with the reference
measured the same way.

The index is published with the storage layer's atomic publish: a reader sees all of it or
none of it. One process builds a version's shards at one size at a time, under the lease lock
``locks/shards-<version>-<size>.lock-<n>`` (:mod:`components.common.storage.lock`); another
trial that needs them waits for them instead of decoding every photo too. Shards are
deterministic (same version and size: same bytes). Every shard is verified against its name
(sha256) when it is opened; one that is missing or damaged is rebuilt from the version's
images, once, under the same lock, and said so at WARNING (if decoding gives other bytes now,
the error says which index to delete).

Readers call :func:`split_images` (or :func:`split_images_and_stats`) with a split's rows and
its dataset version: rows of a published snapshot are read from its shards (built by the
first caller at a new size), any other rows are decoded one by one, with the same result.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.images import decode_and_measure
from components.common.storage import (
    LocalStore,
    ObjectNotFoundError,
    ObjectStore,
    StorageError,
    open_store,
    sha256_bytes,
)
from components.common.storage.lock import LeaseLock, LockTimeout
from components.ingest.core import IngestError, object_key
from components.ingest.snapshot import load_snapshot

logger = logging.getLogger(__name__)

#: Images per shard file: 4096 images of 64 px are 48 MiB.
SHARD_IMAGES = 4096
#: The columns of a version's ``stats.csv`` (``images.image_stats``, per image).
STATS_COLUMNS = ("sha256", "width", "height", "mode", "brightness", "contrast", "sharpness",
                 "colourfulness", "context")


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

    Each image is read once, verified against its content hash and decoded once by
    ``images.decode_and_measure``; its network input goes to a shard and its input
    statistics to ``stats.csv``, published with the index.

    Returns:
        The index: sha256, shard (its sha256), row.

    Raises:
        IngestError: ``version`` is not published under ``dataset_root``.
        ShardError: A snapshot image does not match its content hash.
    """
    root = open_store(dataset_root)
    prefix = _index_prefix(version, size)
    if root.is_published(prefix):
        return read_index(root, prefix)
    # One builder at a time: another trial or reader that needs the same shards waits for
    # them instead of decoding every photo too.
    with _lock(root, version, size, "building", done=lambda: root.is_published(prefix)) as held:
        if not held:
            return read_index(root, prefix)
        return _build(root, dataset_root, version, size, workers)


def _lock(root: ObjectStore, version: str, size: int, doing: str, done=None) -> LeaseLock:
    """The one lock of a version's shards at one size: building them, and rebuilding one."""
    return LeaseLock(root, f"locks/shards-{version}-{int(size)}.lock",
                     what=f"{doing} the shards of dataset {version} at {int(size)} px in "
                          f"{root.uri}", done=done)


def _build(root: ObjectStore, dataset_root: str, version: str, size: int, workers: int
           ) -> pd.DataFrame:
    prefix = _index_prefix(version, size)
    manifest = load_snapshot(dataset_root, version)
    shas = sorted(set(manifest["sha256"]))
    keys = manifest.drop_duplicates("sha256").set_index("sha256")["key"]
    objects = root.child("objects")
    rows, stats = [], []
    for start in range(0, len(shas), SHARD_IMAGES):
        part = shas[start:start + SHARD_IMAGES]
        frame = pd.DataFrame({"sha256": part, "key": [keys[s] for s in part],
                              "uri": [objects.uri_of(object_key(s)) for s in part]})
        x, measured = decode_rows(frame, size, workers=workers)  # verifies every hash
        data = _shard_bytes(x)
        shard = sha256_bytes(data)
        root.put(f"shards/objects/{shard}.npy", data)
        rows += [{"sha256": s, "shard": shard, "row": i} for i, s in enumerate(part)]
        stats += [{"sha256": s, **m} for s, m in zip(part, measured, strict=True)]
        logger.info("Shard %d: %d images at %d px (%.1f MiB)", start // SHARD_IMAGES,
                    len(part), size, len(data) / 2**20)
    index = pd.DataFrame(rows, columns=["sha256", "shard", "row"])
    table = pd.DataFrame(stats, columns=list(STATS_COLUMNS))
    root.publish(prefix, {"index.csv": index.to_csv(index=False, lineterminator="\n").encode(),
                          "stats.csv": table.to_csv(index=False, lineterminator="\n").encode()})
    logger.info("Published shards of %s at %d px: %d images in %d shards", version, size,
                len(index), index["shard"].nunique())
    return index


def _shard_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x), allow_pickle=False)
    return buf.getvalue()


def decode_rows(rows: pd.DataFrame, size: int, workers: int = 8
                ) -> tuple[np.ndarray, list[dict]]:
    """Reads, verifies and decodes each row's image once, as the predictor does.

    Args:
        rows: ``uri`` of each image; ``sha256`` (checked against the bytes when present,
            else the object's name is taken as its hash only if it looks like one) and
            ``key`` (named in errors) are optional.
        size: The network input side.

    Returns:
        ``N x 3 x S x S`` uint8 network inputs and each image's ``images.image_stats``.

    Raises:
        ShardError: An image does not match its content hash.
        ImageRejected: An image cannot be decoded.
    """
    if rows.empty:
        return np.zeros((0, 3, size, size), np.uint8), []
    stores: dict[str, ObjectStore] = {}

    def one(row: tuple[str, str, str]) -> tuple[np.ndarray, dict]:
        uri, sha, key = row
        parent, name = uri.rsplit("/", 1)
        store = stores.get(parent) or stores.setdefault(parent, open_store(parent))
        data = store.get(name)
        expected = sha or (name if _looks_like_sha256(name) else "")
        if expected and sha256_bytes(data) != expected:
            raise ShardError(f"Image {key!r} ({uri}) does not match its content hash "
                             f"{expected}: the dataset snapshot was overwritten or corrupted. "
                             "Re-ingest the lake (the ingestion names every damaged object).")
        return decode_and_measure(data, size)

    shas = rows["sha256"] if "sha256" in rows else [""] * len(rows)
    keys = rows["key"] if "key" in rows else rows["uri"]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, zip(rows["uri"], shas, keys, strict=True)))
    return np.stack([r[0] for r in results]), [r[1] for r in results]


def _looks_like_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def read_index(root: ObjectStore, prefix: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(root.read_published(prefix, "index.csv")),
                       dtype={"sha256": str, "shard": str, "row": int}, keep_default_na=False)


def read_stats(root: ObjectStore, prefix: str) -> pd.DataFrame | None:
    """The published input statistics of a version's shards at one size, or None for shards
    built before the statistics (all of ``STATS_COLUMNS``: the context too) were stored with
    them."""
    marker = root.published_marker(prefix)
    if marker is None:
        raise ObjectNotFoundError(f"{root.uri_of(prefix)} is not a published folder.")
    if "stats.csv" not in marker.get("files", {}):
        return None
    table = pd.read_csv(io.BytesIO(root.read_published(prefix, "stats.csv")),
                        dtype={"sha256": str, "mode": str, "width": int, "height": int,
                               "brightness": float, "contrast": float, "sharpness": float,
                               "colourfulness": float, "context": str},
                        keep_default_na=False)
    return table if set(STATS_COLUMNS) <= set(table.columns) else None


def _cache_dir() -> Path:
    base = os.environ.get("MLOPS_SHARD_CACHE") or os.path.join(tempfile.gettempdir(),
                                                               "mlops-shards")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _shard_path(root: ObjectStore, shard: str, fresh: bool = False) -> Path:
    """A local file of one shard: in a local store itself; from S3, a copy downloaded once per
    machine (again if ``fresh``).

    Raises:
        ObjectNotFoundError: The store has no such shard.
    """
    key = f"shards/objects/{shard}.npy"
    if isinstance(root, LocalStore):
        path = root.root / "shards" / "objects" / f"{shard}.npy"
        if not path.is_file():
            raise ObjectNotFoundError(f"No shard {root.uri_of(key)}")
        return path
    path = _cache_dir() / f"{shard}.npy"
    if fresh or not path.is_file():
        data = root.get(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")  # threads download too
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def _intact(root: ObjectStore, shard: str) -> bool:
    """True if the store holds the shard with exactly the bytes its name says."""
    try:
        if _file_sha256(_shard_path(root, shard)) == shard:
            return True
        # A damaged local copy of an S3 shard is fetched again before the store's is blamed.
        return (not isinstance(root, LocalStore)
                and _file_sha256(_shard_path(root, shard, fresh=True)) == shard)
    except ObjectNotFoundError:
        return False


def _open_shard(root: ObjectStore, shard: str, index: pd.DataFrame | None = None,
                version: str = "", size: int = 0) -> np.ndarray:
    """Memory-maps one shard after checking its bytes against its name.

    A shard that is missing or does not match its name is rebuilt once from the version's
    images (``index``, ``version`` and ``size`` given), under the lock the first build took,
    and said so at WARNING.

    Raises:
        ShardError: The shard is damaged or missing and could not be rebuilt as it was.
    """
    if not _intact(root, shard):
        if index is None:
            raise ShardError(f"Shard {root.uri_of(f'shards/objects/{shard}.npy')} is missing "
                             "or does not match its content hash: it was deleted, overwritten "
                             "or corrupted. Delete shards/ of this version in the dataset "
                             "root to rebuild it.")
        _rebuild(root, shard, index, version, size)
        if not _intact(root, shard):  # fetches the rebuilt one (a copy of S3's was damaged)
            raise ShardError(f"Shard {root.uri_of(f'shards/objects/{shard}.npy')} was rebuilt "
                             "but the store does not hold it intact; check the store.")
    return np.load(_shard_path(root, shard), mmap_mode="r", allow_pickle=False)


def _rebuild(root: ObjectStore, shard: str, index: pd.DataFrame, version: str, size: int
             ) -> None:
    """Decodes a shard's images again and writes it, unless another process did meanwhile."""
    key = f"shards/objects/{shard}.npy"
    try:
        with _lock(root, version, size, "rebuilding a shard of"):
            if _intact(root, shard):
                logger.info("Shard %s was rebuilt meanwhile by another process",
                            root.uri_of(key))
                return
            shas = index[index["shard"] == shard].sort_values("row")["sha256"].to_list()
            logger.warning("Shard %s of dataset %s at %d px is missing or damaged; rebuilding "
                           "it from its %d images", root.uri_of(key), version, size, len(shas))
            objects = root.child("objects")
            frame = pd.DataFrame({"sha256": shas, "key": shas,
                                  "uri": [objects.uri_of(object_key(s)) for s in shas]})
            data = _shard_bytes(decode_rows(frame, size)[0])
            if sha256_bytes(data) != shard:
                raise ShardError(
                    f"Shard {root.uri_of(key)} is missing or damaged, and decoding its images "
                    "again gives other bytes (the preprocessing changed since it was built). "
                    f"Delete {root.uri_of(_index_prefix(version, size))} to build all of this "
                    "version's shards again.")
            root.put(key, data)
            logger.warning("Rebuilt shard %s (%d images)", root.uri_of(key), len(shas))
    except LockTimeout as exc:
        raise ShardError(f"Could not rebuild shard {root.uri_of(key)}: {exc}") from exc


def _file_sha256(path: Path) -> str:
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
        arr = _open_shard(root, shard, index, version, size)
        if arr.shape[1:] != (3, size, size):
            raise ShardError(f"Shard {shard} holds {arr.shape[1:]} arrays, not (3, {size}, "
                             f"{size}).")
        order = np.argsort(group["row"].to_numpy())
        out[group["pos"].to_numpy()[order]] = arr[group["row"].to_numpy()[order]]
    return out


def stats_from_shards(rows: pd.DataFrame, dataset_root: str, version: str, size: int,
                      build: bool = True) -> list[dict] | None:
    """The input statistics of ``rows`` at ``size`` (``images.image_stats`` of each image,
    stored when the shards were built), in the rows' order; None for shards built before
    statistics were stored with them.

    Raises:
        ShardError: A row's image is not in the version.
    """
    root = open_store(dataset_root)
    prefix = _index_prefix(version, size)
    if not root.is_published(prefix):
        if not build:
            raise ObjectNotFoundError(f"No shards of {version} at {size} px under {root.uri}.")
        build_shards(dataset_root, version, size)
    table = read_stats(root, prefix)
    if table is None:
        return None
    table = table.set_index("sha256")
    missing = [s for s in rows["sha256"] if s not in table.index]
    if missing:
        raise ShardError(f"{len(missing)} images are not in the shards of {version} (first: "
                         f"{missing[0]}): the rows are not from this version.")
    fields = [c for c in STATS_COLUMNS if c != "sha256"]
    located = table.loc[list(rows["sha256"]), fields]
    return [{"width": int(w), "height": int(h), "mode": str(m), "brightness": float(b),
             "contrast": float(c), "sharpness": float(s), "colourfulness": float(f),
             "context": str(x)}
            for w, h, m, b, c, s, f, x in located.itertuples(index=False, name=None)]


def snapshot_root(rows: pd.DataFrame, dataset_version: str) -> str | None:
    """The dataset root all ``rows`` were read from (each ``uri`` in its ``objects/``), or
    None when they are not all rows of one snapshot (or carry no version or hashes)."""
    if not dataset_version or rows.empty or "sha256" not in rows or "uri" not in rows:
        return None
    roots = {dataset_root_of(u) for u in rows["uri"]}
    if len(roots) != 1:
        return None
    root = roots.pop()
    return root or None


def split_images(rows: pd.DataFrame, size: int, dataset_version: str = "",
                 use_shards: bool = True) -> np.ndarray:
    """The network inputs of a split's rows at ``size``, from the version's shards.

    Rows of a published dataset snapshot (``dataset_version``) are gathered from its shards,
    which the first caller at a new size builds; no JPEG is read. Other rows, or
    ``use_shards=False``, are decoded one by one (logged). Both give the same pixels.
    """
    return _split(rows, size, dataset_version, use_shards, stats=False)[0]


def split_images_and_stats(rows: pd.DataFrame, size: int, dataset_version: str = "",
                           use_shards: bool = True) -> tuple[np.ndarray, list[dict]]:
    """:func:`split_images` and each image's input statistics (``images.image_stats`` on
    the predictor's decode), from the shards' statistics table when the rows come from a
    snapshot, else from decoding them."""
    return _split(rows, size, dataset_version, use_shards, stats=True)


def _split(rows: pd.DataFrame, size: int, version: str, use_shards: bool, stats: bool
           ) -> tuple[np.ndarray, list[dict] | None]:
    root = snapshot_root(rows, version) if use_shards else None
    why = ("shards not asked for" if not use_shards else
           "the rows are not all from one published dataset snapshot")
    if root:
        try:
            measured = stats_from_shards(rows, root, version, size) if stats else None
            if stats and measured is None:
                why = (f"the shards of {version} at {size} px were built without input "
                       "statistics (or before colourfulness and context were measured); "
                       "delete shards/ of this version in the dataset root to rebuild them "
                       "with statistics")
                logger.warning("Decoding the images for their statistics: %s", why)
            else:
                images = load_from_shards(rows, root, version, size)
                logger.info("Read %d images at %d px from the shards of dataset %s",
                            len(rows), size, version)
                return images, measured
        except (IngestError, ObjectNotFoundError) as exc:  # not a published snapshot
            why = str(exc)
        except LockTimeout as exc:  # another builder is slow: decode instead of waiting on
            why = str(exc)
            logger.warning("Decoding the images instead of reading shards: %s", why)
    logger.info("Decoding %d images at %d px (no shards: %s)", len(rows), size, why)
    images, measured = decode_rows(rows, size)
    return images, (measured if stats else None)
