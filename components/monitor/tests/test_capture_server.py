"""Capture from a real KServe ModelServer over HTTP: batched files with the contract's fields,
the revision, deduplicated images, flush on shutdown; and when storage hangs or is down,
predictions still answer 200 while records are dropped or failed and counted."""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from components.common import prom
from components.common.storage import open_store
from components.monitor.contract import RECORD_FIELDS
from tests.support import free_port, start_model_server, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
MODEL = "pets"


def _start(package_dir, tmp_path, *args, env=None, name="server"):
    port = free_port()
    log_path = tmp_path / f"{name}.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_model_server(
        [sys.executable, "-m", "components.serve.server", "--package-dir", str(package_dir),
         "--name", MODEL, "--port", str(port), *args], url, MODEL, log_path,
        env={**os.environ, **(env or {})})
    return proc, url, log_path


@pytest.fixture(scope="module")
def images(dataset_dirs):
    from components.ingest.snapshot import read_split

    rows, _ = read_split(dataset_dirs[1])
    return [open_store(u.rsplit("/", 1)[0]).get(u.rsplit("/", 1)[1]) for u in rows["uri"].head(6)]


def _v1(url, imgs, request_id=None):
    headers = {"x-request-id": request_id} if request_id else {}
    return httpx.post(f"{url}/v1/models/{MODEL}:predict", headers=headers, timeout=30,
                      json={"instances": [{"image_bytes": {"b64": base64.b64encode(i).decode()}}
                                          for i in imgs]})


def _metric(url, name, **labels) -> float:
    found = prom.values(httpx.get(f"{url}/metrics", timeout=10).text, name, **labels)
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    assert found, f"no {name}{{{want}}} in /metrics"
    return found[0]


def _records(store) -> tuple[list[str], list[dict]]:
    keys = [o.key for o in store.list("capture/records")]
    return keys, [json.loads(line) for k in keys for line in store.get(k).decode().splitlines()]


def test_served_requests_are_captured_in_batches_with_the_contract_fields(
        package_dir, images, tmp_path):
    from components.common.images import decode_and_measure
    from components.common.runtime import onnx_embedder
    from components.monitor.capture import image_key

    capture = tmp_path / "monitoring"
    proc, url, log_path = _start(
        package_dir, tmp_path, "--capture-uri", str(capture), "--capture-batch-records", "5",
        "--capture-batch-seconds", "60", "--capture-image-rate", "1",
        env={"MLOPS_REVISION": "canary"})
    try:
        answers, ids = {}, {}
        for n in range(5):  # 5 requests of 2 images: 10 records
            r = _v1(url, images[n:n + 2], request_id=f"cam1-{n}")
            assert r.status_code == 200
            # The server's own id (the one a label is joined by); the client's beside it.
            assert r.json()["client_request_id"] == f"cam1-{n}"
            ids[f"cam1-{n}"] = r.json()["request_id"]
            answers[f"cam1-{n}"] = r.json()["predictions"]
        r = _v1(url, [images[0]])  # no x-request-id: the server's id only
        assert r.status_code == 200 and len(r.json()["request_id"]) == 32
        assert "client_request_id" not in r.json()
        v2 = httpx.post(f"{url}/v2/models/{MODEL}/infer", timeout=30, json={
            "id": "v2-req", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                        "data": [base64.b64encode(images[3]).decode()]}]})
        assert v2.status_code == 200
        # The protocol's id is the client's; the server's is in the parameters.
        assert v2.json()["id"] == "v2-req"
        ids["v2-req"] = v2.json()["parameters"]["request_id"]
        assert len(set(ids.values())) == 6 and all(len(i) == 32 for i in ids.values())
        # 12 records: two batches of 5 are written while serving; the rest waits for the
        # batch timer (a minute) or the shutdown.
        deadline = time.monotonic() + 20
        while len(_records(open_store(capture))[0]) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_records(open_store(capture))[0]) == 2
        assert _metric(url, "pet_classifier_capture_records_total", model=MODEL,
                       outcome="written") == 10
    finally:
        assert stop_process(proc) == 0
    # Shutdown flushed the last partial batch.
    store = open_store(capture)
    keys, records = _records(store)
    assert len(keys) == 3 and len(records) == 12
    assert all(k.startswith(f"capture/records/model={MODEL}/date=") and k.endswith(".jsonl")
               for k in keys)
    embed = onnx_embedder((package_dir / "model.onnx").read_bytes())
    by_id = {(r["request_id"], r["index"]): r for r in records}
    for n in range(5):
        for i in range(2):
            rec = by_id[(ids[f"cam1-{n}"], i)]
            assert rec["client_request_id"] == f"cam1-{n}"
            # No context was sent, and the server does not run in a Knative revision.
            assert set(RECORD_FIELDS) - {"sent_context", "knative_revision"} <= set(rec)
            assert "knative_revision" not in rec
            assert rec["model"] == MODEL and rec["revision"] == "canary"
            assert rec["protocol"] == "v1" and rec["latency_ms"] > 0
            assert rec["label"] == answers[f"cam1-{n}"][i]["label"]
            assert rec["probabilities"] == pytest.approx(
                answers[f"cam1-{n}"][i]["probabilities"], abs=1e-6)
            # The statistics and the embedding are those of the image that was sent.
            x, stats = decode_and_measure(images[n + i], 32)
            assert rec["stats"] == stats
            assert np.allclose(rec["embedding"], embed(x[None])[0], atol=1e-5)
            assert store.get(image_key(rec["image_sha256"])) == images[n + i]
    assert by_id[(ids["v2-req"], 0)]["protocol"] == "v2"
    assert by_id[(ids["v2-req"], 0)]["client_request_id"] == "v2-req"
    # Images are content-addressed: 6 distinct images were sent 13 times.
    assert len(list(store.list("capture/images"))) == len({r["image_sha256"] for r in records})
    assert len({r["image_sha256"] for r in records}) == 6

    # Ground truth joined by request id, and the monitor's window reader, read it all back.
    from components.monitor.feedback import LabelRequest, LabelStore
    from components.monitor.window import read_window

    labels = LabelStore(str(capture), MODEL, ["cats", "dogs"])
    labels.add(LabelRequest(ids["cam1-0"], "dogs", index=1, by="reviewer"))
    win = read_window(str(capture), MODEL, time.time() - 600, time.time() + 60)
    assert len(win) == 12 and win.bad_records == 0 and win.n_labelled == 1
    assert next(r for r in win.records if (r["request_id"], r["index"]) == (ids["cam1-0"], 1)
                )["true_label"] == "dogs"
    assert win.embeddings().shape == (12, 64)


