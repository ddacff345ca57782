"""Kubernetes objects as pure functions returning dicts.

The deploy step applies these objects, and ``mlops manifests`` writes ``manifests/`` from the
same functions, so the YAML in the repository and what a pipeline applies cannot drift apart.

Two kinds of objects, applied by two parties:

* what an administrator applies once per namespace (``manifests/``): the predictor's
  ServiceAccount and S3 Secret, the Roles that let the pipeline manage InferenceServices and
  Kubeflow Trainer TrainJobs, and (multi-user Kubeflow) the Istio AuthorizationPolicy that
  lets the pipeline's probes in;
* what the release creates and changes (never in ``manifests/``, so that re-applying them
  cannot switch production back): the InferenceServices ``<model>`` and ``<model>-test``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlparse

from components.settings import DEFAULT_S3_ENDPOINT, __version__

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KNATIVE_GROUP = "serving.knative.dev"
#: Kubeflow Trainer v2's API group and the resource the final training's task creates
#: (``mlops compile --trainer-nodes N``; components/common/trainjob.py).
TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_RESOURCE = "trainjobs"
DEFAULT_PREDICTOR_IMAGE = f"ghcr.io/pet-park-mlops/pet-classifier-predictor:{__version__}"

#: Where the InferenceServices live by default: the profile namespace of a stock multi-user
#: Kubeflow install (kubeflow/manifests' example user).
DEFAULT_NAMESPACE = "kubeflow-user-example-com"

#: Label on the predictor's revisions (and pods) naming the registry version they serve. It
#: changes only together with the package's storage URI, so it never creates a revision of its
#: own, and it tells which version a Knative revision serves.
REGISTRY_VERSION_LABEL = "mlops.pet-park.io/registry-version"

#: The only mode whose canary (``canaryTrafficPercent`` with Knative revisions and tag routing)
#: this project drives. KServe 0.20 defaults to ``Standard`` (raw Deployments) and reads the
#: legacy name ``Serverless`` as ``Knative`` (pkg/constants/constants.go, ParseDeploymentMode);
#: the legacy name is used so that older KServe releases read it too.
DEPLOYMENT_MODE = "Serverless"

#: How Kubeflow Pipelines runs pipeline pods, per install mode (kubeflow/pipelines 2.16:
#: manifests/kustomize/base/installs/multi-user/api-service/params.env sets
#: DEFAULTPIPELINERUNNERSERVICEACCOUNT=default-editor; the standalone default is
#: backend/src/apiserver/common/const.go DefaultPipelineRunnerServiceAccount = "pipeline-runner").
INSTALL_MODES = {
    "multi-user": {"namespace": DEFAULT_NAMESPACE, "pipeline_namespace": None,
                   "pipeline_service_account": "default-editor", "istio": True},
    "standalone": {"namespace": "kubeflow", "pipeline_namespace": "kubeflow",
                   "pipeline_service_account": "pipeline-runner", "istio": False},
}


@dataclass(frozen=True)
class ServingConfig:
    """How an InferenceService of the classifier is shaped.

    Attributes:
        name: InferenceService name (Kubernetes DNS label).
        namespace: Namespace (in multi-user Kubeflow: the profile namespace of the pipelines).
        storage_uri: Where the package is, e.g. ``s3://mlops/registry/pet-classifier/versions/3``;
            KServe's storage initializer downloads it to ``/mnt/models``.
        image: The predictor image (``components/serve/Dockerfile``).
        service_account: The predictor's ServiceAccount, which lists the S3 Secret KServe's
            storage initializer reads.
        s3_secret: That Secret's name.
        min_replicas / max_replicas: Autoscaling bounds.
        canary_traffic_percent: Share of traffic for the latest revision during a canary.
        logger_url: Where KServe's request/response logger sends CloudEvents (the monitoring
            sink); None for ``http://<name>-monitor.<namespace>.svc.cluster.local``, empty for
            no logger.
        capture_uri: The monitoring store the predictor captures to (``s3://…``; empty: no
            capture). The container gets it as ``MLOPS_CAPTURE_URI`` and the S3 Secret's
            keys as its environment (``components/monitor/capture.py``).
        cpu / memory: Requests; limits are twice the CPU and the same memory.
        labels: Extra labels of the InferenceService.
    """

    name: str = "pet-classifier"
    namespace: str = DEFAULT_NAMESPACE
    storage_uri: str = "s3://mlops/registry/pet-classifier/versions/1"
    image: str = DEFAULT_PREDICTOR_IMAGE
    service_account: str = "pet-classifier-predictor"
    s3_secret: str = "pet-classifier-s3"
    min_replicas: int = 1
    max_replicas: int = 3
    canary_traffic_percent: int | None = None
    logger_url: str | None = None
    capture_uri: str = ""
    cpu: str = "500m"
    memory: str = "1Gi"
    labels: dict = field(default_factory=dict)


APP_LABELS = {"app.kubernetes.io/name": "pet-classifier",
              "app.kubernetes.io/part-of": "mlops-workflow"}

#: Annotation of the InferenceService recording how it was released (:data:`RECORDED_FIELDS`
#: of its :class:`ServingConfig`, as JSON). KServe copies the InferenceService's annotations
#: into the revision template, so every Knative revision keeps the configuration it was made
#: with; a rollback, or governance opened without the release's parameters, reads it back.
#: It changes only when the configuration does, which changes the template anyway.
SERVING_CONFIG_ANNOTATION = "mlops.pet-park.io/serving-config"

#: The fields of a :class:`ServingConfig` a release chooses (the others, name, namespace,
#: package and replicas, follow from the environment and the version).
RECORDED_FIELDS = ("image", "service_account", "s3_secret", "logger_url", "capture_uri", "cpu",
                   "memory", "labels")


def serving_config_record(cfg: ServingConfig) -> str:
    """The value of :data:`SERVING_CONFIG_ANNOTATION` for ``cfg``."""
    return json.dumps({name: getattr(cfg, name) for name in RECORDED_FIELDS},
                      sort_keys=True, separators=(",", ":"))


def serving_config_from_record(text: str, base: ServingConfig) -> ServingConfig:
    """``base`` with the fields recorded in ``text`` (see :func:`serving_config_record`).

    Raises:
        ValueError: ``text`` is not such a record.
    """
    try:
        recorded = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"Not a serving configuration record: {text[:80]!r}") from exc
    def fits(name, value) -> bool:
        if name == "labels":
            return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        return isinstance(value, str) or (name == "logger_url" and value is None)

    if not isinstance(recorded, dict) or not set(recorded) <= set(RECORDED_FIELDS) or \
            not all(fits(k, v) for k, v in recorded.items()):
        raise ValueError(f"Not a serving configuration record: {text[:80]!r}")
    return replace(base, **recorded)


def predictor_container(cfg: ServingConfig) -> dict:
    """The predictor's container; its ``STORAGE_URI`` is the package it serves."""
    cpu_limit = _double_cpu(cfg.cpu)
    return {
        "name": "kserve-container",
        "image": cfg.image,
        # ONNX Runtime would start one thread per core of the node, not of the CPU limit.
        # The server binds 127.0.0.1 unless told otherwise; in the pod it must listen on the
        # pod's address (probes, the logger agent and queue-proxy reach it there).
        "args": ["--package-dir=/mnt/models", f"--name={cfg.name}", "--host=0.0.0.0",
                 "--port=8080", f"--ort-threads={_whole_cpus(cpu_limit)}"],
        # A custom container gets its model through STORAGE_URI and the storage initializer.
        "env": [{"name": "STORAGE_URI", "value": cfg.storage_uri},
                *([{"name": "MLOPS_CAPTURE_URI", "value": cfg.capture_uri}]
                  if cfg.capture_uri else [])],
        **({"envFrom": [{"secretRef": {"name": cfg.s3_secret}}]} if cfg.capture_uri else {}),
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


def inference_service(cfg: ServingConfig, registry_version: int | None = None) -> dict:
    """The InferenceService of the custom ONNX predictor.

    Nothing in it records release state: KServe copies the InferenceService's annotations and
    labels into the Knative revision template (pkg/controller/v1beta1/inferenceservice/
    components/predictor.go, buildPredictorResources and buildObjectMeta, filtered only by
    ``serviceAnnotationDisallowedList`` / ``serviceLabelDisallowedList``), so any change to them
    would start new pods. The only per-version label is :data:`REGISTRY_VERSION_LABEL`, which
    changes together with the storage URI.
    """
    if cfg.canary_traffic_percent is not None and not 0 <= cfg.canary_traffic_percent <= 100:
        raise ValueError(f"Invalid canary_traffic_percent: {cfg.canary_traffic_percent}. "
                         "Expect 0 to 100.")
    predictor = {
        "serviceAccountName": cfg.service_account,
        "minReplicas": cfg.min_replicas,
        "maxReplicas": cfg.max_replicas,
        "containers": [predictor_container(cfg)],
    }
    if registry_version is not None:
        predictor["labels"] = {REGISTRY_VERSION_LABEL: str(int(registry_version))}
    logger_url = cfg.logger_url
    if logger_url is None:
        logger_url = f"http://{cfg.name}-monitor.{cfg.namespace}.svc.cluster.local"
    if logger_url:
        predictor["logger"] = {"mode": "all", "url": logger_url}
    if cfg.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = cfg.canary_traffic_percent
    return {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                     "labels": {**APP_LABELS, **cfg.labels},
                     "annotations": {
                         # Knative revisions: canaryTrafficPercent and tagged revision URLs.
                         "serving.kserve.io/deploymentMode": DEPLOYMENT_MODE,
                         # Tag routing gives the canary ("latest") and the stable revision
                         # ("prev") URLs of their own, which the canary analysis probes.
                         "serving.kserve.io/enable-tag-routing": "true",
                         "serving.kserve.io/enable-prometheus-scraping": "true",
                         SERVING_CONFIG_ANNOTATION: serving_config_record(cfg)}},
        "spec": {"predictor": predictor},
    }


