"""Reading a window from the capture store: damaged stores are counted, never a crash."""

from __future__ import annotations

import json

import pytest

from components.common.storage import open_store
from components.monitor.tests.conftest import T0, simulate_window
from components.monitor.window import parse_time, read_window, record_role, role_counts

DAY = "2026-11-18"  # the date of T0
PREFIX = f"capture/records/model=pet-classifier/date={DAY}"


def test_window_joins_late_labels_and_keeps_only_its_version(monitor_setup, store_uri):
    info = simulate_window(monitor_setup, store_uri, n=40, label_share=0.5, seed=5)
    # A canary's records in the same window are counted apart, not judged with production's.
    from components.datagen.core import LakeSpec
    from components.monitor.simulate import simulate

    simulate(monitor_setup.sim, store_uri, monitor_setup.model, "2",
             LakeSpec(n=7, size=32, seed=6), start_time=T0 + 5, revision="canary")
    win = read_window(store_uri, monitor_setup.model, T0, T0 + 3600,
                      model_version=str(monitor_setup.version))
    assert len(win) == 40
    assert win.other_versions == {"2": 7}
    assert win.n_labelled == info["labelled"] > 0
    assert all(r["true_label"] in ("cats", "dogs") for r in win.records if r["true_label"])
    assert sum(win.problems.values()) == 0
    # Records outside the window are left out, not counted as problems.
    assert len(read_window(store_uri, monitor_setup.model, T0 + 100, T0 + 200, "1")) == 10


def test_corrupt_truncated_and_foreign_records_are_counted(monitor_setup, tmp_path):
    uri = str(tmp_path / "store")
    simulate_window(monitor_setup, uri, n=20, seed=8)
    store = open_store(uri)
    good = json.loads(store.get(next(o.key for o in store.list(PREFIX))).splitlines()[0])
    line = json.dumps(good)
    other = json.dumps({**good, "model": "another-model"})
    no_embedding = json.dumps({k: v for k, v in good.items() if k != "embedding"})
    wrong_type = json.dumps({**good, "embedding": "not a list"})
    short_embedding = json.dumps({**good, "request_id": "short", "embedding": [0.1, 0.2]})
    store.put(f"{PREFIX}/120000-bad-1.jsonl", (
        "this is not json\n" + "[1, 2, 3]\n" + other + "\n" + no_embedding + "\n" + wrong_type
        + "\n" + short_embedding + "\n" + line + "\n" + line[: len(line) // 2]).encode())
    store.put(f"{PREFIX}/notes.txt", b"someone's notes")
    store.put(f"{PREFIX}/130000-binary-1.jsonl", b"\x00\xff\xfe" * 100 + b"\n")
    win = read_window(uri, monitor_setup.model, T0, T0 + 86400)
    assert len(win) == 21  # the 20 captured and the one good line
    assert win.problems["truncated"] == 1
    assert win.problems["parse_errors"] == 3  # not JSON, a list, and the binary batch
    assert win.problems["missing_fields"] == 3  # no embedding, wrong type, wrong length
    assert win.problems["foreign"] == 2  # another model's record, a file out of the layout
    assert any("notes.txt" in e for e in win.examples["foreign"])
    assert any(":8" in e for e in win.examples["truncated"])


def test_empty_and_missing_windows(monitor_setup, tmp_path):
    win = read_window(str(tmp_path / "nothing"), "pet-classifier", T0, T0 + 60)
    assert len(win) == 0 and win.files == 0 and not any(win.problems.values())
    with pytest.raises(ValueError, match="not after start"):
        read_window(str(tmp_path), "pet-classifier", T0 + 60, T0)


def test_times_in_every_form():
    a = parse_time("2026-11-18T11:06:40Z")
    assert a == parse_time(T0) == parse_time("2026-11-18T11:06:40")
    assert parse_time("2026-11-18T12:06:40+01:00") == a
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")


def test_a_record_gets_its_role_from_its_server_or_from_its_knative_revision():
    """Off a cluster a server knows its role; a Knative revision's pod does not, and its
    records get the role the InferenceService's status gives the revision they name."""
    roles = {"pets-predictor-00002": "stable", "pets-predictor-00003": "canary"}
    local = {"request_id": "a", "revision": "canary"}
    canary = {"request_id": "b", "revision": "", "knative_revision": "pets-predictor-00003"}
    gone = {"request_id": "c", "revision": "", "knative_revision": "pets-predictor-00001"}
    claimed = {"request_id": "d", "revision": "stable", "knative_revision": "pets-predictor-00003"}
    assert record_role(local, roles) == "canary" and record_role(local) == "canary"
    assert record_role(canary, roles) == "canary" and record_role(canary) == ""
    assert record_role(gone, roles) == ""  # a revision in no role now
    assert record_role(claimed, roles) == "canary"  # the revision decides, on a cluster
    # Requests, not instances: two records of one request count once.
    assert role_counts([local, canary, dict(canary, index=1), gone], roles) == \
        {"canary": 2, "": 1}
