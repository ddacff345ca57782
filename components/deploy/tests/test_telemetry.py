"""Differencing a revision's Prometheus counters over a canary step."""

from __future__ import annotations

from components.common.prom import parse
from components.deploy.telemetry import served_between


def _exposition(instance: str, ok: int, error: int, bad: int, buckets: dict) -> str:
    lines = [f'pet_classifier_server_info{{instance="{instance}",model="pets",'
             f'model_version="v"}} 1.0',
             'pet_classifier_server_info{instance="other",model="cats-only",'
             'model_version="v"} 1.0']
    for outcome, n in (("ok", ok), ("error", error), ("bad_request", bad)):
        lines.append(f'pet_classifier_requests_total{{model="pets",outcome="{outcome}",'
                     f'protocol="v1"}} {n}')
    lines.append('pet_classifier_requests_total{model="cats-only",outcome="error",'
                 'protocol="v1"} 99')
    for le, n in buckets.items():
        lines.append(f'pet_classifier_request_seconds_bucket{{le="{le}",model="pets",'
                     f'protocol="v1"}} {n}')
    return "# TYPE pet_classifier_server_info gauge\n" \
           "# TYPE pet_classifier_requests_total counter\n" \
           "# TYPE pet_classifier_request_seconds histogram\n" + "\n".join(lines) + "\n"


def test_window_counts_errors_of_this_model_and_its_p95_bucket():
    before = parse(_exposition("pod-a:1", 100, 1, 5, {"0.01": 90, "0.05": 100, "+Inf": 100}),
                   "pets")
    # 100 more requests: 90 ok (50 under 10 ms, 40 up to 50 ms), 10 server errors, 3 bad.
    after = parse(_exposition("pod-a:1", 190, 11, 8, {"0.01": 140, "0.05": 190, "+Inf": 190}),
                  "pets")
    w = served_between(before, after)
    assert w["available"]
    assert (w["requests"], w["errors"], w["bad_requests"]) == (103, 10, 3)
    assert abs(w["error_rate"] - 10 / 100) < 1e-9  # bad requests are the caller's fault
    # Of the 90 timed requests 50 took up to 10 ms and 40 from 10 to 50 ms: the 85.5th lies
    # 35.5/40 of the way through the second bucket.
    assert w["p95_ms"] == 10 + 35.5 / 40 * 40


def test_a_window_across_two_processes_is_unknown_not_guessed():
    before = parse(_exposition("pod-a:1", 100, 0, 0, {"+Inf": 100}), "pets")
    after = parse(_exposition("pod-b:7", 3, 0, 0, {"+Inf": 3}), "pets")
    w = served_between(before, after)
    assert not w["available"] and "different server processes" in w["note"]
    assert not served_between(None, after)["available"]


def test_p95_beyond_the_largest_bucket_is_flagged():
    before = parse(_exposition("p:1", 0, 0, 0, {"5.0": 0, "+Inf": 0}), "pets")
    after = parse(_exposition("p:1", 10, 0, 0, {"5.0": 1, "+Inf": 10}), "pets")
    w = served_between(before, after)
    assert w["p95_ms"] is None and w["note"].startswith("p95 above")
