"""The predictor behind a real KServe ModelServer over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from components.common.registry import ModelRegistry
from components.common.storage import open_store
from components.serve.routing import REVISION_HEADER, TOKEN_ENV, TOKEN_HEADER, own_revision
from tests.support import free_port, start_model_server, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "pets"
MAX_BODY = 400_000
TOKEN = "the-router-token-of-this-deployment"


@pytest.fixture(scope="module")
def server(package_dir, tmp_path_factory):
    """`mlops serve --model pets@production` from a registry, as a separate process."""
    base = tmp_path_factory.mktemp("serving")
    registry = ModelRegistry(str(base / "registry"))
    files = {p.name: p.read_bytes() for p in package_dir.iterdir() if p.is_file()}
    mv = registry.register(MODEL, files, {"dataset_version": "test"})
    registry.set_alias(MODEL, "production", mv.version)
    port = free_port()
    log_dir = base / "requests"
    url = f"http://127.0.0.1:{port}"
    proc = start_model_server(
        [sys.executable, "-m", "components.cli", "serve", "--model", f"{MODEL}@production",
         "--registry", str(base / "registry"), "--cache-dir", str(base / "cache"),
         "--port", str(port), "--max-body-bytes", str(MAX_BODY), "--max-instances", "64",
         "--capture-uri", str(log_dir), "--capture-batch-seconds", "0.2"],
        url, MODEL, base / "server.log", env={**os.environ, TOKEN_ENV: TOKEN})
    yield {"url": url, "log_dir": log_dir, "proc": proc, "server_log": base / "server.log",
           "package_dir": package_dir}
    stop_process(proc)


PER_REQUEST_LOG_MARKS = ("kserve.trace", "ORJSONResponse", "POST /v1")


@pytest.fixture(scope="module")
def images(dataset_dirs):
    from components.ingest.snapshot import read_split

    rows, _ = read_split(dataset_dirs[1])
    out = []
    for uri, label in zip(rows["uri"].head(8), rows["label"].head(8), strict=True):
        parent, name = uri.rsplit("/", 1)
        out.append((open_store(parent).get(name), label))
    return out


def _v1(server, instances, **kw):
    return httpx.post(f"{server['url']}/v1/models/{MODEL}:predict",
                      json={"instances": instances}, timeout=30, **kw)


def _b64(data: bytes) -> dict:
    return {"image_bytes": {"b64": base64.b64encode(data).decode()}}


def test_v1_round_trip_returns_labels_and_probabilities(server, images):
    r = _v1(server, [_b64(images[0][0])])
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert set(pred["probabilities"]) == {"cats", "dogs"}  # labels come from the package
    assert pred["label"] == max(pred["probabilities"], key=pred["probabilities"].get)
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_many_instances_are_one_batch_with_the_same_answers(server, images):
    batch = _v1(server, [_b64(d) for d, _ in images]).json()["predictions"]
    single = [_v1(server, [_b64(d)]).json()["predictions"][0] for d, _ in images]
    assert len(batch) == len(images)
    for b, s in zip(batch, single, strict=True):
        assert b["label"] == s["label"]
        assert b["probabilities"]["cats"] == pytest.approx(s["probabilities"]["cats"], abs=1e-5)
    accuracy = np.mean([p["label"] == label for p, (_, label) in zip(batch, images, strict=True)])
    assert accuracy >= 0.75


def test_v2_with_kserves_rest_client_bytes_and_fp32(server, images):
    from kserve import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest

    async def run(inputs):
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            return await client.infer(server["url"], InferRequest(MODEL, inputs),
                                      model_name=MODEL)
        finally:
            await client.close()

    encoded = [base64.b64encode(d).decode() for d, _ in images[:2]]
    by_bytes = asyncio.run(run([InferInput("image", [2], "BYTES", encoded)]))
    outputs = {o.name: o for o in by_bytes.outputs}
    probs = outputs["probabilities"].as_numpy()
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    labels = [v.decode() if isinstance(v, bytes) else v
              for v in outputs["label"].as_numpy().tolist()]
    assert labels == [["cats", "dogs"][i] for i in probs.argmax(1)]

    # The same image, preprocessed by the client as the package describes, as FP32.
    from components.common.runtime import read_onnx_metadata

    meta = read_onnx_metadata(open(next(iter(server["log_dir"].parent.glob(
        "cache/pets/*/model.onnx"))), "rb").read())
    size = int(meta["input_size"])
    img = Image.open(io.BytesIO(images[0][0])).convert("RGB").resize((size, size),
                                                                     Image.BILINEAR)
    x = np.asarray(img, np.float32).transpose(2, 0, 1)[None] / 255.0
    x = (x - np.array(json.loads(meta["mean"]), np.float32).reshape(1, 3, 1, 1)) / np.array(
        json.loads(meta["std"]), np.float32).reshape(1, 3, 1, 1)
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x.astype(np.float32), binary_data=True)  # binary extension
    fp32 = {o.name: o for o in asyncio.run(run([tensor])).outputs}["probabilities"].as_numpy()
    assert np.allclose(fp32[0], probs[0], atol=1e-4)


def test_v2_binary_bytes_extension_with_kserves_own_client_encoding(server, images):
    """KServe 0.20 alone answers this with a 500 (it turns binary BYTES into UTF-8 text)."""
    from kserve.protocol.infer_type import InferInput, InferRequest

    raw = InferInput("image", [2], "BYTES")
    raw.set_data_from_numpy(np.array([images[0][0], images[1][0]], dtype=object),
                            binary_data=True)
    body, json_length = InferRequest(MODEL, [raw]).to_rest()
    r = httpx.post(f"{server['url']}/v2/models/{MODEL}/infer", content=body, timeout=30,
                   headers={"inference-header-content-length": str(json_length),
                            "content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    labels = next(o for o in r.json()["outputs"] if o["name"] == "label")["data"]
    v1 = _v1(server, [_b64(images[0][0]), _b64(images[1][0])]).json()["predictions"]
    assert labels == [p["label"] for p in v1]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_bytes_and_fp32(server, images, binary):
    """NVIDIA's own V2 client, as a camera gateway would use it: encoded images as BYTES
    (binary extension, its default, or base64 strings in JSON with no Content-Type header,
    which KServe 0.20 alone refuses), and a preprocessed FP32 tensor with its output
    requested in the same encoding."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server["url"].removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready(MODEL)
    frames = [data for data, _ in images[:4]]
    data = frames if binary else [base64.b64encode(f) for f in frames]
    image = triton.InferInput("image", [len(frames)], "BYTES")
    image.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
    result = client.infer(MODEL, [image])
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    v1 = _v1(server, [_b64(f) for f in frames]).json()["predictions"]
    assert labels == [p["label"] for p in v1]
    probs = result.as_numpy("probabilities")
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    from components.serve.predictor import PetClassifier

    offline = PetClassifier(MODEL, str(server["package_dir"]))
    offline.load()
    x = offline._images_to_batch(frames)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=[out])
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, atol=1e-5)


