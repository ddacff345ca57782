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

import requests

from components.common import prom
from components.common.prom import Scrape

logger = logging.getLogger(__name__)


def scrape(url: str, model: str, timeout: float = 10.0) -> Scrape | None:
    """``GET <url>/metrics`` parsed (:func:`components.common.prom.parse`); None (logged)
    when the revision does not answer."""
    try:
        text = prom.fetch(url, timeout)
    except requests.RequestException as exc:
        logger.warning("Could not read the metrics of %s: %s", url, exc)
        return None
    return prom.parse(text, model)


def served_between(before: Scrape | None, after: Scrape | None) -> dict:
    """Requests, server errors, client errors and p95 latency served between two snapshots.

    ``error_rate`` counts server errors (``outcome="error"``, HTTP 5xx) among the requests
    the server could answer. Bad requests (``outcome="bad_request"``, HTTP 4xx: malformed
    bodies, unknown routes, bodies over the limit) are the caller's fault and are counted
    apart as ``bad_requests``, never held against a revision (a server's legacy ``invalid``
    label is read as ``bad_request``, see :mod:`components.common.prom`).
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
        return after.requests.get(key, 0.0) - before.requests.get(key, 0.0)

    ok, errors, bad = delta(prom.OK), delta(prom.ERROR), delta(prom.BAD_REQUEST)
    answered = ok + errors
    out = {"available": True, "requests": int(ok + errors + bad), "errors": int(errors),
           "bad_requests": int(bad),
           "error_rate": errors / answered if answered else 0.0, "p95_ms": None}
    buckets = prom.increase(after.buckets, before.buckets)
    p95 = prom.histogram_quantile(0.95, buckets)
    if p95 is not None:
        out["p95_ms"] = round(p95 * 1000, 3)
    elif prom.above_buckets(0.95, buckets):
        out["note"] = "p95 above the largest latency bucket"
    return out
