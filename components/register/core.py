"""Registering: a package folder + where it came from -> a registry version."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from components.common.registry import ModelRegistry, ModelVersion, RegistryError
from components.ingest.core import object_key
from components.ingest.snapshot import load_snapshot, read_split, root_of_snapshot
from components.monitor.reference import REFERENCE_DIR, build_reference_files
from components.settings import code_version

logger = logging.getLogger(__name__)


def run_name(job_name: str) -> str:
    """The pipeline run of a task's job name: kfp.local names the job of a task inside
    ``dsl.If`` ``<run>/condition-N``; a Kubernetes name has no ``/``, so the run is the part
    before it."""
    return job_name.split("/", 1)[0]


#: Fewest recent production images in the test split a retrained version's reference is built
#: from; with fewer, its reference is the usual one (the dataset's test split).
MIN_RECENT_REFERENCE = 40


def split_rows(dataset: dict, split: str):
    """The manifest rows of one split (``train`` or ``test``) of the dataset version that
    ``dataset`` (a split folder's ``dataset.json``) names, with each image's ``uri``."""
    manifest = load_snapshot(root_of_snapshot(dataset["snapshot_uri"]),
                             dataset["dataset_version"])
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    return rows.assign(uri=[f"{dataset['objects_uri']}/{object_key(h)}" for h in rows["sha256"]])


def recent_reference_rows(test_rows, prefixes: list[str], sample_size: int = 1000):
    """The reference sample of a version retrained on exported production data.

    A version retrained because production's images changed (the camera's night mode) is
    judged against what production looks like now, not against the mix of its training data:
    its reference is the exported production images under ``prefixes`` in the test split
    (never fitted on, and never selected on: the validation part of the training split chose
    the epoch and the trial, so it is left out), at most ``sample_size`` of them chosen by
    content hash. With fewer than :data:`MIN_RECENT_REFERENCE`, or no export, the usual
    reference (the whole dataset's test split) is used.

    Returns:
        (rows or None, what they are in words).
    """
    if not prefixes:
        return None, ""
    prefixes = tuple(p.rstrip("/") + "/" for p in prefixes)
    rows = test_rows[test_rows["key"].str.startswith(prefixes)]
    rows = rows.sort_values("sha256").head(sample_size).reset_index(drop=True)
    if len(rows) < MIN_RECENT_REFERENCE:
        logger.info("Only %d test-split images of the exported production data (%s); the "
                    "reference is the dataset's test split", len(rows), ", ".join(prefixes))
        return None, ""
    logger.info("Reference: %d test-split images of the exported production data", len(rows))
    return rows, (f"recent production images in the test split (never fitted or selected "
                  f"on), exported under {', '.join(prefixes)}: {len(rows)}")


def register_package(package_dir: str, model_dir: str, evaluation_path: str, train_dir: str,
                     registry_uri: str, model_name: str, alias: str = "staging",
                     pipeline_run: str = "", reference_sample: int = 1000,
                     extra_lineage: dict | None = None) -> ModelVersion:
    """Registers the files of ``package_dir`` with a full lineage record.

    The version also gets its monitoring reference (``reference/``: embeddings, input
    statistics and predictions of up to ``reference_sample`` images of the test split, the
    class prior and a fitted drift detector; see ``components.monitor.reference``; for a
    version retrained on exported production data, of those production images instead: see
    :func:`recent_reference_rows`), published
    with the package as one immutable version. ``reference_sample=0`` leaves it out (the
    monitor then builds one from the dataset version when it first needs it).

    ``extra_lineage`` adds keys to the record (for example the monitoring verdict that started
    a retraining run and the production data it exported); it cannot replace the keys above.
    """
    pipeline_run = run_name(pipeline_run)
    package = Path(package_dir)
    files = {p.relative_to(package).as_posix(): p.read_bytes()
             for p in sorted(package.rglob("*")) if p.is_file()}
    if "model.onnx" not in files:
        raise RegistryError(f"No model.onnx in {package_dir}: register a package built by the "
                            "package step.")
    model_meta = json.loads((Path(model_dir) / "model.json").read_text())
    evaluation = json.loads(Path(evaluation_path).read_text())
    dataset = json.loads((Path(train_dir) / "dataset.json").read_text())
    registry = ModelRegistry(registry_uri)
    try:
        parent = registry.resolve(model_name, "@production")
    except RegistryError:
        parent = None
    trials_path = Path(model_dir) / "trials.json"
    lineage = {
        "dataset_version": dataset["dataset_version"],
        "dataset_snapshot": dataset["snapshot_uri"],
        "dataset_manifest": dataset["snapshot_uri"] + "/manifest.csv",
        "dataset_source": dataset["source_uri"],
        "code_version": code_version(),
        "pipeline_run": pipeline_run,
        "arch": model_meta["arch"],
        "hyperparameters": model_meta["hparams"],
        "training": {"best_epoch": model_meta["best_epoch"],
                     "val_accuracy": model_meta["val_accuracy"],
                     "history": model_meta["history"],
                     # nodes and processes of a distributed (torchrun / TrainJob) training
                     "distributed": model_meta.get("distributed",
                                                   {"nodes": 1, "processes": 1, "backend": ""})},
        "search_trials": json.loads(trials_path.read_text()) if trials_path.exists() else [],
        "metrics": {"accuracy": evaluation["metrics"]["accuracy"],
                    "macro_f1": evaluation["metrics"]["macro"]["f1"],
                    "roc_auc": evaluation["metrics"]["roc_auc"],
                    "per_class": evaluation["metrics"]["per_class"],
                    "recall_gap": evaluation["gate"]["bias"]["recall_gap"]},
        "gate": {"blessed": evaluation["gate"]["blessed"],
                 "champion_version": evaluation["gate"].get("champion_version")},
        "parent_version": parent,
    }
    clash = sorted(set(extra_lineage or {}) & set(lineage))
    if clash:
        raise RegistryError(f"extra_lineage may not replace lineage keys {clash}.")
    lineage.update(extra_lineage or {})
    if not evaluation["gate"]["blessed"]:
        raise RegistryError("Refusing to register a model the quality gate did not bless: "
                            + "; ".join(evaluation["gate"]["reasons"]))
    if reference_sample > 0:
        train_rows, _ = read_split(train_dir)
        test_rows = split_rows(dataset, "test")
        prefixes = ((extra_lineage or {}).get("production_data") or {}).get("lake_prefixes")
        recent, population = recent_reference_rows(test_rows, prefixes or [],
                                                   reference_sample)
        # Each context gets its part of the reference (the test split's images of it,
        # topped up from the recent production images where it has too few).
        reference = build_reference_files(files["model.onnx"], train_rows,
                                          dataset["dataset_version"], reference_sample,
                                          population=population,
                                          test_rows=test_rows, top_up_rows=recent)
        files.update({f"{REFERENCE_DIR}/{k}": v for k, v in reference.items()})
        lineage["monitoring_reference"] = f"{REFERENCE_DIR}/reference.json"
    mv = registry.register(model_name, files, lineage)
    if alias:
        registry.set_alias(model_name, alias, mv.version,
                           reason=f"registered by {pipeline_run or 'a local run'}")
    return mv
