"""The KServe predictor: a registered ONNX package behind the V1 and V2 inference protocols.

Everything the model needs (class names, input size, normalisation) is read from the package,
never from code. Camera clients send encoded JPEG/PNG images:

* V1: ``POST /v1/models/<name>:predict`` with
  ``{"instances": [{"image_bytes": {"b64": "…"}}, …]}`` (``{"b64": "…"}`` also accepted);
  answers ``{"predictions": [{"label": "cats", "probabilities": {"cats": 0.98, …}}, …]}``.
* V2 (Open Inference Protocol): ``POST /v2/models/<name>/infer`` with one input that is either
  ``BYTES`` (encoded images: raw bytes with the binary extension, or base64 strings in JSON)
  or ``FP32`` of shape ``[N, 3, S, S]`` already preprocessed; answers two outputs,
  ``label`` (BYTES ``[N]``) and ``probabilities`` (FP32 ``[N, classes]``).

All instances of a request go through ONNX Runtime in one call. Bad input is answered with
``kserve.errors.InvalidInput`` (HTTP 400) and a message saying what was wrong. Images are
decoded in a thread pool, never on the event loop, within a pixel budget per image and per
request that is checked from the image headers before any pixel is decoded. The HTTP edge
(body size, outcome counting, refused routes) is ``guard.py``.

With a capture configuration (``--capture-uri`` or ``MLOPS_CAPTURE_URI``), each instance of a
sampled request is handed to :class:`components.monitor.capture.CaptureWriter`: its input
statistics (measured on the decoded image), the model's embedding (the package's
``embedding`` output, asked for in the same ONNX Runtime call), the prediction and, sampled,
the image itself. Capture never delays or fails an answer (see ``capture.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import json
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.model import InferenceVerb
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, RequestedOutput
from prometheus_client import Counter, Gauge, Histogram

from components.common import prom
from components.common.images import (
    DEFAULT_CONTEXTS,
    DEFAULT_MAX_PIXELS,
    ContextRejected,
    ImageRejected,
    decode_image_and_mode,
    image_stats,
    input_quality,
    model_input,
    parse_contexts,
    request_context,
    tensor_stats,
)
from components.common.runtime import load_onnx, normalise
from components.monitor.capture import CaptureWriter
from components.serve import bodies, guard, kserve_patches, routing, v2_compat
from components.serve.limits import EdgeLimits

logger = logging.getLogger(__name__)

IMAGES = Counter(prom.IMAGES, "Images classified", ["model"])
PREDICTED = Counter(prom.PREDICTED_CLASS, "Predictions per class", ["model", "label"])
LATENCY = Histogram(prom.REQUEST_SECONDS, "Preprocess + predict + postprocess",
                    ["model", "protocol"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))


# Which process answered a scrape: counters can only be differenced within one process (in
# a cluster, two scrapes of a revision's URL may reach different replicas).
SERVER = Gauge(prom.SERVER_INFO, "This server process (value 1)",
               ["instance", "model", "model_version"])


OUTPUTS = ("label", "probabilities")
#: The request header (V1 and V2 over HTTP) or V2 request parameter in which a camera client
#: may say which of the deployment's contexts (``MLOPS_CONTEXTS``) its frames were taken in.
CONTEXT_HEADER = "x-camera-context"


@dataclass
class _Batch:
    """What flows from preprocess to postprocess for one request.

    ``instances`` holds, per instance, what :meth:`PetClassifier.describe_image` returned for
    the decoded image (before resizing); it is empty for preprocessed FP32 requests.
    """

    x: np.ndarray
    protocol: str
    request_id: str  # made by this server, the id labels are joined by
    started: float
    client_request_id: str = ""  # what the client called it (x-request-id or V2 id), if any
    probs: np.ndarray | None = None
    sizes: list = field(default_factory=list)
    instances: list = field(default_factory=list)
    capture: bool = False  # this request is sampled for capture
    revision: str = ""  # the role a router proved it sent this request to (routing.py)
    stats: list = field(default_factory=list)  # per instance, when captured
    quality: list = field(default_factory=list)  # per instance, when captured (input_quality)
    encoded: list | None = None  # the images as received, when captured
    embeddings: np.ndarray | None = None
    outputs: list[RequestedOutput] | None = None
    binary_outputs: bool = False
    sent_context: str = ""  # the context the client sent (validated), or ""


# Instances of a request run through ONNX Runtime on the event loop (a thread's hand-over
# costs more than a camera frame's inference); more run in a thread.
INLINE_INSTANCES = 2
# Pixels of lossless images (PNG, WebP, GIF, TIFF, BMP) a request may declare regardless of
# their size in bytes: decoding 4 MP of even a flat lossless image costs about 0.15 s here.
FREE_LOSSLESS_PIXELS = 4_000_000
# Scans of one JPEG: encoders write 1 (baseline) or about 10 (progressive). Each scan of a
# progressive file is a pass over the whole image, so a small file of hundreds of scans
# costs seconds to decode.
MAX_JPEG_SCANS = 64


def jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers of a JPEG, walking its segments (an EXIF thumbnail inside an
    APP segment is skipped with it); counting stops past ``MAX_JPEG_SCANS``."""
    pos, scans, n = 2, 0, len(data)
    while pos + 4 <= n and scans <= MAX_JPEG_SCANS:
        if data[pos] != 0xFF:
            return scans  # not a marker: the decoder reports the corruption
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker == 0xD9:  # end of image
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        pos += 2 + length
        if marker != 0xDA:
            continue
        scans += 1
        while True:  # entropy-coded data runs to the next marker that is not 00 or RSTn
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                return scans
            if data[pos + 1] == 0 or 0xD0 <= data[pos + 1] <= 0xD7:
                pos += 2
                continue
            break
    return scans


