"""Champion/challenger test for retraining: both models on the same test images, overall and
on the recent-production slice, and a gate that blesses only a challenger that is not worse
overall and better where production changed.

The recent-production slice is the test images that came from production captures (the
export step puts them in the lake under ``<label>/production/<export_id>/``); the rest of the
test split is the data the champion was tested on. Both are reported separately, so a model
that wins on night images by losing on day images is visible as such, and is not blessed.

Each test image's operating context (``day``, ``night``: ``images.measure_context``, stored
with its statistics in the dataset version's shards) splits the test split a second way: both
models' accuracy on every context is reported with its number of images, and a challenger
worse than production on any context by more than ``max_context_drop`` is not blessed, the
reason naming the context (a context with fewer than ``min_context_images`` test images is
reported as too small to judge).

The result has the shape of :func:`components.evaluate.core.evaluate`'s (``metrics``,
``gate``, ``report_html``, ``dataset_version``), plus ``slices`` and ``gate["recent"]``, so
packaging, registering and the ``quality_gate`` step work on it unchanged.
"""

from __future__ import annotations

import html
import logging
from dataclasses import asdict, dataclass

import numpy as np

from components.common.runtime import onnx_predictor, predict_in_batches
from components.evaluate.core import (
    GateConfig,
    classification_metrics,
    context_metrics,
    contexts_html,
    html_report,
    predict_test_split,
    production_onnx,
    quality_gate,
)
from components.evaluate.core import context_gate as core_context_gate
from components.ingest.core import PRODUCTION_SEGMENT
from components.ingest.shards import split_images

logger = logging.getLogger(__name__)

#: The lake folder segment of exported production images (``<label>/production/<id>/…``).
RECENT_SEGMENT = PRODUCTION_SEGMENT


@dataclass(frozen=True)
class ChallengerConfig:
    """The retraining gate's rules, on top of :class:`GateConfig`'s thresholds.

    Attributes:
        min_recent_gain: The challenger's accuracy on the recent slice must exceed the
            champion's by more than this (0.0: strictly better).
        max_overall_drop: How much lower than the champion's its overall accuracy and macro
            F1 may be (0.0: not worse at all).
        max_reference_drop: How much lower than the champion's its accuracy on the rest of
            the test split (the data before the change) may be.
        min_recent_images: Fewer recent test images than this cannot show a gain: not
            blessed, and the reason says so.
        recent_segment: The lake folder segment that marks production images.
        max_context_drop: How much lower than the champion's its accuracy on the test
            images of any one context (day, night) may be.
        min_context_images: Fewest test images of a context to judge it on; a context with
            fewer is reported, not judged.
    """

    min_recent_gain: float = 0.0
    max_overall_drop: float = 0.0
    max_reference_drop: float = 0.02
    min_recent_images: int = 10
    recent_segment: str = RECENT_SEGMENT
    max_context_drop: float = 0.02
    min_context_images: int = 10

    def __post_init__(self):
        for name in ("min_recent_gain", "max_overall_drop", "max_reference_drop",
                     "max_context_drop"):
            value = getattr(self, name)
            if not -1.0 <= value <= 1.0:
                raise ValueError(f"Invalid {name}: {value}. Expect a difference of accuracies "
                                 "between -1 and 1, for example 0.02.")
        for name in ("min_recent_images", "min_context_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"Invalid {name}: {getattr(self, name)}. Expect 1 or more.")


def recent_mask(keys, segment: str = RECENT_SEGMENT) -> np.ndarray:
    """True for test keys exported from production (``<label>/<segment>/<id>/<file>``)."""
    return np.array([len(k.split("/")) == 4 and k.split("/")[1] == segment for k in keys],
                    dtype=bool)


def _champion(registry_uri: str, model_name: str, rows, classes: list[str],
              dataset_version: str = "", use_shards: bool = True, images=None):
    """(probabilities on the test rows, version) of the production model, or (None, None).

    The rows are read at the champion's own input size from the shards of the dataset
    version they belong to (the challenger's test split), not the champion's training data;
    ``images``, the challenger's inputs, are reused when the sizes agree.
    """
    onnx_bytes, meta, version = production_onnx(registry_uri, model_name, classes, "challenger")
    if onnx_bytes is None:
        return None, None
    size = int(meta["input_size"])
    if images is None or images.shape[-1] != size:
        images = split_images(rows, size, dataset_version, use_shards)
    return predict_in_batches(onnx_predictor(onnx_bytes), images), version


def _slice(y_true, probs, mask, classes) -> dict | None:
    if not mask.any():
        return None
    return classification_metrics(y_true[mask], probs[mask], classes)


def recent_gate(slices: dict, config: ChallengerConfig) -> tuple[list[str], dict]:
    """The retraining rules on the per-slice accuracies; returns (failed reasons, summary)."""
    reasons = []
    ch, cp = slices["challenger"], slices.get("champion")
    n_recent = ch["recent"]["count"] if ch["recent"] else 0
    summary = {"recent_images": n_recent, "config": asdict(config)}
    if n_recent < config.min_recent_images:
        reasons.append(f"only {n_recent} recent-production images in the test split (minimum "
                       f"{config.min_recent_images}): a gain on them cannot be shown; label "
                       "more captured images")
    if cp is None:
        summary["champion"] = None
        return reasons, summary
    for name in ("overall", "recent", "reference"):
        if ch[name] is not None and cp[name] is not None:
            summary[f"{name}_accuracy"] = {"challenger": ch[name]["accuracy"],
                                           "champion": cp[name]["accuracy"],
                                           "gain": ch[name]["accuracy"] - cp[name]["accuracy"]}
    if n_recent >= config.min_recent_images:
        gain = summary["recent_accuracy"]["gain"]
        if gain <= config.min_recent_gain:
            reasons.append(
                f"recent-production accuracy {ch['recent']['accuracy']:.4f} is not better than "
                f"the champion's {cp['recent']['accuracy']:.4f} by more than "
                f"{config.min_recent_gain} (gain {gain:+.4f}, {n_recent} images)")
    overall = summary["overall_accuracy"]
    if overall["gain"] < -config.max_overall_drop:
        reasons.append(f"overall accuracy {overall['challenger']:.4f} is worse than the "
                       f"champion's {overall['champion']:.4f} (allowed drop "
                       f"{config.max_overall_drop})")
    ref = summary.get("reference_accuracy")
    if ref and ref["gain"] < -config.max_reference_drop:
        reasons.append(f"accuracy on the earlier data {ref['challenger']:.4f} is worse than "
                       f"the champion's {ref['champion']:.4f} by more than "
                       f"{config.max_reference_drop}")
    return reasons, summary


def context_gate(slices: dict, config: ChallengerConfig) -> tuple[list[str], dict]:
    """The per-context rule on the slices (:func:`components.evaluate.core.context_gate`
    with ``max_context_drop`` and ``min_context_images``)."""
    return core_context_gate(slices["challenger"].get("contexts") or {},
                             (slices.get("champion") or {}).get("contexts"),
                             config.max_context_drop, config.min_context_images)


def _slices_html(slices: dict, recent: dict) -> str:
    rows = []
    for name, label in (("overall", "whole test split"), ("reference", "earlier data"),
                        ("recent", "recent production")):
        ch = slices["challenger"][name]
        cp = (slices.get("champion") or {}).get(name)
        if ch is None:
            continue
        champ = f"{cp['accuracy']:.4f}" if cp else "—"
        gain = f"{ch['accuracy'] - cp['accuracy']:+.4f}" if cp else "—"
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{ch['count']}</td>"
                    f"<td>{ch['accuracy']:.4f}</td><td>{champ}</td><td>{gain}</td></tr>")
    return ("<h2>Champion and challenger by slice</h2><table><tr><th>slice</th><th>images</th>"
            "<th>challenger</th><th>champion</th><th>gain</th></tr>" + "".join(rows)
            + "</table>")


