"""Benchmark: what an S3 outage and a partition cost an ingestion, written to docs/benchmarks.md
("Storage faults").

A moto S3 server on 127.0.0.1 behind the tests' fault proxy (``tests/faultproxy.py``); the
dataset root is on S3, the lake a local folder of ``--n`` small JPEGs.

1. **Outage, then rerun.** An ingestion runs as its own process; the proxy closes every
   connection unanswered from the first file of the version on (an S3 outage in the middle
   of the publish): the process fails and cannot delete its locks. The store comes back and
   the ingestion is run again as a new process, as a user or a pipeline retry would: reported
   are the rerun's wall time (process start and imports included) and whether it published.
   Before issue 22 the rerun waited 300 s for the lock and failed (the lock counted as stale
   only after 10 minutes).
2. **Partition.** The proxy stops answering (reads requests, answers none) at the start of
   the publish, and in the middle of the parallel object uploads; reported is the time from
   the partition to the ingestion's error, against one request's bound
   (``(connect + read) × (1 + retries)``; the proxy accepts connections, so it is about
   ``read × (1 + retries)`` plus back-off here).

    .venv/bin/python bench/storage_faults.py                      # the default S3 limits
    .venv/bin/python bench/storage_faults.py --read-timeout 2 --no-write   # a quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import write_section  # noqa: E402

from components.common.service import free_port, wait_until  # noqa: E402
from components.common.storage import S3Store, open_store, s3_settings_from_env  # noqa: E402
from components.datagen.core import LakeSpec, generate  # noqa: E402
from components.ingest.core import IngestConfig, ingest  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402

_INGEST = ("import sys\n"
           "from components.ingest.core import IngestConfig, ingest\n"
           "r = ingest(sys.argv[1], sys.argv[2], IngestConfig(workers=2))\n"
           "print('published' if r.created else 'already published', r.version)\n")


def _version_file(method: str, path: str, headers: dict) -> bool:
    return method == "PUT" and "/versions/" in path and "_PUBLISHING" not in path


def _run_ingest(lake: str, root: str, env: dict) -> tuple[int, str, float]:
    """Runs one ingestion as its own process: exit code, what it printed (else the last
    line it logged), wall time."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _INGEST, lake, root], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=900)
    said = done.stdout.strip() or (done.stderr.strip().splitlines() or [""])[-1]
    return done.returncode, said, time.perf_counter() - t0


def outage_then_rerun(upstream: str, lake: str, root: str) -> dict:
    with FaultProxy(upstream, trip=_version_file) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "PYTHONPATH": str(REPO)}
        rc, out, first_s = _run_ingest(lake, root, env)
        if rc == 0 or not proxy.tripped:
            raise SystemExit(f"the outage did not cut the first run off: {out[-500:]}")
        proxy.restore()
        rc2, out2, rerun_s = _run_ingest(lake, root, env)
    return {"first_rc": rc, "first_s": first_s, "rerun_rc": rc2, "rerun_s": rerun_s,
            "rerun_out": out2}


