"""Packaging: ONNX export with a dynamic batch axis, checker, parity check, model card.

A package is a folder that serving needs and nothing else:

    model.onnx     input ``input`` float32 [batch, 3, S, S] (normalised), outputs
                   ``probabilities`` float32 [batch, classes] and ``embedding`` float32
                   [batch, D] (the penultimate layer, for drift detection); metadata_props
                   carry the class names, input size, normalisation, dataset version and
                   model version
    metadata.json  the same facts, plus metrics and parity results
    MODEL_CARD.md  intended use, data version, metrics, bias check, limits
    torch/model.pt, torch/model.json
                   the trained PyTorch weights and their description (the training step's
                   model folder), registered with the ONNX model as one version, for what
                   needs gradients (saliency maps) or further training
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from components.common.errors import MlopsError
from components.common.runtime import (
    onnx_embedder,
    onnx_predictor,
    predict_in_batches,
    torch_embedder,
    torch_predictor,
    with_embedding,
)
from components.train.core import load_model

logger = logging.getLogger(__name__)

OPSET = 17
PARITY_ATOL = 1e-4
TORCH_DIR = "torch"


class PackageError(MlopsError, RuntimeError):
    """The exported model is not faithful to the trained one, or cannot be exported."""


def model_version_id(state_dict_bytes: bytes) -> str:
    """A content id of the trained weights (the registry adds its integer version)."""
    return hashlib.sha256(state_dict_bytes).hexdigest()[:16]


def export_onnx(model, meta: dict, model_version: str) -> bytes:
    """Exports ``softmax(model(x))`` and the embedding to ONNX with a dynamic batch axis.

    Outputs: ``probabilities`` [batch, classes] and ``embedding`` [batch, D], the input of the
    classifier's last Linear layer (what drift detection compares).
    """
    import onnx
    import torch

    size = meta["image_size"]
    buf = io.BytesIO()
    wrapped = with_embedding(model)
    try:
        torch.onnx.export(wrapped, (torch.zeros(2, 3, size, size),), buf, dynamo=False,
                          input_names=["input"], output_names=["probabilities", "embedding"],
                          dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"},
                                        "embedding": {0: "batch"}},
                          opset_version=OPSET)
    except Exception as exc:  # torch raises many types; the step must fail with context
        raise PackageError(f"ONNX export of {meta['arch']} failed: {exc}") from exc
    proto = onnx.load_from_string(buf.getvalue())
    props = {
        "classes": json.dumps(meta["classes"]),
        "input_size": str(size),
        "input_layout": "NCHW",
        "mean": json.dumps(meta["mean"]),
        "std": json.dumps(meta["std"]),
        "scale": "1/255",
        "dataset_version": meta["dataset_version"],
        "model_version": model_version,
        "arch": meta["arch"],
    }
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "mlops-workflow"
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def parity_check(torch_predict, onnx_predict, images: np.ndarray,
                 atol: float = PARITY_ATOL, torch_embed=None, onnx_embed=None) -> dict:
    """Same argmax everywhere and probabilities within ``atol``; raises otherwise.

    With ``torch_embed`` and ``onnx_embed`` (``uint8 NCHW -> embeddings`` functions) the
    embedding output is held to the same tolerance, relative to the embedding's scale
    (``max |a - b| <= atol * max(1, max |a|)``), since its values are not bounded by 1.
    """
    if len(images) == 0:
        raise PackageError("Parity check needs test images; the test split is empty.")
    a = predict_in_batches(torch_predict, images)
    b = predict_in_batches(onnx_predict, images)
    diff = float(np.abs(a - b).max())
    mismatches = int((a.argmax(1) != b.argmax(1)).sum())
    result = {"images": int(len(images)), "max_abs_diff": diff, "argmax_mismatches": mismatches,
              "atol": atol, "passed": diff <= atol and mismatches == 0}
    problems = []
    if not result["passed"]:
        problems.append(f"probabilities: max abs difference {diff:.2e} (allowed {atol:.0e}), "
                        f"{mismatches} argmax mismatches")
    if torch_embed is not None and onnx_embed is not None:
        ea = predict_in_batches(torch_embed, images)
        eb = predict_in_batches(onnx_embed, images)
        if ea.shape != eb.shape:
            raise PackageError(f"ONNX parity check failed: the embedding has shape {eb.shape}, "
                               f"the trained model's {ea.shape}.")
        scale = max(1.0, float(np.abs(ea).max()))
        ediff = float(np.abs(ea - eb).max())
        result["embedding"] = {"dim": int(ea.shape[1]), "max_abs_diff": ediff,
                               "scale": scale, "passed": ediff <= atol * scale}
        if not result["embedding"]["passed"]:
            result["passed"] = False
            problems.append(f"embedding: max abs difference {ediff:.2e} (allowed "
                            f"{atol * scale:.1e} = {atol:.0e} x scale {scale:.3g})")
    if problems:
        raise PackageError(f"ONNX parity check failed on {len(images)} test images: "
                           + "; ".join(problems)
                           + ". The exported graph does not match the trained model.")
    return result


def model_card(meta: dict, evaluation: dict, parity: dict, model_name: str) -> str:
    m = evaluation["metrics"]
    bias = evaluation["gate"]["bias"]
    rows = "\n".join(f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
                     f"{v['support']} |" for c, v in m["per_class"].items())
    hp = meta["hparams"]
    e = parity.get("embedding")
    emb = (f"; embedding ({e['dim']} values, the monitor's drift input) max abs difference "
           f"{e['max_abs_diff']:.2e}" if e else "")
    return f"""# Model card: {model_name}

