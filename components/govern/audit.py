"""The audit view: governance's audit log merged with what other parts already keep.

The audit log itself (:class:`~components.common.governance.AuditLog`, create-only,
sequence-numbered records ``governance/<model>/audit/<seq>.json`` of what governance and
retraining did, who did it, when and why) is in the kernel. The *audit view* merges it with
what other parts already keep append-only, instead of copying it: the alerts
(``governance/<model>/alerts``), and the registry's alias moves, approvals and release
decisions (``components/common/registry.py``). Every entry of the view has the same shape:
``at``, ``kind``, ``actor``, ``subject``, ``reason``, ``evidence`` and ``details``.
"""

from __future__ import annotations

from components.common.governance import AuditLog, GovernanceStore
from components.common.registry import ModelRegistry
from components.govern.alerts import AlertBook


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
