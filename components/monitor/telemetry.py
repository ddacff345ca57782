"""Application telemetry of the predictor over a window: scraped here, queried in a cluster.

Nothing on this machine keeps the history of the predictor's Prometheus metrics, so the
monitor scrapes ``/metrics`` itself (``scrape_to_store``; ``mlops monitor scrape`` repeats it)
and stores each scrape, parsed, under ``monitoring/<model>/telemetry/<unix_ms>-<instance>.json``.
A window's telemetry is the difference of the counters between the scrapes that bracket it,
per server process (counters only grow within one process). In a cluster, where Prometheus
scrapes the predictor pods, :func:`query_prometheus` asks its HTTP API the same questions in
PromQL instead.

Either way the answer is a summary dict (``summarize``): request rate, server error rate
(HTTP 500s among the requests the server could answer; 400s are the caller's and are counted
apart as ``bad_requests``), the share of bad requests (undecodable input), p50/p95/p99 latency
interpolated within the histogram's buckets (as Prometheus' ``histogram_quantile``), CPU in
cores and resident memory of the serving processes. Scrapes are parsed, and outcomes named,
by :mod:`components.common.prom` (a stored scrape from before the ``bad_request`` vocabulary
says ``invalid``; it is read the same). When nothing could be read the answer is None and the
telemetry checks say "unknown".
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import asdict

import requests

from components.common import prom
from components.common.storage import StorageError, open_store

logger = logging.getLogger(__name__)

QUANTILES = (0.5, 0.95, 0.99)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def telemetry_prefix(model: str) -> str:
    return f"monitoring/{model}/telemetry"


def scrape_to_store(url: str, model: str, monitoring_uri: str, timeout: float = 5.0
                    ) -> dict | None:
    """Scrapes ``<url>/metrics`` once and stores the parsed snapshot; None if unreachable."""
    try:
        text = prom.fetch(url, timeout)
    except requests.RequestException as exc:
        logger.warning("Telemetry: cannot scrape %s: %s", url, exc)
        return None
    snap = asdict(prom.parse(text, model))
    if snap["instance"] is None:
        logger.warning("Telemetry: %s serves no metrics of model %r", url, model)
        return None
    snap.update(time=time.time(), url=url, model=model)
    key = (f"{telemetry_prefix(model)}/{int(snap['time'] * 1000):013d}-"
           f"{_SAFE.sub('_', snap['instance'])}.json")
    open_store(monitoring_uri).put(key, json.dumps(snap, sort_keys=True).encode(), if_absent=True)
    return snap


def read_snapshots(monitoring_uri: str, model: str, until: float) -> list[dict]:
    """Stored snapshots taken before ``until`` (unix seconds), oldest first."""
    store = open_store(monitoring_uri)
    out = []
    for obj in store.list(telemetry_prefix(model)):
        name = obj.key.rsplit("/", 1)[-1]
        stamp = name.split("-", 1)[0]
        if not stamp.isdigit() or int(stamp) / 1000.0 >= until:
            continue
        try:
            snap = json.loads(store.get(obj.key))
        except (StorageError, ValueError) as exc:
            logger.warning("Telemetry: skipping unreadable snapshot %s: %s", obj.key, exc)
            continue
        if isinstance(snap, dict) and snap.get("instance") and "time" in snap:
            out.append(snap)
    return sorted(out, key=lambda s: s["time"])


def summarize(snapshots: list[dict], start: float, end: float) -> dict | None:
    """What the predictor processes served in ``[start, end)``, from stored snapshots.

    Per process, the counters at the last snapshot in the window minus those at the baseline:
    the last snapshot before the window, or zero when the process started inside the window,
    or else the first snapshot in the window. None when no process has a measurable span.
    """
    by_instance: dict[str, list[dict]] = {}
    for s in snapshots:
        by_instance.setdefault(s["instance"], []).append(s)
    total = {prom.OK: 0.0, prom.ERROR: 0.0, prom.BAD_REQUEST: 0.0}
    buckets: dict[float, float] = {}
    cpu, memory, seconds, processes = 0.0, 0.0, 0.0, 0
    for snaps in by_instance.values():
        inside = [s for s in snaps if start <= s["time"] < end]
        if not inside:
            continue
        last = inside[-1]
        before = [s for s in snaps if s["time"] < start]
        started = last.get("process_start")
        if before:
            base, t0 = before[-1], before[-1]["time"]
        elif started is not None and started >= start:
            base, t0 = {"requests": {}, "buckets": {}, "cpu_seconds": 0.0}, started
        elif len(inside) > 1:
            base, t0 = inside[0], inside[0]["time"]
        else:
            continue
        if last["time"] <= t0:
            continue
        processes += 1
        seconds = max(seconds, last["time"] - t0)
        now, then = prom.by_outcome(last["requests"]), prom.by_outcome(base["requests"])
        for k in total:
            total[k] += max(0.0, now.get(k, 0.0) - then.get(k, 0.0))
        for bound, v in prom.increase(last["buckets"], base["buckets"]).items():
            buckets[bound] = buckets.get(bound, 0.0) + v
        if last.get("cpu_seconds") is not None and base.get("cpu_seconds") is not None:
            cpu += max(0.0, last["cpu_seconds"] - base["cpu_seconds"]) / (last["time"] - t0)
        memory += last.get("memory_bytes") or 0.0
    if not processes:
        return None
    requests_n = sum(total.values())
    ok, err, bad = total[prom.OK], total[prom.ERROR], total[prom.BAD_REQUEST]
    answered = ok + err
    out = {"source": "scrapes", "processes": processes, "seconds": round(seconds, 3),
           "requests": int(requests_n), "errors": int(err), "bad_requests": int(bad),
           "request_rate": requests_n / seconds if seconds else 0.0,
           "error_rate": err / answered if answered else 0.0,
           "bad_request_share": bad / requests_n if requests_n else 0.0,
           "cpu_cores": round(cpu, 4), "memory_mb": round(memory / 2 ** 20, 2)}
    for q in QUANTILES:
        v = prom.histogram_quantile(q, buckets)
        out[f"p{int(q * 100)}_ms"] = None if v is None else round(v * 1000, 3)
    return out


def query_prometheus(url: str, model: str, start: float, end: float, namespace: str = "",
                     timeout: float = 10.0) -> dict | None:
    """The same summary from a Prometheus server's HTTP API (in a cluster).

    Instant queries at ``end`` over the window's range: ``increase()`` of the predictor's
    request counter by outcome, ``histogram_quantile()`` of its latency histogram, and the
    predictor pods' container CPU and working-set memory (cAdvisor metrics, as the
    kube-prometheus stack scrapes them). None when Prometheus does not answer.
    """
    span = max(1, int(end - start))
    rng = f"[{span}s]"
    sel = prom.selector(model)
    pod = f'pod=~"{model}-predictor.*"' + (f',namespace="{namespace}"' if namespace else "")

    def ask(promql: str) -> list:
        r = requests.get(f"{url.rstrip('/')}/api/v1/query",
                         params={"query": promql, "time": end}, timeout=timeout)
        r.raise_for_status()
        body = r.json()
        if body.get("status") != "success":
            raise ValueError(f"Prometheus answered {body.get('status')}: {body.get('error')}")
        return body["data"]["result"]

    def scalar(result: list) -> float | None:
        vals = [float(x["value"][1]) for x in result if x.get("value")]
        vals = [v for v in vals if math.isfinite(v)]
        return sum(vals) if vals else None

    try:
        by_outcome = prom.by_outcome({x["metric"].get("outcome", ""): float(x["value"][1])
                                      for x in ask(f"sum by (outcome) (increase("
                                                   f"{prom.REQUESTS}{sel}{rng}))")})
        quantiles = {q: scalar(ask(
            f"histogram_quantile({q}, sum by (le) "
            f"(increase({prom.REQUEST_SECONDS}_bucket{sel}{rng})))"))
            for q in QUANTILES}
        cpu = scalar(ask(f'sum(rate(container_cpu_usage_seconds_total{{{pod},'
                         f'container="kserve-container"}}{rng}))'))
        mem = scalar(ask(f'sum(max_over_time(container_memory_working_set_bytes{{{pod},'
                         f'container="kserve-container"}}{rng}))'))
    except (requests.RequestException, ValueError, KeyError) as exc:
        logger.warning("Telemetry: Prometheus at %s did not answer: %s", url, exc)
        return None
    ok, err, bad = (by_outcome.get(k, 0.0) for k in (prom.OK, prom.ERROR, prom.BAD_REQUEST))
    n = ok + err + bad
    out = {"source": "prometheus", "processes": None, "seconds": span, "requests": int(n),
           "errors": int(err), "bad_requests": int(bad), "request_rate": n / span,
           "error_rate": err / (ok + err) if ok + err else 0.0,
           "bad_request_share": bad / n if n else 0.0,
           "cpu_cores": cpu, "memory_mb": None if mem is None else round(mem / 2 ** 20, 2)}
    for q, v in quantiles.items():
        out[f"p{int(q * 100)}_ms"] = None if v is None else round(v * 1000, 3)
    return out
