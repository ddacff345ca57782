"""`mlops trace REQUEST_ID` from the stores alone: a captured request (written by the real
capture writer), the registered version's lineage, the dataset manifest a real ingestion
published, a verdict of its window with an alert, and its label."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from components.common.governance import GovernanceStore
from components.common.registry import ModelRegistry
from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate
from components.govern.alerts import AlertBook
from components.ingest.core import IngestConfig, ingest
from components.monitor.capture import CaptureConfig, CaptureWriter
from components.monitor.contract import Check, Verdict
from components.monitor.feedback import LabelRequest, LabelStore

MODEL = "pet-classifier"


def _mlops(*args):
    return subprocess.run([sys.executable, "-m", "components.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_trace_goes_from_a_request_to_everything_behind_it(tmp_path):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=20, size=32, seed=4), lake)
    result = ingest(lake.uri, str(tmp_path / "ds"), IngestConfig())
    registry = ModelRegistry(str(tmp_path / "registry"))
    registry.register(MODEL, {"model.onnx": b"x"}, {
        "dataset_version": result.version, "dataset_source": lake.uri,
        "dataset_manifest": result.snapshot_uri + "/manifest.csv",
        "code_version": "git:0123abc", "pipeline_run": "pet-classifier-training-7",
        "hyperparameters": {"lr": 0.003}})
    store = str(tmp_path / "monitoring")
    photo_key = sorted(result.manifest["key"])[0]
    photo = lake.get(photo_key)
    writer = CaptureWriter(CaptureConfig(uri=store, image_rate=1.0), MODEL)
    now = time.time()
    writer.submit({"request_id": "req-42", "index": 0, "time": now, "model": MODEL,
                   "model_version": "1", "label": "cats",
                   "probabilities": {"cats": 0.9, "dogs": 0.1}, "latency_ms": 3.0}, photo)
    writer.submit({"request_id": "req-other", "index": 0, "time": now, "model": MODEL,
                   "model_version": "1", "label": "dogs",
                   "probabilities": {"cats": 0.2, "dogs": 0.8}, "latency_ms": 3.0})
    assert writer.close(30)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 60))
    end = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + 60))
    verdict = Verdict(MODEL, "1", iso, end, "w-7", 2, 1, [
        Check("drift.embedding", "drift", 0.0001, 0.05, "alarm", "embeddings moved")])
    open_store(store).put_json(f"monitoring/{MODEL}/history/{end}-w-7.json", verdict.to_dict())
    AlertBook(GovernanceStore(store, MODEL)).create({
        "verdict_run_id": "w-7", "summary": "the images production receives have changed",
        "status": "firing", "fingerprint": "f", "recipients": []})
    LabelStore(store, MODEL, ["cats", "dogs"]).add(LabelRequest("req-42", "dogs", 0, "qa"))

    out = _mlops("trace", "req-42", "--store", store, "--registry", registry.uri)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "request req-42/0: answered cats (0.900) by pet-classifier version 1" in text
    assert "capture/images/" in text  # the input image it was asked about
    assert f"dataset       {result.version} from {lake.uri}" in text
    assert "lake keys     20 images" in text and f"trained on as {photo_key}" in text
    assert "code          git:0123abc" in text and '{"lr": 0.003}' in text
    assert "pipeline run  pet-classifier-training-7" in text
    assert "verdict w-7: alarm; alarms: drift.embedding" in text
    assert "alert         #1 firing: the images production receives have changed" in text
    assert "label         dogs by qa" in text and "(WRONG)" in text
    as_json = json.loads(_mlops("trace", "req-42", "--store", store, "--registry",
                                registry.uri, "--json").stdout)
    assert as_json["instances"][0]["label"]["label"] == "dogs"
    missing = _mlops("trace", "req-nope", "--store", store, "--registry", registry.uri)
    assert missing.returncode == 2 and "'req-nope' was not captured" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_trace_names_the_request_context_and_its_own_alarms(tmp_path, capsys):
    """A day request's trace listed the night part's alarms and alerts as its own."""
    from components.cli import main

    store = str(tmp_path / "monitoring")
    writer = CaptureWriter(CaptureConfig(uri=store, image_rate=0.0), MODEL)
    now = time.time()
    for rid, context, sent in (("req-day", "day", ""), ("req-night", "night", "day")):
        writer.submit({"request_id": rid, "index": 0, "time": now, "model": MODEL,
                       "model_version": "1", "label": "cats", "context": context,
                       **({"sent_context": sent} if sent else {}),
                       "probabilities": {"cats": 0.9, "dogs": 0.1}, "latency_ms": 3.0})
    assert writer.close(30)
    start = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 60))
    end = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + 60))
    verdict = Verdict(MODEL, "1", start, end, "w-8", 2, 0, [
        Check("drift.embedding", "drift", 0.4, 0.05, "ok", "", context="day"),
        Check("drift.embedding", "drift", 0.0001, 0.05, "alarm", "moved", context="night")])
    open_store(store).put_json(f"monitoring/{MODEL}/history/{end}-w-8.json", verdict.to_dict())
    AlertBook(GovernanceStore(store, MODEL)).create({
        "verdict_run_id": "w-8", "summary": "night images changed", "context": "night",
        "status": "firing", "fingerprint": "f", "recipients": []})
    registry = str(tmp_path / "registry")
    ModelRegistry(registry).register(MODEL, {"model.onnx": b"x"}, {})
    assert main(["trace", "req-day", "--store", store, "--registry", registry]) == 0
    day = capsys.readouterr().out
    assert "context       day" in day and "night images changed" not in day
    assert "verdict w-8: alarm; alarms in the night images, not this one's" in day
    assert main(["trace", "req-night", "--store", store, "--registry", registry]) == 0
    night = capsys.readouterr().out
    assert "context       night (the camera said day; the image decides)" in night
    assert "alarms: drift.embedding[night]" in night and "#1 firing: night images changed" \
        in night
