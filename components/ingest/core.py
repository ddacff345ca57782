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
    cache/<source-id>.csv                what was learned per (key, fingerprint); not versioned

The dataset version is a hash of the manifest, so it changes if and only if an image's
content, label, split or size changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.common.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    QUARANTINE_REASONS,
    ImageRejected,
    inspect_image,
)
from components.common.storage import (
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

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "folders", "kaggle", "csv")
MANIFEST_COLUMNS = ["key", "sha256", "label", "split", "width", "height"]
_KAGGLE_NAME = re.compile(r"^(?P<label>[A-Za-z][A-Za-z0-9_-]*)\.[^/]*\.[A-Za-z0-9]+$")
_KEY_COLUMNS = ("key", "filename", "file", "path", "image", "id")
_LABEL_COLUMNS = ("label", "class", "category")
_CACHE_COLUMNS = ["key", "fingerprint", "size", "sha256", "status", "detail", "format", "mode",
                  "width", "height", "brightness", "contrast"]


class IngestError(ValueError):
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
        workers: Parallel reads and decodes.
        use_cache: Reuse what an earlier ingestion of the same lake learned about unchanged
            objects (same key and fingerprint) instead of downloading and decoding them again.
    """

    test_fraction: float = 0.2
    layout: str = "auto"
    labels_csv: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    workers: int = 8
    use_cache: bool = True

    def __post_init__(self):
        if not 0.0 < self.test_fraction < 1.0:
            raise IngestError(f"Invalid test_fraction: {self.test_fraction}. Expect 0 < f < 1, "
                              "for example 0.2 for an 80/20 split.")
        if self.layout not in LAYOUTS:
            raise IngestError(f"Invalid layout: {self.layout!r}. Expect one of {LAYOUTS}.")
        if self.layout == "csv" and not self.labels_csv:
            raise IngestError("layout='csv' needs labels_csv: the URI of a CSV of key,label.")
        if self.workers < 1:
            raise IngestError(f"Invalid workers: {self.workers}. Expect 1 or more.")


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


def label_from_key(key: str, layout: str) -> str | None:
    """The class a key names in the folder or Kaggle layout, or None."""
    parts = key.split("/")
    if layout in ("auto", "folders") and len(parts) > 1:
        return parts[0]
    if layout in ("auto", "kaggle") and len(parts) == 1:
        m = _KAGGLE_NAME.match(parts[0])
        return m.group("label").lower() if m else None
    return None


def read_labels_csv(uri: str) -> tuple[dict[str, str], list[dict]]:
    """Reads a labels CSV into key -> label, and the rows it could not use (with reasons)."""
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
        if key in labels and labels[key] != label:
            conflicts.add(key)
        labels.setdefault(key, label)
    for key in conflicts:
        labels[key] = None  # marked: labelled twice, differently
    return labels, rejected


def _source_id(uri: str) -> str:
    return hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def _load_cache(root: ObjectStore, source_uri: str) -> dict[tuple[str, str], dict]:
    key = f"cache/{_source_id(source_uri)}.csv"
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


def ingest(source_uri: str, dataset_root_uri: str, config: IngestConfig = IngestConfig(),
           progress: Callable[[int, int], None] | None = None) -> IngestResult:
    """Ingests a data lake into a versioned dataset snapshot.

    Args:
        source_uri: The data lake: ``s3://bucket/prefix``, ``file:///path`` or a path.
        dataset_root_uri: Where snapshots, content-addressed images and the cache live.
        config: How to ingest.
        progress: Called with (objects done, objects to check) while reading.

    Returns:
        The snapshot's version, manifest, statistics and report.

    Raises:
        IngestError: Nothing to ingest, or nothing valid: the message gives the counts by
            reason.
    """
    lake = open_store(source_uri)
    root = open_store(dataset_root_uri)
    objects = root.child("objects")
    layout = "csv" if config.labels_csv else config.layout

    listing: list[ObjectInfo] = list(lake.list())
    excluded = []
    if config.labels_csv:
        csv_store, csv_name = split_uri(config.labels_csv)
        csv_uri = csv_store.uri_of(csv_name)  # normalised: a path and a file:// URI compare
        if csv_uri.startswith(lake.uri.rstrip("/") + "/"):
            # The labels file itself is metadata, not an image of the lake.
            csv_key = csv_uri[len(lake.uri.rstrip("/")) + 1:]
            excluded = [o.key for o in listing if o.key == csv_key]
            listing = [o for o in listing if o.key != csv_key]
        labels_map, rejected_rows = read_labels_csv(config.labels_csv)
    else:
        labels_map, rejected_rows = {}, []
    if not listing:
        raise IngestError(f"No objects found under {lake.uri}. Check the URI, the prefix and "
                          "the storage credentials (AWS_*/MINIO_* variables for s3://).")
    logger.info("Listed %d objects under %s", len(listing), lake.uri)

    cache = _load_cache(root, lake.uri) if config.use_cache else {}
    # One listing instead of a HEAD request per image.
    known_objects = {o.key.rsplit("/", 1)[-1] for o in objects.list()}

    records: list[dict] = []  # one per listed object, in listing order
    to_read: list[int] = []
    for obj in listing:
        rec = {"key": obj.key, "fingerprint": obj.fingerprint, "size": obj.size, "sha256": "",
               "status": "", "detail": "", "format": "", "mode": "", "width": 0, "height": 0,
               "brightness": 0.0, "contrast": 0.0, "label": None}
        try:
            check_key(obj.key)
        except UnsafeKeyError as exc:
            rec.update(status="unsafe_key", detail=str(exc))
            records.append(rec)
            continue
        if layout == "csv":
            label = labels_map.get(obj.key, "")
            if label is None:
                rec.update(status="conflicting_labels", detail="the labels CSV gives this key "
                           "two different labels")
        else:
            label = label_from_key(obj.key, layout)
        if label == "" or (label is None and not rec["status"]):
            rec.update(status="unlabelled", detail=f"no label for this key in layout {layout!r}")
        rec["label"] = label
        if not rec["status"]:
            hit = cache.get((obj.key, obj.fingerprint))
            if hit is not None and (hit["status"] != "ok" or hit["sha256"] in known_objects):
                rec.update({k: hit[k] for k in ("sha256", "status", "detail", "format", "mode",
                                                "width", "height", "brightness", "contrast")})
                rec["cached"] = True
            else:
                to_read.append(len(records))
        records.append(rec)

    decoded = 0
    log_every = max(1, len(to_read) // 10)
    lock = threading.Lock()
    done = [0]

    def check(index: int) -> None:
        nonlocal decoded
        rec = records[index]
        data = lake.get(rec["key"])
        rec["sha256"] = sha256_bytes(data)
        rec["size"] = len(data)
        try:
            info = inspect_image(data, max_pixels=config.max_pixels, min_side=config.min_side)
        except ImageRejected as exc:
            rec.update(status=exc.reason, detail=exc.detail)
        else:
            rec.update(status="ok", format=info.format, mode=info.mode, width=info.width,
                       height=info.height, brightness=info.brightness, contrast=info.contrast)
            if rec["sha256"] not in known_objects:
                objects.put(object_key(rec["sha256"]), data)  # same bytes if two threads race
        with lock:
            decoded += 1
            done[0] += 1
            if progress:
                progress(done[0], len(to_read))
            elif done[0] % log_every == 0 or done[0] == len(to_read):
                logger.info("Checked %d/%d objects", done[0], len(to_read))

    if to_read:
        logger.info("Reading and decoding %d objects with %d workers (%d from cache)",
                    len(to_read), config.workers, len(listing) - len(to_read))
        with ThreadPoolExecutor(max_workers=config.workers) as pool:
            list(pool.map(check, to_read))  # list() re-raises the first worker error
    elif progress:
        progress(0, 0)

    table = pd.DataFrame.from_records(records)
    # Exact duplicates: same bytes. Keep the first key; if the copies disagree on the label,
    # none can be trusted and all go to quarantine.
    ok = table[table["status"] == "ok"].sort_values("key")
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
    kept["split"] = [split_of(s, config.test_fraction) for s in kept["sha256"]]
    kept["width"] = kept["width"].astype(int)
    kept["height"] = kept["height"].astype(int)
    quarantined = table[~table["status"].isin(["ok", "duplicate"])]
    quarantine = quarantined[["key", "status", "detail", "size"]].rename(
        columns={"status": "reason"}).sort_values("key").reset_index(drop=True)
    duplicates = pd.DataFrame(dup_rows, columns=["key", "sha256", "duplicate_of"]).sort_values(
        "key").reset_index(drop=True)

    listed = len(listing)
    accounted = len(kept) + len(quarantine) + len(duplicates)
    if accounted != listed:  # a bug, never a data problem: refuse to publish
        raise RuntimeError(f"Ingestion accounting failed: {accounted} accounted for, "
                           f"{listed} listed. Nothing was published.")

    reasons = {r: int(n) for r, n in quarantine["reason"].value_counts().sort_index().items()}
    if kept.empty:
        raise IngestError(
            f"No valid labelled image under {lake.uri}: {listed} objects listed, quarantined "
            f"by reason {reasons}, {len(duplicates)} duplicates. Fix the data or the layout "
            f"(now {layout!r}).")
    present = {o.key for o in listing}
    missing = sorted(k for k in labels_map if k not in present) if layout == "csv" else []

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

    snapshot = f"versions/{version}"
    created = not root.is_published(snapshot)
    if created:
        root.publish(snapshot, {
            "manifest.csv": manifest_csv,
            "image_stats.csv": _csv_bytes(image_stats),
            "stats.json": _json_bytes(stats),
            "quarantine.csv": _csv_bytes(quarantine),
            "duplicates.csv": _csv_bytes(duplicates),
            "report.json": _json_bytes({k: v for k, v in report.items()
                                        if k not in ("decoded", "cache_hits")}),
        })
        logger.info("Published dataset version %s at %s", version, root.uri_of(snapshot))
    else:
        logger.info("Dataset version %s already published; nothing changed", version)

    root.put(f"cache/{_source_id(lake.uri)}.csv", _csv_bytes(_cache_frame(table)))

    for reason, n in reasons.items():
        logger.warning("Quarantined %d objects: %s (%s)", n, reason,
                       QUARANTINE_REASONS.get(reason, ""))
    logger.info(report["accounting"])
    return IngestResult(version=version, snapshot_uri=root.uri_of(snapshot),
                        objects_uri=objects.uri, manifest=manifest, report=report, stats=stats,
                        created=created, quarantine=quarantine, duplicates=duplicates)


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


def list_versions(dataset_root_uri: str) -> list[str]:
    """Published dataset versions under a dataset root."""
    root = open_store(dataset_root_uri)
    return sorted({o.key.split("/")[1] for o in root.list("versions")
                   if o.key.endswith("/_PUBLISHED")})


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


def report_markdown(result: IngestResult) -> str:
    """The ingestion report for people (rendered by the Kubeflow UI)."""
    r = result.report
    lines = [
        f"# Dataset {r['dataset_version']}",
        "",
        f"Source: `{r['source_uri']}` (layout: {r['layout']})  ",
        f"Snapshot: `{result.snapshot_uri}` ({'new' if result.created else 'already published'})",
        "",
        f"**{r['accounting']}**",
        "",
        "| split | " + " | ".join(r["classes"]) + " | total |",
        "|---|" + "---|" * (len(r["classes"]) + 1),
    ]
    for split in ("train", "test"):
        counts = r["splits"][split]
        lines.append(f"| {split} | " + " | ".join(str(counts.get(c, 0)) for c in r["classes"])
                     + f" | {sum(counts.values())} |")
    lines += ["", "Test share per class: " + ", ".join(
        f"{c} {v:.1%}" for c, v in r["test_share_per_class"].items()), ""]
    if r["quarantine_reasons"]:
        lines += ["## Quarantined", "", "| reason | objects | meaning |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {QUARANTINE_REASONS.get(k, '')} |"
                  for k, v in r["quarantine_reasons"].items()]
        shown = result.quarantine.head(20)
        lines += ["", "First quarantined keys:", ""]
        lines += [f"- `{k}`: {reason} ({detail})"
                  for k, reason, detail in zip(shown["key"], shown["reason"], shown["detail"], strict=False)]
        lines.append("")
    if r["duplicates"]:
        lines += [f"## Duplicates: {r['duplicates']} removed", ""]
        lines += [f"- `{k}` = `{d}`" for k, d in zip(result.duplicates["key"].head(20),
                                                   result.duplicates["duplicate_of"].head(20), strict=False)]
        lines.append("")
    for name in ("label_rows_rejected", "labels_missing_from_lake"):
        if r[name]:
            lines += [f"## {name.replace('_', ' ').capitalize()}: {len(r[name])}", ""]
            lines += [f"- {item}" for item in r[name][:20]] + [""]
    for split in ("train", "test"):
        s = result.stats[split]
        if s["count"]:
            lines.append(
                f"{split}: brightness mean {s['brightness']['mean']:.3f}, contrast mean "
                f"{s['contrast']['mean']:.3f}, width p50 {s['width']['p50']:.0f}px, height p50 "
                f"{s['height']['p50']:.0f}px  ")
    lines += ["", f"Decoded this run: {r['decoded']}; reused from cache: {r['cache_hits']}."]
    return "\n".join(lines) + "\n"
