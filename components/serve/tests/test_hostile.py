"""The predictor under hostile clients and its own faults, over HTTP on 127.0.0.1.

Every test here failed on KServe 0.20 with the predictor before its guard (issue 9): the model
could be unloaded by any client, a few kilobytes of WebP stalled the event loop, a 500 broke
the client's keep-alive connection, malformed requests got 500s, client mistakes counted as
server errors, the body limit was checked after buffering and not at all for chunked bodies,
and every 4xx logged a traceback.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import onnx
import pytest
from PIL import Image

from components.common.prom import parse
from components.deploy.telemetry import served_between
from tests.support import free_port, start_model_server, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "pets"
MAX_BODY = 400_000
BODY_TIMEOUT = 2.0


def _start(package_dir, log_path, *extra) -> tuple[subprocess.Popen, str, int]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_model_server(
        [sys.executable, "-m", "components.cli", "serve", "--package-dir", str(package_dir),
         "--name", MODEL, "--port", str(port), *extra], url, MODEL, log_path)
    return proc, url, port


@pytest.fixture(scope="module")
def server(package_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    log_path = base / "server.log"
    proc, url, port = _start(package_dir, log_path, "--max-body-bytes", str(MAX_BODY),
                             "--body-timeout", str(BODY_TIMEOUT))
    yield {"url": url, "port": port, "proc": proc, "log": log_path, "package_dir": package_dir}
    stop_process(proc)


@pytest.fixture(scope="module")
def frame() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _b64(data: bytes) -> dict:
    return {"image_bytes": {"b64": base64.b64encode(data).decode()}}


def _predict(url: str, frames: list[bytes], **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{MODEL}:predict",
                      json={"instances": [_b64(f) for f in frames]}, timeout=30, **kw)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# ---- raw HTTP/1.1 on one socket, to see exactly what a keep-alive client sees ----------


class Connection:
    """One HTTP/1.1 keep-alive connection; requests and responses in order."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, method: str, path: str, body: bytes = b"", headers: dict | None = None,
             length: int | None = None) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if "Transfer-Encoding" not in (headers or {}):
            lines.append(f"Content-Length: {len(body) if length is None else length}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server; unread: {self.buf[:200]!r}")
            self.buf += chunk
        head, self.buf = self.buf.split(marker, 1)
        return head

    def response(self) -> tuple[int, dict, bytes]:
        head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in head[1:])}
        n = int(headers.get("content-length", 0))
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a response body")
            self.buf += chunk
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def exchange(self, method: str, path: str, body: bytes = b"", headers=None):
        self.send(method, path, body, headers)
        return self.response()


def _v1_body(frames: list[bytes]) -> bytes:
    return json.dumps({"instances": [_b64(f) for f in frames]}).encode()


JSON = {"Content-Type": "application/json"}


# ---- the model repository API ------------------------------------------------------------


def test_clients_cannot_unload_the_model_and_readiness_stays_true(server, frame):
    url = server["url"]
    for path in (f"/v2/repository/models/{MODEL}/unload", f"/v2/repository/models/{MODEL}/load",
                 "/v2/repository/index"):
        r = httpx.post(url + path, timeout=10)
        assert r.status_code == 403 and "repository API" in r.json()["error"], (path, r.text)
    assert _predict(url, [frame]).status_code == 200
    ready = httpx.get(f"{url}/v2/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert httpx.get(f"{url}/v2/models/{MODEL}/ready", timeout=10).json()["ready"] is True
    assert httpx.get(f"{url}/v2", timeout=10).json()["extensions"] == []  # not offered


# ---- decoding budget ---------------------------------------------------------------------


def _webp_declaring(width: int, height: int) -> bytes:
    """A lossless WebP of a few dozen bytes whose header declares ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 140, 60)).save(buf, "WEBP", lossless=True)
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    (bits,) = struct.unpack_from("<I", data, 21)
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    struct.pack_into("<I", data, 21, bits)
    return bytes(data)


def _webp(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 120, 40)).save(buf, "WEBP", lossless=True)
    return buf.getvalue()


def test_a_tiny_webp_declaring_56_megapixels_is_refused_from_its_header(server, frame):
    """Over the one pixel limit of ingestion and serving (50 MP, MLOPS_MAX_PIXELS)."""
    bomb = _webp_declaring(7500, 7500)
    assert len(bomb) < 100
    started = time.perf_counter()
    r = _predict(server["url"], [bomb] * 64)
    assert r.status_code == 400, r.text
    assert "7500x7500" in r.json()["error"] and "per image" in r.json()["error"]
    assert "MLOPS_MAX_PIXELS" in r.json()["error"]
    assert time.perf_counter() - started < 2
    assert _predict(server["url"], [frame]).status_code == 200


def test_the_pixels_of_a_whole_request_are_budgeted(server, frame):
    """Three 48 MP images pass the per-image limit but not the request's budget (100 MP)."""
    r = _predict(server["url"], [_webp_declaring(8000, 6000)] * 3)
    assert r.status_code == 400, r.text
    assert "144000000 pixels together" in r.json()["error"]
    assert "--max-request-pixels" in r.json()["error"]


def _flat_progressive_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3999), (200, 120, 40)).save(buf, "JPEG", quality=5,
                                                         progressive=True)
    return buf.getvalue()