def template_patch(current: dict, isvc: dict, percent: int) -> dict:
    """The merge patch that gives ``current`` the spec of ``isvc`` with ``percent`` of the
    traffic for the latest revision (``canaryTrafficPercent``).

    ``isvc`` is the whole object of the version to serve (:func:`inference_service`). The
    patch holds only what differs: the predictor becomes exactly ``isvc``'s (fields it lacks
    are removed), and ``isvc``'s labels and annotations are set (others are kept). A change
    of the package or of the configuration makes one new revision; ``percent`` decides what
    "latest" gets meanwhile (the release writes every new template at 0%).
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"Invalid canary percent: {percent}. Expect 0 to 100.")
    new_pred = {**copy.deepcopy(isvc["spec"]["predictor"]), "canaryTrafficPercent": int(percent)}
    patch: dict = {}
    spec = _merge_diff((current.get("spec") or {}).get("predictor") or {}, new_pred)
    if spec:
        patch["spec"] = {"predictor": spec}
    meta = {}
    for key in ("labels", "annotations"):
        have = (current.get("metadata") or {}).get(key) or {}
        changed = {k: v for k, v in (isvc["metadata"].get(key) or {}).items()
                   if have.get(k) != v}
        if changed:
            meta[key] = changed
    if meta:
        patch["metadata"] = meta
    return patch


def _merge_diff(old: dict, new: dict) -> dict:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (None removes a key)."""
    out: dict = {}
    for key in old.keys() - new.keys():
        out[key] = None
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            sub = _merge_diff(old[key], value)
            if sub:
                out[key] = sub
        elif old.get(key) != value or key not in old:
            out[key] = copy.deepcopy(value)
    return out


