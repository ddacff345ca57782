"""Simulated camera traffic for notebooks, tests and benchmarks, captured like production.

Renders images of the sample lake (``components.datagen``: day, night or blur, any class
mix), asks the packaged ONNX model about them exactly as the predictor does (probabilities and
the ``embedding`` output, statistics by ``images.image_stats``), and hands each answer to the
same :class:`~components.monitor.capture.CaptureWriter` the predictor uses, so the monitoring
store holds what production would have written. Optionally stores the true labels through the
feedback path, as a reviewer would later.

This is not a stand-in for serving in the tests of serving itself (those run a real KServe
server over HTTP); it lets the monitor be exercised at window sizes (thousands of requests,
days of history) that would take long through HTTP on a small machine.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

import numpy as np

from components.datagen.core import LakeSpec, render

logger = logging.getLogger(__name__)


@dataclass
class SimulatedModel:
    """A packaged model as the predictor runs it: ONNX Runtime over ``model.onnx``."""

    classes: list[str]
    size: int
    session: object
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_onnx(cls, onnx_bytes: bytes) -> SimulatedModel:
        import onnxruntime as ort

        from components.package.core import read_onnx_metadata

        meta = read_onnx_metadata(onnx_bytes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        return cls(json.loads(meta["classes"]), int(meta["input_size"]), session,
                   np.array(json.loads(meta["mean"]), np.float32).reshape(1, 3, 1, 1),
                   np.array(json.loads(meta["std"]), np.float32).reshape(1, 3, 1, 1))

    @classmethod
    def from_registry(cls, registry_uri: str, model: str, version: int) -> SimulatedModel:
        from components.common.registry import ModelRegistry

        return cls.from_onnx(ModelRegistry(registry_uri).read_file(model, version, "model.onnx"))

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = ((pixels.astype(np.float32) / 255.0) - self.mean) / self.std
        probs, emb = self.session.run(["probabilities", "embedding"], {"input": x})
        return probs, emb


def _lake_class(label: str, classes: list[str]) -> str:
    """The lake's ``cat``/``dog`` as the model's class name (``cats``/``dogs``)."""
    for c in classes:
        if c == label or c == label + "s":
            return c
    return label


def simulate(model: SimulatedModel, monitoring_uri: str, model_name: str, model_version: str,
             spec: LakeSpec, *, start_time: float, seconds_apart: float = 1.0,
             first_index: int = 0, image_rate: float = 0.0, label_share: float = 0.0,
             labelled_by: str = "reviewer", revision: str = "stable", batch: int = 64,
             seed: int = 0) -> dict:
    """Serves ``spec.n`` images (indices from ``first_index``) and captures every answer.

    Args:
        model: The packaged model.
        monitoring_uri: The monitoring store.
        model_name, model_version: What the records say served them.
        spec: Which images: condition, class mix, size, seed (``spec.n`` of them).
        start_time: Unix time of the first request; each next one ``seconds_apart`` later.
        first_index: Index of the first image in the lake (to draw fresh images).
        image_rate: Share of inputs whose image is kept (for the saliency gallery).
        label_share: Share of requests whose true label is stored afterwards.
        labelled_by: Who the labels are from.
        revision: ``stable`` or ``canary``.
        batch: Images per ONNX call.
        seed: Seeds the image and label sampling.

    Returns:
        ``{"requests", "labelled", "accuracy", "first_time", "last_time"}``.
    """
    from PIL import Image

    from components.common.images import decode_image_and_mode, image_stats
    from components.monitor.capture import CaptureConfig, CaptureWriter

    rng = np.random.default_rng(seed)
    writer = CaptureWriter(CaptureConfig(uri=monitoring_uri, image_rate=image_rate,
                                         batch_records=500, batch_seconds=3600,
                                         queue_records=max(1000, spec.n + 10)), model_name)
    labels, right, t = [], 0, start_time
    try:
        for lo in range(0, spec.n, batch):
            idx = range(first_index + lo, first_index + min(spec.n, lo + batch))
            rendered = [render(spec, i) for i in idx]
            pixels, stats = [], []
            for _, data in rendered:
                decoded = decode_image_and_mode(data)  # (image, mode[, full size])
                img = decoded[0]
                stats.append(image_stats(*decoded))
                if img.size != (model.size, model.size):
                    img = img.resize((model.size, model.size), Image.BILINEAR)
                pixels.append(np.asarray(img, np.uint8).transpose(2, 0, 1))
            probs, emb = model.run(np.stack(pixels))
            for (truth, data), p, e, s in zip(rendered, probs, emb, stats, strict=True):
                label = model.classes[int(np.argmax(p))]
                truth = _lake_class(truth, model.classes)
                rid = uuid.UUID(int=int(rng.integers(0, 2 ** 63)) << 64 |
                                int(rng.integers(0, 2 ** 63))).hex
                record = {"request_id": rid, "index": 0, "time": t, "model": model_name,
                          "model_version": str(model_version), "revision": revision,
                          "protocol": "v1", "stats": s,
                          "embedding": [round(float(v), 6) for v in e],
                          "label": label,
                          "probabilities": {c: round(float(v), 6)
                                            for c, v in zip(model.classes, p, strict=True)},
                          "latency_ms": 5.0}
                keep = image_rate > 0 and rng.random() < image_rate
                writer.submit(record, data if keep else None)
                right += label == truth
                if label_share > 0 and rng.random() < label_share:
                    labels.append((rid, truth))
                t += seconds_apart
    finally:
        writer.close(timeout=120)
    if writer.counts["dropped"] or writer.counts["failed"]:
        logger.warning("Simulation lost records: %s", writer.counts)
    if labels:
        from components.monitor.feedback import LabelRequest, LabelStore

        LabelStore(monitoring_uri, model_name, model.classes).add_many(
            [LabelRequest(rid, truth, 0, by=labelled_by) for rid, truth in labels],
            source="simulation")
    return {"requests": spec.n, "labelled": len(labels), "accuracy": right / max(spec.n, 1),
            "first_time": start_time, "last_time": t - seconds_apart}
