"""The final training's selection and outputs, shared by the one-pod and the TrainJob tasks.

Both KFP tasks (``train_best`` in its own pod, ``train_best_trainjob`` on Kubeflow Trainer)
pick the best search trial the same way and leave the same outputs: the model folder with
``trials.json``, the ``Model`` artifact's metadata and the HTML training curve. Evaluation,
packaging and lineage therefore cannot tell which one ran, except from the ``distributed``
record (nodes and processes) that both write.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import os

from components.common.storage import ObjectNotFoundError, open_store
from components.train import core

logger = logging.getLogger(__name__)


def trial_results(work_root: str, run_id: str, n_slots: int) -> list[dict]:
    """The results the search trials wrote under ``<work_root>/hpo/<run_id>/``.

    Raises:
        TrainError: No trial wrote a result.
    """
    store = open_store(work_root).child(f"hpo/{run_id}")
    results = []
    for slot in range(n_slots):
        try:
            results.append(store.get_json(f"slot-{slot}.json"))
        except ObjectNotFoundError:
            logger.info("No result for slot %d (unused slot)", slot)
    if not results:
        raise core.TrainError(f"No trial results under {store.uri}: did the trials run?")
    return results


def pick_best(results: list[dict], epochs: int, patience: int) -> tuple[dict, core.HParams]:
    """The best trial on validation accuracy (then loss, then the lower slot) and the
    hyperparameters of its final training."""
    best = max(results, key=lambda r: (r["val_accuracy"], -r["val_loss"], -r["slot"]))
    logger.info("Best of %d trials: slot %d %s val_accuracy %.4f", len(results), best["slot"],
                best["hparams"], best["val_accuracy"])
    return best, core.HParams.from_dict({**best["hparams"], "epochs": epochs,
                                         "patience": patience})


def write_outputs(model_dir: str, curve_path: str, hp: core.HParams, info: dict,
                  results: list[dict], best: dict) -> dict:
    """Writes ``trials.json`` into the model folder and the HTML curve; returns the ``Model``
    artifact's metadata."""
    trials = sorted(results, key=lambda r: r["slot"])
    with open(os.path.join(model_dir, "trials.json"), "w") as f:
        json.dump(trials, f, indent=2)
    metadata = {"arch": hp.arch, "hparams": dataclasses.asdict(hp),
                "dataset_version": info["dataset_version"], "classes": info["classes"],
                "val_accuracy": info["val_accuracy"], "best_epoch": info["best_epoch"],
                "framework": "pytorch",
                "distributed": info.get("distributed", core.distributed_record())}
    with open(os.path.join(model_dir, "curve.png"), "rb") as f:
        png = base64.b64encode(f.read()).decode()
    rows_html = "".join(
        f"<tr{' class=win' if t['slot'] == best['slot'] else ''}><td>{t['slot']}"
        f"{' (chosen)' if t['slot'] == best['slot'] else ''}</td><td>{html.escape(str(t['hparams']))}"
        f"</td><td>{t['val_accuracy']:.4f}</td></tr>"
        for t in trials if t["val_accuracy"] >= 0)
    with open(curve_path, "w") as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><style>body{{font-family:"
                f"sans-serif}} td,th{{padding:3px 8px}} tr.win{{background:#dfd;font-weight:"
                f"bold}}</style></head><body><h2>Training curve ({hp.arch})</h2>"
                f"<p>Final training of the chosen trial: {info['best_epoch']} of at most "
                f"{hp.epochs} epochs kept (dashed line), validation accuracy "
                f"{info['val_accuracy']:.4f}.</p><img src='data:image/png;base64,{png}'>"
                f"<h3>Search trials</h3><table border=1><tr><th>slot</th><th>"
                f"hyperparameters</th><th>val accuracy</th></tr>{rows_html}</table></body>"
                "</html>")
    return metadata
