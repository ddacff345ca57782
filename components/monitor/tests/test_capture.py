"""The capture writer on its own: batching, partitions, deduplicated images, sampling, bounded
memory, flush on close, and the S3 backend over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import numpy as np
import pytest

from components.common.storage import LocalStore, open_store
from components.monitor import capture as C
from components.monitor.capture import CaptureConfig, CaptureWriter


def _records(store) -> list[dict]:
    return [json.loads(line) for o in store.list("capture/records")
            for line in store.get(o.key).decode().splitlines()]


def _record(i: int, t: float | None = None) -> dict:
    return {"request_id": f"r{i}", "index": 0, "time": t or time.time(), "model": "pets"}


def test_records_are_written_in_batches_partitioned_by_model_and_date(tmp_path):
    store = LocalStore(tmp_path)
    writer = CaptureWriter(CaptureConfig(uri=str(tmp_path), batch_records=10,
                                         batch_seconds=30), "pets", store, instance="h-1")
    for i in range(25):
        assert writer.submit(_record(i))
    assert writer.close(timeout=10)
    keys = [o.key for o in store.list("capture/records")]
    # 25 records: two full batches of 10 and the rest written at close; never one per record.
    assert len(keys) == 3
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert all(k.startswith(f"capture/records/model=pets/date={today}/") for k in keys)
    assert [k.rsplit("-", 1)[1] for k in keys] == ["000001.jsonl", "000002.jsonl",
                                                   "000003.jsonl"]
    assert sorted(r["request_id"] for r in _records(store)) == sorted(f"r{i}"
                                                                      for i in range(25))
    assert writer.counts["written"] == 25 and writer.counts["dropped"] == 0


def test_a_batch_waits_at_most_batch_seconds(tmp_path):
    store = LocalStore(tmp_path)
    writer = CaptureWriter(CaptureConfig(uri=str(tmp_path), batch_records=1000,
                                         batch_seconds=0.3), "pets", store)
    writer.submit(_record(1))
    deadline = time.monotonic() + 10
    while not list(store.list("capture/records")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["request_id"] for r in _records(store)] == ["r1"]  # without close()
    writer.close()


def test_a_batch_across_midnight_goes_to_both_dates(tmp_path):
    store = LocalStore(tmp_path)
    midnight = dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp()
    writer = CaptureWriter(CaptureConfig(uri=str(tmp_path), batch_records=100), "pets", store,
                           instance="h-1")
    writer.submit(_record(1, midnight - 1))
    writer.submit(_record(2, midnight + 1))
    writer.close()
    keys = [o.key for o in store.list("capture/records")]
    assert keys == ["capture/records/model=pets/date=2026-02-28/235959-h-1-000001.jsonl",
                    "capture/records/model=pets/date=2026-03-01/000001-h-1-000002.jsonl"]


def test_sampled_images_are_content_addressed_and_stored_once(tmp_path):
    store = LocalStore(tmp_path)
    writer = CaptureWriter(CaptureConfig(uri=str(tmp_path), image_rate=1.0), "pets", store)
    a, b = b"\xff\xd8first-frame", b"\xff\xd8second-frame"
    for i, img in enumerate([a, b, a, a]):
        writer.submit(_record(i), img)
    writer.close()
    shas = {r["request_id"]: r["image_sha256"] for r in _records(store)}
    assert shas["r0"] == shas["r2"] == shas["r3"] != shas["r1"]
    keys = sorted(o.key for o in store.list("capture/images"))
    assert keys == sorted(C.image_key(s) for s in {shas["r0"], shas["r1"]})
    assert store.get(C.image_key(shas["r1"])) == b
    assert writer.counts["images_written"] == 2 and writer.counts["images_duplicate"] == 2


def test_sampling_rates(tmp_path):
    never = CaptureWriter(CaptureConfig(uri=str(tmp_path), sample_rate=0.0), "pets",
                          LocalStore(tmp_path))
    assert not any(never.should_capture() for _ in range(1000))
    never.close()
    some = CaptureWriter(CaptureConfig(uri=str(tmp_path), sample_rate=0.3, image_rate=0.1),
                         "pets", LocalStore(tmp_path))
    share = np.mean([some.should_capture() for _ in range(20000)])
    images = np.mean([some.should_keep_image() for _ in range(20000)])
    some.close()
    assert 0.27 < share < 0.33 and 0.08 < images < 0.12
    with pytest.raises(ValueError, match="sample_rate: 1.5"):
        CaptureConfig(uri=str(tmp_path), sample_rate=1.5)


class SlowStore(LocalStore):
    """A store whose writes wait until released (a slow or hung object store)."""

    def __init__(self, root):
        super().__init__(root)
        self.release = threading.Event()

    def put(self, key, data, *, if_absent=False):
        self.release.wait(30)
        super().put(key, data, if_absent=if_absent)


def test_a_slow_store_fills_the_queue_and_new_records_are_dropped_and_counted(tmp_path):
    store = SlowStore(tmp_path)
    writer = CaptureWriter(CaptureConfig(uri=str(tmp_path), queue_records=5, batch_records=1,
                                         image_rate=1.0, queue_bytes=10), "pets", store)
    started = time.perf_counter()
    accepted = [writer.submit(_record(i), b"12345678") for i in range(50)]
    submit_seconds = time.perf_counter() - started
    # submit() never waited for the store (50 calls while every write is blocked).
    assert submit_seconds < 5
    assert sum(accepted) <= 7 and writer.counts["dropped"] == 50 - sum(accepted)
    # At most queue_bytes of images wait in memory; the others are dropped, records kept.
    assert writer.counts["images_dropped"] >= 49 - 1
    store.release.set()
    assert writer.close(timeout=10)
    assert writer.counts["written"] == sum(accepted)
    assert len(_records(store)) == sum(accepted)


class DownStore(LocalStore):
    def put(self, key, data, *, if_absent=False):
        raise ConnectionRefusedError(111, "Connection refused")


def test_a_store_that_is_down_loses_batches_counted_as_failed(tmp_path):
    writer = CaptureWriter(CaptureConfig(uri=str(tmp_path), batch_records=2, retries=1,
                                         retry_seconds=0.01), "pets", DownStore(tmp_path))
    for i in range(4):
        assert writer.submit(_record(i))
    assert writer.close(timeout=10)
    assert writer.counts["failed"] == 4 and writer.counts["written"] == 0
    assert not writer.submit(_record(9))  # closed: dropped and counted, never an exception
    assert writer.counts["dropped"] == 1


def test_capture_to_s3_over_http(s3_uri):
    writer = CaptureWriter(CaptureConfig(uri=s3_uri, batch_records=3, image_rate=1.0),
                           "pets", instance="pod-1")
    for i in range(7):
        writer.submit(_record(i), b"same-image")
    assert writer.close(timeout=30)
    store = open_store(s3_uri)
    assert len([o for o in store.list("capture/records")]) == 3
    assert len(_records(store)) == 7
    assert len(list(store.list("capture/images"))) == 1


def test_the_inference_service_turns_capture_on_in_the_predictor_pod():
    """In the cluster the same code runs in the predictor pod: the InferenceService gives the
    container the capture store and the S3 Secret's keys, and KServe 0.20's CRD accepts it."""
    from components.common import k8s
    from components.deploy.tests.kube_standin import load_crd_schema, validate

    cfg = k8s.ServingConfig(capture_uri="s3://mlops/monitoring")
    isvc = k8s.inference_service(cfg, registry_version=3)
    container = isvc["spec"]["predictor"]["containers"][0]
    assert {"name": "MLOPS_CAPTURE_URI", "value": "s3://mlops/monitoring"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": cfg.s3_secret}}]
    _, errors, unknown = validate(isvc, load_crd_schema())
    assert errors == [] and unknown == []
    plain = k8s.inference_service(k8s.ServingConfig())["spec"]["predictor"]["containers"][0]
    assert "envFrom" not in plain and all(e["name"] != "MLOPS_CAPTURE_URI" for e in plain["env"])


def test_a_record_that_cannot_be_serialised_is_counted_and_the_others_are_written(tmp_path):
    store = LocalStore(tmp_path)
    writer = CaptureWriter(CaptureConfig(uri=str(tmp_path), batch_records=3), "pets", store)
    writer.submit(_record(1))
    writer.submit({**_record(2), "stats": object()})  # a bug in the caller, not a crash
    writer.submit(_record(3))
    writer.submit(_record(4))
    assert writer.close(timeout=10)
    assert sorted(r["request_id"] for r in _records(store)) == ["r1", "r3", "r4"]
    assert writer.counts["failed"] == 1 and writer.counts["written"] == 3
