"""Data-parallel training throughput against the number of processes, written to
docs/benchmarks.md ("Data-parallel training" section).

Runs the training program (``torchrun -m components.train.ddp``, the one code path) with 1
and 2 Gloo processes on this machine's CPU over the same split, global batch and epochs, and
measures the communication cost on its own: Gloo all-reduce of a gradient the size of the
model, as DDP does once per step (in buckets), timed between the same processes.

    .venv/bin/python bench/training_ddp.py [--n 2000] [--epochs 2] [--procs 1,2]

No GPU was lent to this machine: NCCL and GPU throughput are not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import write_section

from components.common.service import free_port
from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate
from components.ingest.core import ingest
from components.ingest.snapshot import read_split, write_split
from components.train import core


def _torchrun(procs: int, *args: str, threads: int = 0) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if threads:
        env["MLOPS_TORCH_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
           str(procs), "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0, done.stdout


def allreduce_worker(numel: int, repeats: int) -> None:
    """Run under torchrun: times all_reduce of ``numel`` float32 (the gradient), rank 0
    prints milliseconds per all-reduce."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    grad = torch.ones(numel)
    for _ in range(5):
        dist.all_reduce(grad)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(grad)
    ms = (time.perf_counter() - t0) / repeats * 1000
    if dist.get_rank() == 0:
        print(json.dumps({"allreduce_ms": ms}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images in the sample lake")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--procs", default="1,2", help="process counts to compare")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    parser.add_argument("--allreduce-worker", nargs=2, type=int, metavar=("NUMEL", "REPEATS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print, do not write the doc")
    args = parser.parse_args()
    if args.allreduce_worker:
        allreduce_worker(*args.allreduce_worker)
        return

    import torch

    procs = [int(p) for p in args.procs.split(",")]
    hp = {"epochs": args.epochs, "image_size": args.size, "batch_size": args.batch_size,
          "seed": 0, "patience": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        generate(LakeSpec(n=args.n, size=args.size, seed=0), open_store(base / "lake"))
        result = ingest(str(base / "lake"), str(base / "ds"))
        write_split(result, "train", str(base / "train"))
        rows, meta = read_split(str(base / "train"))
        core.prepare(rows, meta["dataset_version"], args.size)  # builds the shards once
        params = sum(p.numel() for p in core.build_model("small_cnn", 2).parameters())
        runs = []
        configs = [(p, 0) for p in procs] + ([(1, 1)] if 1 in procs else [])
        for repeat in range(args.repeats):
            for p, threads in configs:
                load_before = os.getloadavg()[0]
                out_dir = base / f"model-{p}-{threads}-{repeat}"
                wall, _ = _torchrun(p, "-m", "components.train.ddp", "--train",
                                    str(base / "train"), "--hparams", json.dumps(hp), "--out",
                                    str(out_dir), threads=threads)
                res = json.loads((out_dir / "result.json").read_text())
                res.update(procs=p, threads=threads or max(1, (os.cpu_count() or 1) // p),
                           wall_s=wall, load_before=load_before,
                           load_after=os.getloadavg()[0])
                runs.append(res)
                print(p, "process(es),", res["threads"], "thread(s):",
                      res["images_per_second"], "images/s,", f"{wall:.1f} s wall", flush=True)
        steps = -(-int(len(rows) * 0.85) // args.batch_size) * args.epochs
        _, out = _torchrun(2, str(Path(__file__).resolve()), "--allreduce-worker",
                           str(params), "200")
        allreduce_ms = json.loads(out.strip().splitlines()[-1])["allreduce_ms"]
    machine = (f"{os.cpu_count()} cores (shared with other work: load average shown per run), "
               f"{platform.machine()}, Python {platform.python_version()}, torch "
               f"{torch.__version__}, Gloo on CPU; no GPU was lent to this task, so NCCL and "
               "GPU throughput were not measured")
    rows_md = "\n".join(
        f"| {r['procs']} | {r['threads']} | {r['images_per_second']:.0f} | "
        f"{r['val_accuracy']:.3f} | {r['wall_s']:.1f} | {r['load_before']:.1f} / "
        f"{r['load_after']:.1f} |" for r in runs)

    def best(p: int, threads: int | None = None) -> float:
        return max((r["images_per_second"] for r in runs if r["procs"] == p and
                    (threads is None or r["threads"] == threads)), default=0.0)

    two = [r for r in runs if r["procs"] == 2]
    comm = ""
    if two:
        epoch_s = min(sum(h["seconds"] for h in r["history"]) for r in two)
        comm_s = allreduce_ms / 1000 * steps
        comm = (f"Communication: a Gloo all-reduce of the model's gradient ({params:,} float32, "
                f"{params * 4 / 2**20:.2f} MiB) between the two processes took "
                f"{allreduce_ms:.2f} ms (mean of 200); the {steps} steps of a 2-process run "
                f"spend about {comm_s:.2f} s in it, {100 * comm_s / epoch_s:.1f}% of the "
                f"fastest 2-process run's {epoch_s:.1f} s of epochs (training and validation).")
    one2, one1, two1 = best(1, max(1, os.cpu_count() or 1)), best(1, 1), best(2)
    reading = (f"Best of each: 1 process with {os.cpu_count()} threads {one2:.0f} images/s, 1 "
               f"process with 1 thread {one1:.0f}, 2 processes with 1 thread each {two1:.0f} "
               f"({two1 / one1:.2f}x one process with 1 thread, {two1 / one2:.2f}x one with "
               f"{os.cpu_count()}).") if one2 and one1 and two1 else ""
    section = f"""## Data-parallel training (DDP, Gloo on CPU)

Sample lake of {args.n} images at {args.size} px, small CNN, global batch {args.batch_size},
{args.epochs} epochs, seed 0; {machine}.

    python bench/training_ddp.py --n {args.n} --epochs {args.epochs} --procs {args.procs}

Each row is `torchrun --nproc_per_node P -m components.train.ddp` (the training code path the
pipeline runs; P = 1 is the single process). images/s counts the training images of all
processes per second of rank 0's training passes; wall includes starting torch in each process,
reading the shards and validation.

| processes | threads each | images/s | val accuracy | wall s | load before / after |
|---:|---:|---:|---:|---:|---|
{rows_md}

{reading}

{comm}

How to read it: the machine's 2 cores are shared with other sessions' work, so each run gets
what is left of them, and a process's intra-op threads wait on each other when one of them
loses its core (the "100,000 images" section saw a 6x swing in the same loop for that reason).
One thread per process, which 2 processes have, avoids that wait: the large gap to the
single process with 2 threads (the default, one thread per core) is that wait, not data
parallelism; against one process with 1 thread, the second process adds what a second core
gives less the all-reduce. What carries to a cluster is the all-reduce's share of a step: {params * 4 / 2**20:.2f} MiB
of gradient per step, whatever the node's compute.

Not run here: the full 100,000-image search and final training end to end (35 minutes to 3.5
hours on this machine by the extrapolation in the "100,000 images" section), and any GPU figure
(single-GPU throughput, time to the demo's accuracy): no GPU was lent to this task.
"""
    if args.no_write:
        print(section)
    else:
        write_section(section)


if __name__ == "__main__":
    main()
