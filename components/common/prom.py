"""The predictor's Prometheus metrics: their names, once; a ``/metrics`` text parsed; quantiles.

The names are model-agnostic, as KServe's ``metrics.py`` keeps them: one series per served
model through the ``model`` label. The predictor (``components/serve``) creates its metric
objects with these names, the monitor and the canary analysis read them back from a scrape
(:func:`parse`), and the PrometheusRule (``components/govern/rules.py``) and the monitor's
Prometheus queries name them in PromQL (:func:`selector`).

One vocabulary for a request's outcome, the predictor's ``outcome`` label: ``ok``,
``bad_request`` (an HTTP 4xx: the client's mistake) and ``error`` (an HTTP 5xx: the server's
fault). Servers before the ``bad_request`` label counted a 4xx as ``invalid``; every reader
here folds it into ``bad_request`` (:func:`by_outcome`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

# ---- names (as exported: a counter's samples end in ``_total``) ---------------------------

REQUESTS = "pet_classifier_requests_total"
"""Counter ``{model, protocol, outcome}``: inference requests by outcome."""
REQUEST_SECONDS = "pet_classifier_request_seconds"
"""Histogram ``{model, protocol}``: preprocess + predict + postprocess."""
IMAGES = "pet_classifier_images_total"
"""Counter ``{model}``: images classified."""
PREDICTED_CLASS = "pet_classifier_predicted_class_total"
"""Counter ``{model, label}``: predictions per class."""
SERVER_INFO = "pet_classifier_server_info"
"""Gauge ``{instance, model, model_version}`` (value 1): which process answered a scrape."""

CAPTURE_RECORDS = "pet_classifier_capture_records_total"
"""Counter ``{model, outcome=written|dropped|failed}``: capture records."""
CAPTURE_IMAGES = "pet_classifier_capture_images_total"
"""Counter ``{model, outcome=written|duplicate|dropped|failed}``: sampled input images."""
CAPTURE_BATCHES = "pet_classifier_capture_batches_total"
"""Counter ``{model, outcome=written|failed}``: capture batch writes."""
CAPTURE_QUEUE_RECORDS = "pet_classifier_capture_queue_records"
"""Gauge ``{model}``: capture records waiting in memory."""
CAPTURE_WRITE_SECONDS = "pet_classifier_capture_write_seconds"
"""Histogram ``{model}``: time to write one capture batch."""

# prometheus_client's process collector (Linux), in every Python server's /metrics.
PROCESS_CPU_SECONDS = "process_cpu_seconds_total"
PROCESS_MEMORY_BYTES = "process_resident_memory_bytes"
PROCESS_START_SECONDS = "process_start_time_seconds"

MODEL_LABEL = "model"

# ---- the outcome of an inference request ---------------------------------------------------

OK, BAD_REQUEST, ERROR = "ok", "bad_request", "error"
OUTCOMES = (OK, BAD_REQUEST, ERROR)
LEGACY_OUTCOMES = {"invalid": BAD_REQUEST}
"""Labels of older servers, and what they mean in today's vocabulary."""


def outcome_of(status: int) -> str:
    """The ``outcome`` label of an answered HTTP status."""
    return OK if status < 400 else BAD_REQUEST if status < 500 else ERROR


def by_outcome(counts: Mapping[str, float]) -> dict[str, float]:
    """Request counts by outcome in today's vocabulary (legacy labels folded in)."""
    out: dict[str, float] = {}
    for label, n in counts.items():
        key = LEGACY_OUTCOMES.get(label, label)
        out[key] = out.get(key, 0.0) + n
    return out


def selector(model: str, **matchers: str) -> str:
    """A PromQL label selector for one model's series: ``{model="m",outcome=~"ok|error"}``
    (a value with ``|`` is a regular expression match)."""
    parts = [f'{MODEL_LABEL}="{model}"'] + [f'{k}=~"{v}"' if "|" in v else f'{k}="{v}"'
                                            for k, v in matchers.items()]
    return "{" + ",".join(parts) + "}"


