"""KFP components: hyperparameter-search trials and training of the best configuration."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.settings import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def hpo_trial(
    train: Input[Dataset],
    trial: Output[Metrics],
    slot: int,
    n_slots: int,
    work_root: str,
    run_id: str,
    search_space: str = '{"lr": [0.003, 0.001], "batch_size": [32, 64], '
                        '"weight_decay": [0.0001, 0.01], "arch": ["small_cnn"]}',
    search_mode: str = "random",
    seed: int = 0,
    trial_epochs: int = 3,
    image_size: int = 64,
) -> float:
    """Trains one trial of the search and scores it on a validation split of the training data.

    Trials are separate tasks (parallel in the cluster). Each computes its own configuration
    from the search spec and its slot, and writes its result under ``work_root`` for the
    selection step.

    Args:
        train: The training split.
        trial: The trial's hyperparameters and validation scores.
        slot: This trial's index, 0 to n_slots - 1.
        n_slots: Trial slots compiled into the pipeline (random search samples this many).
        work_root: Scratch storage of the pipeline (s3://… or a path).
        run_id: The pipeline run; trial results go to ``<work_root>/hpo/<run_id>/``.
        search_space: JSON: parameter -> candidate values (lr, batch_size, weight_decay, arch…).
        search_mode: grid or random.
        seed: Seed of the sampling and of every trial's training.
        trial_epochs: Epochs per trial.
        image_size: Network input side in pixels.

    Returns:
        Validation accuracy, or -1.0 for an unused slot (grid smaller than the slots).
    """
    import json
    import logging

    from components.common.storage import open_store
    from components.ingest.snapshot import read_split
    from components.train import core

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trials = core.search_space_trials(json.loads(search_space), search_mode, n_slots, seed,
                                      core.HParams(seed=seed, image_size=image_size,
                                                   epochs=trial_epochs))
    if len(trials) > n_slots:
        raise core.TrainError(
            f"The grid has {len(trials)} combinations but the pipeline has {n_slots} trial "
            f"slots. Compile with `mlops compile --trials {len(trials)}` or use random search.")
    if slot >= len(trials):
        logging.info("Slot %d unused: the search has %d trials", slot, len(trials))
        trial.log_metric("unused", 1)
        return -1.0
    hp = core.HParams.from_dict(trials[slot])
    rows, meta = read_split(train.path)
    data = core.prepare(rows, meta["dataset_version"], hp.image_size)
    result, _ = core.train(data, hp)
    record = {"slot": slot, "hparams": trials[slot], "val_accuracy": result.val_accuracy,
              "val_loss": result.val_loss, "best_epoch": result.best_epoch,
              "dataset_version": meta["dataset_version"]}
    open_store(work_root).child(f"hpo/{run_id}").put_json(f"slot-{slot}.json", record)
    for key in ("val_accuracy", "val_loss", "best_epoch"):
        trial.log_metric(key, record[key])
    trial.metadata.update({"hparams": trials[slot]})
    return float(result.val_accuracy)


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train_best(
    train: Input[Dataset],
    model: Output[Model],
    curve: Output[HTML],
    work_root: str,
    run_id: str,
    n_slots: int,
    epochs: int = 10,
    patience: int = 3,
) -> NamedTuple("TrainOutputs", hparams=str, val_accuracy=float):
    """Picks the best trial on validation accuracy and trains it for the full epochs.

    Args:
        train: The training split.
        model: The trained model folder (model.pt, model.json, curve.png).
        curve: The training curve.
        work_root: Scratch storage of the pipeline, where the trials wrote their results.
        run_id: The pipeline run.
        n_slots: Trial slots compiled into the pipeline.
        epochs: Maximum epochs of the final training.
        patience: Early-stopping patience.
    """
    import base64
    import dataclasses
    import html
    import json
    import logging
    import os

    from components.common.storage import ObjectNotFoundError, open_store
    from components.ingest.snapshot import read_split
    from components.train import core

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    store = open_store(work_root).child(f"hpo/{run_id}")
    results = []
    for slot in range(n_slots):
        try:
            results.append(store.get_json(f"slot-{slot}.json"))
        except ObjectNotFoundError:
            logging.info("No result for slot %d (unused slot)", slot)
    if not results:
        raise core.TrainError(f"No trial results under {store.uri}: did the trials run?")
    best = max(results, key=lambda r: (r["val_accuracy"], -r["val_loss"], -r["slot"]))
    logging.info("Best of %d trials: slot %d %s val_accuracy %.4f", len(results), best["slot"],
                 best["hparams"], best["val_accuracy"])
    hp = core.HParams.from_dict({**best["hparams"], "epochs": epochs, "patience": patience})
    rows, meta = read_split(train.path)
    data = core.prepare(rows, meta["dataset_version"], hp.image_size)
    result, info = core.train(data, hp, model.path)
    trials = sorted(results, key=lambda r: r["slot"])
    with open(os.path.join(model.path, "trials.json"), "w") as f:
        json.dump(trials, f, indent=2)
    model.metadata.update({"arch": hp.arch, "hparams": dataclasses.asdict(hp),
                           "dataset_version": meta["dataset_version"],
                           "classes": data.classes, "val_accuracy": info["val_accuracy"],
                           "best_epoch": info["best_epoch"], "framework": "pytorch"})
    png = base64.b64encode(open(os.path.join(model.path, "curve.png"), "rb").read()).decode()
    rows_html = "".join(
        f"<tr{' class=win' if t['slot'] == best['slot'] else ''}><td>{t['slot']}"
        f"{' (chosen)' if t['slot'] == best['slot'] else ''}</td><td>{html.escape(str(t['hparams']))}"
        f"</td><td>{t['val_accuracy']:.4f}</td></tr>"
        for t in trials if t["val_accuracy"] >= 0)
    with open(curve.path, "w") as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><style>body{{font-family:"
                f"sans-serif}} td,th{{padding:3px 8px}} tr.win{{background:#dfd;font-weight:"
                f"bold}}</style></head><body><h2>Training curve ({hp.arch})</h2>"
                f"<p>Final training of the chosen trial: {info['best_epoch']} of at most "
                f"{hp.epochs} epochs kept (dashed line), validation accuracy "
                f"{info['val_accuracy']:.4f}.</p><img src='data:image/png;base64,{png}'>"
                f"<h3>Search trials</h3><table border=1><tr><th>slot</th><th>"
                f"hyperparameters</th><th>val accuracy</th></tr>{rows_html}</table></body>"
                "</html>")
    outputs = NamedTuple("TrainOutputs", hparams=str, val_accuracy=float)
    return outputs(json.dumps(best["hparams"]), float(info["val_accuracy"]))
