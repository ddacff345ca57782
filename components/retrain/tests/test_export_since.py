"""From when a retraining run exports production captures: the changed data only."""

from __future__ import annotations

import json

from components.monitor.contract import Check, Verdict
from components.monitor.core import append_history
from components.retrain.core import export_since

MODEL = "pet-classifier"


def _verdict(version: str, start: str, end: str, drift: str, run: str) -> Verdict:
    """A verdict with one drift check of status ``drift``."""
    return Verdict(model=MODEL, model_version=version, window_start=start, window_end=end,
                   run_id=run, n_requests=100, n_labelled=50,
                   checks=[Check("drift.embedding", "drift", 0.5, 0.05, drift, "")])


def _trigger(start: str, end: str) -> str:
    return json.dumps({"episode": "v1-0001", "model": MODEL, "model_version": "1",
                       "verdict": "alarm-run", "window_start": start, "window_end": end,
                       "checks": [{"name": "drift.embedding", "kind": "drift",
                                   "status": "alarm"}]})


def test_a_given_time_wins_and_a_manual_run_exports_everything():
    trigger = _trigger("2026-11-23T10:00:00.000Z", "2026-11-23T10:00:04.000Z")
    assert export_since(trigger, since=1234.5) == 1234.5
    assert export_since("", 0.0) is None
    assert export_since("new camera installed", 0.0) is None
    assert export_since(trigger, 0.0, from_episode=False) is None


def test_export_starts_where_production_was_last_judged_normal(tmp_path):
    store = str(tmp_path / "monitoring")
    # Day windows judged normal; the last one ends inside the alarming window.
    append_history(store, _verdict("1", "2026-11-23T09:59:56.000Z",
                                   "2026-11-23T10:00:01.000Z", "ok", "day-1"))
    append_history(store, _verdict("1", "2026-11-23T09:59:58.000Z",
                                   "2026-11-23T10:00:02.250Z", "ok", "day-2"))
    # Not evidence of normal: another version's window, and a window that alarmed itself.
    append_history(store, _verdict("2", "2026-11-23T09:59:59.000Z",
                                   "2026-11-23T10:00:03.000Z", "ok", "other-version"))
    append_history(store, _verdict("1", "2026-11-23T10:00:00.000Z",
                                   "2026-11-23T10:00:03.500Z", "alarm", "alarmed"))
    trigger = _trigger("2026-11-23T10:00:00.000Z", "2026-11-23T10:00:04.000Z")
    from components.monitor.window import parse_time

    since = export_since(trigger, 0.0, monitoring_uri=store)
    assert since == parse_time("2026-11-23T10:00:02.250Z").timestamp()
    # Without a normal window overlapping the episode's: the alarming window's start.
    empty = str(tmp_path / "empty")
    assert export_since(trigger, 0.0, monitoring_uri=empty) == \
        parse_time("2026-11-23T10:00:00.000Z").timestamp()


def test_unmeasured_windows_and_other_trigger_shapes_are_not_taken_for_normal(tmp_path):
    from components.common.storage import open_store
    from components.monitor.core import history_prefix
    from components.monitor.window import parse_time

    store = str(tmp_path / "monitoring")
    # A window with no data: drift unknown. Not evidence that production was normal.
    append_history(store, _verdict("1", "2026-11-23T09:59:58.000Z",
                                   "2026-11-23T10:00:03.000Z", "unknown", "no-data"))
    # An unreadable entry in the range is skipped, not fatal.
    open_store(store).put(f"{history_prefix(MODEL)}/20261123T100002Z-broken.json", b"{")
    start = parse_time("2026-11-23T10:00:00.000Z").timestamp()
    trigger = _trigger("2026-11-23T10:00:00.000Z", "2026-11-23T10:00:04.000Z")
    assert export_since(trigger, 0.0, monitoring_uri=store) == start
    # A hand-written trigger whose checks are names, not objects: every episode kind counts.
    append_history(store, _verdict("1", "2026-11-23T09:59:58.000Z",
                                   "2026-11-23T10:00:02.000Z", "alarm", "alarmed"))
    by_hand = json.dumps({"model": MODEL, "model_version": "1", "verdict": "v",
                          "window_start": "2026-11-23T10:00:00.000Z",
                          "window_end": "2026-11-23T10:00:04.000Z",
                          "checks": ["drift.embedding"]})
    assert export_since(by_hand, 0.0, monitoring_uri=store) == start
