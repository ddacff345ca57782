"""The steps only continuous training has: what started it, warm start, reference activation.

Plain Python, called by :mod:`components.retrain.component` and by the closed-loop demo.
"""

from __future__ import annotations

import json
import logging

from components.common.errors import UserError
from components.common.governance import AuditLog, GovernanceStore
from components.common.registry import ModelRegistry, RegistryError
from components.common.storage import ObjectNotFoundError, StorageError, open_store
from components.monitor import reference as ref_mod
from components.monitor.core import read_history
from components.monitor.window import parse_time
from components.train.core import HParams

logger = logging.getLogger(__name__)

#: Where the torch weights are in a registered version (``components.package.core``).
TORCH_WEIGHTS = "torch/model.pt"

#: How the message of a retraining that had nothing new to train on begins (the local
#: launcher tells that ending from a failure by it: ``pipelines.launchers``).
NOTHING_NEW = "Nothing new to train on"


class NothingToRetrainError(UserError, ValueError):
    """A retraining without enough new labelled production images: it does not train (the
    model would learn nothing production has not), and says what would give it some."""


def nothing_new_message(counts: dict, min_images: int) -> str:
    """Why an export left nothing to retrain on, and the commands that change that (one line:
    it is the export step's error, which the launcher's result and the episode show)."""
    labelled, exported = int(counts.get("labelled", 0)), int(counts.get("exported", 0))
    why = []
    for key, words in (("skipped_image_not_sampled", "without a kept image (the capture keeps "
                        "a share of input images: MLOPS_CAPTURE_IMAGE_RATE on the model "
                        "server, 0.05 by default; raise it where the server starts, e.g. "
                        "mlops deploy stop, then MLOPS_CAPTURE_IMAGE_RATE=1.0 mlops deploy "
                        "start)"),
                       ("already_in_dataset", "already in production's dataset"),
                       ("already_in_lake", "already exported to the lake by an earlier "
                        "retraining"),
                       ("skipped_not_captured", "without a capture record"),
                       ("skipped_not_captured_in_window", "captured before the export's "
                        "start (since)"),
                       ("skipped_junk_input", "judged junk inputs"),
                       ("skipped_unknown_label", "labelled with no class of the model"),
                       ("skipped_conflicting_labels", "with conflicting labels"),
                       ("skipped_image_missing", "whose kept image is missing")):
        if counts.get(key):
            why.append(f"{counts[key]} {words}")
    of = f": {'; '.join(why)}" if why else ""
    return (f"{NOTHING_NEW}: {exported} new labelled production images kept, fewer than "
            f"min_new_images {min_images}; {labelled} labelled requests{of}. Nothing was "
            "trained and production is unchanged. Label requests whose image was kept (mlops "
            "trace REQUEST_ID says whether it was; mlops monitor label REQUEST_ID LABEL), "
            "then retrain: mlops govern retrain --reason WHY")


def _same_lake(a: str, b: str) -> bool:
    try:
        return open_store(a).uri.rstrip("/") == open_store(b).uri.rstrip("/")
    except (StorageError, OSError, ValueError):
        return a.rstrip("/") == b.rstrip("/")


def production_training_options(registry_uri: str, model_name: str,
                                data_uri: str = "") -> dict:
    """How production's dataset was read and its model trained, for a retraining of it.

    From the production version's lineage (``dataset_source``, ``hyperparameters``) and its
    dataset snapshot's ``report.json`` (what the ingestion recorded): ``data_uri`` (the lake),
    ``labels_csv``, ``layout``, ``classes``, ``label_aliases``, ``test_fraction`` and
    ``image_size``, each only where it is known. A retraining on another lake (``data_uri``
    given and not production's) gets only ``image_size``: production's labels CSV does not
    label another lake.

    Returns:
        Continuous-training arguments; empty when there is no production version to read.
    """
    try:
        lineage = ModelRegistry(registry_uri).get(model_name, "@production").lineage
    except (RegistryError, StorageError, OSError, ValueError) as exc:
        logger.info("No production lineage to retrain like (%s)", exc)
        return {}
    out: dict = {}
    size = (lineage.get("hyperparameters") or {}).get("image_size")
    if isinstance(size, int) and size > 0:
        out["image_size"] = size
    source, snapshot = lineage.get("dataset_source"), lineage.get("dataset_snapshot")
    if not source or (data_uri and not _same_lake(data_uri, source)):
        return out
    out["data_uri"] = source
    if not snapshot:
        return out
    try:
        report = json.loads(open_store(snapshot).get("report.json"))
    except (StorageError, OSError, ValueError) as exc:
        logger.warning("Cannot read how production's dataset was ingested (%s/report.json: "
                       "%s); the lake is read with the pipeline's defaults", snapshot, exc)
        return out
    if report.get("labels_csv"):
        out["labels_csv"] = report["labels_csv"]
    if report.get("layout"):
        out["layout"] = report["layout"]
    classes = report.get("declared_classes") or report.get("classes")
    if classes:
        out["classes"] = ",".join(classes)
    if report.get("label_aliases") is not None:
        out["label_aliases"] = report["label_aliases"]
    if isinstance(report.get("test_fraction"), int | float):
        out["test_fraction"] = float(report["test_fraction"])
    return out


