"""One model runtime: the packaged ONNX model and the trained PyTorch model, run the same way
by every step that runs one.

A model's input is a batch of photos as ``uint8`` ``N x 3 x S x S`` (each one
``images.preprocess_image``), normalised as in training: ``(x / 255 - mean) / std`` with the
training split's per-channel statistics, in float32. The ONNX package carries those
statistics, the class names and the input size in its metadata (:func:`read_onnx_metadata`),
so everything a runner needs comes from the model itself:

* :func:`load_onnx` opens the one ONNX Runtime session (threads, spinning and providers as the
  caller asks) and reads the metadata into an :class:`OnnxModel`, whose :meth:`~OnnxModel.run`
  normalises and asks for the ``probabilities`` and, for drift detection, the ``embedding``
  output. The evaluation's champion, the packaging parity check, the monitoring reference,
  the capture simulation and the predictor all open their model with it.
* :func:`onnx_predictor` and :func:`onnx_embedder`: ``uint8 NCHW -> probabilities`` and
  ``-> embeddings`` functions over it; :func:`torch_predictor` and :func:`torch_embedder` are
  the same functions over the trained PyTorch model (the embedding is the input of the
  network's last Linear layer, :func:`with_embedding`), so the two can be compared.
* :func:`predict_in_batches` runs any of those functions over many images.

onnxruntime, onnx and torch are imported on first use, so that importing this module (and
compiling a pipeline) needs none of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.common.errors import MlopsError, UserError

#: The metadata a packaged ONNX model must carry to be run.
REQUIRED_METADATA = ("classes", "input_size", "mean", "std")
#: The outputs of a packaged model: class probabilities and the penultimate layer.
PROBABILITIES, EMBEDDING = "probabilities", "embedding"
INPUT = "input"


class ModelMetadataError(UserError, ValueError):
    """A model file lacks the metadata (classes, input size, normalisation) needed to run it."""


class UnsupportedModelError(MlopsError, RuntimeError):
    """A model lacks the part it was asked for (the ``embedding`` output, a last Linear layer)."""


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------


def read_onnx_metadata(onnx_bytes: bytes) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model (what the package step recorded), as a dict."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    return {p.key: p.value for p in proto.metadata_props}


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``uint8 NCHW -> float32`` network input: ``(x / 255 - mean) / std``, as in training.

    Args:
        mean, std: float32 ``(1, 3, 1, 1)`` (:attr:`OnnxModel.mean` and ``std``).
    """
    return ((x.astype(np.float32) / 255.0) - mean) / std


@dataclass(eq=False)
class OnnxModel:
    """An ONNX Runtime session over a packaged model and what its metadata says.

    Attributes:
        session: The ``onnxruntime.InferenceSession``.
        metadata: Every metadata entry (``model_version``, ``dataset_version``, ``arch`` …).
        classes: Class names, in the order of the probabilities.
        size: The input side ``S``.
        mean, std: float32 ``(1, 3, 1, 1)``: the training split's channel statistics.
        has_embedding: The model has the ``embedding`` output.
    """

    session: Any
    metadata: dict[str, str]
    classes: list[str]
    size: int
    mean: np.ndarray
    std: np.ndarray
    has_embedding: bool

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """``uint8 NCHW -> float32``: the network input, as training normalised it."""
        return normalise(x, self.mean, self.std)

    def run(self, x: np.ndarray, outputs: Sequence[str] = (PROBABILITIES,),
            batch: int | None = None) -> list[np.ndarray]:
        """Normalises ``uint8 NCHW`` images and runs the model: one array per output name.

        Args:
            batch: Images per ONNX Runtime call (the results are concatenated); None: all in
                one call.
        """
        names = list(outputs)
        if batch is None:
            return self.session.run(names, {INPUT: self.normalise(x)})
        parts = [self.session.run(names, {INPUT: self.normalise(x[i:i + batch])})
                 for i in range(0, len(x), batch)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]


