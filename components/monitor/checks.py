"""The checks of one monitoring window, each a :class:`~components.monitor.contract.Check`.

Every function takes the window (and the reference where it compares) and returns checks in
the one shape the verdict, the report, the history and governance share. A check that cannot
be measured in this window (too few requests, no labels, no telemetry) says ``unknown`` with
the reason, never a made-up value.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from components.common.images import DEFAULT_CONTEXTS, ContextRejected, parse_contexts
from components.monitor import estimate
from components.monitor.contract import STAT_FIELDS, Check, Reference
from components.monitor.drift import make_detector
from components.monitor.window import Window, mode_counts

logger = logging.getLogger(__name__)

#: The statistics the KS test compares (width and height are judged by the range check).
DRIFT_STATS = ("brightness", "contrast", "sharpness", "width", "height")


@dataclass(frozen=True)
class MonitorConfig:
    """Thresholds of the checks.

    Attributes:
        p_val: Significance level of the drift tests (family-wise for the statistics).
        correction: Multiple-testing correction of the per-statistic tests
            (``bonferroni`` or ``fdr``).
        n_permutations: Permutations of the MMD test.
        min_requests: Fewer usable records than this: drift and prediction-drift checks are
            ``unknown`` (too few to test) and the traffic check warns.
        max_drift_samples: Largest window sample the MMD test uses (a uniform sample of
            the window beyond it; the kernel matrix grows with the square).
        max_bad_share: Share of unusable records (parse errors, truncated, missing fields)
            above which integrity is alarmed; any unusable record is a warning.
        max_out_of_range: Share of inputs outside the training range of a statistic.
        range_margin: The training range of a statistic is the reference sample's
            [min, max] widened by this share of its span on each side (a small sample's
            extremes understate the population's).
        max_unknown_mode: Share of inputs in an image mode never seen in training.
        max_undecodable: Share of requests the predictor refused as undecodable (HTTP 400).
        max_junk_share: Share of captured inputs that are junk (blank, uniform noise, too
            small: ``components.common.images.JUNK_REASONS``) above which integrity is
            alarmed. Junk never enters drift, class shares or performance.
        max_share_shift: Largest change of a predicted class share against the training
            prior before a significant prediction drift is an alarm.
        max_accuracy_drop: Accuracy below the reference's by more than this is a problem.
        min_accuracy: The floor used when the reference has no labelled sample.
        max_recall_gap: Largest per-class recall difference (the training gate's bias
            limit).
        min_labels: Fewer labelled requests than this: measured performance is unknown.
        min_reference: Fewer labelled reference predictions than this: the accuracy
            estimate is not trusted (``unknown``, or a warning below the floor).
        min_reference_errors: Fewer wrong reference predictions than this: likewise.
        min_separation: Least ROC AUC of the reference's confidence for its right against
            its wrong predictions; below it, likewise.
        max_error_rate: Server error rate (HTTP 500 among answered requests).
        p95_slo_ms: Latency objective for the 95th percentile.
        contexts: The deployment's operating conditions, the default first
            (``components.common.images``: the park's ``day`` and ``night``); each context's
            part of a window is judged against the reference's images of that context.
    """

    p_val: float = 0.05
    correction: str = "bonferroni"
    n_permutations: int = 100
    min_requests: int = 30
    max_drift_samples: int = 2000
    max_bad_share: float = 0.01
    max_out_of_range: float = 0.05
    range_margin: float = 0.10
    max_unknown_mode: float = 0.01
    max_undecodable: float = 0.05
    max_junk_share: float = 0.05
    max_share_shift: float = 0.10
    max_accuracy_drop: float = 0.05
    min_accuracy: float = 0.80
    max_recall_gap: float = 0.10
    min_labels: int = 20
    min_reference: int = estimate.MIN_REFERENCE
    min_reference_errors: int = estimate.MIN_ERRORS
    min_separation: float = estimate.MIN_SEPARATION
    max_error_rate: float = 0.01
    p95_slo_ms: float = 250.0
    contexts: tuple = DEFAULT_CONTEXTS

    def __post_init__(self):
        try:
            object.__setattr__(self, "contexts", parse_contexts(self.contexts))
        except ContextRejected as exc:
            raise ValueError(f"Invalid monitoring setting contexts: {exc}") from exc

    @classmethod
    def from_dict(cls, values: dict | None) -> MonitorConfig:
        from dataclasses import fields

        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown monitoring settings: {sorted(unknown)}. Expect some of "
                             f"{sorted(known)}.")
        for f in fields(cls):  # a number where a number goes, before any check compares it
            default, value = f.default, values.get(f.name)
            if f.name not in values or isinstance(default, bool) or \
                    not isinstance(default, int | float):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    (type(default) is int and not float(value).is_integer()):
                kind = "a whole number" if type(default) is int else "a number"
                raise ValueError(f"Invalid monitoring setting {f.name}: {value!r}. Expect "
                                 f"{kind} (default {default}).")
        return cls(**values)


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}" if abs(v) < 1e-3 and v else \
        f"{v:.{digits}f}"


# --------------------------------------------------------------------------------------------
# Traffic and integrity
# --------------------------------------------------------------------------------------------


def traffic(win: Window, cfg: MonitorConfig) -> list[Check]:
    n = len(win)
    hours = (win.end - win.start).total_seconds() / 3600
    extra = {"n": n, "hours": round(hours, 3), "other_versions": win.other_versions,
             "files": win.files}
    if n == 0:
        return [Check("traffic.requests", "traffic", 0, cfg.min_requests, "unknown",
                      "no traffic: no captured requests of this version in the window "
                      "(production writes its captures every 500 records or 60 s: requests "
                      "of the last minute may not be written yet)", "",
                      extra)]
    status = "ok" if n >= cfg.min_requests else "warning"
    detail = (f"{n} captured requests in {hours:.1f} h" if status == "ok" else
              f"only {n} captured requests (< {cfg.min_requests}): too few for drift tests")
    return [Check("traffic.requests", "traffic", n, cfg.min_requests, status, detail, "", extra)]


def _share_check(name, kind, share, threshold, detail, extra, *, any_is_warning=False) -> Check:
    if share is None:
        return Check(name, kind, None, threshold, "unknown", detail, "", extra)
    if share > threshold:
        status = "alarm"
    elif any_is_warning and share > 0:
        status = "warning"
    else:
        status = "ok"
    return Check(name, kind, round(float(share), 6), threshold, status, detail, "", extra)


def integrity(win: Window, ref: Reference | None, cfg: MonitorConfig,
              telemetry: dict | None = None) -> list[Check]:
    """Unusable records, inputs outside the training ranges, unknown modes, undecodable
    requests."""
    checks = []
    seen = len(win) + win.bad_records + sum(win.other_versions.values())
    bad = win.bad_records
    bad_share = bad / seen if seen else (1.0 if bad else 0.0)
    kinds = {k: v for k, v in win.problems.items() if v}
    listed = ", ".join(f"{k} {v}" for k, v in kinds.items())
    detail = "every record parsed" if not bad else f"{bad} of {seen} records unusable ({listed})"
    checks.append(_share_check("integrity.bad_records", "integrity", bad_share,
                               cfg.max_bad_share, detail,
                               {"counts": win.problems, "examples": win.examples, "seen": seen},
                               any_is_warning=True))
    foreign = win.problems["foreign"]
    checks.append(Check("integrity.foreign", "integrity", foreign, 0,
                        "warning" if foreign else "ok",
                        f"{foreign} records or files of something else in the capture store"
                        if foreign else "no foreign records", "",
                        {"examples": win.examples.get("foreign", [])}))
    checks.append(_junk_check(win, cfg))
    if ref is not None and len(win):
        checks += inputs(win, ref, cfg)
    if telemetry is not None and telemetry.get("requests"):
        share = telemetry["bad_request_share"]
        checks.append(_share_check(
            "integrity.undecodable", "integrity", share, cfg.max_undecodable,
            f"{telemetry['bad_requests']} of {telemetry['requests']} requests refused as "
            "unusable input (HTTP 400)", {"invalid": telemetry["bad_requests"],
                                          "requests": telemetry["requests"]}))
    else:
        checks.append(Check("integrity.undecodable", "integrity", None, cfg.max_undecodable,
                            "unknown", "the predictor's metrics were not read in this window "
                            "(see telemetry.request_rate)", "", {}))
    return checks


def _junk_check(win: Window, cfg: MonitorConfig) -> Check:
    junk = win.n_junk
    seen = len(win) + junk
    kinds = {k: v for k, v in win.junk.items() if v}
    detail = (f"{junk} of {seen} inputs are junk ({', '.join(f'{k} {v}' for k, v in kinds.items())})"
              ", left out of drift, class shares and performance" if junk else
              "no junk inputs (blank frames, uniform noise, images too small)")
    return _share_check("integrity.junk_inputs", "integrity", junk / seen if seen else None,
                        cfg.max_junk_share, detail if seen else "no captured inputs",
                        {"counts": dict(win.junk), "examples": win.junk_examples, "seen": seen},
                        any_is_warning=False)


def _left_out(win: Window) -> str:
    """What the window's drift and share checks say about the junk they did not see."""
    return f"; {win.n_junk} junk inputs left out" if win.n_junk else ""
def inputs(win: Window, ref: Reference, cfg: MonitorConfig) -> list[Check]:
    """The window's inputs against the reference's: statistics outside the training
    ranges, image modes never seen in training."""
    return [_range_check(win, ref, cfg), _mode_check(win, ref, cfg)]


def _range_check(win: Window, ref: Reference, cfg: MonitorConfig) -> Check:
    names = [s for s in STAT_FIELDS if ref.stats.get(s)]
    x = win.stats(names)
    per_stat, outside_any = {}, np.zeros(len(win), bool)
    for j, name in enumerate(names):
        r = np.asarray(ref.stats[name], dtype=float)
        lo, hi = float(np.nanmin(r)), float(np.nanmax(r))
        lo, hi = lo - cfg.range_margin * (hi - lo), hi + cfg.range_margin * (hi - lo)
        col = x[:, j]
        out = ~np.isnan(col) & ((col < lo) | (col > hi))
        outside_any |= out
        per_stat[name] = {"share": round(float(out.mean()), 6), "min": lo, "max": hi,
                          "window_min": float(np.nanmin(col)) if np.isfinite(col).any() else None,
                          "window_max": float(np.nanmax(col)) if np.isfinite(col).any() else None}
    worst = max(per_stat, key=lambda k: per_stat[k]["share"]) if per_stat else None
    share = per_stat[worst]["share"] if worst else 0.0
    moved = [k for k, v in per_stat.items() if v["share"] > cfg.max_out_of_range]
    listed = ", ".join(f"{k} {per_stat[k]['share']:.0%}" for k in moved)
    detail = (f"inputs outside the training range: {listed}" if moved else
              f"at most {share:.1%} of inputs outside a training range ({worst})")
    return _share_check("integrity.out_of_range", "integrity", share, cfg.max_out_of_range,
                        detail, {"per_stat": per_stat, "outside_any": round(float(outside_any.mean()), 6),
                         "moved": moved})


def _mode_check(win: Window, ref: Reference, cfg: MonitorConfig) -> Check:
    counts = mode_counts(win)
    known = {m for m, c in (ref.modes or {}).items() if c}
    if not known:
        return Check("integrity.image_modes", "integrity", None, cfg.max_unknown_mode, "unknown",
                     "the reference records no image modes", "", {"window": dict(counts)})
    unknown = {m: c for m, c in counts.items() if m not in known}
    share = sum(unknown.values()) / len(win)
    detail = (f"{share:.1%} of inputs in modes never seen in training: {unknown}" if unknown
              else f"every input in a training mode ({', '.join(sorted(known))})")
    return _share_check("integrity.image_modes", "integrity", share, cfg.max_unknown_mode,
                        detail, {"window": dict(counts), "reference": dict(ref.modes)})


# --------------------------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------------------------


def _sample(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    if len(x) <= k:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), k, replace=False))]


