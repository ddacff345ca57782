"""Evaluation reads the dataset version's shards, not the photos: same numbers, no JPEG."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from components.common.storage import ObjectNotFoundError
from components.evaluate import challenger, core
from components.ingest.snapshot import read_split
from components.ingest.tests.snapshot_copy import copy_snapshot, remove_photos

GATE = core.GateConfig(min_accuracy=0.5, min_macro_f1=0.5, max_recall_gap=1.0)


def _numbers(result: dict) -> dict:
    return {k: result["metrics"][k] for k in ("accuracy", "confusion_matrix", "roc_auc",
                                              "per_class", "count")}


@pytest.mark.timeout(300)
def test_evaluation_reads_shards_builds_them_once_and_reads_no_photo(
        dataset_dirs, trained_model_dir, tmp_path, caplog):
    root, (_, test_dir) = copy_snapshot(dataset_dirs, tmp_path)
    version = read_split(test_dir)[1]["dataset_version"]
    decoded = core.evaluate(trained_model_dir, test_dir, GATE, use_shards=False)
    assert not (root / "shards").exists()

    caplog.set_level(logging.INFO, logger="components.ingest.shards")
    from_shards = core.evaluate(trained_model_dir, test_dir, GATE)
    assert (root / "shards" / version / "32" / "_PUBLISHED").is_file()  # built at first use
    assert "from the shards of dataset" in caplog.text
    assert _numbers(from_shards) == _numbers(decoded)
    assert from_shards["gate"]["blessed"] == decoded["gate"]["blessed"]

    assert remove_photos(root) > 0
    with pytest.raises(ObjectNotFoundError, match="No object"):
        core.evaluate(trained_model_dir, test_dir, GATE, use_shards=False)  # photos gone
    again = core.evaluate(trained_model_dir, test_dir, GATE)
    assert _numbers(again) == _numbers(decoded)


@pytest.mark.timeout(300)
def test_evaluation_decodes_rows_that_are_not_from_a_snapshot(dataset_dirs, trained_model_dir,
                                                               tmp_path, caplog):
    """A test split whose rows name the lake's files (not a snapshot's objects) is decoded,
    with the same result, and the log says why."""
    train_dir, test_dir = dataset_dirs
    lake = Path(train_dir).parent / "lake"
    rows, meta = read_split(test_dir)
    rows["uri"] = [(lake / key).as_uri() for key in rows["key"]]
    out = tmp_path / "test"
    out.mkdir()
    rows.to_csv(out / "manifest.csv", index=False)
    (out / "dataset.json").write_text(json.dumps(meta))

    caplog.set_level(logging.INFO, logger="components.ingest.shards")
    from_lake = core.evaluate(trained_model_dir, str(out), GATE)
    assert "Decoding" in caplog.text and "not all from one published dataset" in caplog.text
    assert _numbers(from_lake) == _numbers(core.evaluate(trained_model_dir, test_dir, GATE))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_champion_and_challenger_read_the_test_version_shards_at_their_own_sizes(
        dataset_dirs, trained_model_dir, tmp_path):
    """A production model with another input size (24 px) is tested on the challenger's test
    rows at 24 px, from the shards of the rows' dataset version, built once; the numbers
    equal those from decoding the photos, and stay the same with the photos gone."""
    from components.common.registry import ModelRegistry
    from components.ingest.shards import split_images
    from components.package.core import build_package
    from components.train import core as train

    root, (train_dir, test_dir) = copy_snapshot(dataset_dirs, tmp_path)
    rows, meta = read_split(train_dir)
    version = meta["dataset_version"]
    data = train.prepare(rows, version, 24, use_shards=False)
    champion_dir = tmp_path / "champion"
    train.train(data, train.HParams(epochs=1, image_size=24, batch_size=64, seed=1),
                champion_dir)
    model, model_meta = train.load_model(str(champion_dir))
    test_rows, _ = read_split(test_dir)
    evaluation = {"metrics": {"accuracy": 1.0, "macro": {"f1": 1.0}, "roc_auc": 1.0,
                              "count": 1, "per_class": {}},
                  "gate": {"bias": {"recall_gap": 0.0, "best_class": "cats",
                                    "worst_class": "dogs", "threshold": 1.0, "passed": True}}}
    build_package(model, model_meta, evaluation,
                  split_images(test_rows.head(20), 24, use_shards=False), "pets",
                  tmp_path / "pkg")
    registry = ModelRegistry(str(tmp_path / "registry"))
    files = {p.relative_to(tmp_path / "pkg").as_posix(): p.read_bytes()
             for p in (tmp_path / "pkg").rglob("*") if p.is_file()}
    mv = registry.register("pets", files, {"dataset_version": version})
    registry.set_alias("pets", "production", mv.version)
    assert not (root / "shards").exists()

    def run(**kw):
        result = challenger.evaluate_challenger(
            trained_model_dir, test_dir, GATE, challenger.ChallengerConfig(),
            registry.uri, "pets", **kw)
        return {who: _numbers({"metrics": s["overall"]}) for who, s in result["slices"].items()}

    decoded = run(use_shards=False)
    from_shards = run()
    assert set(from_shards) == {"challenger", "champion"}
    # Exactly: the same two models' forward passes on the same pixels in the same batches (no
    # training, whose thread-split sums can differ in the last bits; see train's test_core).
    assert from_shards == decoded
    for size in (24, 32):  # one set of shards per input size
        assert (root / "shards" / version / str(size) / "_PUBLISHED").is_file()
    remove_photos(root)
    assert run() == decoded
