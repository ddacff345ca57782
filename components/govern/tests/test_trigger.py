"""Retraining triggers: one episode starts one run, also under concurrent govern runs (threads
and processes, local store and S3); a run in progress blocks another. The launchers' own
tests are in tests/test_launchers.py."""

from __future__ import annotations

import json
import multiprocessing
import threading
import uuid
from pathlib import Path

import pytest

from components.common.governance import AuditLog, GovernanceStore
from components.common.storage import open_store
from components.govern.core import govern
from components.govern.policy import parse_policy
from components.govern.trigger import Episodes, RetrainLauncher
from components.monitor.contract import Check, Verdict

MODEL = "pet-classifier"
POLICY = parse_policy({
    "version": 1, "model": MODEL, "retrain": {"clear_after": 2},
    "rules": [{"name": "data-drift", "match": {"kind": "drift"}, "actions": ["retrain"]},
              {"name": "accuracy-drop", "match": {"kind": "performance"},
               "actions": ["retrain"]}]})


class FolderLauncher(RetrainLauncher):
    """Starts a "run" by writing one file per launch into a folder, which outlives threads and
    processes, so the tests can count the runs every govern run started. It stands in for the
    pipeline only; the episode claims under test are the real ones."""

    kind = "folder"

    def __init__(self, folder: str, state: str = "running"):
        self.folder = Path(folder)
        self._state = state

    def launch(self, trigger: dict) -> dict:
        run_id = uuid.uuid4().hex[:8]
        (self.folder / f"{run_id}.json").write_text(json.dumps(trigger))
        return {"run_id": run_id, "url": "", "launcher": self.kind, "state": "running"}

    def state(self, launch: dict) -> str:
        return self._state

    def runs(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob("*.json"))]


def verdict(run_id: str, hour: int, version: str = "3", drift: str = "alarm") -> Verdict:
    return Verdict(MODEL, version, f"2026-11-20T{hour - 1:02d}:00:00+00:00",
                   f"2026-11-20T{hour:02d}:00:00+00:00", run_id, 300, 0, [
                       Check("drift.embedding", "drift", 0.001 if drift == "alarm" else 0.5,
                             0.05, drift, "embeddings moved")])


def store_history(store_uri: str, v: Verdict) -> str:
    key = f"monitoring/{MODEL}/history/{v.window_end}-{v.run_id}.json"
    open_store(store_uri).put_json(key, v.to_dict())
    return open_store(store_uri).uri_of(key)


def test_one_episode_one_run_then_it_clears_and_a_new_one_may_start(tmp_path):
    store = str(tmp_path / "store")
    launcher = FolderLauncher(str(tmp_path))
    first = govern(verdict("w1", 1), POLICY, store_uri=store, launcher=launcher)
    assert [a["action"] for a in first] == ["retrain"] and first[0]["episode"] == "v3-0001"
    second = govern(verdict("w2", 2), POLICY, store_uri=store, launcher=launcher)
    assert second[0]["action"] == "retrain_skipped"
    assert "already started run" in second[0]["detail"]
    assert len(launcher.runs()) == 1
    (run,) = launcher.runs()
    assert run["verdict"] == "w1" and run["episode"] == "v3-0001"  # which verdict started it
    assert run["checks"][0]["name"] == "drift.embedding"
    audit = AuditLog(GovernanceStore(store, MODEL)).records()
    assert [r["kind"] for r in audit] == ["trigger", "retrain_skipped"]
    assert audit[0]["details"]["verdict"] == "w1"
    # One clean window is not enough (clear_after: 2); two are.
    for name, hour in (("w3", 3), ("w4", 4)):
        v = verdict(name, hour, drift="ok")
        store_history(store, v)
        acts = govern(v, POLICY, store_uri=store, launcher=launcher)
    assert [a["action"] for a in acts] == ["episode_closed"]
    # The first run has ended meanwhile: the new episode starts a new run.
    launcher._state = "succeeded"
    again = govern(verdict("w5", 5), POLICY, store_uri=store, launcher=launcher)
    assert again[0]["action"] == "retrain" and again[0]["episode"] == "v3-0002"