def embedding_drift(win: Window, ref: Reference, cfg: MonitorConfig, backend: str,
                    detector=None) -> list[Check]:
    """MMD two-sample test of the window's embeddings against the reference's."""
    name = "drift.embedding"
    if len(win) < cfg.min_requests:
        return [Check(name, "drift", None, cfg.p_val, "unknown",
                      f"{len(win)} requests: too few to test (< {cfg.min_requests})", "", {})]
    x = _sample(win.embeddings(), cfg.max_drift_samples)
    ref_x = np.asarray(ref.embeddings, dtype=np.float32)
    if x.shape[1] != ref_x.shape[1]:
        return [Check(name, "drift", None, cfg.p_val, "unknown",
                      f"window embeddings have {x.shape[1]} values, the reference "
                      f"{ref_x.shape[1]}: they come from different models", "", {})]
    det = detector or make_detector("mmd", ref_x, backend=backend, p_val=cfg.p_val,
                                    n_permutations=cfg.n_permutations)
    out = det.predict(x)
    d = out["data"]
    drifted = bool(d["is_drift"])
    detail = (f"p={d['p_val']:.4f} < {d['threshold']}: the embeddings moved (MMD² "
              f"{d['distance']:.2e})" if drifted else
              f"p={d['p_val']:.4f} ≥ {d['threshold']}: no embedding drift") + _left_out(win)
    return [Check(name, "drift", round(float(d["p_val"]), 6), float(d["threshold"]),
                  "alarm" if drifted else "ok", detail, "",
                  {"p_val": float(d["p_val"]), "distance": float(d["distance"]),
                   "distance_threshold": d.get("distance_threshold"), "is_drift": int(drifted),
                   "backend": out["meta"]["backend"], "n": len(x), "n_ref": len(ref_x),
                   "junk_left_out": win.n_junk})]


