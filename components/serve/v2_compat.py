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
malformed body with a 400 that says what is wrong. The guard (``guard.py``) sends every V2
``infer`` body here, whatever its Content-Type, so that FastAPI's lenient JSON parsing (which
accepts ``NaN`` and lone surrogates, and coerces strings and booleans into FP32 values) never
sees it.
"""

from __future__ import annotations

import struct

import orjson
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from components.serve.kserve_patches import raw_infer_input

# The Open Inference Protocol's tensor datatypes, with the item size of the fixed-size ones.
DATATYPES = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1,
             "INT16": 2, "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8, "BYTES": None}
MAX_ELEMENTS = 1 << 28  # no input of this predictor comes near; larger is a client's mistake


def request_from_body(body: bytes, headers: dict, model_name: str) -> InferRequest:
    """A V2 request from a raw REST body: a JSON header, then any binary input data.

    Every field is checked against the Open Inference Protocol before anything is converted:
    a malformed request is an :class:`InvalidInput` (HTTP 400) that names the field.
    """
    raw_length = headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
    if raw_length is None:
        json_length = len(body)
    else:
        raw_length = raw_length.strip()
        if not raw_length.isascii() or not raw_length.isdigit():
            raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} is {raw_length!r}; it must "
                               "be the byte length of the JSON header.")
        json_length = int(raw_length)
        if not 0 < json_length <= len(body):
            raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} is {json_length}, but the "
                               f"body has {len(body)} bytes.")
    if not body:
        raise InvalidInput("The request body is empty: a V2 request is a JSON object with an "
                           "'inputs' list.")
    try:
        header = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as exc:
        hint = (" (JSON has no NaN or Infinity: send finite numbers)"
                if b"NaN" in body[:json_length] or b"Infinity" in body[:json_length] else "")
        raise InvalidInput(f"The request's JSON header is not valid JSON: {exc}{hint}") from None
    if not isinstance(header, dict):
        raise InvalidInput("A V2 request is a JSON object with an 'inputs' list.")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {_kind(request_id)}.")
    parameters = _parameters(header.get("parameters"), "the request")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("A V2 request is a JSON object with a non-empty 'inputs' list.")

    offset, infer_inputs = json_length, []
    for i, inp in enumerate(inputs):
        infer_input, offset = _read_input(inp, i, body, offset)
        infer_inputs.append(infer_input)
    if offset != len(body):
        raise InvalidInput(f"The body has {len(body) - offset} bytes after the declared inputs; "
                           "check each input's binary_data_size.")
    outputs = header.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects.")
        requested = []
        for j, out in enumerate(outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInput(f"Output {j} must be an object with a string 'name'.")
            out_params = _parameters(out.get("parameters"), f"output {out['name']!r}")
            if not isinstance(out_params.get("binary_data", False), bool):
                raise InvalidInput(f"Output {out['name']!r}: binary_data must be true or false.")
            requested.append(RequestedOutput(out["name"], out_params or None))
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise InvalidInput("binary_data_output must be true or false.")
    return InferRequest(model_name, infer_inputs, request_id=request_id,
                        parameters=parameters or None, request_outputs=requested)


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _parameters(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'parameters' of {where} must be a JSON object, got {_kind(value)}.")
    return value


def _read_input(inp, i: int, body: bytes, offset: int) -> tuple[InferInput, int]:
    if not isinstance(inp, dict):
        raise InvalidInput(f"Input {i} is not a JSON object.")
    name = inp.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"Input {i} has no 'name' (a non-empty string).")
    shape = inp.get("shape")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise InvalidInput(f"Input {name!r}: 'shape' must be a list of integers, got "
                           f"{shape!r:.80}.")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"Input {name!r}: shape {shape} has a negative dimension.")
    datatype = inp.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        hint = (f"; datatypes are upper case: {datatype.upper()}"
                if isinstance(datatype, str) and datatype.upper() in DATATYPES else "")
        raise InvalidInput(f"Input {name!r}: datatype {datatype!r:.40} is not an Open Inference "
                           f"Protocol datatype{hint}.")
    count = 1
    for d in shape:
        count *= d
        if count > MAX_ELEMENTS:
            raise InvalidInput(f"Input {name!r}: shape {shape} has more than {MAX_ELEMENTS} "
                               "elements.")
    params = _parameters(inp.get("parameters"), f"input {name!r}")
    size = params.get("binary_data_size")
    data = inp.get("data")
    if size is not None and data is not None:
        raise InvalidInput(f"Input {name!r} has both 'data' and a binary_data_size; send one.")
    rest = {k: v for k, v in params.items() if k != "binary_data_size"} or None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                or offset + size > len(body):
            raise InvalidInput(f"Input {name!r}: binary_data_size {size!r} does not fit the "
                               f"{len(body) - offset} bytes left in the body.")
        blob = body[offset:offset + size]
        offset += size
        if datatype == "BYTES":
            elements = _byte_elements(blob, name)
            if len(elements) != count:
                raise InvalidInput(f"Input {name!r}: shape {shape} needs {count} BYTES "
                                   f"elements; the binary data holds {len(elements)}.")
            return InferInput(name, shape, datatype, elements, rest), offset
        if len(blob) != count * DATATYPES[datatype]:
            raise InvalidInput(f"Input {name!r}: binary {datatype} data of shape {shape} is "
                               f"{count * DATATYPES[datatype]} bytes; the request has "
                               f"{len(blob)}.")
        return raw_infer_input(name, shape, datatype, blob, rest), offset
    if data is None:
        raise InvalidInput(f"Input {name!r} has no 'data' and no binary_data_size.")
    if not isinstance(data, list):
        raise InvalidInput(f"Input {name!r}: 'data' must be a list, got {_kind(data)}.")
    flat = _flatten(data, name)
    if len(flat) != count:
        raise InvalidInput(f"Input {name!r}: shape {shape} needs {count} elements; 'data' has "
                           f"{len(flat)}.")
    _check_elements(flat, datatype, name)
    return InferInput(name, shape, datatype, flat, rest), offset


def _flatten(data: list, name) -> list:
    if not any(isinstance(v, list) for v in data):
        return data
    out, stack = [], [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


_ACCEPTS = {"BOOL": ((bool,), "true or false"), "BYTES": ((str,), "strings")}


def _check_elements(flat: list, datatype: str, name) -> None:
    if datatype in _ACCEPTS:
        types, words = _ACCEPTS[datatype]
        bad = next((i for i, v in enumerate(flat) if type(v) not in types), None)
    else:
        words = "integers" if "INT" in datatype else "numbers"
        types = (int,) if "INT" in datatype else (int, float)
        bad = next((i for i, v in enumerate(flat) if type(v) not in types), None)
    if bad is not None:
        value = flat[bad]
        shown = "null" if value is None else f"{type(value).__name__} {value!r:.40}"
        raise InvalidInput(f"Input {name!r}: {datatype} data must be {words}; element {bad} is "
                           f"{shown}.")


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

