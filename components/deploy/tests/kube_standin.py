"""A stand-in for the Kubernetes API with KServe 0.20 and Knative Serving behind it.

There is no cluster on this machine. ``KServeTarget`` talks to this server over HTTP with the
real ``kubernetes`` client, and the server applies the rules that decide what a release does
to traffic. Each rule names the code it models:

API server (kubernetes/kubernetes, staging/src/k8s.io/apiextensions-apiserver)
    * Custom resources are validated against a structural ``openAPIV3Schema``: types,
      ``required``, ``enum``, ``pattern``, lengths and bounds, ``x-kubernetes-int-or-string``,
      ``x-kubernetes-preserve-unknown-fields``. Unknown fields are pruned, or rejected with
      ``fieldValidation=Strict`` (pkg/apiserver/schema/pruning); null fields the schema does
      not make nullable are dropped first (schema/defaulting/prunenulls.go). The schema is KServe 0.20's
      own CRD when its file is here (:func:`crd_path`: ``$MLOPS_KSERVE_CRD``, else the
      steering repository's ``shared/kserve/`` beside this checkout), else the one
      ``kserve_schema.py`` builds from the ``kserve`` package's generated models.
    * ``PATCH`` with ``application/merge-patch+json`` (RFC 7386) or
      ``application/json-patch+json`` (RFC 6902); strategic merge patch is refused for custom
      resources (415), as the API server does.
    * ``metadata.generation`` increases when anything outside ``metadata`` and ``status``
      changes; ``resourceVersion`` on every write; ``PUT`` with a stale one is a 409.

KServe controller, Knative (``Serverless``/``Knative``) mode (kserve/kserve@v0.20.0; paths
under pkg/, controller = controller/v1beta1/inferenceservice/)
    * Deployment mode: ``status.deploymentMode`` first, then the
      ``serving.kserve.io/deploymentMode`` annotation, then the default, ``Standard`` in 0.20
      (controller/controller.go:156, controller/utils/utils.go:224 GetDeploymentMode,
      constants/constants.go:571 ParseDeploymentMode). ``Standard`` is not modelled: the
      stand-in records the mode and creates no revisions.
    * Knative mode without Knative Serving installed (no ``serving.knative.dev/v1`` Service
      in API discovery, utils/utils.go:216-233 IsCrdAvailable): a ``ServerlessModeRejected``
      warning event, the mode and the initial conditions in the status, nothing else, never
      retried (controller/controller.go:239-256). ``KubeStandIn(knative=False)``.
    * Revision template: the InferenceService's annotations minus
      ``serviceAnnotationDisallowedList`` and its labels plus the predictor's labels minus
      ``serviceLabelDisallowedList``, the storage URI annotation, the autoscaling bounds, and
      the predictor's pod spec (controller/components/predictor.go:99-172
      buildPredictorResources, :498 buildObjectMeta; reconcilers/knative/ksvc_reconciler.go:88-224
      createKnativeService).
    * Traffic: with ``canaryTrafficPercent`` set and a ``latestRolledoutRevision`` known,
      ``latest`` (``latestRevision: true``) gets the percent and ``prev`` (the latest
      rolled-out revision, by name) the rest when it is below 100; otherwise one ``latest``
      target gets 100 (ksvc_reconciler.go:132-164). The ``latest`` tag needs
      ``serving.kserve.io/enable-tag-routing: "true"`` (:139, :160).
    * Status (apis/serving/v1beta1/inference_service_status.go:567-636 PropagateStatus): for
      the ``latestRevision`` target resolved to the latest ready revision,
      ``latestRolledoutRevision`` moves to it when it has 100% (the old one becomes
      ``previousRolledoutRevision``, :585-590), and moves back to
      ``previousRolledoutRevision`` when it is already the rolled-out one, is also the latest
      created, has less than 100% and the route gives its revision 100% in all (:591-604);
      ``status.observedGeneration`` is the Knative Service's, not the InferenceService's
      (:635).

Knative Serving (knative/serving@knative-v1.21.1, the ``knative.dev/serving v0.48.1`` KServe
v0.20.0 pins; paths under pkg/)
    * A new Revision ``<configuration>-<generation:05d>`` whenever the Configuration's
      template changes, never for a traffic change (reconciler/configuration/
      resources/revision.go:42, reconciler/configuration/configuration.go:66-96).
    * The Configuration's latest ready revision is the newest ready one; a newer revision
      that is not ready (yet, or ever) leaves it where it was (configuration.go:98-157).
    * A ``latestRevision`` target resolves to the Configuration's latest *ready* revision
      (reconciler/route/traffic/traffic.go:354-377), not to the latest created one: until a
      new revision is ready, "latest" is the one before it, whatever that one is.
    * A target that cannot be resolved (no ready revision, a named revision not ready) fails
      the whole traffic configuration, and the route keeps the traffic it had
      (traffic.go:320-350, 379-397; reconciler/route/route.go:121-131, 468-481).
    * Routing state (reconciler/labeler/metasync.go:33-99): every revision named in the
      route's status or spec traffic, and the latest created revision of a configuration
      with a ``latestRevision`` target, is ``active`` — a 0% target too (:41); the others
      become ``reserve`` once the route is resolved (:85-93). A reserve revision is
      unreachable (reconciler/revision/resources/pa.go:74-78) and its autoscaler ignores
      ``min-scale`` (apis/autoscaling/v1alpha1/pa_lifecycle.go:87-95): it scales to zero.
      The stand-in keeps the label ``serving.knative.dev/routingState`` and
      :meth:`KubeStandIn.pods` (``min-scale`` while active, 0 in reserve).
    * Tagged targets get URLs ``http://<tag>-<service>.<namespace>.<domain>``.

Kubeflow Trainer v2.3.0 (``trainjob_standin.py``, each rule cited there)
    * ``trainer.kubeflow.org/v1alpha1`` TrainJobs validated against Trainer's CRD; the
      controller's ``Complete``/``Failed`` conditions, ``jobsStatus`` and
      ``activeDeadlineSeconds``.

Revisions become ready after a delay, or never, as the test sets per registry version
(:meth:`KubeStandIn.behave`). Every traffic split the route ever applied is kept in
:attr:`KubeStandIn.traffic_history`, so a test can ask how much traffic a revision ever got
(:meth:`KubeStandIn.max_traffic`, from a :meth:`KubeStandIn.mark` on).

With :meth:`KubeStandIn.enable_data_plane`, each revision is a real model server process
(``components.serve.server`` on 127.0.0.1, serving the package of its ``STORAGE_URI``), ready
when it says so, and an ingress on 127.0.0.1 stands in for Knative's gateway: a URL
``<ingress>/<host>`` reaches the host Knative would serve, a tag host its revision, the
service host a revision drawn by the route's percentages. Responses carry
``X-Standin-Revision`` so a test can count where requests went.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonpatch
import yaml

from components.deploy.tests import trainjob_standin
from tests.support import free_port

CRD_NAME = "serving.kserve.io_inferenceservices.yaml.gz"
SHARED_CRD = Path(__file__).resolve().parents[3].parent / "shared" / "kserve" / CRD_NAME


def crd_path() -> Path | None:
    """KServe 0.20's InferenceService CRD file (config/crd/full/
    serving.kserve.io_inferenceservices.yaml of the v0.20.0 tag, gzip-compressed), if this
    machine has it: ``$MLOPS_KSERVE_CRD``, else the steering repository's
    ``shared/kserve/serving.kserve.io_inferenceservices.yaml.gz`` beside this checkout.
    None when neither exists; the repository keeps no copy.

    Raises:
        FileNotFoundError: ``$MLOPS_KSERVE_CRD`` is set but names no file.
    """
    named = os.environ.get("MLOPS_KSERVE_CRD", "")
    if named:
        if not Path(named).is_file():
            raise FileNotFoundError(f"MLOPS_KSERVE_CRD={named!r} is not a file: point it at "
                                    f"KServe's {CRD_NAME} or unset it to use the schema "
                                    "built from the kserve package's models")
        return Path(named)
    return SHARED_CRD if SHARED_CRD.is_file() else None


DOMAIN = "example.com"
STORAGE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"
# pkg/constants/constants.go ServiceAnnotationDisallowedList (the 0.20 defaults) and
# RevisionTemplateLabelDisallowedList.
ANNOTATION_DISALLOWED = ("autoscaling.knative.dev/min-scale", "autoscaling.knative.dev/max-scale",
                         STORAGE_URI_ANNOTATION,
                         "kubectl.kubernetes.io/last-applied-configuration",
                         "serving.kserve.io/model-format")
LABEL_DISALLOWED = ("networking.knative.dev/visibility",)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


# ------------------------------------------------------------------------------------------
# Structural schema validation
# ------------------------------------------------------------------------------------------


def load_crd_schema(path: Path | None = None) -> dict:
    """The ``openAPIV3Schema`` of the served version of a CRD file (parsed once). With no
    path, the InferenceService schema the stand-in uses (:func:`inference_service_schema`):
    the CRD when this machine has it, else the one built from the kserve package."""
    if path is None:
        return inference_service_schema()[0]
    return _parse_crd(Path(path))


@functools.lru_cache(maxsize=2)
def _parse_crd(path: Path) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    crd = yaml.load(data, Loader=loader)  # noqa: S506 - the C-accelerated *safe* loader
    served = [v for v in crd["spec"]["versions"] if v.get("served")]
    return served[0]["schema"]["openAPIV3Schema"]


def inference_service_schema(source: str = "auto") -> tuple[dict, str]:
    """The InferenceService schema and where it came from.

    Args:
        source: ``"crd"`` (the CRD file, which must exist), ``"models"`` (built from the
            ``kserve`` package's models) or ``"auto"`` (the CRD when :func:`crd_path` finds
            it, else the models).
    """
    if source not in ("auto", "crd", "models"):
        raise ValueError(f"Unknown schema source {source!r}: use 'auto', 'crd' or 'models'")
    path = crd_path() if source in ("auto", "crd") else None
    if path is not None:
        return _parse_crd(path), f"KServe's CRD ({path})"
    if source == "crd":
        raise FileNotFoundError(f"No InferenceService CRD here: set MLOPS_KSERVE_CRD or put "
                                f"{CRD_NAME} in {SHARED_CRD.parent}")
    from components.deploy.tests.kserve_schema import inference_service_schema as built

    return built(), "the kserve package's models"


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def validate(value, schema: dict, path: str = "", unknown: list | None = None) -> tuple:
    """Validates ``value``; returns (pruned value, errors, unknown field paths)."""
    errors: list[str] = []
    unknown = [] if unknown is None else unknown
    out = _check(value, schema, path or "<root>", errors, unknown)
    return out, errors, unknown


def _check(value, schema, path, errors, unknown):
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{path}: Invalid value: null")
        return value
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            errors.append(f"{path}: Invalid value: must be an integer or a string")
        elif isinstance(value, str) and "pattern" in schema and \
                not re.search(schema["pattern"], value):
            errors.append(f"{path}: Invalid value: {value!r} does not match the pattern")
        return value
    kind = schema.get("type")
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: Invalid value: {value!r}: must be of type integer")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: Invalid value: {value!r}: must be of type number")
    elif kind in _TYPES and not isinstance(value, _TYPES[kind]):
        errors.append(f"{path}: Invalid value: {type(value).__name__}: must be of type {kind}")
        return value
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: Unsupported value: {value!r}: supported values: "
                      f"{schema['enum']}")
    if kind == "string" and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: Invalid value: {value!r} does not match {schema['pattern']}")
    if kind == "string" and "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{path}: Too long: may not be more than {schema['maxLength']}")
    if kind == "string" and "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{path}: Invalid value: {value!r}: should be at least "
                      f"{schema['minLength']} chars long")
    if kind == "array" and "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{path}: Invalid value: {len(value)}: should have at least "
                      f"{schema['minItems']} items")
    if kind in ("integer", "number") and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: Invalid value: {value}: must be >= {schema['minimum']}")
    if kind in ("integer", "number") and "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: Invalid value: {value}: must be <= {schema['maximum']}")
    if kind == "array":
        items = schema.get("items", {})
        return [_check(v, items, f"{path}[{i}]", errors, unknown) for i, v in enumerate(value)]
    if kind == "object":
        for req in schema.get("required", []):
            if req not in value:
                errors.append(f"{path}.{req}: Required value")
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and extra is None:
            return value  # type: object alone, or preserve-unknown-fields
        out = {}
        for key, v in value.items():
            sub = props[key] if props is not None and key in props else \
                extra if isinstance(extra, dict) else None
            if v is None and sub is not None and not sub.get("nullable"):
                # A null field the schema does not allow is dropped, or defaulted where the
                # schema has a default, before validation (schema/defaulting/prunenulls.go
                # PruneNonNullableNullsWithoutDefaults); a null list item is not.
                if "default" in sub:
                    out[key] = copy.deepcopy(sub["default"])
                continue
            if sub is not None:
                out[key] = _check(v, sub, f"{path}.{key}", errors, unknown)
            elif schema.get("x-kubernetes-preserve-unknown-fields"):
                out[key] = v
            else:
                unknown.append(f"{path}.{key}")
        return out
    return value


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------


class KubeStandIn:
    """The API server, the KServe controller and Knative Serving, in one process.

    Args:
        tick_s: How often the controllers reconcile.
        default_deployment_mode: KServe's ``deploy.defaultDeploymentMode`` (0.20: Standard).
        schema_source: Which InferenceService schema the API server validates against
            (:func:`inference_service_schema`).
        knative: Whether Knative Serving is installed (KServe's default Standard install has
            none: the ``serving.knative.dev`` API is absent).
    """

    ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
    REVISION = ("serving.knative.dev", "v1", "revisions")

    def __init__(self, tick_s: float = 0.02, default_deployment_mode: str = "Standard",
                 schema_source: str = "auto", knative: bool = True):
        self.schema, self.schema_source = inference_service_schema(schema_source)
        self.tick_s = tick_s
        self.default_mode = default_deployment_mode
        self.knative = knative
        self.events: list[dict] = []  # (namespace, object, type, reason, message)
        self.lock = threading.RLock()
        self.objects: dict[tuple, dict] = {}  # (plural, namespace, name) -> object
        self.ksvcs: dict[tuple, dict] = {}  # (namespace, isvc name) -> Knative service model
        self.behaviour: dict[str, float | None] = {}  # registry version -> ready delay/None
        self.default_ready_s = 0.1
        self.traffic_history: list[tuple[float, str, dict[str, int]]] = []
        self.requests: list[tuple[str, str]] = []
        self._rv = 0
        self._package_for = None  # data plane: storage URI -> package folder
        self._procs: dict[str, tuple[subprocess.Popen, int, str]] = {}
        self._ingress: ThreadingHTTPServer | None = None
        self.ingress_url = ""
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        #: Kubeflow Trainer's TrainJobs and their controller (trainjob_standin.py)
        self.trainjobs = trainjob_standin.TrainJobRules(self)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    code, payload = standin.handle(method, self.path, body,
                                                   self.headers.get("Content-Type", ""))
                except ApiError as exc:
                    code, payload = exc.code, {"kind": "Status", "apiVersion": "v1",
                                               "status": "Failure", "message": exc.message,
                                               "reason": exc.reason, "code": exc.code}
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_PATCH(self):
                self._serve("PATCH")

            def do_PUT(self):
                self._serve("PUT")

            def do_DELETE(self):
                self._serve("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.timeout = 5
        serve = threading.Thread(target=self._server.serve_forever, daemon=True)
        control = threading.Thread(target=self._control_loop, daemon=True)
        self._threads = [serve, control]
        for t in self._threads:
            t.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._stop.set()
        self.trainjobs.stop_all()
        for server in (self._server, self._ingress):
            if server is not None:
                server.shutdown()
                server.server_close()
        for t in self._threads:
            t.join(5)
        for rev in list(self._procs):
            self._kill(rev)

    def _kill(self, revision: str) -> None:
        proc, _, _ = self._procs.pop(revision)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def enable_data_plane(self, package_for, log_dir: Path) -> str:
        """Serves every revision with a real model server; returns the ingress URL."""
        self._package_for = package_for
        self._log_dir = Path(log_dir)
        standin = self

        class Ingress(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method):
                import requests

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                host, _, rest = self.path.lstrip("/").partition("/")
                revision = standin.pick_revision(host)
                port = standin._procs.get(revision, (None, None))[1] if revision else None
                if port is None:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                r = requests.request(method, f"http://127.0.0.1:{port}/{rest}", data=body,
                                     headers={"Content-Type": self.headers.get(
                                         "Content-Type", "application/json")}, timeout=30)
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("Content-Type", "text/plain"))
                self.send_header("Content-Length", str(len(r.content)))
                self.send_header("X-Standin-Revision", revision)
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self._ingress = ThreadingHTTPServer(("127.0.0.1", 0), Ingress)
        self._ingress.timeout = 30
        t = threading.Thread(target=self._ingress.serve_forever, daemon=True)
        t.start()
        self._threads.append(t)
        self.ingress_url = f"http://127.0.0.1:{self._ingress.server_address[1]}"
        return self.ingress_url

    def pick_revision(self, host: str) -> str | None:
        """The revision a request to ``host`` reaches, as Knative's ingress routes it."""
        with self.lock:
            for (ns, name), ksvc in self.ksvcs.items():
                route = [t for t in ksvc["route"] if t["percent"] or t.get("tag")]
                for t in ksvc["route"]:
                    if t.get("tag") and host == f"{t['tag']}-{ksvc['name']}.{ns}.{DOMAIN}":
                        return t["revisionName"]
                if host in (f"{name}.{ns}.{DOMAIN}", f"{ksvc['name']}.{ns}.{DOMAIN}"):
                    weights = [t["percent"] for t in route]
                    if not sum(weights):
                        return None
                    return random.choices([t["revisionName"] for t in route], weights)[0]
        return None

    def _url(self, host: str) -> str:
        return f"{self.ingress_url}/{host}" if self.ingress_url else f"http://{host}"

    def _start_server(self, rev_name: str, template: dict, service: str) -> None:
        """A model server for the revision, with the container's environment and the
        variables Knative adds to every revision's container (knative/serving
        knative-v1.21.1 pkg/reconciler/revision/resources/env_var.go:31-42, deploy.go:265):
        ``K_REVISION`` (the revision's name), ``K_CONFIGURATION`` and ``K_SERVICE``."""
        container = template["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        name = next(a.split("=", 1)[1] for a in container.get("args", [])
                    if a.startswith("--name="))
        package = self._package_for(env["STORAGE_URI"])
        port = free_port()
        self._log_dir.mkdir(parents=True, exist_ok=True)
        knative = {"K_REVISION": rev_name, "K_CONFIGURATION": service, "K_SERVICE": service}
        with open(self._log_dir / f"{rev_name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "components.serve.server", f"--package-dir={package}",
                 f"--name={name}", f"--port={port}", "--host=127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **{k: str(v) for k, v in env.items()
                                      if v is not None and k != "STORAGE_URI"}, **knative})
        self._procs[rev_name] = (proc, port, name)

    def _data_plane_ready(self) -> None:
        """Marks revisions ready whose model server says so (checked outside the lock)."""
        import requests

        with self.lock:
            pending = [(rev, port, name) for rev, (_, port, name) in self._procs.items()
                       if self.objects.get(("revisions", self._ns_of(rev), rev), {})
                       .get("status", {}).get("conditions", [{}])[0].get("status") ==
                       "Unknown"]
        for rev, port, name in pending:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/v1/models/{name}", timeout=0.5)
                ok = r.status_code == 200 and r.json().get("ready")
            except (requests.RequestException, ValueError):
                ok = False
            if ok:
                with self.lock:
                    obj = self.objects.get(("revisions", self._ns_of(rev), rev))
                    if obj is not None:
                        obj["status"]["conditions"][0]["status"] = "True"

    def _ns_of(self, rev: str) -> str:
        return next((n for (p, n, r) in self.objects if p == "revisions" and r == rev), "")

    def behave(self, version: int, ready_after_s: float | None) -> None:
        """Revisions serving registry ``version`` become ready after a delay, or never."""
        self.behaviour[str(version)] = ready_after_s

    # -- seeding core objects (what `kubectl apply -k manifests/overlays/...` would create) --

    def add_core(self, plural: str, namespace: str, obj: dict) -> None:
        with self.lock:
            self.objects[(plural, namespace, obj["metadata"]["name"])] = copy.deepcopy(obj)

    # -- REST ------------------------------------------------------------------------------

    _PATHS = [
        (re.compile(r"^/apis/([^/]+)/([^/]+)/?$"), "discovery"),
        (re.compile(r"^/api/v1/namespaces/([^/]+)/(serviceaccounts|secrets)/([^/]+)$"), "core"),
        (re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices"
                    r"(?:/([^/]+))?(/status)?$"), "isvc"),
        (re.compile(r"^/apis/serving\.knative\.dev/v1/namespaces/([^/]+)/revisions"
                    r"(?:/([^/]+))?$"), "revision"),
        (re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs"
                    r"(?:/([^/]+))?(/status)?$"), "trainjob"),
    ]

    def handle(self, method: str, raw_path: str, body: bytes, content_type: str):
        url = urlparse(raw_path)
        query = parse_qs(url.query)
        self.requests.append((method, url.path))
        m, kind = next(((pattern.match(url.path), k) for pattern, k in self._PATHS
                        if pattern.match(url.path)), (None, None))
        if m is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested "
                                            f"resource ({url.path})")
        if kind == "revision" and not self.knative:
            raise ApiError(404, "NotFound", f"the server could not find the requested "
                                            f"resource ({url.path})")
        with self.lock:
            if kind == "discovery":
                return 200, self._discovery(*m.groups())
            if kind == "trainjob":
                return self.trainjobs.handle(method, *m.groups(), body, query.get(
                    "fieldValidation", [""])[0] == "Strict")
            if kind == "core":
                if method != "GET":
                    raise ApiError(405, "MethodNotAllowed", "read-only in the stand-in")
                ns, plural, name = m.groups()
                return 200, self._get(plural, ns, name)
            if kind == "revision":
                ns, name = m.groups()
                if method != "GET":
                    raise ApiError(405, "MethodNotAllowed", "revisions are made by Knative")
                if name:
                    return 200, self._get("revisions", ns, name)
                wanted = dict(term.split("=", 1) for term in
                              query.get("labelSelector", [""])[0].split(",") if "=" in term)
                return 200, {"kind": "RevisionList", "apiVersion": "serving.knative.dev/v1",
                             "items": [self._get(p, n, r) for (p, n, r), o in
                                       sorted(self.objects.items())
                                       if p == "revisions" and n == ns and
                                       all(o["metadata"]["labels"].get(k) == v
                                           for k, v in wanted.items())]}
            ns, name, status = m.groups()
            strict = query.get("fieldValidation", [""])[0] == "Strict"
            if method == "GET" and name:
                return 200, self._get("inferenceservices", ns, name)
            if method == "POST" and not name:
                return 201, self._create(ns, json.loads(body), strict)
            if method == "PATCH" and name and not status:
                return 200, self._patch(ns, name, body, content_type, strict)
            if method == "PUT" and name and not status:
                return 200, self._replace(ns, name, json.loads(body), strict)
            if method == "DELETE" and name:
                obj = self._get("inferenceservices", ns, name)
                del self.objects[("inferenceservices", ns, name)]
                self.ksvcs.pop((ns, name), None)
                for key in [k for k, o in self.objects.items() if k[0] == "revisions" and
                            k[1] == ns and o["metadata"]["labels"].get(
                                "serving.kserve.io/inferenceservice") == name]:
                    del self.objects[key]
                    if key[2] in self._procs:
                        self._kill(key[2])
                return 200, obj
        raise ApiError(405, "MethodNotAllowed", f"{method} {url.path}")

    _API_RESOURCES = {
        ("serving.kserve.io", "v1beta1"): [("inferenceservices", "InferenceService")],
        ("serving.knative.dev", "v1"): [("services", "Service"),
                                         ("configurations", "Configuration"),
                                         ("revisions", "Revision"), ("routes", "Route")],
        ("trainer.kubeflow.org", "v1alpha1"): [("trainjobs", "TrainJob")],
    }

    def _discovery(self, group: str, version: str) -> dict:
        """``GET /apis/<group>/<version>``: the APIResourceList of an installed API."""
        resources = self._API_RESOURCES.get((group, version))
        if resources is None or (group == "serving.knative.dev" and not self.knative):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}",
                "resources": [{"name": plural, "singularName": kind.lower(), "namespaced": True,
                               "kind": kind, "verbs": ["get", "list", "create", "update",
                                                       "patch", "delete"]}
                              for plural, kind in resources]}

    def _get(self, plural: str, ns: str, name: str) -> dict:
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _admit(self, obj: dict, strict: bool) -> dict:
        """Schema validation and pruning, as for any custom resource."""
        if obj.get("apiVersion") != "serving.kserve.io/v1beta1" or \
                obj.get("kind") != "InferenceService":
            raise ApiError(400, "BadRequest", "expected serving.kserve.io/v1beta1 "
                                              f"InferenceService, got {obj.get('apiVersion')} "
                                              f"{obj.get('kind')}")
        name = (obj.get("metadata") or {}).get("name", "")
        if not _DNS_LABEL.match(name or "") or len(name) > 63:
            raise ApiError(422, "Invalid", f"metadata.name: Invalid value: {name!r}: a DNS-1123 "
                                           "label is expected")
        meta = obj.pop("metadata")
        status = obj.pop("status", None)
        pruned, errors, unknown = validate(obj, self.schema)
        if status is not None:
            pruned["status"] = status
        pruned["metadata"] = meta
        if errors:
            raise ApiError(422, "Invalid", f'InferenceService.serving.kserve.io "{name}" is '
                                           f"invalid: {'; '.join(errors)}")
        if unknown and strict:
            raise ApiError(400, "BadRequest", "strict decoding error: unknown field "
                           + ", ".join(f'"{u.removeprefix("<root>.")}"' for u in unknown))
        return pruned

    def _create(self, ns: str, obj: dict, strict: bool) -> dict:
        obj = self._admit(obj, strict)
        meta = obj["metadata"]
        meta.setdefault("namespace", ns)
        if meta["namespace"] != ns:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the "
                                              "namespace of the request")
        key = ("inferenceservices", ns, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'inferenceservices "{meta["name"]}" already '
                                                 "exists")
        meta.update(generation=1, resourceVersion=self._next_rv(), uid=str(uuid.uuid4()),
                    creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        obj.pop("status", None)
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def _store_update(self, ns: str, name: str, old: dict, new: dict, strict: bool) -> dict:
        new = self._admit(new, strict)
        new["metadata"]["name"], new["metadata"]["namespace"] = name, ns
        for keep in ("uid", "creationTimestamp"):
            new["metadata"][keep] = old["metadata"][keep]
        new["status"] = old.get("status", {})  # the main resource never writes status
        spec_of = {k: v for k, v in new.items() if k not in ("metadata", "status")}
        old_spec = {k: v for k, v in old.items() if k not in ("metadata", "status")}
        new["metadata"]["generation"] = old["metadata"]["generation"] + (spec_of != old_spec)
        new["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[("inferenceservices", ns, name)] = new
        return copy.deepcopy(new)

    def _patch(self, ns: str, name: str, body: bytes, content_type: str, strict: bool) -> dict:
        old = self._get("inferenceservices", ns, name)
        patch = json.loads(body)
        ctype = content_type.split(";")[0].strip()
        if ctype == "application/merge-patch+json":
            new = merge_patch(copy.deepcopy(old), patch)
        elif ctype == "application/json-patch+json":
            try:
                new = jsonpatch.apply_patch(old, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiError(422, "Invalid",
                               f"the JSON patch could not be applied: {exc}") from exc
        else:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media "
                           f"types include: application/json-patch+json, "
                           f"application/merge-patch+json, application/apply-patch+yaml "
                           f"(got {ctype!r})")
        return self._store_update(ns, name, old, new, strict)

    def _replace(self, ns: str, name: str, obj: dict, strict: bool) -> dict:
        old = self._get("inferenceservices", ns, name)
        rv = obj.get("metadata", {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified; please apply your "
                                            "changes to the latest version and try again")
        return self._store_update(ns, name, old, obj, strict)

    # -- controllers -----------------------------------------------------------------------

    def _control_loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            if self._package_for is not None:
                self._data_plane_ready()
            with self.lock:
                for key in [k for k in self.objects if k[0] == "inferenceservices"]:
                    self.reconcile(key[1], key[2])
                self.trainjobs.reconcile_all()

    def reconcile(self, ns: str, name: str) -> None:
        isvc = self.objects[("inferenceservices", ns, name)]
        status = isvc.setdefault("status", {})
        ann = isvc["metadata"].get("annotations") or {}
        mode = status.get("deploymentMode") or ann.get("serving.kserve.io/deploymentMode") \
            or self.default_mode
        mode = {"Serverless": "Knative", "RawDeployment": "Standard"}.get(mode, mode)
        status["deploymentMode"] = mode
        if mode != "Knative":
            return  # raw Deployments have no revisions or traffic split: not modelled
        if not self.knative:
            # controller.go:239-256: an event, the initial conditions, and a terminal error.
            status.setdefault("conditions", [{"type": "Ready", "status": "Unknown"}])
            event = {"namespace": ns, "object": name, "type": "Warning",
                     "reason": "ServerlessModeRejected",
                     "message": "It is not possible to use Knative deployment mode when "
                                "Knative Services are not available"}
            if event not in self.events:
                self.events.append(event)
            return
        ksvc = self.ksvcs.setdefault((ns, name), {
            "name": f"{name}-predictor", "generation": 0, "config_generation": 0,
            "template": None, "traffic_spec": None, "latest_created": "", "latest_ready": "",
            "route": [], "observed": 0})
        comp = status.setdefault("components", {}).setdefault("predictor", {})
        template = self._template(isvc)
        traffic_spec = self._traffic_spec(isvc, comp)
        # ksvc_reconciler.go:258-318 Reconcile: update the Knative Service when it differs.
        if template != ksvc["template"] or traffic_spec != ksvc["traffic_spec"]:
            ksvc["generation"] += 1
            if template != ksvc["template"]:
                # configuration.go:66-96, resources/revision.go:42: a new Revision for each
                # new Configuration generation.
                ksvc["config_generation"] += 1
                ksvc["template"] = template
                rev_name = f"{ksvc['name']}-{ksvc['config_generation']:05d}"
                version = template["metadata"]["labels"].get(
                    "mlops.pet-park.io/registry-version", "")
                delay = self.behaviour.get(version, self.default_ready_s)
                if self._package_for is not None and delay is not None:
                    self._start_server(rev_name, template, ksvc["name"])
                    delay = None  # ready when the model server says so
                self.objects[("revisions", ns, rev_name)] = {
                    "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
                    "metadata": {"name": rev_name, "namespace": ns,
                                 "labels": {**template["metadata"]["labels"],
                                            "serving.knative.dev/service": ksvc["name"],
                                            "serving.knative.dev/configurationGeneration":
                                                str(ksvc["config_generation"])},
                                 "annotations": dict(template["metadata"]["annotations"])},
                    "spec": copy.deepcopy(template["spec"]),
                    "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
                    "_ready_at": None if delay is None else time.monotonic() + delay}
                ksvc["latest_created"] = rev_name
            ksvc["traffic_spec"] = traffic_spec
        self._revisions_progress(ns)
        self._route(ns, name, ksvc)
        # Knative records the generation it reconciled whether or not the route is ready.
        ksvc["observed"] = ksvc["generation"]
        self._propagate(isvc, ksvc, comp)

    def _template(self, isvc: dict) -> dict:
        meta, pred = isvc["metadata"], isvc["spec"]["predictor"]
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                       if k not in ANNOTATION_DISALLOWED}
        if pred.get("logger"):  # predictor.go:104 addLoggerAnnotations
            annotations.update({"serving.kserve.io/enable-logger": "true",
                                "serving.kserve.io/logger-sink-url": pred["logger"].get("url", ""),
                                "serving.kserve.io/logger-mode": pred["logger"].get("mode",
                                                                                     "all")})
        env = {e["name"]: e.get("value") for e in pred["containers"][0].get("env", [])}
        if env.get("STORAGE_URI"):  # predictor.go:117 addStorageInitializerAnnotations
            annotations[STORAGE_URI_ANNOTATION] = env["STORAGE_URI"]
        for key, field in (("autoscaling.knative.dev/min-scale", "minReplicas"),
                           ("autoscaling.knative.dev/max-scale", "maxReplicas")):
            if field in pred:  # ksvc_reconciler.go:104-111 SetAutoScalingAnnotations
                annotations[key] = str(pred[field])
        labels = {**(meta.get("labels") or {}), **(pred.get("labels") or {}),
                  "serving.kserve.io/inferenceservice": meta["name"], "component": "predictor"}
        labels = {k: v for k, v in labels.items() if k not in LABEL_DISALLOWED}
        pod = {k: copy.deepcopy(v) for k, v in pred.items()
               if k in ("containers", "serviceAccountName", "volumes", "nodeSelector",
                        "tolerations", "affinity", "securityContext", "imagePullSecrets")}
        return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod}

    @staticmethod
    def _traffic_spec(isvc: dict, comp: dict) -> list[dict]:
        """ksvc_reconciler.go:132-164: the traffic KServe asks Knative for."""
        pred = isvc["spec"]["predictor"]
        percent = pred.get("canaryTrafficPercent")
        tagged = (isvc["metadata"].get("annotations") or {}).get(
            "serving.kserve.io/enable-tag-routing") == "true"
        rolled = comp.get("latestRolledoutRevision", "")
        if percent is not None and rolled:
            targets = [{"latestRevision": True, "percent": percent}]
            if tagged:
                targets[0]["tag"] = "latest"
            if percent < 100:
                targets.append({"revisionName": rolled, "latestRevision": False,
                                "percent": 100 - percent, "tag": "prev"})
            return targets
        target = {"latestRevision": True, "percent": 100}
        if tagged:
            target["tag"] = "latest"
        return [target]

    def _revisions_progress(self, ns: str) -> None:
        now = time.monotonic()
        for (plural, n, _), rev in self.objects.items():
            if plural != "revisions" or n != ns:
                continue
            cond = rev["status"]["conditions"][0]
            if cond["status"] == "Unknown" and rev["_ready_at"] is not None and \
                    now >= rev["_ready_at"]:
                cond["status"] = "True"

    def _ready(self, ns: str, rev_name: str) -> bool:
        rev = self.objects.get(("revisions", ns, rev_name))
        return bool(rev) and rev["status"]["conditions"][0]["status"] == "True"

    def _route(self, ns: str, name: str, ksvc: dict) -> None:
        # configuration.go:98-157: the newest ready revision is the latest ready one.
        revs = sorted(r for (p, n, r) in self.objects if p == "revisions" and n == ns and
                      r.startswith(ksvc["name"] + "-"))
        ready = [r for r in revs if self._ready(ns, r)]
        ksvc["latest_ready"] = ready[-1] if ready else ""
        resolved = []
        ksvc["route_ready"] = False
        for t in ksvc["traffic_spec"]:
            if t.get("latestRevision"):
                if not ksvc["latest_ready"]:
                    break  # traffic.go:359-361 errUnreadyConfiguration
                # traffic.go:354-377: "latest" is the latest *ready* revision.
                target = {**t, "revisionName": ksvc["latest_ready"]}
            else:
                if not self._ready(ns, t["revisionName"]):
                    break  # traffic.go:395-397 errUnreadyRevision
                target = dict(t)
            if target.get("tag"):
                target["url"] = self._url(f"{target['tag']}-{ksvc['name']}.{ns}.{DOMAIN}")
            resolved.append(target)
        else:
            # route.go:468-491: only a fully resolved configuration replaces the traffic;
            # otherwise the route keeps what it had.
            if resolved != ksvc["route"]:
                split: dict[str, int] = {}
                for t in resolved:
                    split[t["revisionName"]] = split.get(t["revisionName"], 0) + t["percent"]
                self.traffic_history.append((time.monotonic(), name, split))
            ksvc["route"] = resolved
            ksvc["route_ready"] = True
        self._routing_state(ns, ksvc)

    def _routing_state(self, ns: str, ksvc: dict) -> None:
        """metasync.go:33-99: which revisions Knative keeps reachable, and so their pods."""
        active = {t["revisionName"] for t in ksvc["route"]}  # status traffic, 0% too (:41)
        active |= {t["revisionName"] for t in ksvc["traffic_spec"] if t.get("revisionName")}
        if ksvc["latest_created"] and any(t.get("latestRevision")
                                          for t in ksvc["traffic_spec"]):
            active.add(ksvc["latest_created"])  # :77-81
        for (p, n, r), rev in self.objects.items():
            if p != "revisions" or n != ns or not r.startswith(ksvc["name"] + "-"):
                continue
            labels = rev["metadata"]["labels"]
            if r in active:
                labels["serving.knative.dev/routingState"] = "active"
            elif ksvc["route_ready"]:  # :85-93: cleared once the route is resolved
                labels["serving.knative.dev/routingState"] = "reserve"

    def _propagate(self, isvc: dict, ksvc: dict, comp: dict) -> None:
        """inference_service_status.go:567-636 PropagateStatus, for the predictor."""
        ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
        comp["latestCreatedRevision"] = ksvc["latest_created"]
        traffic = ksvc["route"]
        totals: dict[str, int] = {}
        for t in traffic:
            totals[t["revisionName"]] = totals.get(t["revisionName"], 0) + t["percent"]
        for t in traffic:
            if t["revisionName"] == ksvc["latest_ready"] and t.get("latestRevision"):
                if comp.get("latestRolledoutRevision") != ksvc["latest_ready"]:  # :585-590
                    if t["percent"] == 100:
                        comp["previousRolledoutRevision"] = comp.get("latestRolledoutRevision",
                                                                     "")
                        comp["latestRolledoutRevision"] = ksvc["latest_ready"]
                elif ksvc["latest_ready"] == ksvc["latest_created"] and t["percent"] < 100 \
                        and totals.get(t["revisionName"]) == 100 and \
                        comp.get("previousRolledoutRevision"):  # :591-604, rolled back
                    comp["latestRolledoutRevision"] = comp["previousRolledoutRevision"]
        comp["latestReadyRevision"] = ksvc["latest_ready"]
        created_ready = self._ready(ns, ksvc["latest_created"])
        routed = bool(traffic) and ksvc.get("route_ready", False)
        ready = created_ready and routed
        host = f"{ksvc['name']}.{ns}.{DOMAIN}"
        if ready:
            comp["url"] = self._url(host)
            comp["address"] = {"url": f"http://{ksvc['name']}.{ns}.svc.cluster.local"}
            isvc["status"]["url"] = self._url(f"{name}.{ns}.{DOMAIN}")
            isvc["status"]["address"] = {"url": f"http://{name}.{ns}.svc.cluster.local"}
        comp["traffic"] = copy.deepcopy(traffic)
        cond = "True" if ready else "Unknown"
        isvc["status"]["conditions"] = [
            {"type": "PredictorReady", "status": cond},
            {"type": "LatestDeploymentReady", "status": "True" if created_ready else "Unknown"},
            {"type": "RoutesReady", "status": "True" if routed else "Unknown"},
            {"type": "Ready", "status": cond}]
        isvc["status"]["observedGeneration"] = ksvc["observed"]

    # -- what tests ask --------------------------------------------------------------------

    def max_traffic(self, isvc_name: str, revision: str, since: float = 0.0,
                    after: int | None = None) -> int:
        """The largest share of traffic ``revision`` ever had in a route applied since
        ``since`` (a ``time.monotonic()``), or after the :meth:`mark` ``after``."""
        with self.lock:
            history = self.traffic_history if after is None else self.traffic_history[after:]
            return max([split.get(revision, 0) for t, name, split in history
                        if name == isvc_name and t >= since] or [0])

    def mark(self) -> int:
        """A point in the route history, for :meth:`max_traffic`."""
        with self.lock:
            return len(self.traffic_history)

    def shares(self, isvc_name: str, revision: str, after: int = 0) -> list[int]:
        """Every share ``revision`` had, route by route, after the mark ``after``."""
        with self.lock:
            return [split.get(revision, 0) for _, name, split in self.traffic_history[after:]
                    if name == isvc_name]

    def routing_state(self, ns: str, revision: str) -> str:
        """``active`` or ``reserve`` (Knative's label on the revision), or "" before any."""
        with self.lock:
            return self.objects[("revisions", ns, revision)]["metadata"]["labels"].get(
                "serving.knative.dev/routingState", "")

    def pods(self, ns: str, revision: str) -> int:
        """The pods Knative keeps for a revision: its ``min-scale`` while active, none in
        reserve (pa.go:74-78, pa_lifecycle.go:87-95)."""
        with self.lock:
            rev = self.objects[("revisions", ns, revision)]
            if rev["metadata"]["labels"].get("serving.knative.dev/routingState") != "active":
                return 0
            return int(rev["metadata"]["annotations"].get("autoscaling.knative.dev/min-scale",
                                                          "0"))

    def revisions(self, ns: str) -> list[str]:
        with self.lock:
            return sorted(r for (p, n, r) in self.objects if p == "revisions" and n == ns)

    def routed(self, ns: str, name: str) -> dict[str, int]:
        """Revision -> share of traffic now, for the revisions that get any."""
        with self.lock:
            split: dict[str, int] = {}
            for t in self.ksvcs[(ns, name)]["route"]:
                split[t["revisionName"]] = split.get(t["revisionName"], 0) + t["percent"]
            return {rev: share for rev, share in split.items() if share}


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target
