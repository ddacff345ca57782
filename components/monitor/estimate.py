"""Label-free accuracy: confidence-based performance estimation (CBPE), and when not to trust it.

Between labels, a window's accuracy is estimated from the model's own probabilities once they
are calibrated on the reference, a labelled sample the model never chose anything on. The
method is NannyML's CBPE (NannyML 0.13.1, ``nannyml/performance_estimation/confidence_based``
and ``nannyml/calibration.py``), rule for rule:

* **One calibrator per class** (``cbpe.py:539-553`` ``_fit_calibrators``): class ``c``'s
  probability against "the true class is ``c``", by isotonic regression (increasing, clipped
  outside the reference's range; ``calibration.py:120-149``). A two-class model has one
  calibrator, on the second class's probability (``cbpe.py:434-468`` ``_fit_binary``).
* **Calibrate only where it helps** (``calibration.py:226-328`` ``needs_calibration``): not
  when the reference holds one value of the target (``:289``), not when the probability
  already ranks the reference almost perfectly (ROC AUC > 0.999, ``:292``), and otherwise
  only when the expected calibration error of ten 90/10 stratified shuffle splits
  (``random_state=42``, ``:295``) is lower after isotonic calibration than before. A class that
  does not need it keeps its raw probability.
* **Multi-class probabilities renormalised** after calibration, uniform where every
  calibrated probability is 0 (``cbpe.py:556-579``).
* **Accuracy = the mean probability that the prediction is right**: the calibrated
  probability of the predicted class (``metrics.py:2999-3021``); for two classes
  ``p`` where the second class was predicted and ``1 - p`` where the first was
  (``metrics.py:1320-1343``). Its sampling error is the reference's standard deviation of
  right/wrong over the square root of the window's size (``sampling_error/
  binary_classification.py:345-384``).

CBPE assumes that the reference's relation between each class's probability and that class
being the true one still holds in the window. Under covariate shift it may not. The
reference's predictions of one class are typically right almost every time, and its
calibrator learns that; on shifted images (the sample lake's night, darkened and blurred
ones) that class's predictions lose much of their reliability and CBPE overstates them, by
0.06 to 0.35 of the class's share of right predictions, while it may understate the other
class (docs/benchmarks.md, "Label-free accuracy estimate", per-class errors). Whether the two
cancel depends on the model: on one model's blurred windows CBPE's total is off by +0.004, on
another of the same recipe by +0.07. Beside it the monitor computes Average Thresholded
Confidence (ATC; Garg et al., "Leveraging Unlabeled Data to Predict Out-of-Distribution
Performance", ICLR 2022): the threshold ``t`` at which the share of reference predictions
more confident than ``t`` equals the reference's accuracy; the window's estimate is its share
more confident than ``t``. Where the confidence of a window falls, ATC falls faster than
CBPE's calibrated mean: it stays closer where CBPE overstates, understates where CBPE is
right (by 0.02 on the first model's blurred windows), and is the noisier of the two (a 0/1
count per prediction). Without labels the two cases look alike, so the estimate the check
reports is the lower of the two (a monitor that should warn errs on the side of warning; with
no shift the two agree within their sampling error), and both are in its evidence. A rule
that kept CBPE while the window's predicted class mix holds was measured and rejected: it
misses blurred windows whose class mix holds and whose accuracy CBPE overstates.

What NannyML leaves to its user, the monitor says itself: an estimate is only as good as the
reference it was calibrated on. :func:`fit` lists the reasons not to trust it (too few labelled
reference predictions, too few wrong ones to learn what the model's confidence looks like when
it is wrong, confidence that does not tell right from wrong on the reference), and the check
reports ``unknown`` (or a warning if even the untrusted estimate is below the floor) instead
of "ok".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from components.common.errors import UserError

#: Fewest labelled reference predictions to calibrate on.
MIN_REFERENCE = 200
#: Fewest wrong reference predictions: with fewer, nothing says how confident the model is
#: when it is wrong, which is what a window whose accuracy fell is made of.
MIN_ERRORS = 10
#: Least ROC AUC of the reference's confidence for its right against its wrong predictions.
MIN_SEPARATION = 0.6
#: NannyML's ROC AUC above which a probability needs no calibration (calibration.py:292).
NO_CALIBRATION_AUC = 0.999
#: NannyML's equal-count bins of the expected calibration error and its shuffle splits.
ECE_BINS, ECE_SPLITS, ECE_TEST_SIZE, ECE_SEED = 10, 10, 0.1, 42

METHOD = ("the lower of CBPE (isotonic calibration per class on the reference, NannyML's "
          "rules) and ATC (average thresholded confidence)")


class EstimateError(UserError, ValueError):
    """Reference predictions and labels that cannot be calibrated at all (shapes, classes)."""


def _isotonic():
    from sklearn.isotonic import IsotonicRegression  # deferred: sklearn's import is heavy

    return IsotonicRegression(out_of_bounds="clip", increasing=True)


def _bin_edges(length: int, bins: int) -> list[tuple[int, int]]:
    """Equal-count bins over ``length`` sorted values (NannyML calibration.py:164-199)."""
    if length <= 2 * bins:
        bins = length // 2
        if bins < 2:
            raise EstimateError(f"cannot split {length} values into two bins")
    width = length // bins
    edges = np.asarray(range(0, length + 1, width))
    edges[-1] = length
    return list(zip(edges[:-1], edges[1:], strict=True))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, edges) -> float:
    """Weighted mean |mean(p) - mean(y)| over equal-count bins of sorted ``p``
    (NannyML calibration.py:202-223)."""
    order = np.argsort(p, kind="quicksort")
    p, y = np.asarray(p, float)[order], np.asarray(y, float)[order]
    return float(sum((hi - lo) / len(p) * abs(p[lo:hi].mean() - y[lo:hi].mean())
                     for lo, hi in edges))


def needs_calibration(y: np.ndarray, p: np.ndarray) -> bool:
    """Whether isotonic calibration lowers the expected calibration error of ``p`` for the
    binary target ``y`` in a cross-validation (NannyML calibration.py:226-328)."""
    from sklearn.metrics import roc_auc_score  # deferred: sklearn's import is heavy
    from sklearn.model_selection import StratifiedShuffleSplit

    y, p = np.asarray(y), np.asarray(p, float)
    if len(np.unique(y)) == 1:
        return False
    if roc_auc_score(y, p) > NO_CALIBRATION_AUC:
        return False
    splits = StratifiedShuffleSplit(n_splits=ECE_SPLITS, test_size=ECE_TEST_SIZE,
                                    random_state=ECE_SEED)
    truth, raw, calibrated = [], [], []
    for train, test in splits.split(p, y):
        iso = _isotonic().fit(p[train], y[train])
        truth.append(y[test])
        raw.append(p[test])
        calibrated.append(iso.predict(p[test]))
    truth, raw, calibrated = (np.concatenate(a) for a in (truth, raw, calibrated))
    edges = _bin_edges(len(raw), ECE_BINS)
    return expected_calibration_error(truth, raw, edges) > \
        expected_calibration_error(truth, calibrated, edges)


@dataclass(frozen=True)
class Calibration:
    """What the reference says about the model's probabilities.

    Attributes:
        classes: The model's classes, in output order.
        calibrators: One per calibrated score: for two classes one (the second class's
            probability), else one per class; ``None`` where the score needs no calibration.
        n_reference: Labelled reference predictions it was fitted on.
        n_errors: How many of them were wrong.
        reference_accuracy: Their accuracy.
        reference_std: Standard deviation of right (1) / wrong (0) on the reference.
        separation: ROC AUC of the reference's confidence (the predicted class's
            probability) for its right against its wrong predictions (None without both).
        confidence_range: Lowest and highest reference confidence.
        atc_threshold: ATC's confidence threshold: the reference's share of predictions more
            confident than it (plus ``atc_tie_weight`` of those exactly at it, so that a
            saturated confidence of 1.0 still counts) is the reference's accuracy.
        atc_tie_weight: See ``atc_threshold``.
        problems: Why the estimate cannot be trusted, in words; empty when it can.
    """

    classes: tuple[str, ...]
    calibrators: tuple
    n_reference: int
    n_errors: int
    reference_accuracy: float
    reference_std: float
    separation: float | None
    confidence_range: tuple[float, float]
    atc_threshold: float
    atc_tie_weight: float
    problems: tuple[str, ...] = field(default=())

    @property
    def trusted(self) -> bool:
        return not self.problems

    @property
    def calibrated(self) -> list[bool]:
        return [c is not None for c in self.calibrators]

    def probabilities(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities ``[n, classes]`` of raw ones."""
        probs = np.asarray(probs, float)
        if len(self.classes) == 2:
            cal = self.calibrators[0]
            p1 = cal.predict(probs[:, 1]) if cal is not None else probs[:, 1]
            return np.column_stack([1.0 - p1, p1])
        out = np.column_stack([cal.predict(probs[:, j]) if cal is not None else probs[:, j]
                               for j, cal in enumerate(self.calibrators)])
        total = out.sum(1, keepdims=True)
        uniform = np.full_like(out, 1.0 / out.shape[1])
        return np.divide(out, total, out=uniform, where=total != 0)

    def right(self, probs: np.ndarray) -> np.ndarray:
        """Each prediction's calibrated probability of being right (the predicted class is
        the raw probabilities' argmax, as the predictor answers)."""
        probs = np.asarray(probs, float)
        if not len(probs):
            return np.zeros(0)
        predicted = probs.argmax(1)
        return self.probabilities(probs)[np.arange(len(probs)), predicted]


