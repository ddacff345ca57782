"""Reading inference request bodies: what a V1 or V2 body asks of the model, checked field by
field before anything is converted, and read in another process when it is large.

Parsing JSON is one call into ``orjson`` that holds the interpreter lock from start to end: a
30 MiB V2 body of numbers took 2.6 s on the server's event loop, during which no other request,
health check included, was answered, and a thread would not help (the lock is not released).
So the predictor reads a body of up to :data:`INLINE_BYTES` of JSON where it is, and a larger
one in a :class:`BodyReader`, a small process of its own (orjson and numpy only, about 35 MiB)
that sends back a few Python objects: the decoded images, or numeric tensors as numpy arrays.

Everything here is plain Python over orjson and numpy, free of KServe, so that the reader
process starts in a fraction of a second. A client's mistake is a :class:`BadRequest` whose
message names the field and what to send; the predictor answers it 400 (``v2_compat.py`` and
``predictor.py`` turn it into KServe's ``InvalidInput``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import pickle
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from components.common.errors import UserError
from components.common.procs import exit_with

logger = logging.getLogger(__name__)

INLINE_BYTES = 1 << 20
"""Most bytes of JSON read on the event loop (about 10-20 ms of parsing at worst, for a body
of numbers); a larger JSON body or V2 JSON header is read by the :class:`BodyReader`."""

# The Open Inference Protocol's tensor datatypes, with the numpy type of the fixed-size ones.
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
             "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
             "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
             "BYTES": None}
MAX_ELEMENTS = 1 << 28  # no input of this predictor comes near; larger is a client's mistake
HEADER_LENGTH = "inference-header-content-length"
"""The binary-data extension's header: the byte length of the JSON part of a V2 body."""


class BadRequest(UserError, ValueError):
    """A request body the client must fix; the message says what (answered 400)."""


# ---- V1 ----------------------------------------------------------------------------------


def check_count(n: int, max_instances: int) -> None:
    """Refuses a request of no instances or of more than ``max_instances``."""
    if n == 0:
        raise BadRequest("The request has no instances: send at least one image.")
    if n > max_instances:
        raise BadRequest(f"The request has {n} instances; the limit is {max_instances}. "
                         "Split it into smaller requests.")


def read_v1(body: bytes, max_instances: int) -> list[bytes]:
    """The encoded images of a V1 JSON body."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not JSON: {exc}.") from None
    return images_from_v1(payload, max_instances)


def images_from_v1(payload, max_instances: int) -> list[bytes]:
    """The encoded images of a parsed V1 request:
    ``{"instances": [{"image_bytes": {"b64": "…"}} | {"b64": "…"}, …]}``."""
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list):
        raise BadRequest('Expected {"instances": [{"image_bytes": {"b64": "..."}}, ...]}.')
    check_count(len(instances), max_instances)
    encoded = []
    for i, inst in enumerate(instances):
        b64 = None
        if isinstance(inst, dict):
            inner = inst.get("image_bytes", inst)
            b64 = inner.get("b64") if isinstance(inner, dict) else None
        if not isinstance(b64, str):
            raise BadRequest(f'Instance {i}: expected {{"image_bytes": {{"b64": "..."}}}} '
                             "with base64-encoded JPEG or PNG bytes.")
        try:
            encoded.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"Instance {i}: the b64 field is not valid base64.") from None
    return encoded


# ---- V2 ----------------------------------------------------------------------------------


@dataclass
class V2Input:
    """One input of a V2 request, checked against its shape and datatype.

    ``data`` holds JSON data (numeric: a numpy array of the datatype; BYTES: the strings as
    sent) or binary BYTES elements (a list of bytes); ``raw`` holds binary numeric data as
    sent (``binary_data_size``)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict | None
    data: np.ndarray | list | None = None
    raw: bytes | None = None


@dataclass
class V2Body:
    """A V2 request body, read and checked (``outputs``: (name, parameters) pairs)."""

    id: str | None
    parameters: dict | None
    inputs: list[V2Input] = field(default_factory=list)
    outputs: list[tuple[str, dict | None]] | None = None


def json_length(body: bytes, header_length: str | None) -> int:
    """The byte length of the JSON part of a V2 body (the whole body without the
    binary-data extension's ``Inference-Header-Content-Length``)."""
    if header_length is None:
        return len(body)
    text = header_length.strip()
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"{HEADER_LENGTH} is {text!r}; it must be the byte length of the "
                         "JSON header.")
    length = int(text)
    if not 0 < length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes.")
    return length