def parse_trigger(trigger: str) -> dict:
    """The trigger a run was started with, as a dict for the lineage.

    Governance passes the episode and verdict as JSON (``components.govern.trigger``); a
    person may pass a plain reason ("new camera installed"), kept as ``reason``; empty is a
    run started by hand.
    """
    text = (trigger or "").strip()
    if not text:
        return {"kind": "manual"}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"kind": "manual", "reason": text}
    if not isinstance(value, dict):
        return {"kind": "manual", "reason": text}
    return {"kind": "monitoring", **value} if value.get("verdict") else {"kind": "manual",
                                                                         **value}


def lineage_record(trigger: str, export: dict) -> dict:
    """The lineage keys a retrained version gets: its trigger and the production data."""
    return {"trigger": parse_trigger(trigger), "production_data": export}


#: Check kinds whose alarms open a retraining episode (``components/govern/default_policy.yaml``).
EPISODE_KINDS = ("drift", "prediction_drift", "performance")


def export_since(trigger: str, since: float = 0.0, from_episode: bool = True,
                 monitoring_uri: str = "") -> float | None:
    """From when production captures are exported for a retraining run.

    ``since`` (a unix time) wins when set. Otherwise, for a run started by governance, the
    captures since production was last judged normal: the end of the latest window of the
    same version that ends inside the window that opened the episode, whose checks of the
    episode's kinds were all measured and none alarmed (the monitoring history in
    ``monitoring_uri``); without one, the start of the window that opened the episode. These
    are the images of the change (the camera's night mode), not the production data the model
    was already good at. The trade-off: a window that straddled the change without reaching
    significance counts as normal, so up to its newest part of the change is left out.
    ``None``: every capture not yet in the lake.
    """
    if since:
        return float(since)
    info = parse_trigger(trigger) if from_episode else {}
    if not info.get("window_start") or not info.get("window_end"):
        return None
    try:
        start, end = parse_time(info["window_start"]), parse_time(info["window_end"])
    except ValueError:
        logger.warning("Trigger window %r – %r is not in ISO time; exporting every new capture",
                       info["window_start"], info["window_end"])
        return None
    kinds = {c.get("kind") for c in info.get("checks") or [] if isinstance(c, dict)}
    kinds = (kinds & set(EPISODE_KINDS)) or set(EPISODE_KINDS)
    normal_end = None
    if monitoring_uri and info.get("model"):
        for verdict in read_history(monitoring_uri, str(info["model"]),
                                    ends_between=(start, end)):
            if str(verdict.model_version) != str(info.get("model_version")):
                continue
            judged = [c for c in verdict.checks if c.kind in kinds
                      and not (c.extra or {}).get("too_few")]  # a context barely seen
            if not judged or any(c.status in ("alarm", "unknown") for c in judged):
                continue
            try:
                v_end = parse_time(verdict.window_end)
            except ValueError:
                continue
            if start <= v_end < end:
                normal_end = max(normal_end or v_end, v_end)
    chosen = normal_end or start
    logger.info("Exporting captures since %s (%s)", chosen.isoformat(),
                "the end of the last window judged normal" if normal_end else
                "the start of the window that opened the episode")
    return chosen.timestamp()


def warm_start_space(search_space: str, registry_uri: str, model_name: str, work_uri: str,
                     enabled: bool = True, image_size: int = 0) -> tuple[str, dict]:
    """The search space, warm-started from the production model's PyTorch weights if it can.

    The weights are read from the registry (checksum verified) and copied to ``work_uri`` so
    every trial task reads the same verified file; the space gets ``pretrained`` set to it
    and ``arch`` set to the production model's architecture (weights only fit their own).

    Args:
        image_size: The network input side; 0 is production's (its lineage's
            hyperparameters), else :class:`components.train.core.HParams`' default.

    Returns:
        (the search space JSON, what was decided: ``{"warm_start", "version", "weights",
        "reason", "image_size"}``).
    """
    decision = _warm_start(search_space, registry_uri, model_name, work_uri, enabled)
    if image_size <= 0:
        image_size = production_training_options(registry_uri, model_name).get(
            "image_size", HParams().image_size)
    return decision[0], {**decision[1], "image_size": image_size}


