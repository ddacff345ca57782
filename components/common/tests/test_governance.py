"""The governance folder and its audit log, which governance and continuous training both
write: where records go, numbering, once-only records, refused kinds."""

from __future__ import annotations

import pytest

from components.common.governance import KINDS, AuditLog, GovernanceStore
from components.common.storage import open_store


def test_audit_records_are_numbered_under_the_models_governance_folder(tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("MLOPS_ACTOR", "retrain-step")
    root = open_store(str(tmp_path))
    audit = AuditLog(GovernanceStore(root, "pets"))
    first = audit.append("retrain_failed", "the gate said no", subject="production version 3",
                         details={"reasons": ["accuracy"]})
    second = audit.append("hold", "owners complain", by="alice")
    assert [o.key for o in root.list("governance/pets/audit")] == [
        "governance/pets/audit/00000001.json", "governance/pets/audit/00000002.json"]
    assert (first["seq"], first["actor"], first["model"], first["details"]) == (
        1, "retrain-step", "pets", {"reasons": ["accuracy"]})
    assert (second["seq"], second["actor"]) == (2, "alice")
    # A second store object over the same folder reads what the first wrote.
    assert [r["kind"] for r in AuditLog(GovernanceStore(str(tmp_path), "pets")).records()] \
        == ["retrain_failed", "hold"]


def test_a_record_with_a_once_key_is_written_once(tmp_path):
    audit = AuditLog(GovernanceStore(str(tmp_path), "pets"))
    assert audit.append("release", "v4 released", once_key="reference:pets:4")["seq"] == 1
    assert audit.append("release", "v4 released again", once_key="reference:pets:4") is None
    assert audit.append("release", "v5 released", once_key="reference:pets:5")["seq"] == 2
    assert [r["reason"] for r in audit.records()] == ["v4 released", "v5 released"]


def test_an_unknown_kind_is_refused_with_the_known_ones(tmp_path):
    audit = AuditLog(GovernanceStore(str(tmp_path), "pets"))
    with pytest.raises(ValueError, match="Unknown audit kind 'retrained'.*retrain_failed"):
        audit.append("retrained", "a typo of a kind")
    assert audit.records() == []
    assert "trigger" in KINDS and "release" in KINDS


def test_keyed_records_are_create_only(tmp_path):
    gov = GovernanceStore(str(tmp_path), "pets")
    assert gov.get("episodes/e1.json") is None
    assert gov.create("episodes/e1.json", {"by": "first"})
    assert not gov.create("episodes/e1.json", {"by": "second"})
    assert gov.get("episodes/e1.json") == {"by": "first"}
    assert gov.uri_of("episodes/e1.json").endswith("governance/pets/episodes/e1.json")