@pytest.mark.parametrize("header, tail, expect", [
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 999}}]}, b"\x03\x00\x00\x00abc",
     "does not fit"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 7}}]}, b"\x09\x00\x00\x00abc",
     "declares 9 bytes"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 7}}]}, b"\x03\x00\x00\x00abcXYZ",
     "bytes after the declared inputs"),
    ({"no_inputs": []}, b"", "'inputs' list"),
])
def test_malformed_binary_v2_bodies_are_400s(server, header, tail, expect):
    json_header = json.dumps(header).encode()
    r = httpx.post(f"{server['url']}/v2/models/{MODEL}/infer", content=json_header + tail,
                   headers={"inference-header-content-length": str(len(json_header))},
                   timeout=30)
    assert r.status_code == 400 and expect in r.json()["error"], r.text
    assert server["proc"].poll() is None


def _png_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (64, 64)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


BAD_V1 = {
    "non-image bytes": ({"instances": [_b64(b"just some text")]}, "not_an_image"),
    "truncated image": (None, "truncated"),
    "decompression bomb": ({"instances": [_b64(_png_bomb())]}, "decompression_bomb"),
    "empty instance list": ({"instances": []}, "no instances"),
    "missing instances": ({"inputs": [1]}, "instances"),
    "invalid base64": ({"instances": [{"image_bytes": {"b64": "%%%not base64"}}]}, "base64"),
    "wrong instance shape": ({"instances": [[1, 2, 3]]}, "image_bytes"),
    "too many instances": ({"instances": [_b64(b"x")] * 65}, "limit is 64"),
}


