"""Model testing on the test split: metrics, per-class bias check, quality gate, report."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from components.common.registry import ModelRegistry, RegistryError
from components.common.runtime import (
    onnx_predictor,
    predict_in_batches,
    read_onnx_metadata,
    torch_predictor,
)
from components.ingest.shards import split_images, split_images_and_stats
from components.ingest.snapshot import read_split
from components.train.core import load_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateConfig:
    """Thresholds a model must meet to be blessed.

    Attributes:
        min_accuracy: Lowest acceptable test accuracy.
        min_macro_f1: Lowest acceptable macro F1.
        max_recall_gap: Largest acceptable gap between the best and worst per-class recall
            (a model that finds dogs far better than cats is biased).
        champion_tolerance: How much worse than the production model the candidate may be
            on accuracy and macro F1 (0 = not worse at all).
    """

    min_accuracy: float = 0.9
    min_macro_f1: float = 0.9
    max_recall_gap: float = 0.1
    champion_tolerance: float = 0.0


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, ROC AUC and the confusion matrix.

    ``confusion[i][j]`` counts images of class ``i`` predicted as class ``j``.
    """
    from sklearn.metrics import roc_auc_score

    k = len(classes)
    y_true = np.asarray(y_true, dtype=int)
    y_pred = probs.argmax(axis=1)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = cm[i, i]
        predicted = cm[:, i].sum()
        actual = cm[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall),
                           "f1": float(f1), "support": int(actual)}
    present = [c for c in classes if per_class[c]["support"]]
    try:
        if k == 2:
            auc = float(roc_auc_score(y_true, probs[:, 1]))
        else:
            auc = float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro",
                                      labels=list(range(k))))
    except ValueError:  # a single class present in the test split
        auc = float("nan")
    return {
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "per_class": per_class,
        "macro": {m: float(np.mean([per_class[c][m] for c in present])) if present else 0.0
                  for m in ("precision", "recall", "f1")},
        "roc_auc": auc,
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
        "count": int(len(y_true)),
    }


def bias_check(metrics: dict, max_recall_gap: float) -> dict:
    """The gap between the best and worst per-class recall, against a threshold."""
    recalls = {c: v["recall"] for c, v in metrics["per_class"].items() if v["support"]}
    best = max(recalls, key=recalls.get)
    worst = min(recalls, key=recalls.get)
    gap = recalls[best] - recalls[worst]
    return {"recall_gap": round(gap, 6), "best_class": best, "worst_class": worst,
            "threshold": max_recall_gap, "passed": gap <= max_recall_gap}


