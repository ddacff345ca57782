"""Shared pytest fixtures: storage backends, including a real S3 server on loopback."""

from __future__ import annotations

import logging
import os
import uuid

import pytest

from tests.support import free_port

logging.getLogger("werkzeug").setLevel(logging.WARNING)

# Trainings in the tests (in process, in kfp.local steps and under torchrun) use one torch
# thread each, as a pod limited to one CPU does. On a busy 2-core machine two threads mostly
# wait on each other: a 6-epoch training took 67 s with two and 12 s with one, same accuracy.
# A test that needs another value sets it itself (monkeypatch.setenv).
os.environ.setdefault("MLOPS_TORCH_THREADS", "1")


@pytest.fixture(autouse=True)
def _environment_given_back():
    """Each test leaves the process environment as it found it: a command run in process
    (which exports its settings for the steps it starts) cannot point a later test's
    subprocesses at its stores."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible HTTP server (moto in server mode) on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """Points the environment at the loopback server, as a cluster's Secret would."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return s3_endpoint


@pytest.fixture
def s3_uri(s3_env):
    """A fresh, empty ``s3://bucket/prefix`` on the loopback server."""
    from components.common.storage import S3Store

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    S3Store(bucket).ensure_bucket()
    return f"s3://{bucket}/root"


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    """The URI of an empty store, once per backend."""
    if request.param == "local":
        return (tmp_path / "store").as_uri()
    return request.getfixturevalue("s3_uri")


@pytest.fixture(scope="session")
def dataset_dirs(tmp_path_factory):
    """(train_dir, test_dir) of an ingested 600-image, 32 px sample lake."""
    from components.common.storage import open_store
    from components.datagen.core import LakeSpec, generate
    from components.ingest.core import ingest
    from components.ingest.snapshot import write_split

    base = tmp_path_factory.mktemp("data")
    generate(LakeSpec(n=600, size=32, seed=21), open_store(base / "lake"))
    result = ingest(str(base / "lake"), str(base / "ds"))
    dirs = []
    for split in ("train", "test"):
        write_split(result, split, str(base / split))
        dirs.append(str(base / split))
    return tuple(dirs)


@pytest.fixture(scope="session")
def trained_model_dir(dataset_dirs, tmp_path_factory):
    """A small CNN trained for a few epochs on ``dataset_dirs`` (a model folder)."""
    from components.ingest.snapshot import read_split
    from components.train import core

    rows, meta = read_split(dataset_dirs[0])
    data = core.prepare(rows, meta["dataset_version"], 32)
    out = tmp_path_factory.mktemp("model")
    core.train(data, core.HParams(epochs=6, image_size=32, lr=3e-3), out)
    return str(out)


@pytest.fixture(scope="session")
def package_dir(dataset_dirs, trained_model_dir, tmp_path_factory):
    """An ONNX package (model.onnx, metadata, model card) of ``trained_model_dir``."""
    from components.ingest.snapshot import read_split
    from components.package.core import build_package
    from components.train.core import load_images, load_model

    model, meta = load_model(trained_model_dir)
    rows, _ = read_split(dataset_dirs[1])
    evaluation = {"metrics": {"accuracy": 1.0, "macro": {"f1": 1.0}, "roc_auc": 1.0, "count": 1,
                              "per_class": {}},
                  "gate": {"bias": {"recall_gap": 0.0, "best_class": "cats",
                                    "worst_class": "dogs", "threshold": 0.1, "passed": True}}}
    out = tmp_path_factory.mktemp("package")
    build_package(model, meta, evaluation, load_images(rows.head(20), 32), "pets", out)
    return out