def test_an_untrusted_estimate_does_not_keep_an_episode_open(tmp_path):
    """A version whose reference has too few errors to calibrate on has an ``unknown``
    label-free estimate in every window; two windows whose drift and measured accuracy are
    clean still end its episode, and the next drift starts a new one."""
    store = str(tmp_path / "store")
    launcher = FolderLauncher(str(tmp_path), state="succeeded")

    def judged(run_id: str, hour: int, drift: str) -> Verdict:
        v = verdict(run_id, hour, drift=drift)
        v.checks += [
            Check("performance.accuracy", "performance", 0.97, 0.92, "ok", "", context="day",
                  extra={"n_labelled": 30, "estimated": False}),
            Check("performance.estimated_accuracy", "performance", 0.98, 0.92, "unknown",
                  "cannot calibrate on the reference: 6 wrong predictions", context="day",
                  extra={"estimated": True, "n": 100})]
        return v

    first = govern(judged("w1", 1, "alarm"), POLICY, store_uri=store, launcher=launcher)
    assert first[0]["action"] == "retrain" and first[0]["episode"] == "v3-0001"
    for name, hour in (("w2", 2), ("w3", 3)):
        v = judged(name, hour, "ok")
        store_history(store, v)
        acts = govern(v, POLICY, store_uri=store, launcher=launcher)
    assert [a["action"] for a in acts] == ["episode_closed"]
    again = govern(judged("w4", 4, "alarm"), POLICY, store_uri=store, launcher=launcher)
    assert again[0]["action"] == "retrain" and again[0]["episode"] == "v3-0002"
    # A measured check that could not be judged still keeps it open.
    for name, hour in (("w5", 5), ("w6", 6)):
        v = judged(name, hour, "ok")
        v.checks[1] = Check("performance.accuracy", "performance", None, 0.92, "unknown",
                            "3 labelled requests (< 20)", context="day",
                            extra={"n_labelled": 3, "estimated": False})
        store_history(store, v)
        assert govern(v, POLICY, store_uri=store, launcher=launcher) == []


def test_no_second_run_while_one_is_in_progress(tmp_path):
    store = str(tmp_path / "store")
    running = FolderLauncher(str(tmp_path), state="running")
    govern(verdict("w1", 1, version="2"), POLICY, store_uri=store, launcher=running)
    # Version 3 drifts while the retraining started for version 2 is still running.
    acts = govern(verdict("w2", 2, version="3"), POLICY, store_uri=store, launcher=running)
    assert acts[0]["action"] == "retrain_skipped" and "still in progress" in acts[0]["detail"]
    assert len(running.runs()) == 1
    skipped = AuditLog(GovernanceStore(store, MODEL)).records()[-1]
    assert skipped["kind"] == "retrain_skipped" and skipped["details"]["verdict"] == "w2"
    # Once it ended, version 3's episode starts a run.
    done = FolderLauncher(str(tmp_path), state="succeeded")
    acts = govern(verdict("w3", 3, version="3"), POLICY, store_uri=store, launcher=done)
    assert acts[0]["action"] == "retrain" and len(done.runs()) == 2
    first = Episodes(GovernanceStore(store, MODEL)).of_version("2")[0]
    assert first["ended"]["state"] == "succeeded"  # recorded; never asked about again


def _race(store_uri: str, folder: str, n: int) -> list[list[dict]]:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def one(i):
        barrier.wait()
        results[i] = govern(verdict(f"monitor-{i}", 1), POLICY, store_uri=store_uri,
                            launcher=FolderLauncher(folder))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.timeout(120)
def test_concurrent_monitors_start_exactly_one_run(store_uri, tmp_path):
    results = _race(store_uri, str(tmp_path), 6)
    actions = [r[0]["action"] for r in results]
    assert actions.count("retrain") == 1, actions
    assert set(actions) == {"retrain", "retrain_skipped"}
    assert len(FolderLauncher(str(tmp_path)).runs()) == 1
    episodes = Episodes(GovernanceStore(store_uri, MODEL)).all()
    assert [e["key"] for e in episodes] == ["v3-0001"] and "launch" in episodes[0]


def _govern_in_process(store_uri: str, folder: str, i: int, start) -> None:
    start.wait(30)
    govern(verdict(f"proc-{i}", 1), POLICY, store_uri=store_uri,
           launcher=FolderLauncher(folder))


@pytest.mark.timeout(120)
def test_concurrent_govern_processes_start_exactly_one_run(store_uri, tmp_path):
    store = store_uri  # the S3 settings reach the processes through the environment
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_govern_in_process, args=(store, str(tmp_path), i, start))
             for i in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(90)
        assert p.exitcode == 0
    assert len(FolderLauncher(str(tmp_path)).runs()) == 1
    assert len(Episodes(GovernanceStore(store, MODEL)).all()) == 1


def test_catch_up_governs_the_newest_windows_in_order_and_skips_older_ones(tmp_path):
    from components.govern.core import govern_pending

    store = str(tmp_path / "store")
    for hour in range(1, 6):
        store_history(store, verdict(f"w{hour}", hour))
    launcher = FolderLauncher(str(tmp_path))
    results = govern_pending(store, MODEL, POLICY, limit=2, launcher=launcher)
    assert [r[0] for r in results] == ["w4", "w5"]
    assert [r[1][0]["action"] for r in results] == ["retrain", "retrain_skipped"]
    (run,) = launcher.runs()
    assert run["verdict"] == "w4"
    governed = GovernanceStore(store, MODEL).store
    assert "skipped" in governed.get_json("governed/w1.json")
    assert govern_pending(store, MODEL, POLICY, limit=2, launcher=launcher) == [("", [])]


