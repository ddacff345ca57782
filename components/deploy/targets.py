"""Where a model is deployed: one interface, a KServe and a local implementation.

A target manages *environments* (``test``, ``production``). Each environment serves one stable
revision and, during a canary, a second one. The release logic in :mod:`.release` only speaks
this interface, so the same canary rules run on a cluster and on a laptop.

* :class:`KServeTarget` applies the InferenceService objects of :mod:`components.common.k8s`
  through ``KServeClient``: Knative splits the traffic, tag routing gives each revision its own
  URL for the analysis.
* :class:`LocalTarget` runs real KServe model servers (``components.serve.server``) as
  processes on loopback, one per revision. It cannot split traffic: the environment's endpoint
  is its stable revision until a promotion, and the canary answers only on its own URL, where
  the canary analysis sends its probes. See the README of this folder for what else differs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from components.common import k8s
from components.common.registry import ModelRegistry
from components.deploy.client import EndpointError, wait_ready

logger = logging.getLogger(__name__)

ENVIRONMENTS = tuple(k8s.ENVIRONMENTS)


class DeploymentError(RuntimeError):
    """A deployment step that could not be done; the message says what to do."""


@dataclass
class Revision:
    """One served model version in an environment.

    Attributes:
        version: The registry version it serves.
        url: Where this revision answers directly (for analysis and tests).
        storage_uri: The package it loaded.
        detail: Target-specific facts (process id and log file, or revision name).
    """

    version: int
    url: str
    storage_uri: str
    detail: dict = field(default_factory=dict)


@dataclass
class Deployment:
    """The state of one environment.

    Attributes:
        environment: ``test`` or ``production``.
        name: The served model name (``/v1/models/<name>``), also the InferenceService name.
        url: The environment's endpoint, the address applications use.
        stable: The revision taking (the rest of) the traffic.
        canary: The revision under canary, if any.
        canary_percent: Its share of the traffic at the endpoint (the local target does not
            split: there it is recorded, not applied).
    """

    environment: str
    name: str
    url: str
    stable: Revision | None
    canary: Revision | None = None
    canary_percent: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _check_env(environment: str) -> str:
    if environment not in ENVIRONMENTS:
        raise DeploymentError(f"Unknown environment {environment!r}. Expect one of "
                              f"{', '.join(ENVIRONMENTS)}.")
    return environment


def _check_percent(percent: int) -> int:
    if not 0 < int(percent) < 100:
        raise DeploymentError(f"Invalid canary traffic percent {percent}. Expect 1 to 99.")
    return int(percent)


class DeploymentTarget(ABC):
    """Deploys registry versions of one model into environments."""

    def __init__(self, registry_uri: str, model_name: str):
        self.registry = ModelRegistry(registry_uri)
        self.model_name = model_name

    def served_name(self, environment: str) -> str:
        return self.model_name + k8s.ENVIRONMENTS[_check_env(environment)]["suffix"]

    @abstractmethod
    def status(self, environment: str) -> Deployment | None:
        """The environment's state, or None when nothing is deployed there."""

    @abstractmethod
    def deploy(self, environment: str, version: int, timeout: float = 300) -> Deployment:
        """Serves ``version`` with all traffic, replacing what was there once it is ready."""

    @abstractmethod
    def start_canary(self, environment: str, version: int, percent: int,
                     timeout: float = 300) -> Deployment:
        """Serves ``version`` beside the stable revision with ``percent`` of the traffic."""

    @abstractmethod
    def set_canary_traffic(self, environment: str, percent: int) -> Deployment:
        """Changes the canary's share of the traffic."""

    @abstractmethod
    def promote(self, environment: str, timeout: float = 300) -> Deployment:
        """Makes the canary the stable revision with all traffic."""

    @abstractmethod
    def rollback(self, environment: str, timeout: float = 300) -> Deployment:
        """Removes the canary; all traffic stays on (or returns to) the stable revision."""

    @abstractmethod
    def delete(self, environment: str) -> None:
        """Removes everything served in the environment."""

    def revision_urls(self, environment: str) -> dict[str, str]:
        """``{"stable": url, "canary": url}`` of the revisions now served."""
        dep = self.status(environment)
        if dep is None:
            return {}
        out = {"stable": dep.stable.url} if dep.stable else {}
        if dep.canary:
            out["canary"] = dep.canary.url
        return out

    def _require(self, environment: str, canary: bool | None = None) -> Deployment:
        dep = self.status(environment)
        if dep is None or dep.stable is None:
            raise DeploymentError(f"Nothing is deployed in {environment!r} for "
                                  f"{self.model_name!r}: deploy a version there first.")
        if canary is True and dep.canary is None:
            raise DeploymentError(f"No canary is running in {environment!r}: start one first.")
        if canary is False and dep.canary is not None:
            raise DeploymentError(
                f"A canary of version {dep.canary.version} is already running in "
                f"{environment!r}: promote or roll it back before starting another.")
        return dep


