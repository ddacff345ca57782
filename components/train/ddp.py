"""The training program ``torchrun`` runs: locally, in a pod, or in a Kubeflow Trainer TrainJob.

    torchrun --nproc_per_node 2 -m components.train.ddp \\
        --train s3://work/hpo/RUN/train --hparams '{"lr": 0.003, "epochs": 10}' \\
        --out s3://work/hpo/RUN/model

Every rank reads the training split (a folder written by the ingest step:
``dataset.json`` and ``manifest.csv``, a local path or any store URI) and its images from the
dataset version's memory-mapped shards; rank 0 builds the shards first when they are missing
and the others wait for it. Every rank trains (:func:`components.train.core.train`, the one
code path), rank 0 writes the model folder (``model.pt``, ``model.json``, ``curve.png``) to
``--out``, a local path or a store URI, and ``result.json`` (the scores, the number of nodes
and processes) beside it. Run without ``torchrun`` it is one process.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from components.common.helptext import HelpFormatter
from components.common.storage import LocalStore, open_store
from components.ingest.snapshot import read_split
from components.train import core, distributed

logger = logging.getLogger(__name__)

#: The files a model folder holds, written by rank 0.
RESULT_FILE = "result.json"


def _local_split(uri: str, scratch: Path) -> str:
    """A local folder with the split's ``dataset.json`` and ``manifest.csv``."""
    if Path(uri).is_dir():
        return uri
    store = open_store(uri)
    for name in ("dataset.json", "manifest.csv"):
        (scratch / name).write_bytes(store.get(name))
    return str(scratch)


def _publish(folder: Path, out: str) -> None:
    """Copies the model folder to ``out`` (a no-op when ``out`` is that folder)."""
    store = open_store(out)
    if isinstance(store, LocalStore) and Path(store.root).resolve() == folder.resolve():
        return
    for path in sorted(folder.iterdir()):
        if path.is_file():
            store.put(path.name, path.read_bytes())


def run(train_uri: str, hparams: dict, out: str, val_fraction: float = 0.15) -> dict | None:
    """Trains in the current process group (or alone); rank 0 writes to ``out``.

    Returns:
        Rank 0: the ``result.json`` content; other ranks: None.
    """
    world = distributed.init_from_env()
    hp = core.HParams.from_dict(hparams)
    with tempfile.TemporaryDirectory(prefix="mlops-ddp-") as tmp:
        rows, meta = read_split(_local_split(train_uri, Path(tmp)))
        if not world.is_writer:
            distributed.barrier()  # rank 0 builds the version's shards at this size first
        data = core.prepare(rows, meta["dataset_version"], hp.image_size, val_fraction)
        if world.is_writer:
            distributed.barrier()
        local_out = Path(out) if isinstance(open_store(out), LocalStore) else Path(tmp) / "model"
        result, info = core.train(data, hp, local_out if world.is_writer else None)
        summary = None
        if world.is_writer:
            summary = {"val_accuracy": info["val_accuracy"], "val_loss": info["val_loss"],
                       "best_epoch": info["best_epoch"], "history": info["history"],
                       "images_per_second": info["images_per_second"],
                       "dataset_version": meta["dataset_version"], **info["distributed"]}
            (local_out / RESULT_FILE).write_text(json.dumps(summary, indent=2))
            _publish(local_out, out)
            logger.info("Rank 0 wrote the model to %s (%d process(es) on %d node(s))", out,
                        summary["processes"], summary["nodes"])
        distributed.barrier()
    distributed.shutdown()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.train.ddp",
        description="Trains one configuration, as one process or under torchrun (DDP).",
        formatter_class=HelpFormatter)
    parser.add_argument("--train", required=True,
                        help="The training split: a folder or store URI with dataset.json and "
                             "manifest.csv (as written by the ingest step).")
    parser.add_argument("--hparams", default="{}",
                        help="JSON object of hyperparameters (components.train.core.HParams); "
                             "batch_size is the global batch over all processes.")
    parser.add_argument("--out", required=True,
                        help="Where rank 0 writes the model folder: a path or store URI.")
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="Share of the training split held out for validation.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(levelname)s rank{distributed.env_world().rank} "
                               "%(name)s: %(message)s")
    try:
        hparams = json.loads(args.hparams)
    except json.JSONDecodeError as exc:
        parser.error(f"--hparams: {args.hparams!r} is not JSON ({exc}). Expect an object such "
                     "as '{\"lr\": 0.003}'.")
    if not isinstance(hparams, dict):
        parser.error(f"--hparams: {args.hparams!r}. Expect a JSON object.")
    try:
        run(args.train, hparams, args.out, args.val_fraction)
    except core.TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