def statistics_drift(win: Window, ref: Reference, cfg: MonitorConfig, backend: str,
                     detector=None) -> list[Check]:
    """Per-statistic KS tests with a multiple-testing correction; names what moved."""
    name = "drift.statistics"
    names = [s for s in DRIFT_STATS if ref.stats.get(s)]
    if len(win) < cfg.min_requests:
        return [Check(name, "drift", None, cfg.p_val, "unknown",
                      f"{len(win)} requests: too few to test (< {cfg.min_requests})", "", {})]
    x = win.stats(names)
    keep = ~np.isnan(x).any(axis=1)
    if keep.sum() < cfg.min_requests:
        return [Check(name, "drift", None, cfg.p_val, "unknown",
                      "too few records carry every statistic", "", {})]
    ref_x = np.column_stack([np.asarray(ref.stats[s], dtype=float) for s in names])
    x = x[keep]
    # A statistic with one and the same value in the reference and the window (every image
    # 64x64) carries no information; testing it would only tighten the correction.
    informative = [j for j in range(len(names))
                   if not (np.ptp(ref_x[:, j]) == 0 and np.all(x[:, j] == ref_x[0, j]))]
    names = [names[j] for j in informative]
    ref_x, x = ref_x[:, informative], x[:, informative]
    if not names:
        return [Check(name, "drift", 1.0, cfg.p_val, "ok",
                      "every statistic is constant and equal to the reference's", "", {})]
    det = detector or make_detector("ks", ref_x, backend=backend, p_val=cfg.p_val,
                                    correction=cfg.correction, names=names)
    out = det.predict(x)
    d = out["data"]
    p = dict(zip(names, d["p_val"], strict=True))
    dist = dict(zip(names, d["distance"], strict=True))
    moved = d["drifted"]
    detail = (f"moved: {', '.join(f'{m} (p={p[m]:.1e}, KS {dist[m]:.2f})' for m in moved)}"
              if moved else f"no statistic moved (smallest p={min(p.values()):.3f} ≥ "
              f"{d['threshold']:.4f} after {cfg.correction})") + _left_out(win)
    return [Check(name, "drift", round(float(min(p.values())), 8), float(d["threshold"]),
                  "alarm" if moved else "ok", detail, "",
                  {"p_val": p, "distance": dist, "drifted": moved, "is_drift": int(bool(moved)),
                   "correction": cfg.correction, "backend": out["meta"]["backend"],
                   "n": len(x), "n_ref": len(ref_x), "junk_left_out": win.n_junk})]


