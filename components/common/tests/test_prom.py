"""The predictor's metric names, one vocabulary of outcomes, parsing and quantiles."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from components.common import prom


def _exposition(outcomes: dict[str, int], latencies=(), model="pets") -> str:
    reg = CollectorRegistry()
    requests = Counter(prom.REQUESTS, "", ["model", "protocol", "outcome"], registry=reg)
    latency = Histogram(prom.REQUEST_SECONDS, "", ["model", "protocol"],
                        buckets=(0.01, 0.025, 0.1), registry=reg)
    Gauge(prom.SERVER_INFO, "", ["instance", "model", "model_version"],
          registry=reg).labels("host:1", model, "1").set(1)
    for i, (outcome, n) in enumerate(outcomes.items()):
        requests.labels(model, ("v1", "v2")[i % 2], outcome).inc(n)
    requests.labels("other-model", "v1", "error").inc(99)  # another model: not counted
    for s in latencies:
        latency.labels(model, "v1").observe(s)
        latency.labels(model, "v2").observe(s)
    return generate_latest(reg).decode()


def test_parse_reads_the_predictor_exposition():
    s = prom.parse(_exposition({"ok": 10, "error": 2, "bad_request": 3},
                               [0.001, 0.02]), "pets")
    assert s.instance == "host:1"
    assert s.requests == {"ok": 10, "error": 2, "bad_request": 3}
    # Both protocols' series are summed; bounds keep the exported text.
    assert s.buckets["+Inf"] == 4 and s.buckets["0.025"] == 4 and s.buckets["0.01"] == 2
    assert prom.parse(_exposition({"ok": 1}), "nobody").instance is None


def test_an_older_servers_invalid_is_a_bad_request():
    s = prom.parse(_exposition({"ok": 5, "invalid": 2, "bad_request": 1}), "pets")
    assert s.requests == {"ok": 5, "bad_request": 3}
    assert prom.by_outcome({"ok": 1.0, "invalid": 2.0, "bad_request": 0.5}) == {
        "ok": 1.0, "bad_request": 2.5}


def test_outcome_of_a_status():
    assert [prom.outcome_of(s) for s in (200, 201, 399, 400, 413, 499, 500, 503)] == [
        "ok", "ok", "ok", "bad_request", "bad_request", "bad_request", "error", "error"]
    assert set(prom.OUTCOMES) == {"ok", "bad_request", "error"}


def test_selector():
    assert prom.selector("pets") == '{model="pets"}'
    assert prom.selector("pets", outcome="ok|error", label="cats") == \
        '{model="pets",outcome=~"ok|error",label="cats"}'


def test_histogram_quantile_interpolates_within_a_bucket():
    buckets = {0.01: 50.0, 0.1: 100.0, float("inf"): 100.0}
    assert prom.histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert prom.histogram_quantile(0.75, buckets) == pytest.approx(0.055)
    assert prom.histogram_quantile(0.99, {0.01: 1.0, float("inf"): 100.0}) is None
    assert prom.histogram_quantile(0.5, {}) is None
    # The exported bound text works as a key too.
    assert prom.histogram_quantile(0.75, {"0.01": 50.0, "0.1": 100.0, "+Inf": 100.0}) == \
        pytest.approx(0.055)


def test_above_buckets_tells_an_open_ended_quantile_from_no_data():
    assert prom.above_buckets(0.99, {0.01: 1.0, float("inf"): 100.0})
    assert not prom.above_buckets(0.5, {0.01: 50.0, float("inf"): 100.0})
    assert not prom.above_buckets(0.5, {}) and not prom.above_buckets(0.5, {"+Inf": 0.0})


def test_increase_between_two_scrapes():
    before = {"0.01": 5.0, "+Inf": 10.0}
    after = {"0.01": 7.0, "0.1": 3.0, "+Inf": 20.0}
    assert prom.increase(after, before) == {0.01: 2.0, 0.1: 3.0, float("inf"): 10.0}



def test_values_of_a_sample_with_labels():
    text = _exposition({"ok": 4, "error": 1})
    assert prom.values(text, prom.REQUESTS, model="pets", outcome="ok") == [4.0]
    assert sorted(prom.values(text, prom.REQUESTS, outcome="error")) == [1.0, 99.0]
    assert prom.values(text, prom.REQUESTS, model="nobody") == []
