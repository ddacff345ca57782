"""A search trial's configuration and record, for the trial tasks that train elsewhere.

``hpo_trial_trainjob`` (the trial as a Kubeflow Trainer TrainJob) picks its slot's
configuration and writes its ``slot-N.json`` through here, as ``hpo_trial`` (the trial in its
own pod) does in its body, so the selection step (:mod:`components.train.best`) reads the same
records from either.
"""

from __future__ import annotations

import json
import logging

from components.common.storage import open_store
from components.train import core

logger = logging.getLogger(__name__)


def trial_for_slot(search_space: str, search_mode: str, n_slots: int, seed: int,
                   trial_epochs: int, image_size: int, slot: int) -> dict | None:
    """The hyperparameters of ``slot`` in the search, or None for an unused slot.

    Raises:
        TrainError: The grid has more combinations than the pipeline has slots.
    """
    trials = core.search_space_trials(json.loads(search_space), search_mode, n_slots, seed,
                                      core.HParams(seed=seed, image_size=image_size,
                                                   epochs=trial_epochs))
    if len(trials) > n_slots:
        raise core.TrainError(
            f"The grid has {len(trials)} combinations but the pipeline has {n_slots} trial "
            f"slots. Compile with `mlops compile --trials {len(trials)}` or use random search.")
    if slot >= len(trials):
        logger.info("Slot %d unused: the search has %d trials", slot, len(trials))
        return None
    return trials[slot]


def write_trial(work_root: str, run_id: str, slot: int, hparams: dict, scores: dict) -> dict:
    """Writes ``<work_root>/hpo/<run_id>/slot-<slot>.json`` from a training's scores
    (``val_accuracy``, ``val_loss``, ``best_epoch``, ``dataset_version``); returns it."""
    record = {"slot": slot, "hparams": hparams, "val_accuracy": scores["val_accuracy"],
              "val_loss": scores["val_loss"], "best_epoch": scores["best_epoch"],
              "dataset_version": scores["dataset_version"]}
    open_store(work_root).child(f"hpo/{run_id}").put_json(f"slot-{slot}.json", record)
    return record
