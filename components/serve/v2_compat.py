"""Reads Open Inference Protocol (V2) REST bodies the way Triton's own clients send them.

KServe 0.20's REST data plane gets two common cases wrong before a model sees the request:

- a JSON body without ``Content-Type: application/json`` (``tritonclient.http`` sends none)
  is answered 400 "the 'inference-header-content-length' header is missing", although the
  binary-data extension says that without that header the whole body is the JSON header;
- a ``BYTES`` input sent with the binary-data extension (``tritonclient.http``'s default for
  ``set_data_from_numpy``) is converted to JSON text, which fails for any non-UTF-8 bytes such
  as a JPEG, and the client gets a 500.

The predictor has KServe decode raw bodies with :func:`request_from_body` (wired by
``kserve_patches.decode_raw_v2_bodies_with``, KServe offering no extension point for it), which
accepts both, keeps binary ``BYTES`` elements as bytes
(JSON clients send base64 strings; the predictor decodes both), and answers a
malformed body with a 400 that says what is wrong. The reading itself is ``bodies.read_v2``
(free of KServe); a body whose JSON part is over ``bodies.INLINE_BYTES`` is not read here, on
the event loop, but handed to the predictor as a :class:`DeferredRequest`, which the predictor
has its body reader process read. The guard (``guard.py``) sends every V2
``infer`` body here, whatever its Content-Type, so that FastAPI's lenient JSON parsing (which
accepts ``NaN`` and lone surrogates, and coerces strings and booleans into FP32 values) never
sees it.
"""

from __future__ import annotations

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from components.serve import bodies
from components.serve.kserve_patches import raw_infer_input


class DeferredRequest(InferRequest):
    """A V2 request too large to read on the event loop: its raw body, read later with
    :func:`to_infer_request` over what ``bodies.read_v2`` returns in the reader process."""

    def __init__(self, model_name: str, body: bytes, header_length: str | None):
        super().__init__(model_name, [])
        self.body, self.header_length = body, header_length


def request_from_body(body: bytes, headers: dict, model_name: str,
                      max_bytes_elements: int = bodies.MAX_ELEMENTS) -> InferRequest:
    """A V2 request from a raw REST body: a JSON header, then any binary input data.

    Every field is checked against the Open Inference Protocol before anything is converted:
    a malformed request is an :class:`InvalidInput` (HTTP 400) that names the field. A body
    whose JSON part is larger than ``bodies.INLINE_BYTES`` comes back as a
    :class:`DeferredRequest`, unread.
    """
    header_length = headers.get(bodies.HEADER_LENGTH)
    try:
        if bodies.json_length(body, header_length) > bodies.INLINE_BYTES:
            return DeferredRequest(model_name, body, header_length)
        return to_infer_request(bodies.read_v2(body, header_length, max_bytes_elements),
                                model_name)
    except bodies.BadRequest as exc:
        raise InvalidInput(str(exc)) from None


def to_infer_request(read: bodies.V2Body, model_name: str) -> InferRequest:
    """KServe's request object for a body ``bodies.read_v2`` has read."""
    inputs = []
    for inp in read.inputs:
        if inp.raw is not None:
            inputs.append(raw_infer_input(inp.name, inp.shape, inp.datatype, inp.raw,
                                          inp.parameters))
        elif inp.datatype == "BYTES":
            inputs.append(InferInput(inp.name, inp.shape, inp.datatype, inp.data,
                                     inp.parameters))
        else:  # a numpy array of the datatype, read as binary data is
            inputs.append(raw_infer_input(inp.name, inp.shape, inp.datatype,
                                          inp.data.tobytes(), inp.parameters))
    requested = (None if read.outputs is None
                 else [RequestedOutput(name, params) for name, params in read.outputs])
    return InferRequest(model_name, inputs, request_id=read.id, parameters=read.parameters,
                        request_outputs=requested)
