"""Reads Open Inference Protocol (V2) REST bodies the way Triton's own clients send them.

KServe 0.20's REST data plane gets two common cases wrong before a model sees the request:

- a JSON body without ``Content-Type: application/json`` (``tritonclient.http`` sends none)
  is answered 400 "the 'inference-header-content-length' header is missing", although the
  binary-data extension says that without that header the whole body is the JSON header;
- a ``BYTES`` input sent with the binary-data extension (``tritonclient.http``'s default for
  ``set_data_from_numpy``) is converted to JSON text, which fails for any non-UTF-8 bytes such
  as a JPEG, and the client gets a 500.

:func:`install` replaces ``DataPlane.decode_inference_request`` for raw bodies with
:func:`request_from_body`, which accepts both, turns binary ``BYTES`` elements into the
base64 strings that JSON clients send (the predictor decodes both alike), and answers a
malformed body with a 400 that says what is wrong. Requests that FastAPI already parsed as
JSON keep KServe's own path.
"""

from __future__ import annotations

import base64
import struct

import orjson
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferRequest


def request_from_body(body: bytes, headers: dict, model_name: str) -> InferRequest:
    """A V2 request from a raw REST body: a JSON header, then any binary input data."""
    raw_length = headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
    if raw_length is None:
        json_length = len(body)
    else:
        try:
            json_length = int(raw_length)
        except ValueError:
            raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} is {raw_length!r}; it must "
                               "be the byte length of the JSON header.") from None
        if not 0 < json_length <= len(body):
            raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} is {json_length}, but the "
                               f"body has {len(body)} bytes.")
    try:
        header = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request's JSON header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("A V2 request is a JSON object with an 'inputs' list.")

    offset, other_blobs = json_length, []
    for i, inp in enumerate(header["inputs"]):
        if not isinstance(inp, dict):
            raise InvalidInput(f"Input {i} is not a JSON object.")
        params = inp.get("parameters") or {}
        size = params.get("binary_data_size")
        if size is None or inp.get("data") is not None:
            continue
        name = inp.get("name", i)
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise InvalidInput(f"Input {name!r}: binary_data_size {size!r} does not fit the "
                               f"{len(body) - offset} bytes left in the body.")
        blob = body[offset:offset + size]
        offset += size
        if inp.get("datatype") == "BYTES":
            inp["data"] = [base64.b64encode(e).decode() for e in _byte_elements(blob, name)]
            inp["parameters"] = {k: v for k, v in params.items() if k != "binary_data_size"}
        else:
            other_blobs.append(blob)
    if offset != len(body):
        raise InvalidInput(f"The body has {len(body) - offset} bytes after the declared inputs; "
                           "check each input's binary_data_size.")
    json_header = orjson.dumps(header)
    return InferRequest.from_bytes(json_header + b"".join(other_blobs), len(json_header),
                                   model_name)


def _byte_elements(blob: bytes, name) -> list[bytes]:
    """Splits binary BYTES data: each element is a 4-byte little-endian length, then data."""
    out, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise InvalidInput(f"Input {name!r}: element {len(out)} has a cut-off length prefix.")
        (n,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + n > len(blob):
            raise InvalidInput(f"Input {name!r}: element {len(out)} declares {n} bytes, "
                               f"{len(blob) - pos} are left.")
        out.append(blob[pos:pos + n])
        pos += n
    return out


def install() -> None:
    """Routes KServe's raw-body V2 decoding through :func:`request_from_body` (idempotent)."""
    if getattr(DataPlane.decode_inference_request, "reads_triton_clients", False):
        return
    original = DataPlane.decode_inference_request

    def decode_inference_request(self, body, headers, model_name):
        if isinstance(body, bytes):
            return request_from_body(body, headers, model_name)
        return original(self, body, headers, model_name)

    decode_inference_request.reads_triton_clients = True
    DataPlane.decode_inference_request = decode_inference_request
