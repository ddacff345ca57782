"""Storage down during govern (nothing half-recorded; the next run catches up), and the
production actions on a real local deployment: rollback to the previous version, and a hold
that the release step respects."""

from __future__ import annotations

import uuid

import pytest

from components.common.governance import AuditLog, GovernanceStore
from components.common.registry import ModelRegistry, ReleaseHeld
from components.common.storage import S3Store, open_store
from components.govern.alerts import AlertBook
from components.govern.audit import audit_view
from components.govern.core import govern, govern_pending
from components.govern.policy import parse_policy
from components.govern.tests.test_trigger import FolderLauncher
from components.monitor.contract import Check, Verdict
from tests.support import free_port

MODEL = "pets"


def _policy(url: str):
    return parse_policy({
        "version": 1, "delivery": {"attempts": 2, "backoff_s": 0.05, "timeout_s": 3},
        "recipients": {"qa": {"format": "alertmanager", "url": url}},
        "rules": [
            {"name": "data-drift", "match": {"kind": "drift"},
             "actions": [{"type": "alert", "to": "qa"}, "retrain"]},
            {"name": "accuracy-collapse",
             "match": {"name": "performance.accuracy", "value_below": 0.6, "min_samples": 50},
             "actions": [{"type": "alert", "to": "qa", "severity": "critical"}, "rollback",
                         "hold"]}]})


def _drift(run_id="w1", version="3") -> Verdict:
    return Verdict(MODEL, version, "2026-11-20T00:00:00+00:00", "2026-11-20T01:00:00+00:00",
                   run_id, 300, 0, [Check("drift.embedding", "drift", 0.001, 0.05, "alarm",
                                          "embeddings moved")])