def partition(upstream: str, lake: str, root: str, needle: str) -> dict:
    """Ingests through the proxy in this process; partitions at the first PUT under
    ``needle``; returns the seconds from the partition to the error."""
    with FaultProxy(upstream) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        at: list[float] = []

        def watch() -> None:
            wait_until(lambda: any(m == "PUT" and needle in p for m, p in proxy.requests),
                       600, 0.002)
            proxy.partition()
            at.append(time.perf_counter())

        threading.Thread(target=watch, daemon=True).start()
        try:
            ingest(lake, root, IngestConfig(workers=2))
            error = "none (published)"
        except Exception as exc:  # noqa: BLE001 - reported
            error = type(exc).__name__
        finally:
            os.environ["AWS_ENDPOINT_URL"] = upstream
        ended = time.perf_counter()
    return {"error": error, "seconds": ended - at[0] if at else float("nan"),
            "unanswered": proxy.unanswered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="images in the lake")
    parser.add_argument("--read-timeout", type=float, default=30.0,
                        help="MLOPS_S3_READ_TIMEOUT for the partition runs (30: the default)")
    parser.add_argument("--tmp", default="/tmp/bench-storage-faults", help="the lake")
    parser.add_argument("--no-write", action="store_true", help="do not write the docs")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    upstream = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=upstream, AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    try:
        lake = open_store(Path(args.tmp) / f"lake-{args.n}")
        if not any(True for _ in lake.list()):
            generate(LakeSpec(n=args.n, size=32, seed=7), lake)
        buckets = iter(f"bench-faults-{i}-{port}" for i in range(10))

        def fresh_root() -> str:
            bucket = next(buckets)
            S3Store(bucket).ensure_bucket()
            return f"s3://{bucket}/ds"

        outage = outage_then_rerun(upstream, lake.uri, fresh_root())
        print(f"outage: first run rc {outage['first_rc']} after {outage['first_s']:.1f} s; "
              f"rerun rc {outage['rerun_rc']} in {outage['rerun_s']:.1f} s "
              f"({outage['rerun_out']})")
        os.environ.update(MLOPS_S3_READ_TIMEOUT=str(args.read_timeout))
        s = s3_settings_from_env()
        bound = s.read_timeout * (1 + s.retries) + 0.2 + 0.4  # back-off 0.2 s, 0.4 s
        parts = {}
        for name, needle in (("publishing", "/versions/"), ("object uploads", "/objects/")):
            parts[name] = partition(upstream, lake.uri, fresh_root(), needle)
            print(f"partition during {name}: {parts[name]['error']} after "
                  f"{parts[name]['seconds']:.1f} s (bound {bound:.1f} s)")
    finally:
        moto.stop()

    load = os.getloadavg()
    section = f"""## Storage faults

`bench/storage_faults.py` (`.venv/bin/python bench/storage_faults.py`): {platform.machine()},
{os.cpu_count()} cores shared with other work (load average {load[0]:.1f} at the end),
Python {platform.python_version()}; moto S3 on 127.0.0.1 behind the tests' fault proxy; a
local lake of {args.n} JPEGs ingested into an S3 dataset root with 2 workers.

**An outage in the middle of the publish, then a rerun as a new process** (the first run
fails and cannot delete its locks; its process is gone when the rerun starts):

| run | exit code | wall time |
|---|---|---|
| cut off by the outage | {outage['first_rc']} | {outage['first_s']:.1f} s |
| rerun after the store's return | {outage['rerun_rc']} | {outage['rerun_s']:.1f} s ({outage['rerun_out']}) |

The rerun's time is the ingestion itself plus starting Python: it takes both locks over at
once (their holder's process is gone). Before issue 22 the rerun waited 300 s for the lock
and failed (exit code 1 after 310 s), because a lock counted as stale only after 10 minutes.

**A partition** (requests read, never answered) with `MLOPS_S3_READ_TIMEOUT={s.read_timeout:g}`,
`MLOPS_S3_RETRIES={s.retries}`: one request's bound is {bound:.1f} s here (the proxy accepts
connections, so the connect timeout never runs).

| partition starts | outcome | partition to error | tries it met (lock heartbeats included) |
|---|---|---|---|
""" + "".join(
        f"| at the first {'file of the version' if n == 'publishing' else 'object upload'} "
        f"| {p['error']} | {p['seconds']:.1f} s | {p['unanswered']} |\n"
        for n, p in parts.items()) + """
Once a request has used up its retries, each further request to the endpoint is tried once
until one is answered, and a publisher that cannot reach the store leaves its locks for the
next attempt; a request already waiting in parallel (the other upload thread) ends after its
current try, so a partition costs one bound plus at most one read timeout (the second row).
Before, a partition during the publish cost three bounds (the failed read, then the lock's
delete and the ingestion's lock read, each retried in full: 10.2 s at a 1 s read
timeout where one bound is 3.4 s), and the issue measured 163 s with the defaults.
"""
    if not args.no_write:
        write_section(section)
    else:
        print(section)


if __name__ == "__main__":
    main()
