"""The Alertmanager webhook receiver as a process on loopback (started by the CLI, stopped by
its PID), and the govern command line: run, alerts, audit, hold, policy, rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from components.common.governance import GovernanceStore
from components.govern.alerts import AlertBook
from tests.support import free_port


def _policy_file(tmp_path, url: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "model": "pet-classifier",
        "delivery": {"attempts": 2, "backoff_s": 0.05, "timeout_s": 3},
        "recipients": {"qa": {"format": "slack", "url": url}},
        "rules": [{"name": "error-rate-collapse",
                   "match": {"name": "telemetry.error_rate", "value_above": 0.05,
                             "min_samples": 100},
                   "actions": [{"type": "alert", "to": "qa", "severity": "critical"}]},
                  {"name": "class-share", "match": {"kind": "prediction_drift"},
                   "actions": [{"type": "alert", "to": "qa"}]}]}))
    return str(path)


def _notification(status="firing", value="0.12", samples="400") -> dict:
    """What Alertmanager sends for the PrometheusRule's error-rate alert."""
    labels = {"alertname": "PetClassifierErrorRate", "severity": "critical",
              "model": "pet-classifier", "model_version": "3", "check": "telemetry.error_rate",
              "kind": "telemetry", "namespace": "pets"}
    return {"version": "4", "groupKey": '{}:{alertname="PetClassifierErrorRate"}',
            "status": status, "receiver": "mlops-govern", "groupLabels": {},
            "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://am:9093",
            "truncatedAlerts": 0,
            "alerts": [{"status": status, "labels": labels,
                        "annotations": {"summary": "errors", "value": value,
                                        "threshold": "0.05", "samples": samples},
                        "startsAt": "2026-11-23T10:00:00Z",
                        "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
                        "fingerprint": "a1b2c3d4"}]}


@pytest.fixture
def receiver_process(tmp_path, receiver):
    port = free_port()
    store = str(tmp_path / "monitoring")
    proc = subprocess.Popen(
        [sys.executable, "-m", "components.cli", "govern", "receiver", "--port", str(port),
         "--store", store, "--registry", str(tmp_path / "registry"), "--target", "none",
         "--launcher", "none", "--policy", _policy_file(tmp_path, receiver.url)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=1).ok:
                break
        except requests.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode()) from None
            time.sleep(0.2)
    yield url, store
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(10)


@pytest.mark.timeout(120)
def test_alertmanager_notification_is_governed_once(receiver_process, receiver):
    url, store = receiver_process
    answer = requests.post(url + "/alerts", json=_notification(), timeout=30)
    assert answer.status_code == 200, answer.text
    (result,) = answer.json()["governed"]
    assert [a["action"] for a in result["actions"]] == ["alert"]
    assert "telemetry.error_rate = 0.12" in receiver.received[0]["details"]
    assert "production answers slowly or with errors" in receiver.received[0]["text"]
    # Alertmanager resends the same notification: governed once.
    again = requests.post(url + "/alerts", json=_notification(), timeout=30).json()
    assert again["governed"][0]["note"] == "already governed (a resend)"
    assert len(receiver.received) == 1
    # Resolved: the condition cleared.
    done = requests.post(url + "/alerts", json=_notification("resolved", value="0.01"),
                         timeout=30).json()
    assert [a["action"] for a in done["governed"][0]["actions"]] == ["resolved"]
    book = AlertBook(GovernanceStore(store, "pet-classifier"))
    assert [a["status"] for a in book.alerts()] == ["firing", "resolved"]
    assert book.alerts()[0]["model_version"] == "3"


@pytest.mark.timeout(120)
def test_receiver_answers_400_for_what_is_not_alertmanagers(receiver_process):
    url, _ = receiver_process
    bad = [(b"not json", "body is not JSON"),
           (json.dumps({"alerts": []}).encode(), "'alerts' must be a non-empty list"),
           (json.dumps({"alerts": [{"labels": {}, "status": "firing"}]}).encode(),
            "no 'model' label"),
           (json.dumps({**_notification(), "version": "3"}).encode(), "expect '4'")]
    for body, message in bad:
        answer = requests.post(url + "/alerts", data=body, timeout=30)
        assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    too_big = requests.post(url + "/alerts", data=b"x" * (2 << 20), timeout=30)
    assert too_big.status_code == 413


