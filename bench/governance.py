"""Governance: time to govern a verdict, one run per episode under concurrent govern runs, and
how long an undeliverable alert holds a govern run up.

    .venv/bin/python bench/governance.py [--trials 30] [--threads 8] [--quick]

Local store and S3 (moto in server mode on 127.0.0.1, as in the tests); the webhook receiver
is a loopback HTTP server. Writes the "## Governance" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchdoc import write_section
from components.common.governance import GovernanceStore
from components.common.service import free_port
from components.common.storage import S3Store
from components.govern.core import govern
from components.govern.policy import load_policy, parse_policy
from components.govern.trigger import Episodes, RetrainLauncher
from components.monitor.contract import Check, Verdict
from demo.webhook import WebhookReceiver


class CountingLauncher(RetrainLauncher):
    kind = "count"

    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0

    def launch(self, trigger):
        with self.lock:
            self.n += 1
        return {"run_id": uuid.uuid4().hex[:8], "launcher": self.kind, "state": "running"}

    def state(self, launch):
        return "running"


def _verdict(run_id: str, hour: int = 1) -> Verdict:
    return Verdict("pet-classifier", "3", f"2026-11-20T{hour - 1:02d}:00:00+00:00",
                   f"2026-11-20T{hour:02d}:00:00+00:00", run_id, 500, 60, [
                       Check("drift.embedding", "drift", 0.001, 0.05, "alarm", "moved"),
                       Check("performance.accuracy", "performance", 0.8, 0.85, "alarm", "",
                             extra={"n_labelled": 60, "estimated": False}),
                       Check("telemetry.p95_latency", "telemetry", 20.0, 250.0, "ok", "")])


def _s3_store(endpoint: str) -> str:
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    S3Store(bucket).ensure_bucket()
    return f"s3://{bucket}/mon"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="small settings for a check run")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.threads = 3, 4
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="b",
                      AWS_SECRET_ACCESS_KEY="b", AWS_REGION="us-east-1")
    hook = WebhookReceiver(path="/hook").start()
    url = hook.url
    os.environ["MLOPS_ALERT_PRODUCT_OWNER_URL"] = url
    os.environ["MLOPS_ALERT_QA_URL"] = url
    policy = load_policy()
    tmp = Path(tempfile.mkdtemp(prefix="govbench-"))
    results = {}
    try:
        # 1. Time to govern one verdict (two alerts delivered, one trigger), then a repeat
        #    verdict of the same episode (dedup, join).
        for backend in ("local", "s3"):
            first, repeat = [], []
            for t in range(args.trials):
                store = str(tmp / f"t{t}") if backend == "local" else _s3_store("")
                launcher = CountingLauncher()
                started = time.perf_counter()
                govern(_verdict("w1", 1), policy, store_uri=store, launcher=launcher)
                first.append(time.perf_counter() - started)
                started = time.perf_counter()
                govern(_verdict("w2", 2), policy, store_uri=store, launcher=launcher)
                repeat.append(time.perf_counter() - started)
            results[f"govern_{backend}"] = (statistics.median(first) * 1000,
                                            statistics.median(repeat) * 1000)
        # 2. Concurrent govern runs on one episode: runs started per trial.
        for backend in ("local", "s3"):
            counts = []
            for t in range(args.trials):
                store = str(tmp / f"race{t}") if backend == "local" else _s3_store("")
                launcher = CountingLauncher()
                barrier = threading.Barrier(args.threads)

                def one(i, store=store, launcher=launcher, barrier=barrier):
                    barrier.wait()
                    govern(_verdict(f"m{i}"), policy, store_uri=store, launcher=launcher,
                           redeliver=False)

                threads = [threading.Thread(target=one, args=(i,)) for i in range(args.threads)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                counts.append(launcher.n)
                assert len(Episodes(GovernanceStore(store, "pet-classifier")).all()) == 1
            results[f"race_{backend}"] = counts
        # 3. An unreachable webhook with the default delivery settings.
        dead = f"http://127.0.0.1:{free_port()}/hook"
        os.environ["MLOPS_ALERT_PRODUCT_OWNER_URL"] = dead
        one_rule = parse_policy({
            "version": 1, "recipients": {"po": {"format": "slack", "url_env":
                                                "MLOPS_ALERT_PRODUCT_OWNER_URL"}},
            "rules": [{"name": "d", "match": {"kind": "drift"},
                       "actions": [{"type": "alert", "to": "po"}]}]})
        started = time.perf_counter()
        govern(_verdict("w1"), one_rule, store_uri=str(tmp / "dead"))
        results["dead_s"] = time.perf_counter() - started
    finally:
        moto.stop()
        hook.stop()
    d = policy.delivery
    gl, gs = results["govern_local"], results["govern_s3"]
    rl, rs = results["race_local"], results["race_s3"]
    section = f"""## Governance

`.venv/bin/python bench/governance.py --trials {args.trials} --threads {args.threads}` on the
2-core machine (S3: moto in server mode on 127.0.0.1; webhooks: a loopback HTTP receiver).

| measurement | local store | S3 |
|---|---|---|
| govern one verdict: 2 alerts delivered, 1 retraining trigger (median) | {gl[0]:.0f} ms | {gs[0]:.0f} ms |
| govern the next verdict of the same episode: dedup + join (median) | {gl[1]:.0f} ms | {gs[1]:.0f} ms |
| {args.threads} concurrent govern runs on one episode: runs started, over {args.trials} trials | {sorted(set(rl))} (always {'1' if set(rl) == {1} else 'NOT 1'}) | {sorted(set(rs))} (always {'1' if set(rs) == {1} else 'NOT 1'}) |

An unreachable webhook with the default delivery settings ({d.attempts} attempts, backoff
{d.backoff_s:g} s doubling, timeout {d.timeout_s:g} s per attempt) holds one govern run up for
{results['dead_s']:.1f} s per recipient; the alert is kept and retried by the next run.
"""
    write_section(section)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
