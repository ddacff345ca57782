"""The drift tests compare a window with the reference's images in the training split's class
shares: a held-out sample's chance class mix is not a change of the camera."""

from __future__ import annotations

import datetime as dt

import numpy as np

from components.monitor import checks as C
from components.monitor.contract import Reference
from components.monitor.window import Window

T = dt.datetime(2026, 11, 18, tzinfo=dt.UTC)


def _draw(rng, labels):
    """Embeddings of two classes that the model separates (as a trained model's do)."""
    centre = {"cats": np.zeros(8), "dogs": np.r_[np.full(4, 3.0), np.zeros(4)]}
    return np.stack([centre[c] + rng.normal(0, 1, 8) for c in labels]).astype(np.float32)


def _reference(rng, labels):
    return Reference(model="pets", model_version="1", classes=["cats", "dogs"],
                     prior={"cats": 0.49, "dogs": 0.51}, embeddings=_draw(rng, labels),
                     stats={}, labels=labels, contexts=["day"] * len(labels))


def test_at_prior_keeps_the_training_split_shares_in_content_hash_order():
    rng = np.random.default_rng(0)
    labels = ["dogs"] * 76 + ["cats"] * 47  # 62% dogs: the test split's luck
    labels = [labels[i] for i in rng.permutation(len(labels))]
    ref = _reference(rng, labels)
    sub = ref.at_prior()
    assert sub.labels.count("cats") == 47  # the scarcer class is kept whole
    assert sub.labels.count("dogs") == 48  # floor(0.51 * 47 / 0.49)
    # The first of each class in the sample's order, with their own embeddings.
    first_dogs = [i for i, c in enumerate(labels) if c == "dogs"][:48]
    kept = [i for i, c in enumerate(labels) if c == "cats" or i in first_dogs]
    assert np.array_equal(sub.embeddings, ref.embeddings[kept])
    assert sub.contexts == ["day"] * 95 and sub.detector_uri == ""
    # Without labels there is nothing to match: the reference as it is.
    unlabelled = Reference(model="pets", model_version="1", classes=["cats", "dogs"],
                           prior=ref.prior, embeddings=ref.embeddings, stats={})
    assert unlabelled.at_prior() is unlabelled


def test_a_window_in_the_usual_mix_is_quiet_against_an_unlucky_reference_in_the_prior():
    """Windows of 300 requests in the camera's usual 50/50 mix, from the very population of the reference:
    against the unlucky sample as it is the MMD test alarms on a third of them; against it in
    the training split's shares it alarms on few (5% is the test's level)."""
    cfg = C.MonitorConfig()
    alarms = {"as is": 0, "at prior": 0}
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        ref = _reference(rng, ["dogs"] * 76 + ["cats"] * 47)
        records = [{"embedding": e.tolist(), "stats": {}}
                   for e in _draw(rng, ["cats", "dogs"] * 150)]
        win = Window("pets", T, T, "1", records=records)
        for name, against in (("as is", ref), ("at prior", ref.at_prior())):
            check = C.embedding_drift(win, against, cfg, "torch")[0]
            alarms[name] += check.status == "alarm"
    assert alarms["as is"] >= 4 and alarms["at prior"] <= 1, alarms  # of 20 (6 and 0 here)