def test_a_recorded_episode_is_started_later_once_and_says_how(tmp_path):
    """`govern run --launcher none` records an episode; every later message names the command
    that starts it; a person starts it once; a later govern run finds it started."""
    from components.govern.core import GovernError, start_episode

    store = str(tmp_path / "store")
    (recorded,) = govern(verdict("w1", 1), POLICY, store_uri=store, launcher=None)
    assert recorded["action"] == "retrain" and recorded["run_id"] is None
    assert "mlops govern start-episode v3-0001" in recorded["detail"]
    (waiting,) = govern(verdict("w2", 2), POLICY, store_uri=store, launcher=None)
    assert waiting["action"] == "retrain_skipped"
    assert "not started" in waiting["detail"] and "start-episode v3-0001" in waiting["detail"]
    launcher = FolderLauncher(str(tmp_path))
    started = start_episode(store, MODEL, "v3-0001", launcher, by="po@pet-park")
    assert started["action"] == "retrain" and started["run_id"]
    (run,) = launcher.runs()
    assert run["episode"] == "v3-0001" and run["verdict"] == "w1"
    with pytest.raises(GovernError, match="already started run " + started["run_id"]):
        start_episode(store, MODEL, "v3-0001", launcher)
    with pytest.raises(GovernError, match="no retraining episode 'v9-0001'.*v3-0001"):
        start_episode(store, MODEL, "v9-0001", launcher)
    (later,) = govern(verdict("w3", 3), POLICY, store_uri=store, launcher=launcher)
    assert later["action"] == "retrain_skipped" and started["run_id"] in later["detail"]
    assert len(launcher.runs()) == 1
    triggers = [r for r in AuditLog(GovernanceStore(store, MODEL)).records()
                if r["kind"] == "trigger"]
    assert [t["actor"] for t in triggers][-1] == "po@pet-park"


def test_a_govern_run_with_a_launcher_starts_a_recorded_episode(tmp_path):
    store = str(tmp_path / "store")
    govern(verdict("w1", 1), POLICY, store_uri=store, launcher=None)
    launcher = FolderLauncher(str(tmp_path))
    (acts,) = govern(verdict("w2", 2), POLICY, store_uri=store, launcher=launcher)
    assert acts["action"] == "retrain" and acts["episode"] == "v3-0001"
    (again,) = govern(verdict("w3", 3), POLICY, store_uri=store, launcher=launcher)
    assert again["action"] == "retrain_skipped" and len(launcher.runs()) == 1


def test_a_manual_retrain_is_an_audited_episode_and_waits_for_a_running_one(tmp_path):
    from components.common.registry import ModelRegistry
    from components.govern.core import GovernError, manual_retrain

    store, registry = str(tmp_path / "store"), ModelRegistry(str(tmp_path / "registry"))
    with pytest.raises(GovernError, match="no production version"):
        manual_retrain(store, MODEL, registry.uri, "new camera", FolderLauncher(str(tmp_path)))
    registry.register(MODEL, {"model.onnx": b"x"}, {"dataset_version": "d1"})
    registry.set_alias(MODEL, "production", 1, reason="first release")
    with pytest.raises(GovernError, match="--reason"):
        manual_retrain(store, MODEL, registry.uri, " ", FolderLauncher(str(tmp_path)))
    running = FolderLauncher(str(tmp_path), state="running")
    result = manual_retrain(store, MODEL, registry.uri, "new camera at the gate", running,
                            by="po@pet-park")
    assert result["action"] == "retrain" and result["episode"] == "v1-0001"
    (run,) = running.runs()
    assert run["rules"] == ["manual"] and run["verdict"] == ""
    (trigger,) = AuditLog(GovernanceStore(store, MODEL)).records()
    assert trigger["kind"] == "trigger" and trigger["actor"] == "po@pet-park"
    assert trigger["details"]["reason"] == "new camera at the gate"
    with pytest.raises(GovernError, match=f"{result['run_id']}.*still in progress"):
        manual_retrain(store, MODEL, registry.uri, "again", running)
    done = FolderLauncher(str(tmp_path), state="succeeded")
    assert manual_retrain(store, MODEL, registry.uri, "again", done)["episode"] == "v1-0002"
    # Recorded, not started: the message names the command that starts it.
    recorded = manual_retrain(store, MODEL, registry.uri, "later", None)
    assert f"mlops govern start-episode {recorded['episode']}" in recorded["detail"]


def test_a_skipped_retraining_names_why_and_the_command_for_another(tmp_path):
    """After a person's retraining ran, the next drift said "episode v3-0001 (since verdict )
    already started run … (succeeded); none started" and nothing about what to do."""
    from components.common.registry import ModelRegistry
    from components.govern.core import manual_retrain

    store, registry = str(tmp_path / "store"), ModelRegistry(str(tmp_path / "registry"))
    for _ in range(3):
        registry.register(MODEL, {"model.onnx": b"x"}, {"dataset_version": "d1"})
    registry.set_alias(MODEL, "production", 3, reason="third")
    done = FolderLauncher(str(tmp_path), state="succeeded")
    manual_retrain(store, MODEL, registry.uri, "night camera", done)
    (skipped,) = govern(verdict("w1", 1), POLICY, store_uri=store, launcher=done)
    assert skipped["action"] == "retrain_skipped"
    assert "(night camera) already started run" in skipped["detail"]
    assert "`mlops govern retrain --reason WHY` starts another" in skipped["detail"]
