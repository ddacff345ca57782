"""The monitoring reference of a model version: what its training data looked like to it.

A window of production traffic is judged against the reference of the version that served
it. The reference is the dataset version's test split (all of it, or ``SAMPLE_SIZE`` images
of it chosen by content hash): images the training run never fitted on and never selected on
(training chooses its epoch and its trial on the validation part of the training split, so
that part's accuracy flatters the model; the reference's accuracy is the floor of the
accuracy checks and the calibration of the label-free estimate). It is seen through the
packaged ONNX model exactly as the predictor sees production inputs:

    reference/reference.json      classes, class prior of the training split, the sample's
                                  true labels, input statistics (``images.image_stats``, the
                                  function the predictor uses) and modes, dataset version
    reference/embeddings.npy      float32 [n, d]: the model's ``embedding`` output
    reference/probabilities.npy   float32 [n, classes]: the model's probabilities
    reference/detector/…          a fitted MMD drift detector on the embeddings of the
                                  sample in the training split's class shares (the rows
                                  the drift tests use: contract.prior_mask)
                                  (``components.monitor.drift``, its backend's own format)

The sample's network inputs and statistics come from the dataset version's training-ready
shards (``components.ingest.shards``: built once per version and input size by the same
``decode_and_measure`` the predictor runs, statistics stored beside the pixels), so building
a reference reads no photo; rows that are not from a published snapshot are decoded.

At registration (``components.register.core``) these files are published with the version,
so a version and its reference are one immutable unit. A version registered without one
(before this step existed) gets one on demand from the dataset version its lineage names,
published beside the versions at ``<model>/references/<version>/`` in the registry store:
:func:`load_reference` builds it the first time it is asked for.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.errors import UserError
from components.common.paths import mlops_home
from components.common.registry import ModelRegistry
from components.common.runtime import EMBEDDING, PROBABILITIES, OnnxModel, load_onnx
from components.common.storage import (
    AlreadyExistsError,
    ObjectNotFoundError,
    StorageError,
    open_store,
)
from components.ingest.core import IngestError, object_key
from components.ingest.shards import split_images_and_stats
from components.ingest.snapshot import load_snapshot, root_of_snapshot
from components.monitor import drift
from components.monitor.contract import (
    MIN_CONTEXT_IMAGES,
    SAMPLE_SIZE,
    STAT_FIELDS,
    Reference,
    prior_mask,
)

logger = logging.getLogger(__name__)

REFERENCE_DIR = "reference"
FORMAT = 1


class ReferenceDataError(UserError, ValueError):
    """A reference that cannot be built or read; the message says what to do."""


class ReferenceMissing(ReferenceDataError, FileNotFoundError):
    """The version has no reference and none could be built."""


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def held_out_sample(test_rows, sample_size: int = SAMPLE_SIZE):
    """The reference images: the test split, all of it up to ``sample_size`` rows, beyond
    that ``sample_size`` of them chosen by content hash so that the choice is stable."""
    held_out = test_rows
    if len(held_out) > sample_size:
        held_out = held_out.sort_values("sha256").head(sample_size)
    return held_out.reset_index(drop=True)


def test_population(n: int, total: int) -> str:
    """What a sample of ``n`` of the ``total`` test-split images is, in words."""
    which = "all of it" if n >= total else f"{n} of its {total} images, chosen by content hash"
    return ("the dataset's test split, never fitted or selected on (training chooses its "
            f"epoch and trial on the validation part of the training split): {which}")


def class_prior(train_rows) -> dict[str, float]:
    counts = train_rows["label"].value_counts()
    total = float(counts.sum())
    return {str(k): round(float(v) / total, 6) for k, v in sorted(counts.items())}


def _measure(sample, size: int, dataset_version: str = "", use_shards: bool = True
             ) -> tuple[np.ndarray, list[dict]]:
    """The sample's network inputs and input statistics, as the predictor gets them
    (``images.decode_and_measure``: one decode gives both).

    Rows of a published snapshot are read from the dataset version's shards, whose
    statistics table was measured by that same function when the shards were built (once per
    version and size); other rows are decoded here.
    """
    return split_images_and_stats(sample, size, dataset_version, use_shards)


def _run_onnx(model: OnnxModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities and embeddings of the images, 256 per ONNX Runtime call."""
    if not model.has_embedding:
        raise ReferenceDataError("The package's model.onnx has no 'embedding' output, so its "
                                 "inputs cannot be compared with production's: package the "
                                 "model again with the current package step.")
    probs, embs = model.run(images, (PROBABILITIES, EMBEDDING), batch=256)
    return probs.astype(np.float32), embs.astype(np.float32)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _fit_detector(embeddings: np.ndarray) -> dict[str, bytes]:
    """Fits the MMD drift detector on the reference embeddings and returns its saved files
    (empty when the drift backend is not installed)."""
    try:
        detector = drift.make_detector("mmd", embeddings)
        with tempfile.TemporaryDirectory() as tmp:
            detector.save(tmp)
            return {p.relative_to(tmp).as_posix(): p.read_bytes()
                    for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    except ImportError as exc:  # the backend's optional dependency
        logger.warning("Could not fit the reference's drift detector (%s); the monitor fits "
                       "one when it first needs it.", exc)
        return {}


def build_reference_files(onnx_bytes: bytes, train_rows, dataset_version: str,
                          sample_size: int = SAMPLE_SIZE, detector: bool = True,
                          use_shards: bool = True, sample_rows=None,
                          population: str = "", test_rows=None,
                          top_up_rows=None) -> dict:
    """The reference of a packaged model as files (``reference.json``, arrays, detector).

    Args:
        onnx_bytes: The package's ``model.onnx`` (with the ``embedding`` output).
        train_rows: The training split's manifest rows (``uri``, ``label``, ``sha256``): the
            class prior.
        dataset_version: The dataset version the rows come from.
        sample_size: Most test-split images to include.
        detector: Fit and include the drift detector.
        use_shards: Read the sample's inputs and statistics from the dataset version's
            shards at the model's input size (built if missing); off, or for rows that are
            not from a published snapshot, every image is decoded. Both give the same
            reference.
        sample_rows: The reference images, chosen by the caller instead of the test split
            (rows never fitted or selected on, e.g. the recent production images of a
            retrained version); ``train_rows`` still gives the class prior.
        population: What ``sample_rows`` are, in words, for ``reference.json``.
        test_rows: The dataset version's test split (same columns): the reference images
            unless ``sample_rows`` are given.
        top_up_rows: Images the model was not trained on (the held-out production images of
            a retrained version) that join the reference for each context of which the
            sample has fewer than :data:`MIN_CONTEXT_IMAGES` (the contexts training had too
            few of), up to that many of each such context.

    Each image's context (``images.measure_context``, recorded with its statistics) is
    stored with it (``contexts``), so the monitor judges each context against its own part.

    Returns:
        Relative file name -> bytes (names without the ``reference/`` folder).
    """
    if len(train_rows) == 0:
        raise ReferenceDataError("The training split is empty: there is nothing to build a "
                                 "monitoring reference from.")
    model = load_onnx(onnx_bytes)
    meta, classes = model.metadata, model.classes
    if sample_rows is None:
        if test_rows is None:
            raise ReferenceDataError("No test split to build the monitoring reference from: "
                                     "pass the dataset version's test rows (test_rows).")
        sample = held_out_sample(test_rows, sample_size)
        population = test_population(len(sample), len(test_rows))
    else:
        sample = sample_rows.sort_values("sha256").head(sample_size).reset_index(drop=True)
    if len(sample) < 2:
        raise ReferenceDataError(f"The reference sample ({population or 'the test split'}) "
                                 f"has {len(sample)} images; a drift test needs more. Ingest "
                                 "more images.")
    try:
        images, stats = _measure(sample, model.size, dataset_version, use_shards)
    except (StorageError, OSError, ValueError) as exc:
        raise ReferenceDataError(f"Cannot read the reference images of dataset "
                                 f"{dataset_version} to build the monitoring reference: "
                                 f"{exc}") from exc
    contexts = [s["context"] for s in stats]
    counts = Counter(contexts)
    added = 0
    if top_up_rows is not None and len(top_up_rows):
        extra = top_up_rows[~top_up_rows["sha256"].isin(set(sample["sha256"]))]
        extra = extra.sort_values("sha256").reset_index(drop=True)
        if len(extra):
            try:
                x_extra, s_extra = _measure(extra, model.size, dataset_version, use_shards)
            except (StorageError, OSError, ValueError) as exc:
                raise ReferenceDataError(f"Cannot read the production images of dataset "
                                     f"{dataset_version} for the monitoring reference: "
                                     f"{exc}") from exc
            keep = []
            for i, st in enumerate(s_extra):
                if counts[st["context"]] < MIN_CONTEXT_IMAGES:
                    counts[st["context"]] += 1
                    keep.append(i)
            if keep:
                sample = pd.concat([sample, extra.iloc[keep]], ignore_index=True)
                images = np.concatenate([images, x_extra[keep]])
                stats = stats + [s_extra[i] for i in keep]
                contexts = [s["context"] for s in stats]
                added = len(keep)
    probs, embs = _run_onnx(model, images)
    doc = {
        "format": FORMAT,
        "classes": classes,
        "prior": class_prior(train_rows),
        "dataset_version": dataset_version,
        "model_id": meta.get("model_version", ""),
        "sample": {"n": int(len(sample)), "from": population,
                   "train_rows": int(len(train_rows)), "production_top_up": added},
        "contexts": contexts,
        "labels": [str(v) for v in sample["label"]],
        "sha256": [str(v) for v in sample["sha256"]],
        "stats": {name: [s[name] for s in stats] for name in STAT_FIELDS},
        "modes": dict(Counter(s["mode"] for s in stats)),
        "embedding_dim": int(embs.shape[1]),
        "accuracy": round(float(np.mean([classes[i] == t for i, t in
                                         zip(probs.argmax(1), sample["label"], strict=True)])),
                          6),
    }
    files = {"reference.json": json.dumps(doc, indent=1, sort_keys=True).encode(),
             "embeddings.npy": _npy(embs), "probabilities.npy": _npy(probs)}
    if detector:  # on the rows the drift tests use (contract.Reference.at_prior)
        at_prior = prior_mask(doc["labels"], doc["prior"])
        files.update({f"detector/{k}": v for k, v in _fit_detector(embs[at_prior]).items()})
    logger.info("Monitoring reference: %d held-out images of dataset %s (%s; %d production "
                "images added), embedding %d, detector %s", len(sample), dataset_version,
                dict(Counter(contexts)), added, embs.shape[1],
                "fitted" if any(k.startswith("detector/") for k in files) else "not fitted")
    return files


# ---------------------------------------------------------------------------------------------
# Registry locations
# ---------------------------------------------------------------------------------------------


def _locations(model: str, version: int) -> list[tuple[str, str]]:
    """(published folder, file prefix inside it) where a version's reference may live."""
    return [(f"{model}/versions/{version}", f"{REFERENCE_DIR}/"),
            (f"{model}/references/{version}", "")]


def _find(store, model: str, version: int) -> tuple[str, str, dict] | None:
    for folder, prefix in _locations(model, version):
        try:
            marker = store.get_json(f"{folder}/_PUBLISHED")
        except ObjectNotFoundError:
            continue
        if f"{prefix}reference.json" in marker["files"]:
            return folder, prefix, marker
    return None


def has_reference(registry_uri: str, model: str, version: int) -> bool:
    return _find(open_store(registry_uri), model, int(version)) is not None


def build_reference(registry_uri: str, model: str, version: int,
                    sample_size: int = SAMPLE_SIZE, dataset_root: str = "") -> str:
    """Builds the reference of a registered version that has none, from the dataset version
    its lineage names, and publishes it at ``<model>/references/<version>/``.

    Args:
        registry_uri: The registry.
        model, version: Which version.
        sample_size: Most test-split images to include.
        dataset_root: Where the dataset versions live, when the lineage's snapshot URI has
            moved (default: the folder of the snapshot the lineage records).

    Returns:
        The URI of the reference folder.
    """
    registry = ModelRegistry(registry_uri)
    mv = registry.get(model, int(version))
    found = _find(registry.store, model, mv.version)
    if found:
        return registry.store.uri_of(found[0])
    lineage = mv.lineage
    dataset_version = lineage.get("dataset_version", "")
    snapshot = lineage.get("dataset_snapshot", "")
    if not dataset_version or not (snapshot or dataset_root):
        raise ReferenceMissing(f"{model} version {mv.version} has no monitoring reference and "
                               "its lineage names no dataset version to build one from.")
    root = dataset_root or root_of_snapshot(snapshot)
    try:
        manifest = load_snapshot(root, dataset_version)
    except (IngestError, StorageError) as exc:
        raise ReferenceMissing(f"{model} version {mv.version} has no monitoring reference, and "
                               f"its dataset version {dataset_version} cannot be read from "
                               f"{root}: {exc} Pass the dataset root where it lives now.") from exc
    objects = open_store(root).child("objects").uri
    rows, test = (manifest[manifest["split"] == split].reset_index(drop=True)
                  for split in ("train", "test"))
    rows, test = (r.assign(uri=[f"{objects}/{object_key(s)}" for s in r["sha256"]])
                  for r in (rows, test))
    onnx_bytes = registry.read_file(model, mv.version, "model.onnx")
    files = build_reference_files(onnx_bytes, rows, dataset_version, sample_size,
                                  test_rows=test)
    folder = f"{model}/references/{mv.version}"
    try:
        registry.store.publish(folder, files)
    except AlreadyExistsError:
        logger.info("Another process published the reference of %s version %d first",
                    model, mv.version)
    logger.info("Built the monitoring reference of %s version %d from dataset %s", model,
                mv.version, dataset_version)
    return registry.store.uri_of(folder)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _cache_dir(registry_uri: str, model: str, version: int) -> Path:
    import hashlib

    key = hashlib.sha256(open_store(registry_uri).uri.encode()).hexdigest()[:12]
    return mlops_home() / "cache" / "references" / key / model / str(version)


def load_reference(registry_uri: str, model: str, version: int, monitoring_uri: str = "",
                   build: bool = True, cache_dir: str | os.PathLike | None = None) -> Reference:
    """The monitoring reference of a registered version (contract ``Reference``).

    Every file is verified against the version's publish checksums. The fitted detector is
    copied to a local folder (``detector_uri``) since detectors load from a path.

    Args:
        registry_uri: The registry.
        model, version: Which version.
        monitoring_uri: Unused by the data layout (the reference lives with the version in
            the registry); accepted for the monitor's call signature.
        build: Build one from the version's dataset when it has none.
        cache_dir: Where to put the detector's files (default under ``$MLOPS_HOME/cache``).

    Raises:
        ReferenceMissing: No reference, and none could be built (the message says why).
    """
    del monitoring_uri
    store = open_store(registry_uri)
    version = int(version)
    found = _find(store, model, version)
    if found is None:
        if not build:
            raise ReferenceMissing(f"{model} version {version} has no monitoring reference. "
                                   f"Build one: mlops monitor reference {model} {version}.")
        build_reference(registry_uri, model, version)
        found = _find(store, model, version)
    folder, prefix, marker = found

    def read(name: str) -> bytes:
        return store.read_published(folder, prefix + name)

    doc = json.loads(read("reference.json"))
    embeddings = np.load(io.BytesIO(read("embeddings.npy")), allow_pickle=False)
    probabilities = np.load(io.BytesIO(read("probabilities.npy")), allow_pickle=False)
    detector_files = sorted(n for n in marker["files"] if n.startswith(prefix + "detector/"))
    detector_uri = ""
    if detector_files:
        out = Path(cache_dir) if cache_dir else _cache_dir(registry_uri, model, version)
        out = out / "detector"
        for name in detector_files:
            path = out / name[len(prefix + "detector/"):]
            data = read(name[len(prefix):])
            if not path.is_file() or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        detector_uri = str(out)
    return Reference(model=model, model_version=str(version), classes=doc["classes"],
                     prior=doc["prior"], embeddings=embeddings, stats=doc["stats"],
                     modes=doc.get("modes", {}), labels=doc.get("labels", []),
                     probabilities=probabilities, dataset_version=doc.get("dataset_version", ""),
                     detector_uri=detector_uri,
                     uri=store.uri_of(f"{folder}/{prefix}".rstrip("/")),
                     population=(doc.get("sample") or {}).get("from", ""),
                     contexts=doc.get("contexts", []))
