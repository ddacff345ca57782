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

import logging
import uuid

import numpy as np

from components.common.images import (
    decode_image_and_mode,
    image_stats,
    input_quality,
    model_input,
    request_context,
)
from components.common.registry import ModelRegistry
from components.common.runtime import EMBEDDING, PROBABILITIES, OnnxModel, load_onnx
from components.datagen.core import LakeSpec, render
from components.monitor.capture import CaptureConfig, CaptureWriter
from components.monitor.feedback import LabelRequest, LabelStore

logger = logging.getLogger(__name__)


#: ONNX Runtime threads of the simulated predictor: one, so that a simulation run beside the
#: monitor (tests, notebooks, benchmarks) takes one core.
THREADS = 1


def simulated_model(onnx_bytes: bytes) -> OnnxModel:
    """A packaged model as the predictor runs it: the runtime's ONNX model (on one thread)."""
    return load_onnx(onnx_bytes, threads=THREADS)


def registered_model(registry_uri: str, model: str, version: int) -> OnnxModel:
    """:func:`simulated_model` of a registered version's ``model.onnx``."""
    return simulated_model(ModelRegistry(registry_uri).read_file(model, version, "model.onnx"))


def _lake_class(label: str, classes: list[str]) -> str:
    """The lake's ``cat``/``dog`` as the model's class name (``cats``/``dogs``)."""
    for c in classes:
        if c == label or c == label + "s":
            return c
    return label


def simulate(model: OnnxModel, monitoring_uri: str, model_name: str, model_version: str,
             spec: LakeSpec, *, start_time: float, seconds_apart: float = 1.0,
             first_index: int = 0, image_rate: float = 0.0, label_share: float = 0.0,
             labelled_by: str = "reviewer", revision: str = "stable", batch: int = 64,
             seed: int = 0) -> dict:
    """Serves ``spec.n`` images (indices from ``first_index``) and captures every answer.

    Args:
        model: The packaged model (:func:`simulated_model`).
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
                decoded = decode_image_and_mode(data)  # (image, mode, full size)
                stats.append(image_stats(*decoded))
                pixels.append(model_input(decoded[0], model.size))
            probs, emb = model.run(np.stack(pixels), (PROBABILITIES, EMBEDDING))
            for (truth, data), p, e, s in zip(rendered, probs, emb, stats, strict=True):
                label = model.classes[int(np.argmax(p))]
                truth = _lake_class(truth, model.classes)
                rid = uuid.UUID(int=int(rng.integers(0, 2 ** 63)) << 64 |
                                int(rng.integers(0, 2 ** 63))).hex
                record = {"request_id": rid, "index": 0, "time": t, "model": model_name,
                          "model_version": str(model_version), "revision": revision,
                          "protocol": "v1", "stats": s, "input_quality": input_quality(s),
                          "context": request_context(s),
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
        LabelStore(monitoring_uri, model_name, model.classes).add_many(
            [LabelRequest(rid, truth, 0, by=labelled_by) for rid, truth in labels],
            source="simulation")
    return {"requests": spec.n, "labelled": len(labels), "accuracy": right / max(spec.n, 1),
            "first_time": start_time, "last_time": t - seconds_apart}