def _warm_start(search_space: str, registry_uri: str, model_name: str, work_uri: str,
                enabled: bool) -> tuple[str, dict]:
    try:
        space = json.loads(search_space)
    except json.JSONDecodeError as exc:
        raise ValueError(f"Invalid search_space: {exc}. Expect a JSON object of parameter -> "
                         "list of values.") from exc
    if not isinstance(space, dict):
        raise ValueError("Invalid search_space: expect a JSON object of parameter -> values.")
    if not enabled:
        return json.dumps(space), {"warm_start": False, "reason": "warm start turned off"}
    registry = ModelRegistry(registry_uri)
    try:
        mv = registry.get(model_name, "@production")
        weights = registry.read_file(model_name, mv.version, TORCH_WEIGHTS)
    except (RegistryError, ObjectNotFoundError, StorageError) as exc:
        logger.info("Training from scratch: no production weights to start from (%s)", exc)
        return json.dumps(space), {"warm_start": False, "reason": str(exc)}
    arch = mv.lineage.get("arch") or mv.lineage.get("hyperparameters", {}).get("arch")
    store = open_store(work_uri)
    store.put("warm_start.pt", weights)
    uri = store.uri_of("warm_start.pt")
    space["pretrained"] = [uri]
    if arch:
        space["arch"] = [arch]
    logger.info("Warm start from %s version %d (%s weights, %d bytes)", model_name, mv.version,
                arch, len(weights))
    return json.dumps(space), {"warm_start": True, "version": mv.version, "weights": uri,
                               "arch": arch}


def activate_reference(registry_uri: str, model_name: str, version: int, decision: str,
                       monitoring_uri: str, trigger: str = "") -> dict:
    """After a release: make the released version's monitoring reference the active one.

    The monitor judges traffic against the reference of the version in production, so
    activation is the alias move plus a reference that is there when the first window is
    judged: this checks that production now serves ``version``, builds the reference from the
    version's dataset if it was registered without one, loads it once (so its cache is warm),
    and records the release and the reference in the governance audit log.

    Returns:
        ``{"active", "version", "reference_uri", "reason"}``.
    """
    registry = ModelRegistry(registry_uri)
    try:
        production = registry.resolve(model_name, "@production")
    except RegistryError:
        production = None
    if decision not in ("promoted", "deployed") or production != int(version):
        reason = (f"release decision {decision!r}; production serves version {production}, "
                  f"so the reference of version {production} stays active")
        logger.info("Reference not switched: %s", reason)
        return {"active": False, "version": production, "reference_uri": "", "reason": reason}
    built = not ref_mod.has_reference(registry_uri, model_name, int(version))
    uri = ref_mod.build_reference(registry_uri, model_name, int(version))
    ref = ref_mod.load_reference(registry_uri, model_name, int(version), monitoring_uri)
    result = {"active": True, "version": int(version), "reference_uri": uri,
              "reference_images": int(len(ref.embeddings)) if ref.embeddings is not None
              else 0, "built_now": built,
              "reason": f"version {version} is in production; its reference is active"}
    AuditLog(GovernanceStore(monitoring_uri, model_name)).append(
        "release", f"retrained version {version} {decision}; its monitoring reference is "
        "now the one traffic is judged against", subject=f"version {version}",
        evidence=uri, details={**result, "trigger": parse_trigger(trigger)},
        once_key=f"reference:{model_name}:{version}")
    logger.info("Monitoring reference of %s version %s active (%s)", model_name, version, uri)
    return result


def record_rejection(evaluation: dict, monitoring_uri: str, model_name: str,
                     trigger: str = "", evidence: str = "") -> dict:
    """A retrained model the gate did not bless: production stays as it is, and the
    governance audit log says so, with the reasons and the trigger."""
    gate = evaluation["gate"]
    record = {"blessed": False, "reasons": gate["reasons"], "recent": gate.get("recent"),
              "champion_version": gate.get("champion_version"),
              "trigger": parse_trigger(trigger)}
    AuditLog(GovernanceStore(monitoring_uri, model_name)).append(
        "retrain_failed", "the retrained model did not pass the champion/challenger gate; "
        "production is unchanged: " + "; ".join(gate["reasons"]),
        subject=f"production version {gate.get('champion_version')}", evidence=evidence,
        details=record)
    for reason in gate["reasons"]:
        logger.warning("Retrained model not blessed: %s", reason)
    return record
