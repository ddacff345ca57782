"""Production on the local target captures what it serves, and each record names the role
(stable or canary) the router chose for its request, whatever the client claimed; the test
environment never captures."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import requests

from components.common.registry import ModelRegistry
from components.deploy.apptest import load_labelled_split
from components.deploy.client import v1_body
from components.deploy.router import REVISION_HEADER
from components.deploy.targets.local import LocalTarget
from components.monitor.window import read_window
from components.serve.routing import TOKEN_HEADER

MODEL = "pets"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_captures_name_the_role_the_router_chose(package_dir, dataset_dirs, tmp_path,
                                                 monkeypatch):
    # Small batches, so the records are in the store a moment after the answers.
    monkeypatch.setenv("MLOPS_CAPTURE_BATCH_RECORDS", "5")
    monkeypatch.setenv("MLOPS_CAPTURE_BATCH_SECONDS", "0.2")
    monkeypatch.delenv("MLOPS_CAPTURE_URI", raising=False)
    registry = ModelRegistry(str(tmp_path / "registry"))
    files = {p.relative_to(package_dir).as_posix(): p.read_bytes()
             for p in package_dir.rglob("*") if p.is_file()}
    for _ in range(2):
        registry.register(MODEL, files, {"dataset_version": "test"})
    monitoring = str(tmp_path / "monitoring")
    target = LocalTarget(registry.uri, MODEL, tmp_path / "deployments", capture_uri=monitoring)
    images, _ = load_labelled_split(dataset_dirs[1])
    start = time.time() - 1
    try:
        target.deploy("test", 1)
        target.deploy("production", 1)
        dep = target.start_canary("production", 2, 50)
        session = requests.Session()
        served, ids = Counter(), set()
        for i in range(40):  # every one claims to be canary traffic, under one id
            r = session.post(f"{dep.url}/v1/models/{MODEL}:predict",
                             json=v1_body([images[i % len(images)]]), timeout=30,
                             headers={REVISION_HEADER: "canary", TOKEN_HEADER: "a-guess",
                                      "x-request-id": "dup"})
            assert r.status_code == 200
            served[r.headers[REVISION_HEADER]] += 1
            ids.add(r.json()["request_id"])
        # The canary analysis's probes reach each server straight, with no router in front:
        # a canary server is started as one (--revision canary), so its records say so.
        direct = {"stable": dep.stable.url, "canary": dep.canary.url}
        for url in direct.values():
            for i in range(5):
                r = session.post(f"{url}/v1/models/{MODEL}:predict",
                                 json=v1_body([images[i]]), timeout=30)
                assert r.status_code == 200
                ids.add(r.json()["request_id"])
        # Promoted, the canary's server serves as the stable revision without a restart:
        # the probes the target sends it prove its new role with the router's token.
        target.promote("production")
        for i in range(5):
            r = session.post(f"{direct['canary']}/v1/models/{MODEL}:predict",
                             json=v1_body([images[i]]), timeout=30,
                             headers=target.probe_headers("production", "stable"))
            assert r.status_code == 200
            ids.add(r.json()["request_id"])
        test_url = target.status("test").url
        for i in range(5):
            r = session.post(f"{test_url}/v1/models/{MODEL}-test:predict",
                             json=v1_body([images[i]]), timeout=30)
            assert r.status_code == 200
    finally:
        target.delete_all()  # stops the servers, which flush what they captured
    win = read_window(monitoring, MODEL, start, time.time() + 1, with_labels=False)
    assert served == {"stable": 20, "canary": 20}
    # Every answer was captured once, under the role that served it and that role's version.
    pairs = Counter((str(r["model_version"]), r["revision"]) for r in win.records)
    assert pairs == {("1", "stable"): 25, ("2", "canary"): 25, ("2", "stable"): 5}, pairs
    assert {r["request_id"] for r in win.records} == ids and len(ids) == 55
    assert {r["client_request_id"] for r in win.records} == {"dup", ""}
    # Nothing from the test environment: it never captures.
    assert not win.problems.get("foreign"), win.problems
