"""Analyze a window: why the model answered as it did, and where it does worse.

* **Saliency gallery**: gradient saliency maps (Captum's ``Saliency``: the absolute gradient
  of the predicted class's score with respect to each input pixel, Simonyan et al. 2014)
  computed with the PyTorch weights registered with the version (``torch/`` in the package),
  for the window's least-confident inputs, its misclassified labelled inputs and a random
  sample. Only inputs whose image was captured (``image_sha256``) can be shown.
* **Error analysis by slice**: accuracy (where labels arrived) and mean confidence by
  brightness bucket (night / dim / day), by image size and by predicted class, with the
  slices that fall clearly below the window as a whole flagged.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from components.common.images import ImageRejected, decode_image
from components.common.registry import ModelRegistry
from components.common.runtime import torch_normaliser
from components.common.storage import StorageError, open_store
from components.monitor.checks import wilson
from components.monitor.contract import Reference
from components.monitor.report import PLOT_LOCK
from components.monitor.window import Window
from components.train.core import load_model

logger = logging.getLogger(__name__)

#: Brightness buckets (mean luminance 0..1) of the error analysis.
BRIGHTNESS_BUCKETS = ((0.0, 0.25, "night (<0.25)"), (0.25, 0.4, "dim (0.25-0.40)"),
                      (0.4, 1.01, "day (>=0.40)"))
#: Longest image side, in pixels.
SIZE_BUCKETS = ((0, 65, "<=64 px"), (65, 257, "65-256 px"), (257, 1025, "257-1024 px"),
                (1025, float("inf"), ">1024 px"))
#: A slice this far below the window's accuracy or confidence is flagged.
FLAG_DROP = 0.10


def _bucket(value, buckets) -> str:
    for lo, hi, name in buckets:
        if value is not None and lo <= value < hi:
            return name
    return "unknown"


def slices(win: Window, classes: list[str]) -> dict:
    """Accuracy and confidence per slice: ``{dimension: [{slice, n, …}, …]}``."""
    if not len(win):
        return {}
    conf = win.probabilities(classes).max(1)
    overall_conf = float(conf.mean())
    labelled = [r.get("true_label") is not None for r in win.records]
    right = [r.get("true_label") == r["label"] for r in win.records]
    n_lab = sum(labelled)
    overall_acc = (sum(1 for ok, lab in zip(right, labelled, strict=True) if ok and lab) / n_lab
                   if n_lab else None)
    keys = {
        "brightness": [_bucket(r["stats"].get("brightness"), BRIGHTNESS_BUCKETS)
                       for r in win.records],
        "image size": [_bucket(max(int(r["stats"].get("width") or 0),
                                   int(r["stats"].get("height") or 0)), SIZE_BUCKETS)
                       for r in win.records],
        "predicted class": [r["label"] for r in win.records],
    }
    out = {}
    for dim, names in keys.items():
        rows = []
        for name in sorted(set(names)):
            idx = [i for i, v in enumerate(names) if v == name]
            lab = [i for i in idx if labelled[i]]
            acc = sum(1 for i in lab if right[i]) / len(lab) if lab else None
            lo, hi = wilson(sum(1 for i in lab if right[i]), len(lab)) if lab else (None, None)
            mean_conf = float(conf[idx].mean())
            flagged = (mean_conf < overall_conf - FLAG_DROP or
                       (acc is not None and overall_acc is not None and len(lab) >= 10 and
                        acc < overall_acc - FLAG_DROP))
            rows.append({"slice": name, "n": len(idx), "share": round(len(idx) / len(win), 4),
                         "mean_confidence": round(mean_conf, 4), "n_labelled": len(lab),
                         "accuracy": None if acc is None else round(acc, 4),
                         "accuracy_ci": [lo, hi], "flagged": bool(flagged)})
        out[dim] = rows
    out["_overall"] = {"n": len(win), "mean_confidence": round(overall_conf, 4),
                       "n_labelled": n_lab,
                       "accuracy": None if overall_acc is None else round(overall_acc, 4)}
    return out


def select(win: Window, classes: list[str], per_group: int, seed: int = 0) -> dict[str, list]:
    """Records to explain: least confident, misclassified (labelled), random; only those
    whose input image was captured."""
    with_image = [r for r in win.records if r.get("image_sha256")]
    if not with_image:
        return {}
    conf = {id(r): max(float(r["probabilities"].get(c, 0.0)) for c in classes)
            for r in with_image}
    least = sorted(with_image, key=lambda r: conf[id(r)])[:per_group]
    wrong = [r for r in with_image if r.get("true_label") not in (None, r["label"])]
    wrong = sorted(wrong, key=lambda r: conf[id(r)], reverse=True)[:per_group]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(with_image), min(per_group, len(with_image)), replace=False)
    return {"least confident": least, "misclassified": wrong,
            "random": [with_image[i] for i in sorted(pick)]}


def load_torch_model(registry_uri: str, model: str, version: int):
    """The PyTorch model registered with ``version`` (``torch/model.pt`` + ``model.json``)."""
    reg = ModelRegistry(registry_uri)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("model.pt", "model.json"):
            (Path(tmp) / name).write_bytes(reg.read_file(model, version, f"torch/{name}"))
        return load_model(tmp)


def saliency_maps(torch_model, meta: dict, images: np.ndarray, targets: list[int]) -> np.ndarray:
    """``|d score[target] / d input|``, max over colour channels: ``[n, S, S]`` in 0..1."""
    import torch
    from captum.attr import Saliency

    x = torch_normaliser(meta["mean"], meta["std"])(images)
    x.requires_grad_(True)
    torch_model.eval()
    attr = Saliency(torch_model).attribute(x, target=torch.tensor(targets), abs=True)
    sal = attr.detach().amax(dim=1).numpy()
    peak = sal.reshape(len(sal), -1).max(1).reshape(-1, 1, 1)
    return sal / np.maximum(peak, 1e-12)


def _figure(img: np.ndarray, sal: np.ndarray, title: str) -> bytes:
    with PLOT_LOCK:
        return _draw(img, sal, title)


def _draw(img: np.ndarray, sal: np.ndarray, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(4.2, 2.3))
    a.imshow(img.transpose(1, 2, 0))
    a.set_axis_off()
    b.imshow(img.transpose(1, 2, 0))
    b.imshow(sal, cmap="inferno", alpha=0.6)
    b.set_axis_off()
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def explain_window(win: Window, ref: Reference, registry_uri: str, monitoring_uri: str,
                   version: int | None, per_group: int = 4, torch_model=None,
                   torch_meta: dict | None = None) -> dict:
    """The window's error analysis by slice and its saliency gallery.

    Returns:
        ``{"slices": …, "gallery": [entry, …], "images": {file: png bytes}, "notes": [...]}``;
        a gallery entry names the group, request, labels, confidence and its PNG file.
    """
    classes = list(ref.classes)
    out = {"slices": slices(win, classes), "gallery": [], "images": {}, "notes": []}
    chosen = select(win, classes, per_group)
    if not chosen:
        out["notes"].append("no input images were captured in this window, so no saliency "
                            "maps (raise the predictor's image sample rate)")
        return out
    if torch_model is None:
        if version is None:
            out["notes"].append("no registered version to read PyTorch weights from")
            return out
        try:
            torch_model, torch_meta = load_torch_model(registry_uri, ref.model, version)
        except (StorageError, FileNotFoundError, ValueError) as exc:
            out["notes"].append(f"no saliency maps: the version has no usable PyTorch "
                                f"weights ({exc})")
            return out
    from PIL import Image

    store = open_store(monitoring_uri)
    size = int(torch_meta["image_size"])
    todo, pixels = [], []
    for group, records in chosen.items():
        for r in records:
            key = f"capture/images/{r['image_sha256'][:2]}/{r['image_sha256']}"
            try:
                img = decode_image(store.get(key))
            except (StorageError, ImageRejected) as exc:
                out["notes"].append(f"captured image {r['image_sha256'][:12]} unusable: {exc}")
                continue
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            pixels.append(np.asarray(img, np.uint8).transpose(2, 0, 1))
            todo.append((group, r))
    if not todo:
        return out
    images = np.stack(pixels)
    targets = [torch_meta["classes"].index(r["label"]) if r["label"] in torch_meta["classes"]
               else 0 for _, r in todo]
    try:
        maps = saliency_maps(torch_model, torch_meta, images, targets)
    except ImportError as exc:
        out["notes"].append(f"no saliency maps: {exc}. Install the monitor extra: pip install "
                            "'mlops-workflow[monitor]' (captum)")
        return out
    for n, ((group, r), img, sal) in enumerate(zip(todo, images, maps, strict=True)):
        confidence = float(r["probabilities"].get(r["label"], 0.0))
        truth = r.get("true_label")
        title = (f"{group}: predicted {r['label']} p={confidence:.2f}"
                 + (f", true {truth}" if truth else ""))
        name = f"gallery/{n:02d}-{group.replace(' ', '_')}.png"
        out["images"][name] = _figure(img, sal, title)
        out["gallery"].append({"group": group, "request_id": r["request_id"],
                               "index": r["index"], "label": r["label"], "true_label": truth,
                               "confidence": round(confidence, 4),
                               "brightness": r["stats"].get("brightness"), "file": name})
    return out
