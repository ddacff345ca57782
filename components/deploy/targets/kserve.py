"""The KServe deployment target: InferenceServices on Kubernetes.

:class:`KServeTarget` applies the InferenceService objects of :mod:`components.common.k8s`
through the Kubernetes API: Knative splits the traffic, tag routing gives each revision its own
URL for the analysis. Which rule of KServe or Knative each step relies on is listed in
``components/deploy/README.md`` ("On KServe") with its source line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace

from components.common import k8s, kubeapi
from components.common.service import wait_until
from components.common.storage import StorageError
from components.deploy.targets.base import (
    Deployment,
    DeploymentError,
    DeploymentTarget,
    Revision,
    _check_env,
    _check_percent,
)
from components.monitor.window import read_window, role_counts

logger = logging.getLogger(__name__)

#: What to install when the cluster has no Knative Serving (KServe's default, Standard mode).
KNATIVE_MISSING = (
    "Knative Serving is not installed in this cluster: the API server lists no "
    "serving.knative.dev/v1 Service. KServe would accept the InferenceService, record "
    "ServerlessModeRejected and start nothing (kserve v0.20.0 pkg/controller/v1beta1/"
    "inferenceservice/controller.go:239-256). This target's canaries are Knative revisions: "
    "install Knative Serving and a networking layer for it (https://knative.dev/docs/install/, "
    "as in KServe's Serverless installation), then run this again. On a cluster that stays "
    "in KServe's Standard (RawDeployment) mode there is no canary to drive: release with "
    "--target local instead.")


def _api_client():
    """A Kubernetes API client: in-cluster (the pipeline's pod) or ``~/.kube/config``."""
    try:
        return kubeapi.api_client()
    except kubeapi.KubeConfigMissing as exc:
        raise DeploymentError("No Kubernetes configuration: run inside the cluster or set "
                              f"up ~/.kube/config ({exc}).") from exc


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class _View:
    """One read of an InferenceService, parsed so that no shape of it raises.

    Attributes:
        percent: ``spec.predictor.canaryTrafficPercent`` (None when absent).
        created / ready / rolled / previous: the predictor's latest created, latest ready,
            latest rolled-out and previous rolled-out revisions ("" when absent).
        traffic: The route's targets as KServe copies them (``status.components.predictor``).
        split: Revision -> its share of the traffic (0% targets included).
        tags: Tag -> its target.
    """

    mode: str
    percent: int | None
    created: str
    ready: str
    rolled: str
    previous: str
    traffic: tuple
    split: dict
    tags: dict
    conditions: dict
    has_predictor: bool

    @classmethod
    def of(cls, obj) -> _View:
        st = _dict(_dict(obj).get("status"))
        comp = _dict(_dict(st.get("components")).get("predictor"))
        traffic = tuple(t for t in comp.get("traffic") or [] if isinstance(t, dict))
        split: dict[str, int] = {}
        for t in traffic:
            rev = str(t.get("revisionName") or "")
            split[rev] = split.get(rev, 0) + _int(t.get("percent"))
        percent = _dict(_dict(_dict(obj).get("spec")).get("predictor")).get(
            "canaryTrafficPercent")
        return cls(mode=str(st.get("deploymentMode") or ""),
                   percent=None if percent is None else _int(percent),
                   created=str(comp.get("latestCreatedRevision") or ""),
                   ready=str(comp.get("latestReadyRevision") or ""),
                   rolled=str(comp.get("latestRolledoutRevision") or ""),
                   previous=str(comp.get("previousRolledoutRevision") or ""),
                   traffic=traffic, split=split,
                   tags={t["tag"]: t for t in traffic if t.get("tag")},
                   conditions={c.get("type"): c.get("status") for c in st.get("conditions") or []
                               if isinstance(c, dict)},
                   has_predictor=bool(comp))

    def latest_is(self, revision: str, percent: int) -> bool:
        """The ``latestRevision`` target resolves to ``revision`` with ``percent``."""
        return any(t.get("latestRevision") and t.get("revisionName") == revision and
                   _int(t.get("percent")) == percent for t in self.traffic)

    def only(self, revision: str) -> bool:
        """``revision`` has all the traffic; any other target is at 0%."""
        return bool(revision) and self.split.get(revision) == 100 and \
            all(share == 0 for rev, share in self.split.items() if rev != revision)


def _template_changed(patch: dict) -> bool:
    """Whether a :func:`~components.common.k8s.template_patch` makes a new revision (it
    changes more than ``canaryTrafficPercent``)."""
    pred = _dict(_dict(patch.get("spec")).get("predictor"))
    return bool(patch.get("metadata")) or bool(set(pred) - {"canaryTrafficPercent"})


def _knative_spec(obj: dict) -> str:
    """What of an InferenceService reaches the Knative Service: the predictor (with a
    ``canaryTrafficPercent`` of 100 and none alike: both give one ``latest`` target at 100%,
    ksvc_reconciler.go:134-164), its labels and annotations."""
    pred = dict(_dict(_dict(obj.get("spec")).get("predictor")))
    if pred.get("canaryTrafficPercent") == 100:
        pred.pop("canaryTrafficPercent")
    meta = _dict(obj.get("metadata"))
    return json.dumps([pred, meta.get("labels"), meta.get("annotations")], sort_keys=True)


class KServeTarget(DeploymentTarget):
    """InferenceServices in a namespace, in KServe's Knative (``Serverless``) mode.

    The registry must be in object storage the cluster reads (``s3://…``): the storage URI of
    a version is its registry folder, which KServe's storage initializer downloads to
    ``/mnt/models``.

    **State lives in the cluster.** Which registry version a Knative revision serves is its
    label :data:`~components.common.k8s.REGISTRY_VERSION_LABEL`, and the configuration it was
    released with (image, ServiceAccount, Secret, resources, logger) its annotation
    :data:`~components.common.k8s.SERVING_CONFIG_ANNOTATION`; both change only with the
    revision template. Which revision is stable and which is the canary is KServe's status
    (``latestRolledoutRevision``, ``latestCreatedRevision``) and ``canaryTrafficPercent``.

    **The release state machine.** In Knative a ``latestRevision`` target resolves to the
    latest *ready* revision, so until a new revision is ready "latest" means the one before
    it — a rolled-back canary, if that is the newest ready one. Hence:

    * every new template goes in at ``canaryTrafficPercent: 0`` (``latest`` gets nothing,
      ``prev``, the stable revision, everything) unless the latest ready revision is the
      stable one and the change is a deploy at 100%; the share is raised only once the new
      revision is the latest ready one;
    * rollback is ``canaryTrafficPercent: 0`` at once, then the rejected template is replaced
      by a fresh revision of the stable version and configuration, which takes the traffic
      once ready; the rejected revision is then in no route and Knative scales it to zero;
    * a canary never starts on a template that is already a rolled-back revision;
    * every wait after a change requires the status of a newer Knative generation
      (``status.observedGeneration`` is the Knative Service's, never compared with the
      InferenceService's ``metadata.generation``).

    Args:
        config: The shape of the InferenceService a release creates (image, service account,
            Secret, resources, logger); its name and namespace are replaced by
            ``model_name``/``namespace``. None: the configuration recorded with what is
            deployed is read back (governance, the command line), and KServe's defaults only
            where nothing is recorded.
        api_client: A ``kubernetes.client.ApiClient``; by default the in-cluster configuration
            or ``~/.kube/config``.
        cluster_local: Use the cluster-local addresses (the pipeline runs in the cluster);
            False for the external URLs, when driving a release from outside.
        poll_s: Pause between status reads while waiting.
        timeout_s: How long a change may take to show in the status before it counts as
            failed (a canary that never becomes ready is then rolled back).
    """

    GROUP, VERSION, PLURAL = k8s.KSERVE_GROUP, k8s.KSERVE_VERSION, "inferenceservices"

    @classmethod
    def open(cls, registry_uri: str, model_name: str, *, namespace: str = "",
             state_dir: str = "", config: k8s.ServingConfig | None = None) -> KServeTarget:
        if not namespace:
            raise DeploymentError("The kserve target needs a namespace.")
        return cls(registry_uri, model_name, namespace, config)

    def __init__(self, registry_uri: str, model_name: str, namespace: str,
                 config: k8s.ServingConfig | None = None, api_client=None,
                 cluster_local: bool = True, poll_s: float = 2.0, timeout_s: float = 600):
        super().__init__(registry_uri, model_name)
        if not registry_uri.startswith("s3://"):
            raise DeploymentError(f"KServe cannot read the registry at {registry_uri!r}: use an "
                                  "s3:// registry the cluster can reach.")
        import kubernetes

        self.namespace = namespace
        self.cluster_local = cluster_local
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.config = None if config is None else replace(config, namespace=namespace)
        self.api_client = api_client or _api_client()
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self._revision_versions: dict[str, int] = {}
        self._model_versions: dict[int, str] = {}
        self._checked: set[tuple[str, str]] = set()
        self._serving_checked = False

    # -- API calls -------------------------------------------------------------------------

    def _call(self, what: str, fn, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            try:
                message = json.loads(exc.body or "{}").get("message") or exc.reason
            except ValueError:
                message = exc.body or exc.reason
            hint = ""
            if exc.status == 403:
                hint = (" The pipeline's service account lacks the Role in "
                        "manifests/base/rbac.yaml: apply the overlay of your install mode "
                        "(manifests/overlays/multi-user or standalone).")
            raise DeploymentError(f"Could not {what} in namespace {self.namespace!r}: HTTP "
                                  f"{exc.status}: {message}.{hint}") from exc
        except (HTTPError, OSError) as exc:
            raise DeploymentError(f"Could not {what}: the Kubernetes API is unreachable "
                                  f"({exc}).") from exc

    def _get(self, environment: str) -> dict | None:
        name = self.served_name(environment)
        return self._call(f"read InferenceService {name}",
                          self.custom.get_namespaced_custom_object, self.GROUP, self.VERSION,
                          self.namespace, self.PLURAL, name)

    def _patch(self, environment: str, patch: dict):
        """Applies a merge patch; returns a guard for the wait: once the patch changed what
        KServe sends to Knative, the status must come from a newer Knative generation than
        before it (``status.observedGeneration``, inference_service_status.go:635)."""
        name = self.served_name(environment)
        before = self._get(environment) or {}
        observed = _int(_dict(before.get("status")).get("observedGeneration"))
        after = self._call(f"patch InferenceService {name}",
                           self.custom.patch_namespaced_custom_object, self.GROUP,
                           self.VERSION, self.namespace, self.PLURAL, name, patch,
                           field_validation="Strict")
        changed = _knative_spec(after or {}) != _knative_spec(before)

        def newer(obj) -> bool:
            return not changed or \
                _int(_dict(obj.get("status")).get("observedGeneration")) > observed
        return newer

    def _read_revision(self, revision: str) -> dict | None:
        return self._call(f"read Knative revision {revision}",
                          self.custom.get_namespaced_custom_object, k8s.KNATIVE_GROUP, "v1",
                          self.namespace, "revisions", revision)

    # -- prerequisites ---------------------------------------------------------------------

    def check_prerequisites(self, config: k8s.ServingConfig | None = None) -> None:
        """Fails early, saying what to install or apply: KServe and Knative Serving must be
        installed (else KServe rejects the Knative mode and starts nothing), and the
        predictor's ServiceAccount and S3 Secret must exist (else its pods never start)."""
        self._check_serving()
        cfg = config or self.config or k8s.ServingConfig()
        if (cfg.service_account, cfg.s3_secret) in self._checked:
            return
        checks = (("service account", cfg.service_account, self.core.read_namespaced_service_account),
                  ("S3 Secret", cfg.s3_secret, self.core.read_namespaced_secret))
        for what, name, read in checks:
            if self._call(f"read the predictor's {what} {name!r}", read, name,
                          self.namespace) is None:
                raise DeploymentError(
                    f"The predictor's {what} {name!r} does not exist in namespace "
                    f"{self.namespace!r}. Apply manifests/overlays/<install mode> for this "
                    "namespace first (mlops manifests --namespace … writes them), or pass the "
                    "names you use (predictor_service_account, predictor_secret).")
        self._checked.add((cfg.service_account, cfg.s3_secret))

    def _check_serving(self) -> None:
        """KServe and Knative Serving in API discovery, as KServe itself checks for Knative
        (pkg/utils/utils.go:216-233 IsCrdAvailable; discovery is open to every user)."""
        if self._serving_checked:
            return
        if self._call("read the KServe API", self.custom.get_api_resources, self.GROUP,
                      self.VERSION) is None:
            raise DeploymentError(
                "KServe is not installed in this cluster: the API server serves no "
                f"{self.GROUP}/{self.VERSION}. Install KServe 0.20 in its Serverless mode "
                "(with Knative Serving), then run this again.")
        found = self._call("read the Knative Serving API", self.custom.get_api_resources,
                           k8s.KNATIVE_GROUP, "v1")
        resources = getattr(found, "resources", None) or _dict(found).get("resources") or []
        kinds = {getattr(r, "kind", None) or _dict(r).get("kind") for r in resources}
        if "Service" not in kinds:
            raise DeploymentError(KNATIVE_MISSING)
        self._serving_checked = True

    # -- the configuration a release used --------------------------------------------------

    def _release_config(self, environment: str) -> k8s.ServingConfig:
        """The configuration of a new release: the one given, else the one the stable
        revision was released with, else the one recorded on the InferenceService, else
        KServe's defaults (nothing deployed yet, nothing given)."""
        if self.config is not None:
            return self.config
        obj = self._get(environment)
        rolled = _View.of(obj).rolled if obj else ""
        recorded = self._revision_config(rolled) if rolled else None
        if recorded is None and obj is not None:
            recorded = self._record(_dict(_dict(obj.get("metadata")).get("annotations")))
        if recorded is None:
            logger.warning("No serving configuration is recorded for %s in %s and none was "
                           "given: using the defaults (image %s)", self.served_name(environment),
                           self.namespace, k8s.DEFAULT_PREDICTOR_IMAGE)
            return k8s.ServingConfig(namespace=self.namespace)
        return recorded

    def _base_config(self) -> k8s.ServingConfig:
        return self.config or k8s.ServingConfig(namespace=self.namespace)

    def _record(self, annotations: dict) -> k8s.ServingConfig | None:
        text = annotations.get(k8s.SERVING_CONFIG_ANNOTATION)
        if not text:
            return None
        try:
            return replace(k8s.serving_config_from_record(text, self._base_config()),
                           namespace=self.namespace)
        except ValueError as exc:
            logger.warning("Ignoring an unreadable %s: %s", k8s.SERVING_CONFIG_ANNOTATION, exc)
            return None

    def _revision_config(self, revision: str) -> k8s.ServingConfig | None:
        """The configuration a revision was made with: its recorded annotation (KServe copies
        the InferenceService's annotations into the template, predictor.go:100-104), or, for
        a revision made before it was recorded, what its pod spec says."""
        rev = self._read_revision(revision) if revision else None
        if rev is None:
            return None
        meta = _dict(rev.get("metadata"))
        recorded = self._record(_dict(meta.get("annotations")))
        return recorded or self._config_from_pod(rev)

    def _config_from_pod(self, rev: dict) -> k8s.ServingConfig | None:
        spec = _dict(rev.get("spec"))
        containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
        if not containers or not containers[0].get("image"):
            return None
        c = containers[0]
        requests = _dict(_dict(c.get("resources")).get("requests"))
        env = {e.get("name"): e.get("value") for e in c.get("env") or [] if isinstance(e, dict)}
        secrets = [_dict(e.get("secretRef")).get("name") for e in c.get("envFrom") or []
                   if isinstance(e, dict)]
        ann = _dict(_dict(rev.get("metadata")).get("annotations"))
        base = self._base_config()
        return replace(base, image=c["image"],
                       service_account=spec.get("serviceAccountName") or base.service_account,
                       s3_secret=next((s for s in secrets if s), base.s3_secret),
                       cpu=str(requests.get("cpu") or base.cpu),
                       memory=str(requests.get("memory") or base.memory),
                       capture_uri=env.get("MLOPS_CAPTURE_URI") or "",
                       logger_url=ann.get("serving.kserve.io/logger-sink-url", "")
                       if ann.get("serving.kserve.io/enable-logger") == "true" else "")

    def _version_config(self, environment: str, version: int) -> k8s.ServingConfig | None:
        """The configuration the newest revision of ``version`` in ``environment`` was made
        with, if one is left."""
        found = self._call(
            f"list the Knative revisions of version {version}",
            self.custom.list_namespaced_custom_object, k8s.KNATIVE_GROUP, "v1", self.namespace,
            "revisions", label_selector=f"serving.kserve.io/inferenceservice="
                                        f"{self.served_name(environment)},"
                                        f"{k8s.REGISTRY_VERSION_LABEL}={int(version)}")
        names = sorted(_dict(_dict(item).get("metadata")).get("name") or ""
                       for item in _dict(found).get("items") or [])
        return self._revision_config(names[-1]) if names else None

    def _object(self, environment: str, version: int, config: k8s.ServingConfig) -> dict:
        spec = k8s.ENVIRONMENTS[environment]
        cfg = replace(config, name=self.served_name(environment), namespace=self.namespace,
                      storage_uri=self.registry.version_uri(self.model_name, version),
                      min_replicas=spec["min_replicas"], max_replicas=spec["max_replicas"])
        obj = k8s.inference_service(cfg, registry_version=version)
        k8s.validate_object(obj)  # the typed models; the API server checks the CRD schema
        return obj

    def _revision_version(self, revision: str) -> int | None:
        """The registry version a Knative revision serves (its label; revisions never change)."""
        if not revision:
            return None
        if revision not in self._revision_versions:
            rev = self._read_revision(revision)
            label = _dict(_dict(_dict(rev).get("metadata")).get("labels")).get(
                k8s.REGISTRY_VERSION_LABEL)
            if label is None or not str(label).isdigit():
                return None  # not (yet) a revision of a registry version
            self._revision_versions[revision] = int(label)
        return self._revision_versions[revision]

    def model_version(self, version: int) -> str:
        """The content id the predictor reports (``model_version``) for a registry version."""
        if version not in self._model_versions:
            try:
                meta = json.loads(self.registry.read_file(self.model_name, version,
                                                          "metadata.json"))
                self._model_versions[version] = str(meta.get("model_version", ""))
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("No model_version for %s version %d: %s", self.model_name,
                               version, exc)
                self._model_versions[version] = ""
        return self._model_versions[version]

    def _reachable(self, url: str) -> str:
        """A tagged revision URL as the pipeline's pods reach it.

        The status lists external URLs (``http://latest-<isvc>-predictor.<ns>.<domain>``);
        Knative also gives every tag route a Service in the namespace, reachable without the
        ingress as ``<tag>-<isvc>-predictor.<ns>.svc.cluster.local``.
        """
        if not self.cluster_local or not url:
            return url
        from urllib.parse import urlparse

        host = urlparse(url).hostname or ""
        return f"http://{host.split('.')[0]}.{self.namespace}.svc.cluster.local"

    # -- reading the state -----------------------------------------------------------------

    def _revision(self, name: str, url: str) -> Revision | None:
        version = self._revision_version(name)
        if version is None:
            return None
        return Revision(version, url, self.registry.version_uri(self.model_name, version),
                        {"revision": name, "model_version": self.model_version(version)})

    def _tag_url(self, view: _View, revision: str, *tags: str) -> str:
        for tag in tags:
            t = view.tags.get(tag) or {}
            if t.get("revisionName") == revision and t.get("url"):
                return self._reachable(str(t["url"]))
        return ""

    def status(self, environment: str) -> Deployment | None:
        """The environment as the controllers report it; any state they can produce gives a
        status or a :class:`DeploymentError`, never another exception.

        Besides the stable revision and the canary, ``stable.detail`` names a revision held
        at 0% (``held_revision``: the latest ready one when it is neither stable nor canary,
        e.g. a rolled-back canary not yet replaced) and one not ready yet
        (``pending_revision``), and ``traffic``, the route's share per revision.
        """
        obj = self._get(_check_env(environment))
        if obj is None:
            return None
        view = _View.of(obj)
        name = str(_dict(obj.get("metadata")).get("name") or self.served_name(environment))
        if view.mode and view.mode not in ("Knative", "Serverless"):
            raise DeploymentError(
                f"InferenceService {self.namespace}/{name} runs in KServe's "
                f"{view.mode} mode, which has no Knative revisions to canary: delete it and let "
                f"the release create it (it sets serving.kserve.io/deploymentMode: "
                f"{k8s.DEPLOYMENT_MODE}).")
        if not view.has_predictor:
            self._check_serving()  # KServe never reconciled it: say so when Knative is missing
        st = _dict(obj.get("status"))
        # Inside the cluster the cluster-local address works without the ingress.
        url = self._reachable(str(_dict(st.get("address")).get("url") or "")) \
            if self.cluster_local else str(st.get("url") or "")
        url = url or str(_dict(st.get("address")).get("url") or st.get("url") or "")
        stable_name = view.rolled or view.ready
        canary_name = view.created if (
            view.percent is not None and 0 < view.percent < 100 and view.created and
            view.created == view.ready and view.created != stable_name and
            view.latest_is(view.created, view.percent)) else ""
        stable = self._revision(stable_name, self._tag_url(view, stable_name, "prev", "latest")
                                or url)
        canary = self._revision(canary_name, self._tag_url(view, canary_name, "latest")) \
            if canary_name and stable is not None else None
        if stable is not None:
            stable.detail["traffic"] = dict(view.split)
            if view.ready and view.ready not in (stable_name, canary_name):
                stable.detail["held_revision"] = view.ready
                stable.detail["held_version"] = self._revision_version(view.ready)
            if view.created and view.created != view.ready and view.created != stable_name:
                stable.detail["pending_revision"] = view.created
                stable.detail["pending_version"] = self._revision_version(view.created)
        return Deployment(environment, self.served_name(environment), url, stable, canary,
                          view.split.get(canary_name, 0) if canary else 0)

    # -- who served what: Knative revision names to roles ----------------------------------

    def revision_roles(self, environment: str) -> dict[str, str]:
        """Knative revision name -> role (``stable``, ``canary``) as the controllers report
        them now.

        On a cluster the canary split is between two Knative revisions of one predictor, and
        a pod cannot know its role (promotion changes it without a restart); its captured
        records name the revision instead (``knative_revision``, from ``K_REVISION``:
        ``components/serve/routing.py``), and :func:`~components.monitor.window.record_role`
        gives them the role this map says. The map follows :meth:`status`: the stable
        revision is ``status.components.predictor.latestRolledoutRevision`` (else the latest
        ready one); the canary is ``latestCreatedRevision`` while a canary is in progress
        (``canaryTrafficPercent`` between 0 and 100, the revision ready and resolved by the
        ``latest`` target with that share). Both are status fields of KServe 0.20's
        ``ComponentStatusSpec`` (its CRD, ``status.components.*``; set by
        inference_service_status.go:567-636 PropagateStatus). A revision in neither role (a
        rolled-back canary, an older stable one) is not in the map.
        """
        dep = self.status(environment)
        roles = {}
        if dep is not None and dep.stable is not None:
            roles[dep.stable.detail["revision"]] = "stable"
        if dep is not None and dep.canary is not None:
            roles[dep.canary.detail["revision"]] = "canary"
        return roles

    def monitoring_uri(self, environment: str) -> str:
        """The monitoring store the environment's predictor captures to (``""``: none): the
        configuration given, else the one the stable revision was released with."""
        if self.config is not None and self.config.capture_uri:
            return self.config.capture_uri
        obj = self._get(_check_env(environment))
        view = _View.of(obj) if obj else None
        recorded = self._revision_config(view.rolled or view.ready) if view else None
        return recorded.capture_uri if recorded is not None else ""

    def captured_traffic(self, environment: str, start: float, end: float,
                         roles: dict[str, str] | None = None, monitoring_uri: str = ""
                         ) -> dict[str, int] | None:
        """Requests the predictor captured between ``start`` and ``end`` (unix seconds) per
        role, ``{"stable": n, "canary": m}`` (and ``""``: revisions in no role), each record's
        revision given its role by ``roles`` (default: :meth:`revision_roles` now; a release
        records each step's map, ``revisions``, so that its traffic is told apart after the
        roles moved); None when nothing is captured.

        Capture samples requests (``--capture-sample-rate``) and writes them in batches (500
        records or 60 s): this counts what was written by the time it is called, junk inputs
        left out (``components.monitor.window.read_window``). A store or API that cannot be
        read is logged and gives None."""
        try:
            uri = monitoring_uri or self.monitoring_uri(environment)
            if not uri:
                return None
            roles = self.revision_roles(environment) if roles is None else roles
            win = read_window(uri, self.served_name(environment), start, end,
                              with_labels=False)
        except (StorageError, DeploymentError) as exc:
            logger.warning("Cannot read the captured traffic of %s from %s: %s",
                           self.served_name(environment), uri, exc)
            return None
        counts = role_counts(win.records, roles)
        return {"stable": counts.pop("stable", 0), "canary": counts.pop("canary", 0),
                **({"": sum(counts.values())} if counts else {})}

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, environment: str, what: str, done, timeout: float | None) -> dict:
        """Polls the InferenceService until ``done(obj, view)`` holds."""
        timeout = self.timeout_s if timeout is None else timeout
        obj: dict = {}

        def reached() -> dict | None:
            nonlocal obj
            obj = self._get(environment)
            if obj is None:
                raise DeploymentError(f"InferenceService {self.namespace}/"
                                      f"{self.served_name(environment)} disappeared while "
                                      f"waiting for {what}.")
            return obj if done(obj, _View.of(obj)) else None

        if wait_until(reached, timeout, self.poll_s):
            return obj
        view = _View.of(obj)
        raise DeploymentError(
            f"InferenceService {self.namespace}/{self.served_name(environment)}: "
            f"{what} did not happen within {timeout:.0f} s (latest created revision "
            f"{view.created!r}, latest ready {view.ready!r}, rolled out {view.rolled!r}, "
            f"traffic {[(t.get('tag'), t.get('revisionName'), t.get('percent')) for t in view.traffic]}, "  # noqa: E501
            f"conditions {view.conditions}). See `kubectl describe revision` for why.")

    def _serves_only(self, version: int, newer):
        def done(obj, view: _View) -> bool:
            rev = view.created
            return bool(newer(obj) and view.conditions.get("Ready") == "True" and rev and
                        rev == view.ready == view.rolled and
                        self._revision_version(rev) == version and view.only(rev))
        return done

    def _held(self, version: int, stable: str, old: set[str], newer):
        """A new revision of ``version`` (none of ``old``) is the latest ready one, "latest"
        gives it 0% and ``prev`` gives the stable revision everything."""
        def done(obj, view: _View) -> bool:
            rev = view.created
            return bool(newer(obj) and rev and rev not in old and rev == view.ready and
                        self._revision_version(rev) == version and view.rolled == stable and
                        view.latest_is(rev, 0) and view.split.get(stable) == 100)
        return done

    def _canary_at(self, version: int, percent: int, stable: str, newer):
        def done(obj, view: _View) -> bool:
            rev = view.created
            latest, prev = view.tags.get("latest") or {}, view.tags.get("prev") or {}
            return bool(newer(obj) and rev and rev != stable and rev == view.ready and
                        self._revision_version(rev) == version and view.rolled == stable and
                        latest.get("revisionName") == rev and
                        _int(latest.get("percent")) == percent and
                        prev.get("revisionName") == stable and
                        _int(prev.get("percent")) == 100 - percent)
        return done

    def _hold_new(self, environment: str, version: int, config: k8s.ServingConfig,
                  stable: str, what: str, timeout: float | None) -> bool:
        """Writes the template of ``version`` at 0% and waits until its revision is the
        latest ready one. Until then "latest" resolves to whatever was the latest ready
        revision (traffic.go:354-377), with 0%: nothing unready or rejected gets traffic.

        Returns:
            Whether the template changed (False: its revision already existed).
        """
        current = self._get(environment) or {}
        before = _View.of(current)
        patch = k8s.template_patch(current, self._object(environment, version, config), 0)
        changed = _template_changed(patch)
        newer = self._patch(environment, patch)
        old = {stable, before.created} if changed else {stable}
        self._wait(environment, what, self._held(version, stable, old, newer), timeout)
        return changed

    # -- interface -------------------------------------------------------------------------

    def deploy(self, environment: str, version: int, timeout: float | None = None) -> Deployment:
        """Serves ``version`` with all traffic, with the configuration of a new release."""
        _check_env(environment)
        return self._deploy(environment, version, self._release_config(environment), timeout)

    def restore(self, environment: str, version: int,
                timeout: float | None = None) -> Deployment:
        """Serves an earlier ``version`` again with the configuration it was released with
        (that of its newest revision left in the cluster, else that of the stable one)."""
        _check_env(environment)
        config = self.config or self._version_config(environment, version) or \
            self._release_config(environment)
        return self._deploy(environment, version, config, timeout)

    def _deploy(self, environment: str, version: int, config: k8s.ServingConfig,
                timeout: float | None) -> Deployment:
        self.check_prerequisites(config)
        name = self.served_name(environment)
        current = self._get(environment)
        if current is None:
            self._call(f"create InferenceService {name}",
                       self.custom.create_namespaced_custom_object, self.GROUP, self.VERSION,
                       self.namespace, self.PLURAL, self._object(environment, version, config),
                       field_validation="Strict")
            self._wait(environment, f"version {version} serving all traffic",
                       self._serves_only(version, lambda obj: True), timeout)
            return self.status(environment)
        self.status(environment)  # refuses an InferenceService in another deployment mode
        view = _View.of(current)
        if view.rolled and (view.ready != view.rolled or view.percent not in (None, 100)):
            # A revision besides the stable one is the latest ready (a canary, or one rolled
            # back), or a canary runs: "latest" would send the new share to it until the new
            # revision is ready, so the new template goes in at 0% first.
            self._hold_new(environment, version, config, view.rolled,
                           f"a ready revision of version {version} (held at 0% until it is "
                           "ready)", timeout)
        # Otherwise "latest" is the stable revision until the new one is ready.
        patch = k8s.template_patch(self._get(environment) or {},
                                   self._object(environment, version, config), 100)
        newer = self._patch(environment, patch)
        self._wait(environment, f"version {version} serving all traffic",
                   self._serves_only(version, newer), timeout)
        return self.status(environment)

    def start_canary(self, environment: str, version: int, percent: int,
                     timeout: float | None = None) -> Deployment:
        percent = _check_percent(percent)
        dep = self._require(environment, canary=False)
        config = self._release_config(environment)
        self.check_prerequisites(config)
        stable = dep.stable.detail["revision"]
        current = self._get(environment) or {}
        view = _View.of(current)
        if not _template_changed(k8s.template_patch(
                current, self._object(environment, version, config), 0)):
            if view.created == stable:
                raise DeploymentError(f"Version {version} with this configuration is what "
                                      f"{environment!r} serves already (revision {stable}): "
                                      "there is nothing to canary.")
            raise DeploymentError(
                f"Version {version} with this configuration is revision {view.created}, "
                "which was rolled back: a rolled-back revision is never routed again. Release "
                "another version, or this one with another configuration.")
        self._hold_new(environment, version, config, stable,
                       f"a ready canary revision of version {version} (held at 0% until it "
                       "is ready)", timeout)
        newer = self._patch(environment, k8s.traffic_patch(percent))
        self._wait(environment, f"the canary revision of version {version} at {percent}%",
                   self._canary_at(version, percent, stable, newer), timeout)
        return self.status(environment)

    def set_canary_traffic(self, environment: str, percent: int,
                           timeout: float | None = None) -> Deployment:
        percent = _check_percent(percent)
        dep = self._require(environment, canary=True)
        newer = self._patch(environment, k8s.traffic_patch(percent))
        self._wait(environment, f"the canary at {percent}%",
                   self._canary_at(dep.canary.version, percent, dep.stable.detail["revision"],
                                   newer), timeout)
        return self.status(environment)

    def promote(self, environment: str, timeout: float | None = None) -> Deployment:
        dep = self._require(environment, canary=True)
        canary = dep.canary.detail["revision"]
        newer = self._patch(environment, k8s.promote_patch())  # traffic only: no new revision

        def done(obj, view: _View) -> bool:
            return bool(newer(obj) and view.rolled == canary and view.only(canary))
        self._wait(environment, f"all traffic on revision {canary}", done, timeout)
        return self.status(environment)

    def rollback(self, environment: str, timeout: float | None = None) -> Deployment:
        """All traffic back on the stable revision at once (``canaryTrafficPercent: 0``), then
        the rejected template replaced by a fresh revision of the stable version, which takes
        the traffic once ready: the rejected revision is then in no route and scales to zero.
        If the fresh revision does not become ready, the rejected one stays held at 0% (a
        warning says so) until the next release replaces it."""
        dep = self.status(environment)
        if dep is None or dep.stable is None:
            return dep
        stable = dep.stable.detail["revision"]
        view = _View.of(self._get(environment) or {})
        if view.created in ("", stable) and view.ready in ("", stable) and dep.canary is None:
            return dep
        newer = self._patch(environment, k8s.rollback_patch()) if view.percent != 0 else \
            (lambda obj: True)

        def back(obj, view: _View) -> bool:
            return bool(newer(obj) and view.rolled == stable and view.only(stable))
        self._wait(environment, f"all traffic back on revision {stable}", back, timeout)
        self._retire(environment, stable, timeout)
        return self.status(environment)

    def _retire(self, environment: str, stable: str, timeout: float | None) -> None:
        """Replaces the template after a rollback by the stable revision's own (version and
        configuration), so that nothing can resolve "latest" to the rejected revision again
        and Knative scales it to zero (metasync.go:41, pa.go:74-78)."""
        version = self._revision_version(stable)
        config = self._revision_config(stable)
        if version is None or config is None:
            logger.warning("Revision %s records no version or configuration: the rolled-back "
                           "template stays in the spec at 0%%", stable)
            return
        try:
            self._hold_new(environment, version, config, stable,
                           f"a fresh revision of version {version} to replace the rolled-back "
                           "one", timeout)
            newer = self._patch(environment, k8s.promote_patch())
            self._wait(environment, f"all traffic on the fresh revision of version {version}",
                       self._serves_only(version, newer), timeout)
        except DeploymentError as exc:
            logger.warning(
                "All traffic is on revision %s and the rolled-back revision gets none, but it "
                "could not be replaced yet, so it keeps its pods until the next release "
                "replaces it (`mlops deploy --target kserve --namespace %s status` shows it): "
                "%s", stable, self.namespace, exc)

    def delete(self, environment: str) -> None:
        name = self.served_name(_check_env(environment))
        self._call(f"delete InferenceService {name}",
                   self.custom.delete_namespaced_custom_object, self.GROUP, self.VERSION,
                   self.namespace, self.PLURAL, name)
