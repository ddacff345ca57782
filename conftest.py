"""Shared pytest fixtures: storage backends, including a real S3 server on loopback."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest

logging.getLogger("werkzeug").setLevel(logging.WARNING)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible HTTP server (moto in server mode) on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
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
