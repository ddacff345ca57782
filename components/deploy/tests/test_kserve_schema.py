"""The InferenceService schema built from the ``kserve`` package's models (``kserve_schema``),
which the API stand-in and ``tests/test_manifests.py`` validate against when KServe's CRD file
is not on the machine: what it rejects, where it comes from, how the file is chosen, and —
when the CRD is here — that it differs from the CRD only where its docstring says."""

from __future__ import annotations

import copy
import gzip
import re

import pytest
import yaml

from components.common import k8s
from components.deploy.tests import kube_standin
from components.deploy.tests.kserve_schema import build_schema, model_classes, required_fields
from components.deploy.tests.kube_standin import inference_service_schema, validate


@pytest.fixture(scope="module", params=["models", "crd"])
def schema(request) -> dict:
    """The models' schema, and the CRD where it is here: each case must hold for both."""
    if request.param == "crd" and kube_standin.crd_path() is None:
        pytest.skip("KServe's CRD file is not here (MLOPS_KSERVE_CRD, shared/kserve/)")
    return inference_service_schema(request.param)[0]


@pytest.fixture(scope="module")
def isvc() -> dict:
    return k8s.inference_service(k8s.ServingConfig(capture_uri="s3://mlops/monitoring"),
                                 registry_version=3)


def _edited(isvc: dict, edit) -> dict:
    obj = copy.deepcopy(isvc)
    edit(obj)
    return obj


def _container(obj: dict) -> dict:
    return obj["spec"]["predictor"]["containers"][0]


def test_what_the_release_creates_is_valid_and_every_field_known(schema, isvc):
    pruned, errors, unknown = validate(isvc, schema)
    assert (errors, unknown) == ([], [])
    assert pruned == isvc  # nothing pruned: every field the release writes is known


# (edit, the error that must name the field)
REJECTED = [
    (lambda o: o["spec"]["predictor"].update(minReplicas="two"),
     r"\.spec\.predictor\.minReplicas: Invalid value: 'two': must be of type integer"),
    (lambda o: o["spec"]["predictor"].update(canaryTrafficPercent=True),
     r"canaryTrafficPercent: Invalid value: True: must be of type integer"),
    (lambda o: _container(o)["ports"][0].update(containerPort="8080"),
     r"containers\[0\]\.ports\[0\]\.containerPort: Invalid value: '8080'"),
    (lambda o: _container(o).update(env={"STORAGE_URI": "s3://x"}),
     r"containers\[0\]\.env: Invalid value: dict: must be of type array"),
    (lambda o: o["spec"]["predictor"].update(labels={"tier": 1}),
     r"\.spec\.predictor\.labels\.tier: Invalid value: int: must be of type string"),
    (lambda o: _container(o).pop("name"), r"containers\[0\]\.name: Required value"),
    (lambda o: o["spec"].pop("predictor"), r"\.spec\.predictor: Required value"),
    (lambda o: o["spec"]["predictor"]["logger"].update(mode="everything"),
     r"logger\.mode: Unsupported value: 'everything'"),
    (lambda o: _container(o)["resources"]["limits"].update(cpu="lots"),
     r"resources\.limits\.cpu: Invalid value: 'lots'"),
    (lambda o: o["spec"]["predictor"].update(storageUris=[]),
     r"\.spec\.predictor\.storageUris: Invalid value: 0: should have at least 1 items"),
    (lambda o: o["spec"]["predictor"].update(scaleMetric="latency"),
     r"scaleMetric: Unsupported value: 'latency'"),
]


@pytest.mark.parametrize("edit, message", REJECTED,
                         ids=[re.sub(r"[^\w.]", "", m.split(":")[0]).strip(".")
                              for _, m in REJECTED])
def test_a_wrong_type_a_missing_field_or_a_value_out_of_its_set_is_rejected(schema, isvc, edit,
                                                                              message):
    _, errors, _ = validate(_edited(isvc, edit), schema)
    assert any(re.search(message, e) for e in errors), errors


