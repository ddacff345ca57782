"""Data ingestion: data lake -> validated, de-duplicated, split, versioned dataset snapshot.

Plain Python with no KFP types, so it runs the same in a notebook, a test or a component.

Layout of a dataset root (any store URI)::

    objects/<sha256[:2]>/<sha256>        image bytes, content-addressed, written once
    versions/<version>/                  one immutable, atomically published snapshot
        manifest.csv                     key, sha256, label, split, width, height
        image_stats.csv                  per-image format, mode, brightness, contrast
        stats.json                       per-split class balance, sizes, brightness, contrast
        quarantine.csv                   every refused object with its reason
        duplicates.csv                   every duplicate with the key it duplicates
        report.json                      counts and the accounting check
    cache/<source-id>-<settings-id>.csv  what was learned per (key, fingerprint) under these
                                         validation settings; not versioned
    cache/objects.csv                    objects/ entries whose content was verified, with the
                                         fingerprint (size+mtime or ETag) they had then
    cache/parts/<source-id>-<settings-id>/<plan-id>/
        plan.json, part-<index>.csv      a fanned-out ingestion's key ranges and what each part
                                         learned; folded into the cache by the publish step
    locks/versions-<version>.lock-<n>    held while one ingestion publishes that version

The dataset version is a hash of the manifest, so it changes if and only if an image's
content, label, split or size changes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.common.errors import UserError
from components.common.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    QUARANTINE_REASONS,
    ImageRejected,
    inspect_image,
)
from components.common.procs import exit_with
from components.common.storage import (
    AlreadyExistsError,
    LocalStore,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    UnsafeKeyError,
    check_key,
    open_store,
    read_uri,
    sha256_bytes,
    split_uri,
)
from components.common.storage.local import _INTERNAL_NAME
from components.common.storage.lock import LeaseLock, LockTimeout

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "folders", "kaggle", "csv")
MANIFEST_COLUMNS = ["key", "sha256", "label", "split", "width", "height"]
_KAGGLE_NAME = re.compile(r"^(?P<label>[A-Za-z][A-Za-z0-9_-]*)\.[^/]*\.[A-Za-z0-9]+$")
_KEY_COLUMNS = ("key", "filename", "file", "path", "image", "id")
_LABEL_COLUMNS = ("label", "class", "category")
_CACHE_COLUMNS = ["key", "fingerprint", "size", "sha256", "status", "detail", "format", "mode",
                  "width", "height", "brightness", "contrast"]
_IMAGE_FACTS = ("sha256", "size", "status", "detail", "format", "mode", "width", "height",
                "brightness", "contrast")
DEFAULT_CLASSES = ("cats", "dogs")
#: Aliases used when none are given, for the declared classes they point at.
DEFAULT_ALIASES = {"cat": "cats", "dog": "dogs"}
_CLASS_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: JPEGs are decoded at a reduced scale that keeps both sides at least this long; brightness
#: and contrast are measured on that image (every byte is still decoded).
DRAFT_SIDE = 256
#: Bump when the validation in components.common.images changes what it accepts or measures:
#: it is part of the cache key, so a change invalidates what earlier runs learned.
#: Where the record of each version's publication (time, source, size) is kept.
PUBLISHED_PREFIX = "published"
VALIDATION_VERSION = 3  # 3: 16-bit greyscale converted, not quarantined
#: Fewer objects than this are read by threads in this process: starting processes costs more.
PROCESS_MIN_OBJECTS = 256
DEFAULT_MAX_BYTES = 256 * 2**20
#: The most worker processes ``workers=0`` starts.
MAX_DEFAULT_WORKERS = 8


class IngestError(UserError, ValueError):
    """Input that cannot be ingested; the message says what to fix."""


@dataclass(frozen=True)
class IngestConfig:
    """How to ingest.

    Attributes:
        test_fraction: Share of each class that goes to the test split (0 < f < 1).
        layout: ``auto`` (folders or Kaggle-style names, per key), ``folders``
            (``<label>/…``), ``kaggle`` (``<label>.<id>.<ext>``), or ``csv`` (needs
            ``labels_csv``).
        labels_csv: URI of a CSV with a key column (``key``/``filename``/``path``/…) relative
            to the lake URI and a ``label`` column. Implies ``layout='csv'``.
        max_pixels: Larger images are quarantined as decompression bombs.
        min_side: Images with a smaller side are quarantined as too small.
        workers: Parallel reads and decodes: 0 (default) is one process per available CPU
            core (cgroup quota included), at most ``MAX_DEFAULT_WORKERS``. At least
            ``PROCESS_MIN_OBJECTS`` objects to read are decoded by that many processes
            (decoding is CPU-bound); fewer by as many threads.
        use_cache: Reuse what an earlier ingestion of the same lake under the same validation
            settings learned about unchanged objects (same key and fingerprint) instead of
            downloading and decoding them again.
        classes: The declared classes (compared case-insensitively). A label that is neither
            a class nor an alias quarantines its image as ``unknown_label``.
        aliases: Other names of a declared class, e.g. ``{"cat": "cats"}``. None (default):
            ``DEFAULT_ALIASES`` for the declared classes they point at.
        draft: Decode JPEGs at a reduced scale (at least ``DRAFT_SIDE`` px a side) where that
            suffices: the image is still decoded completely, the statistics are measured on
            the reduced image, and width and height are the full size.
        publish_wait_s: How long to wait for another ingestion that is publishing the same
            version before giving up.
        max_bytes: Larger objects are quarantined as ``too_large`` from the listing, without
            being read (a 40 MP camera JPEG is about 20 MB; a stray video or disk image in the
            lake would otherwise be read into memory whole).
    """

    test_fraction: float = 0.2
    layout: str = "auto"
    labels_csv: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    workers: int = 0
    use_cache: bool = True
    classes: tuple[str, ...] = DEFAULT_CLASSES
    aliases: Mapping[str, str] | None = None
    draft: bool = True
    publish_wait_s: float = 300.0
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self):
        if not 0.0 < self.test_fraction < 1.0:
            raise IngestError(f"Invalid test_fraction: {self.test_fraction}. Expect 0 < f < 1, "
                              "for example 0.2 for an 80/20 split.")
        if self.layout not in LAYOUTS:
            raise IngestError(f"Invalid layout: {self.layout!r}. Expect one of {LAYOUTS}.")
        if self.layout == "csv" and not self.labels_csv:
            raise IngestError("layout='csv' needs labels_csv: the URI of a CSV of key,label.")
        if self.workers < 0:
            raise IngestError(f"Invalid workers: {self.workers}. Expect 0 (one per CPU core) "
                              "or more.")
        if self.max_pixels < 1 or self.min_side < 1:
            raise IngestError(f"Invalid max_pixels {self.max_pixels} or min_side "
                              f"{self.min_side}: expect both >= 1.")
        classes = tuple(_fold(c) for c in (self.classes or ()))
        bad = [c for c in classes if not _CLASS_NAME.match(c)]
        if not classes or bad or len(set(classes)) != len(classes):
            raise IngestError(
                f"Invalid classes: {list(self.classes)}. Expect distinct names of letters, "
                "digits, '-' or '_' (case does not matter), for example cats,dogs.")
        if self.aliases is None:
            aliases = {a: t for a, t in DEFAULT_ALIASES.items() if t in classes}
        else:
            aliases = {_fold(a): _fold(t) for a, t in self.aliases.items()}
            for alias, target in aliases.items():
                if target not in classes:
                    raise IngestError(f"Invalid label alias {alias}={target}: {target!r} is not "
                                      f"a declared class {list(classes)}.")
                if alias in classes or not alias:
                    raise IngestError(f"Invalid label alias {alias}={target}: {alias!r} is "
                                      "empty or already a class name.")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "aliases", aliases)

    def canonical_label(self, raw: str) -> str | None:
        """The declared class a raw label names, or None if it names none."""
        folded = _fold(raw)
        if folded in self.classes:
            return folded
        return self.aliases.get(folded)

    def settings_id(self) -> str:
        """A hash of every setting that changes what validating one object concludes."""
        settings = {"max_pixels": self.max_pixels, "min_side": self.min_side,
                    "draft_side": DRAFT_SIDE if self.draft else 0,
                    "validation": VALIDATION_VERSION}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _fold(label: str) -> str:
    return unicodedata.normalize("NFC", str(label)).strip().casefold()


def parse_classes(text: str) -> tuple[str, ...]:
    """``"cats,dogs"`` -> ``("cats", "dogs")``; the form the component and the CLI take."""
    classes = tuple(c.strip() for c in (text or "").split(",") if c.strip())
    if not classes:
        raise IngestError(f"Invalid classes: {text!r}. Expect a comma-separated list such as "
                          "cats,dogs.")
    return classes


def parse_aliases(text: str) -> dict[str, str] | None:
    """``"cat=cats,kitten=cats"`` -> a dict; empty text means the default aliases (None)."""
    if not (text or "").strip():
        return None
    aliases = {}
    for item in text.split(","):
        alias, sep, target = item.partition("=")
        if not sep or not alias.strip() or not target.strip():
            raise IngestError(f"Invalid label alias {item.strip()!r} in {text!r}. Expect "
                              "alias=class pairs separated by commas, such as cat=cats,dog=dogs.")
        aliases[alias.strip()] = target.strip()
    return aliases


def default_workers() -> int:
    """``workers=0``: one per available core, at most ``MAX_DEFAULT_WORKERS`` (a pod without a
    CPU limit sees the whole node; each worker process takes about 130 MiB)."""
    return min(available_cpus(), MAX_DEFAULT_WORKERS)


def available_cpus() -> int:
    """CPU cores this process may use: the affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


