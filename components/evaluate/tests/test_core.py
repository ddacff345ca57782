"""Model testing: metrics against hand counts, bias check, gate, champion/challenger."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from components.common.registry import ModelRegistry
from components.evaluate import core


def test_metrics_match_a_hand_computed_confusion_matrix():
    # 10 cats: 8 right, 2 called dogs; 5 dogs: 4 right, 1 called a cat.
    y = np.array([0] * 10 + [1] * 5)
    pred = np.array([0] * 8 + [1] * 2 + [1] * 4 + [0])
    probs = np.stack([1 - pred * 0.8 - 0.1, pred * 0.8 + 0.1], axis=1)
    m = core.classification_metrics(y, probs, ["cat", "dog"])
    assert m["confusion_matrix"] == [[8, 2], [1, 4]]
    assert m["accuracy"] == pytest.approx(12 / 15)
    assert m["per_class"]["cat"]["precision"] == pytest.approx(8 / 9)
    assert m["per_class"]["cat"]["recall"] == pytest.approx(8 / 10)
    assert m["per_class"]["dog"]["precision"] == pytest.approx(4 / 6)
    assert m["per_class"]["dog"]["recall"] == pytest.approx(4 / 5)
    f1_cat = 2 * (8 / 9) * 0.8 / (8 / 9 + 0.8)
    f1_dog = 2 * (4 / 6) * 0.8 / (4 / 6 + 0.8)
    assert m["per_class"]["cat"]["f1"] == pytest.approx(f1_cat)
    assert m["macro"]["f1"] == pytest.approx((f1_cat + f1_dog) / 2)
    # Probabilities only take two values, so AUC = P(score_dog > score_cat) + ties / 2.
    pos, neg = probs[y == 1, 1], probs[y == 0, 1]
    auc = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert m["roc_auc"] == pytest.approx(auc)


def test_bias_check_flags_a_model_that_misses_one_class():
    metrics = {"per_class": {"cat": {"recall": 0.6, "support": 50},
                             "dog": {"recall": 0.98, "support": 50}}}
    bias = core.bias_check(metrics, 0.1)
    assert not bias["passed"] and bias["worst_class"] == "cat"
    assert bias["recall_gap"] == pytest.approx(0.38)


def _metrics(acc, f1, recalls):
    return {"accuracy": acc, "macro": {"f1": f1},
            "per_class": {c: {"recall": r, "support": 10} for c, r in recalls.items()}}


def test_gate_lists_every_failed_rule():
    gate = core.quality_gate(_metrics(0.8, 0.7, {"cat": 0.5, "dog": 0.9}), core.GateConfig())
    assert not gate["blessed"]
    assert len(gate["reasons"]) == 3
    assert any("accuracy 0.8000 < minimum 0.9" in r for r in gate["reasons"])


def test_gate_blocks_a_challenger_worse_than_the_champion():
    good = _metrics(0.95, 0.95, {"cat": 0.95, "dog": 0.95})
    better = _metrics(0.97, 0.97, {"cat": 0.97, "dog": 0.97})
    assert not core.quality_gate(good, core.GateConfig(), champion=better)["blessed"]
    assert core.quality_gate(better, core.GateConfig(), champion=good)["blessed"]
    assert core.quality_gate(good, core.GateConfig(champion_tolerance=0.05),
                             champion=better)["blessed"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_evaluate_against_a_registered_production_model(dataset_dirs, trained_model_dir,
                                                        tmp_path):
    from components.package.core import build_package
    from components.train.core import load_images, load_model

    train_dir, test_dir = dataset_dirs
    result = core.evaluate(trained_model_dir, test_dir, core.GateConfig(min_accuracy=0.8,
                                                                        min_macro_f1=0.8,
                                                                        max_recall_gap=0.3))
    assert result["gate"]["blessed"], result["gate"]["reasons"]
    assert result["metrics"]["count"] == sum(result["metrics"]["confusion_matrix"][0]) + sum(
        result["metrics"]["confusion_matrix"][1])
    assert "Most confident mistakes" in result["report_html"]

    # Register it as production, then test a worse challenger: an untrained network.
    model, meta = load_model(trained_model_dir)
    from components.ingest.snapshot import read_split

    rows, _ = read_split(test_dir)
    build_package(model, meta, result, load_images(rows, 32), "pets", tmp_path / "pkg")
    registry = ModelRegistry(str(tmp_path / "registry"))
    files = {p.relative_to(tmp_path / "pkg").as_posix(): p.read_bytes()
             for p in (tmp_path / "pkg").rglob("*") if p.is_file()}
    mv = registry.register("pets", files, {"dataset_version": meta["dataset_version"]})
    registry.set_alias("pets", "production", mv.version)

    weak = tmp_path / "weak"
    shutil.copytree(trained_model_dir, weak)
    import torch

    from components.train.core import build_model

    torch.manual_seed(0)
    torch.save(build_model("small_cnn", 2).state_dict(), weak / "model.pt")
    challenger = core.evaluate(str(weak), test_dir, core.GateConfig(0.0, 0.0, 1.0),
                               str(tmp_path / "registry"), "pets")
    gate = challenger["gate"]
    assert not gate["blessed"]
    assert gate["champion_version"] == mv.version
    assert any("worse than the production model" in r for r in gate["reasons"])
    assert gate["champion"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"],
                                                         abs=1e-6)
    json.dumps(challenger["metrics"])  # serialisable for the evaluation artifact
