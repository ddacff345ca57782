"""Benchmark: evaluation, packaging's parity images and the monitoring reference from the
dataset version's shards against decoding the camera photos (issue 14), to docs/benchmarks.md.

On a lake of ``--n`` camera-sized JPEGs (default 600 at 1920x1080): ingest, build the 64 px
shards (once per version and size; pixels and the predictor's input statistics), train a
small model for one epoch (from the shards), then time each reader both ways on the same
rows and check that both give the same result:

* the test split's images (``shards.split_images``): images/s;
* the model test (``evaluate.core.evaluate``): wall time, identical metrics;
* the monitoring reference (``monitor.reference.build_reference_files``, no detector):
  wall time, identical statistics, embeddings within 1e-6.

The rates are then stated for a 100,000-image dataset (20,000 test images, a 1,000-image
reference sample), labelled as extrapolations.

    nice -n 10 .venv/bin/python bench/shard_readers.py                  # the full run (~4 min)
    .venv/bin/python bench/shard_readers.py --n 60 --no-write           # a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import publish

from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate
from components.evaluate.core import GateConfig, evaluate
from components.ingest.core import available_cpus, ingest
from components.ingest.shards import build_shards, split_images
from components.ingest.snapshot import read_split, write_split
from components.monitor.reference import build_reference_files, held_out_sample
from components.package.core import build_package
from components.train import core as train


def _timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="camera JPEGs in the lake")
    parser.add_argument("--camera", default="1920x1080", help="their size")
    parser.add_argument("--size", type=int, default=64, help="network input side")
    parser.add_argument("--tmp", default="/tmp/bench-shard-readers", help="work folder")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the doc")
    args = parser.parse_args()

    import numpy as np

    tmp = Path(args.tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    workers = available_cpus()
    _, t_gen = _timed(generate, LakeSpec(n=args.n, size=args.camera, seed=7),
                      open_store(tmp / "lake"), workers=workers)
    lake_mib = sum(p.stat().st_size for p in (tmp / "lake").rglob("*.jpg")) / 2**20
    result, t_ingest = _timed(ingest, str(tmp / "lake"), str(tmp / "ds"))
    for split in ("train", "test"):
        write_split(result, split, str(tmp / split))
    version = result.version
    _, t_build = _timed(build_shards, str(tmp / "ds"), version, args.size)
    n_images = len(result.manifest)
    print(f"lake {args.n} x {args.camera} ({lake_mib:.0f} MiB) generated in {t_gen:.0f} s; "
          f"ingest {t_ingest:.1f} s; shards at {args.size} px {t_build:.1f} s", flush=True)

    rows, meta = read_split(str(tmp / "train"))
    test_rows, _ = read_split(str(tmp / "test"))
    data = train.prepare(rows, version, args.size)
    train.train(data, train.HParams(epochs=1, image_size=args.size), tmp / "model")
    model, mmeta = train.load_model(str(tmp / "model"))

    # The test split's images, both ways.
    decoded, t_dec = _timed(split_images, test_rows, args.size, version, use_shards=False)
    sharded, t_sh = _timed(split_images, test_rows, args.size, version)
    assert np.array_equal(decoded, sharded), "shards and photos differ"
    n_test = len(test_rows)
    print(f"test split {n_test}: decode {t_dec:.2f} s, shards {t_sh:.3f} s", flush=True)

    # The model test, both ways (after an untimed run: imports and first-call costs).
    gate = GateConfig(0.0, 0.0, 1.0)
    evaluate(str(tmp / "model"), str(tmp / "test"), gate)
    ev_dec, t_ev_dec = _timed(evaluate, str(tmp / "model"), str(tmp / "test"), gate,
                              use_shards=False)
    ev_sh, t_ev_sh = _timed(evaluate, str(tmp / "model"), str(tmp / "test"), gate)
    assert ev_dec["metrics"] == ev_sh["metrics"], "evaluation differs"
    print(f"evaluate: decode {t_ev_dec:.2f} s, shards {t_ev_sh:.2f} s", flush=True)

    # The monitoring reference, both ways.
    build_package(model, mmeta, ev_sh, sharded[:20], "pets", tmp / "pkg")
    onnx = (tmp / "pkg" / "model.onnx").read_bytes()
    n_ref = len(held_out_sample(test_rows))
    build_reference_files(onnx, rows, version, detector=False,  # untimed: imports, first run
                          test_rows=test_rows)
    ref_dec, t_ref_dec = _timed(build_reference_files, onnx, rows, version, detector=False,
                                use_shards=False, test_rows=test_rows)
    ref_sh, t_ref_sh = _timed(build_reference_files, onnx, rows, version, detector=False,
                              test_rows=test_rows)
    doc_dec, doc_sh = (json.loads(r["reference.json"]) for r in (ref_dec, ref_sh))
    assert doc_dec["stats"] == doc_sh["stats"], "reference statistics differ"
    emb = [np.load(io.BytesIO(r["embeddings.npy"])) for r in (ref_dec, ref_sh)]
    emb_diff = float(np.abs(emb[0] - emb[1]).max())
    assert emb_diff <= 1e-6, emb_diff
    print(f"reference {n_ref}: decode {t_ref_dec:.2f} s, shards {t_ref_sh:.2f} s", flush=True)

    dec_rate, sh_rate = n_test / t_dec, n_test / t_sh
    ref_dec_rate = n_ref / t_ref_dec
    load = round(os.getloadavg()[0], 1)
    section = f"""## Evaluation and the monitoring reference from shards

`bench/shard_readers.py` (`nice -n 10 .venv/bin/python bench/shard_readers.py`), on this
project's machine ({platform.machine()}, {os.cpu_count()} cores visible, {workers} used,
1-minute load {load} at the end while other work ran): a lake of {args.n} camera JPEGs at
{args.camera} ({lake_mib:.0f} MiB), ingested ({t_ingest:.1f} s), then the {args.size} px
shards built once ({t_build:.1f} s for {n_images} images, {n_images / t_build:.0f} images/s:
one read, hash check and draft decode per photo giving both the pixels and the predictor's
input statistics). Each reader, timed on the same rows both ways; both give the same result
(checked in the run: identical pixels, identical metrics, identical reference statistics,
embeddings within {emb_diff:.1e}).

| reader | rows | decoding the photos | from the shards |
|---|---|---|---|
| test split images (`split_images`) | {n_test} | {t_dec:.2f} s ({dec_rate:.0f} images/s) | {t_sh:.3f} s ({sh_rate:,.0f} images/s) |
| model test (`evaluate`, load to report) | {n_test} | {t_ev_dec:.2f} s | {t_ev_sh:.2f} s |
| monitoring reference (`build_reference_files`) | {n_ref} | {t_ref_dec:.2f} s | {t_ref_sh:.2f} s |

Extrapolated to 100,000 images (not measured at that size): a 20,000-image test split costs
about {20000 / dec_rate / 60:.1f} min of decoding for each reader that decodes it (the model
test, the champion's test, the packaging parity check), against about
{20000 / sh_rate:.1f} s from the shards; a 1,000-image reference sample about
{1000 / ref_dec_rate:.0f} s of decoding. The shards themselves are built once per dataset
version and size, by the first step that needs them (usually the first search trial).
"""
    publish(section, write=not args.no_write)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
