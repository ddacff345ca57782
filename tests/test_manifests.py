"""Kubernetes objects: one source for manifests/ and the deploy step; every overlay built
(a pure-Python kustomize of the subset used) and validated — core objects with
kubernetes-validate's Kubernetes schemas, InferenceServices with KServe 0.20's schema — and no
secret values in the repository.

The InferenceService schema is KServe 0.20's CRD where its file is on this machine
(``$MLOPS_KSERVE_CRD``, or ``shared/kserve/`` beside the checkout; the repository keeps no
copy) and, always, the one built from the ``kserve`` package's generated models
(components/deploy/tests/kserve_schema.py): the schema tests run against each that is here."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.common import k8s
from components.common import trainjob as tj
from components.govern.policy import load_policy
from components.govern.rules import prometheus_rule, rule_yaml
from tests.kustomize_subset import build

REPO = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.33.0"
CORE_KINDS = {"ServiceAccount", "Secret", "Role", "RoleBinding"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(params=["crd", "models"])
def isvc_schema(request) -> dict:
    """KServe's CRD (skipped where its file is not here) and the kserve models' schema."""
    from components.deploy.tests.kube_standin import crd_path, inference_service_schema

    if request.param == "crd" and crd_path() is None:
        pytest.skip("KServe's CRD file is not here (MLOPS_KSERVE_CRD, shared/kserve/); the "
                    "schema built from the kserve package's models is checked instead")
    return inference_service_schema(request.param)[0]


def _schema_check(obj: dict, schema: dict) -> None:
    from components.deploy.tests.kube_standin import validate

    body = {k: v for k, v in obj.items() if k != "metadata"}
    _, errors, unknown = validate(body, schema)
    assert not errors and not unknown, (errors, unknown)


def _core_check(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, list[dict]]:
    """Each overlay as `kubectl kustomize` prints it, with base/s3.env filled in."""
    root = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(REPO / "manifests", root)
    (root / "base" / "s3.env").write_text("# test values\nAWS_ACCESS_KEY_ID=id\n"
                                          "AWS_SECRET_ACCESS_KEY=secret\n")
    return {mode: build(root / "overlays" / mode) for mode in k8s.INSTALL_MODES}


def test_committed_manifests_are_exactly_what_the_builders_produce():
    # As `mlops manifests` renders them: with the governance step's PrometheusRule.
    rule = rule_yaml(prometheus_rule(load_policy()))
    rendered = k8s.render_manifests(extra_base_files={"prometheus-rule.yaml": rule})
    for rel, text in rendered.items():
        path = REPO / "manifests" / rel
        assert path.is_file() and path.read_text() == text, \
            f"manifests/{rel} is stale: run `mlops manifests`"


@pytest.mark.parametrize("mode", sorted(k8s.INSTALL_MODES))
def test_every_overlay_builds_into_valid_objects_of_its_install_mode(built, mode):
    objects = built[mode]
    spec = k8s.INSTALL_MODES[mode]
    kinds = sorted(o["kind"] for o in objects)
    expected = ["Role", "Role", "RoleBinding", "RoleBinding", "Secret", "ServiceAccount"]
    if spec["istio"]:
        expected = sorted(expected + ["AuthorizationPolicy"])
    assert [k for k in kinds if k in expected] == expected
    # The release creates the InferenceServices: applying an overlay never touches them.
    assert "InferenceService" not in kinds
    for obj in objects:
        assert obj["metadata"]["namespace"] == spec["namespace"], obj["kind"]
        if obj["kind"] in CORE_KINDS:
            _core_check(obj)
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert binding["subjects"] == [{
            "kind": "ServiceAccount", "name": spec["pipeline_service_account"],
            "namespace": spec["pipeline_namespace"] or spec["namespace"]}]
    secret = next(o for o in objects if o["kind"] == "Secret")
    assert secret["metadata"]["name"] == k8s.ServingConfig().s3_secret
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == \
        "seaweedfs.kubeflow:8333"
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-usehttps"] == "0"
    assert base64.b64decode(secret["data"]["AWS_SECRET_ACCESS_KEY"]) == b"secret"
    sa = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert sa["secrets"] == [{"name": secret["metadata"]["name"]}]


def test_the_authorization_policy_admits_only_the_probe_paths_of_this_model(built):
    policy = next(o for o in built["multi-user"] if o["kind"] == "AuthorizationPolicy")
    isvc = k8s.inference_service(k8s.ServingConfig())
    selector = policy["spec"]["selector"]["matchLabels"]
    # KServe copies the InferenceService's labels onto its pods (predictor.go buildObjectMeta).
    assert selector.items() <= isvc["metadata"]["labels"].items()
    assert policy["spec"]["action"] == "ALLOW"
    (rule,) = policy["spec"]["rules"]
    assert rule["from"] == [{"source": {"namespaces": ["istio-system", "knative-serving"]}}]
    (op,) = rule["to"]
    assert sorted(op["operation"]["methods"]) == ["GET", "POST"]
    assert set(op["operation"]["paths"]) == {"/v1/models/*", "/v2/models/*", "/v2/health/*",
                                            "/metrics"}


def test_manifests_take_the_values_of_another_install(tmp_path):
    options = k8s.ManifestOptions(namespace="team-pets", s3_endpoint="https://s3.example:9000",
                                  predictor_service_account="pets-sa", s3_secret="pets-s3",
                                  pipeline_service_account="runner",
                                  pipeline_namespace="pipelines")
    for rel, text in k8s.render_manifests(options).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "base" / "s3.env").write_text("AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n")
    objects = build(tmp_path / "overlays" / "multi-user")
    assert {o["metadata"]["namespace"] for o in objects} == {"team-pets"}
    by_kind = {o["kind"]: o for o in objects if "trainer" not in o["metadata"]["name"]}
    assert by_kind["RoleBinding"]["subjects"][0] == {"kind": "ServiceAccount", "name": "runner",
                                                     "namespace": "pipelines"}
    assert by_kind["ServiceAccount"]["metadata"]["name"] == "pets-sa"
    assert by_kind["Secret"]["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == \
        "s3.example:9000"
    assert by_kind["Secret"]["metadata"]["annotations"]["serving.kserve.io/s3-usehttps"] == "1"
    role_rules = {(r["apiGroups"][0], r["resources"][0]): r for r in by_kind["Role"]["rules"]}
    assert role_rules[("", "secrets")]["resourceNames"] == ["pets-s3"]
    assert role_rules[("", "serviceaccounts")]["resourceNames"] == ["pets-sa"]
    for obj in objects:
        if obj["kind"] in CORE_KINDS:
            _core_check(obj)
    with pytest.raises(ValueError, match="Invalid S3 endpoint"):
        k8s.s3_secret_annotations("ftp://x")
    with pytest.raises(ValueError, match="Unknown install mode 'cluster'"):
        k8s.ManifestOptions().for_mode("cluster")


@pytest.mark.parametrize("env", sorted(k8s.ENVIRONMENTS))
def test_reference_inference_services_match_the_kserve_schema(env, isvc_schema):
    (isvc,) = _docs(REPO / "manifests" / "reference" / f"inferenceservice-{env}.yaml")
    _schema_check(isvc, isvc_schema)
    k8s.validate_object(isvc)
    spec = k8s.ENVIRONMENTS[env]
    assert isvc["metadata"]["name"] == "pet-classifier" + spec["suffix"]
    assert isvc["spec"]["predictor"]["minReplicas"] == spec["min_replicas"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert isvc["metadata"]["namespace"] == k8s.DEFAULT_NAMESPACE


def test_the_schema_check_catches_what_the_api_server_would_reject(isvc_schema):
    isvc = k8s.inference_service(k8s.ServingConfig())
    _schema_check(isvc, isvc_schema)
    bad = yaml.safe_load(yaml.safe_dump(isvc))
    bad["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(AssertionError, match=r"spec\.predictor\.minReplica'"):
        _schema_check(bad, isvc_schema)
    bad = yaml.safe_load(yaml.safe_dump(isvc))
    bad["spec"]["predictor"]["minReplicas"] = "1"
    with pytest.raises(AssertionError, match=r"minReplicas: Invalid value: '1'"):
        _schema_check(bad, isvc_schema)
    bad = yaml.safe_load(yaml.safe_dump(isvc))
    bad["spec"]["predictor"]["containers"][0]["resources"]["limits"]["cpu"] = "lots"
    with pytest.raises(AssertionError, match=r"limits\.cpu: Invalid value: 'lots'"):
        _schema_check(bad, isvc_schema)
    bad = yaml.safe_load(yaml.safe_dump(isvc))
    del bad["spec"]["predictor"]["containers"][0]["name"]
    with pytest.raises(AssertionError, match=r"containers\[0\]\.name: Required value"):
        _schema_check(bad, isvc_schema)


def test_predictor_runs_as_non_root_with_resources_and_the_logger():
    isvc = k8s.inference_service(k8s.ServingConfig(namespace="team-a"))
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["cpu"] == "1000m"
    assert isvc["spec"]["predictor"]["logger"] == {
        "mode": "all", "url": "http://pet-classifier-monitor.team-a.svc.cluster.local"}
    assert {"name": "STORAGE_URI", "value": k8s.ServingConfig().storage_uri} in container["env"]
    assert "logger" not in k8s.inference_service(k8s.ServingConfig(logger_url=""))["spec"][
        "predictor"]


@pytest.mark.parametrize("cpu, threads", [("500m", 1), ("1", 2), ("2", 4)])
def test_onnx_runtime_threads_follow_the_cpu_limit_not_the_node(cpu, threads):
    container = k8s.inference_service(k8s.ServingConfig(cpu=cpu))["spec"]["predictor"][
        "containers"][0]
    assert f"--ort-threads={threads}" in container["args"]


def test_release_patches_touch_traffic_or_the_package_and_nothing_else():
    old = k8s.inference_service(k8s.ServingConfig(storage_uri="s3://r/pets/versions/3"),
                                registry_version=3)
    new = k8s.inference_service(k8s.ServingConfig(storage_uri="s3://r/pets/versions/4"),
                                registry_version=4)
    patch = k8s.template_patch(old, new, 0)
    assert set(patch["spec"]["predictor"]) == {"canaryTrafficPercent", "labels", "containers"}
    assert patch["spec"]["predictor"]["labels"] == {k8s.REGISTRY_VERSION_LABEL: "4"}
    assert patch["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert "metadata" not in patch  # nothing that would add a revision of its own
    # Another configuration: the predictor becomes exactly the new one, and the record of
    # the configuration (which every revision keeps) changes with it.
    other = k8s.inference_service(k8s.ServingConfig(storage_uri="s3://r/pets/versions/4",
                                                    image="reg/p:2", logger_url=""),
                                  registry_version=4)
    patch = k8s.template_patch(old, other, 100)
    assert patch["spec"]["predictor"]["logger"] is None  # removed by the merge patch
    assert patch["spec"]["predictor"]["containers"][0]["image"] == "reg/p:2"
    recorded = patch["metadata"]["annotations"][k8s.SERVING_CONFIG_ANNOTATION]
    assert k8s.serving_config_from_record(recorded, k8s.ServingConfig()) == \
        k8s.ServingConfig(image="reg/p:2", logger_url="")
    assert k8s.promote_patch() == {"spec": {"predictor": {"canaryTrafficPercent": 100}}}
    assert k8s.rollback_patch() == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
    for bad in (-1, 101, 150):
        with pytest.raises(ValueError, match="canary percent"):
            k8s.template_patch(old, new, bad)
    with pytest.raises(ValueError, match="Not a serving configuration record"):
        k8s.serving_config_from_record('{"image": 3}', k8s.ServingConfig())


def test_no_secret_values_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert "manifests/base/s3.env" not in tracked
    for rel in tracked:
        path = REPO / rel
        if path.suffix in (".yaml", ".yml") and path.exists():
            for doc in _docs(path):
                if isinstance(doc, dict) and doc.get("kind") == "Secret":
                    assert not doc.get("data") and not doc.get("stringData"), rel
        if path.suffix in (".py", ".yaml", ".yml", ".md", ".cfg", ".example", ".env"):
            text = path.read_text(errors="ignore")
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), f"an AWS access key id in {rel}"
    example = (REPO / "manifests" / "base" / "s3.env.example").read_text()
    assert all(line.endswith("=") for line in example.splitlines() if "=" in line)


def test_validation_catches_a_misspelt_or_mistyped_field():
    isvc = k8s.inference_service(k8s.ServingConfig())
    misspelt = yaml.safe_load(yaml.safe_dump(isvc))
    misspelt["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(ValueError, match=r"does not know.*minReplica"):
        k8s.validate_object(misspelt)
    nested = yaml.safe_load(yaml.safe_dump(isvc))
    nested["spec"]["predictor"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(ValueError, match=r"imagePullPolicyy"):
        k8s.validate_object(nested)


@pytest.mark.parametrize("mode", sorted(k8s.INSTALL_MODES))
def test_the_pod_monitor_scrapes_the_production_predictors_metrics_port(built, mode):
    (monitor,) = [o for o in built[mode] if o["kind"] == "PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == k8s.INSTALL_MODES[mode]["namespace"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", monitor["metadata"]["name"])
    # What the Prometheus Operator's PodMonitor spec reads (monitoring.coreos.com/v1).
    assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    # It selects the pods KServe makes for the production InferenceService, not the test one.
    production, test = (_docs(REPO / "manifests" / "reference" / f"inferenceservice-{env}.yaml")[0]
                        for env in ("production", "test"))
    assert monitor["spec"]["selector"] == {
        "matchLabels": {k8s.ISVC_POD_LABEL: production["metadata"]["name"]}}
    assert test["metadata"]["name"] != production["metadata"]["name"]
    # On the port Knative names the user container's one port, where the predictor listens.
    (container,) = production["spec"]["predictor"]["containers"]
    (port,) = container["ports"]
    assert f"--port={port['containerPort']}" in container["args"]
    assert endpoint["port"] == k8s.KNATIVE_USER_PORT and endpoint["path"] == "/metrics"


def test_without_the_prometheus_operator_no_monitoring_objects_are_rendered():
    files = k8s.render_manifests(k8s.ManifestOptions(pod_monitor=False))
    assert "base/podmonitor.yaml" not in files
    assert "podmonitor.yaml" not in yaml.safe_load(files["base/kustomization.yaml"])["resources"]
    assert "monitoring.coreos.com" not in "".join(files.values())


def _allowed(objects: list[dict], service_account: dict, verb: str, group: str,
             resource: str) -> bool:
    """Whether a RoleBinding of ``objects`` gives ``service_account`` a Role rule that allows
    ``verb`` on ``group``/``resource`` (RBAC's rule match, without wildcards: the manifests use
    none)."""
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Role"}
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        if service_account in binding["subjects"] and binding["roleRef"]["kind"] == "Role":
            for rule in roles[binding["roleRef"]["name"]]["rules"]:
                if group in rule["apiGroups"] and resource in rule["resources"] and \
                        verb in rule["verbs"] and "resourceNames" not in rule:
                    return True
    return False


@pytest.mark.parametrize("mode", sorted(k8s.INSTALL_MODES))
def test_the_pipeline_may_do_what_the_trainjob_launcher_does(built, mode):
    """``--trainer-nodes``: every request the launcher makes while a TrainJob completes and
    while one fails (recorded by the API stand-in) is allowed by the applied overlay to the
    service account pipeline pods run as, in the namespace the TrainJob is created in."""
    from components.deploy.tests import trainjob_standin
    from components.deploy.tests.kube_standin import KubeStandIn
    from components.train.trainjob import TrainJobFailed, run_train_job

    if trainjob_standin.trainer_dir() is None:
        pytest.skip("Kubeflow Trainer v2.3.0's CRDs are not here (MLOPS_TRAINER_DIR, "
                    "shared/trainer/); the project keeps no copy")
    import kubernetes

    spec = k8s.INSTALL_MODES[mode]
    namespace = spec["namespace"]
    pipeline_ns = spec["pipeline_namespace"] or namespace
    assert pipeline_ns == namespace  # the launcher creates TrainJobs in its own namespace
    server = KubeStandIn(tick_s=0.01)
    conf = kubernetes.client.Configuration()
    conf.host = server.start()
    try:
        client = kubernetes.client.ApiClient(conf)
        cfg = dict(namespace=pipeline_ns, image="registry.example/pets/mlops:1",
                   args=("--train", "s3://w/t", "--out", "s3://w/m"), num_nodes=2)
        server.trainjobs.plan("train-ok", "complete", after_s=0.05)
        run_train_job(tj.TrainJobConfig(name="train-ok", **cfg), client, poll_s=0.02)
        server.trainjobs.plan("train-bad", "fail", after_s=0.05)
        with pytest.raises(TrainJobFailed):
            run_train_job(tj.TrainJobConfig(name="train-bad", **cfg), client, poll_s=0.02)
        requests = list(server.requests)
    finally:
        server.stop()
    prefix = f"/apis/{k8s.TRAINER_GROUP}/{tj.VERSION}/namespaces/{pipeline_ns}/"
    used = {("create" if method == "POST" else "delete" if method == "DELETE"
             else "get" if path.count("/") > prefix.count("/") else "list",
             path[len(prefix):].split("/")[0])
            for method, path in requests if path.startswith(prefix)}
    assert {verb for verb, _ in used} == {"create", "get", "delete"}
    sa = {"kind": "ServiceAccount", "name": spec["pipeline_service_account"],
          "namespace": pipeline_ns}
    objects = built[mode]
    for verb, resource in sorted(used):
        assert _allowed(objects, sa, verb, k8s.TRAINER_GROUP, resource), (verb, resource)
    trainer_role = next(o for o in objects if o["metadata"]["name"] == "pet-classifier-trainer"
                        and o["kind"] == "Role")
    assert trainer_role["metadata"]["namespace"] == pipeline_ns
    # The rule is where it is needed and nowhere else: nothing on pods, Jobs or Secrets.
    assert not _allowed(objects, sa, "create", "", "pods")
    assert not _allowed(objects, sa, "create", "batch", "jobs")