@pytest.mark.parametrize("case", sorted(BAD_V1))
def test_bad_v1_input_is_a_400_that_says_why_and_the_server_keeps_serving(server, images, case):
    body, expected = BAD_V1[case]
    if body is None:
        body = {"instances": [_b64(images[0][0][:300])]}
    r = httpx.post(f"{server['url']}/v1/models/{MODEL}:predict", json=body, timeout=30)
    assert r.status_code == 400, (case, r.status_code, r.text)
    assert expected in r.json()["error"]
    assert _v1(server, [_b64(images[0][0])]).status_code == 200


BAD_V2 = {
    "wrong shape": ({"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32",
                     "data": [0.0] * 192}, "expected [N, 3"),
    "wrong dtype": ({"name": "input", "shape": [1], "datatype": "INT32", "data": [1]},
                    "datatype INT32"),
    "non-finite": (None, "NaN"),
    "string not base64": ({"name": "image", "shape": [1], "datatype": "BYTES",
                           "data": ["not base64 !!"]}, "base64"),
}


@pytest.mark.parametrize("case", sorted(BAD_V2))
def test_bad_v2_input_is_a_400_that_says_why(server, images, case):
    inp, expected = BAD_V2[case]
    if inp is None:
        r = httpx.post(f"{server['url']}/v2/models/{MODEL}/infer", timeout=30, content=(
            '{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", '
            '"data": [' + ", ".join(["NaN"] * 3072) + "]}]}"),
            headers={"content-type": "application/json"})
    else:
        r = httpx.post(f"{server['url']}/v2/models/{MODEL}/infer", json={"inputs": [inp]},
                       timeout=30)
    assert r.status_code == 400, (case, r.status_code, r.text)
    assert expected in r.json()["error"]
    assert _v1(server, [_b64(images[0][0])]).status_code == 200


def test_body_over_the_limit_is_refused(server, images):
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "PNG")  # ~1 MB: over the server's 400 kB limit
    r = _v1(server, [_b64(buf.getvalue())])
    assert r.status_code == 413 and "request body is" in r.json()["error"]
    assert server["proc"].poll() is None
    assert _v1(server, [_b64(images[0][0])]).status_code == 200


def test_metrics_and_request_logs(server, images):
    answer = _v1(server, [_b64(images[0][0])], headers={"x-request-id": "metrics-and-logs-1"})
    rid = answer.json()["request_id"]  # the server's own id; the client's is kept beside it
    assert answer.json()["client_request_id"] == "metrics-and-logs-1" and len(rid) == 32
    text = httpx.get(f"{server['url']}/metrics", timeout=10).text
    assert 'pet_classifier_predicted_class_total{label="' in text
    assert 'pet_classifier_requests_total{model="pets",outcome="ok",protocol="v1"}' in text
    assert 'outcome="bad_request"' in text
    assert "pet_classifier_request_seconds_bucket" in text
    # Captured for monitoring (components/monitor/tests/test_capture_server.py tests it fully).
    def ours():  # this request's record (earlier tests' records are there too)
        return [r for p in server["log_dir"].rglob("*.jsonl")
                for r in map(json.loads, p.read_text().splitlines())
                if r.get("request_id") == rid]

    deadline = time.monotonic() + 10
    while not ours() and time.monotonic() < deadline:  # capture writes in batches
        time.sleep(0.1)
    found = ours()
    assert found
    record = found[0]
    assert record["client_request_id"] == "metrics-and-logs-1"
    assert record["model"] == MODEL and record["label"] and record["stats"]["width"]
    assert record["revision"] == "stable"  # no MLOPS_REVISION: the stable revision