@pytest.mark.parametrize("images", [[_webp(2000)] * 2, [_webp_declaring(4000, 3999)],
                                    [_flat_progressive_jpeg()]],
                         ids=["two flat 4 MP WebP of 212 bytes", "40 bytes declaring 16 MP",
                              "flat 16 MP progressive JPEG of 94 kB"])
def test_lossless_images_that_declare_thousands_of_pixels_per_byte_are_refused(server, frame,
                                                                              images):
    """Within every pixel limit, yet each byte would cost thousands of decoded pixels (the
    two 4 MP files decode in 0.3 s, from 424 bytes)."""
    started = time.perf_counter()
    r = _predict(server["url"], images)
    assert r.status_code == 400, r.text
    assert "pixels per byte" in r.json()["error"] and "Send JPEG" in r.json()["error"]
    assert time.perf_counter() - started < 1
    # A lossless frame with some detail is accepted: 4.8 MP from 36 kB is within the 4 MP
    # allowed at any size plus 100 pixels per byte.
    blocks = np.random.default_rng(1).integers(0, 255, (60, 50, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blocks).resize((2000, 2400), Image.NEAREST).save(buf, "PNG")
    r = _predict(server["url"], [buf.getvalue()])
    assert r.status_code == 200, r.text


def test_a_jpeg_of_hundreds_of_scans_is_refused_before_decoding(server, frame):
    """Each scan of a progressive JPEG is a pass over the whole image."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(frame)).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    last_scan = data[data.rindex(b"\xff\xda"):-2]  # up to the end-of-image marker
    many = data[:-2] + last_scan * 80 + b"\xff\xd9"
    r = _predict(server["url"], [many])
    assert r.status_code == 400 and "more than 64 scans" in r.json()["error"], r.text
    assert _predict(server["url"], [data]).status_code == 200  # 10 scans: a normal file


def test_health_checks_are_answered_while_images_decode(package_dir, tmp_path):
    """Decoding runs in a thread pool: the event loop answers while 60 MP are decoded (on a
    server whose operator raised the pixel limits)."""
    proc, url, _ = _start(package_dir, tmp_path / "server.log", "--max-request-pixels",
                          "100000000", "--max-pixels-per-byte", "1000000")
    try:
        photo = _webp(2000)
        done = {}

        def heavy():
            r = _predict(url, [photo] * 15)
            done["status"], done["at"] = r.status_code, time.perf_counter()

        caller = threading.Thread(target=heavy)
        caller.start()
        time.sleep(0.3)
        r = httpx.get(f"{url}/v2/health/ready", timeout=30)
        answered = time.perf_counter()
        caller.join()
    finally:
        stop_process(proc)
    assert r.status_code == 200 and done["status"] == 200
    assert answered < done["at"], "the health check waited for the decoding"


# ---- malformed requests are 4xx that name the problem -------------------------------------

_B64 = base64.b64encode(b"\xff\xd8 not really").decode()
_FP32 = {"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}


def _v2(inp=None, **top) -> bytes:
    return json.dumps({"inputs": [inp if inp is not None else _FP32], **top}).encode()


def _binary_fp32(nbytes: int) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32],
                                     "datatype": "FP32",
                                     "parameters": {"binary_data_size": nbytes}}]}).encode()
    return header + b"\0" * nbytes, {"Inference-Header-Content-Length": str(len(header)),
                                     "Content-Type": "application/octet-stream"}


MALFORMED = {
    "empty body": (b"", {}, "The request body is empty"),
    "empty body, JSON": (b"", JSON, "The request body is empty"),
    # V2 JSON sent without a Content-Type (as tritonclient does)
    "no name": (_v2({"shape": [1], "datatype": "BYTES", "data": [_B64]}), {}, "no 'name'"),
    "no shape": (_v2({"name": "i", "datatype": "BYTES", "data": [_B64]}), {}, "'shape'"),
    "no datatype": (_v2({"name": "i", "shape": [1], "data": [_B64]}), {}, "datatype None"),
    "outputs not a list": (_v2(outputs="label"), {}, "'outputs' must be a list"),
    "output without name": (_v2(outputs=[{"nom": 1}]), JSON, "string 'name'"),
    "unknown output": (_v2(outputs=[{"name": "logits"}]), JSON, "'logits' is not an output"),
    "numeric id": (_v2(id=5), {}, "'id' must be a string"),
    "numeric id, JSON": (_v2(id=5), JSON, "'id' must be a string"),
    "data [null]": (_v2({**_FP32, "data": [None] * 3072}), JSON, "element 0 is null"),
    "data [null] BYTES": (_v2({"name": "i", "shape": [1], "datatype": "BYTES",
                               "data": [None]}), JSON, "element 0 is null"),
    "data an object": (_v2({**_FP32, "data": {"a": 1}}), JSON, "'data' must be a list"),
    "NaN literal": (_v2().replace(b"0.0,", b"NaN,", 1), JSON, "no NaN or Infinity"),
    "lone surrogate": (_v2({"name": "\\ud800", "shape": [1], "datatype": "BYTES",
                            "data": [_B64]}).replace(b"\\\\ud800", b"\\ud800"), JSON,
                       "surrogate"),
    "binary FP32 too short": (*_binary_fp32(12), "is 12288 bytes; the request has 12"),
    "negative shape": (_v2({**_FP32, "shape": [-1, 3, 32, 32]}), JSON, "negative dimension"),
    "empty shape": (_v2({**_FP32, "shape": [], "data": [0.0]}), JSON, "shape []"),
    "lowercase datatype": (_v2({**_FP32, "datatype": "fp32"}), JSON, "upper case: FP32"),
    "string FP32 values": (_v2({**_FP32, "data": ["0.5"] * 3072}), JSON, "element 0 is str"),
    "boolean FP32 values": (_v2({**_FP32, "data": [True] * 3072}), JSON, "element 0 is bool"),
    "BYTES with a 2-D shape": (_v2({"name": "i", "shape": [1, 1], "datatype": "BYTES",
                                    "data": [_B64]}), JSON, "shape [N]"),
    "shape and data disagree": (_v2({**_FP32, "shape": [2, 3, 32, 32]}), JSON,
                                "needs 6144 elements"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformed_v2_request_is_a_400_that_names_the_problem(server, frame, case):
    body, headers, expected = MALFORMED[case]
    conn = Connection(server["port"])
    try:
        status, _, answer = conn.exchange("POST", f"/v2/models/{MODEL}/infer", body, headers)
        assert status == 400, (case, status, answer)
        assert expected in json.loads(answer)["error"], (case, answer)
        # The same connection serves the next request.
        status, _, _ = conn.exchange("POST", f"/v1/models/{MODEL}:predict", _v1_body([frame]),
                                     JSON)
        assert status == 200
    finally:
        conn.close()


def test_what_this_server_does_not_serve_is_a_404(server, frame):
    url = server["url"]
    explain = httpx.post(f"{url}/v1/models/{MODEL}:explain",
                         json={"instances": [_b64(frame)]}, timeout=10)
    assert explain.status_code == 404 and "no explainer" in explain.json()["error"]
    versioned = httpx.post(f"{url}/v2/models/{MODEL}/versions/7/infer", content=_v2(),
                           timeout=10)
    assert versioned.status_code == 404
    unknown = httpx.post(f"{url}/v2/models/nope/infer", content=_v2(), timeout=10)
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]


def test_an_inference_path_asked_with_get_is_a_405_not_an_unknown_model(server):
    """KServe reads ``GET /v1/models/NAME:predict`` as the model ``NAME:predict`` (404 "does
    not exist"): the method is the mistake, and the answer says so."""
    url = server["url"]
    for path in (f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"):
        r = httpx.get(f"{url}{path}", timeout=10)
        assert r.status_code == 405 and r.headers["allow"] == "POST", r.text
        assert "POST" in r.json()["error"] and "does not exist" not in r.text
    assert httpx.get(f"{url}/v1/models/{MODEL}", timeout=10).status_code == 200  # metadata


def test_client_mistakes_are_bad_requests_not_server_errors(server, frame):
    """The canary analysis reads server errors only: a client cannot roll a canary back."""
    url = server["url"]
    before = parse(httpx.get(f"{url}/metrics", timeout=10).text, MODEL)
    assert httpx.post(f"{url}/v2/models/{MODEL}/infer", timeout=10,
                      content=_v2({**_FP32, "data": [None] * 3072})).status_code == 400
    assert httpx.post(f"{url}/v2/models/{MODEL}/infer", timeout=10,
                      content=_v2({**_FP32, "data": {"x": 1}})).status_code == 400
    assert httpx.post(f"{url}/v1/models/{MODEL}:explain", timeout=10,
                      json={"instances": [_b64(frame)]}).status_code == 404
    assert _predict(url, [frame]).status_code == 200
    after = parse(httpx.get(f"{url}/metrics", timeout=10).text, MODEL)
    window = served_between(before, after)
    assert window["available"], window
    assert (window["errors"], window["bad_requests"], window["requests"]) == (0, 3, 4)
    assert window["error_rate"] == 0.0


# ---- the body limit ----------------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(server):
    conn = Connection(server["port"])
    try:
        conn.send("POST", f"/v1/models/{MODEL}:predict", b"{", JSON, length=200 * 2**20)
        status, headers, body = conn.response()  # answered without the 200 MiB
    finally:
        conn.close()
    assert status == 413 and headers.get("connection") == "close"
    assert f"limit is {MAX_BODY}" in json.loads(body)["error"]


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_read(server, frame):
    rss_before = _rss_mib(server["proc"].pid)
    conn = Connection(server["port"])
    chunk = b"A" * 65536
    try:
        conn.send("POST", f"/v1/models/{MODEL}:predict", b"",
                  {**JSON, "Transfer-Encoding": "chunked"})
        sent = 0
        try:
            while sent < 50 * 2**20:  # up to 50 MiB, stopping when the server has answered
                conn.sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = conn.response()
    finally:
        conn.close()
    assert status == 413, body
    assert headers.get("connection") == "close"
    assert sent < 50 * 2**20, "the server read the whole chunked body"
    assert _rss_mib(server["proc"].pid) - rss_before < 50
    assert _predict(server["url"], [frame]).status_code == 200


def test_a_body_that_does_not_arrive_is_a_408(server):
    conn = Connection(server["port"], timeout=BODY_TIMEOUT + 10)
    try:
        conn.send("POST", f"/v1/models/{MODEL}:predict", b'{"instances": [', JSON, length=1000)
        status, headers, body = conn.response()
    finally:
        conn.close()
    assert status == 408 and "did not arrive" in json.loads(body)["error"]
    assert headers.get("connection") == "close"


def test_abandoned_and_malformed_bodies_are_the_clients_not_server_errors(server, frame):
    """A client that leaves before its body arrived, or sends a chunk size the HTTP parser
    refuses, cannot raise the server error rate the canary analysis rolls back on."""
    url, port = server["url"], server["port"]
    before = parse(httpx.get(f"{url}/metrics", timeout=10).text, MODEL)
    for _ in range(20):  # declares 1000 bytes, sends 15, hangs up
        conn = Connection(port)
        conn.send("POST", f"/v1/models/{MODEL}:predict", b'{"instances": [', JSON, length=1000)
        conn.close()
    for junk in (b"zz\r\n", b"5\r\nab"):  # a bad chunk size; a chunk cut short
        conn = Connection(port)
        conn.send("POST", f"/v1/models/{MODEL}:predict", b"",
                  {**JSON, "Transfer-Encoding": "chunked"})
        conn.sock.sendall(junk)
        conn.close()
    assert _predict(url, [frame]).status_code == 200

    def window():
        return served_between(before, parse(httpx.get(f"{url}/metrics", timeout=10).text,
                                            MODEL))

    deadline = time.monotonic() + 30  # the server counts each one when it notices the close
    while window()["bad_requests"] < 22 and time.monotonic() < deadline:
        time.sleep(0.1)
    served = window()
    assert (served["errors"], served["bad_requests"], served["requests"]) == (0, 22, 23), served
    assert served["error_rate"] == 0.0
    assert "Traceback" not in server["log"].read_text()


# ---- logs --------------------------------------------------------------------------------


def test_client_mistakes_log_rate_limited_warnings_without_tracebacks(server):
    text_before = server["log"].read_text()
    for i in range(40):
        httpx.post(f"{server['url']}/v2/models/{MODEL}/infer", content=_v2(id=i), timeout=10)
    for _ in range(5):  # not even HTTP: uvicorn answers 400 and warns, once per 10 s here
        with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as sock:
            sock.sendall(b"GARBAGE \x00\x01\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
    new = server["log"].read_text()[len(text_before):]
    assert "Traceback" not in new and "ERROR" not in new
    assert new.count("Bad request") <= 2, new  # one line per 10 s at most
    assert new.count("Invalid HTTP request") <= 1, new


# ---- binding -----------------------------------------------------------------------------


def test_serve_binds_loopback_by_default_and_says_where(server):
    assert f"on http://127.0.0.1:{server['port']} " in server["log"].read_text()
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, port = local.split(":")
                if state == "0A" and int(port, 16) == server["port"]:
                    listening.add(addr)
    assert listening == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0


# ---- metadata and binary outputs ---------------------------------------------------------


def test_v2_metadata_lists_the_real_inputs_and_outputs(server):
    meta = httpx.get(f"{server['url']}/v2/models/{MODEL}", timeout=10).json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                              {"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert meta["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]


def test_binary_outputs_when_asked(server, frame):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server["url"].removeprefix("http://"))
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array([frame, frame], dtype=object))
    both = client.infer(MODEL, [image], outputs=[
        triton.InferRequestedOutput("label", binary_data=True),
        triton.InferRequestedOutput("probabilities", binary_data=True)])
    assert all("binary_data_size" in o["parameters"] for o in both.get_response()["outputs"])
    expected = _predict(server["url"], [frame]).json()["predictions"][0]
    assert [v.decode() for v in both.as_numpy("label")] == [expected["label"]] * 2
    np.testing.assert_allclose(both.as_numpy("probabilities")[0],
                               list(expected["probabilities"].values()), atol=1e-5)
    # Only what was asked for, and the request-wide switch of the binary extension.
    only = client.infer(MODEL, [image],
                        outputs=[triton.InferRequestedOutput("label", binary_data=False)])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["label"]
    body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "data": [base64.b64encode(frame).decode()]}],
                       "parameters": {"binary_data_output": True}}).encode()
    r = httpx.post(f"{server['url']}/v2/models/{MODEL}/infer", content=body, timeout=10)
    assert r.status_code == 200
    json_length = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:json_length])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sum(sizes) == len(r.content) - json_length


