"""Alert delivery against real HTTP receivers on loopback: up, down, slow, flapping; alerts
are kept when undelivered and delivered by the next govern run; deduplication and cool-down."""

from __future__ import annotations

import time

import pytest

from components.common.governance import GovernanceStore
from components.govern.alerts import AlertBook, people_text
from components.govern.core import govern
from components.govern.policy import parse_policy
from components.monitor.contract import Check, Verdict

MODEL = "pet-classifier"


def policy_for(po_url: str, qa_url: str = "", *, attempts=3, timeout_s=2.0, cooldown="6h"):
    return parse_policy({
        "version": 1, "model": MODEL, "cooldown": cooldown,
        "delivery": {"timeout_s": timeout_s, "attempts": attempts, "backoff_s": 0.05,
                     "max_backoff_s": 0.2},
        "recipients": {"product-owner": {"format": "slack", "url": po_url},
                       "qa-expert": {"format": "alertmanager", "url": qa_url or po_url}},
        "rules": [{"name": "data-drift", "match": {"kind": "drift", "status": "alarm"},
                   "actions": [{"type": "alert", "to": "product-owner"}]},
                  {"name": "accuracy-drop", "match": {"kind": "performance"},
                   "actions": [{"type": "alert", "to": "qa-expert", "severity": "critical"}]}],
    })


def verdict(run_id: str, hour: int, drift: str = "alarm", accuracy: str = "ok") -> Verdict:
    end = f"2026-11-20T{hour:02d}:00:00+00:00"
    return Verdict(MODEL, "3", f"2026-11-19T{hour:02d}:00:00+00:00", end, run_id, 400, 50, [
        Check("drift.embedding", "drift", 0.001 if drift == "alarm" else 0.4, 0.05, drift,
              "MMD p-value below 0.05: the embeddings moved",
              evidence=f"file:///reports/{run_id}/report.html"),
        Check("performance.accuracy", "performance", 0.7 if accuracy == "alarm" else 0.95,
              0.85, accuracy, "accuracy on 50 labelled requests", extra={"n": 50})])


def _book(store):
    return AlertBook(GovernanceStore(store, MODEL))


def test_an_alert_names_its_context_and_what_an_integrity_check_means():
    """A night window's alarm said "the images production receives have changed" with the
    day part's accuracy, and inputs outside the training range said "production receives
    images it cannot read"."""
    v = Verdict(MODEL, "3", "2026-11-19T01:00:00+00:00", "2026-11-19T02:00:00+00:00", "w9",
                300, 0, [
                    Check("drift.embedding", "drift", 0.0001, 0.05, "alarm", "moved",
                          context="night"),
                    Check("performance.estimated_accuracy", "performance", 0.91, 0.8, "ok",
                          "", context="day"),
                    Check("performance.estimated_accuracy", "performance", 0.42, 0.8,
                          "warning", "", context="night"),
                    Check("integrity.out_of_range", "integrity", 0.15, 0.05, "alarm",
                          "brightness 15%", context="night")])
    summary, text = people_text(v, v.checks[0], ["retrain"])
    assert summary == ("the images production receives have changed in the night images "
                       "(p < 0.001)")
    assert text.startswith("The images production receives have changed in the night images, "
                           "in the window 2026-11-19 01:00 UTC")
    assert "accuracy 0.42 estimated without labels" in text and "0.91" not in text
    summary, _ = people_text(v, v.checks[3], [])
    assert "cannot read" not in summary
    assert summary.startswith("production receives images unlike those the model was trained "
                              "on") and "in the night images" in summary


def test_delivered_in_both_formats(receiver, tmp_path):
    store = str(tmp_path)
    acts = govern(verdict("w1", 1, accuracy="alarm"), policy_for(receiver.url),
                  store_uri=store)
    assert [a["action"] for a in acts] == ["alert", "alert"]
    assert all(all(a["delivered"].values()) for a in acts)
    slack, am = receiver.received
    # Written for the person: what changed, since when, how sure, the model's accuracy,
    # what happens next, the report; the engineer's check names in the details.
    assert "[FIRING]" in slack["text"] and "drift.embedding" not in slack["text"]
    assert "the images production receives have changed" in slack["text"]
    assert "window 2026-11-19 01:00 UTC to 2026-11-20 01:00 UTC" in slack["text"]
    assert "p = 0.001" in slack["text"] and "accuracy 0.70 on 50 labelled requests" in \
        slack["text"]
    assert "Next: nothing happens by itself: to retrain, `mlops govern retrain" in slack["text"]
    assert "Report: file:///reports/w1/report.html" in slack["text"]
    assert "drift.embedding = 0.001" in slack["details"] and "data-drift" in slack["details"]
    assert any("file:///reports/w1/report.html" in str(b) for b in slack["blocks"])
    assert am["version"] == "4" and am["status"] == "firing"
    alert = am["alerts"][0]
    assert alert["labels"]["alertname"] == "AccuracyDrop"
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["model_version"] == "3"
    assert alert["annotations"]["value"] == "0.7" and alert["fingerprint"]
    assert "the model's accuracy has dropped" in alert["annotations"]["summary"]
    assert "performance.accuracy = 0.7" in alert["annotations"]["details"]
    book = _book(store)
    assert [book.state(a) for a in book.alerts()] == [{"product-owner": "delivered"},
                                                      {"qa-expert": "delivered"}]