@dataclass(frozen=True)
class Estimate:
    """The estimated accuracy of a window.

    Attributes:
        accuracy: The estimate: the lower of ``cbpe`` and ``atc``.
        cbpe: Mean calibrated probability that a prediction is right (NannyML's CBPE).
        atc: Share of the window more confident than the ATC threshold.
        sampling_error: The reference's standard deviation over the root of the window size.
        n: Predictions in the window.
        mean_confidence: Mean raw confidence (the predicted class's probability).
        below_reference: Share of the window less confident than every reference prediction
            (where the calibration holds its lowest value: extrapolated).
    """

    accuracy: float
    cbpe: float
    atc: float
    sampling_error: float
    n: int
    mean_confidence: float
    below_reference: float


def fit(probabilities, labels, classes, *, min_reference: int = MIN_REFERENCE,
        min_errors: int = MIN_ERRORS, min_separation: float = MIN_SEPARATION) -> Calibration:
    """Calibrates the model's probabilities on a labelled reference.

    Args:
        probabilities: ``[n, classes]`` the model's probabilities on the reference.
        labels: The reference's true classes (names from ``classes``).
        classes: The model's classes, in output order.
        min_reference: Fewer labelled predictions than this: not trusted.
        min_errors: Fewer wrong predictions than this: not trusted.
        min_separation: Confidence whose ROC AUC for right against wrong is below this:
            not trusted.

    Raises:
        EstimateError: Shapes that do not match, or a label that is not a class.
    """
    from sklearn.metrics import roc_auc_score  # deferred: sklearn's import is heavy

    classes = tuple(str(c) for c in classes)
    probs = np.asarray(probabilities, float)
    labels = [str(t) for t in labels]
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(classes) < 2:
        raise EstimateError(f"Reference probabilities of shape {probs.shape} do not match "
                            f"{len(classes)} classes {list(classes)}.")
    if len(labels) != len(probs):
        raise EstimateError(f"{len(labels)} reference labels for {len(probs)} predictions: "
                            "rebuild the reference (mlops monitor reference).")
    strange = sorted(set(labels) - set(classes))
    if strange:
        raise EstimateError(f"Reference labels {strange} are not classes of the model "
                            f"{list(classes)}.")
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index[t] for t in labels], int)
    n = len(truth)
    right = (probs.argmax(1) == truth) if n else np.zeros(0, bool)
    errors = int(n - right.sum())
    confidence = probs.max(1) if n else np.zeros(0)
    problems = []
    if n < min_reference:
        problems.append(f"only {n} labelled reference predictions (< {min_reference}) to "
                        "calibrate on")
    if errors < min_errors:
        problems.append(f"the reference has {errors} wrong predictions (< {min_errors}): too "
                        "few to learn how confident the model is when it is wrong")
    separation = None
    if 0 < errors < n:
        separation = float(roc_auc_score(right.astype(int), confidence))
        if separation < min_separation:
            problems.append(f"confidence does not separate right from wrong predictions on "
                            f"the reference (ROC AUC {separation:.2f} < {min_separation})")
    scores = [(probs[:, 1], truth == 1)] if len(classes) == 2 else \
        [(probs[:, j], truth == j) for j in range(len(classes))]
    calibrators = []
    for j, (p, y) in enumerate(scores):
        try:
            needed = n > 0 and needs_calibration(y.astype(int), p)
        except (ValueError, EstimateError) as exc:  # a class too rare to split on
            name = classes[1] if len(classes) == 2 else classes[j]
            problems.append(f"cannot test the calibration of {name} ({exc})")
            needed = False
        calibrators.append(_isotonic().fit(p, y.astype(int)) if needed else None)
    accuracy = float(right.mean()) if n else 0.0
    threshold, tie_weight = _atc_threshold(confidence, accuracy)
    return Calibration(classes, tuple(calibrators), n, errors, accuracy,
                       float(right.std()) if n else 0.0, separation,
                       (float(confidence.min()), float(confidence.max())) if n else (0.0, 1.0),
                       threshold, tie_weight, tuple(problems))