class BlackHole:
    """A TCP server on loopback that accepts connections and never answers: an object store
    that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                return

    def close(self):
        self.stopped.set()
        for c in self.conns:
            c.close()
        self.sock.close()


def test_slow_or_down_storage_never_fails_a_prediction(package_dir, images, tmp_path):
    hole = BlackHole()
    s3 = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{hole.port}", "AWS_ACCESS_KEY_ID": "x",
          "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1",
          "MLOPS_S3_CONNECT_TIMEOUT": "1", "MLOPS_S3_READ_TIMEOUT": "3",
          "MLOPS_S3_RETRIES": "0", "MLOPS_CAPTURE_RETRIES": "0"}
    proc, url, _ = _start(package_dir, tmp_path, "--capture-uri", "s3://capture/monitoring",
                          "--capture-queue", "5", "--capture-batch-records", "1",
                          env=s3, name="hung")
    try:
        for n in range(30):
            assert _v1(url, [images[n % 6]], request_id=f"q-{n}").status_code == 200
        dropped = _metric(url, "pet_classifier_capture_records_total", model=MODEL,
                          outcome="dropped")
        assert dropped >= 30 - 5 - 2  # the queue held 5 and the writer 1 or 2
        # The hung writes time out and are counted as failed; serving goes on meanwhile.
        deadline = time.monotonic() + 60
        failed = 0.0
        while failed == 0 and time.monotonic() < deadline:
            assert _v1(url, [images[0]]).status_code == 200
            failed = _metric(url, "pet_classifier_capture_records_total", model=MODEL,
                             outcome="failed")
            time.sleep(0.5)
        assert failed >= 1
    finally:
        hole.close()
        stop_process(proc)

    # Storage down (connection refused): every prediction still answers 200.
    refused = free_port()
    proc, url, _ = _start(package_dir, tmp_path, "--capture-uri", "s3://capture/monitoring",
                          "--capture-batch-records", "1",
                          env={**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{refused}"},
                          name="down")
    try:
        for n in range(3):
            assert _v1(url, [images[n]], request_id=f"d-{n}").status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _metric(
                url, "pet_classifier_capture_records_total", model=MODEL,
                outcome="failed") < 3:
            time.sleep(0.5)
        assert _metric(url, "pet_classifier_capture_records_total", model=MODEL,
                       outcome="failed") == 3
    finally:
        stop_process(proc)


def test_the_camera_context_header_is_validated_and_never_overrides_what_the_image_shows(
        package_dir, tmp_path):
    """``x-camera-context``: an undeclared context is the client's mistake (400, naming the
    declared ones, nothing captured); a declared one is recorded as ``sent_context`` beside
    the context measured from the image, which decides: an infrared frame sent as ``day`` is
    judged at night."""
    from components.datagen.core import LakeSpec, render

    night = render(LakeSpec(n=4, size=32, seed=5, condition="night"), 0)[1]
    day = render(LakeSpec(n=4, size=32, seed=5), 1)[1]
    capture = tmp_path / "monitoring"
    proc, url, _ = _start(package_dir, tmp_path, "--capture-uri", str(capture),
                          "--capture-batch-records", "100", "--capture-image-rate", "0")

    def send(image, context):
        return httpx.post(f"{url}/v1/models/{MODEL}:predict", timeout=30,
                          headers={"x-camera-context": context},
                          json={"instances": [{"image_bytes": {
                              "b64": base64.b64encode(image).decode()}}]})

    try:
        r = send(night, "dusk")
        assert r.status_code == 400, r.text
        assert "dusk" in r.text and "day, night" in r.text and "x-camera-context" in r.text
        r = send(night, "x" * 3000)  # echoed shortened, not in full
        assert r.status_code == 400 and "x" * 41 not in r.text and "x" * 40 in r.text
        r = httpx.post(f"{url}/v2/models/{MODEL}/infer", timeout=30, json={
            "parameters": {"context": "dusk"}, "inputs": [{
                "name": "image", "shape": [1], "datatype": "BYTES",
                "data": [base64.b64encode(night).decode()]}]})
        assert r.status_code == 400 and "parameter 'context'" in r.text, r.text
        ids = {}
        for name, image, context in (("ir-as-day", night, "day"), ("day-as-night", day, "night"),
                                     ("ir-as-night", night, "NIGHT")):
            r = send(image, context)
            assert r.status_code == 200, r.text
            ids[r.json()["request_id"]] = name
    finally:
        assert stop_process(proc) == 0
    _, records = _records(open_store(capture))
    assert len(records) == 3  # the rejected request was not captured
    got = {ids[r["request_id"]]: (r["context"], r["sent_context"]) for r in records}
    assert got == {"ir-as-day": ("night", "day"), "day-as-night": ("day", "night"),
                   "ir-as-night": ("night", "night")}