def _captured(server, request_ids: set, timeout: float = 10) -> list[dict]:
    """The capture records of these requests, once they are all written."""
    def found():
        return [r for p in server["log_dir"].rglob("*.jsonl")
                for r in map(json.loads, p.read_text().splitlines())
                if r.get("request_id") in request_ids]

    deadline = time.monotonic() + timeout
    while len(found()) < len(request_ids) and time.monotonic() < deadline:
        time.sleep(0.1)  # capture writes in batches
    return found()


def test_a_client_chooses_neither_the_revision_nor_the_request_id(server, images):
    """A stable server records its traffic as stable whatever a client claims, and gives every
    request an id of its own: sharing one id cannot make records ambiguous. Only a router that
    proves itself with the deployment's token may say a request was the canary's."""
    frame = [_b64(images[0][0])]
    spoofs = [{REVISION_HEADER: "canary"},
              {REVISION_HEADER: "canary", TOKEN_HEADER: "a-guess"},
              {REVISION_HEADER: "canary", TOKEN_HEADER: ""}]
    answers = [_v1(server, frame, headers={**spoof, "x-request-id": "dup"})
               for spoof in spoofs for _ in range(4)]
    routed = [_v1(server, frame, headers={REVISION_HEADER: "canary", TOKEN_HEADER: TOKEN,
                                          "x-request-id": "dup"}) for _ in range(2)]
    assert all(r.status_code == 200 for r in answers + routed)
    spoofed = {r.json()["request_id"] for r in answers}
    by_router = {r.json()["request_id"] for r in routed}
    assert len(spoofed) == 12 and len(by_router) == 2  # one id per request, none the client's
    assert {r.json()["client_request_id"] for r in answers + routed} == {"dup"}
    records = _captured(server, spoofed | by_router)
    assert len(records) == 14
    assert {r["revision"] for r in records if r["request_id"] in spoofed} == {"stable"}
    assert {r["revision"] for r in records if r["request_id"] in by_router} == {"canary"}
    assert {r["client_request_id"] for r in records} == {"dup"}


def test_unknown_model_reference_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "components.cli", "serve", "--model",
                          "pets@production", "--registry", str(tmp_path / "empty")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "has no version" in res.stderr


def test_model_pickles_for_kserve_workers_and_reloads_its_session(package_dir, images):
    """KServe's --workers N pickles the model into each worker process."""
    import pickle

    from components.serve.predictor import PetClassifier

    model = PetClassifier(MODEL, str(package_dir))
    model.load()
    clone = pickle.loads(pickle.dumps(model))
    assert clone.ready and clone.session is not model.session
    x = model._images_to_batch([data for data, _ in images[:4]])
    np.testing.assert_allclose(clone.session.run(["probabilities"], {"input": x})[0],
                               model.session.run(["probabilities"], {"input": x})[0])


def test_no_log_line_per_request_unless_asked(server, images):
    """A camera-rate server must not write a line (or a warning) per request: KServe 0.20
    logs two trace lines, uvicorn an access line and FastAPI a deprecation warning."""
    for _ in range(20):
        assert _v1(server, [_b64(images[0][0])]).status_code == 200
    text = server["server_log"].read_text()
    assert not [mark for mark in PER_REQUEST_LOG_MARKS if mark in text], text[-2000:]


