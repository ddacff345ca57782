"""The actions that change production: roll back to the previous version, hold releases.

Both are idempotent, so that a govern run that catches up after a failure, or two govern
runs at once, never act twice on one verdict: a rollback happens only while production
still serves the version the verdict judged, and a hold is placed only if none is in force.
"""

from __future__ import annotations

import logging

from components.common.registry import ModelRegistry
from components.deploy.targets.base import DeploymentTarget

logger = logging.getLogger(__name__)

PRODUCTION = "production"


def rollback(target: DeploymentTarget, judged_version: str | int, reason: str,
             evidence: str = "", verdict_run_id: str = "") -> dict:
    """Serves the version production had before ``judged_version``, then moves the alias.

    Returns:
        ``{"action": "rollback", "from", "to", ...}`` or ``{"action": "rollback_skipped",
        "detail": why}`` (production already moved on, or there is nothing to go back to).
    """
    registry, model = target.registry, target.model_name
    current = registry.aliases(model).get(PRODUCTION)
    if current is None:
        return {"action": "rollback_skipped", "detail": f"{model!r} has no production version"}
    if str(current) != str(judged_version):
        return {"action": "rollback_skipped",
                "detail": f"production serves version {current}, not the judged version "
                          f"{judged_version} (rolled back or released since)"}
    previous = registry.alias_history(model, PRODUCTION)[-1].get("previous")
    if previous is None or int(previous) == int(current):
        return {"action": "rollback_skipped",
                "detail": f"version {current} is the first production version of {model!r}: "
                          "there is nothing to roll back to"}
    logger.warning("Rolling %s production back from version %s to %s: %s", model, current,
                   previous, reason)
    # The version production had, with the configuration it was released with: on KServe
    # a fresh revision that takes the traffic only once ready (KServeTarget.restore).
    dep = target.restore(PRODUCTION, int(previous))
    registry.set_alias(model, PRODUCTION, int(previous),
                       reason=f"governance rollback from version {current}: {reason}")
    registry.record_release(model, {
        "model": model, "version": int(previous), "environment": PRODUCTION,
        "decision": "governance_rollback", "previous_version": int(current),
        "reasons": [reason], "reason": reason, "steps": [], "evidence": evidence,
        "verdict": verdict_run_id})
    return {"action": "rollback", "from": int(current), "to": int(previous),
            "url": dep.url if dep else "", "detail": reason}


def hold(registry: ModelRegistry, model: str, reason: str, evidence: str = "") -> dict:
    """Holds releases of ``model`` until a person approves (see
    :meth:`~components.common.registry.ModelRegistry.place_hold`)."""
    record, placed = registry.place_hold(model, reason, evidence)
    if not placed:
        return {"action": "hold_exists", "detail": f"releases already held since "
                                                   f"{record['at']}: {record['reason']}"}
    return {"action": "hold", "detail": reason, "at": record["at"]}
