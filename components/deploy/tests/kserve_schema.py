"""An InferenceService schema built from the ``kserve`` package's generated models.

When KServe's CRD file is not on this machine (see ``kube_standin.crd_path``), the stand-in
for the API server and ``tests/test_manifests.py`` validate InferenceServices against this
schema instead. It has the shape of a CRD's ``openAPIV3Schema`` (``type``, ``properties``,
``additionalProperties``, ``items``, ``required``, ``enum``, ``pattern``, ``minimum`` …), so
the one validator in ``kube_standin`` reads both, and it is *structural* like every v1 CRD
schema: a field it does not list is unknown, pruned by default and rejected with
``fieldValidation=Strict`` (k8s.io/apiextensions-apiserver pkg/apiserver/schema/pruning).

Where each part comes from:

* Fields and their types: the models' ``openapi_types`` (Python attribute -> type) and
  ``attribute_map`` (Python attribute -> JSON name). KServe's models (``kserve.models``, 0.20)
  nest the Kubernetes client's (``kubernetes.client.models``: ``V1Container``, ``V1Volume``
  …) by name. Types ``str``/``int``/``float``/``bool`` map to string/integer/number/boolean,
  ``list[T]`` to arrays, ``dict(str, T)`` to maps.
* Required fields: a model's setter refuses ``None`` for a required field when client-side
  validation is on (the generator emits that check from the OpenAPI ``required`` list);
  :func:`required_fields` asks each setter.
* What the models cannot say, each with its source:

  - ``object`` attributes of the Kubernetes models are ``IntOrString`` (ports, ``maxSurge``):
    ``x-kubernetes-int-or-string`` as controller-gen writes it for ``intstr.IntOrString``.
  - Resource quantities (``ResourceQuantity``, KServe's ``V1beta1MetricQuantity``, and the
    ``str`` maps/fields the Kubernetes client generates for ``resource.Quantity``, listed in
    :data:`QUANTITY_FIELDS`): an integer or a string in the Quantity grammar of
    k8s.io/apimachinery pkg/api/resource/quantity.go.
  - Enums from KServe's ``+kubebuilder:validation:Enum`` markers (pkg/apis/serving/v1beta1:
    ``LoggerType``, ``ScaleMetric``, ``MetricTargetType``, the metric source types and
    backends) and the few other markers on fields the release touches, in
    :data:`CONSTRAINTS`.
  - ``metadata`` (``V1ObjectMeta``) is ``type: object`` as in every CRD: the API server
    validates object metadata itself, not through the schema.
  - ``status`` is left open: the status subresource means a write to the main resource never
    changes it, and the package's status models type Knative's URL and time values as
    objects though they marshal as strings (knative.dev/pkg/apis ``URL``, ``VolatileTime``).
  - KServe edits its generated CRD before release (:func:`as_released`): no ``required`` on
    the components' fields, no ``ephemeralContainers`` on them, probe ports optional.

Limits against the CRD: the ``kubernetes`` client pinned here (30.1, Kubernetes 1.30) is older
than the Kubernetes API KServe 0.20 builds against, so core-type fields added since
(``Container.restartPolicyRules``, ``Lifecycle.stopSignal``, ``EnvVarSource.fileKeyRef``,
``ResourceClaim.request``, image volumes …) are unknown here and ``PodResourceClaim.source``
(removed in 1.31) is still known; a few ``required`` lists the CRD keeps (a framework spec's
container ``name`` inside ``spec.canary``) are not; ``format`` (int32/int64) and defaults are
not modelled. ``test_kserve_schema.py`` compares this schema with the CRD whenever the CRD
file is present and fails on any other difference.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
import sys

ROOT = "V1beta1InferenceService"

# Kubernetes resource.Quantity (k8s.io/apimachinery pkg/api/resource/quantity.go):
#   <signedNumber><suffix>; suffix: binary SI (Ki … Ei), decimal SI (n u m "" k M G T P E),
#   or a decimal exponent (e|E<signedNumber>).
_NUMBER = r"(\+|-)?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
QUANTITY_PATTERN = rf"^{_NUMBER}([KMGTPE]i|[numkMGTPE]|[eE]{_NUMBER})?$"
QUANTITY = {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}
INT_OR_STRING = {"x-kubernetes-int-or-string": True}

# Type names the kserve generator gives types of other API groups, and their names in the
# Kubernetes client (the Go types k8s.io/api/apps/v1 and autoscaling/v2).
ALIASES = {
    "K8sIoApiAppsV1DeploymentStrategy": "V1DeploymentStrategy",
    "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior": "V2HorizontalPodAutoscalerBehavior",
}
# Named types that are not objects on the wire.
NAMED_SCALARS = {
    "ResourceQuantity": QUANTITY,
    "V1beta1MetricQuantity": QUANTITY,  # pkg/apis/serving/v1beta1/metric_quantity.go
    "V1ObjectMeta": {"type": "object"},
}
# (model, attribute) whose values the Kubernetes client generates as ``str`` but which are
# resource.Quantity in k8s.io/api/core/v1 (ResourceList is map[ResourceName]Quantity).
QUANTITY_FIELDS = {
    ("V1ResourceRequirements", "limits"), ("V1ResourceRequirements", "requests"),
    ("V1VolumeResourceRequirements", "limits"), ("V1VolumeResourceRequirements", "requests"),
    ("V1EmptyDirVolumeSource", "size_limit"), ("V1ResourceFieldSelector", "divisor"),
}
# (model, attribute) left open (any value); see the module's docstring.
OPEN_FIELDS = {("V1beta1InferenceService", "status")}
# (model, attribute) -> schema keywords, from KServe's kubebuilder markers
# (pkg/apis/serving/v1beta1/component.go, inference_service.go, predictor.go).
_SCALE_METRIC = {"enum": ["cpu", "memory", "concurrency", "rps"]}
_TARGET_TYPE = {"enum": ["Utilization", "Value", "AverageValue"]}
CONSTRAINTS = {
    ("V1beta1LoggerSpec", "mode"): {"enum": ["all", "request", "response"]},
    **{(spec, "scale_metric"): _SCALE_METRIC
       for spec in ("V1beta1PredictorSpec", "V1beta1ExplainerSpec", "V1beta1TransformerSpec",
                    "V1beta1ComponentExtensionSpec")},
    **{(spec, "scale_metric_type"): _TARGET_TYPE
       for spec in ("V1beta1PredictorSpec", "V1beta1ExplainerSpec", "V1beta1TransformerSpec",
                    "V1beta1ComponentExtensionSpec")},
    ("V1beta1MetricTarget", "type"): _TARGET_TYPE,
    ("V1beta1MetricsSpec", "type"): {"enum": ["Resource", "External", "PodMetric"]},
    ("V1beta1ResourceMetricSource", "name"): {"enum": ["cpu", "memory"]},
    ("V1beta1ExternalMetrics", "backend"): {"enum": ["prometheus", "graphite"]},
    ("V1beta1PodMetrics", "backend"): {"enum": ["opentelemetry"]},
    ("V1beta1PredictorSpec", "name"): {"pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$"},
    ("V1beta1CanarySpec", "traffic_percent"): {"minimum": 0, "maximum": 100},
    ("V1beta1StorageUri", "uri"): {"minLength": 1},
    ("V1beta1StorageUri", "mount_path"): {"pattern": "^/.*", "maxLength": 255},
    **{(spec, "storage_uris"): {"minItems": 1}
       for spec in ("V1beta1PredictorSpec", "V1beta1ExplainerSpec", "V1beta1TransformerSpec")},
}
_SCALARS = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
            "datetime": "string", "date": "string"}


@functools.lru_cache(maxsize=1)
def model_classes() -> dict[str, type]:
    """Every generated model class by name: KServe's (including those its ``models``
    package does not re-export) and the Kubernetes client's."""
    import kserve.models
    import kubernetes.client.models

    classes: dict[str, type] = {}
    for package in (kserve.models, kubernetes.client.models):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for name, obj in vars(module).items():
                if inspect.isclass(obj) and obj.__module__ == module.__name__ and \
                        hasattr(obj, "openapi_types"):
                    classes.setdefault(name, obj)
    return classes