def test_receiver_down_keeps_the_alert_and_the_next_run_delivers_it(dead_url, receiver,
                                                                    tmp_path):
    store = str(tmp_path)
    acts = govern(verdict("w1", 1), policy_for(dead_url, attempts=2), store_uri=store)
    assert acts[0]["action"] == "alert" and acts[0]["delivered"] == {"product-owner": False}
    book = _book(store)
    (alert, missing), = book.undelivered()
    assert missing == ["product-owner"]
    rounds = book.rounds(alert["seq"])["product-owner"]
    assert rounds[0]["attempts"] == 2 and "cannot reach" in rounds[0]["error"]
    # The receiver is back: the next govern run (same condition, within the cool-down)
    # sends no new alert but delivers the kept one.
    acts = govern(verdict("w2", 2), policy_for(receiver.url), store_uri=store)
    assert [a["action"] for a in acts] == ["redeliver", "alert_suppressed"]
    assert acts[0]["delivered"] == {"product-owner": True}
    assert len(receiver.received) == 1
    assert "drift.embedding" in receiver.received[0]["details"]
    assert book.undelivered() == []
    assert [r["delivered"] for r in book.rounds(alert["seq"])["product-owner"]] == [False, True]


def test_slow_receiver_times_out_within_the_bound_and_is_kept(receiver, tmp_path):
    receiver.delay_s = 1.5
    started = time.monotonic()
    acts = govern(verdict("w1", 1), policy_for(receiver.url, attempts=2, timeout_s=0.3),
                  store_uri=str(tmp_path))
    elapsed = time.monotonic() - started
    assert acts[0]["delivered"] == {"product-owner": False}
    # Two attempts of 0.3 s plus a 0.05 s backoff: bounded, not 2 x 1.5 s.
    assert elapsed < 1.4, elapsed
    (alert, _), = _book(str(tmp_path)).undelivered()
    assert "within 0.3 s" in _book(str(tmp_path)).rounds(alert["seq"])["product-owner"][0]["error"]


def test_flapping_receiver_gets_the_alert_once_after_retries(receiver, tmp_path):
    receiver.fail_first = 2  # two 503s, then up
    acts = govern(verdict("w1", 1), policy_for(receiver.url, attempts=4), store_uri=str(tmp_path))
    assert acts[0]["delivered"] == {"product-owner": True}
    assert receiver.hits == 3 and len(receiver.received) == 1
    book = _book(str(tmp_path))
    assert book.rounds(1)["product-owner"][0]["attempts"] == 3


def test_a_client_error_is_not_retried(receiver, tmp_path):
    receiver.status = 404  # a wrong or revoked webhook URL: retrying will not help
    acts = govern(verdict("w1", 1), policy_for(receiver.url, attempts=4), store_uri=str(tmp_path))
    assert acts[0]["delivered"] == {"product-owner": False}
    assert receiver.hits == 1
    round_ = _book(str(tmp_path)).rounds(1)["product-owner"][0]
    assert "HTTP 404" in round_["error"] and round_["attempts"] == 1


def test_same_condition_alerts_again_only_after_cooldown_or_clearing(receiver, tmp_path):
    store, policy = str(tmp_path), policy_for(receiver.url, cooldown="3h")
    run = [govern(verdict(f"w{h}", h), policy, store_uri=store)[0]["action"] for h in (1, 2, 3)]
    assert run == ["alert", "alert_suppressed", "alert_suppressed"]
    # Three hours after the first alert the condition still fires: it alerts again.
    assert govern(verdict("w4", 4), policy, store_uri=store)[0]["action"] == "alert"
    # It clears: a "resolved" notice; then it comes back: a new alert at once.
    cleared = govern(verdict("w5", 5, drift="ok"), policy, store_uri=store)
    assert [a["action"] for a in cleared] == ["resolved"]
    assert govern(verdict("w6", 6), policy, store_uri=store)[0]["action"] == "alert"
    statuses = [p.get("text", "").split("]")[0] for p in receiver.received]
    assert statuses == [":warning: [FIRING", ":warning: [FIRING", ":white_check_mark: [RESOLVED",
                        ":warning: [FIRING"]
    # An unknown status (not measurable this window) neither resolves nor re-alerts.
    unknown = verdict("w7", 7)
    unknown.checks[0].status, unknown.checks[0].value = "unknown", None
    assert govern(unknown, policy, store_uri=store) == []
    assert len(_book(store).alerts()) == 4