def _atc_threshold(confidence: np.ndarray, accuracy: float) -> tuple[float, float]:
    """(t, w) with share(confidence > t) + w * share(confidence == t) = accuracy: the
    reference's (1 - accuracy)-quantile of confidence, ties at it counted in part."""
    if not len(confidence):
        return 1.0, 0.0
    t = float(np.quantile(confidence, 1.0 - accuracy, method="inverted_cdf"))
    above, at = float((confidence > t).mean()), float((confidence == t).mean())
    weight = min(max((accuracy - above) / at, 0.0), 1.0) if at else 0.0
    return t, weight


def atc(calibration: Calibration, confidence: np.ndarray) -> float:
    """ATC's estimate: the share of ``confidence`` above the reference's threshold."""
    t = calibration.atc_threshold
    return float((confidence > t).mean() + calibration.atc_tie_weight * (confidence == t).mean())


def estimate(calibration: Calibration, probabilities) -> Estimate:
    """The estimated accuracy of a window's predictions under ``calibration``."""
    probs = np.asarray(probabilities, float)
    if probs.ndim != 2 or probs.shape[1] != len(calibration.classes):
        raise EstimateError(f"Window probabilities of shape {probs.shape} do not match the "
                            f"reference's {len(calibration.classes)} classes.")
    n = len(probs)
    if not n:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0, math.nan, 0.0)
    confidence = probs.max(1)
    cbpe = float(calibration.right(probs).mean())
    thresholded = atc(calibration, confidence)
    return Estimate(accuracy=min(cbpe, thresholded), cbpe=cbpe, atc=thresholded,
                    sampling_error=calibration.reference_std / math.sqrt(n), n=n,
                    mean_confidence=float(confidence.mean()),
                    below_reference=float((confidence < calibration.confidence_range[0]).mean()))