def read_v2(body: bytes, header_length: str | None, max_bytes_elements: int = MAX_ELEMENTS
            ) -> V2Body:
    """A V2 request from a raw REST body: a JSON header, then any binary input data.

    Every field is checked against the Open Inference Protocol before anything is converted.
    A ``BYTES`` input may hold at most ``max_bytes_elements`` elements.
    """
    length = json_length(body, header_length)
    if not body:
        raise BadRequest("The request body is empty: a V2 request is a JSON object with an "
                         "'inputs' list.")
    try:
        header = orjson.loads(body[:length])
    except orjson.JSONDecodeError as exc:
        hint = (" (JSON has no NaN or Infinity: send finite numbers)"
                if b"NaN" in body[:length] or b"Infinity" in body[:length] else "")
        raise BadRequest(f"The request's JSON header is not valid JSON: {exc}{hint}") from None
    if not isinstance(header, dict):
        raise BadRequest("A V2 request is a JSON object with an 'inputs' list.")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {_kind(request_id)}.")
    parameters = _parameters(header.get("parameters"), "the request")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("A V2 request is a JSON object with a non-empty 'inputs' list.")

    offset, read = length, []
    for i, inp in enumerate(inputs):
        one, offset = _read_input(inp, i, body, offset, max_bytes_elements)
        read.append(one)
    if offset != len(body):
        raise BadRequest(f"The body has {len(body) - offset} bytes after the declared inputs; "
                         "check each input's binary_data_size.")
    outputs = header.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest("'outputs' must be a list of {\"name\": ...} objects.")
        requested = []
        for j, out in enumerate(outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise BadRequest(f"Output {j} must be an object with a string 'name'.")
            out_params = _parameters(out.get("parameters"), f"output {out['name']!r}")
            if not isinstance(out_params.get("binary_data", False), bool):
                raise BadRequest(f"Output {out['name']!r}: binary_data must be true or false.")
            requested.append((out["name"], out_params or None))
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise BadRequest("binary_data_output must be true or false.")
    return V2Body(request_id, parameters or None, read, requested)


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _parameters(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"'parameters' of {where} must be a JSON object, got {_kind(value)}.")
    return value


def _read_input(inp, i: int, body: bytes, offset: int, max_bytes_elements: int
                ) -> tuple[V2Input, int]:
    if not isinstance(inp, dict):
        raise BadRequest(f"Input {i} is not a JSON object.")
    name = inp.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"Input {i} has no 'name' (a non-empty string).")
    shape = inp.get("shape")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise BadRequest(f"Input {name!r}: 'shape' must be a list of integers, got "
                         f"{shape!r:.80}.")
    if any(d < 0 for d in shape):
        raise BadRequest(f"Input {name!r}: shape {shape} has a negative dimension.")
    datatype = inp.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        hint = (f"; datatypes are upper case: {datatype.upper()}"
                if isinstance(datatype, str) and datatype.upper() in DATATYPES else "")
        raise BadRequest(f"Input {name!r}: datatype {datatype!r:.40} is not an Open Inference "
                         f"Protocol datatype{hint}.")
    count = 1
    for d in shape:
        count *= d
        if count > MAX_ELEMENTS:
            raise BadRequest(f"Input {name!r}: shape {shape} has more than {MAX_ELEMENTS} "
                             "elements.")
    if datatype == "BYTES" and count > max_bytes_elements:
        raise BadRequest(f"The request has {count} instances; the limit is "
                         f"{max_bytes_elements}. Split it into smaller requests.")
    params = _parameters(inp.get("parameters"), f"input {name!r}")
    size = params.get("binary_data_size")
    data = inp.get("data")
    if size is not None and data is not None:
        raise BadRequest(f"Input {name!r} has both 'data' and a binary_data_size; send one.")
    rest = {k: v for k, v in params.items() if k != "binary_data_size"} or None
    one = V2Input(name, shape, datatype, rest)
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                or offset + size > len(body):
            raise BadRequest(f"Input {name!r}: binary_data_size {size!r} does not fit the "
                             f"{len(body) - offset} bytes left in the body.")
        blob = body[offset:offset + size]
        offset += size
        if datatype == "BYTES":
            one.data = _byte_elements(blob, name)
            if len(one.data) != count:
                raise BadRequest(f"Input {name!r}: shape {shape} needs {count} BYTES "
                                 f"elements; the binary data holds {len(one.data)}.")
            return one, offset
        itemsize = np.dtype(DATATYPES[datatype]).itemsize
        if len(blob) != count * itemsize:
            raise BadRequest(f"Input {name!r}: binary {datatype} data of shape {shape} is "
                             f"{count * itemsize} bytes; the request has {len(blob)}.")
        one.raw = blob
        return one, offset
    if data is None:
        raise BadRequest(f"Input {name!r} has no 'data' and no binary_data_size.")
    if not isinstance(data, list):
        raise BadRequest(f"Input {name!r}: 'data' must be a list, got {_kind(data)}.")
    flat = _flatten(data)
    if len(flat) != count:
        raise BadRequest(f"Input {name!r}: shape {shape} needs {count} elements; 'data' has "
                         f"{len(flat)}.")
    _check_elements(flat, datatype, name)
    if datatype == "BYTES":
        one.data = flat
        return one, offset
    try:
        one.data = np.array(flat, dtype=DATATYPES[datatype])
    except (OverflowError, ValueError) as exc:
        raise BadRequest(f"Input {name!r}: a value does not fit {datatype}: {exc}.") from None
    return one, offset