def test_receiver_requires_its_bearer_token_when_one_is_set(tmp_path, dead_url):
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from components.govern.policy import load_policy
    from components.govern.receiver import make_app

    app = make_app(load_policy(_policy_file(tmp_path, dead_url)),
                   store_uri=str(tmp_path / "monitoring"), token="s3cret")

    async def go():
        async with TestClient(TestServer(app)) as client:
            health = await client.get("/healthz")
            anonymous = await client.post("/alerts", data=b"{}")
            wrong = await client.post("/alerts", data=b"{}",
                                      headers={"Authorization": "Bearer other"})
            right = await client.post("/alerts", data=b"not json",
                                      headers={"Authorization": "Bearer s3cret"})
            return ((health.status, await health.json()), anonymous.status, wrong.status,
                    (right.status, await right.json()))

    health, anonymous, wrong, right = asyncio.run(go())
    assert health == (200, {"status": "ok"})  # Kubernetes' probes send no token
    assert anonymous == 401 and wrong == 401
    assert right[0] == 400 and "body is not JSON" in right[1]["error"]


def _mlops(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.timeout(300)
def test_cli_run_alerts_audit_and_mistakes(tmp_path, receiver, dead_url):
    from components.common.storage import open_store
    from components.monitor.contract import Check, Verdict

    store = str(tmp_path / "monitoring")
    v = Verdict("pet-classifier", "3", "2026-11-20T00:00:00+00:00", "2026-11-20T01:00:00+00:00",
                "w1", 500, 0, [Check("prediction_drift.class_shares", "prediction_drift", 0.3,
                                     0.1, "alarm", "dogs 80%", context="night")])
    open_store(store).put_json("monitoring/pet-classifier/history/w1.json", v.to_dict())
    common = ["--store", store, "--registry", str(tmp_path / "registry")]
    run = _mlops("govern", "run", *common, "--policy", _policy_file(tmp_path, dead_url),
                 "--target", "none", "--launcher", "none")
    assert run.returncode == 0, run.stderr
    assert "verdict w1:" in run.stdout and "qa UNDELIVERED" in run.stdout
    assert "prediction_drift.class_shares[night]" in run.stdout  # which context's part
    # The URL is set but does not answer: what happens to the alert, and the commands.
    assert "Alerts kept undelivered for qa: check with `mlops govern test-alert`; the next " \
        "`mlops govern run` sends them" in run.stderr
    alerts = _mlops("govern", "alerts", "--store", store, "--undelivered")
    assert "class-share" in alerts.stdout and "qa: UNDELIVERED" in alerts.stdout
    assert "cannot reach" in alerts.stdout
    # The receiver is up now: the next run delivers the kept alert.
    run = _mlops("govern", "run", *common, "--policy", _policy_file(tmp_path, receiver.url),
                 "--target", "none", "--launcher", "none")
    assert "redeliver" in run.stdout and "qa delivered" in run.stdout
    assert len(receiver.received) == 1
    assert "No undelivered alert" in _mlops("govern", "alerts", "--store", store,
                                            "--undelivered").stdout
    audit = _mlops("govern", "audit", *common, "--json")
    assert [e["kind"] for e in json.loads(audit.stdout)] == ["alert"]
    # A user's mistakes: one line, exit code 2, nothing run.
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules: [{name: x, match: {kind: drift}, actions: [explode]}]\n")
    mistake = _mlops("govern", "run", *common, "--policy", str(bad))
    assert mistake.returncode == 2
    assert "rules[0].actions[0].type: unknown action 'explode'" in mistake.stderr
    assert "Traceback" not in mistake.stderr
    assert _mlops("govern", "policy", str(bad)).returncode == 2
    lift = _mlops("govern", "hold", "lift", "pet-classifier", "--registry",
                  str(tmp_path / "registry"), "--note", "x")
    assert lift.returncode == 2 and "not held" in lift.stderr
    rules = _mlops("govern", "rules", "--namespace", "pets")
    assert yaml.safe_load(rules.stdout)["metadata"]["namespace"] == "pets"


@pytest.mark.timeout(60)
def test_receiver_starts_one_retraining_for_a_prometheus_alert(tmp_path):
    """In process, on loopback: a class-share alert from Prometheus starts one retraining
    episode; Alertmanager's repeat of the still-firing group starts none."""
    import asyncio

    import aiohttp
    from aiohttp.test_utils import TestServer

    from components.govern.policy import parse_policy
    from components.govern.receiver import make_app
    from components.govern.tests.test_trigger import FolderLauncher

    policy = parse_policy({"version": 1, "rules": [
        {"name": "class-share", "match": {"kind": "prediction_drift"}, "actions": ["retrain"]}]})
    launcher = FolderLauncher(str(tmp_path))
    app = make_app(policy, store_uri=str(tmp_path / "monitoring"), launcher=launcher)
    labels = {"alertname": "PetClassifierPredictedClassShare", "model": "pet-classifier",
              "model_version": "5", "check": "prediction_drift.class_shares",
              "kind": "prediction_drift", "label": "dogs"}

    def note(starts):
        return {"version": "4", "status": "firing", "alerts": [{
            "status": "firing", "labels": labels, "startsAt": starts, "fingerprint": "f00d",
            "annotations": {"value": "0.31", "threshold": "0.1"}}]}

    async def scenario():
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                out = []
                for starts in ("2026-11-23T10:00:00Z", "2026-11-23T10:00:00Z",
                               "2026-11-23T14:00:00Z"):
                    async with session.post(server.make_url("/alerts"), json=note(starts),
                                            timeout=aiohttp.ClientTimeout(total=30)) as r:
                        assert r.status == 200, await r.text()
                        out.append(await r.json())
                return out
        finally:
            await server.close()

    first, resend, later = asyncio.run(scenario())
    assert [a["action"] for a in first["governed"][0]["actions"]] == ["retrain"]
    assert resend["governed"][0]["note"] == "already governed (a resend)"
    assert [a["action"] for a in later["governed"][0]["actions"]] == ["retrain_skipped"]
    (run,) = launcher.runs()
    assert run["model_version"] == "5"
    assert run["checks"][0]["name"] == "prediction_drift.class_shares"
    assert run["checks"][0]["value"] == 0.31


def test_alerts_of_one_condition_in_a_notification_are_governed_as_one(tmp_path, receiver):
    """A rule whose expression yields one series per class (or per pod) sends Alertmanager
    one alert each; the receiver governs them as the one condition they are."""
    from components.govern.core import govern
    from components.govern.policy import load_policy
    from components.govern.receiver import verdicts_from_notification

    def alert(cls, value, status="firing"):
        return {"status": status, "fingerprint": f"fp-{cls}", "startsAt": "2026-11-23T10:00:00Z",
                "labels": {"alertname": "PetClassifierPredictedClassShare",
                           "model": "pet-classifier", "model_version": "2", "label": cls,
                           "check": "prediction_drift.class_shares",
                           "kind": "prediction_drift"},
                "annotations": {"value": value, "threshold": "0.1", "summary": "shares"}}

    payload = {"version": "4", "status": "firing",
               "alerts": [alert("cats", "0.29"), alert("dogs", "0.31"),
                          alert("birds", "0.5", "resolved")]}
    (verdict,) = verdicts_from_notification(payload, lambda model: "unknown")
    (check,) = verdict.checks
    assert (check.name, check.status, check.value) == ("prediction_drift.class_shares",
                                                       "alarm", 0.31)
    policy = load_policy(_policy_file(tmp_path, receiver.url))
    store = str(tmp_path / "monitoring")
    actions = govern(verdict, policy, store_uri=store)
    assert [a["action"] for a in actions] == ["alert"]
    assert len(receiver.received) == 1
    assert [a["check"] for a in AlertBook(GovernanceStore(store, "pet-classifier")).alerts()] \
        == ["prediction_drift.class_shares"]


@pytest.mark.timeout(120)
def test_test_alert_reaches_the_configured_webhooks_and_names_the_missing_one(tmp_path,
                                                                             receiver):
    env = {"MLOPS_HOME": str(tmp_path), "MLOPS_ALERT_PRODUCT_OWNER_URL": receiver.url,
           "MLOPS_ALERT_QA_URL": ""}
    sent = _mlops("govern", "test-alert", env=env)
    assert sent.returncode == 0, sent.stderr  # delivered where configured; the rest said
    assert f"product-owner    $MLOPS_ALERT_PRODUCT_OWNER_URL = {receiver.url}: delivered" in \
        sent.stdout
    assert "qa-expert" in sent.stdout and "set MLOPS_ALERT_QA_URL" in sent.stdout
    (body,) = receiver.received
    assert "Test alert for pet-classifier" in body["text"]
    assert "Nothing changed in production" in body["text"]
    # Only the named recipient; a test alert is not stored as an alert of the model.
    assert _mlops("govern", "test-alert", "--to", "product-owner", env=env).returncode == 0
    assert len(receiver.received) == 2
    assert "No alert" in _mlops("govern", "alerts", env=env).stdout
    down = _mlops("govern", "test-alert", env={**env, "MLOPS_ALERT_QA_URL":
                                              "http://127.0.0.1:9/qa"})
    assert down.returncode == 1 and "qa-expert" in down.stdout and "NOT delivered" in \
        down.stdout
    nosuch = _mlops("govern", "test-alert", "--to", "ceo", env=env)
    assert nosuch.returncode == 2 and "no recipient 'ceo'" in nosuch.stderr