def prediction_drift(win: Window, ref: Reference, cfg: MonitorConfig) -> list[Check]:
    """Predicted class shares of the window against what the model predicted on the
    reference sample (a chi-square test of homogeneity of the two samples' counts, so the
    reference's own sampling noise is accounted for), with the training prior beside them.

    The baseline is the model's own predictions on held-out data (the test split, in the
    training split's class shares: the monitor passes ``Reference.at_prior``), not the label
    prior: a model that already called 55% of a balanced test set dogs has not drifted when it
    does so in production. Without reference probabilities the prior is the baseline (a
    goodness-of-fit test).
    """
    from scipy.stats import chi2_contingency, chisquare

    name = "prediction_drift.class_shares"
    classes = list(ref.classes)
    predicted = win.predicted()
    counts = np.array([sum(1 for p in predicted if p == c) for c in classes], float)
    n = counts.sum()
    prior = np.array([float(ref.prior.get(c, 0.0)) for c in classes])
    if len(win) < cfg.min_requests or n == 0 or prior.sum() <= 0:
        return [Check(name, "prediction_drift", None, cfg.max_share_shift, "unknown",
                      f"{len(win)} requests: too few to test (< {cfg.min_requests})", "", {})]
    prior = prior / prior.sum()
    shares = counts / n
    if ref.probabilities is not None and len(ref.probabilities):
        ref_pred = np.asarray(ref.probabilities, dtype=float).argmax(1)
        ref_counts = np.bincount(ref_pred, minlength=len(classes)).astype(float)
        baseline = ref_counts / ref_counts.sum()
        table = np.vstack([counts, ref_counts])
        used = table.sum(0) > 0
        p = (float(chi2_contingency(table[:, used]).pvalue) if used.sum() > 1 else 1.0)
        against = "the model's predictions on the reference sample"
    else:
        baseline = prior
        p = float(chisquare(counts, np.maximum(prior * n, 1e-9)).pvalue)
        against = "the training prior"
    diff = shares - baseline
    # The class that moved most; of equal moves (two classes always tie) the one that rose.
    worst = max(range(len(classes)), key=lambda i: (round(abs(float(diff[i])), 9), diff[i]))
    shift = float(abs(diff[worst]))
    significant = p < cfg.p_val
    status = ("alarm" if significant and shift >= cfg.max_share_shift else
              "warning" if significant else "ok")
    direction = "more" if diff[worst] > 0 else "fewer"
    detail = (f"{shares[worst]:.0%} predicted {classes[worst]} vs {baseline[worst]:.0%} on "
              f"the reference (training prior {prior[worst]:.0%}): {shift:.0%} {direction} "
              f"(chi² p={p:.1e})" if significant else
              f"class shares match {against} (chi² p={p:.3f})") + _left_out(win)
    return [Check(name, "prediction_drift", round(shift, 6), cfg.max_share_shift, status, detail,
                  "", {"shares": dict(zip(classes, shares.round(6).tolist(), strict=True)),
                       "prior": dict(zip(classes, prior.round(6).tolist(), strict=True)),
                       "baseline": dict(zip(classes, baseline.round(6).tolist(), strict=True)),
                       "baseline_from": against, "p_val": p, "n": int(n),
                       "class": classes[worst], "junk_left_out": win.n_junk})]