# ------------------------------------------------------------------------------------------
# Local: KServe model servers as processes on loopback
# ------------------------------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _process_alive(pid: int, port: int) -> bool:
    """True when ``pid`` runs and is our model server on ``port`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid
    text = b" ".join(cmdline).decode(errors="replace")
    return "components.serve.server" in text and f"--port={port}" in text


class LocalTarget(DeploymentTarget):
    """Real KServe model servers as processes on this machine, one per revision.

    The state of every environment is a JSON file under ``state_dir``, changed under a file
    lock, so the pipeline's steps (separate processes) and the CLI see the same deployments.
    Servers are started in their own session: they outlive the step that started them, as an
    InferenceService outlives the pipeline that applied it. ``delete()`` (or ``mlops deploy
    stop``) stops them.
    """

    def __init__(self, registry_uri: str, model_name: str, state_dir: str | os.PathLike,
                 host: str = "127.0.0.1", server_args: tuple[str, ...] = ()):
        super().__init__(registry_uri, model_name)
        self.state_dir = Path(state_dir)
        self.host = host
        self.server_args = tuple(server_args)
        self._children: dict[int, subprocess.Popen] = {}
        self._warned: set[int] = set()

    # -- state -----------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.state_dir / f"{self.model_name}.json"

    @contextlib.contextmanager
    def _locked(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / f"{self.model_name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict:
        if not self._state_path.exists():
            return {}
        return json.loads(self._state_path.read_text())

    def _write(self, state: dict) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(tmp, self._state_path)

    def _deployment(self, environment: str, entry: dict) -> Deployment:
        def rev(d):
            return Revision(**d) if d else None
        stable = rev(entry.get("stable"))
        return Deployment(environment, self.served_name(environment),
                          stable.url if stable else "", stable, rev(entry.get("canary")),
                          entry.get("canary_percent", 0))

    def status(self, environment: str) -> Deployment | None:
        entry = self._read().get(_check_env(environment))
        if not entry or not entry.get("stable"):
            return None
        dep = self._deployment(environment, entry)
        for r in (dep.stable, dep.canary):
            if r and not _process_alive(r.detail["pid"], r.detail["port"]):
                r.detail["running"] = False
                if r.detail["pid"] in self._warned:
                    continue
                self._warned.add(r.detail["pid"])
                logger.warning("The %s server of version %d (pid %d) is not running; see %s",
                               environment, r.version, r.detail["pid"], r.detail["log"])
        return dep

    # -- processes -------------------------------------------------------------------------

    def _package(self, version: int) -> Path:
        dest = self.state_dir / "packages" / self.model_name / str(version)
        if not (dest / "model.onnx").is_file():
            tmp = dest.with_name(f"{version}.partial-{os.getpid()}")
            self.registry.download(self.model_name, version, tmp)  # verifies checksums
            if dest.exists():  # another step downloaded it meanwhile
                import shutil

                shutil.rmtree(tmp)
            else:
                os.replace(tmp, dest)
        return dest

    def _start(self, environment: str, version: int, timeout: float) -> Revision:
        package = self._package(version)
        port = _free_port(self.host)
        name = self.served_name(environment)
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}-v{version}-{port}.log"
        cmd = [sys.executable, "-m", "components.serve.server", f"--package-dir={package}",
               f"--name={name}", f"--host={self.host}", f"--port={port}", *self.server_args]
        started = time.perf_counter()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._children[proc.pid] = proc
        url = f"http://{self.host}:{port}"
        try:
            wait_ready(url, name, timeout=timeout, alive=lambda: proc.poll() is None)
        except EndpointError as exc:
            self._kill(proc.pid, port)
            tail = log_path.read_text(errors="replace")[-1500:]
            raise DeploymentError(f"Version {version} did not start in {environment!r}: {exc}"
                                  f"\n--- {log_path} ---\n{tail}") from exc
        ready_s = time.perf_counter() - started
        logger.info("%s: version %d ready at %s in %.1f s (pid %d)", environment, version, url,
                    ready_s, proc.pid)
        return Revision(version, url, self.registry.version_uri(self.model_name, version),
                        {"pid": proc.pid, "port": port, "log": str(log_path),
                         "ready_seconds": round(ready_s, 2)})

    def _kill(self, pid: int, port: int, grace: float = 10.0) -> None:
        if not _process_alive(pid, port):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.time() + grace
        child = self._children.pop(pid, None)
        while time.time() < deadline:
            if child is not None and child.poll() is not None:
                return
            if child is None and not _process_alive(pid, port):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if child is not None:
            child.wait(5)

    def _stop(self, rev: Revision | None) -> None:
        if rev is not None:
            self._kill(rev.detail["pid"], rev.detail["port"])
            logger.info("Stopped version %d at %s", rev.version, rev.url)

    # -- interface -------------------------------------------------------------------------

    def deploy(self, environment: str, version: int, timeout: float = 300) -> Deployment:
        _check_env(environment)
        with self._locked():
            old = self._read().get(environment) or {}
            new = self._start(environment, version, timeout)  # old keeps serving meanwhile
            state = self._read()
            state[environment] = {"stable": asdict(new), "canary": None, "canary_percent": 0}
            self._write(state)
            for key in ("stable", "canary"):
                if old.get(key):
                    self._stop(Revision(**old[key]))
        return self.status(environment)

    def start_canary(self, environment: str, version: int, percent: int,
                     timeout: float = 300) -> Deployment:
        percent = _check_percent(percent)
        with self._locked():
            self._require(environment, canary=False)
            rev = self._start(environment, version, timeout)
            state = self._read()
            state[environment].update(canary=asdict(rev), canary_percent=percent)
            self._write(state)
        return self.status(environment)

    def set_canary_traffic(self, environment: str, percent: int) -> Deployment:
        percent = _check_percent(percent)
        with self._locked():
            self._require(environment, canary=True)
            state = self._read()
            state[environment]["canary_percent"] = percent
            self._write(state)
        return self.status(environment)

    def promote(self, environment: str, timeout: float = 300) -> Deployment:
        with self._locked():
            dep = self._require(environment, canary=True)
            state = self._read()
            state[environment] = {"stable": state[environment]["canary"], "canary": None,
                                  "canary_percent": 0}
            self._write(state)
            self._stop(dep.stable)
        return self.status(environment)

    def rollback(self, environment: str, timeout: float = 300) -> Deployment:
        with self._locked():
            dep = self._require(environment)
            state = self._read()
            state[environment].update(canary=None, canary_percent=0)
            self._write(state)
            self._stop(dep.canary)
        return self.status(environment)

    def delete(self, environment: str) -> None:
        with self._locked():
            state = self._read()
            entry = state.pop(_check_env(environment), None) or {}
            self._write(state)
            for key in ("canary", "stable"):
                if entry.get(key):
                    self._stop(Revision(**entry[key]))

    def delete_all(self) -> None:
        for env in ENVIRONMENTS:
            self.delete(env)


# ------------------------------------------------------------------------------------------
# KServe on Kubernetes
# ------------------------------------------------------------------------------------------

STABLE_VERSION = "mlops.pet-park.io/stable-version"
CANARY_VERSION = "mlops.pet-park.io/canary-version"


class KServeTarget(DeploymentTarget):
    """InferenceServices in a namespace, through ``KServeClient``.

    The registry must be in object storage the cluster reads (``s3://…``): the storage URI of
    a version is its registry folder, which KServe's storage initializer downloads to
    ``/mnt/models``. Which registry version each revision serves is recorded in annotations of
    the InferenceService, so the state lives in the cluster, not in the pipeline.

    Args:
        config: The shape of the InferenceService (image, service account, resources, logger);
            its name and namespace are replaced by ``model_name``/``namespace``.
        client: A ``kserve.KServeClient``; by default one from the in-cluster configuration
            or ``~/.kube/config``.
        cluster_local: Use the cluster-local addresses (the pipeline runs in the cluster);
            False for the external URLs, when driving a release from outside.
    """

    GROUP, VERSION, PLURAL = k8s.KSERVE_GROUP, k8s.KSERVE_VERSION, "inferenceservices"

    def __init__(self, registry_uri: str, model_name: str, namespace: str,
                 config: k8s.ServingConfig | None = None, client=None,
                 cluster_local: bool = True):
        super().__init__(registry_uri, model_name)
        if not registry_uri.startswith("s3://"):
            raise DeploymentError(f"KServe cannot read the registry at {registry_uri!r}: use an "
                                  "s3:// registry the cluster can reach.")
        self.namespace = namespace
        self.cluster_local = cluster_local
        self.config = replace(config or k8s.ServingConfig(), namespace=namespace)
        if client is None:
            from kserve import KServeClient

            client = KServeClient()
        self.client = client

    def _get(self, environment: str) -> dict | None:
        try:
            return self.client.get(self.served_name(environment), namespace=self.namespace)
        except RuntimeError as exc:
            if "Not Found" in str(exc) or "404" in str(exc):
                return None
            raise

    def _object(self, environment: str, version: int) -> dict:
        spec = k8s.ENVIRONMENTS[environment]
        cfg = replace(self.config, name=self.served_name(environment),
                      storage_uri=self.registry.version_uri(self.model_name, version),
                      min_replicas=spec["min_replicas"], max_replicas=spec["max_replicas"])
        return k8s.inference_service(cfg)

    def _apply(self, environment: str, obj: dict, exists: bool) -> None:
        api = self.client.api_instance  # KServeClient's CustomObjectsApi, which takes dicts
        name = self.served_name(environment)
        if "kind" in obj:  # a whole object (not a one-field patch): check it before applying
            k8s.validate_object(obj)
        try:
            if exists:
                api.patch_namespaced_custom_object(self.GROUP, self.VERSION, self.namespace,
                                                   self.PLURAL, name, obj)
            else:
                api.create_namespaced_custom_object(self.GROUP, self.VERSION, self.namespace,
                                                    self.PLURAL, obj)
        except Exception as exc:  # kubernetes ApiException and transport errors
            raise DeploymentError(f"Could not apply InferenceService {self.namespace}/{name}: "
                                  f"{exc}. Check that the pipeline's service account has the "
                                  "Role in manifests/base/rbac.yaml.") from exc

    def _wait(self, environment: str, timeout: float) -> None:
        name = self.served_name(environment)
        try:
            self.client.wait_isvc_ready(name, namespace=self.namespace,
                                        timeout_seconds=int(timeout), polling_interval=5)
        except RuntimeError as exc:
            raise DeploymentError(f"InferenceService {self.namespace}/{name} did not become "
                                  f"ready in {timeout:.0f} s: {exc}") from exc

    @staticmethod
    def _annotate(obj: dict, stable: int, canary: int | None, patch: bool = True) -> dict:
        """Records the versions; in a merge patch, null removes the canary annotation."""
        ann = obj["metadata"].setdefault("annotations", {})
        ann[STABLE_VERSION] = str(stable)
        if canary is not None:
            ann[CANARY_VERSION] = str(canary)
        elif patch:
            ann[CANARY_VERSION] = None
        return obj

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

    def status(self, environment: str) -> Deployment | None:
        obj = self._get(_check_env(environment))
        if obj is None:
            return None
        ann = obj["metadata"].get("annotations") or {}
        pred = obj["spec"]["predictor"]
        comp = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
        urls = {t.get("tag"): self._reachable(t.get("url", ""))
                for t in comp.get("traffic", []) if t.get("tag")}
        st = obj.get("status") or {}
        # Inside the cluster (where the pipeline's pods run) the cluster-local address works
        # without the ingress; status.url is the external one.
        url = (st.get("address") or {}).get("url") or st.get("url", "")
        stable_v, canary_v = ann.get(STABLE_VERSION), ann.get(CANARY_VERSION)
        percent = pred.get("canaryTrafficPercent")
        stable = canary = None
        if stable_v:
            stable = Revision(int(stable_v), urls.get("prev" if canary_v else "latest", url),
                              self.registry.version_uri(self.model_name, int(stable_v)),
                              {"revision": comp.get("previousRolledoutRevision" if canary_v
                                                    else "latestRolledoutRevision")})
        if canary_v:
            canary = Revision(int(canary_v), urls.get("latest", ""),
                              self.registry.version_uri(self.model_name, int(canary_v)),
                              {"revision": comp.get("latestCreatedRevision")})
        return Deployment(environment, self.served_name(environment), url, stable, canary,
                          int(percent) if canary and percent is not None else 0)

    def deploy(self, environment: str, version: int, timeout: float = 300) -> Deployment:
        current = self._get(_check_env(environment))
        obj = self._annotate(self._object(environment, version), version, None,
                             patch=current is not None)
        if current is not None:
            obj["spec"]["predictor"]["canaryTrafficPercent"] = 100
        self._apply(environment, obj, exists=current is not None)
        self._wait(environment, timeout)
        return self.status(environment)

    def start_canary(self, environment: str, version: int, percent: int,
                     timeout: float = 300) -> Deployment:
        percent = _check_percent(percent)
        dep = self._require(environment, canary=False)
        base = self._object(environment, dep.stable.version)
        obj = k8s.canary(base, self.registry.version_uri(self.model_name, version), percent)
        self._apply(environment, self._annotate(obj, dep.stable.version, version), exists=True)
        self._wait(environment, timeout)
        return self.status(environment)

    def set_canary_traffic(self, environment: str, percent: int) -> Deployment:
        percent = _check_percent(percent)
        self._require(environment, canary=True)
        self._apply(environment, {"metadata": {"name": self.served_name(environment)},
                                  "spec": {"predictor": {"canaryTrafficPercent": percent}}},
                    exists=True)
        return self.status(environment)

    def promote(self, environment: str, timeout: float = 300) -> Deployment:
        dep = self._require(environment, canary=True)
        obj = k8s.promote(self._object(environment, dep.canary.version))
        self._apply(environment, self._annotate(obj, dep.canary.version, None), exists=True)
        self._wait(environment, timeout)
        return self.status(environment)

    def rollback(self, environment: str, timeout: float = 300) -> Deployment:
        dep = self._require(environment)
        obj = k8s.rollback(self._object(environment, dep.stable.version), dep.stable.storage_uri)
        self._apply(environment, self._annotate(obj, dep.stable.version, None), exists=True)
        self._wait(environment, timeout)
        return self.status(environment)

    def delete(self, environment: str) -> None:
        if self._get(_check_env(environment)) is not None:
            self.client.delete(self.served_name(environment), namespace=self.namespace)


def open_target(kind: str, registry_uri: str, model_name: str, *, namespace: str = "",
                state_dir: str = "", config: k8s.ServingConfig | None = None
                ) -> DeploymentTarget:
    """A target by name: ``local`` (needs ``state_dir``) or ``kserve`` (needs ``namespace``)."""
    if kind == "local":
        if not state_dir:
            raise DeploymentError("The local target needs a state folder (serving_root).")
        return LocalTarget(registry_uri, model_name, state_dir)
    if kind == "kserve":
        if not namespace:
            raise DeploymentError("The kserve target needs a namespace.")
        return KServeTarget(registry_uri, model_name, namespace,
                            config or k8s.ServingConfig())
    raise DeploymentError(f"Unknown deployment target {kind!r}. Expect 'local' or 'kserve'.")