def quality_gate(metrics: dict, config: GateConfig, champion: dict | None = None) -> dict:
    """Decides whether a candidate is blessed; every failed rule is listed with numbers."""
    reasons = []
    if metrics["accuracy"] < config.min_accuracy:
        reasons.append(f"accuracy {metrics['accuracy']:.4f} < minimum {config.min_accuracy}")
    if metrics["macro"]["f1"] < config.min_macro_f1:
        reasons.append(f"macro F1 {metrics['macro']['f1']:.4f} < minimum {config.min_macro_f1}")
    bias = bias_check(metrics, config.max_recall_gap)
    if not bias["passed"]:
        reasons.append(f"recall gap {bias['recall_gap']:.4f} between {bias['best_class']} and "
                       f"{bias['worst_class']} > maximum {config.max_recall_gap}")
    if champion is not None:
        for name, ours, theirs in (("accuracy", metrics["accuracy"], champion["accuracy"]),
                                   ("macro F1", metrics["macro"]["f1"],
                                    champion["macro"]["f1"])):
            if ours < theirs - config.champion_tolerance:
                reasons.append(f"{name} {ours:.4f} is worse than the production model's "
                               f"{theirs:.4f} on the same test split")
    return {"blessed": not reasons, "reasons": reasons, "bias": bias,
            "champion": {"accuracy": champion["accuracy"], "macro_f1": champion["macro"]["f1"]}
            if champion else None, "config": asdict(config)}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def html_report(metrics: dict, gate: dict, images: np.ndarray, y_true: np.ndarray,
                probs: np.ndarray, keys: list[str], title: str, worst: int = 12) -> str:
    """A self-contained HTML page: metrics, confusion matrix, ROC, worst misclassifications."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    classes = metrics["classes"]
    cm = np.array(metrics["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black")
    fig.tight_layout()
    cm_png = _png(fig)
    plt.close(fig)
    roc_png = ""
    if len(classes) == 2 and len(set(y_true.tolist())) == 2:
        fpr, tpr, _ = roc_curve(y_true, probs[:, 1])
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
        ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel(f"true positive rate ({classes[1]})")
        ax.set_title(f"ROC AUC {metrics['roc_auc']:.4f}")
        fig.tight_layout()
        roc_png = _png(fig)
        plt.close(fig)
    pred = probs.argmax(1)
    wrong = np.where(pred != y_true)[0]
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:worst]
    thumbs = []
    from PIL import Image

    for i in wrong:
        buf = io.BytesIO()
        Image.fromarray(images[i].transpose(1, 2, 0)).resize((96, 96)).save(buf, "PNG")
        thumbs.append(
            f'<figure><img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
            f"<figcaption>{html.escape(keys[i])}<br>{classes[y_true[i]]} → "
            f"{classes[pred[i]]} ({probs[i, pred[i]]:.2f})</figcaption></figure>")
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{v['precision']:.4f}</td><td>{v['recall']:.4f}</td>"
        f"<td>{v['f1']:.4f}</td><td>{v['support']}</td></tr>"
        for c, v in metrics["per_class"].items())
    verdict = ("<p class=ok>Blessed: meets every rule.</p>" if gate["blessed"] else
               "<p class=bad>Not blessed:</p><ul>" + "".join(
                   f"<li>{html.escape(r)}</li>" for r in gate["reasons"]) + "</ul>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:4px 10px;text-align:right}}
.ok{{color:#1a7f37;font-weight:bold}} .bad{{color:#c62828;font-weight:bold}}
figure{{display:inline-block;margin:6px;font-size:11px;text-align:center}}</style></head><body>
<h1>{html.escape(title)}</h1>{verdict}
<p>Accuracy <b>{metrics['accuracy']:.4f}</b> · macro F1 {metrics['macro']['f1']:.4f} ·
ROC AUC {metrics['roc_auc']:.4f} · {metrics['count']} test images ·
recall gap {gate['bias']['recall_gap']:.4f} (max {gate['bias']['threshold']})</p>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows}
</table>
<img src="data:image/png;base64,{cm_png}">{f'<img src="data:image/png;base64,{roc_png}">' if roc_png else ''}
<h2>Most confident mistakes</h2>{''.join(thumbs) or '<p>None.</p>'}
</body></html>"""


def production_onnx(registry_uri: str, model_name: str, classes: list[str],
                    role: str = "candidate") -> tuple[bytes | None, dict | None, int | None]:
    """The registry's production ONNX model as (bytes, metadata, version), or Nones when there
    is none; a production model with other classes than ``classes`` is an error."""
    if not registry_uri:
        return None, None, None
    registry = ModelRegistry(registry_uri)
    try:
        version = registry.resolve(model_name, "@production")
    except RegistryError as exc:
        logger.info("No production model to compare with: %s", exc)
        return None, None, None
    onnx_bytes = registry.read_file(model_name, version, "model.onnx")
    meta = read_onnx_metadata(onnx_bytes)
    theirs = json.loads(meta["classes"])
    if theirs != list(classes):
        raise ValueError(f"The production model {model_name} v{version} predicts {theirs} but "
                         f"the {role} predicts {classes}; they cannot be compared on one "
                         "test split. Register the new class set under another model name.")
    return onnx_bytes, meta, version


