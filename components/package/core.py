"""Packaging: ONNX export with a dynamic batch axis, checker, parity check, model card.

A package is a folder that serving needs and nothing else:

    model.onnx     input ``input`` float32 [batch, 3, S, S] (normalised), output
                   ``probabilities`` float32 [batch, classes]; metadata_props carry the class
                   names, input size, normalisation, dataset version and model version
    metadata.json  the same facts, plus metrics and parity results
    MODEL_CARD.md  intended use, data version, metrics, bias check, limits
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

OPSET = 17
PARITY_ATOL = 1e-4


class PackageError(RuntimeError):
    """The exported model is not faithful to the trained one, or cannot be exported."""


def model_version_id(state_dict_bytes: bytes) -> str:
    """A content id of the trained weights (the registry adds its integer version)."""
    return hashlib.sha256(state_dict_bytes).hexdigest()[:16]


def export_onnx(model, meta: dict, model_version: str) -> bytes:
    """Exports ``softmax(model(x))`` to ONNX with a dynamic batch axis and metadata."""
    import onnx
    import torch

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.softmax(self.inner(x), dim=1)

    size = meta["image_size"]
    buf = io.BytesIO()
    wrapped = WithSoftmax(model).eval()
    try:
        torch.onnx.export(wrapped, (torch.zeros(2, 3, size, size),), buf, dynamo=False,
                          input_names=["input"], output_names=["probabilities"],
                          dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
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


def read_onnx_metadata(onnx_bytes: bytes) -> dict:
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    return {p.key: p.value for p in proto.metadata_props}


def onnx_predictor(onnx_bytes: bytes):
    """A ``uint8 NCHW -> probabilities`` function over an ONNX Runtime session, normalising
    with the statistics stored in the model itself."""
    import onnxruntime as ort

    meta = read_onnx_metadata(onnx_bytes)
    mean = np.array(json.loads(meta["mean"]), np.float32).reshape(1, 3, 1, 1)
    std = np.array(json.loads(meta["std"]), np.float32).reshape(1, 3, 1, 1)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(["probabilities"],
                           {"input": ((x.astype(np.float32) / 255.0) - mean) / std})[0]

    return predict


def parity_check(torch_predict, onnx_predict, images: np.ndarray,
                 atol: float = PARITY_ATOL) -> dict:
    """Same argmax everywhere and probabilities within ``atol``; raises otherwise."""
    from components.evaluate.core import predict_in_batches

    if len(images) == 0:
        raise PackageError("Parity check needs test images; the test split is empty.")
    a = predict_in_batches(torch_predict, images)
    b = predict_in_batches(onnx_predict, images)
    diff = float(np.abs(a - b).max())
    mismatches = int((a.argmax(1) != b.argmax(1)).sum())
    result = {"images": int(len(images)), "max_abs_diff": diff, "argmax_mismatches": mismatches,
              "atol": atol, "passed": diff <= atol and mismatches == 0}
    if not result["passed"]:
        raise PackageError(f"ONNX parity check failed on {len(images)} test images: max abs "
                           f"difference {diff:.2e} (allowed {atol:.0e}), {mismatches} argmax "
                           "mismatches. The exported graph does not match the trained model.")
    return result


def model_card(meta: dict, evaluation: dict, parity: dict, model_name: str) -> str:
    m = evaluation["metrics"]
    bias = evaluation["gate"]["bias"]
    rows = "\n".join(f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
                     f"{v['support']} |" for c, v in m["per_class"].items())
    hp = meta["hparams"]
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
{parity['max_abs_diff']:.2e}, {parity['argmax_mismatches']} argmax mismatches.

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

    from components.evaluate.core import torch_predictor

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    version_id = model_version_id(buf.getvalue())
    onnx_bytes = export_onnx(model, meta, version_id)
    parity = parity_check(torch_predictor(model, meta["mean"], meta["std"]),
                          onnx_predictor(onnx_bytes), test_images)
    logger.info("ONNX parity: max abs diff %.2e over %d images", parity["max_abs_diff"],
                parity["images"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(onnx_bytes)
    metadata = {
        "model_name": model_name, "model_version": version_id, "arch": meta["arch"],
        "classes": meta["classes"], "image_size": meta["image_size"], "mean": meta["mean"],
        "std": meta["std"], "dataset_version": meta["dataset_version"],
        "hparams": meta["hparams"], "opset": OPSET, "metrics": {
            "accuracy": evaluation["metrics"]["accuracy"],
            "macro_f1": evaluation["metrics"]["macro"]["f1"],
            "roc_auc": evaluation["metrics"]["roc_auc"]},
        "parity": parity,
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (out / "MODEL_CARD.md").write_text(model_card({**meta, "model_version": version_id},
                                                  evaluation, parity, model_name))
    return metadata