# --------------------------------------------------------------------------------------------
# Performance
# --------------------------------------------------------------------------------------------


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def gap_lower_bound(a: tuple[float, int], b: tuple[float, int], z: float = 1.645) -> float:
    """One-sided 95% lower bound of ``p_a - p_b`` for two proportions given as (successes,
    trials): Newcombe's hybrid score interval (Newcombe 1998, "Interval estimation for the
    difference between independent proportions", method 10), from each one's Wilson
    interval."""
    (sa, na), (sb, nb) = a, b
    if na == 0 or nb == 0:
        return -1.0
    pa, pb = sa / na, sb / nb
    low_a, _ = wilson(sa, na, z)
    _, high_b = wilson(sb, nb, z)
    return (pa - pb) - math.sqrt((pa - low_a) ** 2 + (high_b - pb) ** 2)


def per_class_metrics(y_true: list[str], y_pred: list[str], classes: list[str]) -> dict:
    out = {}
    for c in classes:
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        support = tp + fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / support if support else None
        f1 = (2 * precision * recall / (precision + recall)
              if recall is not None and precision + recall else 0.0)
        lo, hi = wilson(tp, support) if support else (None, None)
        out[c] = {"precision": round(precision, 6), "recall": None if recall is None else
                  round(recall, 6), "f1": round(f1, 6), "support": support,
                  "recall_ci": [lo, hi]}
    return out


def reference_accuracy(ref: Reference) -> float | None:
    if ref.probabilities is None or not ref.labels:
        return None
    probs = np.asarray(ref.probabilities, dtype=float)
    pred = [ref.classes[i] for i in probs.argmax(1)]
    return float(np.mean([p == t for p, t in zip(pred, ref.labels, strict=True)]))


