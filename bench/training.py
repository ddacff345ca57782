"""Benchmarks of the build pipeline, written to docs/benchmarks.md ("Training" section).

1. Training throughput (images/s) of the training component's loop (``core.fit``) against a
   bare torchvision loop on the same arrays, model, augmentation, optimiser and batch size.
2. ONNX Runtime vs PyTorch eager inference throughput of the packaged model, batch 1 and 32.
3. Local pipeline overhead: wall time of the training pipeline under kfp.local against the
   sum of its steps' own compute time (the same core functions called in one process).

    .venv/bin/python bench/training.py [--n 2000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import publish

from components.common.runtime import onnx_predictor, torch_predictor
from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate
from components.evaluate.core import GateConfig, evaluate
from components.ingest.core import ingest
from components.ingest.snapshot import read_split, write_split
from components.package.core import build_package
from components.register.core import register_package
from components.train import core
from components.train.core import _augment, build_model, load_images, load_model, seed_everything
from pipelines.local import run_local


def bare_loop(data, hp) -> float:
    """The same training work without the component: no validation, no early stopping."""
    import torch
    import torch.nn.functional as F

    seed_everything(hp.seed)
    model = build_model(hp.arch, len(data.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    m = torch.tensor(data.mean).view(1, 3, 1, 1)
    s = torch.tensor(data.std).view(1, 3, 1, 1)
    augment = _augment(hp.image_size)
    xt = torch.from_numpy(data.train_x)
    yt = torch.from_numpy(data.train_y).long()
    seen, t0 = 0, time.perf_counter()
    for _ in range(hp.epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for start in range(0, len(perm), hp.batch_size):
            idx = perm[start:start + hp.batch_size]
            if len(idx) < 2:
                continue
            batch = (torch.stack([augment(xt[i]) for i in idx]).float() / 255.0 - m) / s
            loss = F.cross_entropy(model(batch), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
    return seen / (time.perf_counter() - t0)


def inference(model, meta, onnx_bytes, images, batch: int, seconds: float = 3.0) -> dict:
    out = {}
    for name, predict in (("pytorch", torch_predictor(model, meta["mean"], meta["std"])),
                          ("onnxruntime", onnx_predictor(onnx_bytes))):
        x = images[:batch]
        predict(x)  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            predict(x)
            n += batch
        out[name] = n / (time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    generate(LakeSpec(n=args.n, size=args.size, seed=0), open_store(tmp / "lake"))

    # --- 3 first: the steps in one process, then the same work as a kfp.local pipeline ----
    steps = {}
    t = time.perf_counter()
    result = ingest(str(tmp / "lake"), str(tmp / "ds"))
    for split in ("train", "test"):
        write_split(result, split, str(tmp / split))
    steps["ingest"] = time.perf_counter() - t
    rows, meta = read_split(str(tmp / "train"))
    space = core.search_space_trials(core.DEFAULT_SPACE, "random", 4, 0,
                                     core.HParams(epochs=3, image_size=args.size))
    t = time.perf_counter()
    trials = []
    for trial in space:
        data = core.prepare(rows, meta["dataset_version"], args.size)
        res, _ = core.train(data, core.HParams.from_dict(trial))
        trials.append((res.val_accuracy, -res.val_loss, trial))
    steps["search (4 trials)"] = time.perf_counter() - t
    best = max(trials, key=lambda r: r[:2])[2]
    t = time.perf_counter()
    data = core.prepare(rows, meta["dataset_version"], args.size)
    core.train(data, core.HParams.from_dict({**best, "epochs": 10}), tmp / "model")
    steps["train best"] = time.perf_counter() - t
    t = time.perf_counter()
    ev = evaluate(str(tmp / "model"), str(tmp / "test"), GateConfig())
    (tmp / "evaluation.json").write_text(json.dumps({k: ev[k] for k in ("metrics", "gate")}))
    steps["evaluate"] = time.perf_counter() - t
    t = time.perf_counter()
    model, mmeta = load_model(tmp / "model")
    test_rows, _ = read_split(str(tmp / "test"))
    test_images = load_images(test_rows, args.size)
    build_package(model, mmeta, ev, test_images, "pets", tmp / "pkg")
    steps["package"] = time.perf_counter() - t
    t = time.perf_counter()
    register_package(str(tmp / "pkg"), str(tmp / "model"), str(tmp / "evaluation.json"),
                     str(tmp / "train"), str(tmp / "registry"), "pets")
    steps["register"] = time.perf_counter() - t
    compute = sum(steps.values())
    print("in-process steps:", {k: round(v, 1) for k, v in steps.items()}, flush=True)

    t = time.perf_counter()
    run_local("training", {"data_uri": str(tmp / "lake"), "dataset_root": str(tmp / "ds2"),
                           "registry_uri": str(tmp / "registry2"),
                           "work_root": str(tmp / "work"), "image_size": args.size},
              tmp / "runs")
    wall = time.perf_counter() - t
    print(f"pipeline wall {wall:.1f}s vs steps {compute:.1f}s", flush=True)

    # --- 1: training throughput --------------------------------------------------------------
    hp = core.HParams.from_dict({**best, "epochs": args.epochs, "patience": args.epochs + 1})
    comp = core.fit(data.train_x, data.train_y, data.val_x, data.val_y, len(data.classes),
                    dataclasses.replace(hp), data.mean, data.std).images_per_second
    bare = bare_loop(data, hp)
    print(f"training: component {comp:.0f} img/s, bare loop {bare:.0f} img/s", flush=True)

    # --- 2: inference ------------------------------------------------------------------------
    onnx_bytes = (tmp / "pkg" / "model.onnx").read_bytes()
    inf = {b: inference(model, mmeta, onnx_bytes, test_images, b) for b in (1, 32)}
    print("inference:", inf, flush=True)

    machine = (f"{os.cpu_count()} cores, {platform.machine()}, Python "
               f"{platform.python_version()}, torch {torch.__version__} on CPU")
    lines = [
        "## Training",
        "",
        f"Sample lake of {args.n} images at {args.size} px (seed 0), small CNN, {machine}.",
        "",
        "### Training throughput: component vs bare loop",
        "",
        f"Same arrays ({len(data.train_x)} training images), model, augmentation "
        f"(torchvision.transforms.v2), AdamW and batch size {hp.batch_size}, {args.epochs} "
        "epochs; the component's figure counts its training passes only (its per-epoch "
        "validation pass is the early-stopping work the bare loop does not do).",
        "",
        "| loop | images/s |",
        "|---|---:|",
        f"| bare torchvision loop | {bare:.0f} |",
        f"| training component (`core.fit`) | {comp:.0f} |",
        "",
        f"Overhead of the component: {100 * (1 - comp / bare):.1f}% (target: under 10%)."
        + (" Negative means the component was faster in this run: each loop ran once, so "
           "this is run-to-run noise, and the component adds no measurable cost."
           if comp > bare else ""),
        "",
        "### Inference: ONNX Runtime vs PyTorch eager (packaged model, CPU)",
        "",
        "| batch | PyTorch eager images/s | ONNX Runtime images/s | speed-up |",
        "|---:|---:|---:|---:|",
        *[f"| {b} | {v['pytorch']:.0f} | {v['onnxruntime']:.0f} | "
          f"{v['onnxruntime'] / v['pytorch']:.2f}x |" for b, v in inf.items()],
        "",
        "Both include the uint8 → normalised float conversion; neither includes JPEG decoding.",
        "",
        "### Local pipeline overhead",
        "",
        "The training pipeline under kfp.local (SubprocessRunner: every step a fresh Python "
        "process that imports torch and reads its inputs) against the same steps called in "
        "one process:",
        "",
        "| step (in one process) | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in steps.items()],
        f"| **sum of steps** | **{compute:.1f}** |",
        f"| **kfp.local pipeline wall time** | **{wall:.1f}** |",
        "",
        f"Overhead: {wall - compute:.1f} s ({100 * (wall / compute - 1):.0f}%) over 10 tasks "
        "(ingest, 4 trials, train best, test, gate, package, register).",
        "",
        "Rerun: `.venv/bin/python bench/training.py`.",
        "",
    ]
    publish("\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