@dataclass(frozen=True)
class ServingLimits:
    """Bounds that keep one request from hurting the server.

    Attributes:
        max_instances: Most images in one request.
        max_pixels: Largest declared image (width x height), read from its header before
            any pixel is decoded.
        max_request_pixels: Most declared pixels of all images of one request together.
        max_pixels_per_byte: Beyond ``FREE_LOSSLESS_PIXELS``, the most pixels the lossless
            (and progressive JPEG) images of a request may declare per byte of their files.
            A photo stored losslessly takes about a byte per pixel; a file that declares
            thousands of pixels per byte is a decompression bomb (or a synthetic image),
            cheap to send and slow to decode. Baseline JPEG is exempt: it is decoded in
            draft mode at the model's scale.
        decode_threads: Threads that decode images (0: as many as ONNX Runtime threads
            when those are set, else one per core up to 4).
    """

    max_instances: int = 256
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = 2 * DEFAULT_MAX_PIXELS
    max_pixels_per_byte: int = 100
    decode_threads: int = 0


class PetClassifier(Model):
    """A ``kserve.Model`` over an ONNX package folder (``model.onnx`` + metadata)."""

    def __init__(self, name: str, package_dir: str, limits: ServingLimits = ServingLimits(),
                 capture=None, intra_op_threads: int = 0, spin_wait: bool = False,
                 revision: str = "", edge: EdgeLimits = EdgeLimits()):
        """
        Args:
            limits: What one request may ask of the model (instances, pixels).
            edge: The HTTP bounds; the request guard (``guard.py``) holds bodies to its body
                limit and deadline.
            capture: A ``components.monitor.capture.CaptureConfig`` (None: no capture).
            revision: ``stable`` or ``canary``, recorded with each captured instance
                (default: ``$MLOPS_REVISION``, else ``stable``; in a Knative revision, where
                the InferenceService's status decides the role, ``""`` and the revision's
                name from ``$K_REVISION`` is recorded as ``knative_revision``:
                ``routing.own_revision``).
            intra_op_threads: ONNX Runtime threads per inference (0: one per core).
            spin_wait: Let idle ONNX Runtime threads spin. ONNX Runtime does by default,
                which wins in a tight loop but takes the cores from the HTTP server, its event
                loop and, on a small node, the sidecars; a server leaves it off.
        """
        super().__init__(name)
        self.intra_op_threads = intra_op_threads
        self.spin_wait = spin_wait
        self.package_dir = Path(package_dir)
        self.limits = limits
        self.edge = edge
        self.capture = capture
        self.revision, self.knative_revision = routing.own_revision(revision)
        # The deployment's operating conditions, the default first (images.request_context).
        self.contexts = parse_contexts(os.environ.get("MLOPS_CONTEXTS") or DEFAULT_CONTEXTS)
        self._capture = None
        self.has_embedding = False
        self.registry_version = ""
        self._decoder: ThreadPoolExecutor | None = None
        self._reader: bodies.BodyReader | None = None
        self.session = None
        self.classes: list[str] = []
        self.size = 0

    def load(self) -> bool:
        # In every process that serves this model, including --workers children.
        kserve_patches.decode_raw_v2_bodies_with(functools.partial(
            v2_compat.request_from_body, max_bytes_elements=self.limits.max_instances))
        guard.install(self.edge.max_body_bytes, self.edge.body_timeout_s)

        path = self.package_dir / "model.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"No model.onnx in {self.package_dir}: point the predictor "
                                    "at a package folder (mlops registry download …).")
        model = load_onnx(path.read_bytes(), threads=self.intra_op_threads,
                          spin_wait=self.spin_wait, gpu=True, source=str(path))
        self.session, self.classes, self.size = model.session, model.classes, model.size
        self.mean, self.std = model.mean, model.std
        self.model_version = model.metadata.get("model_version", "")
        self.dataset_version = model.metadata.get("dataset_version", "")
        self.has_embedding = model.has_embedding
        self.registry_version = self._registry_version()
        if self.capture is not None and self._capture is None:
            if not self.has_embedding:
                logger.warning("%s has no 'embedding' output: captured records carry no "
                               "embedding, so embedding drift cannot be measured. Package the "
                               "model again to get one.", path)
            self._capture = CaptureWriter(self.capture, self.name)
        SERVER.labels(f"{socket.gethostname()}:{os.getpid()}", self.name,
                      self.model_version).set(1)
        self.ready = True
        logger.info("Loaded %s (model %s, data %s, classes %s) from %s", self.name,
                    self.model_version, self.dataset_version, self.classes, self.package_dir)
        return self.ready

    def _registry_version(self) -> str:
        """The registry version served: ``$MLOPS_MODEL_VERSION``, else the ``lineage.json``
        the registry publishes with each version (in the package folder when it was
        downloaded from the registry, or mounted by KServe's storage initializer), else the
        package's content id."""
        if os.environ.get("MLOPS_MODEL_VERSION"):
            return os.environ["MLOPS_MODEL_VERSION"]
        lineage = self.package_dir / "lineage.json"
        try:
            return str(json.loads(lineage.read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.model_version

    def stop(self):
        """Writes what capture still holds (KServe calls this when the server stops)."""
        if self._capture is not None:
            self._capture.close(timeout=10.0)
            self._capture = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        super().stop()

    def __getstate__(self) -> dict:
        # KServe's multi-worker server (--workers N) pickles the model into each worker
        # process: send the settings, and let every worker load its own session and its own
        # capture writer (file names carry the process id).
        state = self.__dict__.copy()
        state.update(session=None, _capture=None, _decoder=None, _reader=None, ready=False)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.load()

    async def __call__(self, body, headers=None, verb=None):
        if verb == InferenceVerb.EXPLAIN:
            # Answered 404 (the resource is not served here) before any image is decoded.
            raise NotImplementedError(f"model {self.name!r} has no explainer; use :predict.")
        if verb is None:
            return await super().__call__(body, headers)
        return await super().__call__(body, headers, verb)

    # ---- metadata (Open Inference Protocol) ----------------------------------------------

    def get_input_types(self) -> list[dict]:
        """The two inputs a request may send (exactly one of them)."""
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                {"name": "input", "datatype": "FP32", "shape": [-1, 3, self.size, self.size]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32",
                 "shape": [-1, len(self.classes)]}]

    # ---- preprocess --------------------------------------------------------------------

    def describe_image(self, index: int, image) -> dict | None:
        """What to keep about one decoded image (upright RGB, before resizing), called in the
        decoding thread; the result goes to ``_Batch.instances``."""
        return {"width": image.width, "height": image.height}

    def _check_pixels(self, encoded: list[bytes]) -> None:
        """Refuses a request from the declared dimensions alone, before decoding a pixel."""
        from PIL import Image

        total = lossless = lossless_bytes = 0
        for i, data in enumerate(encoded):
            try:
                with Image.open(io.BytesIO(data)) as img:
                    width, height = img.size
                    jpeg = img.format in ("JPEG", "MPO")
                    lossy = jpeg and not img.info.get("progressive")
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                    Image.DecompressionBombWarning):
                continue  # not readable: decode_image says why, with the reason
            if width * height > self.limits.max_pixels:
                raise InvalidInput(f"Instance {i} declares {width}x{height} = "
                                   f"{width * height} pixels; the limit is "
                                   f"{self.limits.max_pixels} per image (--max-pixels or "
                                   "MLOPS_MAX_PIXELS, also ingestion's limit).")
            if jpeg and (scans := jpeg_scans(data)) > MAX_JPEG_SCANS:
                raise InvalidInput(f"Instance {i} is a JPEG of more than {MAX_JPEG_SCANS} "
                                   f"scans ({scans} counted); encoders write at most about "
                                   "10, and each scan is a pass over the whole image.")
            total += width * height
            # Refused as soon as the budget is spent: the headers of the rest are not read
            # (64 images declaring 40 MP each cost 64 header reads, 5 to 9 ms, before).
            if total > self.limits.max_request_pixels:
                raise InvalidInput(f"The request's images declare {total} pixels together; "
                                   f"the limit is {self.limits.max_request_pixels} per request "
                                   "(--max-request-pixels). Send fewer or smaller images.")
            if not lossy:
                lossless += width * height
                lossless_bytes += len(data)
        allowed = FREE_LOSSLESS_PIXELS + self.limits.max_pixels_per_byte * lossless_bytes
        if lossless > allowed:
            raise InvalidInput(
                f"The request's lossless or progressive images (PNG, WebP, progressive "
                f"JPEG, ...) declare {lossless} pixels "
                f"from {lossless_bytes} bytes; beyond {FREE_LOSSLESS_PIXELS} pixels the limit "
                f"is {self.limits.max_pixels_per_byte} pixels per byte "
                "(--max-pixels-per-byte): files that compress this far are decompression "
                "bombs or synthetic images, not camera frames. Send JPEG.")

    def _images_to_batch(self, encoded: list[bytes], instances: list | None = None,
                         stats: list | None = None) -> np.ndarray:
        """Decodes, resizes and normalises; blocking (the server calls it in a thread).

        The pixels are those of ``components.common.images.preprocess_image`` (a JPEG is
        decoded in draft mode down to the smallest scale that keeps the input size), the
        preprocessing training uses. With ``stats``, each image's input statistics
        (``images.image_stats``) are appended to it.
        """
        self._check_pixels(encoded)
        out = np.empty((len(encoded), 3, self.size, self.size), np.uint8)
        for i, data in enumerate(encoded):
            try:
                img, mode, full = decode_image_and_mode(
                    data, max_pixels=self.limits.max_pixels, min_side=1, draft_side=self.size)
            except ImageRejected as exc:
                raise InvalidInput(f"Instance {i} is not a usable image ({exc.reason}): "
                                   f"{exc.detail}. Send JPEG or PNG bytes.") from exc
            if instances is not None:
                instances.append(self.describe_image(i, img))
            if stats is not None:
                stats.append(image_stats(img, mode, full))
            out[i] = model_input(img, self.size)
        return normalise(out, self.mean, self.std)  # as in training

    def _pool(self) -> ThreadPoolExecutor:
        if self._decoder is None:
            # As many as ONNX Runtime's threads, which follow the pod's CPU limit
            # (--ort-threads); else up to 4: each holds one decoded image (48 MB at 16 MP).
            threads = (self.limits.decode_threads or self.intra_op_threads
                       or min(4, os.cpu_count() or 1))
            self._decoder = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        return self._decoder

    def _sent_context(self, headers, payload) -> str:
        """The camera context the client declared (V2 ``parameters.context``, else the
        ``x-camera-context`` header), as a declared name; empty when none was sent.

        Names are matched without regard to case or surrounding spaces (``Night`` is
        ``night``). Raises InvalidInput (400) for another name, naming where it was sent and
        echoing at most 40 characters of it."""
        where, sent = CONTEXT_HEADER, (headers or {}).get(CONTEXT_HEADER, "")
        if sent:  # HTTP stacks decode header bytes as Latin-1; a camera sends UTF-8
            try:
                sent = sent.encode("latin-1").decode("utf-8")
            except UnicodeError:
                pass
        if isinstance(payload, InferRequest) and payload.parameters and \
                payload.parameters.get("context"):
            where, sent = "the V2 parameter 'context'", str(payload.parameters["context"])
        name = sent.strip().lower()
        if name and name not in self.contexts:
            shown = sent if len(sent) <= 40 else sent[:40] + "…"
            raise InvalidInput(f"Unknown camera context {shown!r} ({where}): this "
                               f"deployment declares {', '.join(self.contexts)}.")
        return name

    async def _decode(self, encoded: list[bytes], instances: list,
                      stats: list | None = None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), self._images_to_batch, encoded,
                                          instances, stats)

    def _check_count(self, n: int) -> None:
        try:
            bodies.check_count(n, self.limits.max_instances)
        except bodies.BadRequest as exc:
            raise InvalidInput(str(exc)) from None

    def _from_v2(self, request: InferRequest) -> tuple[np.ndarray | None, list[bytes] | None]:
        if len(request.inputs) != 1:
            raise InvalidInput(f"Expected exactly one input, got {len(request.inputs)}: BYTES "
                               "(encoded images) or FP32 [N, 3, S, S] (preprocessed).")
        inp = request.inputs[0]
        shape = list(inp.shape)
        if inp.datatype == "BYTES":
            if len(shape) != 1:
                raise InvalidInput(f"Input {inp.name!r} has shape {shape}; BYTES images are "
                                   "a list: shape [N].")
            self._check_count(shape[0])
            try:
                values = inp.as_numpy().reshape(-1).tolist()
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"Input {inp.name!r}: cannot read BYTES data: {exc}") from exc
            encoded = []
            for i, v in enumerate(values):
                if isinstance(v, str):  # JSON clients send base64 strings
                    try:
                        v = base64.b64decode(v, validate=True)
                    except (binascii.Error, ValueError) as exc:
                        raise InvalidInput(f"Input {inp.name!r} element {i}: a string must be "
                                           "base64-encoded image bytes.") from exc
                if not isinstance(v, bytes):
                    raise InvalidInput(f"Input {inp.name!r} element {i}: expected image bytes "
                                       f"or a base64 string, got {type(v).__name__}.")
                encoded.append(v)
            return None, encoded
        if inp.datatype == "FP32":
            expected = [3, self.size, self.size]
            if len(shape) != 4 or shape[1:] != expected:
                raise InvalidInput(f"Input {inp.name!r} has shape {shape}; expected "
                                   f"[N, {', '.join(map(str, expected))}] (normalised NCHW).")
            self._check_count(shape[0])
            try:
                x = inp.as_numpy().astype(np.float32, copy=False)
            except (ValueError, TypeError, OverflowError) as exc:
                raise InvalidInput(f"Input {inp.name!r}: data does not match shape {shape}: "
                                   f"{exc}") from exc
            if not np.isfinite(x).all():
                raise InvalidInput(f"Input {inp.name!r} contains NaN or infinite values "
                                   "(or values beyond the FP32 range).")
            return x, None
        raise InvalidInput(f"Input {inp.name!r} has datatype {inp.datatype}; expected BYTES "
                           "(encoded images) or FP32 (preprocessed tensor).")

    def _requested_outputs(self, request: InferRequest) -> tuple[list | None, bool]:
        """The outputs a V2 request asked for, each with its binary_data flag resolved."""
        binary = bool(request.parameters and request.parameters.get("binary_data_output"))
        if not request.request_outputs:
            return None, binary
        outputs = []
        for out in request.request_outputs:
            if out.name not in OUTPUTS:
                raise InvalidInput(f"Output {out.name!r} is not an output of {self.name}; "
                                   f"ask for {' and/or '.join(OUTPUTS)}.")
            flag = out.binary_data
            params = dict(out.parameters or {})
            params["binary_data"] = binary if flag is None else flag
            outputs.append(RequestedOutput(out.name, params))
        return outputs, binary

    async def _read(self, kind: str, body: bytes, header_length: str | None = None):
        """``bodies.read_v1``/``read_v2`` of a body: here when it is small, else in the body
        reader process, so that parsing never holds the event loop (see ``bodies.py``)."""
        try:
            if len(body) <= bodies.INLINE_BYTES:
                if kind == "v1":
                    return bodies.read_v1(body, self.limits.max_instances)
                return bodies.read_v2(body, header_length, self.limits.max_instances)
            if self._reader is None:
                self._reader = bodies.BodyReader(self.limits.max_instances)
            return await self._reader.read(kind, body, header_length)
        except bodies.BadRequest as exc:
            raise InvalidInput(str(exc)) from None

    async def preprocess(self, payload, headers: dict[str, str] | None = None) -> _Batch:
        started = time.perf_counter()
        headers = headers or {}
        client_id = headers.get("x-request-id", "")
        if isinstance(payload, str):
            payload = payload.encode()
        outputs, binary = None, False
        if isinstance(payload, v2_compat.DeferredRequest):  # too large to read on the loop
            payload = v2_compat.to_infer_request(
                await self._read("v2", payload.body, payload.header_length), self.name)
        if isinstance(payload, InferRequest):
            outputs, binary = self._requested_outputs(payload)
            x, encoded = self._from_v2(payload)
            protocol = "v2"
            client_id = payload.id or client_id
        elif isinstance(payload, bytes):  # V1: the guard hands KServe every body unread
            x, encoded, protocol = None, await self._read("v1", payload), "v1"
        elif isinstance(payload, dict):
            try:
                encoded = bodies.images_from_v1(payload, self.limits.max_instances)
            except bodies.BadRequest as exc:
                raise InvalidInput(str(exc)) from None
            x, protocol = None, "v1"
        else:
            raise InvalidInput("Unsupported request: send V1 JSON with 'instances' or a V2 "
                               "inference request.")
        # The id is this server's, never the client's: a client cannot make its requests
        # share an id with another's (labels are joined by it). The client's own is kept.
        batch = _Batch(x=x, protocol=protocol, request_id=uuid.uuid4().hex, started=started,
                       client_request_id=str(client_id)[:200], outputs=outputs,
                       binary_outputs=binary)
        batch.capture = self._capture is not None and self._capture.should_capture()
        # The role: a router in front may say which it chose, if it proves it is the router.
        batch.revision = routing.routed_role(headers)
        batch.sent_context = self._sent_context(headers, payload)
        if encoded is not None:
            batch.x = await self._decode(encoded, batch.instances,
                                         batch.stats if batch.capture else None)
            batch.sizes = [len(e) for e in encoded]
            if batch.capture:
                batch.encoded = encoded
                batch.quality = [input_quality(st) for st in batch.stats]
        elif batch.capture:  # a preprocessed tensor: its pixels are judged, not kept as stats
            batch.quality = [input_quality(st) for st in tensor_stats(batch.x, self.mean,
                                                                      self.std)]
        return batch

    # ---- predict / postprocess ---------------------------------------------------------

    async def predict(self, batch: _Batch, headers: dict[str, str] | None = None) -> _Batch:
        # One ONNX Runtime call for every instance of the request (and, for a captured
        # request, the embedding from the same call). A camera frame or two run here; more
        # run in the decoding threads, so that a large request never holds the event loop.
        names = (["probabilities", "embedding"] if batch.capture and self.has_embedding
                 else ["probabilities"])
        feed = {"input": batch.x}
        if len(batch.x) <= INLINE_INSTANCES:
            results = self.session.run(names, feed)
        else:
            results = await asyncio.get_running_loop().run_in_executor(
                self._pool(), self.session.run, names, feed)
        batch.probs = results[0]
        if len(results) > 1:
            batch.embeddings = results[1]
        return batch

    async def postprocess(self, batch: _Batch, headers: dict[str, str] | None = None):
        probs = batch.probs
        labels = [self.classes[i] for i in probs.argmax(axis=1)]
        IMAGES.labels(self.name).inc(len(labels))
        for label in labels:
            PREDICTED.labels(self.name, label).inc()
        elapsed = time.perf_counter() - batch.started
        LATENCY.labels(self.name, batch.protocol).observe(elapsed)
        if batch.capture:
            self._submit(batch, labels, elapsed)
        if batch.protocol == "v1":
            answer = {"predictions": [
                {"label": label, "probabilities": dict(zip(self.classes, map(float, row),
                                                           strict=True))}
                for label, row in zip(labels, probs, strict=True)],
                "model_version": self.model_version, "request_id": batch.request_id}
            if batch.client_request_id:
                answer["client_request_id"] = batch.client_request_id
            return answer
        # The Open Inference Protocol answers with the request's own id when it sent one;
        # this server's id (the one labels are joined by) is in the parameters.
        return InferResponse(
            response_id=batch.client_request_id or batch.request_id, model_name=self.name,
            model_version=self.model_version, parameters={"request_id": batch.request_id},
            infer_outputs=[
                InferOutput("label", [len(labels)], "BYTES", np.array(labels, dtype=object)),
                InferOutput("probabilities", list(probs.shape), "FP32",
                            np.ascontiguousarray(probs, np.float32)),
            ],
            use_binary_outputs=batch.binary_outputs, requested_outputs=batch.outputs)

    def _submit(self, batch: _Batch, labels: list[str], elapsed: float) -> None:
        """Hands each instance of a captured request to the capture writer (never blocks).

        The embedding goes as a float32 row; the writer serialises it in its own thread."""
        writer = self._capture
        now = time.time()
        latency_ms = round(elapsed * 1000.0, 3)
        classes = self.classes
        for i, label in enumerate(labels):
            stats = batch.stats[i] if i < len(batch.stats) else {}
            try:
                context = request_context(stats, batch.sent_context, self.contexts) \
                    if stats else batch.sent_context or self.contexts[0]
            except ContextRejected:  # checked in preprocess; kept for a subclass's batch
                context = self.contexts[0]
            record = {
                "request_id": batch.request_id, "index": i, "time": now, "model": self.name,
                "client_request_id": batch.client_request_id,
                "model_version": self.registry_version, "model_id": self.model_version,
                "revision": batch.revision or self.revision, "protocol": batch.protocol,
                "stats": stats, "context": context,
                "input_quality": batch.quality[i] if i < len(batch.quality) else None,
                "embedding": batch.embeddings[i] if batch.embeddings is not None else [],
                "label": label,
                "probabilities": dict(zip(classes, batch.probs[i].tolist(), strict=True)),
                "latency_ms": latency_ms,
            }
            if self.knative_revision:  # who served, on a cluster (routing.record_role)
                record["knative_revision"] = self.knative_revision
            if batch.sent_context:
                record["sent_context"] = batch.sent_context
            image = None
            if batch.encoded is not None and writer.should_keep_image():
                image = batch.encoded[i]
            writer.submit(record, image)