def performance(win: Window, ref: Reference, cfg: MonitorConfig) -> list[Check]:
    """Measured performance where labels arrived; an estimate from confidence otherwise."""
    checks = []
    classes = list(ref.classes)
    ref_acc = reference_accuracy(ref)
    floor = (ref_acc - cfg.max_accuracy_drop) if ref_acc is not None else cfg.min_accuracy
    floor = round(floor, 6)
    labelled = [r for r in win.records if r.get("true_label") is not None]
    y_true = [r["true_label"] for r in labelled]
    y_pred = [r["label"] for r in labelled]
    n = len(labelled)
    if n >= cfg.min_labels:
        correct = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p)
        acc = correct / n
        lo, hi = wilson(correct, n)
        per_class = per_class_metrics(y_true, y_pred, classes)
        if hi < floor:  # confidently below the floor
            status = "alarm"
        elif acc < floor:
            status = "warning"
        else:
            status = "ok"
        detail = (f"accuracy {acc:.3f} (95% CI {lo:.3f}–{hi:.3f}) on {n} labelled requests; "
                  f"reference {_fmt(ref_acc)} on {len(ref.labels)} held-out images")
        checks.append(Check("performance.accuracy", "performance", round(acc, 6), floor, status,
                            detail, "", {"n_labelled": n, "ci_low": round(lo, 6),
                                         "ci_high": round(hi, 6), "per_class": per_class,
                                         "reference_accuracy": ref_acc, "estimated": False}))
        recalls = {c: v["recall"] for c, v in per_class.items() if v["recall"] is not None}
        if len(recalls) >= 2:
            best, worst = max(recalls, key=recalls.get), min(recalls, key=recalls.get)
            gap = recalls[best] - recalls[worst]
            gap_low = gap_lower_bound(
                (per_class[best]["recall"] * per_class[best]["support"],
                 per_class[best]["support"]),
                (per_class[worst]["recall"] * per_class[worst]["support"],
                 per_class[worst]["support"]))
            # As for accuracy: an alarm when the gap is confidently above the limit, a warning
            # when only the estimate is (a few dozen labels per class move a recall by 0.1).
            if gap_low > cfg.max_recall_gap:
                status = "alarm"
            elif gap > cfg.max_recall_gap:
                status = "warning"
            else:
                status = "ok"
            checks.append(Check(
                "performance.recall_gap", "performance", round(gap, 6), cfg.max_recall_gap,
                status, f"recall {recalls[best]:.2f} for {best} vs {recalls[worst]:.2f} for "
                f"{worst} (gap at least {max(gap_low, 0.0):.2f} with 95% confidence)",
                "", {"recall": recalls, "best_class": best, "worst_class": worst,
                     "n_labelled": n, "gap_low": round(gap_low, 6)}))
        else:
            checks.append(Check("performance.recall_gap", "performance", None,
                                cfg.max_recall_gap, "unknown",
                                "labels of only one class arrived", "", {"n_labelled": n}))
        for c, v in per_class.items():
            checks.append(Check(f"performance.f1.{c}", "performance", v["f1"], None, "ok",
                                f"{c}: precision {v['precision']:.3f}, recall "
                                f"{_fmt(v['recall'])}, F1 {v['f1']:.3f} ({v['support']} true)",
                                "", {**v, "n_labelled": n}))
    else:
        checks.append(Check("performance.accuracy", "performance", None, floor, "unknown",
                            f"{n} labelled requests (< {cfg.min_labels}): see the estimate; "
                            "`mlops monitor label REQUEST_ID CLASS` adds labels",
                            "", {"n_labelled": n, "estimated": False}))
    checks.append(_estimate(win, ref, cfg, floor))
    return checks


