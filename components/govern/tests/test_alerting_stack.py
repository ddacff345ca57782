"""The real monitoring stack on loopback: Prometheus scrapes a stand-in predictor's
``/metrics`` and evaluates the shipped PrometheusRule (built from the policy, with windows
of seconds), Alertmanager routes the alert to ``mlops govern receiver`` as a webhook, and the
receiver governs it with the default policy's rules. Every server binds 127.0.0.1 on a free
port and is stopped by its PID. Skipped, saying why, where Debian's ``prometheus`` and
``prometheus-alertmanager`` are not installed (``.ci/run`` installs them)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import yaml

from components.common import prom
from components.common.governance import GovernanceStore
from components.govern.alerts import AlertBook
from components.govern.policy import DEFAULT_POLICY_PATH, parse_policy
from components.govern.rules import prometheus_rule
from tests.support import free_port

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or ALERTMANAGER is None,
    reason="prometheus and prometheus-alertmanager are not installed (Debian/Ubuntu: apt-get "
           "install prometheus prometheus-alertmanager; .ci/run installs them): the "
           "end-to-end alerting test did not run")

MODEL = "pet-classifier"
SHARES = {"cats": 0.8, "dogs": 0.2}  # against the policy's prior of 0.5 each: shift 0.3
IMAGES_PER_S = 10.0


class _Predictor(BaseHTTPRequestHandler):
    """``/metrics`` of a predictor serving a steady load whose counters grow with time."""

    start = time.monotonic()

    def do_GET(self):  # noqa: N802 (http.server's name)
        t = time.monotonic() - self.start
        n = IMAGES_PER_S * t
        sel = f'model="{MODEL}"'
        lines = [f"# TYPE {prom.REQUESTS} counter",
                 f'{prom.REQUESTS}{{{sel},protocol="v1",outcome="ok"}} {n}',
                 f"# TYPE {prom.IMAGES} counter", f"{prom.IMAGES}{{{sel}}} {n}",
                 f"# TYPE {prom.PREDICTED_CLASS} counter"]
        lines += [f'{prom.PREDICTED_CLASS}{{{sel},label="{c}"}} {n * s}'
                  for c, s in SHARES.items()]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _start(args: list[str], url: str, log) -> subprocess.Popen:
    """Start a server process and wait (up to 60 s) until ``url`` answers."""
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return proc
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    _stop(proc)
    log.flush()
    raise RuntimeError(f"{args[0]} did not answer {url}: see {log.name}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.timeout(240)
def test_one_shifted_class_share_reaches_governance_as_one_alert(tmp_path, receiver):
    # The default policy, with windows of seconds and its webhooks pointed at loopback.
    policy = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    policy["prometheus"].update({"rate_window": "15s", "share_window": "15s", "for": "2s",
                                 "min_requests": 20})
    for recipient in policy["recipients"].values():
        recipient.pop("url_env", None)
        recipient["url"] = receiver.url
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    rule = prometheus_rule(parse_policy(policy))
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))

    target = ThreadingHTTPServer(("127.0.0.1", 0), _Predictor)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    gov_port, am_port, prom_port = free_port(), free_port(), free_port()
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "mlops-govern", "group_by": ["alertname", "model"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "mlops-govern", "webhook_configs": [
            {"url": f"http://127.0.0.1:{gov_port}/alerts", "send_resolved": True}]}]}))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "predictor", "static_configs": [
            {"targets": [f"127.0.0.1:{target.server_port}"]}]}]}))
    store = tmp_path / "monitoring"
    procs = []
    with open(tmp_path / "servers.log", "w") as log:
        try:
            procs.append(_start(
                [sys.executable, "-m", "components.cli", "govern", "receiver", "--host",
                 "127.0.0.1", "--port", str(gov_port), "--store", str(store), "--registry",
                 str(tmp_path / "registry"), "--target", "none", "--launcher", "none",
                 "--policy", str(tmp_path / "policy.yaml")],
                f"http://127.0.0.1:{gov_port}/healthz", log))
            procs.append(_start(
                [ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}",
                 f"--storage.path={tmp_path / 'am-data'}",
                 f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                f"http://127.0.0.1:{am_port}/-/ready", log))
            procs.append(_start(
                [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                f"http://127.0.0.1:{prom_port}/-/ready", log))
            book = AlertBook(GovernanceStore(str(store), MODEL))
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and not book.alerts():
                time.sleep(0.5)
            active = requests.get(f"http://127.0.0.1:{am_port}/api/v2/alerts",
                                  timeout=10).json()
        finally:
            for proc in reversed(procs):
                _stop(proc)
            target.shutdown()
            target.server_close()
    log_text = (tmp_path / "servers.log").read_text()
    alerts = book.alerts()
    assert alerts, f"no alert reached governance in 150 s; servers' log:\n{log_text[-3000:]}"
    # One condition, one alert: in Alertmanager, in governance, and to the product owner.
    assert [a["labels"]["alertname"] for a in active] == ["PetClassifierPredictedClassShare"]
    # Its annotations, as Prometheus rendered them: the observations behind the value, and
    # each class's share.
    annotations = active[0]["annotations"]
    assert float(annotations["samples"]) >= 20
    assert "cats 80%" in annotations["description"] and "dogs 20%" in annotations["description"]
    (alert,) = alerts
    assert alert["status"] == "firing" and alert["rule"] == "prediction-drift"
    assert alert["check"] == "prediction_drift.class_shares"
    assert alert["value"] == pytest.approx(0.3, abs=0.02)
    assert alert["threshold"] == pytest.approx(0.1)
    assert alert["recipients"] == ["product-owner"]
    # One message to the product owner: in a person's words what changed and what happens
    # next; the engineer's check name, value and rule in its details field.
    (message,) = receiver.received
    assert "The share of answers per class has changed" in message["text"]
    assert alert["text"] in message["text"] and "Next: " in message["text"]
    assert "prediction_drift.class_shares" not in message["text"]
    assert message["details"].startswith("prediction_drift.class_shares = ")
    assert "rule prediction-drift" in message["details"]
