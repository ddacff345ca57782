"""An Alertmanager webhook receiver that governs what Prometheus alerts on.

Alertmanager routes the PrometheusRule's alerts (``components/govern/rules.py``) to
``POST /alerts`` here (a ``webhook_configs`` receiver). Each notification becomes a verdict
of the model named in the alerts' ``model`` label: every alert is one check, named by its
``check`` label, with the value and threshold of its annotations, status ``alarm`` while
firing and ``ok`` once resolved. The verdict is governed with the same policy as a monitoring
verdict, so the same dedup, cool-downs, rollbacks, holds and retraining episodes apply.

Alertmanager resends a notification that was not acknowledged with 2xx, and repeats firing
groups; the verdict's id is derived from the alerts' fingerprints, start times and statuses,
so a resent notification is governed once. Answers: 200 with the actions taken, 400 with the
reason for a payload that is not Alertmanager's, 500 only for a failure on this side (the
store is down: Alertmanager will retry, and nothing was half-recorded), 401 without the
bearer token when one is set (``MLOPS_RECEIVER_TOKEN``; Alertmanager sends it with
``http_config: {authorization: {credentials: …}}``), 413 for a body over 1 MiB.
``GET /healthz`` answers ``{"status": "ok"}``. The app is the kernel's
:func:`components.common.service.json_app`, as the monitor's feedback endpoint's is.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import logging
import threading

from components.common.errors import UserError
from components.common.governance import GovernanceStore
from components.common.registry import ModelRegistry, RegistryError
from components.common.service import json_app, read_json
from components.govern.core import govern
from components.govern.policy import Policy
from components.monitor.contract import KINDS, Check, Verdict

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20


class BadPayload(UserError, ValueError):
    """A request body that is not an Alertmanager webhook notification."""


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def verdicts_from_notification(payload, production_version) -> list[Verdict]:
    """The verdicts (one per model) of an Alertmanager webhook notification.

    Args:
        payload: The parsed JSON body.
        production_version: ``model -> version`` for alerts without a ``model_version`` label.

    Raises:
        BadPayload: Naming what is missing or malformed.
    """
    if not isinstance(payload, dict):
        raise BadPayload("expect a JSON object (Alertmanager's webhook payload)")
    if str(payload.get("version", "4")) != "4":
        raise BadPayload(f"payload version {payload.get('version')!r}; expect '4'")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise BadPayload("'alerts' must be a non-empty list")
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    by_model: dict[str, list[tuple[dict, Check]]] = {}
    for i, a in enumerate(alerts):
        if not isinstance(a, dict) or not isinstance(a.get("labels"), dict):
            raise BadPayload(f"alerts[{i}] has no 'labels' object")
        labels, ann = a["labels"], a.get("annotations") or {}
        model = labels.get("model")
        if not model:
            raise BadPayload(f"alerts[{i}] has no 'model' label (the PrometheusRule sets it)")
        status = a.get("status")
        if status not in ("firing", "resolved"):
            raise BadPayload(f"alerts[{i}].status {status!r}; expect firing or resolved")
        kind = labels.get("kind") if labels.get("kind") in KINDS else "telemetry"
        name = labels.get("check") or f"{kind}.{labels.get('alertname', 'alert')}"
        extra = {"source": "alertmanager", "alertname": labels.get("alertname", ""),
                 "fingerprint": a.get("fingerprint", ""), "starts_at": a.get("startsAt", "")}
        samples = _float(ann.get("samples"))
        if samples is not None:
            extra["requests"] = int(samples)
        check = Check(name, kind, _float(ann.get("value")), _float(ann.get("threshold")),
                      "alarm" if status == "firing" else "ok",
                      ann.get("summary") or ann.get("description") or labels.get("alertname", ""),
                      a.get("generatorURL", ""), extra)
        by_model.setdefault(model, []).append((a, check))
    out = []
    for model, items in sorted(by_model.items()):
        versions = {str(a["labels"]["model_version"]) for a, _ in items
                    if a["labels"].get("model_version")}
        version = versions.pop() if len(versions) == 1 else production_version(model)
        key = json.dumps(sorted((a.get("fingerprint", ""), a.get("startsAt", ""), a["status"],
                                 c.name) for a, c in items))
        run_id = "alertmanager-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        starts = min((a.get("startsAt") or now) for a, _ in items)
        out.append(Verdict(model, str(version), starts, now, run_id, 0, 0,
                           _one_per_condition([c for _, c in items]),
                           report_uri=payload.get("externalURL", "")))
    return out


def _one_per_condition(checks: list[Check]) -> list[Check]:
    """One check per name: alerts of one condition (a rule whose expression yields a series
    per pod or per class) are one check, the firing one with the largest value."""
    best: dict[str, Check] = {}
    for c in checks:
        rank = (c.status == "alarm", c.value if c.value is not None else float("-inf"))
        old = best.get(c.name)
        if old is None or rank > (old.status == "alarm", old.value if old.value is not None
                                  else float("-inf")):
            best[c.name] = c
    return list(best.values())


def make_app(policy: Policy, *, store_uri: str, registry_uri: str = "", target=None,
             launcher=None, sinks=None, token: str = ""):
    """The aiohttp application: ``POST /alerts``, ``GET /healthz``; with a ``token``,
    ``/alerts`` needs ``Authorization: Bearer <token>``."""
    from aiohttp import web

    lock = threading.Lock()  # one govern at a time in this process

    def production_version(model: str) -> str:
        if not registry_uri:
            return "unknown"
        try:
            return str(ModelRegistry(registry_uri).aliases(model).get("production", "unknown"))
        except RegistryError:
            return "unknown"

    def handle(payload) -> list[dict]:
        results = []
        with lock:
            for verdict in verdicts_from_notification(payload, production_version):
                gov = GovernanceStore(store_uri, verdict.model)
                if gov.store.exists(f"governed/{verdict.run_id}.json"):
                    results.append({"verdict": verdict.run_id, "model": verdict.model,
                                    "actions": [], "note": "already governed (a resend)"})
                    continue
                actions = govern(verdict, policy, store_uri=store_uri,
                                 registry_uri=registry_uri, target=target, launcher=launcher,
                                 sinks=sinks)
                results.append({"verdict": verdict.run_id, "model": verdict.model,
                                "actions": actions})
        return results

    async def alerts(request: web.Request) -> web.Response:
        payload = await read_json(request)
        try:
            results = await asyncio.get_running_loop().run_in_executor(None, handle, payload)
        except BadPayload as exc:
            return web.json_response({"error": f"not an Alertmanager notification: {exc}"},
                                     status=400)
        except ValueError as exc:  # a policy for another model, an unsafe name
            return web.json_response({"error": str(exc)}, status=400)
        except Exception as exc:  # noqa: BLE001 - the store or a target failed: retry later
            logger.exception("Governing an Alertmanager notification failed")
            return web.json_response({"error": f"{type(exc).__name__}: {exc}; nothing was "
                                      "half-recorded, a resend is governed again"}, status=500)
        return web.json_response({"governed": results}, dumps=lambda o: json.dumps(o,
                                                                                   default=str))

    app = json_app(max_body_bytes=MAX_BODY, token=token)
    app.router.add_post("/alerts", alerts)
    return app


def serve(policy: Policy, *, store_uri: str, registry_uri: str = "", host: str = "127.0.0.1",
          port: int = 9095, target=None, launcher=None, token: str = "") -> None:
    """Runs the receiver until interrupted."""
    app = make_app(policy, store_uri=store_uri, registry_uri=registry_uri, target=target,
                   launcher=launcher, token=token)
    from aiohttp import web  # json_app has imported it (or said how to install it)

    web.run_app(app, host=host, port=port, print=None, access_log=None)