def _estimate(win: Window, ref: Reference, cfg: MonitorConfig, floor: float) -> Check:
    """Label-free accuracy (``components.monitor.estimate``): the lower of the expected
    accuracy from each prediction's probability calibrated on the reference (CBPE) and the
    window's share of confident predictions (ATC). Only a warning, as an estimate; ``unknown`` when the reference cannot support
    one (too small, too few errors, confidence that does not separate right from wrong)."""
    name = "performance.estimated_accuracy"
    base = {"estimated": True, "method": estimate.METHOD, "n": len(win)}
    if not len(win):
        return Check(name, "performance", None, floor, "unknown", "no requests", "", base)
    if ref.probabilities is None or not ref.labels:
        return Check(name, "performance", None, floor, "unknown",
                     "the reference has no labelled predictions to calibrate on: rebuild it "
                     f"(mlops monitor reference {ref.model} {ref.model_version})", "",
                     base | {"reference_n": 0})
    try:
        cal = estimate.fit(ref.probabilities, ref.labels, ref.classes,
                           min_reference=cfg.min_reference,
                           min_errors=cfg.min_reference_errors,
                           min_separation=cfg.min_separation)
    except estimate.EstimateError as exc:
        return Check(name, "performance", None, floor, "unknown",
                     f"cannot calibrate on the reference: {exc}", "", base)
    est = estimate.estimate(cal, win.probabilities(list(ref.classes)))
    value = round(est.accuracy, 6)
    below = est.accuracy < floor
    said = (f"estimated accuracy {est.accuracy:.3f} ± {est.sampling_error:.3f} from confidence "
            f"(CBPE {est.cbpe:.3f}, ATC {est.atc:.3f}: the lower; no labels needed; reference "
            f"of {cal.n_reference} labelled predictions, {cal.n_errors} wrong)")
    if cal.trusted:
        status = "warning" if below else "ok"
        detail = said + (f": below the floor {floor:.3f}" if below else "")
    else:
        # An estimate the reference cannot support is never "ok"; one below the floor is
        # still worth a look.
        status = "warning" if below else "unknown"
        caveat = f"the reference cannot support it ({'; '.join(cal.problems)})"
        detail = (f"{said}: below the floor {floor:.3f}, worth a look although {caveat}; "
                  "labels measure it" if below else f"{said}, not to be trusted: {caveat}")
    return Check(name, "performance", value, floor, status, detail, "", base | {
        "trusted": cal.trusted, "problems": list(cal.problems),
        "reference_n": cal.n_reference, "reference_errors": cal.n_errors,
        "reference_accuracy": round(cal.reference_accuracy, 6),
        "separation": None if cal.separation is None else round(cal.separation, 6),
        "cbpe": round(est.cbpe, 6), "atc": round(est.atc, 6),
        "atc_threshold": round(cal.atc_threshold, 6),
        "calibrated": cal.calibrated, "sampling_error": round(est.sampling_error, 6),
        "mean_confidence": round(est.mean_confidence, 6),
        "below_reference_confidence": round(est.below_reference, 6)})


# --------------------------------------------------------------------------------------------
# Telemetry
# --------------------------------------------------------------------------------------------


#: Why a window has no telemetry, by where it was to come from, and what gives it some.
NO_TELEMETRY = {
    "scrapes": "no scrape of the predictor's /metrics in this window: give the monitor the "
               "predictor's URL (`mlops monitor run --metrics-url URL`, the pipeline's "
               "metrics_url; production's is in `mlops deploy status`)",
    "prometheus": "Prometheus has no series of the predictor in this window: check "
                  "--prometheus-url and that Prometheus scrapes the predictor (its PodMonitor)",
}


def telemetry_checks(summary: dict | None, cfg: MonitorConfig, source: str = "") -> list[Check]:
    """Request rate, server error rate, latency percentiles, CPU and memory."""
    specs = [("telemetry.request_rate", "request_rate", None, "requests/s"),
             ("telemetry.error_rate", "error_rate", cfg.max_error_rate, "server error rate"),
             ("telemetry.p50_latency", "p50_ms", None, "p50 latency ms"),
             ("telemetry.p95_latency", "p95_ms", cfg.p95_slo_ms, "p95 latency ms"),
             ("telemetry.p99_latency", "p99_ms", None, "p99 latency ms"),
             ("telemetry.cpu", "cpu_cores", None, "CPU cores"),
             ("telemetry.memory", "memory_mb", None, "resident memory MB")]
    if summary is None:
        why = NO_TELEMETRY.get(source) or \
            f"the predictor's metrics could not be read{f' ({source})' if source else ''}"
        return [Check(name, "telemetry", None, thr, "unknown", why, "", {})
                for name, _, thr, _ in specs]
    checks = []
    for name, key, thr, label in specs:
        v = summary.get(key)
        if v is None:
            checks.append(Check(name, "telemetry", None, thr, "unknown",
                                f"{label}: not measurable in this window", "", {}))
            continue
        status = "alarm" if thr is not None and v > thr else "ok"
        checks.append(Check(name, "telemetry", round(float(v), 6), thr, status,
                            f"{label} {v:.4g}" + (f" (limit {thr})" if thr is not None else ""),
                            "", {"source": summary.get("source"),
                                 "requests": summary.get("requests"),
                                 "errors": summary.get("errors"),
                                 # the evidence's name for the bad requests, as before
                                 "invalid": summary.get("bad_requests"),
                                 "seconds": summary.get("seconds"),
                                 "processes": summary.get("processes")}))
    return checks
