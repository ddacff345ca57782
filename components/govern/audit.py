"""The audit log: append-only records of what governance did, who did it, when and why.

Governance writes one create-only, sequence-numbered record per action it takes or refuses
(``governance/<model>/audit/<seq>.json``): triggers, retraining runs not started, rollbacks,
holds and their lifting. Records are never changed or deleted. The *audit view* merges them
with what other parts already keep append-only, instead of copying it: the alerts
(``governance/<model>/alerts``), and the registry's alias moves, approvals and release
decisions (``components/common/registry.py``). Every entry of the view has the same shape:
``at``, ``kind``, ``actor``, ``subject``, ``reason``, ``evidence`` and ``details``.
"""

from __future__ import annotations

import logging

from components.common.records import actor, now_iso
from components.common.registry import ModelRegistry
from components.govern.alerts import AlertBook
from components.govern.records import GovernanceStore

logger = logging.getLogger(__name__)

AUDIT = "audit"

#: What an audit record can be about.
KINDS = ("trigger", "retrain_skipped", "retrain_failed", "rollback", "rollback_skipped",
         "hold", "hold_lifted", "govern", "alert", "resolved", "alias_move", "approval",
         "release")


class AuditLog:
    """``governance/<model>/audit``: append-only."""

    def __init__(self, gov: GovernanceStore):
        self.gov = gov

    def append(self, kind: str, reason: str, *, subject: str = "", evidence: str = "",
               details: dict | None = None, by: str | None = None,
               once_key: str = "") -> dict | None:
        """Adds a record. With ``once_key``, a record with the same key is written only once
        (a govern run that catches up after a failure does not repeat what was recorded).

        Returns:
            The record, or None when ``once_key`` was already recorded.
        """
        if kind not in KINDS:
            raise ValueError(f"Unknown audit kind {kind!r}; expect one of {', '.join(KINDS)}.")
        if once_key and any(r.get("once_key") == once_key for r in self.records()):
            return None
        record = {"kind": kind, "at": now_iso(), "actor": by or actor(), "subject": subject,
                  "reason": reason, "evidence": evidence, "details": details or {},
                  "model": self.gov.model}
        if once_key:
            record["once_key"] = once_key
        record = self.gov.append(AUDIT, record)
        logger.info("Audit %s #%d: %s", kind, record["seq"], reason)
        return record

    def records(self) -> list[dict]:
        return self.gov.records(AUDIT)


def audit_view(store_uri: str, model: str, registry_uri: str = "") -> list[dict]:
    """Every governance record, alert, alias move, approval and release of ``model``,
    oldest first, in one shape."""
    gov = GovernanceStore(store_uri, model)
    entries = [{**r, "source": "audit"} for r in AuditLog(gov).records()]
    book = AlertBook(gov)
    for a in book.alerts():
        state = book.state(a)
        entries.append({
            "at": a["created"], "kind": "alert" if a["status"] == "firing" else "resolved",
            "actor": a.get("actor", "govern"), "subject": f"alert #{a['seq']} {a['check']}",
            "reason": f"{a['rule']}: {a['summary']}", "evidence": a.get("evidence", ""),
            "details": {"recipients": state, "severity": a["severity"],
                        "verdict": a.get("verdict_run_id")},
            "source": "alerts", "seq": a["seq"]})
    if registry_uri:
        registry = ModelRegistry(registry_uri)
        for alias in registry.aliases(model):
            for e in registry.alias_history(model, alias):
                entries.append({
                    "at": e["at"], "kind": "alias_move", "actor": e.get("by", ""),
                    "subject": f"{alias} -> version {e['version']}",
                    "reason": e.get("reason", ""), "evidence": registry.version_uri(
                        model, e["version"]),
                    "details": {"previous": e.get("previous")}, "source": "registry"})
        for v in registry.versions(model):
            approval = registry.approval(model, v)
            if approval:
                entries.append({"at": approval["at"], "kind": "approval",
                                "actor": approval.get("by", ""), "subject": f"version {v}",
                                "reason": approval.get("note", ""), "evidence": "",
                                "details": {}, "source": "registry"})
        for r in registry.releases(model):
            entries.append({
                "at": r["at"], "kind": "release", "actor": r.get("by", "release"),
                "subject": f"version {r['version']} to {r.get('environment', '')}",
                "reason": f"{r['decision']}" + (": " + "; ".join(r["reasons"])
                                                if r.get("reasons") else ""),
                "evidence": "", "details": {"decision": r["decision"],
                                            "previous_version": r.get("previous_version")},
                "source": "registry"})
    return sorted(entries, key=lambda e: str(e["at"]))
