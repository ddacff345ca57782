"""Request bodies read in the body reader process give what reading them in place gives, and
the process goes when the reader is closed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import numpy as np
import pytest

from components.serve import bodies

pytestmark = pytest.mark.timeout(60)


def _v2_numbers(n: int) -> bytes:
    values = np.random.default_rng(0).random(n).round(6).tolist()
    return json.dumps({"id": "c1", "inputs": [{"name": "input", "shape": [n // 12, 3, 2, 2],
                                               "datatype": "FP32", "data": values}]}).encode()


def test_a_large_body_read_in_the_reader_process_equals_reading_it_in_place():
    body = _v2_numbers(240_000)  # about 2.6 MB of JSON, over the inline limit
    assert len(body) > bodies.INLINE_BYTES
    v1 = json.dumps({"instances": [{"b64": base64.b64encode(b"x" * 600_000).decode()}] * 2}
                    ).encode()

    async def both():
        reader = bodies.BodyReader(max_instances=4)
        try:
            return (await reader.read("v2", body), await reader.read("v1", v1),
                    reader._proc.pid)
        finally:
            await reader.aclose()

    far, images, pid = asyncio.run(both())
    near = bodies.read_v2(body, None, 4)
    assert far.id == near.id == "c1" and far.inputs[0].shape == [20_000, 3, 2, 2]
    assert far.inputs[0].data.dtype == np.float32
    np.testing.assert_array_equal(far.inputs[0].data, near.inputs[0].data)
    assert images == [b"x" * 600_000] * 2
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the reader process outlived its reader"


def test_a_client_mistake_in_a_large_body_is_a_bad_request_naming_it():
    body = _v2_numbers(240_000).replace(b'"FP32"', b'"fp32"')

    async def read():
        reader = bodies.BodyReader(max_instances=4)
        try:
            with pytest.raises(bodies.BadRequest, match="upper case: FP32"):
                await reader.read("v2", body)
            # The reader goes on with the next body.
            return await reader.read("v1", b'{"instances": []}')
        finally:
            await reader.aclose()

    with pytest.raises(bodies.BadRequest, match="no instances"):
        asyncio.run(read())


def test_a_v2_bytes_input_of_more_elements_than_instances_allowed_is_refused():
    body = json.dumps({"inputs": [{"name": "image", "shape": [300], "datatype": "BYTES",
                                   "data": ["aGk="] * 300}]}).encode()
    with pytest.raises(bodies.BadRequest, match="300 instances; the limit is 256"):
        bodies.read_v2(body, None, 256)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
