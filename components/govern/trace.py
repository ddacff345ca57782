"""Where an answer came from: one served request traced through the stores to everything
behind it (the workflow's end-to-end lineage).

request -> captured input (its record, the sampled image) -> model version -> dataset version
-> lake keys (the manifest; the lake key of the same photo if it was trained on) -> code
commit -> parameters -> pipeline run -> the monitoring verdicts and alerts of the windows
that judged it -> the label it later got.

Everything is read from the stores alone (the monitoring store, the registry, the dataset
snapshot): nothing is asked of a running service. The capture is found by scanning the
model's capture batches (one pass; fine for the local store and for days of traffic; a busy
cluster would want an index by request id).
"""

from __future__ import annotations

import io
import logging

import pandas as pd

from components.common.errors import UserError
from components.common.governance import GovernanceStore
from components.common.registry import ModelRegistry, RegistryError
from components.common.storage import StorageError, open_store, split_uri
from components.govern.alerts import AlertBook
from components.govern.core import history
from components.monitor.capture import image_key
from components.monitor.window import parse_time, read_capture, read_labels

logger = logging.getLogger(__name__)


class TraceError(UserError, LookupError):
    """The request cannot be traced (never captured, or captured for another model)."""


def _manifest(uri: str) -> pd.DataFrame | None:
    try:
        store, key = split_uri(uri)
        return pd.read_csv(io.BytesIO(store.get(key)), dtype=str, keep_default_na=False)
    except (StorageError, ValueError, OSError) as exc:
        logger.warning("Cannot read the dataset manifest %s: %s", uri, exc)
        return None


def trace_request(request_id: str, model: str, store_uri: str, registry_uri: str) -> dict:
    """Everything behind one served request.

    Returns:
        ``{"request_id", "instances": [...]}``: per instance of the request its capture
        record, image, model version with its lineage (dataset version, lake keys, code,
        parameters, pipeline run), the verdicts whose window held it with their alerts, and
        its label history's current label.

    Raises:
        TraceError: No capture of ``request_id`` for ``model``.
    """
    store = open_store(store_uri)
    records = [(where, r) for where, r in read_capture(store, model, None, lambda *a: None)
               if r.get("request_id") == request_id]
    if not records:
        raise TraceError(
            f"request {request_id!r} was not captured for {model} in {store.uri} (production "
            "writes captures in batches: every 500 records or 60 s, and when it stops; "
            "`mlops deploy stop` flushes them). Request ids are printed by `mlops deploy "
            "predict` and returned as request_id (V1) or parameters.request_id (V2).")
    registry = ModelRegistry(registry_uri)
    labels = read_labels(store, model, {request_id})
    verdicts = history(store_uri, model)
    alerts = AlertBook(GovernanceStore(store_uri, model)).alerts()
    lineages: dict[str, dict] = {}
    out = []
    for where, rec in sorted(records, key=lambda x: x[1].get("index", 0)):
        version = str(rec.get("model_version", ""))
        if version not in lineages:
            try:
                mv = registry.get(model, int(version))
                lineages[version] = {"uri": mv.uri, **mv.lineage}
            except (RegistryError, ValueError) as exc:
                lineages[version] = {"error": str(exc)}
        lineage = lineages[version]
        item = {"index": rec.get("index", 0), "capture": where, "time": rec.get("time"),
                "answer": rec.get("label"), "probabilities": rec.get("probabilities"),
                "model_version": version, "revision": rec.get("revision"),
                "context": rec.get("context", ""), "sent_context": rec.get("sent_context", ""),
                "latency_ms": rec.get("latency_ms"),
                "image": store.uri_of(image_key(rec["image_sha256"]))
                if rec.get("image_sha256") else None,
                "lineage": {k: lineage.get(k) for k in (
                    "uri", "error", "dataset_version", "dataset_source", "dataset_manifest",
                    "code_version", "pipeline_run", "hyperparameters", "parent_version",
                    "trigger", "metrics")} if lineage else {}}
        manifest = _manifest(lineage["dataset_manifest"]) if lineage.get(
            "dataset_manifest") else None
        if manifest is not None:
            item["lake"] = {"keys": int(len(manifest)),
                            "classes": manifest["label"].value_counts().to_dict()
                            if "label" in manifest else {},
                            "same_photo": manifest.loc[manifest["sha256"] == rec.get(
                                "image_sha256"), "key"].tolist()
                            if rec.get("image_sha256") and "sha256" in manifest else []}
        at = rec.get("time")
        context = rec.get("context", "")
        judged = []
        for uri, v in verdicts:
            try:
                inside = at is not None and parse_time(v.window_start).timestamp() <= at \
                    < parse_time(v.window_end).timestamp()
            except ValueError:
                inside = False
            if inside and str(v.model_version) == version:
                judged.append({"run_id": v.run_id, "status": v.status, "uri": uri,
                               "report": v.report_uri,
                               # its own context's alarms and alerts; the others' named
                               "alarms": [c.key for c in v.checks if c.status == "alarm"
                                          and c.context in ("", context)],
                               "other_contexts_alarmed": sorted(
                                   {c.context for c in v.checks if c.status == "alarm"
                                    and c.context not in ("", context)}),
                               "alerts": [{"seq": a["seq"], "summary": a["summary"],
                                           "status": a["status"]} for a in alerts
                                          if a.get("verdict_run_id") == v.run_id
                                          and a.get("context", "") in ("", context)]})
        item["verdicts"] = judged
        label = labels.get((request_id, int(rec.get("index", 0))))
        item["label"] = ({"label": label["label"], "by": label.get("by"), "at": label.get("at"),
                          "correct": label["label"] == rec.get("label")} if label else None)
        out.append(item)
    return {"request_id": request_id, "model": model, "instances": out}


def sample_request_ids(store_uri: str, model: str, version: int | str, n: int = 3) -> list[str]:
    """Up to ``n`` request ids the model's ``version`` answered, spread over its captures
    (first, last and between, in time order): the requests a compliance report traces."""
    store = open_store(store_uri)
    seen: dict[str, float] = {}
    for _, rec in read_capture(store, model, None, lambda *a: None):
        rid = rec.get("request_id")
        if rid and str(rec.get("model_version", "")) == str(version) and rid not in seen:
            seen[rid] = float(rec.get("time") or 0)
    ordered = sorted(seen, key=lambda r: (seen[r], r))
    if len(ordered) <= n:
        return ordered
    step = (len(ordered) - 1) / (n - 1) if n > 1 else 0
    return [ordered[round(i * step)] for i in range(n)]