def test_unknown_fields_are_reported_and_pruned_at_any_depth(schema, isvc):
    def misspell(obj):
        obj["spec"]["predictor"]["minReplica"] = 1
        _container(obj)["imagePullPolicyy"] = "Always"
        obj["spec"]["predictor"]["logger"]["format"] = "json"

    pruned, errors, unknown = validate(_edited(isvc, misspell), schema)
    assert errors == []
    assert sorted(unknown) == ["<root>.spec.predictor.containers[0].imagePullPolicyy",
                               "<root>.spec.predictor.logger.format",
                               "<root>.spec.predictor.minReplica"]
    assert pruned == isvc  # pruned as the API server does without fieldValidation=Strict


def test_what_kubernetes_and_kserve_accept_is_accepted(schema, isvc):
    def legal(obj):
        c = _container(obj)
        c["resources"]["limits"].update(memory=2 * 1024 ** 3, cpu="1.5")  # int or Quantity
        c["resources"]["requests"]["memory"] = "512Mi"
        c["readinessProbe"] = {"httpGet": {"path": "/v2/health/ready"}}  # Knative sets port
        c["livenessProbe"] = {"tcpSocket": {"port": "http"}, "periodSeconds": 10}
        c["env"].append({"name": "DIV", "valueFrom": {"resourceFieldRef": {
            "resource": "limits.cpu", "divisor": "1m"}}})
        obj["spec"]["predictor"].update(scaleMetric="concurrency", scaleTarget=4)
        obj["spec"]["predictor"]["annotations"] = {"a": "b"}

    _, errors, unknown = validate(_edited(isvc, legal), schema)
    assert (errors, unknown) == ([], [])


def test_a_null_field_is_dropped_but_a_null_list_item_is_invalid(schema, isvc):
    """The API server prunes null fields the schema does not make nullable (prunenulls.go)."""
    def nulls(obj):
        obj["spec"]["predictor"]["timeout"] = None
        _container(obj)["resources"]["limits"]["memory"] = None

    pruned, errors, unknown = validate(_edited(isvc, nulls), schema)
    assert (errors, unknown) == ([], [])
    assert "timeout" not in pruned["spec"]["predictor"]
    assert "memory" not in _container(pruned)["resources"]["limits"]
    _, errors, _ = validate(_edited(isvc, lambda o: _container(o)["args"].append(None)), schema)
    last = len(_container(isvc)["args"])
    assert errors == [f"<root>.spec.predictor.containers[0].args[{last}]: Invalid value: null"]


def test_required_fields_are_read_from_the_models_setters():
    classes = model_classes()
    assert required_fields(classes["V1Container"]) == ["name"]
    assert required_fields(classes["V1EnvVar"]) == ["name"]
    assert required_fields(classes["V1beta1InferenceServiceSpec"]) == ["predictor"]
    assert required_fields(classes["V1beta1LoggerSpec"]) == []


def test_every_type_the_models_name_is_resolved_but_one_newer_than_the_client():
    """V1ContainerRestartRule (Kubernetes 1.34) is named by KServe's models but not defined by
    the kubernetes client pinned here: it accepts anything. Any other gap fails here."""
    assert build_schema()[1] == {"V1ContainerRestartRule"}


# -- which schema ---------------------------------------------------------------------------


