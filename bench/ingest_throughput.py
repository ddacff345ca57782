"""Benchmark: ingestion throughput (images/s), sequential vs parallel, S3 over loopback.

Starts a real S3-compatible server (moto, server mode) on 127.0.0.1, writes a sample lake
into it, and ingests it with 1 worker and with N workers, each into a fresh dataset root and
without the cache, so every image is downloaded, hashed, decoded, measured and stored. The
local directory store is measured the same way for comparison. Results go to
docs/benchmarks.md (section "Ingestion") and are printed.

    .venv/bin/python bench/ingest_throughput.py [--n 2000] [--size 64] [--workers 1 4 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import write_section  # noqa: E402

from components.common.storage import S3Store, open_store  # noqa: E402
from components.datagen.core import LakeSpec, generate  # noqa: E402
from components.ingest.core import IngestConfig, ingest  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(lake_uri: str, root_base: str, workers: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        root = f"{root_base}/{uuid.uuid4().hex[:8]}"
        t = time.perf_counter()
        result = ingest(lake_uri, root, IngestConfig(workers=workers, use_cache=False))
        best = min(best, time.perf_counter() - t)
    return result.report["ingested"] / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    # The S3 server runs in its own process, as MinIO would, so that it does not share the
    # client's interpreter lock.
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise SystemExit("moto server did not start within 30 s") from None
            time.sleep(0.2)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_REGION": "us-east-1"})
    rows = []
    try:
        S3Store("bench").ensure_bucket()
        spec = LakeSpec(n=args.n, size=args.size, seed=0)
        s3_lake = "s3://bench/lake"
        generate(spec, open_store(s3_lake))
        with tempfile.TemporaryDirectory() as tmp:
            local_lake = f"{tmp}/lake"
            generate(spec, open_store(local_lake))
            for backend, lake, roots in (("S3 (moto, loopback HTTP)", s3_lake, "s3://bench/ds"),
                                         ("local directory", local_lake, f"{tmp}/ds")):
                for w in args.workers:
                    rate = measure(lake, roots, w, args.repeats)
                    rows.append((backend, w, rate))
                    print(f"{backend:26s} workers={w:2d}  {rate:8.0f} images/s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)

    base = {b: r for b, w, r in rows if w == args.workers[0]}
    table = ["| backend | workers | images/s | vs 1 worker |", "|---|---:|---:|---:|"]
    table += [f"| {b} | {w} | {r:.0f} | {r / base[b]:.2f}x |" for b, w, r in rows]
    section = "\n".join([
        "## Ingestion",
        "",
        f"{args.n} sample images of {args.size}x{args.size} px (JPEG, ~2 KB each), every image "
        "downloaded, hashed, fully decoded, measured and stored content-addressed; no cache, "
        f"a fresh dataset root per run, best of {args.repeats}. Machine: {os.cpu_count()} "
        f"cores, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}. The S3 server (moto, a Python server) runs as a separate "
        "process on the same 2 cores, so it competes with the client for CPU; the S3 figures "
        "are a floor for a real MinIO or SeaweedFS on its own machine.",
        "",
        *table,
        "",
        "Reading from a store pays off in parallel when requests wait on the network; here "
        "the S3 server runs on the same two cores as the client and both are CPU-bound, and a "
        "64 px JPEG decodes in well under a millisecond, so extra workers gain little on this "
        "machine. Against a remote store with real round-trip latency the workers overlap "
        "that waiting.",
        "",
        "Rerun: `.venv/bin/python bench/ingest_throughput.py` (or `make bench`).",
        "",
    ])
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