def test_a_measured_accuracy_wavering_at_the_floor_does_not_resolve_and_realert(receiver,
                                                                                 tmp_path):
    """Labelled accuracy after a real change: alarm (confidently below the floor), then
    warning (below it, not confidently), alarm again. The condition has not cleared while the
    check is a warning: no "resolved" and no new alert; once the check is ok it resolves."""
    store, policy = str(tmp_path), policy_for(receiver.url, cooldown="3h")
    statuses = ["alarm", "warning", "alarm", "warning", "ok"]
    actions = []
    for hour, status in enumerate(statuses, 1):
        v = verdict(f"w{hour}", hour, drift="ok", accuracy=status)
        actions.append([a["action"] for a in govern(v, policy, store_uri=store)])
    assert actions == [["alert"], [], ["alert_suppressed"], [], ["resolved"]]
    assert [a["status"] for a in _book(store).alerts()] == ["firing", "resolved"]


def test_unconfigured_webhook_keeps_the_alert_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("MLOPS_ALERT_PRODUCT_OWNER_URL", raising=False)
    from components.govern.policy import load_policy

    # The default policy acts on drift seen in two windows in a row (for_windows: 2).
    acts = govern(verdict("w1", 1), load_policy(), store_uri=str(tmp_path),
                  previous=[verdict("w0", 0)])
    alert = next(a for a in acts if a["action"] == "alert")
    assert alert["delivered"] == {"product-owner": False}
    book = _book(str(tmp_path))
    round_ = book.rounds(alert["seq"])["product-owner"][0]
    assert "set MLOPS_ALERT_PRODUCT_OWNER_URL" in round_["error"]


@pytest.mark.parametrize("backend", ["s3"])
def test_alerts_live_in_the_s3_store(backend, s3_uri, receiver):
    govern(verdict("w1", 1), policy_for(receiver.url), store_uri=s3_uri)
    alerts = _book(s3_uri).alerts()
    assert len(alerts) == 1 and alerts[0]["check"] == "drift.embedding"
    assert _book(s3_uri).state(alerts[0]) == {"product-owner": "delivered"}


def test_an_event_is_told_once_to_whom_the_policy_names(receiver, tmp_path):
    from components.govern.core import notify

    policy = parse_policy({"version": 1, "recipients": {"po": {"format": "slack",
                                                               "url": receiver.url}},
                           "events": {"retrain-rejected": {"to": "po", "severity": "warning"}},
                           "rules": [{"name": "d", "match": {"kind": "drift"},
                                      "actions": ["retrain"]}]})
    kwargs = {"store_uri": str(tmp_path), "model": MODEL, "policy": policy,
              "summary": "the retrained model lost on the night slice; production unchanged",
              "key": "run-42"}
    sent = notify("retrain-rejected", **kwargs)
    assert sent["delivered"] == {"po": True}
    assert notify("retrain-rejected", **kwargs) is None  # same run: once
    assert notify("retrain-released", **{**kwargs, "key": "run-43"}) is None  # not routed
    assert "lost on the night slice" in receiver.received[0]["text"]
    assert len(receiver.received) == 1
    with pytest.raises(Exception, match="events.retrain-exploded: unknown event"):
        parse_policy({"version": 1, "events": {"retrain-exploded": {"to": "po"}},
                      "recipients": {"po": {"format": "slack", "url": receiver.url}},
                      "rules": [{"name": "d", "match": {"kind": "drift"},
                                 "actions": ["retrain"]}]})


def test_a_rule_with_for_windows_acts_on_consecutive_windows_of_one_version_only(
        tmp_path, receiver):
    """``for_windows: 2``, over a sequence read from the monitoring history as the govern
    step reads it: one window's alarm waits (pending), a clean window in between starts the
    count again, two in a row alert once; a window of another version starts again too; a
    condition Prometheus raised (through Alertmanager) acts at once (its rule's ``for:``
    has waited)."""
    import dataclasses

    from components.monitor.core import append_history

    policy = policy_for(receiver.url)
    policy = dataclasses.replace(policy, rules=tuple(
        dataclasses.replace(r, for_windows=2) for r in policy.rules))
    store = str(tmp_path)

    def step(v):
        append_history(store, v)
        return [(a["action"], a.get("check")) for a in govern(v, policy, store_uri=store)
                if a["action"] in ("pending", "alert", "resolved")]

    assert step(verdict("w1", 1)) == [("pending", "drift.embedding")]
    assert step(verdict("w2", 2, drift="ok")) == []
    assert step(verdict("w3", 3)) == [("pending", "drift.embedding")]
    assert step(verdict("w4", 4)) == [("alert", "drift.embedding")]
    assert len(receiver.received) == 1
    # It resolves after two clean windows in a row too: one clean window is no "resolved".
    assert step(verdict("w5", 5, drift="ok")) == []
    assert step(verdict("w6", 6)) == [("pending", "drift.embedding")]  # still firing
    assert step(verdict("w7", 7, drift="ok")) == []
    assert step(verdict("w8", 8, drift="ok")) == [("resolved", "drift.embedding")]
    assert len(receiver.received) == 2
    other = dataclasses.replace(verdict("w9", 9), model_version="4")
    assert step(other) == [("pending", "drift.embedding")]
    # From Alertmanager: acted on at once.
    check = dataclasses.replace(verdict("w10", 10).checks[0],
                                extra={"source": "alertmanager"}, context="night")
    raised = dataclasses.replace(verdict("w10", 10), model_version="5", checks=[check])
    assert step(raised) == [("alert", "drift.embedding")]
