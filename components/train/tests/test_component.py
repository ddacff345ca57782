"""Tier 2: the search trial and selection components with real artifacts."""

from __future__ import annotations

import json

import pytest
from kfp.dsl import HTML, Dataset, Metrics, Model

from components.common.storage import open_store
from components.train.component import hpo_trial, train_best


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_best_trial_on_validation_data_is_the_one_trained(dataset_dirs, tmp_path):
    train = Dataset(name="train", uri=dataset_dirs[0], metadata={})
    space = json.dumps({"lr": [0.003, 0.0000001], "batch_size": [32], "arch": ["small_cnn"]})
    scores = {}
    for slot in range(3):  # grid of 2: the third slot is unused
        trial = Metrics(name="trial", uri=str(tmp_path / f"trial{slot}"), metadata={})
        scores[slot] = hpo_trial.python_func(
            train=train, trial=trial, slot=slot, n_slots=3, work_root=str(tmp_path / "work"),
            run_id="run-1", search_space=space, search_mode="grid", trial_epochs=2,
            image_size=32)
    assert scores[2] == -1.0
    assert scores[0] > scores[1]  # a learning rate of 1e-7 learns nothing in 2 epochs
    model = Model(name="model", uri=str(tmp_path / "model"), metadata={})
    curve = HTML(name="curve", uri=str(tmp_path / "curve.html"), metadata={})
    out = train_best.python_func(train=train, model=model, curve=curve,
                                 work_root=str(tmp_path / "work"), run_id="run-1", n_slots=3,
                                 epochs=2)
    assert json.loads(out.hparams)["lr"] == 0.003
    assert model.metadata["hparams"]["lr"] == 0.003 and model.metadata["hparams"]["epochs"] == 2
    recorded = open_store(tmp_path / "work").child("hpo/run-1")
    assert sorted(o.key for o in recorded.list()) == ["slot-0.json", "slot-1.json"]


def test_grid_larger_than_the_slots_says_how_to_fix(dataset_dirs, tmp_path):
    from components.train.core import TrainError

    space = json.dumps({"lr": [0.1, 0.01, 0.001], "batch_size": [16, 32]})
    with pytest.raises(TrainError, match="6 combinations but the pipeline has 4 trial slots"):
        hpo_trial.python_func(
            train=Dataset(name="t", uri=dataset_dirs[0], metadata={}),
            trial=Metrics(name="m", uri=str(tmp_path / "m"), metadata={}), slot=0, n_slots=4,
            work_root=str(tmp_path), run_id="r", search_space=space, search_mode="grid")
