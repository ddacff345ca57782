"""Junk inputs (blank frames, uniform noise, images too small, all-zero tensors) are judged by
the predictor on the decode it classifies, counted apart under integrity, and left out of
drift, class shares and performance."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from components.common.storage import open_store
from components.monitor.core import run_monitoring

from .conftest import simulate_window


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def _junk() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(5)
    return {
        "too_small": [_encoded(np.zeros((1, 1, 3), np.uint8), "PNG")] * 4,  # 1x1 black PNG
        "blank": [_encoded(np.full((2160, 3840, 3), 255, np.uint8), "JPEG")] * 2,  # 4K white
        "noise": [_encoded(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "PNG")
                  for _ in range(6)],
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_junk_is_counted_apart_and_moves_no_drift_statistic(monitor_setup, package_dir,
                                                            tmp_path, monkeypatch):
    from kserve.protocol.infer_type import InferInput, InferRequest

    from components.monitor.capture import CaptureConfig
    from components.serve.predictor import PetClassifier

    uri = str(tmp_path / "monitoring")
    now = time.time()
    simulate_window(monitor_setup, uri, n=120, start=now - 3600, seconds_apart=10, seed=31,
                    label_share=0.5)

    def judge():
        return run_monitoring(monitor_setup.model, monitor_setup.registry_uri, uri,
                              start=now - 7200, end=time.time() + 600, backend="torch",
                              explain=False, write=False)

    before = judge()

    # The same window plus junk, served and captured by the predictor like any request.
    monkeypatch.setenv("MLOPS_MODEL_VERSION", str(monitor_setup.version))
    model = PetClassifier(monitor_setup.model, str(package_dir),
                          capture=CaptureConfig(uri=uri, batch_seconds=3600))
    model.load()

    async def serve(payload):
        batch = await model.preprocess(payload)
        return await model.postprocess(await model.predict(batch))

    junk = _junk()
    for data in (d for images in junk.values() for d in images):
        asyncio.run(serve({"instances": [{"image_bytes": {
            "b64": base64.b64encode(data).decode()}}]}))
    zeros = InferInput("input", [3, 3, 32, 32], "FP32")
    zeros.set_data_from_numpy(np.zeros((3, 3, 32, 32), np.float32))
    asyncio.run(serve(InferRequest(model.name, infer_inputs=[zeros], request_id="zeros")))
    model.stop()  # writes what capture holds

    store = open_store(uri)
    served = [json.loads(line) for o in store.list("capture/records")
              for line in store.get(o.key).decode().splitlines()
              if json.loads(line)["time"] >= now]
    verdicts = sorted(r["input_quality"] for r in served)
    expected = {"too_small": 4, "blank": 2 + 3, "noise": 6}  # 3 all-zero tensors are blank
    assert verdicts == sorted(k for k, n in expected.items() for _ in range(n))

    after = judge()
    check = after.check("integrity.junk_inputs")
    assert check.extra["counts"] == expected
    assert check.status == "alarm" and check.value == pytest.approx(15 / 135)
    assert "15 of 135 inputs are junk" in check.detail
    assert before.check("integrity.junk_inputs").value == 0
    # Drift, class shares and performance see exactly the traffic they saw before.
    assert after.n_requests == before.n_requests == 120
    assert after.n_labelled == before.n_labelled
    for name in ("drift.statistics", "prediction_drift.class_shares", "performance.accuracy",
                 "integrity.out_of_range"):
        assert after.check(name).value == before.check(name).value, name
        assert after.check(name).status == before.check(name).status, name
    for name in ("drift.statistics", "prediction_drift.class_shares", "drift.embedding"):
        assert after.check(name).extra["junk_left_out"] == 15
        assert "15 junk inputs left out" in after.check(name).detail

