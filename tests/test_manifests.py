"""Kubernetes objects: one source for manifests/ and the deploy step, validated by the
Kubernetes and KServe model classes, and no secret values in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from components.common import k8s

REPO = Path(__file__).resolve().parents[1]


def _validate(obj: dict) -> None:
    k8s.validate_object(obj)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_committed_manifests_are_exactly_what_the_builders_produce():
    rendered = k8s.render_manifests()
    committed = {p.relative_to(REPO / "manifests").as_posix(): p.read_text()
                 for p in (REPO / "manifests").rglob("*") if p.is_file()}
    assert committed == rendered, "manifests/ is stale: run `mlops manifests`"


def test_every_base_object_is_valid_for_its_schema():
    kinds = []
    for path in sorted((REPO / "manifests" / "base").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for obj in _docs(path):
            _validate(obj)
            kinds.append(obj["kind"])
    assert sorted(kinds) == ["InferenceService", "Role", "RoleBinding", "ServiceAccount"]


@pytest.mark.parametrize("env", sorted(k8s.ENVIRONMENTS))
def test_overlays_patch_into_valid_inference_services(env):
    import jsonpatch

    base = _docs(REPO / "manifests" / "base" / "inferenceservice.yaml")[0]
    kustomization = yaml.safe_load((REPO / "manifests" / "overlays" / env /
                                    "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../base"]
    patched = base
    for patch in kustomization["patches"]:
        assert patch["target"]["kind"] == "InferenceService"
        patched = jsonpatch.apply_patch(patched, yaml.safe_load(patch["patch"]))
    _validate(patched)
    spec = k8s.ENVIRONMENTS[env]
    assert patched["metadata"]["name"] == "pet-classifier" + spec["suffix"]
    assert patched["spec"]["predictor"]["minReplicas"] == spec["min_replicas"]


def test_predictor_runs_as_non_root_with_resources_and_the_logger():
    isvc = k8s.inference_service(k8s.ServingConfig())
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["cpu"] == "1000m"
    assert isvc["spec"]["predictor"]["logger"]["mode"] == "all"
    assert {"name": "STORAGE_URI", "value": k8s.ServingConfig().storage_uri} in container["env"]


@pytest.mark.parametrize("cpu, threads", [("500m", 1), ("1", 2), ("2", 4)])
def test_onnx_runtime_threads_follow_the_cpu_limit_not_the_node(cpu, threads):
    container = k8s.inference_service(k8s.ServingConfig(cpu=cpu))["spec"]["predictor"][
        "containers"][0]
    assert f"--ort-threads={threads}" in container["args"]


def test_rbac_is_limited_to_inference_services_in_one_namespace():
    role, binding = k8s.deployer_rbac("team-a")
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "team-a"
    assert {g for r in role["rules"] for g in r["apiGroups"]} == {"serving.kserve.io"}
    assert {res for r in role["rules"] for res in r["resources"]} == {
        "inferenceservices", "inferenceservices/status"}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_canary_promote_and_rollback_objects():
    base = k8s.inference_service(k8s.ServingConfig(storage_uri="s3://r/pets/versions/3"))
    canary = k8s.canary(base, "s3://r/pets/versions/4", 10)
    _validate(canary)
    env = canary["spec"]["predictor"]["containers"][0]["env"]
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert {"name": "STORAGE_URI", "value": "s3://r/pets/versions/4"} in env
    assert base["spec"]["predictor"]["containers"][0]["env"][0]["value"].endswith("/3")
    promoted = k8s.promote(canary)
    assert promoted["spec"]["predictor"]["canaryTrafficPercent"] == 100
    rolled = k8s.rollback(canary, "s3://r/pets/versions/3")
    _validate(rolled)
    assert rolled["spec"]["predictor"]["canaryTrafficPercent"] == 100
    assert rolled["spec"]["predictor"]["containers"][0]["env"][0]["value"].endswith("/3")
    for bad in (0, 100, 150):
        with pytest.raises(ValueError, match="canary percent"):
            k8s.canary(base, "s3://r/pets/versions/4", bad)


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
        _validate(misspelt)
    nested = yaml.safe_load(yaml.safe_dump(isvc))
    nested["spec"]["predictor"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(ValueError, match=r"imagePullPolicyy"):
        _validate(nested)
