"""The KServe deployment target: InferenceServices on Kubernetes.

:class:`KServeTarget` applies the InferenceService objects of :mod:`components.common.k8s`
through the Kubernetes API: Knative splits the traffic, tag routing gives each revision its own
URL for the analysis.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from components.common import k8s
from components.common.service import wait_until
from components.deploy.targets.base import (
    Deployment,
    DeploymentError,
    DeploymentTarget,
    Revision,
    _check_env,
    _check_percent,
)

logger = logging.getLogger(__name__)


def _api_client():
    """A Kubernetes API client: in-cluster (the pipeline's pod) or ``~/.kube/config``."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise DeploymentError("No Kubernetes configuration: run inside the cluster or set "
                                  f"up ~/.kube/config ({exc}).") from exc
    return kubernetes.client.ApiClient()


class KServeTarget(DeploymentTarget):
    """InferenceServices in a namespace, in KServe's Knative (``Serverless``) mode.

    The registry must be in object storage the cluster reads (``s3://…``): the storage URI of
    a version is its registry folder, which KServe's storage initializer downloads to
    ``/mnt/models``.

    **State lives in the cluster, outside the revision template.** Which registry version a
    Knative revision serves is the label :data:`~components.common.k8s.REGISTRY_VERSION_LABEL`
    of that revision (set together with its storage URI); which revision is stable and which
    is the canary is KServe's status (``latestRolledoutRevision``, ``latestCreatedRevision``)
    and the spec's ``canaryTrafficPercent``. Nothing the release changes besides the package
    is copied into the revision template, so promote and rollback change traffic only.

    **Rules the waits follow** (KServe 0.20, Knative Serving):

    * A canary is ready when ``status.components.predictor.latestCreatedRevision`` is a revision
      of the new version, it is the ``latestReadyRevision``, and the traffic block routes the
      ``latest`` tag to it with the percent asked and the ``prev`` tag to the stable revision.
      Until then Knative routes "latest" to the previous ready revision (route/traffic/
      traffic.go), so both tagged URLs would reach the old version.
    * ``status.observedGeneration`` is the Knative Service's generation, which KServe copies
      there (inference_service_status.go PropagateStatus), not the InferenceService's: it is
      never compared with ``metadata.generation``. When a patch changed the spec, the wait
      requires it to have moved past the value read before the patch (every change the
      release makes changes the Knative Service's template or traffic), and then the
      revision names and traffic the controller reports for the new spec.
    * During a canary the stable revision is ``latestRolledoutRevision`` (the one KServe routes
      ``prev`` to, ksvc_reconciler.go), never ``previousRolledoutRevision``.
    * Rollback is ``canaryTrafficPercent: 0`` (:func:`~components.common.k8s.rollback_patch`);
      the rejected template stays in the spec at 0% until the next release replaces it.

    Args:
        config: The shape of the InferenceService (image, service account, Secret, resources,
            logger); its name and namespace are replaced by ``model_name``/``namespace``.
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
        return cls(registry_uri, model_name, namespace, config or k8s.ServingConfig())

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
        self.config = replace(config or k8s.ServingConfig(), namespace=namespace)
        self.api_client = api_client or _api_client()
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self._revision_versions: dict[str, int] = {}
        self._model_versions: dict[int, str] = {}
        self._checked = False

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
        """Applies a merge patch; returns a guard for the wait: once the patch changed the spec,
        the status must come from a newer Knative generation than before it."""
        name = self.served_name(environment)
        before = self._get(environment) or {}
        observed = (before.get("status") or {}).get("observedGeneration") or 0
        after = self._call(f"patch InferenceService {name}",
                           self.custom.patch_namespaced_custom_object, self.GROUP,
                           self.VERSION, self.namespace, self.PLURAL, name, patch,
                           field_validation="Strict")
        changed = (after or {}).get("metadata", {}).get("generation") != \
            before.get("metadata", {}).get("generation")

        def newer(obj) -> bool:
            return not changed or \
                ((obj.get("status") or {}).get("observedGeneration") or 0) > observed
        return newer

    def check_prerequisites(self) -> None:
        """Fails early, saying what to apply, when the predictor's ServiceAccount or its S3
        Secret is missing: KServe would otherwise create the InferenceService and its pods
        would never start."""
        if self._checked:
            return
        cfg = self.config
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
        self._checked = True

    def _object(self, environment: str, version: int) -> dict:
        spec = k8s.ENVIRONMENTS[environment]
        cfg = replace(self.config, name=self.served_name(environment),
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
            rev = self._call(f"read Knative revision {revision}",
                             self.custom.get_namespaced_custom_object, k8s.KNATIVE_GROUP, "v1",
                             self.namespace, "revisions", revision)
            label = ((rev or {}).get("metadata", {}).get("labels") or {}).get(
                k8s.REGISTRY_VERSION_LABEL)
            if label is None:
                return None
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

    def status(self, environment: str) -> Deployment | None:
        obj = self._get(_check_env(environment))
        if obj is None:
            return None
        st = obj.get("status") or {}
        mode = st.get("deploymentMode")
        if mode and mode not in ("Knative", "Serverless"):
            raise DeploymentError(
                f"InferenceService {self.namespace}/{obj['metadata']['name']} runs in KServe's "
                f"{mode} mode, which has no Knative revisions to canary: delete it and let the "
                f"release create it (it sets serving.kserve.io/deploymentMode: "
                f"{k8s.DEPLOYMENT_MODE}).")
        comp = (st.get("components") or {}).get("predictor") or {}
        traffic = comp.get("traffic") or []
        tags = {t.get("tag"): t for t in traffic if t.get("tag")}
        percent = obj["spec"]["predictor"].get("canaryTrafficPercent")
        created, ready = comp.get("latestCreatedRevision", ""), comp.get("latestReadyRevision", "")
        stable_name = comp.get("latestRolledoutRevision") or ready
        # Inside the cluster the cluster-local address works without the ingress.
        url = self._reachable((st.get("address") or {}).get("url", "")) if self.cluster_local \
            else st.get("url", "")
        url = url or (st.get("address") or {}).get("url") or st.get("url", "")
        in_canary = percent is not None and 0 < percent < 100 and created and \
            created != stable_name
        stable_url = self._reachable((tags.get("prev") if in_canary else tags.get("latest") or {})
                                     .get("url", "")) if tags else ""
        stable = self._revision(stable_name, stable_url or url)
        canary = None
        if in_canary:
            canary = self._revision(created, self._reachable(tags.get("latest", {}).get("url",
                                                                                       "")))
        elif created and created != stable_name and stable is not None:
            stable.detail["rejected_revision"] = created
            stable.detail["rejected_version"] = self._revision_version(created)
        return Deployment(environment, self.served_name(environment), url, stable, canary,
                          int(percent) if canary else 0)

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, environment: str, what: str, done, timeout: float | None) -> dict:
        """Polls the InferenceService until ``done(obj, component status)`` holds."""
        timeout = self.timeout_s if timeout is None else timeout
        obj: dict = {}
        comp: dict = {}

        def reached() -> dict | None:
            nonlocal obj, comp
            obj = self._get(environment)
            if obj is None:
                raise DeploymentError(f"InferenceService {self.namespace}/"
                                      f"{self.served_name(environment)} disappeared while "
                                      f"waiting for {what}.")
            comp = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
            return obj if done(obj, comp) else None

        if wait_until(reached, timeout, self.poll_s):
            return obj
        conditions = {c.get("type"): c.get("status") for c in
                      (obj.get("status") or {}).get("conditions", [])}
        raise DeploymentError(
            f"InferenceService {self.namespace}/{self.served_name(environment)}: "
            f"{what} did not happen within {timeout:.0f} s (latest created revision "
            f"{comp.get('latestCreatedRevision')!r}, latest ready "
            f"{comp.get('latestReadyRevision')!r}, rolled out "
            f"{comp.get('latestRolledoutRevision')!r}, traffic "
            f"{[(t.get('tag'), t.get('revisionName'), t.get('percent')) for t in comp.get('traffic') or []]}, "  # noqa: E501
            f"conditions {conditions}). See `kubectl describe revision` for why.")

    def _split(self, comp: dict) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in comp.get("traffic") or []:
            out[t.get("revisionName", "")] = out.get(t.get("revisionName", ""), 0) + \
                int(t.get("percent") or 0)
        return out

    def _serves_only(self, version: int):
        def done(obj, comp):
            rev = comp.get("latestCreatedRevision", "")
            ready = {c.get("type"): c.get("status") for c in
                     (obj.get("status") or {}).get("conditions", [])}.get("Ready") == "True"
            return (ready and rev and rev == comp.get("latestReadyRevision") and
                    rev == comp.get("latestRolledoutRevision") and
                    self._revision_version(rev) == version and self._split(comp) == {rev: 100})
        return done

    def _canary_at(self, version: int, percent: int, stable_revision: str, newer):
        def done(obj, comp):
            rev = comp.get("latestCreatedRevision", "")
            tags = {t.get("tag"): t for t in comp.get("traffic") or []}
            return (newer(obj) and rev and rev != stable_revision and rev == comp.get("latestReadyRevision")
                    and self._revision_version(rev) == version and
                    comp.get("latestRolledoutRevision") == stable_revision and
                    tags.get("latest", {}).get("revisionName") == rev and
                    tags.get("latest", {}).get("percent") == percent and
                    tags.get("prev", {}).get("revisionName") == stable_revision and
                    tags.get("prev", {}).get("percent") == 100 - percent)
        return done

    # -- interface -------------------------------------------------------------------------

    def deploy(self, environment: str, version: int, timeout: float | None = None) -> Deployment:
        _check_env(environment)
        self.check_prerequisites()
        obj = self._object(environment, version)
        current = self._get(environment)
        name = self.served_name(environment)
        if current is None:
            self._call(f"create InferenceService {name}",
                       self.custom.create_namespaced_custom_object, self.GROUP, self.VERSION,
                       self.namespace, self.PLURAL, obj, field_validation="Strict")
        else:
            self.status(environment)  # refuses an InferenceService in another deployment mode
            # The whole spec is replaced (canaryTrafficPercent removed: all traffic to the
            # latest revision once it is ready; Knative keeps the old one serving meanwhile).
            current["metadata"]["labels"] = {**(current["metadata"].get("labels") or {}),
                                             **obj["metadata"]["labels"]}
            current["metadata"]["annotations"] = {
                **(current["metadata"].get("annotations") or {}),
                **obj["metadata"]["annotations"]}
            current["spec"] = obj["spec"]
            current.pop("status", None)
            self._call(f"replace InferenceService {name}",
                       self.custom.replace_namespaced_custom_object, self.GROUP, self.VERSION,
                       self.namespace, self.PLURAL, name, current, field_validation="Strict")
        self._wait(environment, f"version {version} serving all traffic",
                   self._serves_only(version), timeout)
        return self.status(environment)

    def start_canary(self, environment: str, version: int, percent: int,
                     timeout: float | None = None) -> Deployment:
        percent = _check_percent(percent)
        dep = self._require(environment, canary=False)
        self.check_prerequisites()
        newer = self._patch(environment,
                            k8s.canary_patch(self._object(environment, version), percent))
        self._wait(environment, f"a ready canary revision of version {version} at {percent}%",
                   self._canary_at(version, percent, dep.stable.detail["revision"], newer),
                   timeout)
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

        def done(obj, comp):
            return newer(obj) and comp.get("latestRolledoutRevision") == canary and \
                self._split(comp) == {canary: 100}
        self._wait(environment, f"all traffic on revision {canary}", done, timeout)
        return self.status(environment)

    def rollback(self, environment: str, timeout: float | None = None) -> Deployment:
        dep = self._require(environment)
        if dep.canary is None:
            return dep
        stable, canary = dep.stable.detail["revision"], dep.canary.detail["revision"]
        newer = self._patch(environment, k8s.rollback_patch())

        def done(obj, comp):
            split = self._split(comp)
            return newer(obj) and comp.get("latestRolledoutRevision") == stable and \
                split.get(stable) == 100 and not split.get(canary)
        self._wait(environment, f"all traffic back on revision {stable}", done, timeout)
        return self.status(environment)

    def delete(self, environment: str) -> None:
        name = self.served_name(_check_env(environment))
        self._call(f"delete InferenceService {name}",
                   self.custom.delete_namespaced_custom_object, self.GROUP, self.VERSION,
                   self.namespace, self.PLURAL, name)
