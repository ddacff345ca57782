"""ONNX packaging: checker, dynamic batch, metadata, parity, and a failing parity check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.common.runtime import (
    onnx_embedder,
    onnx_predictor,
    read_onnx_metadata,
    torch_embedder,
    torch_predictor,
)
from components.ingest.snapshot import read_split
from components.package import core
from components.train.core import build_model, load_images, load_model

EVALUATION = {"metrics": {"accuracy": 0.9, "macro": {"f1": 0.9}, "roc_auc": 0.95, "count": 3,
                          "per_class": {"cats": {"precision": 0.9, "recall": 0.9, "f1": 0.9,
                                                 "support": 2},
                                        "dogs": {"precision": 0.9, "recall": 0.9, "f1": 0.9,
                                                 "support": 1}}},
              "gate": {"bias": {"recall_gap": 0.0, "best_class": "cats",
                                "worst_class": "dogs", "threshold": 0.1, "passed": True}}}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_package_is_checked_faithful_and_self_describing(dataset_dirs, trained_model_dir,
                                                         tmp_path):
    import onnx
    import onnxruntime as ort

    model, meta = load_model(trained_model_dir)
    rows, _ = read_split(dataset_dirs[1])
    images = load_images(rows, 32)
    md = core.build_package(model, meta, EVALUATION, images, "pets", tmp_path)
    onnx_bytes = (tmp_path / "model.onnx").read_bytes()
    onnx.checker.check_model(onnx.load_from_string(onnx_bytes))
    assert md["parity"]["passed"] and md["parity"]["max_abs_diff"] <= 1e-4
    assert md["parity"]["images"] == len(images)
    props = read_onnx_metadata(onnx_bytes)
    assert json.loads(props["classes"]) == ["cats", "dogs"]
    assert props["input_size"] == "32" and json.loads(props["mean"]) == meta["mean"]
    assert props["dataset_version"] == meta["dataset_version"]
    assert props["model_version"] == md["model_version"]
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "embedding"]
    for batch in (1, 7):  # dynamic batch axis
        out, emb = session.run(None, {"input": np.zeros((batch, 3, 32, 32), np.float32)})
        assert out.shape == (batch, 2) and np.allclose(out.sum(1), 1, atol=1e-5)
        assert emb.shape == (batch, 64)  # small_cnn's penultimate layer
    # The embedding is held to the same parity check as the probabilities.
    assert md["parity"]["embedding"]["passed"] and md["embedding_dim"] == 64
    assert md["parity"]["embedding"]["max_abs_diff"] <= 1e-4 * md["parity"]["embedding"]["scale"]
    onnx_emb = onnx_embedder(onnx_bytes)(images[:9])
    torch_emb = torch_embedder(model, meta["mean"], meta["std"])(images[:9])
    assert np.abs(onnx_emb - torch_emb).max() <= 1e-4 * max(1.0, np.abs(torch_emb).max())
    assert np.abs(onnx_emb).max() > 0  # a real layer output, not zeros
    # The PyTorch weights are part of the package and give the same answers.
    torch_model, torch_meta = core.load_torch_model(tmp_path)
    assert torch_meta["classes"] == meta["classes"]
    assert np.allclose(torch_embedder(torch_model, meta["mean"], meta["std"])(images[:9]),
                       torch_emb, atol=1e-6)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert meta["dataset_version"] in card and "Intended use" in card and "Limits" in card
    assert json.loads((tmp_path / "metadata.json").read_text())["opset"] == core.OPSET


def test_parity_check_fails_when_the_exported_graph_differs(trained_model_dir, dataset_dirs):
    import torch

    model, meta = load_model(trained_model_dir)
    torch.manual_seed(1)
    other = build_model("small_cnn", 2).eval()
    onnx_bytes = core.export_onnx(other, meta, "x")
    rows, _ = read_split(dataset_dirs[1])
    with pytest.raises(core.PackageError, match="parity check failed"):
        core.parity_check(torch_predictor(model, meta["mean"], meta["std"]),
                          onnx_predictor(onnx_bytes), load_images(rows.head(40), 32))


def test_embedding_parity_fails_when_the_exported_embedding_differs(trained_model_dir,
                                                                    dataset_dirs):
    import torch

    model, meta = load_model(trained_model_dir)
    onnx_bytes = core.export_onnx(model, meta, "x")
    torch.manual_seed(1)
    other = build_model("small_cnn", 2).eval()
    rows, _ = read_split(dataset_dirs[1])
    images = load_images(rows.head(20), 32)
    with pytest.raises(core.PackageError, match="embedding: max abs difference"):
        core.parity_check(torch_predictor(model, meta["mean"], meta["std"]),
                          onnx_predictor(onnx_bytes), images,
                          torch_embed=torch_embedder(other, meta["mean"], meta["std"]),
                          onnx_embed=onnx_embedder(onnx_bytes))


def test_a_package_without_torch_weights_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="package and register the model again"):
        core.load_torch_model(tmp_path)