def load_onnx(onnx_bytes: bytes, *, threads: int = 0, spin_wait: bool | None = None,
              gpu: bool = False, source: str = "The ONNX model") -> OnnxModel:
    """Opens a packaged ONNX model: its session and its metadata.

    Args:
        threads: ONNX Runtime's intra-op threads (0: its default, one per core).
        spin_wait: Whether idle ONNX Runtime threads spin (None: its default, they do). A
            server turns it off: spinning takes the cores from the HTTP server.
        gpu: Use CUDA when this ONNX Runtime has it (else, and by default, the CPU).
        source: Names the model in errors (a path).

    Raises:
        ModelMetadataError: The model lacks ``classes``, ``input_size``, ``mean`` or ``std``.
    """
    import onnxruntime as ort

    meta = read_onnx_metadata(onnx_bytes)
    missing = set(REQUIRED_METADATA) - set(meta)
    if missing:
        raise ModelMetadataError(f"{source} lacks metadata {sorted(missing)}: package it with "
                                 "the package step, which records what serving needs.")
    wanted = ("CUDAExecutionProvider", "CPUExecutionProvider") if gpu else (
        "CPUExecutionProvider",)
    providers = [p for p in wanted if p in ort.get_available_providers()]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if spin_wait is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if spin_wait else "0")
    session = ort.InferenceSession(onnx_bytes, options, providers=providers)
    return OnnxModel(
        session=session, metadata=meta, classes=json.loads(meta["classes"]),
        size=int(meta["input_size"]),
        mean=np.array(json.loads(meta["mean"]), np.float32).reshape(1, 3, 1, 1),
        std=np.array(json.loads(meta["std"]), np.float32).reshape(1, 3, 1, 1),
        has_embedding=EMBEDDING in {o.name for o in session.get_outputs()})


def onnx_predictor(onnx_bytes: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A ``uint8 NCHW -> probabilities`` function over an ONNX Runtime session, normalising
    with the statistics stored in the model itself."""
    model = load_onnx(onnx_bytes)
    return lambda x: model.run(x)[0]


def onnx_embedder(onnx_bytes: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A ``uint8 NCHW -> embeddings`` function over the package's ``embedding`` output.

    Raises:
        UnsupportedModelError: The model has no ``embedding`` output.
    """
    model = load_onnx(onnx_bytes)
    if not model.has_embedding:
        raise UnsupportedModelError("The ONNX model has no 'embedding' output: package it "
                                    "again with this version of the package step.")
    return lambda x: model.run(x, (EMBEDDING,))[0]


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------


def torch_normaliser(mean: Sequence[float], std: Sequence[float]):
    """A ``uint8 NCHW array -> float32 tensor`` function: the network input, normalised as
    :meth:`OnnxModel.normalise` does (for a caller that needs gradients, such as saliency)."""
    import torch

    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return lambda x: (torch.from_numpy(x).float() / 255.0 - m) / s


def torch_predictor(model, mean: Sequence[float], std: Sequence[float]
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """A ``uint8 NCHW -> probabilities`` function over a PyTorch classifier (in eval mode)."""
    import torch

    normalise = torch_normaliser(mean, std)

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(normalise(x)), dim=1).numpy()

    return predict


def penultimate_layer(model):
    """The classifier head: the last ``nn.Linear`` of the network, whose input is the
    embedding (the penultimate layer's output). Every architecture in ``train.core`` ends in
    one (small_cnn's ``Linear``, resnet18's ``fc``, mobilenet_v3_small's last classifier
    layer).

    Raises:
        UnsupportedModelError: The network has no Linear layer.
    """
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise UnsupportedModelError(f"{type(model).__name__} has no Linear layer: the "
                                    "embedding output is the input of the classifier's last "
                                    "Linear layer.")
    return linears[-1]


def with_embedding(model):
    """A copy of ``model`` as a module ``x -> (softmax(model(x)), embedding)``, where the
    embedding is the input of the last Linear layer. The caller's model is not changed.

    The package step exports this module to ONNX, so the package's two outputs are these.
    """
    import copy

    import torch

    class WithEmbedding(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self._captured: list = []
            penultimate_layer(inner).register_forward_pre_hook(self._keep)

        def _keep(self, module, args):
            self._captured.append(torch.flatten(args[0], 1))

        def forward(self, x):
            self._captured.clear()
            probs = torch.softmax(self.inner(x), dim=1)
            return probs, self._captured[-1]

    return WithEmbedding(copy.deepcopy(model)).eval()


def torch_embedder(model, mean: Sequence[float], std: Sequence[float]
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """A ``uint8 NCHW -> embeddings`` function over the PyTorch model (:func:`with_embedding`)."""
    import torch

    wrapped = with_embedding(model)
    normalise = torch_normaliser(mean, std)

    def embed(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return wrapped(normalise(x))[1].numpy()

    return embed


# --------------------------------------------------------------------------------------------
# Either
# --------------------------------------------------------------------------------------------


def predict_in_batches(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                       batch: int = 256) -> np.ndarray:
    """Runs a ``uint8 NCHW -> probabilities`` (or embeddings) function over all images."""
    return np.concatenate([predict(images[i:i + batch]) for i in range(0, len(images), batch)])
