"""Kubernetes objects as pure functions returning dicts.

The deploy step applies these objects, and ``mlops manifests`` writes ``manifests/`` from the
same functions, so the YAML in the repository and what a pipeline applies cannot drift apart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from components.settings import __version__

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
DEFAULT_PREDICTOR_IMAGE = f"ghcr.io/pet-park-mlops/pet-classifier-predictor:{__version__}"


@dataclass(frozen=True)
class ServingConfig:
    """How an InferenceService of the classifier is shaped.

    Attributes:
        name: InferenceService name (Kubernetes DNS label).
        namespace: Namespace (in Kubeflow: the profile namespace of the pipelines).
        storage_uri: Where the package is, e.g. ``s3://mlops/registry/pet-classifier/versions/3``;
            KServe's storage initializer downloads it to ``/mnt/models``.
        image: The predictor image (``components/serve/Dockerfile``).
        service_account: The ServiceAccount whose Secret holds the S3 credentials.
        min_replicas / max_replicas: Autoscaling bounds.
        canary_traffic_percent: Share of traffic for the latest revision during a canary.
        logger_url: Where KServe's request/response logger sends CloudEvents (the monitoring
            sink); empty for none.
        cpu / memory: Requests; limits are twice the CPU and the same memory.
    """

    name: str = "pet-classifier"
    namespace: str = "kubeflow-user-example-com"
    storage_uri: str = "s3://mlops/registry/pet-classifier/versions/1"
    image: str = DEFAULT_PREDICTOR_IMAGE
    service_account: str = "pet-classifier-sa"
    min_replicas: int = 1
    max_replicas: int = 3
    canary_traffic_percent: int | None = None
    logger_url: str = "http://pet-classifier-monitor.kubeflow-user-example-com.svc.cluster.local"
    cpu: str = "500m"
    memory: str = "1Gi"
    labels: dict = field(default_factory=dict)


def inference_service(cfg: ServingConfig) -> dict:
    """The InferenceService of the custom ONNX predictor."""
    if cfg.canary_traffic_percent is not None and not 0 <= cfg.canary_traffic_percent <= 100:
        raise ValueError(f"Invalid canary_traffic_percent: {cfg.canary_traffic_percent}. "
                         "Expect 0 to 100.")
    cpu_limit = _double_cpu(cfg.cpu)
    container = {
        "name": "kserve-container",
        "image": cfg.image,
        # ONNX Runtime would start one thread per core of the node, not of the CPU limit.
        "args": ["--package-dir=/mnt/models", f"--name={cfg.name}", "--host=0.0.0.0",
                 "--port=8080",
                 f"--ort-threads={_whole_cpus(cpu_limit)}"],
        # A custom container gets its model through STORAGE_URI and the storage initializer.
        "env": [{"name": "STORAGE_URI", "value": cfg.storage_uri}],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": cfg.cpu, "memory": cfg.memory},
                      "limits": {"cpu": cpu_limit, "memory": cfg.memory}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "readinessProbe": {"httpGet": {"path": f"/v1/models/{cfg.name}", "port": 8080},
                           "initialDelaySeconds": 2, "periodSeconds": 5},
    }
    predictor = {
        "serviceAccountName": cfg.service_account,
        "minReplicas": cfg.min_replicas,
        "maxReplicas": cfg.max_replicas,
        "containers": [container],
    }
    if cfg.logger_url:
        predictor["logger"] = {"mode": "all", "url": cfg.logger_url}
    if cfg.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = cfg.canary_traffic_percent
    return {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                     "labels": {"app.kubernetes.io/name": "pet-classifier",
                                "app.kubernetes.io/part-of": "mlops-workflow", **cfg.labels},
                     # Tag routing gives the canary ("latest") and the previous revision
                     # ("prev") URLs of their own, which the canary analysis probes.
                     "annotations": {"serving.kserve.io/enable-prometheus-scraping": "true",
                                     "serving.kserve.io/enable-tag-routing": "true"}},
        "spec": {"predictor": predictor},
    }


def canary(isvc: dict, storage_uri: str, percent: int) -> dict:
    """The patch that starts a canary: new package, ``percent`` of traffic to it."""
    if not 0 < percent < 100:
        raise ValueError(f"Invalid canary percent: {percent}. Expect 1 to 99; use promote() "
                         "for 100.")
    out = copy.deepcopy(isvc)
    pred = out["spec"]["predictor"]
    pred["canaryTrafficPercent"] = percent
    _set_storage_uri(pred, storage_uri)
    return out


def promote(isvc: dict) -> dict:
    """All traffic to the latest revision (the canary becomes production)."""
    out = copy.deepcopy(isvc)
    out["spec"]["predictor"]["canaryTrafficPercent"] = 100
    return out


def rollback(isvc: dict, last_good_storage_uri: str) -> dict:
    """Back to the last good package with all traffic, as a new revision.

    Setting the traffic share to 0 would also send traffic to the previous revision, but
    only while Knative still has it; redeploying the last good ``storageUri`` at 100% does
    not depend on revision history.
    """
    out = copy.deepcopy(isvc)
    pred = out["spec"]["predictor"]
    pred["canaryTrafficPercent"] = 100
    _set_storage_uri(pred, last_good_storage_uri)
    return out


def _set_storage_uri(predictor: dict, uri: str) -> None:
    for env in predictor["containers"][0]["env"]:
        if env["name"] == "STORAGE_URI":
            env["value"] = uri
            return
    predictor["containers"][0]["env"].append({"name": "STORAGE_URI", "value": uri})


def _whole_cpus(cpu: str) -> int:
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, int(cores))


def _double_cpu(cpu: str) -> str:
    return f"{int(cpu[:-1]) * 2}m" if cpu.endswith("m") else str(float(cpu) * 2).rstrip(
        "0").rstrip(".")


def service_account(cfg: ServingConfig, secret_name: str = "pet-classifier-s3") -> dict:
    """The predictor's ServiceAccount; KServe's storage initializer reads its Secret."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": cfg.service_account, "namespace": cfg.namespace},
            "secrets": [{"name": secret_name}]}


