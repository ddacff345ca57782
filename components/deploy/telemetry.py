"""What a revision served between two scrapes of its Prometheus metrics.

The canary analysis probes each revision with labelled requests, but in a cluster the
canary also serves its share of real users' traffic. The predictor counts every request by
outcome and times it (``/metrics``); scraping a revision before and after a canary step and
taking the difference gives the error rate and latency of everything that revision served in
that window, users and probes together.

Counters can only be differenced within one server process. Every scrape names its process
(``pet_classifier_server_info{instance=…}``); when the two scrapes reached different
processes (another replica behind the same URL, or a restart), the window is reported as
unknown rather than guessed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """The predictor's counters for one model, as one scrape found them."""

    instance: str | None
    outcomes: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative


def parse(text: str, model: str) -> Snapshot:
    """A snapshot from Prometheus text exposition of one server."""
    snap = Snapshot(instance=None)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "pet_classifier_server_info":
                snap.instance = sample.labels.get("instance")
            elif sample.name == "pet_classifier_requests_total":
                outcome = sample.labels.get("outcome", "")
                snap.outcomes[outcome] = snap.outcomes.get(outcome, 0.0) + sample.value
            elif sample.name == "pet_classifier_request_seconds_bucket":
                le = float(sample.labels["le"])
                snap.buckets[le] = snap.buckets.get(le, 0.0) + sample.value
    return snap


def scrape(url: str, model: str, timeout: float = 10.0) -> Snapshot | None:
    """``GET <url>/metrics``; None (logged) when the revision does not answer."""
    try:
        r = requests.get(f"{url.rstrip('/')}/metrics", timeout=timeout)
        r.raise_for_status()
    except requests.RequestException as exc:
        logger.warning("Could not read the metrics of %s: %s", url, exc)
        return None
    return parse(r.text, model)


def served_between(before: Snapshot | None, after: Snapshot | None) -> dict:
    """Requests, server errors, client errors and p95 latency served between two snapshots.

    ``error_rate`` counts server errors (``outcome="error"``, HTTP 5xx) among the requests
    the server could answer. Bad requests (``outcome="bad_request"``, HTTP 4xx: malformed
    bodies, unknown routes, bodies over the limit) are the caller's fault and are counted
    apart as ``bad_requests``, never held against a revision. (Servers before the
    ``bad_request`` label counted them as ``invalid``; both are read.)
    ``p95_ms`` is the 95th percentile latency of the successful requests, interpolated within
    its histogram bucket. ``available`` is False, with a ``note``, when the window cannot be
    measured.
    """
    if before is None or after is None:
        return {"available": False, "note": "the metrics could not be read"}
    if before.instance is None or before.instance != after.instance:
        return {"available": False,
                "note": f"the scrapes reached different server processes ({before.instance} "
                        f"then {after.instance})"}

    def delta(key: str) -> float:
        return after.outcomes.get(key, 0.0) - before.outcomes.get(key, 0.0)

    ok, errors = delta("ok"), delta("error")
    bad = delta("bad_request") + delta("invalid")
    answered = ok + errors
    out = {"available": True, "requests": int(ok + errors + bad), "errors": int(errors),
           "bad_requests": int(bad),
           "error_rate": errors / answered if answered else 0.0, "p95_ms": None}
    counts = sorted((le, after.buckets.get(le, 0.0) - before.buckets.get(le, 0.0))
                    for le in after.buckets)
    total = counts[-1][1] if counts else 0.0
    if total > 0:
        rank, lower, below = 0.95 * total, 0.0, 0.0
        for le, cumulative in counts:
            if cumulative >= rank:
                if math.isinf(le):
                    out["note"] = "p95 above the largest latency bucket"
                else:  # linear within the bucket, as Prometheus' histogram_quantile()
                    share = (rank - below) / (cumulative - below)
                    out["p95_ms"] = round((lower + share * (le - lower)) * 1000, 3)
                break
            lower, below = le, cumulative
    return out
