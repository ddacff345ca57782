"""End to end through real parts: a KServe model server captures what it serves, the monitor
scrapes its /metrics, a reviewer labels, and a monitoring run judges the window."""

from __future__ import annotations

import sys
import time

import pytest
import requests

from components.deploy.client import v1_body
from components.monitor.core import run_monitoring
from components.monitor.telemetry import read_snapshots, scrape_to_store
from tests.support import free_port, start_model_server, stop_process


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_served_window_is_captured_scraped_labelled_and_judged(monitor_setup, tmp_path):
    from components.datagen.core import LakeSpec, render
    from components.monitor.feedback import LabelRequest, LabelStore

    store = str(tmp_path / "monitoring")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_model_server(
        [sys.executable, "-m", "components.cli", "serve", "--model",
         f"{monitor_setup.model}@production", "--registry", monitor_setup.registry_uri,
         "--cache-dir", str(tmp_path / "cache"), "--port", str(port), "--capture-uri", store,
         "--capture-batch-seconds", "0.2", "--capture-image-rate", "1"],
        url, monitor_setup.model, tmp_path / "server.log", timeout=120)
    try:
        start = time.time()
        assert scrape_to_store(url, monitor_setup.model, store) is not None
        spec = LakeSpec(n=40, size=32, seed=81)
        truth = {}
        with requests.Session() as http:
            predict = f"{url}/v1/models/{monitor_setup.model}:predict"
            for i in range(spec.n):
                label, jpeg = render(spec, i)
                r = http.post(predict, json=v1_body([jpeg]), timeout=30)
                assert r.status_code == 200, r.text
                truth[r.json()["request_id"]] = label + "s"  # the id labels are joined by
            for _ in range(3):  # a camera that sends garbage: refused, counted, not captured
                r = http.post(predict, json=v1_body([b"not an image"]), timeout=30)
                assert r.status_code == 400
        time.sleep(1.0)  # capture writes its batch within 0.2 s
        assert scrape_to_store(url, monitor_setup.model, store) is not None
        end = time.time() + 0.5
    finally:
        stop_process(proc)
    LabelStore(store, monitor_setup.model, ["cats", "dogs"]).add_many(
        [LabelRequest(rid, label, 0, by="test") for rid, label in list(truth.items())[:20]])
    assert len(read_snapshots(store, monitor_setup.model, until=end)) == 2

    result = run_monitoring(monitor_setup.model, monitor_setup.registry_uri, store,
                            start=start - 1, end=end, backend="torch", full=True,
                            gallery_size=2, config={"min_requests": 20})
    v = result.verdict
    assert v.n_requests == 40 and v.n_labelled == 20
    assert v.check("integrity.bad_records").status == "ok"
    undecodable = v.check("integrity.undecodable")
    assert undecodable.value == pytest.approx(3 / 43, abs=1e-4)
    assert undecodable.status == "alarm"  # 7% > 5%
    assert v.check("telemetry.request_rate").value > 0
    assert v.check("telemetry.error_rate").value == 0 and \
        v.check("telemetry.error_rate").status == "ok"
    assert 0 < v.check("telemetry.p50_latency").value <= v.check("telemetry.p95_latency").value
    assert v.check("telemetry.memory").value > 50  # MB of a real server process
    assert v.check("drift.embedding").status in ("ok", "alarm")  # measured, not unknown
    assert v.check("performance.accuracy").extra["n_labelled"] == 20
    assert result.explanations["gallery"], result.explanations["notes"]