def traffic_patch(percent: int) -> dict:
    """The merge patch that changes the canary's share of traffic and nothing else."""
    if not 0 <= percent <= 100:
        raise ValueError(f"Invalid canary percent: {percent}. Expect 0 to 100.")
    return {"spec": {"predictor": {"canaryTrafficPercent": int(percent)}}}


def promote_patch() -> dict:
    """All traffic to the latest revision, which already runs: no new revision."""
    return traffic_patch(100)


def rollback_patch() -> dict:
    """KServe's rollback: ``canaryTrafficPercent: 0``.

    The controller routes 100% to ``latestRolledoutRevision`` under the ``prev`` tag and 0% to
    the latest revision (kserve v0.20.0 ksvc_reconciler.go:134-153), so the rejected version
    never gets more traffic than it had, ready or not, and nothing new starts. (The release
    then replaces the rejected template: see ``components/deploy/README.md``.)
    """
    return traffic_patch(0)


def _whole_cpus(cpu: str) -> int:
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, int(cores))


def _double_cpu(cpu: str) -> str:
    return f"{int(cpu[:-1]) * 2}m" if cpu.endswith("m") else str(float(cpu) * 2).rstrip(
        "0").rstrip(".")


def service_account(cfg: ServingConfig) -> dict:
    """The predictor's ServiceAccount; KServe's storage initializer reads its Secret."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": cfg.service_account, "labels": dict(APP_LABELS)},
            "secrets": [{"name": cfg.s3_secret}]}


def s3_secret_annotations(endpoint: str = DEFAULT_S3_ENDPOINT, region: str = "us-east-1",
                          verify_ssl: bool = True) -> dict:
    """KServe's S3 annotations for the credentials Secret, from an endpoint URL.

    KServe wants ``host:port`` and a separate ``s3-usehttps``; the scheme of ``endpoint``
    (``http://seaweedfs.kubeflow:8333`` on a stock KFP 2.16) gives the latter.
    """
    parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"Invalid S3 endpoint {endpoint!r}. Expect a URL such as "
                         "http://seaweedfs.kubeflow:8333.")
    return {"serving.kserve.io/s3-endpoint": parsed.netloc,
            "serving.kserve.io/s3-usehttps": "1" if parsed.scheme == "https" else "0",
            "serving.kserve.io/s3-region": region,
            "serving.kserve.io/s3-verifyssl": "1" if verify_ssl else "0"}


def deployer_role(cfg: ServingConfig) -> dict:
    """What the pipeline may do in the serving namespace, and nothing more.

    InferenceServices (create and change them), the Knative revisions KServe makes (read: which
    registry version each serves), and read access to the predictor's own ServiceAccount and
    Secret, by name, so that a missing one is reported before anything is deployed.
    """
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pet-classifier-deployer", "labels": dict(APP_LABELS)},
            "rules": [{"apiGroups": [KSERVE_GROUP], "resources": ["inferenceservices"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch",
                                 "delete"]},
                      {"apiGroups": [KSERVE_GROUP], "resources": ["inferenceservices/status"],
                       "verbs": ["get"]},
                      {"apiGroups": [KNATIVE_GROUP], "resources": ["revisions"],
                       "verbs": ["get", "list"]},
                      {"apiGroups": [""], "resources": ["serviceaccounts"],
                       "resourceNames": [cfg.service_account], "verbs": ["get"]},
                      {"apiGroups": [""], "resources": ["secrets"],
                       "resourceNames": [cfg.s3_secret], "verbs": ["get"]}]}


def _role_binding(role: str, service_account: str, namespace: str) -> dict:
    """A RoleBinding named as the Role ``role`` it grants to ``service_account``."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": role, "labels": dict(APP_LABELS)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": service_account,
                          "namespace": namespace}]}