## Intended use
Classifies a camera frame of the pet park as one of: {', '.join(meta['classes'])}. Input: one
RGB photo, resized to {meta['image_size']}x{meta['image_size']} and normalised with the
statistics below. Output: a probability per class. For counting and routing footage, not for
decisions about individual animals or people.

## Training data
- Dataset version: `{meta['dataset_version']}` (the manifest hash of the ingested snapshot)
- Normalisation (from the training split): mean {meta['mean']}, std {meta['std']}

## Model
- Architecture: {meta['arch']}; model version id `{meta.get('model_version', '')}`
- Hyperparameters: lr {hp['lr']}, batch size {hp['batch_size']}, weight decay
  {hp['weight_decay']}, best epoch {meta['best_epoch']} of at most {hp['epochs']}, seed
  {hp['seed']}
- Validation accuracy (split carved from training data): {meta['val_accuracy']:.4f}

## Test results ({m['count']} held-out images)
Accuracy {m['accuracy']:.4f}, macro F1 {m['macro']['f1']:.4f}, ROC AUC {m['roc_auc']:.4f}.

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

**Bias check:** recall gap {bias['recall_gap']:.4f} between {bias['best_class']} and
{bias['worst_class']} (maximum {bias['threshold']}): {'passed' if bias['passed'] else 'FAILED'}.

**ONNX parity:** {parity['images']} test images, max abs difference
{parity['max_abs_diff']:.2e}, {parity['argmax_mismatches']} argmax mismatches{emb}.

## Limits
- Trained on the data version above only; new camera positions, night IR mode, blur or a
  different mix of animals are drift, and the monitoring step should watch for them.
- Two-class model: any other animal (or a person) is forced into one of the classes.
- Metrics are from one held-out split of the same data lake, not from the field.
"""


def build_package(model, meta: dict, evaluation: dict, test_images: np.ndarray, model_name: str,
                  out_dir: str | os.PathLike) -> dict:
    """Exports, checks and writes the package folder; returns its metadata."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    version_id = model_version_id(buf.getvalue())
    onnx_bytes = export_onnx(model, meta, version_id)
    parity = parity_check(torch_predictor(model, meta["mean"], meta["std"]),
                          onnx_predictor(onnx_bytes), test_images,
                          torch_embed=torch_embedder(model, meta["mean"], meta["std"]),
                          onnx_embed=onnx_embedder(onnx_bytes))
    logger.info("ONNX parity: max abs diff %.2e (probabilities), %.2e (embedding) over %d "
                "images", parity["max_abs_diff"], parity["embedding"]["max_abs_diff"],
                parity["images"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(onnx_bytes)
    (out / TORCH_DIR).mkdir(exist_ok=True)
    (out / TORCH_DIR / "model.pt").write_bytes(buf.getvalue())
    (out / TORCH_DIR / "model.json").write_text(json.dumps(meta, indent=2))
    metadata = {
        "model_name": model_name, "model_version": version_id, "arch": meta["arch"],
        "classes": meta["classes"], "image_size": meta["image_size"], "mean": meta["mean"],
        "std": meta["std"], "dataset_version": meta["dataset_version"],
        "hparams": meta["hparams"], "opset": OPSET, "metrics": {
            "accuracy": evaluation["metrics"]["accuracy"],
            "macro_f1": evaluation["metrics"]["macro"]["f1"],
            "roc_auc": evaluation["metrics"]["roc_auc"]},
        "embedding_dim": parity["embedding"]["dim"],
        "parity": parity,
        "torch_weights": f"{TORCH_DIR}/model.pt",
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (out / "MODEL_CARD.md").write_text(model_card({**meta, "model_version": version_id},
                                                  evaluation, parity, model_name))
    return metadata


def load_torch_model(package_dir: str | os.PathLike):
    """The PyTorch model registered with a package: ``(module in eval mode, model.json)``.

    Raises:
        FileNotFoundError: The package predates registering the weights with it.
    """
    folder = Path(package_dir) / TORCH_DIR
    if not (folder / "model.pt").is_file():
        raise FileNotFoundError(f"No {TORCH_DIR}/model.pt in {package_dir}: the package was "
                                "built before the PyTorch weights were registered with it; "
                                "package and register the model again.")
    return load_model(folder)
