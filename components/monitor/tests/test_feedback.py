"""Feedback labels: validation, no silent overwrite, CSV, the file drop, the HTTP endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from components.cli import main as mlops
from components.common.storage import open_store
from components.monitor import feedback
from components.monitor.feedback import LabelConflict, LabelError, LabelRequest, LabelStore
from tests.support import free_port, stop_process

CLASSES = ["cats", "dogs"]


def _labels(uri) -> LabelStore:
    return LabelStore(str(uri), "pets", CLASSES)


def _keys(store) -> list[str]:
    return [o.key for o in store.list("capture/labels")]


def test_invalid_labels_are_refused_and_nothing_is_written(tmp_path):
    labels = _labels(tmp_path)
    with pytest.raises(LabelError, match=r"unknown label 'horse'.*\['cats', 'dogs'\]"):
        labels.add(LabelRequest("req-1", "horse"))
    with pytest.raises(LabelError, match="invalid request id"):
        labels.add(LabelRequest("../../registry", "cats"))
    with pytest.raises(LabelError, match="invalid index -1"):
        labels.add(LabelRequest("req-1", "cats", index=-1))
    with pytest.raises(LabelError, match="invalid index 'x'"):
        labels.add(LabelRequest("req-1", "cats", index="x"))
    assert _keys(labels.store) == []


def test_a_label_is_never_overwritten_silently(store_uri):
    labels = _labels(store_uri)
    first = labels.add(LabelRequest("req-1", "cats", index=1, by="alice", note="frame 17"))
    assert first["status"] == "created"
    assert labels.add(LabelRequest("req-1", "cats", index=1, by="bob"))["status"] == "unchanged"
    with pytest.raises(LabelConflict, match=r"already labelled 'cats' \(by alice.*--relabel"):
        labels.add(LabelRequest("req-1", "dogs", index=1, by="bob"))
    assert labels.current("req-1", 1)["label"] == "cats"
    fixed = labels.add(LabelRequest("req-1", "dogs", index=1, by="carol"), relabel=True)
    assert fixed["status"] == "relabelled"
    history = labels.history("req-1", 1)
    assert [(h["label"], h["by"], h["previous"]) for h in history] == [
        ("cats", "alice", None), ("dogs", "carol", "cats")]
    assert history[0]["note"] == "frame 17" and all(h["at"] for h in history)
    # Create-only files, one per statement, in the contract's layout.
    assert _keys(labels.store) == ["capture/labels/model=pets/req-1/1/00000001.json",
                                   "capture/labels/model=pets/req-1/1/00000002.json"]
    assert labels.current("req-1", 0) is None  # another instance of the request


def test_csv_is_applied_whole_or_not_at_all(tmp_path):
    labels = _labels(tmp_path / "store")
    good = "request_id,label,index\nr1,cats,0\nr1,dogs,1\nr2,dogs,0\n"
    results = labels.add_many(feedback.parse_csv(good, default_by="reviewer"))
    assert [r["status"] for r in results] == ["created"] * 3
    assert labels.current("r1", 1)["label"] == "dogs" and labels.current("r1", 1)["by"] == \
        "reviewer"
    before = _keys(labels.store)

    bad_class = "r3,cats\nr4,horse\n"  # no header: request_id,label
    with pytest.raises(LabelError, match="line 2: unknown label 'horse'"):
        labels.add_many(feedback.parse_csv(bad_class))
    conflict = "request_id,label\nr5,cats\nr2,cats\n"  # r2/0 is dogs already
    with pytest.raises(LabelConflict, match="line 3: request r2 instance 0 is already labelled"):
        labels.add_many(feedback.parse_csv(conflict))
    twice = "r6,cats\nr6,dogs\n"
    with pytest.raises(LabelError, match="labelled 'dogs' here and 'cats' at line 1"):
        labels.add_many(feedback.parse_csv(twice))
    assert _keys(labels.store) == before  # r3, r5, r6 were not written either
    with pytest.raises(LabelError, match="header"):
        feedback.parse_csv("request_id,lable\nr1,cats\n")


def test_file_drop_applies_good_files_and_rejects_bad_ones_with_the_reason(store_uri):
    labels = _labels(store_uri)
    store = labels.store
    prefix = feedback.inbox_prefix("pets")
    store.put(f"{prefix}/batch1.csv", b"request_id,label\nq1,cats\nq2,dogs\n")
    store.put(f"{prefix}/batch2.csv", b"request_id,label\nq3,cow\n")
    summary = feedback.process_inbox(labels)
    assert summary == {"files": 2, "applied": 1, "rejected": 1, "labels": 2}
    assert labels.current("q2")["label"] == "dogs"
    assert labels.current("q2")["source"] == "file-drop"
    assert labels.current("q3") is None
    keys = {o.key for o in store.list(prefix)}
    assert keys == {f"{prefix}/done/batch1.csv", f"{prefix}/done/batch1.csv.result.json",
                    f"{prefix}/rejected/batch2.csv", f"{prefix}/rejected/batch2.csv.errors.json"}
    assert "unknown label 'cow'" in store.get_json(f"{prefix}/rejected/batch2.csv.errors.json")[
        "error"]
    assert feedback.process_inbox(labels)["files"] == 0  # nothing is applied twice


@pytest.mark.timeout(60)
def test_http_feedback_endpoint(tmp_path):
    port = free_port()
    store = tmp_path / "monitoring"
    env = {**os.environ, "MLOPS_FEEDBACK_TOKEN": "s3cret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "components.cli", "monitor", "feedback-server",
         "--port", str(port), "--store", str(store), "--model", "pets", "--classes",
         "cats,dogs", "--inbox-seconds", "0"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer s3cret"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert requests.get(f"{base}/healthz", timeout=2).json()["classes"] == CLASSES
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "the feedback server did not start"
                time.sleep(0.2)
        item = {"request_id": "abc123", "index": 0, "label": "dogs", "by": "labeller-7"}
        assert requests.post(f"{base}/v1/labels", json=item, timeout=5).status_code == 401
        r = requests.post(f"{base}/v1/labels", json=item, headers=auth, timeout=5)
        assert r.status_code == 201 and r.json()["results"][0]["status"] == "created"
        r = requests.post(f"{base}/v1/labels", json=item, headers=auth, timeout=5)
        assert r.status_code == 200 and r.json()["results"][0]["status"] == "unchanged"
        r = requests.post(f"{base}/v1/labels", json={**item, "label": "cats"}, headers=auth,
                          timeout=5)
        assert r.status_code == 409 and "already labelled 'dogs'" in r.json()["error"]
        r = requests.post(f"{base}/v1/labels", json={**item, "label": "bird"}, headers=auth,
                          timeout=5)
        assert r.status_code == 400 and "unknown label 'bird'" in r.json()["error"]
        r = requests.post(f"{base}/v1/labels", data=b"{not json", headers=auth, timeout=5)
        assert r.status_code == 400
        r = requests.post(f"{base}/v1/labels", headers=auth, timeout=5, json={
            "relabel": True, "labels": [{**item, "label": "cats"},
                                        {"request_id": "abc123", "index": 1, "label": "cats"}]})
        assert r.status_code == 201
        assert [x["status"] for x in r.json()["results"]] == ["relabelled", "created"]
        got = requests.get(f"{base}/v1/labels/abc123", headers=auth, timeout=5).json()
        assert [h["label"] for h in got["instances"]["0"]] == ["dogs", "cats"]
        assert got["instances"]["0"][0]["by"] == "labeller-7"
        assert got["instances"]["1"][0]["by"].startswith("http:127.0.0.1")
        assert requests.get(f"{base}/v1/labels/nope", headers=auth, timeout=5).status_code == 404
    finally:
        stop_process(proc, signal.SIGINT, timeout=10)
    # What the endpoint stored is what the monitor reads.
    labels = _labels(store)
    assert labels.current("abc123", 0)["label"] == "cats"
    assert labels.current("abc123", 0)["source"] == "http"


def test_label_cli_single_and_csv(tmp_path, capsys):
    store = tmp_path / "monitoring"
    common = ["--store", str(store), "--model", "pets", "--classes", "cats,dogs"]
    # Nothing captured r9 (a typo, or a capture not flushed yet): refused, saying how to force.
    assert mlops(["monitor", "label", "r9", "cats", *common]) == 2
    err = capsys.readouterr().err
    assert "never captured for pets" in err and "--uncaptured" in err
    assert not store.exists() or not list(store.rglob("*.json"))
    assert mlops(["monitor", "label", "r9", "cats", "--by", "dana", "--uncaptured",
                  *common]) == 0
    assert "r9/0: cats created by dana" in capsys.readouterr().out
    assert mlops(["monitor", "label", "r9", "dogs", "--uncaptured", *common]) == 2
    assert "already labelled 'cats'" in capsys.readouterr().err
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("request_id,label,index\nr9,dogs,0\nr10,cats,2\n")
    assert mlops(["monitor", "label", "--csv", str(csv_path), "--relabel", "--uncaptured",
                  *common]) == 0
    assert "2 labels: 1 new, 1 corrected" in capsys.readouterr().out
    assert mlops(["monitor", "label", "--csv", str(tmp_path / "missing.csv"), *common]) == 2
    assert "Cannot read --csv" in capsys.readouterr().err
    assert mlops(["monitor", "labels", "r9", *common]) == 0
    out = capsys.readouterr().out
    assert "r9/0: cats" in out and "* r9/0: dogs" in out
    records = [json.loads(p.read_text()) for p in store.rglob("*.json")]
    assert sorted((r["request_id"], r["index"], r["seq"], r["label"]) for r in records) == [
        ("r10", 2, 1, "cats"), ("r9", 0, 1, "cats"), ("r9", 0, 2, "dogs")]


def test_classes_come_from_the_registry(tmp_path, package_dir):
    from components.common.registry import ModelRegistry

    files = {p.relative_to(package_dir).as_posix(): p.read_bytes()
             for p in package_dir.rglob("*") if p.is_file()}
    ModelRegistry(str(tmp_path / "reg")).register("pets", files, {"dataset_version": "x"})
    assert feedback.model_classes(str(tmp_path / "reg"), "pets") == CLASSES
    code = mlops(["monitor", "label", "r1", "cats", "--model", "nobody", "--registry",
                  str(tmp_path / "reg"), "--store", str(tmp_path / "m")])
    assert code == 2 and not open_store(tmp_path / "m").exists("capture")


def test_a_captured_request_is_labelled_without_forcing(tmp_path, capsys):
    from components.monitor.capture import CaptureConfig, CaptureWriter

    store = tmp_path / "monitoring"
    writer = CaptureWriter(CaptureConfig(uri=str(store), image_rate=0.0), "pets")
    writer.submit({"request_id": "r-cap", "index": 0, "time": 1.0e9, "model": "pets",
                   "model_version": "1", "label": "cats",
                   "probabilities": {"cats": 0.9, "dogs": 0.1}, "latency_ms": 3.0})
    assert writer.close(30)
    common = ["--store", str(store), "--model", "pets", "--classes", "cats,dogs"]
    assert mlops(["monitor", "label", "r-cap", "dogs", *common]) == 0
    assert "r-cap/0: dogs created" in capsys.readouterr().out
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("request_id,label\nr-cap,dogs\nr-typo,cats\n")
    assert mlops(["monitor", "label", "--csv", str(csv_path), *common]) == 2
    assert "1 of 2 request ids were never captured" in capsys.readouterr().err


def test_a_label_of_a_request_without_a_stored_image_says_it_cannot_be_retrained_on(
        tmp_path, capsys):
    """The capture keeps 5% of the images by default: a product owner's labels of the others
    were stored without a word, and the retraining exported none of them."""
    from components.monitor.capture import CaptureConfig, CaptureWriter

    store = tmp_path / "monitoring"
    writer = CaptureWriter(CaptureConfig(uri=str(store), image_rate=1.0), "pets")
    record = {"index": 0, "time": 1.0e9, "model": "pets", "model_version": "1",
              "label": "cats", "probabilities": {"cats": 0.9, "dogs": 0.1}, "latency_ms": 3.0}
    writer.submit({**record, "request_id": "r-kept"}, b"\xff\xd8 a jpeg")
    writer.submit({**record, "request_id": "r-dropped"})
    assert writer.close(30)
    common = ["--store", str(store), "--model", "pets", "--classes", "cats,dogs"]
    assert mlops(["monitor", "label", "r-kept", "dogs", *common]) == 0
    assert "no stored image" not in capsys.readouterr().err
    assert mlops(["monitor", "label", "r-dropped", "dogs", *common]) == 0
    err = capsys.readouterr().err
    assert "1 of these requests have no stored image" in err and "MLOPS_CAPTURE_IMAGE_RATE" \
        in err and "cannot learn from them" in err