def test_worker_processes_serve_the_same_answers_quietly(server, package_dir, images,
                                                         tmp_path):
    """--workers 2: KServe spawns two processes; each loads the package, answers like the
    one-process server, and inherits the quiet logging."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "workers.log"
    proc = start_model_server(
        [sys.executable, "-m", "components.cli", "serve", "--package-dir",
         str(package_dir), "--name", MODEL, "--port", str(port), "--workers", "2",
         "--ort-threads", "1"],
        url, MODEL, log_path)
    try:
        instances = [_b64(data) for data, _ in images]
        expected = _v1(server, instances).json()["predictions"]

        async def many() -> list[dict]:
            async with httpx.AsyncClient(timeout=30) as client:
                async def one():
                    r = await client.post(f"{url}/v1/models/{MODEL}:predict",
                                          json={"instances": instances})
                    assert r.status_code == 200, r.text
                    return r.json()["predictions"]
                return await asyncio.gather(*(one() for _ in range(24)))
        answers = asyncio.run(many())
        # The guard runs in the worker processes too.
        unload = httpx.post(f"{url}/v2/repository/models/{MODEL}/unload", timeout=10)
        assert unload.status_code == 403
        bad = httpx.post(f"{url}/v2/models/{MODEL}/infer", timeout=10,
                         content=b'{"inputs": [{"name": "i", "shape": [1], '
                                 b'"datatype": "BYTES", "data": [null]}]}')
        assert bad.status_code == 400 and "element 0 is null" in bad.json()["error"]
    finally:
        stop_process(proc)
    for got in answers:
        assert [p["label"] for p in got] == [p["label"] for p in expected]
        np.testing.assert_allclose([list(p["probabilities"].values()) for p in got],
                                   [list(p["probabilities"].values()) for p in expected],
                                   atol=1e-5)
    text = log_path.read_text()
    assert text.count("Started server process") == 2, text[-2000:]
    assert not [mark for mark in PER_REQUEST_LOG_MARKS if mark in text], text[-2000:]


def test_serving_takes_the_pixel_limit_ingestion_takes():
    """Finding 8 of issue 23: ingestion accepted 40 MP, serving 16 MP. One limit now
    (components.settings.MAX_IMAGE_PIXELS, MLOPS_MAX_PIXELS); a request may hold two such."""
    from components.common.images import DEFAULT_MAX_PIXELS
    from components.ingest.core import IngestConfig
    from components.serve.predictor import ServingLimits

    limits = ServingLimits()
    assert limits.max_pixels == DEFAULT_MAX_PIXELS == IngestConfig().max_pixels >= 48_000_000
    assert limits.max_request_pixels == 2 * DEFAULT_MAX_PIXELS


def test_a_server_in_a_knative_revision_records_its_revision_not_a_role():
    """Knative sets K_REVISION in every revision's container (routing.KNATIVE_REVISION_ENV);
    the role there is the InferenceService's status's to give, never the pod's default."""
    assert own_revision("", {}) == ("stable", "")
    assert own_revision("", {"MLOPS_REVISION": "canary"}) == ("canary", "")
    assert own_revision("", {"K_REVISION": "pets-predictor-00002"}) == \
        ("", "pets-predictor-00002")
    assert own_revision("canary", {"K_REVISION": "pets-predictor-00002"}) == \
        ("canary", "pets-predictor-00002")  # said explicitly: kept beside the name
    with pytest.raises(ValueError, match="Invalid revision role 'blue'"):
        own_revision("", {"MLOPS_REVISION": "blue"})


def test_a_role_from_the_environment_is_checked(monkeypatch, capsys):
    from components.serve.server import main

    monkeypatch.setenv("MLOPS_REVISION", "blue")  # argparse checks no default against choices
    assert main(["--package-dir", "unused"]) == 2
    assert "invalid --revision (MLOPS_REVISION) 'blue'" in capsys.readouterr().err
