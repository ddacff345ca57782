"""The champion/challenger test by context: both models' accuracy on the day and the night
test images, each with its number of images, and a challenger worse on one context is not
blessed, whatever its overall accuracy."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from components.evaluate import challenger, core
from components.evaluate.challenger import ChallengerConfig, context_gate

GATE = core.GateConfig(min_accuracy=0.0, min_macro_f1=0.0, max_recall_gap=1.0,
                       champion_tolerance=1.0)


def _m(accuracy: float, count: int) -> dict:
    return {"accuracy": accuracy, "count": count}


def test_context_gate_rejects_a_drop_beyond_the_tolerance_on_a_context_with_enough_images():
    slices = {"challenger": {"contexts": {"day": _m(0.90, 200), "night": _m(0.95, 8)}},
              "champion": {"contexts": {"day": _m(0.95, 200), "night": _m(0.50, 8)}}}
    reasons, rows = context_gate(slices, ChallengerConfig(max_context_drop=0.02,
                                                          min_context_images=10))
    assert len(reasons) == 1 and "day images 0.9000" in reasons[0]
    assert "200 day test images" in reasons[0] and "0.02" in reasons[0]
    assert rows["day"]["judged"] and rows["day"]["gain"] == pytest.approx(-0.05, abs=1e-12)
    assert not rows["night"]["judged"] and rows["night"]["images"] == 8  # too few to judge
    # Within the tolerance: no reason.
    assert context_gate(slices, ChallengerConfig(max_context_drop=0.06))[0] == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_challenger_worse_on_day_images_is_not_blessed_and_the_report_names_the_context(
        dataset_dirs, trained_model_dir, tmp_path):
    """Production was trained on day images; the challenger only on night images. On a test
    split of day and night images the challenger is judged per context (measured from each
    image), and its loss on day images blocks it although the overall rule allows anything."""
    from components.common.registry import ModelRegistry
    from components.common.storage import open_store
    from components.datagen.core import LakeSpec, generate
    from components.ingest.core import ingest
    from components.ingest.snapshot import read_split, write_split
    from components.package.core import build_package
    from components.train import core as train

    day_train, day_meta = read_split(dataset_dirs[0])
    day_test, _ = read_split(dataset_dirs[1])
    version = day_meta["dataset_version"]
    generate(LakeSpec(n=240, size=32, seed=29, condition="night"),
             open_store(tmp_path / "lake"))
    result = ingest(str(tmp_path / "lake"), str(tmp_path / "ds"))
    for split in ("train", "test"):
        write_split(result, split, str(tmp_path / f"night-{split}"))
    night_train, _ = read_split(str(tmp_path / "night-train"))
    night_test, _ = read_split(str(tmp_path / "night-test"))
    # The challenger: trained on night images only, under the day dataset's version so that
    # it is tested on the same split as production.
    train.train(train.prepare(night_train, version, 32),
                train.HParams(epochs=4, image_size=32, lr=3e-3, seed=3), tmp_path / "ch")
    # The test split: the day test images and the night ones (decoded: not one snapshot).
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    pd.concat([day_test, night_test], ignore_index=True).to_csv(test_dir / "manifest.csv",
                                                                index=False)
    (test_dir / "dataset.json").write_text(json.dumps({**day_meta, "split": "test"}))
    # Production: the day model.
    model, model_meta = train.load_model(trained_model_dir)
    evaluation = {"metrics": {"accuracy": 1.0, "macro": {"f1": 1.0}, "roc_auc": 1.0,
                              "count": 1, "per_class": {}},
                  "gate": {"bias": {"recall_gap": 0.0, "best_class": "cats",
                                    "worst_class": "dogs", "threshold": 1.0, "passed": True}}}
    build_package(model, model_meta, evaluation, train.load_images(day_test.head(10), 32),
                  "pets", tmp_path / "pkg")
    registry = ModelRegistry(str(tmp_path / "registry"))
    mv = registry.register("pets", {p.relative_to(tmp_path / "pkg").as_posix(): p.read_bytes()
                                    for p in (tmp_path / "pkg").rglob("*") if p.is_file()},
                           {"dataset_version": version})
    registry.set_alias("pets", "production", mv.version)

    config = ChallengerConfig(max_overall_drop=1.0, max_reference_drop=1.0,
                              min_recent_images=1, max_context_drop=0.02)
    out = challenger.evaluate_challenger(str(tmp_path / "ch"), str(test_dir), GATE, config,
                                         registry.uri, "pets", use_shards=False)
    gate = out["gate"]
    by_context = gate["contexts"]
    assert by_context["day"]["images"] == len(day_test)
    assert by_context["night"]["images"] == len(night_test)
    day = by_context["day"]
    assert day["judged"] and day["champion"] - day["challenger"] > 0.02, by_context
    assert not gate["blessed"]
    day_reasons = [r for r in gate["reasons"] if "on day images" in r]
    assert day_reasons and f"{len(day_test)} day test images" in day_reasons[0]
    assert not any("on night images" in r for r in gate["reasons"]), gate["reasons"]
    assert "Accuracy by context" in out["report_html"]
    json.dumps(gate)  # serialisable for the evaluation artifact
