"""Application testing and canary release against real KServe model servers on loopback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from components.common.registry import ModelRegistry
from components.deploy.apptest import AppTestConfig, application_test, load_labelled_split
from components.deploy.client import predict
from components.deploy.release import CanaryPolicy, release
from components.deploy.supervisor import process_alive
from components.deploy.targets.base import DeploymentError
from components.deploy.targets.local import LocalTarget

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "pets"
# Small windows keep the tests quick; the rules are the production defaults.
POLICY = CanaryPolicy(steps=(10, 50), requests_per_step=40, max_p95_ms=2000)


def _constant_model(good: bytes, version_tag: str) -> bytes:
    """A deliberately bad candidate: a valid package model that always answers class 0, with
    the good model's metadata (classes, input size, normalisation)."""
    src = onnx.load_from_string(good)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["mean"], ["flat"], axis=1),
        helper.make_node("Mul", ["flat", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "always_first"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes, "constant", [src.graph.input[0]],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
                     helper.make_tensor("always_first", TensorProto.FLOAT, [1, 2], [1.0, 0.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = src.ir_version
    for prop in src.metadata_props:
        entry = model.metadata_props.add()
        entry.key, entry.value = prop.key, (version_tag if prop.key == "model_version"
                                            else prop.value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _package_files(package_dir) -> dict[str, bytes]:
    return {p.relative_to(package_dir).as_posix(): p.read_bytes()
            for p in package_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def setup(package_dir, dataset_dirs, tmp_path_factory):
    """A registry with a good version (1), a bad one (2) and a copy of the good one (3)."""
    base = tmp_path_factory.mktemp("release")
    registry = ModelRegistry(str(base / "registry"))
    files = _package_files(package_dir)
    registry.register(MODEL, files, {"dataset_version": "test"})
    bad = dict(files, **{"model.onnx": _constant_model(files["model.onnx"], "constant")})
    registry.register(MODEL, bad, {"dataset_version": "test"})
    registry.register(MODEL, files, {"dataset_version": "test"})
    images, labels = load_labelled_split(dataset_dirs[1])
    target = LocalTarget(registry.uri, MODEL, base / "deployments")
    yield registry, target, images, labels
    target.delete_all()


def _offline_accuracy(package_dir, images, labels) -> float:
    """The package's accuracy computed in-process with ONNX Runtime (no HTTP)."""
    import asyncio

    from components.serve.predictor import PetClassifier, _Batch

    model = PetClassifier("offline", str(package_dir))
    model.load()
    x = model._images_to_batch(images)
    batch = asyncio.run(model.predict(_Batch(x=x, protocol="v1", request_id="offline",
                                             started=0.0)))
    predicted = [model.classes[i] for i in batch.probs.argmax(axis=1)]
    return sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)


def test_application_test_matches_offline_accuracy_and_enforces_its_rules(setup, package_dir):
    registry, target, images, labels = setup
    offline = _offline_accuracy(package_dir, images, labels)
    dep = target.deploy("test", 1)
    try:
        assert dep.name == f"{MODEL}-test" and dep.stable.version == 1
        report = application_test(dep.url, dep.name, images, labels, offline, len(images))
        assert report["passed"], report["reasons"]
        assert report["images"] == len(images) == report["load"]["requests"]
        assert report["live_accuracy"] == pytest.approx(offline, abs=1e-9)
        assert report["load"]["errors"] == 0 and report["load"]["p95_ms"] > 0

        # An offline figure the endpoint does not reproduce, and an SLO it cannot meet.
        failing = application_test(dep.url, dep.name, images[:20], labels[:20], 0.2,
                                   len(images), AppTestConfig(p95_slo_ms=0.001))
        assert not failing["passed"]
        assert any("live accuracy" in r for r in failing["reasons"])
        assert any("p95 latency" in r for r in failing["reasons"])
    finally:
        target.delete("test")
    assert target.status("test") is None
    assert not process_alive(dep.stable.detail["pid"], dep.stable.detail["port"])


def test_application_test_counts_failed_requests_as_errors(setup):
    registry, target, images, labels = setup
    dep = target.deploy("test", 1)
    try:
        broken = [b"not an image"] + list(images[:9])
        report = application_test(dep.url, dep.name, broken, labels[:10], 1.0, 10,
                                  AppTestConfig(accuracy_tolerance=1.0))
    finally:
        target.delete("test")
    assert not report["passed"]
    assert report["load"]["errors"] == 1
    assert "HTTP 400" in report["errors"][0][1]
    assert any("error rate" in r for r in report["reasons"])


def test_release_waits_for_approval_then_deploys_first_version(setup):
    registry, target, images, labels = setup
    held = CanaryPolicy(steps=(10, 50), requests_per_step=20, max_p95_ms=2000,
                        require_approval=True, approval_timeout_s=0)
    with pytest.raises(DeploymentError, match=f"mlops registry approve {MODEL} 1"):
        release(target, 1, images, labels, held)
    assert target.status("production") is None
    assert "production" not in registry.aliases(MODEL)

    registry.approve(MODEL, 1, note="looked at the QA report")
    record = release(target, 1, images, labels, held)
    assert record["decision"] == "deployed" and record["approval"]["note"]
    assert registry.aliases(MODEL)["production"] == 1
    dep = target.status("production")
    assert dep.stable.version == 1 and dep.name == MODEL
    assert predict(dep.url, dep.name, images[:2])[0]["label"] in ("cats", "dogs")


def _hammer(url: str, images, stop: threading.Event, seen: list, errors: list) -> None:
    """An application calling production during the release."""
    import requests

    from components.deploy.client import v1_body

    session = requests.Session()
    i = 0
    while not stop.is_set():
        try:
            r = session.post(f"{url}/v1/models/{MODEL}:predict",
                             json=v1_body([images[i % len(images)]]), timeout=10)
            if r.status_code == 200:
                seen.append(r.json()["model_version"])
            else:
                errors.append(r.status_code)
        except Exception as exc:  # noqa: BLE001 - any failure is what the test looks for
            errors.append(repr(exc))
        i += 1
        time.sleep(0.01)


def test_bad_candidate_is_rolled_back_while_production_keeps_serving(setup):
    registry, target, images, labels = setup
    if target.status("production") is None:
        release(target, 1, images, labels, POLICY)
    prod = target.status("production")
    good_version_tag = _served_version(prod.url, images)
    stop, seen, errors = threading.Event(), [], []
    caller = threading.Thread(target=_hammer, args=(prod.url, images, stop, seen, errors))
    caller.start()
    try:
        record = release(target, 2, images, labels, POLICY)
    finally:
        stop.set()
        caller.join()
    assert record["decision"] == "rolled_back"
    assert any("accuracy" in r for r in record["reasons"]), record["reasons"]
    assert record["steps"][0]["percent"] == 10 and not record["steps"][0]["passed"]
    assert len(record["steps"]) == 1  # rolled back at the first failed step
    # Production answered every call: through the router, the old model, or during the 10%
    # step the bad canary for its share; after the rollback the old model only.
    assert errors == [] and len(seen) > 10
    assert set(seen) <= {good_version_tag, "constant"}
    assert {_served_version(prod.url, images) for _ in range(10)} == {good_version_tag}
    after = target.status("production")
    assert after.stable.version == 1 and after.canary is None
    assert after.url == prod.url
    assert registry.aliases(MODEL)["production"] == 1
    assert registry.releases(MODEL)[-1]["decision"] == "rolled_back"


def test_good_candidate_is_promoted_and_moves_the_production_alias(setup):
    registry, target, images, labels = setup
    if target.status("production") is None:
        release(target, 1, images, labels, POLICY)
    old = target.status("production")
    record = release(target, 3, images, labels, POLICY, reason="test")
    assert record["decision"] == "promoted", record["reasons"]
    assert [s["percent"] for s in record["steps"]] == [10, 50]
    assert all(s["passed"] and s["canary"]["errors"] == 0 for s in record["steps"])
    assert all(s["canary"]["accuracy"] == s["stable"]["accuracy"] for s in record["steps"])
    for s in record["steps"]:  # what each revision served, read from its /metrics
        for role in ("canary", "stable"):
            served = s[role]["served"]
            assert served["available"] and served["errors"] == 0, served
            assert served["requests"] >= POLICY.requests_per_step
    new = target.status("production")
    assert new.stable.version == 3 and new.canary is None
    assert predict(new.url, new.name, images[:1])
    assert not process_alive(old.stable.detail["pid"], old.stable.detail["port"])
    assert registry.aliases(MODEL)["production"] == 3
    last = registry.alias_history(MODEL, "production")[-1]
    assert last["previous"] == old.stable.version and "promoted" in last["reason"]
    # Releasing the version already in production changes nothing.
    assert release(target, 3, images, labels, POLICY)["decision"] == "unchanged"


def test_a_canary_that_cannot_start_is_rolled_back(setup, package_dir):
    registry, target, images, labels = setup
    if target.status("production") is None:
        release(target, 1, images, labels, POLICY)
    before = target.status("production")
    files = _package_files(package_dir)
    files["model.onnx"] = b"this is not an onnx model"
    broken = registry.register(MODEL, files, {"dataset_version": "test"}).version
    record = release(target, broken, images, labels, POLICY)
    assert record["decision"] == "rolled_back"
    assert "did not start" in record["reasons"][0]
    after = target.status("production")
    assert after.stable.version == before.stable.version and after.canary is None
    assert predict(after.url, after.name, images[:1])


def _batch_of_one_model(good: bytes) -> bytes:
    """A packaging bug the probes cannot see: the same model with its batch axis fixed to 1,
    so that any request with two images fails inside ONNX Runtime (HTTP 500)."""
    model = onnx.load_from_string(good)
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    return model.SerializeToString()


def test_canary_failing_real_traffic_is_rolled_back_though_probes_pass(setup, package_dir):
    """Users' requests reach the canary through the environment's endpoint (the local router
    sends it its share, as Knative does in a cluster): a client sends two-image requests to
    production during the step. The canary answers every one-image probe correctly but fails
    every user request routed to it; its metrics show it, and the release rolls it back."""
    import requests

    from components.deploy.client import v1_body

    registry, target, images, labels = setup
    if target.status("production") is None:
        release(target, 1, images, labels, POLICY)
    before = target.status("production")
    files = _package_files(package_dir)
    files["model.onnx"] = _batch_of_one_model(files["model.onnx"])
    candidate = registry.register(MODEL, files, {"dataset_version": "test"}).version
    stop, statuses = threading.Event(), []

    def users() -> None:
        session = requests.Session()
        while not stop.is_set():
            dep = target.status("production")
            if dep is None or dep.canary is None or dep.canary.version != candidate:
                time.sleep(0.05)
                continue
            try:
                r = session.post(f"{dep.url}/v1/models/{MODEL}:predict",
                                 json=v1_body(images[:2]), timeout=10)
                statuses.append(r.status_code)
            except requests.RequestException:
                time.sleep(0.05)  # the canary was stopped by the rollback

    caller = threading.Thread(target=users)
    caller.start()
    try:
        policy = CanaryPolicy(steps=(10, 50), requests_per_step=40, max_p95_ms=2000,
                              bake_seconds=2.0)
        record = release(target, candidate, images, labels, policy)
    finally:
        stop.set()
        caller.join()
    assert 500 in statuses
    step = record["steps"][0]
    assert step["canary"]["errors"] == 0  # every probe passed ...
    assert step["canary"]["accuracy"] == step["stable"]["accuracy"]
    served = step["canary"]["served"]  # ... but not what users sent
    assert served["available"] and served["errors"] >= 1
    assert served["requests"] >= served["errors"] + 40  # the probes are counted too
    assert step["stable"]["served"]["errors"] == 0
    assert step["live_traffic"]["canary"] >= 1  # the router's count of what users sent it
    assert record["decision"] == "rolled_back"
    assert any("server error rate" in r for r in record["reasons"]), record["reasons"]
    after = target.status("production")
    assert after.stable.version == before.stable.version and after.canary is None
    assert registry.aliases(MODEL)["production"] == before.stable.version


def _served_version(url: str, images) -> str:
    """The package's model version as the server reports it with each answer."""
    import requests

    from components.deploy.client import v1_body

    r = requests.post(f"{url}/v1/models/{MODEL}:predict", json=v1_body(images[:1]), timeout=10)
    return r.json()["model_version"]


def test_cli_shows_deployments_classifies_files_and_releases(setup, dataset_dirs, package_dir,
                                                             tmp_path):
    import os
    import subprocess
    import sys

    registry, target, images, labels = setup
    if target.status("production") is None:
        release(target, 1, images, labels, POLICY)
    frame = tmp_path / "frame.jpg"
    frame.write_bytes(images[0])
    common = ["--registry", registry.uri, "--serving-root", str(target.state_dir),
              "--model", MODEL]

    def mlops(*args):
        return subprocess.run([sys.executable, "-m", "components.cli", *args],
                              capture_output=True, text=True, env=dict(os.environ), timeout=120)

    status = mlops("deploy", *common, "status")
    assert status.returncode == 0, status.stderr
    prod = target.status("production")
    assert f"production: version {prod.stable.version} at {prod.url}" in status.stdout
    answer = mlops("deploy", *common, "predict", str(frame))
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split("\t")[1] in ("cats", "dogs")
    # The camera's mode goes with the frame; one the deployment does not declare is the
    # option's mistake, and a file that is no image is named while the others are answered.
    night = mlops("deploy", *common, "predict", "--context", "night", str(frame))
    assert night.returncode == 0 and night.stdout.split("\t")[1] in ("cats", "dogs")
    dusk = mlops("deploy", *common, "predict", "--context", "dusk", str(frame))
    assert dusk.returncode == 2 and "--context 'dusk'" in dusk.stderr
    assert "day, night" in dusk.stderr and "Traceback" not in dusk.stderr
    (tmp_path / "notes.txt").write_text("hi")
    mixed = mlops("deploy", *common, "predict", str(tmp_path / "notes.txt"), str(frame))
    assert mixed.returncode == 2 and mixed.stdout.startswith(str(frame)), mixed.stdout
    assert f"error: {tmp_path / 'notes.txt'} was refused (400): " in mixed.stderr
    assert "not a usable image" in mixed.stderr and "{" not in mixed.stderr
    missing = mlops("deploy", *common, "predict", "--env", "test", str(frame))
    assert missing.returncode == 2 and "Nothing is deployed in 'test'" in missing.stderr
    releases = mlops("registry", "--registry", registry.uri, "releases", MODEL)
    assert releases.returncode == 0 and "-> production: deployed" in releases.stdout

    # A release from the command line: held until a person approves, then a canary.
    split = str(Path(dataset_dirs[1]))
    files = _package_files(package_dir)
    candidate = registry.register(MODEL, files, {"dataset_version": "test"}).version
    release_args = ("deploy", *common, "release", str(candidate), "--probes", split,
                    "--require-approval", "--requests-per-step", "20", "--max-p95-ms", "2000")
    held = mlops(*release_args)
    assert held.returncode == 1
    assert f"mlops registry approve {MODEL} {candidate}" in held.stderr
    assert "Traceback" not in held.stderr
    approved = mlops("registry", "--registry", registry.uri, "approve", MODEL, str(candidate))
    assert approved.returncode == 0 and "approved by" in approved.stdout
    done = mlops(*release_args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PROMOTED" in done.stdout and "| 10% |" in done.stdout
    assert registry.aliases(MODEL)["production"] == candidate


def test_release_restores_production_from_the_registry_when_nothing_serves_it(setup):
    """After the servers were stopped (a restart), the canary is still compared with the
    version the registry says is in production, not deployed as if it were the first."""
    registry, target, images, labels = setup
    if target.status("production") is None:
        release(target, 1, images, labels, POLICY)
    in_production = registry.aliases(MODEL)["production"]
    candidate = 1 if in_production != 1 else 3
    target.delete("production")
    record = release(target, candidate, images, labels, POLICY)
    assert record["previous_version"] == in_production
    assert record["decision"] == "promoted" and len(record["steps"]) == 2
    assert all(s["stable"]["accuracy"] is not None for s in record["steps"])
    assert registry.aliases(MODEL)["production"] == candidate


def test_the_allowed_accuracy_drop_is_allowed_and_one_more_miss_is_not():
    """One miss in 50 probes is exactly the default allowed drop (0.02): the step passes;
    two misses roll back. (1.0 - 0.98 is 0.020000000000000018 in floating point.)"""
    from components.deploy.client import LoadResult
    from components.deploy.release import CanaryPolicy, judge

    labels = ["cats", "dogs"] * 25

    def answered(misses: int) -> LoadResult:
        wrong = {"cats": "dogs", "dogs": "cats"}
        preds = [[wrong[t]] if i < misses else [t] for i, t in enumerate(labels)]
        return LoadResult(latencies_ms=[2.0] * 50, predictions=preds,
                          model_versions=["1"] * 50, wall_s=0.2, images=50)

    policy = CanaryPolicy()
    assert policy.max_accuracy_drop == 0.02
    reasons, measured = judge(answered(1), answered(0), labels, policy)
    assert reasons == [] and measured["canary"]["accuracy"] == 0.98
    reasons, _ = judge(answered(2), answered(0), labels, policy)
    assert len(reasons) == 1 and "below stable" in reasons[0]
