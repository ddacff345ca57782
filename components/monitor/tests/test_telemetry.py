"""Telemetry over a window: stored scrapes per server process, and Prometheus' HTTP API."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from components.common import prom
from components.monitor.checks import MonitorConfig, telemetry_checks
from components.monitor.telemetry import query_prometheus, summarize

BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def exposition(instance: str, ok: int, errors: int, bad: int, latencies: list[float]):
    """Prometheus text as the predictor exposes it (its metric names and labels)."""
    reg = CollectorRegistry()
    requests = Counter(prom.REQUESTS, "", ["model", "protocol", "outcome"], registry=reg)
    latency = Histogram(prom.REQUEST_SECONDS, "", ["model", "protocol"],
                        buckets=BUCKETS, registry=reg)
    Gauge(prom.SERVER_INFO, "", ["instance", "model", "model_version"],
          registry=reg).labels(instance, "pets", "1").set(1)
    requests.labels("pets", "v1", "ok").inc(ok)
    if errors:
        requests.labels("pets", "v1", "error").inc(errors)
    if bad:
        requests.labels("pets", "v2", "bad_request").inc(bad)
    requests.labels("other-model", "v1", "ok").inc(1000)  # another model: not counted
    for s in latencies:
        latency.labels("pets", "v1").observe(s)
    return generate_latest(reg).decode()


def snap(t, instance, ok, errors=0, bad=0, latencies=(), start=None, cpu=None, mem=None):
    """A stored scrape, as ``scrape_to_store`` writes it."""
    s = asdict(prom.parse(exposition(instance, ok, errors, bad, list(latencies)), "pets"))
    s.update(time=t, cpu_seconds=cpu, memory_bytes=mem, process_start=start)
    return s


def test_window_figures_from_scrapes_of_two_processes_and_a_restart():
    fast = [0.003] * 90 + [0.04] * 10
    snaps = [
        snap(0, "a:1", 100, latencies=[0.003] * 100, cpu=10.0, mem=100e6),  # before the window
        snap(100, "a:1", 300, errors=2, bad=5, latencies=[0.003] * 100 + fast * 2,
             cpu=30.0, mem=120e6),
        # b started inside the window: counted from zero at its start.
        snap(100, "b:2", 50, latencies=[0.2] * 50, start=60.0, cpu=4.0, mem=80e6),
        snap(500, "c:3", 10, latencies=[0.003] * 10),  # after the window
    ]
    out = summarize(snaps, 50, 150)
    assert out["processes"] == 2
    assert out["requests"] == 200 + 2 + 5 + 50
    assert out["errors"] == 2 and out["bad_requests"] == 5
    assert out["error_rate"] == pytest.approx(2 / 252)
    assert out["bad_request_share"] == pytest.approx(5 / 257)
    assert out["cpu_cores"] == pytest.approx(20 / 100 + 4 / 40)
    assert out["memory_mb"] == pytest.approx((120e6 + 80e6) / 2 ** 20, rel=1e-3)
    assert 2 < out["p50_ms"] <= 5
    assert 100 < out["p99_ms"] <= 250  # b's slow requests are the top 20%
    # One scrape of a process that started before the window: nothing to difference.
    assert summarize([snap(100, "a:1", 10)], 50, 150) is None
    assert summarize([], 0, 1) is None


def test_a_scrape_stored_in_the_old_vocabulary_is_read_the_same():
    # Scrapes stored before the one vocabulary named a client's 4xx "invalid".
    new = [snap(0, "a:1", 10, bad=0), snap(100, "a:1", 20, bad=4)]
    old = [dict(s, requests={("invalid" if k == "bad_request" else k): v
                             for k, v in s["requests"].items()}) for s in new]
    assert "invalid" in old[1]["requests"]
    assert summarize(old, 50, 150) == summarize(new, 50, 150)
    assert summarize(old, 50, 150)["bad_requests"] == 4


def test_telemetry_checks_judge_errors_and_latency():
    cfg = MonitorConfig(max_error_rate=0.01, p95_slo_ms=50)
    checks = {c.name: c for c in telemetry_checks(
        {"request_rate": 2.0, "error_rate": 0.02, "p50_ms": 3.0, "p95_ms": 80.0,
         "p99_ms": 120.0, "cpu_cores": 0.5, "memory_mb": 200.0, "requests": 100}, cfg)}
    assert checks["telemetry.error_rate"].status == "alarm"
    assert checks["telemetry.p95_latency"].status == "alarm"
    assert checks["telemetry.p50_latency"].status == "ok"
    assert all(c.status == "unknown" for c in telemetry_checks(None, cfg))


def test_a_window_without_telemetry_says_what_gives_it_some(tmp_path):
    """`mlops monitor run` said "the predictor's metrics could not be read (scrapes)" seven
    times, naming neither the cause nor the option."""
    import datetime as dt

    from components.monitor.core import _telemetry

    cfg = MonitorConfig()
    (scrapes,) = {c.detail for c in telemetry_checks(None, cfg, "scrapes")}
    assert "no scrape of the predictor's /metrics" in scrapes and "--metrics-url URL" in scrapes
    assert "mlops deploy status" in scrapes
    assert "--prometheus-url" in telemetry_checks(None, cfg, "prometheus")[0].detail
    end = dt.datetime.now(dt.UTC)
    summary, source = _telemetry("pet-classifier", str(tmp_path), end - dt.timedelta(hours=1),
                                 end, "http://127.0.0.1:9", "", "")
    assert summary is None and source.startswith("http://127.0.0.1:9/metrics did not answer")
    assert "did not answer" in telemetry_checks(summary, cfg, source)[0].detail


class _Prometheus(BaseHTTPRequestHandler):
    """Answers GET /api/v1/query in the Prometheus HTTP API's documented format
    (https://prometheus.io/docs/prometheus/latest/querying/api/#instant-queries:
    ``{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {…},
    "value": [<unix time>, "<value as a string>"]}]}}``), with fixed answers per query."""

    queries: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        q = parse_qs(urlparse(self.path).query)
        promql = q["query"][0]
        type(self).queries.append(promql)
        t = float(q["time"][0])
        if promql.startswith("sum by (outcome)"):
            result = [{"metric": {"outcome": o}, "value": [t, v]}
                      for o, v in (("ok", "970"), ("error", "10"),
                                   ("invalid", "20"))]  # an older server's label for a 4xx
        elif promql.startswith("histogram_quantile(0.95"):
            result = [{"metric": {}, "value": [t, "0.120"]}]
        elif promql.startswith("histogram_quantile"):
            result = [{"metric": {}, "value": [t, "NaN"]}]  # no requests in a bucket range
        elif "container_cpu" in promql:
            result = [{"metric": {"pod": "p1"}, "value": [t, "0.25"]},
                      {"metric": {"pod": "p2"}, "value": [t, "0.5"]}]
        else:
            result = [{"metric": {}, "value": [t, str(300 * 2 ** 20)]}]
        body = json.dumps({"status": "success",
                           "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_prometheus_queries_give_the_same_summary():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Prometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = query_prometheus(url, "pets", 1000.0, 1000.0 + 3600, namespace="prod")
    finally:
        server.shutdown()
        server.server_close()
    assert out["requests"] == 1000 and out["errors"] == 10 and out["bad_requests"] == 20
    assert out["error_rate"] == pytest.approx(10 / 980)
    assert out["p95_ms"] == pytest.approx(120.0)
    assert out["p50_ms"] is None  # NaN from Prometheus: not measurable
    assert out["cpu_cores"] == pytest.approx(0.75)
    assert out["memory_mb"] == pytest.approx(300.0)
    assert out["request_rate"] == pytest.approx(1000 / 3600)
    joined = "\n".join(_Prometheus.queries)
    assert 'model="pets"' in joined and "[3600s]" in joined
    assert 'namespace="prod"' in joined and 'pod=~"pets-predictor.*"' in joined
    assert query_prometheus("http://127.0.0.1:9", "pets", 0, 60) is None