def _flatten(data: list) -> list:
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
    else:
        words = "integers" if "INT" in datatype else "numbers"
        types = (int,) if "INT" in datatype else (int, float)
    bad = next((i for i, v in enumerate(flat) if type(v) not in types), None)
    if bad is not None:
        value = flat[bad]
        shown = "null" if value is None else f"{type(value).__name__} {value!r:.40}"
        raise BadRequest(f"Input {name!r}: {datatype} data must be {words}; element {bad} is "
                         f"{shown}.")


def _byte_elements(blob: bytes, name) -> list[bytes]:
    """Splits binary BYTES data: each element is a 4-byte little-endian length, then data."""
    out, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise BadRequest(f"Input {name!r}: element {len(out)} has a cut-off length prefix.")
        (n,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + n > len(blob):
            raise BadRequest(f"Input {name!r}: element {len(out)} declares {n} bytes, "
                             f"{len(blob) - pos} are left.")
        out.append(blob[pos:pos + n])
        pos += n
    return out


# ---- the reader process --------------------------------------------------------------------

_LENGTH = struct.Struct("<Q")


def _read_one(kind: str, body: bytes, header_length: str | None, max_instances: int):
    if kind == "v1":
        return read_v1(body, max_instances)
    return read_v2(body, header_length, max_instances)


class BodyReader:
    """Reads large bodies in a process of its own, one at a time, so that parsing them never
    holds the server's event loop (started on first use, restarted if it dies; it exits when
    the server does, its input closing).

    Args:
        max_instances: Most images a request may hold (``BYTES`` elements for V2).
        timeout_s: Longest a body may take to read; the reader is restarted after that.
    """

    def __init__(self, max_instances: int, timeout_s: float = 60.0):
        self.max_instances = max_instances
        self.timeout_s = timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._lock: asyncio.Lock | None = None

    async def read(self, kind: str, body: bytes, header_length: str | None = None):
        """What :func:`read_v1` (``kind="v1"``) or :func:`read_v2` (``"v2"``) returns for
        ``body``, read in the reader process.

        Raises:
            BadRequest: The client's mistake, as those functions say it.
            RuntimeError: The reader process failed (a server error).
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                return await asyncio.wait_for(self._exchange(kind, body, header_length),
                                              self.timeout_s)
            except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError) as exc:
                self._kill()
                raise RuntimeError(f"The body reader process failed: {exc!r}") from exc

    async def _exchange(self, kind: str, body: bytes, header_length: str | None):
        proc = await self._process()
        meta = pickle.dumps((kind, header_length, self.max_instances, len(body)))
        proc.stdin.write(_LENGTH.pack(len(meta)) + meta)
        proc.stdin.write(body)
        await proc.stdin.drain()
        (n,) = _LENGTH.unpack(await proc.stdout.readexactly(_LENGTH.size))
        status, value = pickle.loads(await proc.stdout.readexactly(n))
        if status == "bad":
            raise BadRequest(value)
        if status != "ok":
            raise RuntimeError(f"The body reader process failed: {value}")
        return value

    async def _process(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "components.serve.bodies", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env, limit=1 << 26)
        logger.info("Started the body reader process (pid %d)", self._proc.pid)
        return self._proc

    def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
        self._proc = None

    def close(self) -> None:
        """Stops the reader process (it exits when its input closes)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.stdin.close()
        self._proc = None

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Stops the reader process and waits until it has ended."""
        proc = self._proc
        self.close()
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _serve(stdin, stdout) -> None:
    """The reader process: bodies in, what they ask for out, until its input closes."""
    while True:
        head = stdin.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return
        (n,) = _LENGTH.unpack(head)
        kind, header_length, max_instances, size = pickle.loads(stdin.read(n))
        body = stdin.read(size)
        try:
            answer = ("ok", _read_one(kind, body, header_length, max_instances))
        except BadRequest as exc:
            answer = ("bad", str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the server, which logs it
            answer = ("error", repr(exc))
        data = pickle.dumps(answer, protocol=5)
        stdout.write(_LENGTH.pack(len(data)) + data)
        stdout.flush()


if __name__ == "__main__":
    # The classes it sends back must be this module's by name, not __main__'s.
    from components.serve import bodies as _named  # deferred: the module under its name

    exit_with(os.getppid())  # ends with the server even if its input were left open
    _named._serve(sys.stdin.buffer, sys.stdout.buffer)
