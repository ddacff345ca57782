"""Export labelled production captures into the data lake, as a new versioned prefix.

The continuous-training pipeline retrains on the lake plus what production saw: the sampled
input images the predictor captured (``capture/images/``) that a person has since labelled
(``capture/labels/``). This module copies those images into the lake under one new prefix per
export, in the lake's folder layout so ingestion labels them like any other image::

    <lake>/<label>/production/<export_id>/<sha256>.<ext>

and publishes the export's provenance in the capture store (atomically, immutably)::

    capture/exports/<export_id>/manifest.csv   lake key, sha256, label, request id, index,
                                               served model version, capture time, who
                                               labelled it and when
    capture/exports/<export_id>/export.json    counts, what was skipped and why, the
                                               production version and dataset it is new to

"Since the production model's data version" means: only images that are not already in the
production model's dataset version (its lineage names the manifest), and not already in the
lake from an earlier export. So a second export of the same captures and labels writes
nothing and publishes nothing (idempotent); an export interrupted after copying some images
publishes the same export id when it is run again, because the id is a hash of its content.

The dataset version of the next ingestion changes (new keys), and the keys themselves name the
export, so lineage leads from a registered model to its dataset, to the export, to the
requests that were captured and the people who labelled them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field

import pandas as pd

from components.common.errors import UserError
from components.common.images import JUNK_REASONS, input_quality
from components.common.registry import ModelRegistry, RegistryError
from components.common.storage import (
    ObjectNotFoundError,
    ObjectStore,
    open_store,
    read_uri,
    sha256_bytes,
)
from components.ingest.core import PRODUCTION_SEGMENT
from components.monitor.contract import utcnow
from components.monitor.window import read_capture, read_labels

logger = logging.getLogger(__name__)

EXPORTS_PREFIX = "capture/exports"
MANIFEST_COLUMNS = ["key", "sha256", "label", "request_id", "index", "model_version",
                    "captured_at", "labelled_by", "labelled_at"]


class ExportError(UserError, ValueError):
    """An export that cannot be done; the message says what to fix."""


@dataclass
class ExportResult:
    """What one export did.

    Attributes:
        export_id: The new export's id, or the empty string when there was nothing new.
        created: True when this call published the export.
        lake_prefixes: One ``<label>/production/<export_id>`` prefix per class exported.
        manifest: One row per exported image (``MANIFEST_COLUMNS``).
        counts: Labelled instances seen, exported, already known, skipped (by reason).
        skipped: One dict per labelled instance not exported, with its reason.
        manifest_uri: Where the provenance manifest is (empty when nothing was exported).
    """

    export_id: str
    created: bool
    lake_prefixes: list[str]
    manifest: pd.DataFrame
    counts: dict
    skipped: list[dict] = field(default_factory=list)
    manifest_uri: str = ""
    production_version: int | None = None
    production_dataset: str = ""

    def summary(self) -> dict:
        return {"export_id": self.export_id, "created": self.created,
                "lake_prefixes": self.lake_prefixes, "counts": self.counts,
                "manifest_uri": self.manifest_uri,
                "production_version": self.production_version,
                "production_dataset": self.production_dataset}


def _ext(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "img"


def captured_records(store: ObjectStore, model: str, wanted: set[tuple[str, int]],
                     since: float | None = None) -> tuple[dict[tuple[str, int], dict], int]:
    """Capture records of the wanted instances; also returns how many lines were unreadable."""
    found: dict[tuple[str, int], dict] = {}
    bad = 0

    def note(kind: str, where: str) -> None:
        nonlocal bad
        bad += kind in ("parse_errors", "truncated")

    for _, rec in read_capture(store, model, None, note):
        try:
            ident = (str(rec["request_id"]), int(rec.get("index", 0)))
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if ident not in wanted:
            continue
        if since is not None and float(rec.get("time") or 0) < since:
            continue
        found[ident] = rec
    return found, bad


def _production(registry_uri: str, model: str) -> tuple[int | None, list[str] | None, str,
                                                        set[str]]:
    """The production version, its classes, dataset version and the image hashes it saw."""
    if not registry_uri:
        return None, None, "", set()
    registry = ModelRegistry(registry_uri)
    try:
        mv = registry.get(model, "@production")
    except RegistryError as exc:
        logger.info("No production model to export against: %s", exc)
        return None, None, "", set()
    classes = None
    try:
        classes = json.loads(registry.read_file(model, mv.version, "metadata.json"))["classes"]
    except (ObjectNotFoundError, KeyError, ValueError) as exc:
        logger.warning("Cannot read the classes of %s v%d: %s", model, mv.version, exc)
    known: set[str] = set()
    manifest_uri = mv.lineage.get("dataset_manifest", "")
    if manifest_uri:
        try:
            table = pd.read_csv(io.BytesIO(read_uri(manifest_uri)), dtype=str,
                                keep_default_na=False)
            known = set(table["sha256"])
        except (ObjectNotFoundError, KeyError, ValueError) as exc:
            logger.warning("Cannot read the dataset manifest %s of %s v%d (%s); only images "
                           "already in the lake are left out.", manifest_uri, model,
                           mv.version, exc)
    return mv.version, classes, mv.lineage.get("dataset_version", ""), known


def _lake_production_hashes(lake: ObjectStore, published: set[str]) -> set[str]:
    """Hashes of images that published exports put in the lake (from their keys).

    Images of an export whose provenance was never published (a crash in between) do not
    count: the next export writes them again and publishes them.
    """
    found = set()
    for obj in lake.list():
        parts = obj.key.split("/")
        if len(parts) == 4 and parts[1] == PRODUCTION_SEGMENT and parts[2] in published:
            found.add(parts[3].rsplit(".", 1)[0])
    return found


def _published_exports(store: ObjectStore) -> set[str]:
    return {o.key.split("/")[2] for o in store.list(EXPORTS_PREFIX)
            if o.key.endswith("/_PUBLISHED") and o.key.count("/") == 3}


def export_captures(monitoring_uri: str, lake_uri: str, model: str, registry_uri: str = "",
                    *, since: float | None = None, min_images: int = 1,
                    classes: list[str] | None = None) -> ExportResult:
    """Copies labelled captured images that are new to production into the lake.

    Args:
        monitoring_uri: The monitoring store (capture records, images and labels).
        lake_uri: The data lake, in the folder layout (``<label>/…``).
        model: The served model's name (the capture partition).
        registry_uri: The registry; its production version's classes validate the labels
            and its dataset manifest says which images are not new.
        since: Only instances captured at or after this unix time (default: all).
        min_images: Fewer new images than this is not worth an export: nothing is written
            (nor with none at all).
        classes: The valid labels when there is no production model to read them from.

    Returns:
        What was exported (``export_id`` empty when nothing was).

    Raises:
        ExportError: No classes to validate labels against, or invalid ``min_images``.
    """
    if min_images < 0:
        raise ExportError(f"Invalid min_images: {min_images}. Expect 0 or more.")
    store = open_store(monitoring_uri)
    lake = open_store(lake_uri)
    version, prod_classes, dataset_version, known = _production(registry_uri, model)
    classes = prod_classes or classes
    if not classes:
        raise ExportError(f"No classes to validate labels against: {model!r} has no production "
                          f"version with metadata.json in {registry_uri or '(no registry)'} "
                          "and no classes were given.")
    labels = read_labels(store, model)
    records, bad_lines = captured_records(store, model, set(labels), since)
    in_lake = _lake_production_hashes(lake, _published_exports(store))
    counts = {"labelled": len(labels), "exported": 0, "already_in_dataset": 0,
              "already_in_lake": 0, "skipped": 0, "unreadable_record_lines": bad_lines}
    skipped: list[dict] = []
    rows: list[dict] = []
    images: dict[str, bytes] = {}

    def skip(ident, reason, detail=""):
        skipped.append({"request_id": ident[0], "index": ident[1], "reason": reason,
                        "detail": detail})

    candidates: list[tuple[tuple[str, int], dict, str, str]] = []
    labels_of_sha: dict[str, set[str]] = {}
    for ident in sorted(labels):
        label_rec = labels[ident]
        label = label_rec["label"]
        rec = records.get(ident)
        if rec is None:
            skip(ident, "not_captured" if since is None else "not_captured_in_window",
                 "no capture record with this request id and index")
            continue
        sha = rec.get("image_sha256")
        if not sha:
            skip(ident, "image_not_sampled", "the predictor did not keep this input image")
            continue
        if label not in classes:
            skip(ident, "unknown_label", f"{label!r} is not one of {classes}")
            continue
        quality = rec.get("input_quality") or input_quality(rec.get("stats") or {})
        if quality in JUNK_REASONS:
            skip(ident, "junk_input", f"the predictor judged the input junk: "
                 f"{JUNK_REASONS[quality]}")
            continue
        candidates.append((ident, rec, sha, label))
        labels_of_sha.setdefault(sha, set()).add(label)
    for ident, rec, sha, label in candidates:
        if len(labels_of_sha[sha]) > 1:
            # The same image labelled differently in two requests cannot be trusted.
            skip(ident, "conflicting_labels", f"the same image is labelled "
                 f"{sorted(labels_of_sha[sha])}")
            continue
        if sha in known:
            counts["already_in_dataset"] += 1
            continue
        if sha in in_lake:
            counts["already_in_lake"] += 1
            continue
        if sha in images:
            continue  # one image seen in several requests: export it once
        try:
            data = store.get(f"capture/images/{sha[:2]}/{sha}")
        except ObjectNotFoundError:
            skip(ident, "image_missing", f"capture/images/{sha[:2]}/{sha} is absent")
            continue
        if sha256_bytes(data) != sha:
            skip(ident, "image_checksum_mismatch", "the stored bytes do not hash to their key")
            continue
        label_rec = labels[ident]
        images[sha] = data
        rows.append({"sha256": sha, "label": label, "request_id": ident[0],
                     "index": ident[1], "model_version": str(rec.get("model_version", "")),
                     "captured_at": rec.get("time"),
                     "labelled_by": label_rec.get("by") or label_rec.get("labelled_by", ""),
                     "labelled_at": label_rec.get("at") or label_rec.get("labelled_at", "")})
    counts["skipped"] = len(skipped)
    for reason in sorted({s["reason"] for s in skipped}):
        counts[f"skipped_{reason}"] = sum(1 for s in skipped if s["reason"] == reason)
    prod = {"production_version": version, "production_dataset": dataset_version}
    if not rows or len(rows) < min_images:
        logger.info("Nothing to export for %s: %d new labelled images (minimum %d); %s",
                    model, len(rows), min_images, counts)
        return ExportResult("", False, [], pd.DataFrame(columns=MANIFEST_COLUMNS), counts,
                            skipped, **prod)
    content = "\n".join(f"{r['sha256']},{r['label']}" for r in sorted(
        rows, key=lambda r: r["sha256"])).encode()
    export_id = hashlib.sha256(content).hexdigest()[:16]
    for r in rows:
        r["key"] = (f"{r['label']}/{PRODUCTION_SEGMENT}/{export_id}/{r['sha256']}."
                    f"{_ext(images[r['sha256']])}")
    manifest = pd.DataFrame(rows)[MANIFEST_COLUMNS].sort_values("key").reset_index(drop=True)
    counts["exported"] = len(manifest)
    folder = f"{EXPORTS_PREFIX}/{export_id}"
    created = not store.is_published(folder)
    if created:
        # Images first, then the provenance: a crash in between leaves images that the next
        # run writes again under the same keys (same bytes) and then publishes.
        for r in rows:
            lake.put(r["key"], images[r["sha256"]])
        info = {"export_id": export_id, "model": model, "created": utcnow(),
                "lake_uri": lake.uri,
                "lake_prefixes": sorted({k.rsplit("/", 1)[0] for k in manifest["key"]}),
                "monitoring_uri": store.uri, "since": since, "counts": counts,
                "skipped": skipped, **prod,
                "class_counts": {k: int(v) for k, v in
                                 manifest["label"].value_counts().sort_index().items()}}
        store.publish(folder, {
            "manifest.csv": manifest.to_csv(index=False, lineterminator="\n").encode(),
            "export.json": json.dumps(info, indent=2, sort_keys=True, default=str).encode()})
        logger.info("Exported %d labelled production images to %s (export %s)", len(manifest),
                    lake.uri, export_id)
    prefixes = sorted({k.rsplit("/", 1)[0] for k in manifest["key"]})
    return ExportResult(export_id, created, prefixes, manifest, counts, skipped,
                        store.uri_of(f"{folder}/manifest.csv"), **prod)


def read_export(monitoring_uri: str, export_id: str) -> tuple[dict, pd.DataFrame]:
    """An export's provenance (``export.json``) and manifest, verified against checksums."""
    store = open_store(monitoring_uri)
    folder = f"{EXPORTS_PREFIX}/{export_id}"
    try:
        info = json.loads(store.read_published(folder, "export.json"))
        manifest = pd.read_csv(io.BytesIO(store.read_published(folder, "manifest.csv")),
                               dtype={"key": str, "sha256": str, "label": str,
                                      "request_id": str, "model_version": str},
                               keep_default_na=False)
    except ObjectNotFoundError as exc:
        raise ExportError(f"No export {export_id!r} under {store.uri_of(EXPORTS_PREFIX)}.") \
            from exc
    return info, manifest


def list_exports(monitoring_uri: str) -> list[str]:
    """Published export ids, oldest first."""
    store = open_store(monitoring_uri)
    found = []
    for obj in store.list(EXPORTS_PREFIX):
        if obj.key.endswith("/_PUBLISHED"):
            found.append((store.get_json(f"{obj.key.rsplit('/', 1)[0]}/export.json")
                          ["created"], obj.key.split("/")[2]))
    return [e for _, e in sorted(found)]