def s3_secret_annotations(endpoint: str = "minio-service.kubeflow:9000", use_https: bool = False,
                          region: str = "us-east-1") -> dict:
    """KServe's S3 annotations for the credentials Secret (the values are generated, never
    committed: see manifests/base/s3.env.example)."""
    return {"serving.kserve.io/s3-endpoint": endpoint,
            "serving.kserve.io/s3-usehttps": "1" if use_https else "0",
            "serving.kserve.io/s3-region": region,
            "serving.kserve.io/s3-verifyssl": "1"}


def deployer_rbac(namespace: str, pipeline_service_account: str = "pipeline-runner") -> list[dict]:
    """Lets the pipeline manage InferenceServices in its namespace, and nothing more."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pet-classifier-deployer", "namespace": namespace},
            "rules": [{"apiGroups": [KSERVE_GROUP], "resources": ["inferenceservices"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch",
                                 "delete"]},
                      {"apiGroups": [KSERVE_GROUP], "resources": ["inferenceservices/status"],
                       "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "pet-classifier-deployer", "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": "pet-classifier-deployer"},
               "subjects": [{"kind": "ServiceAccount", "name": pipeline_service_account,
                             "namespace": namespace}]}
    return [role, binding]


# Environments, as the overlays under manifests/ describe them.
ENVIRONMENTS = {
    "test": {"suffix": "-test", "min_replicas": 1, "max_replicas": 1},
    "production": {"suffix": "", "min_replicas": 2, "max_replicas": 6},
}


def _strip_none(value):
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def validate_object(obj: dict) -> dict:
    """Checks an object against the typed model classes of the Kubernetes or KServe client.

    The object is deserialised into its model class and serialised back: a field the schema
    does not know is dropped on the way, so any difference means a mistyped or unknown field.

    Raises:
        ValueError: Naming the object and the fields that differ.
    """
    kind = obj.get("kind", "")
    if kind == "InferenceService":
        import kserve.models
        import kubernetes.client.models
        from kserve import ApiClient

        # KServe's models nest Kubernetes' (V1ObjectMeta, V1Container …), but its ApiClient
        # looks classes up in kserve.models only: make the Kubernetes ones visible there.
        for name in dir(kubernetes.client.models):
            if name.startswith("V1") and not hasattr(kserve.models, name):
                setattr(kserve.models, name, getattr(kubernetes.client.models, name))
        client, model = ApiClient(), "V1beta1InferenceService"
    else:
        from kubernetes.client import ApiClient

        client, model = ApiClient(), f"V1{kind}"
    try:
        typed = client._ApiClient__deserialize(obj, model)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"{kind} {obj.get('metadata', {}).get('name')!r} does not match the "
                         f"{model} schema: {exc}") from exc
    back = _strip_none(client.sanitize_for_serialization(typed))
    if back != _strip_none(obj):
        missing = sorted(_diff_paths(_strip_none(obj), back))
        raise ValueError(f"{kind} {obj.get('metadata', {}).get('name')!r} has fields the "
                         f"{model} schema does not know or types it rejects: {missing}")
    return obj


def _diff_paths(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff_paths(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += _diff_paths(x, y, f"{prefix}[{i}]")
        return out
    return [] if a == b else [prefix]


def _yaml(*docs: dict) -> str:
    import yaml

    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def render_manifests(cfg: ServingConfig = ServingConfig()) -> dict[str, str]:
    """``manifests/`` as path -> text: a kustomize base and the test/production overlays.

    The S3 Secret is generated by kustomize from ``base/s3.env`` (not in the repository;
    ``s3.env.example`` lists the keys), so no secret value is ever committed.
    """
    import yaml

    files = {
        "base/inferenceservice.yaml": _yaml(inference_service(cfg)),
        "base/serviceaccount.yaml": _yaml(service_account(cfg)),
        "base/rbac.yaml": _yaml(*deployer_rbac(cfg.namespace)),
        "base/s3.env.example": "# Copy to s3.env (git-ignored) and fill in; kustomize makes the "
                               "Secret from it.\nAWS_ACCESS_KEY_ID=\nAWS_SECRET_ACCESS_KEY=\n",
        "base/kustomization.yaml": yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": cfg.namespace,
            "resources": ["serviceaccount.yaml", "rbac.yaml", "inferenceservice.yaml"],
            "secretGenerator": [{"name": "pet-classifier-s3", "envs": ["s3.env"],
                                 "options": {"disableNameSuffixHash": True,
                                             "annotations": s3_secret_annotations()}}],
        }, sort_keys=False),
    }
    for env, spec in ENVIRONMENTS.items():
        patch = [{"op": "replace", "path": "/spec/predictor/minReplicas",
                  "value": spec["min_replicas"]},
                 {"op": "replace", "path": "/spec/predictor/maxReplicas",
                  "value": spec["max_replicas"]}]
        if spec["suffix"]:
            patch.append({"op": "replace", "path": "/metadata/name",
                          "value": cfg.name + spec["suffix"]})
        files[f"overlays/{env}/kustomization.yaml"] = yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": ["../../base"],
            "labels": [{"pairs": {"app.kubernetes.io/environment": env}}],
            "patches": [{"target": {"group": KSERVE_GROUP, "version": KSERVE_VERSION,
                                    "kind": "InferenceService", "name": cfg.name},
                         "patch": yaml.safe_dump(patch, sort_keys=False)}],
        }, sort_keys=False)
    header = "# Generated by `mlops manifests` from components/common/k8s.py; do not edit.\n"
    return {path: (text if path.endswith(".example") else header + text)
            for path, text in files.items()}