@dataclass
class IngestResult:
    """What one ingestion produced."""

    version: str
    snapshot_uri: str
    objects_uri: str
    manifest: pd.DataFrame
    report: dict
    stats: dict
    created: bool  # False when this exact version was already published
    quarantine: pd.DataFrame = field(repr=False, default=None)
    duplicates: pd.DataFrame = field(repr=False, default=None)

    def split_manifest(self, split: str) -> pd.DataFrame:
        """The rows of one split, with the ``uri`` each image can be read from."""
        rows = self.manifest[self.manifest["split"] == split].copy()
        rows["uri"] = [f"{self.objects_uri}/{object_key(s)}" for s in rows["sha256"]]
        return rows.reset_index(drop=True)


def object_key(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256}"


def split_of(sha256: str, test_fraction: float) -> str:
    """Train or test, from the content hash alone.

    An image's split depends on nothing but its bytes and the fraction, so adding images to
    the lake never moves an existing image between splits, and identical bytes can never be
    on both sides. Applied within each class, the expected test share of every class is
    ``test_fraction`` (stratified in expectation; the report gives the realised shares).
    """
    position = int(sha256[:16], 16) / float(1 << 64)
    return "test" if position < test_fraction else "train"


#: The folder segment of the images continuous training exports into a lake from labelled
#: production captures: ``<label>/production/<export_id>/<file>`` (``components.monitor.export``).
PRODUCTION_SEGMENT = "production"


def is_production_key(key: str) -> bool:
    """True for a lake key written by an export (``<label>/production/<id>/<file>``)."""
    parts = key.split("/")
    return len(parts) == 4 and parts[1] == PRODUCTION_SEGMENT


def label_from_key(key: str, layout: str) -> str | None:
    """The class a key names in the folder or Kaggle layout, or None."""
    parts = key.split("/")
    if layout in ("auto", "folders") and len(parts) > 1:
        return parts[0]
    if layout in ("auto", "kaggle") and len(parts) == 1:
        m = _KAGGLE_NAME.match(parts[0])
        return m.group("label").lower() if m else None
    return None


