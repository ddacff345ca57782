"""The recall-gap check alarms on a gap the labels show with confidence, not on noise."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pytest

from components.monitor.checks import MonitorConfig, gap_lower_bound, performance
from components.monitor.window import Window


def _window(per_class: int, cat_recall: float, dog_recall: float) -> Window:
    records = []
    for truth, recall, other in (("cats", cat_recall, "dogs"), ("dogs", dog_recall, "cats")):
        right = round(per_class * recall)
        for i in range(per_class):
            label = truth if i < right else other
            records.append({"label": label, "true_label": truth,
                            "probabilities": {truth: 0.9, other: 0.1} if label == truth
                            else {truth: 0.1, other: 0.9}})
    now = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    return Window(model="pet-classifier", start=now, end=now, model_version="1",
                  records=records)


def _reference() -> SimpleNamespace:
    rng = np.random.default_rng(0)
    labels = ["cats", "dogs"] * 100
    probs = np.array([[0.95, 0.05] if t == "cats" else [0.05, 0.95] for t in labels])
    probs = np.abs(probs + rng.normal(0, 0.01, probs.shape))
    return SimpleNamespace(classes=["cats", "dogs"], labels=labels, probabilities=probs,
                           prior={"cats": 0.5, "dogs": 0.5})


@pytest.mark.parametrize("per_class, cats, dogs, expected", [
    (28, 0.95, 0.84, "warning"),   # 0.11 on 28 labels a class: could be noise
    (200, 0.95, 0.75, "alarm"),    # 0.20 on 200 a class: certainly above 0.10
    (200, 0.95, 0.93, "ok"),
])
def test_recall_gap_alarms_only_when_the_labels_are_sure(per_class, cats, dogs, expected):
    checks = {c.name: c for c in performance(_window(per_class, cats, dogs), _reference(),
                                             MonitorConfig())}
    gap = checks["performance.recall_gap"]
    assert gap.status == expected, gap.detail
    assert gap.value == pytest.approx(round(per_class * cats) / per_class
                                      - round(per_class * dogs) / per_class, abs=1e-6)


def test_gap_lower_bound_is_newcombes_hybrid_score_interval():
    # Newcombe (1998), table II example (56/70 vs 48/80): 95% two-sided interval
    # 0.0524 to 0.3339 for the difference 0.2.
    assert gap_lower_bound((56, 70), (48, 80), z=1.959964) == pytest.approx(0.0524, abs=5e-4)
    assert gap_lower_bound((10, 10), (0, 0)) == -1.0