def deployer_binding(pipeline_service_account: str, pipeline_namespace: str) -> dict:
    """Binds the Role to the service account pipeline pods run as (see :data:`INSTALL_MODES`)."""
    return _role_binding("pet-classifier-deployer", pipeline_service_account,
                         pipeline_namespace)


def trainer_role() -> dict:
    """What the pipeline may do with Kubeflow Trainer TrainJobs, and nothing more.

    The final training's task (``mlops compile --trainer-nodes N``) creates a TrainJob, reads
    it until its ``Complete`` or ``Failed`` condition, and deletes it
    (components/train/trainjob.py); ``list`` and ``watch`` let a person follow the runs with
    the same service account. The TrainJob's nodes are started by Trainer's controller, under
    its own service account, so no rule on pods or Jobs is needed here.
    """
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pet-classifier-trainer", "labels": dict(APP_LABELS)},
            "rules": [{"apiGroups": [TRAINER_GROUP], "resources": [TRAINER_RESOURCE],
                       "verbs": ["get", "list", "watch", "create", "delete"]}]}


def trainer_binding(pipeline_service_account: str, pipeline_namespace: str) -> dict:
    """Binds :func:`trainer_role` to the service account pipeline pods run as."""
    return _role_binding("pet-classifier-trainer", pipeline_service_account,
                         pipeline_namespace)


def authorization_policy(gateway_namespaces: tuple[str, ...] = ("istio-system",
                                                                 "knative-serving")) -> dict:
    """Lets the pipeline's probes reach the predictor in a multi-user Kubeflow namespace.

    KFP runs pipeline pods without an Istio sidecar, so they reach a revision's URL through
    Knative's cluster-local gateway (in ``istio-system``) or its activator (in
    ``knative-serving``), and the profile's ``ns-owner-access-istio`` policy denies that
    ("RBAC: access denied"). This admits exactly those two hops, to this model's pods only, and
    only for the model's API and metrics (GET/POST ``/v1/models/*``, ``/v2/models/*``,
    ``/metrics``). Limit: a sidecar-less caller has no identity, so any pod that goes through
    the same gateway reaches those paths too.
    """
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "pet-classifier-probes", "labels": dict(APP_LABELS)},
            "spec": {"action": "ALLOW",
                     "selector": {"matchLabels": {"app.kubernetes.io/name": "pet-classifier"}},
                     "rules": [{"from": [{"source": {"namespaces": list(gateway_namespaces)}}],
                                "to": [{"operation": {
                                    "methods": ["GET", "POST"],
                                    "paths": ["/v1/models/*", "/v2/models/*", "/v2/health/*",
                                              "/metrics"]}}]}]}}


