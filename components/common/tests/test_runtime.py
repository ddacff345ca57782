"""The model runtime: a packaged ONNX model opened once, normalised as in training, and the
same answers from the ONNX and the PyTorch runners."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from components.common.runtime import (
    ModelMetadataError,
    UnsupportedModelError,
    load_onnx,
    onnx_embedder,
    onnx_predictor,
    predict_in_batches,
    read_onnx_metadata,
    torch_embedder,
    torch_normaliser,
    torch_predictor,
    with_embedding,
)

SIZE = 16
META = {"classes": ["cats", "dogs"], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}


def _tiny_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(),
        torch.nn.Linear(8, 2)).eval()


def _export(module, outputs: list[str], props: dict[str, str]) -> bytes:
    import onnx
    import torch

    buf = io.BytesIO()
    torch.onnx.export(module, (torch.zeros(2, 3, SIZE, SIZE),), buf, dynamo=False,
                      input_names=["input"], output_names=outputs,
                      dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]},
                      opset_version=17)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _props(**extra) -> dict[str, str]:
    return {"classes": json.dumps(META["classes"]), "input_size": str(SIZE),
            "mean": json.dumps(META["mean"]), "std": json.dumps(META["std"]), **extra}


@pytest.fixture(scope="module")
def packaged():
    """(torch model, ONNX bytes with probabilities and embedding, as the package step
    exports them)."""
    model = _tiny_model()
    return model, _export(with_embedding(model), ["probabilities", "embedding"],
                          _props(model_version="abc"))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).integers(0, 256, (37, 3, SIZE, SIZE), dtype=np.uint8)


def test_an_onnx_model_describes_itself_and_normalises_as_training(packaged, images):
    _, onnx_bytes = packaged
    model = load_onnx(onnx_bytes)
    assert model.classes == META["classes"] and model.size == SIZE and model.has_embedding
    assert model.metadata == read_onnx_metadata(onnx_bytes)
    assert model.metadata["model_version"] == "abc"
    assert model.mean.shape == model.std.shape == (1, 3, 1, 1)
    assert model.mean.dtype == model.std.dtype == np.float32
    # The network input is exactly what training fed the network: (x / 255 - mean) / std.
    expected = ((images.astype(np.float32) / 255.0)
                - np.array(META["mean"], np.float32).reshape(1, 3, 1, 1)) / np.array(
                    META["std"], np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_array_equal(model.normalise(images), expected)
    probs, emb = model.session.run(["probabilities", "embedding"], {"input": expected})
    got_probs, got_emb = model.run(images, ("probabilities", "embedding"))
    np.testing.assert_array_equal(got_probs, probs)
    np.testing.assert_array_equal(got_emb, emb)
    # In batches: the same numbers, concatenated.
    batched = model.run(images, ("probabilities", "embedding"), batch=8)
    np.testing.assert_allclose(batched[0], probs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(batched[1], emb, rtol=0, atol=1e-6)
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and emb.shape == (len(images), 8)


def test_onnx_and_torch_runners_agree(packaged, images):
    model, onnx_bytes = packaged
    onnx_probs = predict_in_batches(onnx_predictor(onnx_bytes), images, batch=10)
    torch_probs = predict_in_batches(torch_predictor(model, META["mean"], META["std"]), images)
    assert onnx_probs.shape == (len(images), 2)
    np.testing.assert_allclose(onnx_probs, torch_probs, rtol=0, atol=1e-5)
    onnx_emb = onnx_embedder(onnx_bytes)(images)
    torch_emb = torch_embedder(model, META["mean"], META["std"])(images)
    np.testing.assert_allclose(onnx_emb, torch_emb, rtol=0, atol=1e-5)
    assert np.abs(torch_emb).max() > 0  # the input of the last Linear layer, not zeros
    # The embedder wraps a copy: the caller's model is unchanged and gives the same answers.
    np.testing.assert_array_equal(
        torch_predictor(model, META["mean"], META["std"])(images), torch_probs)


def test_torch_normaliser_is_the_onnx_models_normalisation(packaged, images):
    _, onnx_bytes = packaged
    x = torch_normaliser(META["mean"], META["std"])(images)
    np.testing.assert_array_equal(x.numpy(), load_onnx(onnx_bytes).normalise(images))


def test_the_session_runs_with_the_callers_threads_and_spinning(packaged):
    _, onnx_bytes = packaged
    options = load_onnx(onnx_bytes, threads=1, spin_wait=False).session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    options = load_onnx(onnx_bytes).session.get_session_options()
    assert options.intra_op_num_threads == 0  # ONNX Runtime's default: one per core
    assert load_onnx(onnx_bytes).session.get_providers() == ["CPUExecutionProvider"]


def test_a_model_without_metadata_names_what_is_missing():
    props = _props()
    del props["mean"], props["input_size"]
    onnx_bytes = _export(_tiny_model(), ["probabilities"], props)
    with pytest.raises(ModelMetadataError, match=r"models/x.onnx lacks metadata "
                       r"\['input_size', 'mean'\]: package it with the package step"):
        load_onnx(onnx_bytes, source="models/x.onnx")
    with pytest.raises(ValueError, match="The ONNX model lacks metadata"):
        onnx_predictor(onnx_bytes)


def test_an_embedder_needs_the_embedding_output(images):
    onnx_bytes = _export(_tiny_model(), ["probabilities"], _props())
    assert not load_onnx(onnx_bytes).has_embedding
    assert onnx_predictor(onnx_bytes)(images[:3]).shape == (3, 2)
    with pytest.raises(UnsupportedModelError, match="no 'embedding' output: package it again"):
        onnx_embedder(onnx_bytes)


def test_an_embedding_needs_a_last_linear_layer():
    import torch

    with pytest.raises(UnsupportedModelError, match="Sequential has no Linear layer"):
        with_embedding(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)))
