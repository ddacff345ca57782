"""KServeTarget against an in-memory stand-in for the Kubernetes API.

There is no cluster here. The stand-in implements the three KServeClient calls the target
makes (get, wait_isvc_ready, delete) and the CustomObjectsApi create / JSON merge patch, and
fills in the status the KServe controller would (URL, tagged traffic). What is tested is the
target: the objects it applies, in what order, and how it reads the state back.
"""

from __future__ import annotations

import copy

import pytest

from components.common import k8s
from components.common.registry import ModelRegistry
from components.deploy.targets import CANARY_VERSION, STABLE_VERSION, DeploymentError, KServeTarget

NS = "pets-prod"


def _merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch, as the API server applies it to custom objects."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class _CustomObjects:
    def __init__(self, store: dict, applied: list):
        self.store, self.applied = store, applied

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        key = (namespace, body["metadata"]["name"])
        assert key not in self.store, "create of an existing object"
        self.store[key] = copy.deepcopy(body)
        self.applied.append(("create", copy.deepcopy(body)))
        return body

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self.applied.append(("patch", copy.deepcopy(body)))
        return _merge(self.store[(namespace, name)], body)


class FakeKServe:
    def __init__(self):
        self.store: dict = {}
        self.applied: list = []
        self.api_instance = _CustomObjects(self.store, self.applied)

    def get(self, name, namespace=None):
        if (namespace, name) not in self.store:
            raise RuntimeError("Exception when calling CustomObjectsApi->get_namespaced_custom"
                               "_object: (404)\nReason: Not Found")
        return copy.deepcopy(self.store[(namespace, name)])

    def wait_isvc_ready(self, name, namespace=None, timeout_seconds=600, polling_interval=10):
        obj = self.store[(namespace, name)]
        pct = obj["spec"]["predictor"].get("canaryTrafficPercent", 100)
        host = f"{name}-predictor.{namespace}.example.com"
        traffic = [{"tag": "latest", "percent": pct, "url": f"http://latest-{host}"}]
        if pct != 100:
            traffic.append({"tag": "prev", "percent": 100 - pct, "url": f"http://prev-{host}"})
        obj["status"] = {"url": f"http://{host}",
                         "address": {"url": f"http://{name}.{namespace}.svc.cluster.local"},
                         "components": {"predictor": {"traffic": traffic}}}

    def delete(self, name, namespace=None):
        del self.store[(namespace, name)]


@pytest.fixture
def target(s3_uri):
    registry = ModelRegistry(s3_uri + "/registry")
    for _ in range(3):
        registry.register("pets", {"model.onnx": b"onnx"}, {"dataset_version": "d"})
    return KServeTarget(registry.uri, "pets", NS, client=FakeKServe())


def _storage_uri(obj: dict) -> str:
    env = obj["spec"]["predictor"]["containers"][0]["env"]
    return next(e["value"] for e in env if e["name"] == "STORAGE_URI")


def test_deploy_creates_a_valid_inference_service_for_the_environment(target):
    dep = target.deploy("test", 1)
    kind, obj = target.client.applied[-1]
    assert kind == "create"
    k8s.validate_object(obj)
    assert obj["metadata"]["name"] == "pets-test" and obj["metadata"]["namespace"] == NS
    assert _storage_uri(obj) == target.registry.version_uri("pets", 1)
    assert _storage_uri(obj).startswith("s3://")
    assert obj["spec"]["predictor"]["maxReplicas"] == k8s.ENVIRONMENTS["test"]["max_replicas"]
    assert dep.stable.version == 1 and dep.canary is None
    assert dep.url == f"http://pets-test.{NS}.svc.cluster.local"


def test_canary_promote_and_rollback_apply_the_right_objects(target):
    target.deploy("production", 1)
    dep = target.start_canary("production", 2, 10)
    _, canary = target.client.applied[-1]
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert _storage_uri(canary) == target.registry.version_uri("pets", 2)
    assert canary["metadata"]["annotations"][STABLE_VERSION] == "1"
    assert dep.stable.version == 1 and dep.canary.version == 2 and dep.canary_percent == 10
    # Probed from inside the cluster: the tag routes' cluster-local Services.
    assert target.revision_urls("production") == {
        "stable": f"http://prev-pets-predictor.{NS}.svc.cluster.local",
        "canary": f"http://latest-pets-predictor.{NS}.svc.cluster.local"}
    target.cluster_local = False
    assert target.revision_urls("production")["canary"] == \
        f"http://latest-pets-predictor.{NS}.example.com"
    target.cluster_local = True

    with pytest.raises(DeploymentError, match="already running"):
        target.start_canary("production", 3, 10)
    assert target.set_canary_traffic("production", 50).canary_percent == 50

    dep = target.promote("production")
    _, promoted = target.client.applied[-1]
    assert promoted["spec"]["predictor"]["canaryTrafficPercent"] == 100
    stored = target.client.store[(NS, "pets")]
    assert CANARY_VERSION not in stored["metadata"]["annotations"]  # merge patch removed it
    assert dep.stable.version == 2 and dep.canary is None

    target.start_canary("production", 3, 10)
    dep = target.rollback("production")
    _, rolled = target.client.applied[-1]
    assert _storage_uri(rolled) == target.registry.version_uri("pets", 2)
    assert rolled["spec"]["predictor"]["canaryTrafficPercent"] == 100
    assert dep.stable.version == 2 and dep.canary is None
    for _kind, obj in target.client.applied:
        if "kind" in obj:
            k8s.validate_object(copy.deepcopy(obj))


def test_kserve_target_needs_an_s3_registry_and_a_canary_to_promote(target, tmp_path):
    with pytest.raises(DeploymentError, match="s3://"):
        KServeTarget(str(tmp_path / "registry"), "pets", NS, client=FakeKServe())
    with pytest.raises(DeploymentError, match="Nothing is deployed"):
        target.start_canary("production", 2, 10)
    target.deploy("production", 1)
    with pytest.raises(DeploymentError, match="No canary"):
        target.promote("production")
    with pytest.raises(DeploymentError, match="Invalid canary traffic percent 100"):
        target.start_canary("production", 2, 100)
    with pytest.raises(DeploymentError, match="Unknown environment 'staging'"):
        target.deploy("staging", 1)