# ---- a server fault ------------------------------------------------------------------------


def _batch_of_one_package(package_dir, dest):
    """A packaging bug: the model's batch axis fixed to 1, so two images fail inside ONNX
    Runtime (a genuine server error, HTTP 500)."""
    dest.mkdir()
    for p in package_dir.iterdir():
        if p.is_file():
            (dest / p.name).write_bytes(p.read_bytes())
    model = onnx.load_from_string((package_dir / "model.onnx").read_bytes())
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    (dest / "model.onnx").write_bytes(model.SerializeToString())
    return dest


def test_a_server_error_keeps_the_keep_alive_connection_usable(package_dir, tmp_path, frame):
    package = _batch_of_one_package(package_dir, tmp_path / "batch-of-one")
    proc, url, port = _start(package, tmp_path / "server.log")
    try:
        conn = Connection(port)
        try:
            for _ in range(3):
                status, headers, body = conn.exchange(
                    "POST", f"/v1/models/{MODEL}:predict", _v1_body([frame, frame]), JSON)
                assert status == 500 and "error" in json.loads(body)
                # The next request on the same connection is answered.
                status, _, body = conn.exchange("POST", f"/v1/models/{MODEL}:predict",
                                                _v1_body([frame]), JSON)
                assert status == 200, body
        finally:
            conn.close()
        window = parse(httpx.get(f"{url}/metrics", timeout=10).text, MODEL).requests
        assert window.get("error") == 3 and window.get("ok") == 3
        log = (tmp_path / "server.log").read_text()
        assert log.count("Traceback") == 3  # the server's own fault is logged in full, once
    finally:
        stop_process(proc)
