"""KServeTarget against a stand-in for the Kubernetes API with KServe and Knative behind it.

The stand-in (``kube_standin.py``) is an HTTP server on 127.0.0.1 that the real
``kubernetes`` client talks to. It validates InferenceServices against KServe 0.20's CRD
schema where the CRD file is here (``$MLOPS_KSERVE_CRD``, ``shared/kserve/``), else against
the schema built from the ``kserve`` package's models, applies merge and JSON patches, creates a Knative revision whenever the revision
template changes and routes traffic as KServe's ksvc reconciler and Knative's route do (each
rule cites the controller code it models). What is asserted is what a release does to traffic.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from components.common import k8s
from components.common.registry import ModelRegistry
from components.common.service import wait_until
from components.deploy import release
from components.deploy.targets.base import DeploymentError
from components.deploy.targets.kserve import KServeTarget
from components.deploy.tests.kube_standin import KubeStandIn, crd_path

NS = "pets-prod"
MODEL = "pets"
PROD = "production"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def standin(request):
    """The stand-in; a test parametrized indirectly picks its schema ("crd" or "models")."""
    source = getattr(request, "param", "auto")
    if source == "crd" and crd_path() is None:
        pytest.skip("KServe's CRD file is not here (MLOPS_KSERVE_CRD, shared/kserve/)")
    server = KubeStandIn(tick_s=0.01, schema_source=source)
    url = server.start()
    server.url = url
    cfg = k8s.ServingConfig()
    server.add_core("serviceaccounts", NS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                            "metadata": {"name": cfg.service_account,
                                                         "namespace": NS}})
    server.add_core("secrets", NS, {"apiVersion": "v1", "kind": "Secret",
                                    "metadata": {"name": cfg.s3_secret, "namespace": NS}})
    yield server
    server.stop()


def _client(url: str):
    import kubernetes

    conf = kubernetes.client.Configuration()
    conf.host = url
    return kubernetes.client.ApiClient(conf)


@pytest.fixture
def registry(s3_uri):
    registry = ModelRegistry(s3_uri + "/registry")
    for i in range(3):
        registry.register(MODEL, {"model.onnx": b"onnx%d" % i,
                                  "metadata.json": json.dumps({"model_version": f"m{i + 1}"})
                                  .encode()}, {"dataset_version": "d"})
    return registry


@pytest.fixture
def target(standin, registry):
    return KServeTarget(registry.uri, MODEL, NS, api_client=_client(standin.url),
                        poll_s=0.02, timeout_s=10)


def _revision_of(standin: KubeStandIn, version: int) -> list[str]:
    return [r for r in standin.revisions(NS)
            if standin.objects[("revisions", NS, r)]["metadata"]["labels"].get(
                k8s.REGISTRY_VERSION_LABEL) == str(version)]


def test_deploy_creates_a_schema_valid_serverless_inference_service(target, standin):
    dep = target.deploy("test", 1)
    obj = standin.objects[("inferenceservices", NS, "pets-test")]
    ann = obj["metadata"]["annotations"]
    assert ann["serving.kserve.io/deploymentMode"] == "Serverless"
    assert obj["status"]["deploymentMode"] == "Knative"
    env = obj["spec"]["predictor"]["containers"][0]["env"]
    assert {"name": "STORAGE_URI", "value": target.registry.version_uri(MODEL, 1)} in env
    assert obj["spec"]["predictor"]["maxReplicas"] == k8s.ENVIRONMENTS["test"]["max_replicas"]
    assert dep.stable.version == 1 and dep.canary is None
    assert dep.stable.detail["model_version"] == "m1"
    assert dep.url == f"http://pets-test.{NS}.svc.cluster.local"
    # No release state in annotations (KServe copies them into every revision): they record
    # the configuration, the same for every version released with it.
    assert k8s.serving_config_from_record(ann[k8s.SERVING_CONFIG_ANNOTATION],
                                          k8s.ServingConfig()) == k8s.ServingConfig()
    assert target._object("test", 2, k8s.ServingConfig())["metadata"]["annotations"] == ann


def test_canary_waits_for_its_revision_and_promote_creates_no_revision(target, standin):
    target.deploy(PROD, 1)
    standin.behave(2, 0.4)  # the canary's pods take a while to start
    dep = target.start_canary(PROD, 2, 10)
    # The wait returned only once the canary revision was ready and routed: both tagged URLs
    # now reach different revisions, each serving the version it says.
    rev1, rev2 = _revision_of(standin, 1)[0], _revision_of(standin, 2)[0]
    assert standin.routed(NS, "pets") == {rev2: 10, rev1: 90}
    assert (dep.stable.version, dep.canary.version, dep.canary_percent) == (1, 2, 10)
    assert dep.stable.detail["revision"] == rev1 and dep.canary.detail["revision"] == rev2
    assert target.revision_urls(PROD) == {
        "stable": f"http://prev-pets-predictor.{NS}.svc.cluster.local",
        "canary": f"http://latest-pets-predictor.{NS}.svc.cluster.local"}

    assert target.set_canary_traffic(PROD, 50).canary_percent == 50
    assert standin.routed(NS, "pets") == {rev2: 50, rev1: 50}
    revisions_before = standin.revisions(NS)
    dep = target.promote(PROD)
    assert standin.revisions(NS) == revisions_before, "promote started new pods"
    assert standin.routed(NS, "pets") == {rev2: 100}
    assert dep.stable.version == 2 and dep.stable.detail["revision"] == rev2
    assert dep.canary is None
    comp = standin.objects[("inferenceservices", NS, "pets")]["status"]["components"][
        "predictor"]
    assert comp["latestRolledoutRevision"] == rev2


def test_rollback_never_gives_the_rejected_version_more_traffic_than_it_had(target, standin):
    target.deploy(PROD, 1)
    target.start_canary(PROD, 2, 10)
    rev1, rev2 = _revision_of(standin, 1)[0], _revision_of(standin, 2)[0]
    rejected = standin.mark()
    dep = target.rollback(PROD)
    assert standin.max_traffic("pets", rev2) == 10  # what it had as the canary
    assert standin.max_traffic("pets", rev2, after=rejected) == 0
    assert standin.max_traffic("pets", rev1, after=rejected) == 100  # at once
    # The rejected template is replaced by a fresh revision of version 1, which took the
    # traffic once ready: the rejected revision is in no route and has no pods.
    (fresh,) = set(_revision_of(standin, 1)) - {rev1}
    assert standin.routed(NS, "pets") == {fresh: 100}
    assert _revision_of(standin, 2) == [rev2]  # nothing of version 2 started again
    assert standin.routing_state(NS, rev2) == "reserve" and standin.pods(NS, rev2) == 0
    assert dep.stable.version == 1 and dep.stable.detail["revision"] == fresh
    assert dep.canary is None and "held_revision" not in dep.stable.detail
    # The next release starts from the stable revision, not from the rejected one.
    dep = target.start_canary(PROD, 3, 10)
    assert dep.stable.detail["revision"] == fresh and dep.canary.version == 3
    assert standin.max_traffic("pets", rev2, after=rejected) == 0


def test_a_canary_that_never_becomes_ready_is_rolled_back_not_passed(target, standin, registry):
    target.deploy(PROD, 1)
    registry.set_alias(MODEL, "production", 1)
    standin.behave(2, None)  # e.g. the image does not pull, or the model does not load
    target.timeout_s = 3
    started = time.monotonic()
    record = release.release(target, 2, [b"not sent"], ["cats"],
                             release.CanaryPolicy(steps=(10, 50), requests_per_step=1))
    assert record["decision"] == "rolled_back"
    assert "did not start" in record["reasons"][0] and "ready canary revision" in \
        record["reasons"][0]
    assert record["steps"] == []  # no probe ever reached a canary that was not there
    rev2 = _revision_of(standin, 2)[0]
    assert standin.max_traffic("pets", rev2, since=started) == 0
    assert standin.routed(NS, "pets") == {_revision_of(standin, 1)[-1]: 100}
    assert standin.routing_state(NS, rev2) == "reserve" and standin.pods(NS, rev2) == 0
    assert registry.aliases(MODEL)["production"] == 1
    assert target.status(PROD).stable.version == 1


def test_the_stand_in_routes_like_knative_the_old_rollback_went_to_the_canary(target, standin):
    """Why rollback is canaryTrafficPercent 0: redeploying the old package at 100% makes a new
    revision, and until it is ready "latest" means the latest *ready* one, the canary."""
    target.deploy(PROD, 1)
    target.start_canary(PROD, 2, 10)
    rev2 = _revision_of(standin, 2)[0]
    standin.behave(1, 0.5)
    current = standin.objects[("inferenceservices", NS, "pets")]
    old_style = k8s.template_patch(current, target._object(PROD, 1, k8s.ServingConfig()), 100)
    requests.patch(f"{standin.url}/apis/serving.kserve.io/v1beta1/namespaces/{NS}/"
                   "inferenceservices/pets", json=old_style,
                   headers={"Content-Type": "application/merge-patch+json"},
                   timeout=5).raise_for_status()
    deadline = time.monotonic() + 5
    while standin.max_traffic("pets", rev2) < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert standin.max_traffic("pets", rev2) == 100


def test_any_annotation_change_makes_a_revision_in_the_stand_in(target, standin):
    """KServe copies InferenceService annotations into the revision template: why the release
    keeps its bookkeeping out of them."""
    target.deploy(PROD, 1)
    before = standin.revisions(NS)
    requests.patch(f"{standin.url}/apis/serving.kserve.io/v1beta1/namespaces/{NS}/"
                   "inferenceservices/pets",
                   json=[{"op": "add", "path": "/metadata/annotations/example.com~1note",
                          "value": "promoted"}],
                   headers={"Content-Type": "application/json-patch+json"},
                   timeout=5).raise_for_status()
    deadline = time.monotonic() + 5
    while standin.revisions(NS) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(standin.revisions(NS)) == len(before) + 1


@pytest.mark.parametrize("standin", ["crd", "models"], indirect=True)
def test_the_api_server_validates_against_the_kserve_schema(target, standin):
    base = f"{standin.url}/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
    obj = target._object(PROD, 1, k8s.ServingConfig())
    wrong_type = json.loads(json.dumps(obj))
    wrong_type["spec"]["predictor"]["minReplicas"] = "two"
    r = requests.post(base, json=wrong_type, timeout=5)
    assert r.status_code == 422 and "minReplicas" in r.json()["message"]
    nested = json.loads(json.dumps(obj))
    nested["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    r = requests.post(base, json=nested, timeout=5)
    assert r.status_code == 422 and "containers[0].ports[0].containerPort" in \
        r.json()["message"]
    nameless = json.loads(json.dumps(obj))
    del nameless["spec"]["predictor"]["containers"][0]["name"]
    r = requests.post(base, json=nameless, timeout=5)
    assert r.status_code == 422 and "containers[0].name: Required value" in r.json()["message"]
    assert not [k for k in standin.objects if k[0] == "inferenceservices"]
    unknown = json.loads(json.dumps(obj))
    unknown["spec"]["predictor"]["canaryTrafficPercentage"] = 10
    r = requests.post(base + "?fieldValidation=Strict", json=unknown, timeout=5)
    assert r.status_code == 400 and "canaryTrafficPercentage" in r.json()["message"]
    r = requests.post(base, json=unknown, timeout=5)  # default: pruned, as the server does
    assert r.status_code == 201 and "canaryTrafficPercentage" not in \
        r.json()["spec"]["predictor"]
    r = requests.patch(f"{base}/pets", json={"spec": {}}, timeout=5,
                       headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert r.status_code == 415
    # Through the target, a rejected change is a DeploymentError naming the field.
    with pytest.raises(DeploymentError, match="HTTP 422.*canaryTrafficPercent"):
        target._patch(PROD, {"spec": {"predictor": {"canaryTrafficPercent": "ten"}}})


def test_a_missing_service_account_or_secret_fails_before_anything_is_created(standin,
                                                                             registry):
    del standin.objects[("secrets", NS, k8s.ServingConfig().s3_secret)]
    target = KServeTarget(registry.uri, MODEL, NS, api_client=_client(standin.url), poll_s=0.02)
    with pytest.raises(DeploymentError, match="S3 Secret 'pet-classifier-s3' does not exist in "
                                              f"namespace '{NS}'.*manifests/overlays"):
        target.deploy(PROD, 1)
    assert not [k for k in standin.objects if k[0] == "inferenceservices"]


def test_an_inference_service_in_raw_mode_is_refused(target, standin):
    obj = target._object(PROD, 1, k8s.ServingConfig())
    del obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    requests.post(f"{standin.url}/apis/serving.kserve.io/v1beta1/namespaces/{NS}/"
                  "inferenceservices", json=obj, timeout=5).raise_for_status()
    time.sleep(0.1)
    with pytest.raises(DeploymentError, match="Standard mode"):
        target.status(PROD)


def test_kserve_target_needs_an_s3_registry_and_a_canary_to_promote(target, tmp_path, standin):
    with pytest.raises(DeploymentError, match="s3://"):
        KServeTarget(str(tmp_path / "registry"), MODEL, NS, api_client=_client(standin.url))
    with pytest.raises(DeploymentError, match="Nothing is deployed"):
        target.start_canary(PROD, 2, 10)
    target.deploy(PROD, 1)
    with pytest.raises(DeploymentError, match="No canary"):
        target.promote(PROD)
    with pytest.raises(DeploymentError, match="Invalid canary traffic percent 100"):
        target.start_canary(PROD, 2, 100)
    with pytest.raises(DeploymentError, match="Unknown environment 'staging'"):
        target.deploy("staging", 1)


def test_a_step_whose_probes_reached_the_wrong_model_fails(target, standin):
    """Each answer names its model; a canary URL answered by the stable model is not a pass."""
    from components.deploy.client import LoadResult

    target.deploy(PROD, 1)
    dep = target.start_canary(PROD, 2, 10)
    assert (dep.stable.detail["model_version"], dep.canary.detail["model_version"]) == \
        ("m1", "m2")
    right = {"canary": LoadResult(model_versions=["m2"] * 4, predictions=[["cats"]] * 4),
             "stable": LoadResult(model_versions=["m1"] * 4, predictions=[["cats"]] * 4)}
    assert release.misrouted(right, dep) == []
    wrong = {"canary": LoadResult(model_versions=["m1", "m2", "m1", "m2"],
                                  predictions=[["cats"]] * 4), "stable": right["stable"]}
    (reason,) = release.misrouted(wrong, dep)
    assert "2 of 4 canary probes were answered by model 'm1'" in reason


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_release_through_real_model_servers_behind_the_stand_in(standin, s3_uri, package_dir,
                                                                  dataset_dirs, tmp_path,
                                                                  monkeypatch):
    """The whole release on KServe semantics with real traffic: each revision is a model
    server process, tagged URLs reach their revision, the endpoint splits by the route; each
    captures what it serves under its Knative revision's name, which the release's analysis
    maps to the role the InferenceService's status gives it."""
    from components.deploy.apptest import load_labelled_split
    from components.deploy.client import v1_body
    from components.monitor.window import read_window

    monkeypatch.setenv("MLOPS_CAPTURE_BATCH_SECONDS", "0.2")  # the servers inherit it
    monkeypatch.delenv("MLOPS_REVISION", raising=False)
    monitoring = s3_uri + "/monitoring"

    registry = ModelRegistry(s3_uri + "/registry")
    files = {p.name: p.read_bytes() for p in Path(package_dir).iterdir() if p.is_file()}
    for _ in range(2):
        registry.register(MODEL, files, {"dataset_version": "d"})
    downloaded: dict[str, Path] = {}

    def package_for(storage_uri: str) -> Path:
        if storage_uri not in downloaded:
            version = int(storage_uri.rstrip("/").rsplit("/", 1)[1])
            downloaded[storage_uri] = registry.download(MODEL, version,
                                                        tmp_path / f"pkg{version}")
        return downloaded[storage_uri]

    standin.enable_data_plane(package_for, tmp_path / "logs")
    target = KServeTarget(registry.uri, MODEL, NS, api_client=_client(standin.url),
                          config=k8s.ServingConfig(capture_uri=monitoring),
                          cluster_local=False, poll_s=0.05, timeout_s=120)
    images, labels = load_labelled_split(dataset_dirs[1], max_images=40)
    start = time.time() - 1
    first = release.release(target, 1, images, labels,
                            release.CanaryPolicy(requests_per_step=20, max_p95_ms=2000))
    assert first["decision"] == "deployed"

    dep = target.start_canary(PROD, 2, 30)
    hits = {}
    for _ in range(200):
        r = requests.post(f"{dep.url}/v1/models/{MODEL}:predict", json=v1_body([images[0]]),
                          timeout=30)
        assert r.status_code == 200
        hits[r.headers["X-Standin-Revision"]] = hits.get(r.headers["X-Standin-Revision"], 0) + 1
    rev1, rev2 = dep.stable.detail["revision"], dep.canary.detail["revision"]
    assert set(hits) == {rev1, rev2} and 30 <= hits[rev2] <= 90  # 30% of 200, give or take
    target.rollback(PROD)

    second = release.release(target, 2, images, labels,
                             release.CanaryPolicy(steps=(10, 50), requests_per_step=20,
                                                  max_p95_ms=2000, latency_slack_ms=500))
    assert second["decision"] == "promoted", second["reasons"]
    for step in second["steps"]:
        assert step["canary"]["errors"] == 0 and step["canary"]["accuracy"] is not None
        assert step["canary"]["served"]["available"]  # /metrics read through the tag URL
    # Each step's probes (20 to each revision), captured under the Knative revision that
    # served them (K_REVISION) and told apart with the roles the step recorded, although
    # the canary's revision is the stable one now.
    for step in second["steps"]:
        assert set(step["revisions"].values()) == {"stable", "canary"}

        def counted(step=step):
            got = target.captured_traffic(PROD, *step["window"], roles=step["revisions"])
            return got if got == {"stable": 20, "canary": 20} else None
        assert wait_until(counted, 10, 0.1), target.captured_traffic(
            PROD, *step["window"], roles=step["revisions"])
    records = read_window(monitoring, MODEL, start, time.time() + 1, with_labels=False).records
    by_revision = {(r["knative_revision"], str(r["model_version"])) for r in records}
    assert {v for _, v in by_revision} == {"1", "2"}
    assert all(r["revision"] == "" for r in records)  # no pod claims a role
    dep = target.status(PROD)
    assert dep.stable.version == 2 and dep.canary is None
    assert registry.aliases(MODEL)["production"] == 2