@pytest.mark.timeout(180)
def test_storage_down_mid_govern_then_the_next_run_catches_up(receiver, tmp_path, monkeypatch):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    bucket = f"gov-{uuid.uuid4().hex[:8]}"
    S3Store(bucket).ensure_bucket()
    store = f"s3://{bucket}/mon"
    v = _drift()
    open_store(store).put_json(f"monitoring/{MODEL}/history/{v.window_end}-{v.run_id}.json",
                               v.to_dict())
    servers = [server]

    def storage_goes_down(_entry):
        if len(receiver.received) == 1:
            servers[0].stop()  # the store dies right after the webhook got the alert

    receiver.on_message = storage_goes_down
    launcher = FolderLauncher(str(tmp_path))
    try:
        with pytest.raises(Exception) as info:
            govern_pending(store, MODEL, _policy(receiver.url), launcher=launcher)
        assert "Connection refused" in repr(info.value) or "Max retries" in str(info.value)
        assert launcher.runs() == []  # it stopped before the trigger
        # Storage is back (same server state, as after a restart of MinIO with its disks).
        servers[0] = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        servers[0].start()
        gov = GovernanceStore(store, MODEL)
        book = AlertBook(gov)
        (alert,) = book.alerts()  # the alert was kept whole ...
        assert book.state(alert) == {"qa": "pending"}  # ... but its delivery not recorded
        assert not gov.store.exists(f"governed/{v.run_id}.json")

        (result,) = govern_pending(store, MODEL, _policy(receiver.url), launcher=launcher)
        assert result[0] == v.run_id
        assert [a["action"] for a in result[1]] == ["redeliver", "retrain"]
        assert len(book.alerts()) == 1 and book.state(alert) == {"qa": "delivered"}
        assert len(receiver.received) == 2  # at least once: delivered again, not lost
        assert len(launcher.runs()) == 1
        assert gov.store.exists(f"governed/{v.run_id}.json")
        # A third run finds nothing pending and does nothing.
        assert govern_pending(store, MODEL, _policy(receiver.url), launcher=launcher) == \
            [("", [])]
    finally:
        servers[0].stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rollback_and_hold_on_a_real_local_deployment(package_dir, receiver, tmp_path):
    from components.deploy.client import predict
    from components.deploy.targets.local import LocalTarget

    registry = ModelRegistry(str(tmp_path / "registry"))
    files = _package_files(package_dir)
    for _ in range(2):
        registry.register(MODEL, files, {"dataset_version": "test"})
    target = LocalTarget(registry.uri, MODEL, tmp_path / "deployments")
    try:
        target.deploy("production", 1, timeout=120)
        registry.set_alias(MODEL, "production", 1, reason="first release")
        target.deploy("production", 2, timeout=120)
        registry.set_alias(MODEL, "production", 2, reason="promoted")
        collapse = Verdict(MODEL, "2", "2026-11-20T00:00:00+00:00", "2026-11-20T01:00:00+00:00",
                           "w-collapse", 400, 80, [
                               Check("performance.accuracy", "performance", 0.41, 0.85, "alarm",
                                     "accuracy on 80 labelled requests", extra={"n": 80})])
        store = str(tmp_path / "monitoring")
        acts = govern(collapse, _policy(receiver.url), store_uri=store,
                      registry_uri=registry.uri, target=target)
        by = {a["action"]: a for a in acts}
        assert set(by) == {"alert", "rollback", "hold"}
        assert by["rollback"]["from"] == 2 and by["rollback"]["to"] == 1
        # Production now serves version 1, and it answers.
        dep = target.status("production")
        assert dep.stable.version == 1 and dep.canary is None
        answer = predict(dep.url, dep.name, [(package_dir / "sample.jpg").read_bytes()]
                         if (package_dir / "sample.jpg").exists() else [_jpeg()])
        assert answer[0]["label"] in ("cats", "dogs")
        assert registry.aliases(MODEL)["production"] == 1
        history = registry.alias_history(MODEL, "production")
        assert "governance rollback from version 2" in history[-1]["reason"]
        assert registry.releases(MODEL)[-1]["decision"] == "governance_rollback"
        # The same verdict governed again (a catch-up) does not roll back twice.
        again = govern(collapse, _policy(receiver.url), store_uri=store,
                       registry_uri=registry.uri, target=target)
        assert {a["action"] for a in again} >= {"rollback_skipped", "hold_exists"}
        assert registry.aliases(MODEL)["production"] == 1
        # Releases are held until a person approves the version after the hold.
        with pytest.raises(ReleaseHeld, match="mlops registry approve pets 2"):
            registry.check_release(MODEL, 2)
        registry.approve(MODEL, 2, note="fixed the camera; checked the night images")
        assert registry.check_release(MODEL, 2)["approval"]["version"] == 2
        registry.lift_hold(MODEL, "incident closed")
        assert registry.check_release(MODEL, 1) == {}
        # The audit view tells the story in order.
        kinds = [e["kind"] for e in audit_view(store, MODEL, registry.uri)]
        assert kinds.index("rollback") < kinds.index("hold")
        assert "alias_move" in kinds and "release" in kinds and "approval" in kinds
        # Governing the same verdict again recorded nothing new.
        assert [r["kind"] for r in AuditLog(GovernanceStore(store, MODEL)).records()] == \
            ["rollback", "hold"]
        # A person's rollback: the same action, audited with who and why.
        from components.govern.core import GovernError, manual_rollback

        target.deploy("production", 2, timeout=120)
        registry.set_alias(MODEL, "production", 2, reason="released again after approval")
        back = manual_rollback(store, MODEL, target, "owners report wrong answers", by="po")
        assert (back["from"], back["to"]) == (2, 1)
        assert target.status("production").stable.version == 1
        last = AuditLog(GovernanceStore(store, MODEL)).records()[-1]
        assert (last["kind"], last["actor"], last["reason"]) == (
            "rollback", "po", "owners report wrong answers")
        with pytest.raises(GovernError, match="version 2 was rolled back; nothing earlier"):
            manual_rollback(store, MODEL, target, "again", by="po")
    finally:
        target.delete_all()


def _package_files(package_dir) -> dict[str, bytes]:
    return {p.relative_to(package_dir).as_posix(): p.read_bytes()
            for p in package_dir.rglob("*") if p.is_file()}


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 90, 60)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_release_step_refuses_a_held_release(package_dir, dataset_dirs, tmp_path):
    """The release step checks holds before it deploys anything."""
    from components.deploy.apptest import load_labelled_split
    from components.deploy.release import release
    from components.deploy.targets.local import LocalTarget

    registry = ModelRegistry(str(tmp_path / "registry"))
    files = _package_files(package_dir)
    registry.register(MODEL, files, {"dataset_version": "test"})
    registry.place_hold(MODEL, "accuracy collapse on version 0")
    target = LocalTarget(registry.uri, MODEL, tmp_path / "deployments")
    images, labels = load_labelled_split(dataset_dirs[1])
    with pytest.raises(ReleaseHeld, match="held since"):
        release(target, 1, images[:4], labels[:4])
    assert target.status("production") is None  # nothing was deployed
    assert "production" not in registry.aliases(MODEL)