def required_fields(cls: type) -> list[str]:
    """The attributes whose setter refuses ``None`` with client-side validation on."""
    config = sys.modules[cls.__module__].Configuration()  # the one the model's module imports
    config.client_side_validation = True
    blank = object.__new__(cls)
    blank.local_vars_configuration = config
    required = []
    for attr in cls.openapi_types:
        try:
            setattr(blank, attr, None)
        except ValueError:
            required.append(attr)
    return required


class SchemaBuilder:
    """Builds the schema of a model class, each class once (shared sub-schemas, cycles
    closed by reference)."""

    def __init__(self):
        self.classes = model_classes()
        self.built: dict[str, dict] = {}
        self.unresolved: set[str] = set()

    def of_type(self, spec: str) -> dict:
        spec = spec.strip()
        if m := re.fullmatch(r"list\[(.+)\]", spec):
            return {"type": "array", "items": self.of_type(m.group(1))}
        if m := re.fullmatch(r"dict\(str, ?(.+)\)", spec):
            return {"type": "object", "additionalProperties": self.of_type(m.group(1))}
        if spec in _SCALARS:
            return {"type": _SCALARS[spec]}
        if spec == "object":
            return dict(INT_OR_STRING)
        return self.of_model(spec)

    def of_model(self, name: str) -> dict:
        name = ALIASES.get(name, name)
        if name in NAMED_SCALARS:
            return dict(NAMED_SCALARS[name])
        if name in self.built:
            return self.built[name]
        cls = self.classes.get(name)
        if cls is None:
            # A type the packages reference but do not define: accept any value, and say so.
            self.unresolved.add(name)
            return {"x-kubernetes-preserve-unknown-fields": True}
        schema: dict = {"type": "object", "properties": {}}
        self.built[name] = schema
        for attr, type_spec in cls.openapi_types.items():
            if (name, attr) in OPEN_FIELDS:
                prop = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            elif (name, attr) in QUANTITY_FIELDS:
                prop = self._quantity_like(type_spec)
            else:
                prop = self.of_type(type_spec)
            if (name, attr) in CONSTRAINTS:
                prop = {**prop, **CONSTRAINTS[(name, attr)]}
            schema["properties"][cls.attribute_map[attr]] = prop
        required = [cls.attribute_map[a] for a in required_fields(cls)]
        if required:
            schema["required"] = required
        return schema

    @staticmethod
    def _quantity_like(type_spec: str) -> dict:
        if type_spec.startswith("dict("):
            return {"type": "object", "additionalProperties": dict(QUANTITY)}
        return dict(QUANTITY)