#: The label KServe gives every pod of an InferenceService, valued with its name
#: (kserve/kserve pkg/constants/constants.go, InferenceServicePodLabelKey).
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"
#: The name Knative gives the user container's port in every revision's pods, whatever the
#: container declares (knative/serving pkg/apis/serving/v1/revision_helpers.go, UserPortName).
KNATIVE_USER_PORT = "user-port"


def pod_monitor(model: str = "pet-classifier", interval: str = "30s") -> dict:
    """The PodMonitor by which the Prometheus Operator scrapes the production predictor.

    It selects the pods of the InferenceService ``model`` (every revision's, so a canary's
    and the stable one's requests count together, as production's traffic) and scrapes
    ``/metrics`` on the predictor's own port, where ``components/serve`` exports the series
    the PrometheusRule (``components/govern/rules.py``) reads. The test InferenceService
    (``<model>-test``) is not scraped.
    """
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": f"{model}-predictor",
                         "labels": {**APP_LABELS, "app.kubernetes.io/component": "predictor"}},
            "spec": {"selector": {"matchLabels": {ISVC_POD_LABEL: model}},
                     "podMetricsEndpoints": [{"port": KNATIVE_USER_PORT, "path": "/metrics",
                                              "interval": interval}]}}


# Environments the release manages, and how each InferenceService is sized.
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
    (The tests also validate against the CRD's own schema; this check runs in the pipeline,
    before anything is applied.)

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


@dataclass(frozen=True)
class ManifestOptions:
    """What ``mlops manifests`` asks for; the defaults match a stock Kubeflow 2.16 install.

    Attributes:
        namespace: Where the InferenceServices run, per install mode (None: the mode's
            default, ``kubeflow-user-example-com`` for multi-user, ``kubeflow`` standalone).
        pipeline_service_account: The service account pipeline pods run as (None: the
            mode's, ``default-editor`` or ``pipeline-runner``).
        pipeline_namespace: Its namespace (None: the serving namespace in multi-user,
            ``kubeflow`` standalone).
        s3_endpoint: The S3 endpoint the predictor downloads packages from.
        predictor_service_account / s3_secret: Names of the predictor's ServiceAccount and its
            S3 Secret (the pipeline's ``predictor_service_account``/``predictor_secret``).
        gateway_namespaces: Namespaces of the hops the probes come through (multi-user).
        pod_monitor: Whether the base holds the predictor's PodMonitor (needs the
            Prometheus Operator's CRDs in the cluster).
    """

    namespace: str | None = None
    pipeline_service_account: str | None = None
    pipeline_namespace: str | None = None
    s3_endpoint: str = DEFAULT_S3_ENDPOINT
    predictor_service_account: str = ServingConfig.service_account
    s3_secret: str = ServingConfig.s3_secret
    gateway_namespaces: tuple[str, ...] = ("istio-system", "knative-serving")
    pod_monitor: bool = True

    def for_mode(self, mode: str) -> dict:
        """The concrete namespace and subject of an install mode."""
        if mode not in INSTALL_MODES:
            raise ValueError(f"Unknown install mode {mode!r}. Expect one of "
                             f"{', '.join(INSTALL_MODES)}.")
        spec = INSTALL_MODES[mode]
        namespace = self.namespace or spec["namespace"]
        return {"namespace": namespace,
                "pipeline_service_account": self.pipeline_service_account
                or spec["pipeline_service_account"],
                "pipeline_namespace": self.pipeline_namespace or spec["pipeline_namespace"]
                or namespace,
                "istio": spec["istio"]}