def champion_metrics(registry_uri: str, model_name: str, images: np.ndarray, y_true: np.ndarray,
                     classes: list[str], rows=None, dataset_version: str = "",
                     contexts=None) -> tuple[dict | None, int | None]:
    """Metrics of the registry's production model on the same test images, if there is one
    (with ``contexts``, each image's context, its metrics per context in ``"contexts"``).

    ``images`` are the candidate's inputs; a production model with another input size gets
    the same test ``rows`` at its own size (from the shards of ``dataset_version``).
    """
    onnx_bytes, meta, version = production_onnx(registry_uri, model_name, classes)
    if onnx_bytes is None:
        return None, None
    size = int(meta.get("input_size") or images.shape[-1])
    if size != images.shape[-1]:
        if rows is None:
            raise ValueError(f"The production model {model_name} v{version} takes {size} px "
                             f"inputs, the test images are {images.shape[-1]} px: pass the "
                             "test rows so that they are read at its size.")
        images = split_images(rows, size, dataset_version)
    probs = predict_in_batches(onnx_predictor(onnx_bytes), images)
    metrics = classification_metrics(y_true, probs, classes)
    if contexts is not None:
        metrics["contexts"] = context_metrics(y_true, probs, contexts, classes)
    return metrics, version


def context_metrics(y_true: np.ndarray, probs: np.ndarray, contexts, classes: list[str]
                    ) -> dict[str, dict]:
    """:func:`classification_metrics` of each operating context's test images (``contexts``:
    each image's, ``images.measure_context`` as stored with its statistics)."""
    contexts = np.asarray([str(c) for c in contexts])
    return {c: classification_metrics(np.asarray(y_true)[contexts == c], probs[contexts == c],
                                      classes)
            for c in sorted(set(contexts.tolist()))}


def context_gate(ours: dict, theirs: dict | None, max_drop: float, min_images: int = 10,
                 who: str = "the champion's") -> tuple[list[str], dict]:
    """The per-context rule of a candidate against production.

    Args:
        ours, theirs: context -> metrics (:func:`context_metrics`) of the candidate and of
            production on the same test images (``theirs`` None: no production model).
        max_drop: How much lower than production's the candidate's accuracy on a context
            may be.
        min_images: Fewest test images of a context to judge it on; fewer are reported only.

    Returns:
        (failed reasons, context -> {images, challenger, champion, gain, judged}); each
        reason names the context, both accuracies, the tolerance and the number of images.
    """
    reasons, out = [], {}
    for ctx, m in ours.items():
        n = m["count"]
        row = {"images": n, "challenger": m["accuracy"], "champion": None, "gain": None,
               "judged": False}
        if theirs and ctx in theirs:
            row["champion"] = theirs[ctx]["accuracy"]
            row["gain"] = m["accuracy"] - theirs[ctx]["accuracy"]
            row["judged"] = n >= min_images
            if row["judged"] and row["gain"] < -max_drop:
                reasons.append(f"accuracy on {ctx} images {m['accuracy']:.4f} is worse than "
                               f"{who} {theirs[ctx]['accuracy']:.4f} by more than {max_drop} "
                               f"(gain {row['gain']:+.4f}, {n} {ctx} test images)")
        out[ctx] = row
    return reasons, out


def contexts_html(rows: dict, max_drop: float, min_images: int) -> str:
    """The report's table of both models' accuracy by context."""
    if not rows:
        return ""
    out = []
    for ctx, r in rows.items():
        champ = f"{r['champion']:.4f}" if r["champion"] is not None else "—"
        gain = f"{r['gain']:+.4f}" if r["gain"] is not None else "—"
        judged = ("judged" if r["judged"] else
                  f"not judged (fewer than {min_images} images)"
                  if r["champion"] is not None else "no production model")
        out.append(f"<tr><td>{html.escape(ctx)}</td><td>{r['images']}</td>"
                   f"<td>{r['challenger']:.4f}</td><td>{champ}</td><td>{gain}</td>"
                   f"<td>{judged}</td></tr>")
    return ("<h2>Accuracy by context</h2><p>A model worse than production on any context by "
            f"more than {max_drop} is not blessed.</p><table><tr><th>context</th>"
            "<th>images</th><th>this model</th><th>production</th><th>gain</th><th></th>"
            "</tr>" + "".join(out) + "</table>")


