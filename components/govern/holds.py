"""Release holds: after a collapse, no release reaches production until a person says so.

A hold is recorded in the registry, beside the approvals and release decisions it governs
(``<registry>/<model>/holds/<seq>.json``, create-only, never rewritten): ``{"action":
"hold"}`` places it, ``{"action": "lift"}`` lifts it. The release step
(``components/deploy/release.py``) calls :func:`check_release` before it deploys anything:
while a hold is in force, a version is released only if a person approved it *after* the
hold was placed (``mlops registry approve MODEL VERSION``) or lifted the hold
(``mlops govern hold lift MODEL``); otherwise the release stops with an error that says so,
and production is untouched.
"""

from __future__ import annotations

import logging

from components.common.registry import ModelRegistry
from components.deploy.targets.base import DeploymentError
from components.govern.records import actor, now_iso, parse_time

logger = logging.getLogger(__name__)


class ReleaseHeld(DeploymentError):
    """A release refused because of a governance hold; the message says how to proceed."""


def _folder(model: str) -> str:
    return f"{model}/holds"


def hold_records(registry: ModelRegistry, model: str) -> list[dict]:
    keys = sorted(o.key for o in registry.store.list(_folder(model)) if o.key.endswith(".json"))
    return [registry.store.get_json(k) for k in keys]


def active_hold(registry: ModelRegistry, model: str) -> dict | None:
    """The hold in force, or None."""
    records = hold_records(registry, model)
    return records[-1] if records and records[-1]["action"] == "hold" else None


def place_hold(registry: ModelRegistry, model: str, reason: str, evidence: str = "",
               by: str | None = None) -> tuple[dict, bool]:
    """Places a hold unless one is in force. Returns (the hold in force, placed now)."""
    current = active_hold(registry, model)
    if current is not None:
        return current, False
    seq = registry._append(_folder(model), {"action": "hold", "at": now_iso(),
                                            "by": by or actor(), "reason": reason,
                                            "evidence": evidence})
    logger.warning("Releases of %s are held: %s", model, reason)
    placed = next(r for r in hold_records(registry, model) if r["seq"] == seq)
    return placed, True


def lift_hold(registry: ModelRegistry, model: str, note: str, by: str | None = None) -> dict:
    """A person lifts the hold in force."""
    if active_hold(registry, model) is None:
        raise ValueError(f"Releases of {model!r} are not held; nothing to lift.")
    if not note:
        raise ValueError("Say why the hold can be lifted (--note).")
    registry._append(_folder(model), {"action": "lift", "at": now_iso(), "by": by or actor(),
                                      "reason": note})
    logger.info("Hold on %s lifted: %s", model, note)
    return hold_records(registry, model)[-1]


def check_release(registry: ModelRegistry, model: str, version: int) -> dict:
    """What the release step needs to know about holds: ``{}`` when none is in force,
    ``{"hold": …, "approval": …}`` when a person approved ``version`` after the hold.

    Raises:
        ReleaseHeld: A hold is in force and nobody approved ``version`` since.
    """
    hold = active_hold(registry, model)
    if hold is None:
        return {}
    approval = registry.approval(model, version)
    if approval and parse_time(approval["at"]) > parse_time(hold["at"]):
        logger.info("Hold on %s: version %d was approved by %s after it", model, version,
                    approval["by"])
        return {"hold": hold, "approval": approval}
    why = ("its approval predates the hold" if approval else "nobody approved it since")
    raise ReleaseHeld(
        f"Releases of {model!r} are held since {hold['at']} by {hold['by']}: {hold['reason']}. "
        f"Version {version} cannot be released ({why}). A person approves it with "
        f"`mlops registry approve {model} {version}`, or lifts the hold with "
        f"`mlops govern hold lift {model} --note WHY`; then release again.")