def read_labels_csv(uri: str, canonical: Callable[[str], str | None] | None = None
                    ) -> tuple[dict[str, str], list[dict]]:
    """Reads a labels CSV into key -> label, and the rows it could not use (with reasons).

    Args:
        uri: The CSV's URI or path (relative paths are to the current folder).
        canonical: Maps a raw label to its class; two rows of one key conflict only if they
            name different classes (``cat`` and ``Cats`` do not).
    """
    uri = absolute_uri(uri)
    try:
        table = pd.read_csv(io.BytesIO(read_uri(uri)), dtype=str, keep_default_na=False)
    except ObjectNotFoundError as exc:
        raise IngestError(f"labels_csv not found: {uri}. Check the URI.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise IngestError(f"labels_csv {uri} is not a readable CSV: {exc}") from exc
    cols = {c.strip().lower(): c for c in table.columns}
    key_col = next((cols[c] for c in _KEY_COLUMNS if c in cols), None)
    label_col = next((cols[c] for c in _LABEL_COLUMNS if c in cols), None)
    if key_col is None or label_col is None:
        raise IngestError(
            f"labels_csv {uri} has columns {list(table.columns)}. Expect a key column (one of "
            f"{_KEY_COLUMNS}) and a label column (one of {_LABEL_COLUMNS})."
        )
    labels: dict[str, str] = {}
    conflicts: set[str] = set()
    rejected: list[dict] = []
    for row_no, (key, label) in enumerate(zip(table[key_col], table[label_col], strict=False), start=2):
        key, label = key.strip().removeprefix("./"), label.strip()
        try:
            check_key(key)
        except UnsafeKeyError as exc:
            rejected.append({"row": row_no, "key": key, "reason": "unsafe_key", "detail": str(exc)})
            continue
        if not label:
            continue  # the key stays unlabelled and is quarantined as such if it exists
        if key in labels and labels[key] is not None and labels[key] != label:
            first, second = labels[key], label
            if canonical is not None:
                first, second = canonical(first) or _fold(first), canonical(second) or _fold(second)
            if first != second:
                conflicts.add(key)
        labels.setdefault(key, label)
    for key in conflicts:
        labels[key] = None  # marked: labelled twice, differently
    return labels, rejected


def absolute_uri(uri: str) -> str:
    """A URI with a local relative path made absolute (``labels.csv`` -> ``/cwd/labels.csv``)."""
    text = os.fspath(uri)
    if "://" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


def _source_id(uri: str) -> str:
    return hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def _cache_key(source_uri: str, config: IngestConfig) -> str:
    return f"cache/{_source_id(source_uri)}-{config.settings_id()}.csv"


def _load_cache(root: ObjectStore, key: str) -> dict[tuple[str, str], dict]:
    try:
        table = pd.read_csv(io.BytesIO(root.get(key)), dtype={"fingerprint": str, "key": str,
                                                            "sha256": str, "detail": str},
                            keep_default_na=False)
    except ObjectNotFoundError:
        return {}
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        logger.warning("Ignoring unreadable ingestion cache %s: %s", root.uri_of(key), exc)
        return {}
    if list(table.columns) != _CACHE_COLUMNS:
        logger.warning("Ignoring ingestion cache %s with unexpected columns", root.uri_of(key))
        return {}
    return {(r["key"], r["fingerprint"]): r for r in table.to_dict("records")}


def _summary(values: pd.Series) -> dict:
    if values.empty:
        return {}
    q = values.quantile([0.05, 0.5, 0.95])
    return {"mean": round(float(values.mean()), 6), "std": round(float(values.std(ddof=0)), 6),
            "min": round(float(values.min()), 6), "p05": round(float(q[0.05]), 6),
            "p50": round(float(q[0.5]), 6), "p95": round(float(q[0.95]), 6),
            "max": round(float(values.max()), 6)}


def split_statistics(rows: pd.DataFrame) -> dict:
    """Class balance, image sizes, brightness and contrast of one split.

    These are what a later data-integrity check compares serving traffic against.
    """
    counts = rows["label"].value_counts().sort_index()
    total = int(counts.sum())
    hist_edges = np.linspace(0.0, 1.0, 11)
    return {
        "count": total,
        "class_counts": {k: int(v) for k, v in counts.items()},
        "class_balance": {k: round(int(v) / total, 6) for k, v in counts.items()} if total else {},
        "width": _summary(rows["width"].astype(float)),
        "height": _summary(rows["height"].astype(float)),
        "brightness": _summary(rows["brightness"]),
        "contrast": _summary(rows["contrast"]),
        "brightness_histogram": {
            "edges": [round(e, 2) for e in hist_edges],
            "counts": np.histogram(rows["brightness"], bins=hist_edges)[0].tolist(),
        },
    }


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode()


def _display_key(key: str) -> str:
    """A key as text that can always be written (undecodable bytes as \\xNN escapes)."""
    try:
        key.encode("utf-8")
        return key
    except UnicodeEncodeError:
        try:
            return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return key.encode("utf-8", "backslashreplace").decode("ascii")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def list_local_lake(store: LocalStore) -> tuple[list[ObjectInfo], list[dict]]:
    """Lists a lake folder, following symbolic links that stay inside it.

    A link to a file or folder inside the lake root is followed (a folder linked from two
    places is listed under both keys; identical bytes are then reported as duplicates).
    Nothing outside the root is ever read: a link that leaves it, a broken link, a link to a
    folder that contains it, and anything that is not a regular file or a folder is returned
    as a refusal with its reason instead of being dropped.

    Returns:
        (objects sorted by key, refusals as dicts with key, status, detail).
    """
    root = os.path.realpath(store.root)
    found: list[ObjectInfo] = []
    refused: list[dict] = []

    def refuse(key: str, status: str, detail: str) -> None:
        refused.append({"key": key, "status": status, "detail": detail})

    def walk(folder: str, prefix: str, ancestors: frozenset[str]) -> list[tuple]:
        """Lists one folder; returns its sub-folders to walk (iterative: any depth)."""
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            refuse(prefix.rstrip("/") or ".", "unreadable", f"cannot list the folder: {exc}")
            return []
        subfolders = []
        for entry in entries:
            if _INTERNAL_NAME.match(entry.name):
                continue
            key = prefix + entry.name
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not _inside(target, root):
                        refuse(key, "link_outside_lake", f"links to {target}, outside the lake "
                               f"root {root}; copy the files into the lake instead")
                        continue
                st = os.stat(entry.path)  # follows a link
            except FileNotFoundError:
                refuse(key, "broken_link", f"links to {os.readlink(entry.path)!r}, which "
                       "does not exist")
                continue
            except OSError as exc:  # ELOOP, EACCES ...
                refuse(key, "broken_link" if entry.is_symlink() else "unreadable", str(exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                real = os.path.realpath(entry.path)
                if real in ancestors:
                    refuse(key, "link_loop", f"links to {real}, a folder that contains it")
                    continue
                subfolders.append((entry.path, key + "/", ancestors | {real}))
            elif stat.S_ISREG(st.st_mode):
                found.append(ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}"))
            else:
                refuse(key, "not_a_file", f"file type {stat.filemode(st.st_mode)[0]!r} "
                       "(pipe, socket or device); never read")
        return subfolders

    pending = [(root, "", frozenset({root}))] if os.path.isdir(root) else []
    while pending:
        pending.extend(walk(*pending.pop()))
    return sorted(found, key=lambda o: o.key), refused


def _list_lake(lake: ObjectStore) -> tuple[list[ObjectInfo], list[dict]]:
    if isinstance(lake, LocalStore):
        return list_local_lake(lake)
    return list(lake.list()), []


class _Checker:
    """Reads, hashes, validates and stores one object; runs in a thread or a worker process."""

    def __init__(self, lake: ObjectStore, objects: ObjectStore, present: frozenset[str],
                 max_pixels: int, min_side: int, draft_side: int | None):
        self.lake, self.objects, self.present = lake, objects, present
        self.max_pixels, self.min_side, self.draft_side = max_pixels, min_side, draft_side

    def __call__(self, key: str) -> dict:
        try:
            data = self.lake.get(key)
        except ObjectNotFoundError as exc:
            return {"status": "vanished", "detail": f"listed, then not found: {exc}"}
        except PermissionError as exc:
            return {"status": "unreadable", "detail": str(exc)}
        out = {"sha256": sha256_bytes(data), "size": len(data)}
        try:
            info = inspect_image(data, max_pixels=self.max_pixels, min_side=self.min_side,
                                 draft_side=self.draft_side)
        except ImageRejected as exc:
            out.update(status=exc.reason, detail=exc.detail)
            return out
        out.update(status="ok", format=info.format, mode=info.mode, width=info.width,
                   height=info.height, brightness=info.brightness, contrast=info.contrast)
        if out["sha256"] not in self.present:
            self.objects.put(object_key(out["sha256"]), data)  # same bytes if two writers race
            out["stored"] = True
        return out


_WORKER: _Checker | None = None


def _init_worker(lake_uri: str, objects_uri: str, env: dict, present: frozenset[str],
                 settings: tuple, starter: int) -> None:
    global _WORKER
    exit_with(starter)  # a killed ingestion leaves no idle workers behind
    os.environ.update(env)  # the S3 settings of the parent, whenever the pool was started
    logging.basicConfig(level=logging.WARNING)
    _WORKER = _Checker(open_store(lake_uri), open_store(objects_uri), present, *settings)


def _work(key: str) -> dict:
    return _WORKER(key)


def _storage_env() -> dict:
    prefixes = ("AWS_", "MINIO_", "S3_", "MLOPS_")
    return {k: v for k, v in os.environ.items() if k.startswith(prefixes)}


def _read_objects(tasks: list[str], lake: ObjectStore, objects: ObjectStore,
                  present: frozenset[str], config: IngestConfig,
                  progress: Callable[[int, int], None] | None):
    """Yields one result per task, in order, from threads or worker processes."""
    settings = (config.max_pixels, config.min_side, DRAFT_SIDE if config.draft else None)
    workers = config.workers or default_workers()
    if workers > 1 and len(tasks) >= PROCESS_MIN_OBJECTS:
        import multiprocessing

        # forkserver: workers start from a clean process (no inherited threads or sockets);
        # each keeps at most one object in memory, so memory grows with workers, not the lake.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["components.ingest.core"])
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_init_worker,
                                   initargs=(lake.uri, objects.uri, _storage_env(), present,
                                             settings, os.getpid()))
        results = pool.map(_work, tasks, chunksize=max(1, min(64, len(tasks) // (workers * 8))))
        mode = "processes"
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        results = pool.map(_Checker(lake, objects, present, *settings), tasks)
        mode = "threads"
    logger.info("Reading and decoding %d objects with %d %s", len(tasks), workers, mode)
    log_every = max(1, len(tasks) // 10)
    with pool:
        for done, result in enumerate(results, start=1):
            if progress:
                progress(done, len(tasks))
            elif done % log_every == 0 or done == len(tasks):
                logger.info("Checked %d/%d objects", done, len(tasks))
            yield result


def _load_verified(root: ObjectStore) -> dict[str, str]:
    try:
        table = pd.read_csv(io.BytesIO(root.get("cache/objects.csv")), dtype=str,
                            keep_default_na=False)
        return dict(zip(table["sha256"], table["fingerprint"], strict=True))
    except ObjectNotFoundError:
        return {}
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, KeyError,
            ValueError) as exc:
        logger.warning("Ignoring unreadable %s: %s", root.uri_of("cache/objects.csv"), exc)
        return {}


def _verify_objects(objects: ObjectStore, needed: dict[str, list[str]], present: dict[str, str],
                    verified: dict[str, str], workers: int) -> dict[str, str]:
    """Checks that every stored object still holds the bytes its name (sha256) says.

    An object whose fingerprint is the one it had when it was last verified is trusted without
    reading it; any other is read and hashed.

    Returns:
        sha256 -> fingerprint of every object now known to be intact.

    Raises:
        IngestError: An object's content does not match its name; names the object and the
            lake keys whose images it holds. Nothing is published.
    """
    trusted = {sha: fp for sha, fp in present.items() if verified.get(sha) == fp}
    to_check = [sha for sha in needed if sha not in trusted]

    def check(sha: str) -> tuple[str, bool]:
        try:
            return sha, sha256_bytes(objects.get(object_key(sha))) == sha
        except ObjectNotFoundError:
            return sha, False

    bad = []
    if to_check:
        logger.info("Verifying the content of %d stored objects", len(to_check))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for sha, ok in pool.map(check, to_check):
                if ok and sha in present:
                    trusted[sha] = present[sha]
                elif ok:
                    pass  # written meanwhile by a concurrent ingestion: verified next time
                else:
                    bad.append(sha)
    if bad:
        shown = "; ".join(f"{objects.uri_of(object_key(sha))} (image of "
                          f"{', '.join(map(_display_key, needed[sha][:3]))})" for sha in bad[:5])
        raise IngestError(
            f"{len(bad)} stored object(s) do not hold the bytes their name (sha256) says: "
            f"{shown}. They were overwritten or corrupted after ingestion; every dataset "
            "version that lists them is affected. Delete them and ingest again (the lake's "
            "copies are written back). Nothing was published.")
    return trusted


def _publish(root: ObjectStore, snapshot: str, files: dict[str, bytes], manifest_csv: bytes,
             wait_s: float) -> bool:
    """Publishes a snapshot once, however many ingestions of it run at the same time.

    One ingestion holds the lease lock ``locks/versions-<version>.lock-<n>`` while it
    publishes (:class:`~components.common.storage.lock.LeaseLock`); another that finds the
    lock waits until the version is published (and then publishes nothing), or takes the lock
    over at once when its holder is gone (a dead process on this host, an attempt of this
    process that ended, or a lease not renewed).

    Returns:
        True if this call published the snapshot, False if it was already published (by an
        earlier or a concurrent ingestion; its manifest is verified to be ours).
    """
    def already() -> bool:
        if not root.is_published(snapshot):
            return False
        if root.read_published(snapshot, "manifest.csv") != manifest_csv:
            raise IngestError(f"{root.uri_of(snapshot)} is published with another manifest "
                              "than this version's: the dataset root is corrupted.")
        return True

    if already():
        return False
    lock = LeaseLock(root, f"locks/{snapshot.replace('/', '-')}.lock",
                     what=f"the ingestion that publishes {root.uri_of(snapshot)}",
                     wait_s=wait_s, done=already)
    try:
        with lock as held:
            if not held or already():
                return False
            try:
                root.publish(snapshot, files)
            except AlreadyExistsError:
                # Published meanwhile by a writer that does not take the lock (an older
                # version of this code): fine if it is this version, intact.
                if already():
                    return False
                raise
            return True
    except LockTimeout as exc:
        raise IngestError(f"{exc} (this ingestion waited publish_wait_s).") from exc


@dataclass
class _LakeView:
    """A lake as one ingestion (or one part of it) sees it: its listing and its labels."""

    store: ObjectStore
    layout: str
    listing: list[ObjectInfo]
    refused: list[dict]
    excluded: list[str]
    labels_map: dict[str, str]
    rejected_rows: list[dict]

    def within(self, start: str, end: str | None) -> _LakeView:
        """The same view restricted to the keys ``start <= key < end`` (``end`` None: no end)."""
        def inside(key: str) -> bool:
            return start <= key and (end is None or key < end)

        return _LakeView(self.store, self.layout, [o for o in self.listing if inside(o.key)],
                         [r for r in self.refused if inside(r["key"])], self.excluded,
                         self.labels_map, self.rejected_rows)


def _open_lake(source_uri: str, config: IngestConfig) -> _LakeView:
    """Lists a lake and reads its labels CSV (if any); the CSV itself is not an image."""
    lake = open_store(source_uri)
    layout = "csv" if config.labels_csv else config.layout
    labels_csv = absolute_uri(config.labels_csv) if config.labels_csv else None

    listing, refused = _list_lake(lake)
    excluded = []
    if labels_csv:
        csv_store, csv_name = split_uri(labels_csv)
        csv_uri = csv_store.uri_of(csv_name)  # normalised: a path and a file:// URI compare
        if csv_uri.startswith(lake.uri.rstrip("/") + "/"):
            # The labels file itself is metadata, not an image of the lake.
            csv_key = csv_uri[len(lake.uri.rstrip("/")) + 1:]
            excluded = [o.key for o in listing if o.key == csv_key]
            listing = [o for o in listing if o.key != csv_key]
        labels_map, rejected_rows = read_labels_csv(labels_csv, config.canonical_label)
    else:
        labels_map, rejected_rows = {}, []
    if not listing and not refused:
        raise IngestError(f"No objects found under {lake.uri}. Check the URI, the prefix and "
                          "the storage credentials (AWS_*/MINIO_* variables for s3://).")
    logger.info("Listed %d objects under %s", len(listing) + len(refused), lake.uri)
    return _LakeView(lake, layout, listing, refused, excluded, labels_map, rejected_rows)


def _new_record(key: str, fingerprint: str = "", size: int = 0) -> dict:
    return {"key": key, "fingerprint": fingerprint, "size": size, "sha256": "",
            "status": "", "detail": "", "format": "", "mode": "", "width": 0, "height": 0,
            "brightness": 0.0, "contrast": 0.0, "label": None}


def _triage(view: _LakeView, config: IngestConfig, cache: dict[tuple[str, str], dict],
            present: Mapping[str, str]) -> tuple[list[dict], list[int]]:
    """One record per listed object: refused from its key, size or label, known from the
    cache, or to be read (the indexes of those records are returned too)."""
    records: list[dict] = []
    for item in view.refused:
        rec = _new_record(item["key"])
        rec.update(status=item["status"], detail=item["detail"])
        records.append(rec)
    to_read: list[int] = []
    layout = view.layout
    for obj in view.listing:
        rec = _new_record(obj.key, obj.fingerprint, obj.size)
        records.append(rec)
        try:
            obj.key.encode("utf-8")
        except UnicodeEncodeError:
            rec.update(status="invalid_key_encoding", detail="the name is not valid UTF-8 "
                       "(written by a system with another file-name encoding); rename it")
            continue
        try:
            check_key(obj.key)
        except UnsafeKeyError as exc:
            rec.update(status="unsafe_key", detail=str(exc))
            continue
        if obj.size > config.max_bytes:
            rec.update(status="too_large", detail=f"{obj.size} bytes > max_bytes "
                       f"{config.max_bytes}; not read")
            continue
        if layout == "csv":
            raw = view.labels_map.get(obj.key, "")
            if raw is None:
                rec.update(status="conflicting_labels", detail="the labels CSV gives this key "
                           "two different labels")
                continue
            if not raw and is_production_key(obj.key):
                # An export of labelled production captures names its label in its key: a
                # lake read through a CSV is retrained on with them all the same.
                raw = label_from_key(obj.key, "folders")
        else:
            raw = label_from_key(obj.key, layout)
        if not raw:
            rec.update(status="unlabelled", detail=f"no label for this key in layout {layout!r}")
            continue
        label = config.canonical_label(raw)
        if label is None:
            aliases = ", ".join(f"{a}={t}" for a, t in sorted(config.aliases.items()))
            rec.update(status="unknown_label", detail=(
                f"label {raw!r} is not a declared class ({', '.join(config.classes)}) nor an "
                f"alias ({aliases or 'none'}); declare it or move the file"))
            continue
        rec["label"] = label
        hit = cache.get((obj.key, obj.fingerprint))
        if hit is not None and (hit["status"] != "ok" or hit["sha256"] in present):
            rec.update({k: hit[k] for k in _IMAGE_FACTS if k != "size"})
            rec["cached"] = True
        else:
            to_read.append(len(records) - 1)
    return records, to_read


def _decode(records: list[dict], to_read: list[int], lake: ObjectStore, objects: ObjectStore,
            present: Mapping[str, str], config: IngestConfig,
            progress: Callable[[int, int], None] | None) -> tuple[int, set[str]]:
    """Reads, hashes, validates and stores the objects ``to_read`` into their records.

    Returns:
        (objects decoded, sha256 of the objects this call stored in ``objects/``).
    """
    decoded, stored = 0, set()
    if to_read:
        logger.info("%d objects to read (%d from cache)", len(to_read),
                    sum(1 for r in records if r.get("cached")))
        tasks = [records[i]["key"] for i in to_read]
        results = _read_objects(tasks, lake, objects, frozenset(present), config, progress)
        for index, result in zip(to_read, results, strict=True):
            if result.pop("stored", False):
                stored.add(result["sha256"])
            records[index].update(result)
            decoded += 1
    elif progress:
        progress(0, 0)
    return decoded, stored


def _verified_objects(root: ObjectStore, objects: ObjectStore, needed: dict[str, list[str]],
                      stored: set[str], present: dict[str, str], known: Mapping[str, str],
                      workers: int) -> dict[str, str]:
    """Every object ``needed`` (sha256 -> lake keys) checked intact, with what was already
    known to be (``cache/objects.csv`` and ``known``): sha256 -> fingerprint.

    Objects this run ``stored`` were hashed while being written and count as verified with
    the fingerprint a fresh listing gives them; the others are trusted only if their
    fingerprint is the one they had when verified, else read and hashed.
    """
    if stored:
        present = {o.key.rsplit("/", 1)[-1]: o.fingerprint for o in objects.list()}
    verified = _load_verified(root)
    verified.update(known)
    verified.update({sha: present[sha] for sha in stored if sha in present})
    verified.update(_verify_objects(objects, {s: k for s, k in needed.items() if s not in stored},
                                    present, verified, workers))
    return verified


def ingest(source_uri: str, dataset_root_uri: str, config: IngestConfig = IngestConfig(),
           progress: Callable[[int, int], None] | None = None, *,
           plan_id: str = "") -> IngestResult:
    """Ingests a data lake into a versioned dataset snapshot.

    Args:
        source_uri: The data lake: ``s3://bucket/prefix``, ``file:///path`` or a path.
        dataset_root_uri: Where snapshots, content-addressed images and the cache live.
        config: How to ingest.
        progress: Called with (objects done, objects to check) while reading.
        plan_id: The publish step of a fanned-out ingestion
            (:func:`~components.ingest.fanout.plan_parts`,
            :func:`~components.ingest.fanout.ingest_part`): what the parts of this plan
            learned is used as if cached (even with ``use_cache=False``), then folded into the
            cache and their part files removed. The result is the version a single ingestion of the lake would publish.

    Returns:
        The snapshot's version, manifest, statistics and report.

    Raises:
        IngestError: Nothing to ingest, nothing valid (the message gives the counts by
            reason), or a stored object that no longer matches its content hash.
    """
    view = _open_lake(source_uri, config)
    lake, layout = view.store, view.layout
    labels_map, rejected_rows, excluded = view.labels_map, view.rejected_rows, view.excluded
    root = open_store(dataset_root_uri)
    objects = root.child("objects")

    cache_key = _cache_key(lake.uri, config)
    cache = _load_cache(root, cache_key) if config.use_cache else {}
    parts = _load_parts(root, cache_key, plan_id) if plan_id else None
    if parts is not None:
        cache.update(parts.records)
    # One listing instead of a HEAD request per image.
    present = {o.key.rsplit("/", 1)[-1]: o.fingerprint for o in objects.list()}

    records, to_read = _triage(view, config, cache, present)
    listing = view.listing
    decoded, stored = _decode(records, to_read, lake, objects, present, config, progress)

    table = pd.DataFrame.from_records(records)
    # Exact duplicates: same bytes. Keep the first key; if the copies disagree on the label,
    # none can be trusted and all go to quarantine.
    ok = table[table["status"] == "ok"].sort_values("key")
    shared = ok["sha256"].value_counts()
    ok = ok[ok["sha256"].isin(shared[shared > 1].index)]  # only bytes under several keys
    dup_rows = []
    for sha, group in ok.groupby("sha256", sort=False):
        if group["label"].nunique() > 1:
            detail = "same bytes labelled " + ", ".join(
                f"{k}={v}" for k, v in zip(group["key"], group["label"], strict=False))
            table.loc[group.index, "status"] = "conflicting_labels"
            table.loc[group.index, "detail"] = detail
        elif len(group) > 1:
            first = group["key"].iloc[0]
            for idx, key in zip(group.index[1:], group["key"].iloc[1:], strict=False):
                table.loc[idx, "status"] = "duplicate"
                dup_rows.append({"key": key, "sha256": sha, "duplicate_of": first})

    kept = table[table["status"] == "ok"].copy()
    # Every image of the snapshot must be intact in objects/ before anything is published.
    needed: dict[str, list[str]] = {}
    for sha, key in zip(kept["sha256"], kept["key"], strict=True):
        needed.setdefault(sha, []).append(key)
    verified = _verified_objects(root, objects, needed, stored, present,
                                 parts.verified if parts is not None else {},
                                 config.workers or default_workers())

    kept["split"] = [split_of(s, config.test_fraction) for s in kept["sha256"]]
    kept["width"] = kept["width"].astype(int)
    kept["height"] = kept["height"].astype(int)
    quarantined = table[~table["status"].isin(["ok", "duplicate"])]
    quarantine = quarantined[["key", "status", "detail", "size"]].rename(
        columns={"status": "reason"}).sort_values("key").reset_index(drop=True)
    quarantine["key"] = [_display_key(k) for k in quarantine["key"]]
    duplicates = pd.DataFrame(dup_rows, columns=["key", "sha256", "duplicate_of"]).sort_values(
        "key").reset_index(drop=True)

    listed = len(records)
    accounted = len(kept) + len(quarantine) + len(duplicates)
    if accounted != listed:  # a bug, never a data problem: refuse to publish
        raise RuntimeError(f"Ingestion accounting failed: {accounted} accounted for, "
                           f"{listed} listed. Nothing was published.")

    reasons = {r: int(n) for r, n in quarantine["reason"].value_counts().sort_index().items()}
    if kept.empty:
        raise IngestError(
            f"No valid labelled image under {lake.uri}: {listed} objects listed, quarantined "
            f"by reason {reasons}, {len(duplicates)} duplicates. Fix the data, or the layout "
            f"(--layout, now {layout!r}; --labels-csv for a key,label CSV), or the declared "
            f"classes (--classes, now {','.join(config.classes)}; --label-aliases).")
    present_keys = {o.key for o in listing}
    missing = sorted(k for k in labels_map if k not in present_keys) if layout == "csv" else []

    manifest = kept[MANIFEST_COLUMNS].sort_values("key").reset_index(drop=True)
    manifest_csv = _csv_bytes(manifest)
    version = hashlib.sha256(manifest_csv).hexdigest()[:16]
    image_stats = kept[["key", "sha256", "split", "label", "format", "mode", "brightness",
                        "contrast"]].sort_values("key").reset_index(drop=True)
    stats = {split: split_statistics(kept[kept["split"] == split]) for split in ("train", "test")}
    classes = sorted(manifest["label"].unique())
    for split in ("train", "test"):
        for cls in classes:
            if stats[split]["class_counts"].get(cls, 0) == 0:
                logger.warning("Class %r has no image in the %s split (%d images of it in all);"
                               " add images of it to the lake.", cls, split,
                               int((manifest["label"] == cls).sum()))
    per_class_test_share = {
        cls: round(float((manifest[manifest["label"] == cls]["split"] == "test").mean()), 4)
        for cls in classes}
    report = {
        "source_uri": lake.uri,
        "dataset_version": version,
        "layout": layout,
        "labels_csv": config.labels_csv,
        "declared_classes": list(config.classes),
        "label_aliases": ",".join(f"{a}={t}" for a, t in sorted(config.aliases.items())),
        "test_fraction": config.test_fraction,
        "listed": listed,
        "ingested": int(len(kept)),
        "quarantined": int(len(quarantine)),
        "duplicates": int(len(duplicates)),
        "accounting": f"{len(kept)} ingested + {len(quarantine)} quarantined + "
                      f"{len(duplicates)} duplicates == {listed} listed",
        "quarantine_reasons": reasons,
        "classes": classes,
        "splits": {s: stats[s]["class_counts"] for s in ("train", "test")},
        "test_share_per_class": per_class_test_share,
        "excluded_from_listing": excluded,
        "label_rows_rejected": rejected_rows,
        "labels_missing_from_lake": missing,
        "decoded": decoded,
        "cache_hits": int(sum(1 for r in records if r.get("cached"))),
    }
    if parts is not None:
        report["parts"] = {"plan_id": plan_id, "merged": parts.merged, "missing": parts.missing}

    snapshot = f"versions/{version}"
    created = _publish(root, snapshot, {
        "manifest.csv": manifest_csv,
        "image_stats.csv": _csv_bytes(image_stats),
        "stats.json": _json_bytes(stats),
        "quarantine.csv": _csv_bytes(quarantine),
        "duplicates.csv": _csv_bytes(duplicates),
        "report.json": _json_bytes({k: v for k, v in report.items()
                                    if k not in ("decoded", "cache_hits", "parts")}),
    }, manifest_csv, config.publish_wait_s)
    if created:
        logger.info("Published dataset version %s at %s", version, root.uri_of(snapshot))
        # When and from where, beside the immutable folder (which holds no time, so that the
        # same lake publishes the same files): `mlops data versions` shows it.
        root.put_json(f"{PUBLISHED_PREFIX}/{version}.json", {
            "dataset_version": version, "source_uri": report["source_uri"],
            "published_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "images": int(report["ingested"]),
            "bytes": int(pd.to_numeric(kept["size"], errors="coerce").fillna(0).sum())},
            if_absent=True)
    else:
        logger.info("Dataset version %s already published; nothing changed", version)

    root.put(cache_key, _csv_bytes(_cache_frame(table)))
    root.put("cache/objects.csv", _csv_bytes(pd.DataFrame(
        sorted(verified.items()), columns=["sha256", "fingerprint"])))
    if parts is not None:
        parts.remove(root)  # what they learned is in the cache now

    for reason, n in reasons.items():
        logger.warning("Quarantined %d objects: %s (%s)", n, reason,
                       QUARANTINE_REASONS.get(reason, ""))
    logger.info(report["accounting"])
    return IngestResult(version=version, snapshot_uri=root.uri_of(snapshot),
                        objects_uri=objects.uri, manifest=manifest, report=report, stats=stats,
                        created=created, quarantine=quarantine, duplicates=duplicates)



# ---- the parts' files of a fanned-out ingestion (fanout.py), read by its publish step ----

_PART_COLUMNS = [*_CACHE_COLUMNS, "object_fingerprint"]
_PLAN_ID = re.compile(r"^[0-9a-f]{16}$")
_PART_FILE = re.compile(r"/part-(\d{5})\.csv$")


def _parts_prefix(cache_key: str, plan_id: str) -> str:
    stem = cache_key.removeprefix("cache/").removesuffix(".csv")
    return f"cache/parts/{stem}/{plan_id}"


@dataclass
class _PartFile:
    records: dict[tuple[str, str], dict] = field(default_factory=dict)
    verified: dict[str, str] = field(default_factory=dict)


def _read_part_file(root: ObjectStore, key: str) -> _PartFile | None:
    try:
        table = pd.read_csv(io.BytesIO(root.get(key)), dtype={
            "fingerprint": str, "key": str, "sha256": str, "detail": str,
            "object_fingerprint": str}, keep_default_na=False)
    except ObjectNotFoundError:
        return None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            ValueError) as exc:
        logger.warning("Ignoring unreadable part file %s: %s", root.uri_of(key), exc)
        return None
    if list(table.columns) != _PART_COLUMNS:
        logger.warning("Ignoring part file %s with unexpected columns", root.uri_of(key))
        return None
    out = _PartFile()
    for row in table.to_dict("records"):
        fingerprint = row.pop("object_fingerprint")
        out.records[(row["key"], row["fingerprint"])] = row
        if fingerprint and row["status"] == "ok":
            out.verified[row["sha256"]] = fingerprint
    return out


@dataclass
class _Parts:
    """What the parts of one plan learned, for its publish step."""

    prefix: str
    files: list[str]
    records: dict[tuple[str, str], dict]
    verified: dict[str, str]
    merged: list[int]
    missing: list[int]

    def remove(self, root: ObjectStore) -> None:
        for key in [*self.files, f"{self.prefix}/plan.json"]:
            root.delete(key)


def _load_parts(root: ObjectStore, cache_key: str, plan_id: str) -> _Parts:
    if not _PLAN_ID.match(plan_id):
        raise IngestError(f"Invalid plan_id: {plan_id!r}. Expect the 16 hex digits "
                          "plan_parts() returned, or nothing for a single-step ingestion.")
    prefix = _parts_prefix(cache_key, plan_id)
    try:
        expected = len(json.loads(root.get(f"{prefix}/plan.json"))["parts"])
    except ObjectNotFoundError:
        expected = 0
        logger.warning("No plan %s for this lake and these validation settings under %s (made "
                       "for another lake or settings, or already published): every object the "
                       "cache does not know is decoded here.", plan_id, root.uri_of(prefix))
    except (ValueError, KeyError, TypeError) as exc:
        expected = 0
        logger.warning("Unreadable plan %s: %s", root.uri_of(f"{prefix}/plan.json"), exc)
    parts = _Parts(prefix, [], {}, {}, [], [])
    for info in root.list(prefix):
        m = _PART_FILE.search("/" + info.key)
        if not m:
            continue
        found = _read_part_file(root, info.key)
        parts.files.append(info.key)
        if found is not None:
            parts.records.update(found.records)
            parts.verified.update(found.verified)
            parts.merged.append(int(m.group(1)))
    parts.merged.sort()
    parts.missing = [i for i in range(expected) if i not in set(parts.merged)]
    if parts.missing:
        logger.warning("Parts %s of plan %s wrote nothing (failed or not run): their objects "
                       "are read here.", parts.missing, plan_id)
    logger.info("Merged %d part files of plan %s (%d objects)", len(parts.merged), plan_id,
                len(parts.records))
    return parts


def _cache_frame(table: pd.DataFrame) -> pd.DataFrame:
    """What is worth remembering: per key and fingerprint, the image facts (or the refusal).

    Only outcomes that depend on the bytes alone are cached: a duplicate or a label conflict
    depends on the other objects and is worked out again on every run.
    """
    rows = table[table["sha256"] != ""].copy()
    rows.loc[rows["status"].isin(["duplicate", "conflicting_labels"]), "status"] = "ok"
    return rows[_CACHE_COLUMNS].sort_values("key").reset_index(drop=True)


def _json_bytes(value) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


