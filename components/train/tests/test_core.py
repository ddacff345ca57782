"""Training core: a real (small) training run, search, validation split, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.ingest.snapshot import read_split
from components.train import core


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_small_cnn_learns_the_sample_lake_and_saves_a_loadable_model(dataset_dirs, tmp_path):
    rows, meta = read_split(dataset_dirs[0])
    data = core.prepare(rows, meta["dataset_version"], 32)
    result, info = core.train(data, core.HParams(epochs=6, image_size=32, lr=3e-3),
                              tmp_path / "model")
    assert result.val_accuracy >= 0.8, result.history
    assert info["dataset_version"] == meta["dataset_version"]
    assert info["classes"] == ["cats", "dogs"]
    assert len(info["mean"]) == 3 and all(0 < s < 1 for s in info["std"])
    assert (tmp_path / "model" / "curve.png").stat().st_size > 1000
    model, saved = core.load_model(tmp_path / "model")
    from components.common.runtime import predict_in_batches, torch_predictor

    probs = predict_in_batches(torch_predictor(model, saved["mean"], saved["std"]), data.val_x)
    assert np.isclose((probs.argmax(1) == data.val_y).mean(), result.val_accuracy, atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_training_is_reproducible_on_cpu(dataset_dirs):
    rows, meta = read_split(dataset_dirs[0])
    data = core.prepare(rows, meta["dataset_version"], 32)
    hp = core.HParams(epochs=1, image_size=32, seed=3)
    a, _ = core.train(data, hp)
    b, _ = core.train(data, hp)
    # Reproducible up to the order of float sums: torch's CPU kernels split them by the threads
    # they get, which a busy machine changes (last-bit differences); an unseeded run differs by
    # far more than 1e-4.
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-4,
                                                       abs=1e-5)  # rounded to 1e-5
    assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)


def test_validation_split_comes_from_training_rows_only_and_is_stable(dataset_dirs):
    train_rows, _ = read_split(dataset_dirs[0])
    test_rows, _ = read_split(dataset_dirs[1])
    fit_rows, val_rows = core.validation_split(train_rows)
    assert set(val_rows["sha256"]).isdisjoint(test_rows["sha256"])
    assert set(val_rows["sha256"]) | set(fit_rows["sha256"]) == set(train_rows["sha256"])
    assert 0.08 < len(val_rows) / len(train_rows) < 0.22
    _, again = core.validation_split(train_rows.sample(frac=1.0, random_state=1))
    assert set(again["sha256"]) == set(val_rows["sha256"])


def test_grid_and_random_search():
    space = {"lr": [0.1, 0.01], "batch_size": [16, 32], "arch": ["small_cnn", "resnet18"]}
    grid = core.search_space_trials(space, "grid")
    assert len(grid) == 8
    assert {(t["lr"], t["batch_size"], t["arch"]) for t in grid} == {
        (lr, b, a) for lr in (0.1, 0.01) for b in (16, 32) for a in ("small_cnn", "resnet18")}
    random_a = core.search_space_trials(space, "random", n_trials=3, seed=5)
    assert random_a == core.search_space_trials(space, "random", n_trials=3, seed=5)
    assert len(random_a) == 3 and len({json.dumps(t, sort_keys=True) for t in random_a}) == 3


@pytest.mark.parametrize("call, match", [
    (lambda: core.HParams(arch="vgg99"), "Unknown architecture: 'vgg99'"),
    (lambda: core.search_space_trials({"lr": [0.1]}, "bayes"), "Invalid search mode"),
    (lambda: core.search_space_trials({"lr": []}), "Empty search space"),
    (lambda: core.search_space_trials({"momentum": [0.9]}), "Unknown hyperparameters"),
    (lambda: core.HParams(lr=0), "Invalid lr"),
])
def test_bad_configuration_names_the_value(call, match):
    with pytest.raises(core.TrainError, match=match):
        call()


def test_one_class_and_empty_data_are_clear_errors(dataset_dirs):
    rows, meta = read_split(dataset_dirs[0])
    with pytest.raises(core.TrainError, match="One-class data"):
        core.prepare(rows[rows["label"] == "cats"], meta["dataset_version"], 32)
    with pytest.raises(core.TrainError, match="Empty training split"):
        core.prepare(rows.iloc[:0], meta["dataset_version"], 32)


def test_unreadable_model_folder_is_a_clear_error(tmp_path):
    (tmp_path / "model.json").write_text('{"arch": "small_cnn", "classes": ["a", "b"]}')
    (tmp_path / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(core.TrainError, match="Unreadable model folder"):
        core.load_model(tmp_path)


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18"])
def test_torchvision_architectures_build_without_downloads(arch):
    import torch

    model = core.build_model(arch, 2).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)


def test_pretrained_weights_come_from_a_given_path_never_a_download(dataset_dirs,
                                                                   trained_model_dir, tmp_path):
    import shutil

    rows, meta = read_split(dataset_dirs[0])
    data = core.prepare(rows, meta["dataset_version"], 32)
    shutil.copy(f"{trained_model_dir}/model.pt", tmp_path / "weights.pt")
    warm, _ = core.train(data, core.HParams(epochs=1, image_size=32, lr=1e-5,
                                            pretrained=str(tmp_path / "weights.pt")))
    cold, _ = core.train(data, core.HParams(epochs=1, image_size=32, lr=1e-5))
    assert warm.val_accuracy >= 0.8 > cold.val_accuracy  # it starts from the trained weights
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(core.TrainError, match="Cannot read pretrained weights"):
        core.train(data, core.HParams(epochs=1, image_size=32,
                                      pretrained=str(tmp_path / "junk.pt")))