def evaluate_challenger(model_dir: str, test_dir: str, gate: GateConfig,
                        config: ChallengerConfig, registry_uri: str = "",
                        model_name: str = "", use_shards: bool = True) -> dict:
    """Tests a retrained model against production on the same test split, by slice.

    Blessed only if the usual gate passes (thresholds, bias, not worse than production within
    ``gate.champion_tolerance``) and the retraining rules of ``config`` pass. Both models
    read the test split's images from the shards of the split's dataset version, each at
    its own input size (decoded one by one when the rows are not from a published snapshot
    or ``use_shards`` is off).
    """
    t = predict_test_split(model_dir, test_dir, use_shards)
    meta, classes, rows, version = t.meta, t.meta["classes"], t.rows, t.dataset_version
    images, y_true, probs = t.images, t.y_true, t.probs
    contexts = t.contexts
    mask = recent_mask(rows["key"], config.recent_segment)
    champion_probs, champion_version = _champion(registry_uri, model_name, rows, classes,
                                                 version, use_shards, images)
    slices = {}
    for who, p in (("challenger", probs), ("champion", champion_probs)):
        if p is None:
            continue
        slices[who] = {"overall": classification_metrics(y_true, p, classes),
                       "recent": _slice(y_true, p, mask, classes),
                       "reference": _slice(y_true, p, ~mask, classes),
                       "contexts": context_metrics(y_true, p, contexts, classes)}
    metrics = slices["challenger"]["overall"]
    decision = quality_gate(metrics, gate, slices.get("champion", {}).get("overall"))
    reasons, summary = recent_gate(slices, config)
    decision["reasons"] += reasons
    context_reasons, by_context = context_gate(slices, config)
    decision["reasons"] += context_reasons
    decision["contexts"] = by_context
    decision["blessed"] = not decision["reasons"]
    decision["recent"] = summary
    decision["champion_version"] = champion_version
    report = html_report(metrics, decision, images, y_true, probs, list(rows["key"]),
                         f"Champion/challenger test: {meta['arch']} on dataset "
                         f"{meta['dataset_version']}")
    report = report.replace("</body>", _slices_html(slices, summary)
                            + contexts_html(by_context, config.max_context_drop,
                                            config.min_context_images) + "</body>")
    logger.info("Recent-production slice: %d of %d test images; %s", int(mask.sum()),
                len(rows), {k: v for k, v in summary.items() if k.endswith("accuracy")})
    logger.info("By context: %s", {c: (r["images"], round(r["challenger"], 4),
                                       None if r["champion"] is None else round(r["champion"], 4))
                                   for c, r in by_context.items()})
    return {"metrics": metrics, "gate": decision, "report_html": report,
            "dataset_version": meta["dataset_version"], "slices": slices}
