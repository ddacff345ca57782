"""Router benchmark, written to docs/benchmarks.md ("Local router" section).

Measures the local target's router (``components/deploy/router.py``) in front of real KServe
model servers on loopback, with 256x256 JPEG camera frames as V1 ``:predict`` requests:

1. overhead: throughput and p50/p95 at concurrency 8 through the router against direct to the
   same model server, runs interleaved (direct, router, direct, ...), median of ``--repeats``;
2. split accuracy: 1,000 requests through the router with the canary at 10% and at 50%,
   counted by the ``X-Model-Revision`` header of each answer;
3. failed requests during ``--cycles`` promotions and ``--cycles`` rollbacks (each: start a
   canary at 50%, then promote or roll back) under a closed-loop load at concurrency 8.

    .venv/bin/python bench/router.py [--seconds 5] [--repeats 3] [--cycles 20]

The load generator, the router and the model servers share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import publish
from serving import _load, build_model, camera_frames

from components.common.registry import ModelRegistry
from components.deploy.targets.local import LocalTarget

NAME = "pets"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _count_revisions(url: str, bodies: list[bytes], n: int, concurrency: int = 8
                           ) -> tuple[Counter, int]:
    """Sends ``n`` requests; counts the revision each answer names, and the failures."""
    import aiohttp

    roles, failures, queue = Counter(), 0, list(range(n))
    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as client:
        async def worker():
            nonlocal failures
            while queue:
                i = queue.pop()
                async with client.post(url, data=bodies[i % len(bodies)]) as r:
                    await r.read()
                    if r.status != 200:
                        failures += 1
                    roles[r.headers.get("X-Model-Revision")] += 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return roles, failures


class Background:
    """Closed-loop load at ``concurrency`` in its own thread and event loop, until stopped."""

    def __init__(self, url: str, bodies: list[bytes], concurrency: int = 8):
        self.url, self.bodies, self.concurrency = url, bodies, concurrency
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    async def _run(self):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(headers={"content-type": "application/json"},
                                         timeout=timeout) as client:
            async def worker(k):
                i = k
                while not self._stop.is_set():
                    try:
                        async with client.post(self.url, data=self.bodies[i % len(self.bodies)]
                                               ) as r:
                            await r.read()
                            if r.status == 200:
                                self.ok += 1
                            else:
                                self.failed.append(f"HTTP {r.status}")
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # noqa: UP041
                        self.failed.append(repr(exc))
                    i += self.concurrency
            await asyncio.gather(*(worker(k) for k in range(self.concurrency)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="sample lake size for the model")
    parser.add_argument("--size", type=int, default=64, help="model input side")
    parser.add_argument("--frame", type=int, default=256, help="camera frame side (JPEG)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per overhead run")
    parser.add_argument("--repeats", type=int, default=3, help="overhead runs per path")
    parser.add_argument("--split-requests", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=20,
                        help="promotions, and as many rollbacks, under load")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    print("training a model to serve ...", flush=True)
    _, package_dir, test_dir = build_model(tmp, args.n, args.size)
    frames = camera_frames(test_dir, args.frame)
    bodies = [json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(f).decode()}}
                                        ]}).encode() for f in frames]
    registry = ModelRegistry(str(tmp / "registry"))
    files = {p.relative_to(package_dir).as_posix(): p.read_bytes()
             for p in Path(package_dir).rglob("*") if p.is_file()}
    for _ in range(2):
        registry.register(NAME, files, {"dataset_version": "bench"})
    target = LocalTarget(registry.uri, NAME, tmp / "deployments")
    try:
        dep = target.deploy("production", 1)
        path = f"/v1/models/{NAME}:predict"
        runs = {"direct": [], "router": []}
        router_pid = target.router("production")["pid"]
        server_pid = dep.stable.detail["pid"]
        for _ in range(args.repeats):
            for label, base in (("direct", dep.stable.url), ("router", dep.url)):
                before = (_cpu_s(router_pid), _cpu_s(server_pid))
                r = asyncio.run(_load(base + path, bodies, 8, args.seconds))
                r["router_cpu_us"] = 1e6 * (_cpu_s(router_pid) - before[0]) / r["requests"]
                r["server_cpu_us"] = 1e6 * (_cpu_s(server_pid) - before[1]) / r["requests"]
                r["load"] = __import__("os").getloadavg()[0]
                runs[label].append(r)
                print(f"{label}: {r['throughput']:.0f} req/s, p95 {r['p95']:.1f} ms, router "
                      f"{r['router_cpu_us']:.0f} us/req, server {r['server_cpu_us']:.0f} us/req,"
                      f" load {r['load']:.1f}", flush=True)
        median = {k: sorted(v, key=lambda r: r["throughput"])[len(v) // 2]
                  for k, v in runs.items()}

        split = {}
        target.start_canary("production", 2, 10)
        for percent in (10, 50):
            target.set_canary_traffic("production", percent)
            roles, failures = asyncio.run(_count_revisions(dep.url + path, bodies,
                                                           args.split_requests))
            split[percent] = (roles, failures)
            print(f"split {percent}%: {dict(roles)} failures {failures}", flush=True)
        target.rollback("production")

        churn = {}
        for action in ("promote", "rollback"):
            durations = []
            with Background(dep.url + path, bodies) as load:
                for _ in range(args.cycles):
                    current = target.status("production").stable.version
                    target.start_canary("production", 2 if current == 1 else 1, 50)
                    t0 = time.perf_counter()
                    getattr(target, action)("production")
                    durations.append(time.perf_counter() - t0)
                time.sleep(0.5)
            churn[action] = (load.ok, load.failed, durations)
            print(f"{args.cycles} {action}s: {load.ok} answered, {len(load.failed)} failed",
                  flush=True)
        same_endpoint = target.status("production").url == dep.url
    finally:
        target.delete_all()

    d, r = median["direct"], median["router"]
    ratio = r["throughput"] / d["throughput"]
    lines = [
        "## Local router",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
        f"{__import__('os').cpu_count()} CPU cores, Python {platform.python_version()}. "
        f"Rerun: `.venv/bin/python bench/router.py --seconds {args.seconds:g} --repeats "
        f"{args.repeats} --cycles {args.cycles}`.",
        "",
        f"One KServe model server (ONNX package, one process) behind the production "
        f"environment's router, {args.frame}x{args.frame} JPEG frames, one per V1 request, "
        f"closed loop at concurrency 8 from an aiohttp client on the same cores; "
        f"{args.repeats} interleaved runs of {args.seconds:g} s per path, median shown.",
        "",
        "| path | requests/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for label, m in (("direct to the model server", d), ("through the router", r)):
        lines.append(f"| {label} | {m['throughput']:.0f} | {m['p50']:.1f} | {m['p95']:.1f} | "
                     f"{m['p99']:.1f} | {m['errors']} |")
    router_us = sorted(x["router_cpu_us"] for x in runs["router"])[len(runs["router"]) // 2]
    server_us = sorted(x["server_cpu_us"] for x in runs["router"])[len(runs["router"]) // 2]
    loads = [x["load"] for v in runs.values() for x in v]
    cores = __import__("os").cpu_count() or 1
    # When the machine's cores are the limit, throughput scales with 1 / CPU per request.
    cpu_ratio = server_us / (server_us + router_us)
    cpu_text = (f"CPU time per request, read from /proc for each process, does not depend on "
                f"other load: the router spends **{router_us:.0f} µs** per request and the "
                f"model server {server_us:.0f} µs, so where the cores are the limit the router "
                f"leaves **{cpu_ratio:.0%}** of the direct throughput")
    if max(loads) > cores:  # other work on the machine: the throughput ratio is noise
        verdict = "met" if cpu_ratio >= 0.9 else "**not met**"
        reading = (f"Through the router: {ratio:.0%} of direct throughput in these runs, which "
                   f"says little: the machine's 1-minute load average was {min(loads):.1f} to "
                   f"{max(loads):.1f} on {cores} cores (other work shared them). {cpu_text} "
                   f"(target ≥ 90%: {verdict}). One model server process is limited by its one "
                   "event loop before that, and the router runs beside it on another core.")
    else:
        verdict = "met" if ratio >= 0.9 else "**not met**"
        reading = (f"Through the router: **{ratio:.0%} of direct throughput** (target ≥ 90%: "
                   f"{verdict}), p95 {r['p95'] - d['p95']:+.1f} ms. {cpu_text}.")
    lines += [
        "",
        reading,
        "",
        f"**Split accuracy** ({args.split_requests} requests through the router, counted by "
        "the `X-Model-Revision` header of each answer):",
        "",
        "| canary percent | canary answers | share | failed |",
        "|---|---|---|---|",
    ]
    for percent, (roles, failures) in split.items():
        total = sum(roles.values())
        lines.append(f"| {percent}% | {roles['canary']} of {total} | "
                     f"{roles['canary'] / total:.1%} | {failures} |")
    lines += [
        "",
        "**Releases under load** (concurrency 8 through the router; each cycle starts a canary "
        "at 50%, waits until it is ready, then promotes it or rolls it back; the router "
        "switches first, the retired revision is stopped once nothing is in flight to it):",
        "",
        "| action | cycles | requests answered | failed | median switch s |",
        "|---|---|---|---|---|",
    ]
    for action, (ok, failed, durations) in churn.items():
        med = sorted(durations)[len(durations) // 2]
        lines.append(f"| {action} | {args.cycles} | {ok} | {len(failed)} | {med:.2f} |")
    failed_all = sum(len(v[1]) for v in churn.values())
    lines += [
        "",
        f"Failed requests during {args.cycles} promotions and {args.cycles} rollbacks: "
        f"**{failed_all}** (target 0)"
        + (f"; first: {next(f for v in churn.values() for f in v[1])}" if failed_all else "")
        + f". The endpoint's address was the same after all of them: {same_endpoint}.",
    ]
    section = "\n".join(lines) + "\n"
    publish(section, write=not args.no_write)


if __name__ == "__main__":
    main()