def render_manifests(options: ManifestOptions = ManifestOptions(),
                     extra_base_files: Mapping[str, str] | None = None) -> dict[str, str]:
    """``manifests/`` as path -> text: a kustomize base and one overlay per install mode.

    The base holds the predictor's ServiceAccount, the deployer Role and RoleBinding, the
    trainer Role and RoleBinding (Kubeflow Trainer TrainJobs of ``--trainer-nodes``), the
    predictor's PodMonitor (unless ``options.pod_monitor`` is false), and the S3 Secret (generated by kustomize from ``base/s3.env``, not in the repository;
    ``s3.env.example`` lists the keys), so no secret value is ever committed. Each overlay sets
    the namespace and the RoleBinding's subject of its install mode; ``multi-user`` adds the
    AuthorizationPolicy. ``reference/`` holds the InferenceServices the release creates, for
    reading only: they are in no kustomization, so applying ``manifests/`` never changes what
    production serves.

    Args:
        options: The values of the install (namespace, service accounts, S3 endpoint, ...).
        extra_base_files: More files of the base, name -> YAML text, listed in its
            kustomization after the generated ones. The caller renders them: ``mlops
            manifests`` passes the governance step's PrometheusRule
            (``prometheus-rule.yaml``, from ``components/govern/rules.py``).
    """
    import yaml

    extra_base_files = dict(extra_base_files or {})
    if options.pod_monitor:
        extra_base_files = {"podmonitor.yaml": _yaml(pod_monitor(ServingConfig.name)),
                            **extra_base_files}
    cfg = ServingConfig(service_account=options.predictor_service_account,
                        s3_secret=options.s3_secret)
    files = {
        "base/serviceaccount.yaml": _yaml(service_account(cfg)),
        "base/rbac.yaml": _yaml(deployer_role(cfg),
                                deployer_binding("PIPELINE_SERVICE_ACCOUNT", "PIPELINE_NAMESPACE"),
                                trainer_role(),
                                trainer_binding("PIPELINE_SERVICE_ACCOUNT", "PIPELINE_NAMESPACE")),
        "base/s3.env.example": "# Copy to s3.env (git-ignored) and fill in; kustomize makes the "
                               "Secret from it.\nAWS_ACCESS_KEY_ID=\nAWS_SECRET_ACCESS_KEY=\n",
        "base/kustomization.yaml": yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": ["serviceaccount.yaml", "rbac.yaml", *extra_base_files],
            "secretGenerator": [{"name": cfg.s3_secret, "envs": ["s3.env"],
                                 "options": {"disableNameSuffixHash": True,
                                             "labels": dict(APP_LABELS),
                                             "annotations": s3_secret_annotations(
                                                 options.s3_endpoint)}}],
        }, sort_keys=False),
        "overlays/multi-user/authorizationpolicy.yaml": _yaml(
            authorization_policy(options.gateway_namespaces)),
    }
    for mode in INSTALL_MODES:
        values = options.for_mode(mode)
        subject = [{"op": "replace", "path": "/subjects/0",
                    "value": {"kind": "ServiceAccount",
                              "name": values["pipeline_service_account"],
                              "namespace": values["pipeline_namespace"]}}]
        files[f"overlays/{mode}/kustomization.yaml"] = yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": values["namespace"],
            "resources": ["../../base"] + (["authorizationpolicy.yaml"] if values["istio"]
                                           else []),
            "patches": [{"target": {"group": "rbac.authorization.k8s.io", "version": "v1",
                                    "kind": "RoleBinding", "name": binding},
                         "patch": yaml.safe_dump(subject, sort_keys=False)}
                        for binding in ("pet-classifier-deployer", "pet-classifier-trainer")],
        }, sort_keys=False)
    namespace = options.for_mode("multi-user")["namespace"]
    for env, spec in ENVIRONMENTS.items():
        isvc_cfg = ServingConfig(name=cfg.name + spec["suffix"], namespace=namespace,
                                 service_account=cfg.service_account, s3_secret=cfg.s3_secret,
                                 storage_uri="s3://mlops/registry/pet-classifier/versions/1",
                                 min_replicas=spec["min_replicas"],
                                 max_replicas=spec["max_replicas"])
        files[f"reference/inferenceservice-{env}.yaml"] = (
            "# For reading only: the release creates and changes this InferenceService (here "
            "as it\n# looks after deploying registry version 1). It is in no kustomization.\n"
            + _yaml(inference_service(isvc_cfg, registry_version=1)))
    files.update({f"base/{name}": text for name, text in extra_base_files.items()})
    header = ("# Generated by `mlops manifests` (components/common/k8s.py): change values with "
              "its options\n# (--namespace, --s3-endpoint, --pipeline-service-account, ...), "
              "not by hand.\n")
    return {path: (text if path.endswith(".example") else header + text)
            for path, text in files.items()}