@dataclass
class TestPredictions:
    """A trained model's answers on a test split.

    Attributes:
        meta: The model's metadata (classes, arch, image size, normalisation, dataset version).
        rows: The split's rows (``key``, ``label``, ...).
        dataset_version: The dataset version the split belongs to.
        images: The split's images, ``uint8 NCHW`` at the model's input size.
        y_true: The class index of each row.
        probs: The model's probabilities, one row per image.
        contexts: Each image's operating context (``images.measure_context``, stored with
            its statistics in the shards).
    """

    meta: dict
    rows: object
    dataset_version: str
    images: np.ndarray
    y_true: np.ndarray
    probs: np.ndarray
    contexts: list = field(default_factory=list)


def predict_test_split(model_dir: str, test_dir: str, use_shards: bool = True
                       ) -> TestPredictions:
    """Runs the trained model folder ``model_dir`` on the test split folder ``test_dir``.

    The test images are read from the dataset version's training-ready shards (built at the
    model's input size by the first step that needs them; no JPEG is decoded), or decoded
    one by one when the split's rows are not from a published snapshot or ``use_shards`` is
    off; both give the same pixels.

    Raises:
        ValueError: The split is empty, is from another dataset version than the model was
            trained on, or has a label that is not one of the model's classes.
    """
    model, meta = load_model(model_dir)
    rows, split_meta = read_split(test_dir)
    if rows.empty:
        raise ValueError(f"Empty test split in {test_dir}: nothing to evaluate on.")
    if split_meta["dataset_version"] != meta["dataset_version"]:
        raise ValueError(f"The model was trained on dataset {meta['dataset_version']} but the "
                         f"test split is from {split_meta['dataset_version']}.")
    index = {c: i for i, c in enumerate(meta["classes"])}
    unknown = sorted(set(rows["label"]) - set(index))
    if unknown:
        raise ValueError(f"Test labels {unknown} are not classes of the model {meta['classes']}.")
    version = split_meta["dataset_version"]
    images, stats = split_images_and_stats(rows, meta["image_size"], version, use_shards)
    y_true = rows["label"].map(index).to_numpy()
    probs = predict_in_batches(torch_predictor(model, meta["mean"], meta["std"]), images)
    return TestPredictions(meta, rows, version, images, y_true, probs,
                           [st["context"] for st in stats])


def evaluate(model_dir: str, test_dir: str, gate: GateConfig, registry_uri: str = "",
             model_name: str = "", use_shards: bool = True) -> dict:
    """Tests a trained model folder on a test split folder; returns metrics, gate and report
    (the images as :func:`predict_test_split` reads them)."""
    t = predict_test_split(model_dir, test_dir, use_shards)
    meta, classes = t.meta, t.meta["classes"]
    metrics = classification_metrics(t.y_true, t.probs, classes)
    by_context = context_metrics(t.y_true, t.probs, t.contexts, classes)
    champion, champion_version = champion_metrics(registry_uri, model_name, t.images, t.y_true,
                                                  classes, t.rows, t.dataset_version,
                                                  t.contexts)
    decision = quality_gate(metrics, gate, champion)
    # Not worse than production on any context either (day, night), by the same tolerance.
    reasons, rows_by_context = context_gate(by_context, (champion or {}).get("contexts"),
                                            gate.champion_tolerance,
                                            who="the production model's")
    decision["reasons"] += reasons
    decision["blessed"] = not decision["reasons"]
    decision["contexts"] = rows_by_context
    decision["champion_version"] = champion_version
    report = html_report(metrics, decision, t.images, t.y_true, t.probs, list(t.rows["key"]),
                         f"Model test: {meta['arch']} on dataset {meta['dataset_version']}")
    report = report.replace("</body>", contexts_html(rows_by_context, gate.champion_tolerance,
                                                     10) + "</body>")
    return {"metrics": metrics, "gate": decision, "report_html": report,
            "dataset_version": meta["dataset_version"]}