# ---- one scrape ------------------------------------------------------------------------------


@dataclass
class Scrape:
    """One scrape of a predictor's ``/metrics``, reduced to what its readers need.

    ``requests`` are cumulative request counts by outcome (all protocols); ``buckets`` the
    latency histogram's cumulative counts by the ``le`` label as exported (text, so that a
    scrape stored as JSON compares with a later one); the process figures are None where the
    server does not export them.
    """

    instance: str | None = None
    requests: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float | None = None
    memory_bytes: float | None = None
    process_start: float | None = None


def parse(text: str, model: str) -> Scrape:
    """A :class:`Scrape` of ``model``'s series from Prometheus text exposition."""
    snap = Scrape()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == PROCESS_CPU_SECONDS:
                snap.cpu_seconds = s.value
            elif s.name == PROCESS_MEMORY_BYTES:
                snap.memory_bytes = s.value
            elif s.name == PROCESS_START_SECONDS:
                snap.process_start = s.value
            if s.labels.get(MODEL_LABEL) != model:
                continue
            if s.name == SERVER_INFO:
                snap.instance = s.labels.get("instance")
            elif s.name == REQUESTS:
                key = s.labels.get("outcome", "")
                key = LEGACY_OUTCOMES.get(key, key)
                snap.requests[key] = snap.requests.get(key, 0.0) + s.value
            elif s.name == REQUEST_SECONDS + "_bucket":
                le = s.labels["le"]
                snap.buckets[le] = snap.buckets.get(le, 0.0) + s.value
    return snap


def values(text: str, name: str, **labels: str) -> list[float]:
    """The values of the samples named ``name`` (as exported, e.g. :data:`CAPTURE_RECORDS`)
    whose labels include ``labels``, in the order of the text."""
    return [s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def fetch(url: str, timeout: float) -> str:
    """The text of ``GET <url>/metrics``.

    Raises:
        requests.RequestException: The server did not answer, or answered an error.
    """
    r = requests.get(f"{url.rstrip('/')}/metrics", timeout=timeout)
    r.raise_for_status()
    return r.text


# ---- histograms ------------------------------------------------------------------------------


def increase(after: Mapping, before: Mapping) -> dict[float, float]:
    """Cumulative bucket counts gained between two scrapes of one process, by upper bound
    (the buckets of ``after``; a bucket missing from ``before`` counts from zero)."""
    return {float(le): max(0.0, v - before.get(le, 0.0)) for le, v in after.items()}


def histogram_quantile(q: float, buckets: Mapping) -> float | None:
    """The ``q`` quantile from cumulative bucket counts (upper bound, as a number or the ``le``
    text, -> count), linear within the bucket it falls in, as Prometheus'
    ``histogram_quantile()``; None when empty or in the open-ended top bucket (see
    :func:`above_buckets`)."""
    counts = sorted((float(le), v) for le, v in buckets.items())
    if not counts or counts[-1][1] <= 0:
        return None
    rank, lower, below = q * counts[-1][1], 0.0, 0.0
    for le, cumulative in counts:
        if cumulative >= rank:
            if math.isinf(le):
                return None
            if cumulative == below:
                return le
            return lower + (rank - below) / (cumulative - below) * (le - lower)
        lower, below = le, cumulative
    return None


def above_buckets(q: float, buckets: Mapping) -> bool:
    """True when the ``q`` quantile lies in the open-ended top bucket (beyond the largest
    finite bound), where :func:`histogram_quantile` has no value to give."""
    counts = sorted((float(le), v) for le, v in buckets.items())
    if not counts or counts[-1][1] <= 0:
        return False
    rank = q * counts[-1][1]
    first = next(le for le, cumulative in counts if cumulative >= rank)
    return math.isinf(first)