def build_schema(root: str = ROOT) -> tuple[dict, set[str]]:
    """The schema of ``root`` and the referenced type names no package defines."""
    builder = SchemaBuilder()
    schema = builder.of_model(root)
    if root == ROOT:
        schema = as_released(schema)
    return schema, builder.unresolved


def as_released(schema: dict) -> dict:
    """The edits KServe's ``make manifests`` makes to the generated CRD before release (its
    Makefile's yq steps), applied to a copy: on each component (``spec.predictor``,
    ``spec.explainer``, ``spec.transformer``) no field has ``required`` (so a framework spec
    needs no container ``name``), ``ephemeralContainers`` is gone, and probes' ``httpGet`` and
    ``tcpSocket`` need no ``port`` (Knative sets it)."""
    out = _own(schema)
    spec = _own(out["properties"]["spec"])
    out["properties"]["spec"] = spec
    spec["properties"] = dict(spec["properties"])
    for comp_name in ("predictor", "explainer", "transformer"):
        comp = _own(spec["properties"][comp_name])
        spec["properties"][comp_name] = comp
        comp["properties"].pop("ephemeralContainers", None)
        for field, sub in list(comp["properties"].items()):
            sub = _own(sub)
            sub.pop("required", None)
            if field == "containers":
                sub["items"] = item = _own(sub["items"])
                _probe_ports_optional(item, ("livenessProbe", "readinessProbe"), ("httpGet",))
            else:
                _probe_ports_optional(sub, ("livenessProbe", "readinessProbe"),
                                      ("httpGet", "tcpSocket"))
            comp["properties"][field] = sub
    return out


def _own(schema: dict) -> dict:
    """A shallow copy with its own ``properties`` (sub-schemas are shared between uses)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = dict(out["properties"])
    return out


def _probe_ports_optional(schema: dict, probes: tuple, actions: tuple) -> None:
    for probe in probes:
        if probe not in schema.get("properties", {}):
            continue
        schema["properties"][probe] = p = _own(schema["properties"][probe])
        for action in actions:
            if action in p["properties"]:
                p["properties"][action] = a = _own(p["properties"][action])
                a.pop("required", None)


@functools.lru_cache(maxsize=1)
def inference_service_schema() -> dict:
    """The InferenceService schema built from the installed ``kserve`` models (once)."""
    return build_schema()[0]