def _tiny_crd(path, predictor_schema: dict) -> None:
    crd = {"spec": {"versions": [{"name": "v1beta1", "served": True, "schema": {
        "openAPIV3Schema": {"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"predictor": predictor_schema}}}}}}]}}
    path.write_bytes(gzip.compress(yaml.safe_dump(crd).encode()))


def test_the_crd_file_is_preferred_and_the_models_are_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(kube_standin, "SHARED_CRD", tmp_path / "shared" / "absent.yaml.gz")
    monkeypatch.delenv("MLOPS_KSERVE_CRD", raising=False)
    assert kube_standin.crd_path() is None
    schema, source = inference_service_schema()
    assert source == "the kserve package's models"
    assert "canaryTrafficPercent" in schema["properties"]["spec"]["properties"]["predictor"][
        "properties"]
    with pytest.raises(FileNotFoundError, match="set MLOPS_KSERVE_CRD"):
        inference_service_schema("crd")

    crd = tmp_path / "crd.yaml.gz"
    _tiny_crd(crd, {"type": "string"})
    monkeypatch.setenv("MLOPS_KSERVE_CRD", str(crd))
    schema, source = inference_service_schema()
    assert source == f"KServe's CRD ({crd})"
    assert schema["properties"]["spec"]["properties"]["predictor"] == {"type": "string"}
    assert inference_service_schema("models")[1] == "the kserve package's models"

    monkeypatch.setenv("MLOPS_KSERVE_CRD", str(tmp_path / "typo.yaml.gz"))
    with pytest.raises(FileNotFoundError, match=r"MLOPS_KSERVE_CRD=.*typo.yaml.gz.* is not a file"):
        inference_service_schema()
    with pytest.raises(ValueError, match="Unknown schema source 'file'"):
        inference_service_schema("file")


def test_the_shared_folder_beside_the_checkout_is_read(tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "kserve" / kube_standin.CRD_NAME
    shared.parent.mkdir(parents=True)
    _tiny_crd(shared, {"type": "object"})
    monkeypatch.setattr(kube_standin, "SHARED_CRD", shared)
    monkeypatch.delenv("MLOPS_KSERVE_CRD", raising=False)
    assert inference_service_schema()[1] == f"KServe's CRD ({shared})"


# -- against the CRD, where it is here -------------------------------------------------------

# Fields of Kubernetes 1.31-1.34 core types (and KServe's autoscaling behaviour) that the
# kubernetes 30.1 client's models do not have: unknown to the models' schema.
NEWER_THAN_THE_CLIENT = {"restartPolicyRules", "fileKeyRef", "stopSignal", "request",
                         "tolerance", "resourceClaimName", "resourceClaimTemplateName",
                         "seLinuxChangePolicy", "supplementalGroupsPolicy", "image",
                         "podCertificate"}
REMOVED_SINCE_THE_CLIENT = {"source"}  # PodResourceClaim.source, gone in Kubernetes 1.31


def _kind(s: dict):
    return "int-or-string" if s.get("x-kubernetes-int-or-string") else s.get("type")


def _compare(crd: dict, model: dict, path: str, out: dict) -> None:
    if model.get("x-kubernetes-preserve-unknown-fields") and "type" not in model:
        return  # an unresolved type: accepts anything
    if _kind(crd) != _kind(model):
        out["type"].append(f"{path}: {_kind(crd)} != {_kind(model)}")
    for kw in ("enum", "minimum", "maximum", "minLength", "maxLength", "minItems"):
        if crd.get(kw) != model.get(kw):
            out["constraint"].append(f"{path}.{kw}: {crd.get(kw)} != {model.get(kw)}")
    if bool(crd.get("pattern")) != bool(model.get("pattern")):
        out["constraint"].append(f"{path}.pattern")
    stricter = set(model.get("required", [])) - set(crd.get("required", []))
    if stricter:
        out["stricter"].append(f"{path}: {sorted(stricter)}")
    cp, mp = crd.get("properties") or {}, model.get("properties") or {}
    out["crd_only"] += [f"{path}.{k}" for k in set(cp) - set(mp)]
    out["model_only"] += [f"{path}.{k}" for k in set(mp) - set(cp)]
    for k in set(cp) & set(mp):
        _compare(cp[k], mp[k], f"{path}.{k}", out)
    ca, ma = crd.get("additionalProperties"), model.get("additionalProperties")
    if isinstance(ca, dict) and isinstance(ma, dict):
        _compare(ca, ma, path + "{}", out)
    elif bool(ca) != bool(ma):
        out["type"].append(f"{path}: additionalProperties {bool(ca)} != {bool(ma)}")
    if "items" in crd or "items" in model:
        _compare(crd.get("items", {}), model.get("items", {}), path + "[]", out)


def test_the_models_schema_differs_from_the_crd_only_where_documented():
    if kube_standin.crd_path() is None:
        pytest.skip("KServe's CRD file is not here (MLOPS_KSERVE_CRD, shared/kserve/)")
    crd = inference_service_schema("crd")[0]["properties"]["spec"]
    model = inference_service_schema("models")[0]["properties"]["spec"]
    out = {k: [] for k in ("type", "constraint", "stricter", "crd_only", "model_only")}
    _compare(crd, model, "spec", out)
    assert out["type"] == [] and out["constraint"] == [], (out["type"], out["constraint"])
    assert out["stricter"] == []  # the models never refuse what the CRD accepts for want of
    assert {p.rsplit(".", 1)[1] for p in out["crd_only"]} <= NEWER_THAN_THE_CLIENT
    assert {p.rsplit(".", 1)[1] for p in out["model_only"]} <= REMOVED_SINCE_THE_CLIENT
