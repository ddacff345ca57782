"""Where a model is deployed: one interface, a KServe and a local implementation.

A target manages *environments* (``test``, ``production``). Each environment serves one stable
revision and, during a canary, a second one. The release logic in :mod:`.release` only speaks
this interface, so the same canary rules run on a cluster and on a laptop.

* :class:`KServeTarget` applies the InferenceService objects of :mod:`components.common.k8s`
  through the Kubernetes API: Knative splits the traffic, tag routing gives each revision its
  own URL for the analysis.
* :class:`LocalTarget` runs real KServe model servers (``components.serve.server``) as
  processes on loopback, one per revision, behind one router per environment
  (``router.py``): a stable endpoint that splits traffic by the canary percent and restarts
  crashed servers. Each revision also answers on its own URL, where the canary analysis sends
  its probes. See the README of this folder for what else differs.
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
from components.deploy.supervisor import process_alive

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


_process_alive = process_alive  # one check, shared with the supervisor


class LocalTarget(DeploymentTarget):
    """Real KServe model servers as processes on this machine, one per revision, behind one
    router per environment.

    The router (``components.deploy.router``, a process per environment) is the environment's
    endpoint: its address is chosen once and kept in the state, so it stays the same across
    releases and restarts. It splits traffic between the stable and the canary revision by the
    canary percent, and supervises the model servers (restarts with back-off and a limit).
    Each revision also answers on its own URL, where the canary analysis sends its probes.

    The state of every environment is a JSON file under ``state_dir``, changed under a file
    lock, so the pipeline's steps (separate processes) and the CLI see the same deployments.
    After each change the router is told (``SIGHUP``) and the target waits until it applies
    the new routes; a revision is stopped only after the router no longer routes to it and
    has no request in flight to it. Servers and routers are started in their own session: they
    outlive the step that started them, as an InferenceService outlives the pipeline that
    applied it. ``delete()`` (or ``mlops deploy stop``) stops them.

    Args:
        host: Address the model servers bind (loopback: only the router needs them).
        router_host: Address the routers bind; 127.0.0.1 unless told otherwise (0.0.0.0 to
            let a camera on the network reach it). Kept in the state once chosen.
        router_ports: Port per environment for a router that has none yet (default: a free
            one, kept in the state).
        router_args: Extra arguments for the router processes (supervision settings).
        capture_uri: Where production's model servers capture what they serve for the monitor
            (default: ``$MLOPS_CAPTURE_URI``; empty: no capture; the CLI passes the monitoring
            store). Each record names the role (stable or canary) the router chose for its
            request. The test environment never captures: its traffic is not production's.
    """

    def __init__(self, registry_uri: str, model_name: str, state_dir: str | os.PathLike,
                 host: str = "127.0.0.1", server_args: tuple[str, ...] = (),
                 router_host: str | None = None, router_ports: dict[str, int] | None = None,
                 router_args: tuple[str, ...] = (), capture_uri: str | None = None):
        super().__init__(registry_uri, model_name)
        self.state_dir = Path(state_dir)
        # Production's model servers capture what they serve for the monitor.
        self.capture_uri = (os.environ.get("MLOPS_CAPTURE_URI", "") if capture_uri is None
                            else capture_uri)
        self.host = host
        self.server_args = tuple(server_args)
        self.router_host = router_host
        self.router_ports = dict(router_ports or {})
        self.router_args = tuple(router_args)
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
        state["generation"] = int(state.get("generation", 0)) + 1
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(tmp, self._state_path)

    def router(self, environment: str) -> dict:
        """The environment's router as recorded: ``pid``, ``host``, ``port``, ``url``, ``log``
        (empty if it never had one)."""
        return dict((self._read().get("routers") or {}).get(_check_env(environment)) or {})

    def _deployment(self, environment: str, entry: dict, router: dict | None = None
                    ) -> Deployment:
        def rev(d):
            return Revision(**d) if d else None
        stable = rev(entry.get("stable"))
        url = (router or {}).get("url") or (stable.url if stable else "")
        return Deployment(environment, self.served_name(environment), url, stable,
                          rev(entry.get("canary")), entry.get("canary_percent", 0))

    def traffic(self, environment: str) -> dict | None:
        """Requests the environment's router has answered per revision role since it started
        (``{"stable": n, "canary": m}``), or None when no router answers."""
        from components.deploy import router as rt

        rec = self.router(environment)
        status = rt.router_status(rec["url"]) if rec.get("url") else None
        return dict(status["served"]) if status else None

    def supervision(self, environment: str) -> dict:
        """What the environment's supervisor last reported (see ``supervisor.py``)."""
        from components.deploy.supervisor import read_supervision

        return read_supervision(self.state_dir, self.model_name, _check_env(environment))

    def status(self, environment: str) -> Deployment | None:
        from components.deploy.supervisor import revision_key

        state = self._read()
        entry = state.get(_check_env(environment))
        if not entry or not entry.get("stable"):
            return None
        dep = self._deployment(environment, entry, (state.get("routers") or {}).get(environment))
        supervised = self.supervision(environment).get("revisions", {})
        for r in (dep.stable, dep.canary):
            if r is None:
                continue
            record = supervised.get(revision_key(asdict(r)))
            if record:  # the supervisor may have restarted it under a new pid
                r.detail.update(pid=record["pid"], restarts=record["restarts"],
                                last_error=record["last_error"], ready=record["ready"],
                                state=record["state"])
            if not _process_alive(r.detail["pid"], r.detail["port"]):
                r.detail["running"] = False
                if r.detail["pid"] in self._warned:
                    continue
                self._warned.add(r.detail["pid"])
                logger.warning("The %s server of version %d (pid %d) is not running; see %s",
                               environment, r.version, r.detail["pid"], r.detail["log"])
            else:
                r.detail["running"] = True
        return dep

    # -- router ----------------------------------------------------------------------------

    def _ensure_router(self, environment: str, state: dict) -> dict:
        """Starts the environment's router if it does not run; returns its record (state is
        updated in place and written by the caller)."""
        from components.deploy import router as rt

        routers = state.setdefault("routers", {})
        rec = dict(routers.get(environment) or {})
        if rec.get("pid") and rt.router_alive(rec["pid"], rec["port"]):
            return rec
        host = rec.get("host") or self.router_host or "127.0.0.1"
        if self.router_host and self.router_host != host:
            host = self.router_host
        port = rec.get("port") or self.router_ports.get(environment) or _free_port(host)
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"router-{self.model_name}-{environment}.log"
        try:
            pid = rt.start_router(self.state_dir, self.model_name, environment,
                                  self.served_name(environment), host, port, log_path,
                                  extra_args=self.router_args)
        except RuntimeError as exc:
            raise DeploymentError(f"{exc}\nIf the port is taken, free it or give the "
                                  "environment another one (mlops deploy start --port).") from exc
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        rec = {"pid": pid, "host": host, "port": port, "url": f"http://{shown}:{port}",
               "log": str(log_path)}
        routers[environment] = rec
        logger.info("%s endpoint (router pid %d): %s", environment, pid, rec["url"])
        return rec

    def _commit(self, environment: str, state: dict) -> dict:
        """Writes the state, makes sure the router runs and waits until it applies it."""
        from components.deploy import router as rt

        self._write(state)  # routes first, so that a router starting now reads them
        rec = self._ensure_router(environment, state)
        self._write(state)
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec["pid"], signal.SIGHUP)
        try:
            rt.wait_generation(rec["url"], state["generation"])
        except RuntimeError as exc:
            raise DeploymentError(f"{exc} See {rec['log']}.") from exc
        return rec

    def _retire(self, environment: str, rev: Revision | None, router: dict | None) -> None:
        """Stops a revision the router no longer routes to, once nothing is in flight to it."""
        from components.deploy import router as rt
        from components.deploy.supervisor import revision_key

        if rev is None:
            return
        if router and not rt.wait_drained(router["url"], rev.url):
            logger.warning("Requests to version %d were still in flight after 30 s; stopping "
                           "it anyway", rev.version)
        report = self.supervision(environment)
        key = revision_key(asdict(rev))
        record = report.get("revisions", {}).get(key) or report.get("retired", {}).get(key)
        if record and record["pid"] != rev.detail["pid"]:
            self._kill(record["pid"], rev.detail["port"])  # the supervisor's restart of it
        self._stop(rev)

    def stop_router(self, environment: str) -> None:
        rec = self.router(environment)
        from components.deploy import router as rt

        if rec.get("pid") and rt.router_alive(rec["pid"], rec["port"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec["pid"], signal.SIGTERM)
            deadline = time.time() + 10
            while time.time() < deadline and rt.router_alive(rec["pid"], rec["port"]):
                time.sleep(0.05)
            if rt.router_alive(rec["pid"], rec["port"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec["pid"], signal.SIGKILL)

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
        if not any(a.startswith("--capture-uri") for a in self.server_args):
            capture = self.capture_uri if environment == "production" else ""
            cmd.append(f"--capture-uri={capture}")
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
                         "ready_seconds": round(ready_s, 2), "cmd": cmd})

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
            old = self.status(environment)
            new = self._start(environment, version, timeout)  # old keeps serving meanwhile
            state = self._read()
            state[environment] = {"stable": asdict(new), "canary": None, "canary_percent": 0}
            router = self._commit(environment, state)  # all traffic to the new revision
            if old is not None:
                for rev in (old.canary, old.stable):
                    self._retire(environment, rev, router)
        return self.status(environment)

    def start_canary(self, environment: str, version: int, percent: int,
                     timeout: float = 300) -> Deployment:
        percent = _check_percent(percent)
        with self._locked():
            self._require(environment, canary=False)
            rev = self._start(environment, version, timeout)
            state = self._read()
            state[environment].update(canary=asdict(rev), canary_percent=percent)
            self._commit(environment, state)
        return self.status(environment)

    def set_canary_traffic(self, environment: str, percent: int) -> Deployment:
        percent = _check_percent(percent)
        with self._locked():
            self._require(environment, canary=True)
            state = self._read()
            state[environment]["canary_percent"] = percent
            self._commit(environment, state)
        return self.status(environment)

    def promote(self, environment: str, timeout: float = 300) -> Deployment:
        with self._locked():
            dep = self._require(environment, canary=True)
            state = self._read()
            state[environment] = {"stable": state[environment]["canary"], "canary": None,
                                  "canary_percent": 0}
            router = self._commit(environment, state)
            self._retire(environment, dep.stable, router)
        return self.status(environment)

    def rollback(self, environment: str, timeout: float = 300) -> Deployment:
        with self._locked():
            dep = self._require(environment)
            state = self._read()
            state[environment].update(canary=None, canary_percent=0)
            router = self._commit(environment, state)
            self._retire(environment, dep.canary, router)
        return self.status(environment)

    def delete(self, environment: str) -> None:
        with self._locked():
            dep = self.status(_check_env(environment))
            state = self._read()
            state.pop(environment, None)
            self._write(state)  # the router stops routing (and supervising) first
            router = self.router(environment)
            if router.get("pid"):
                from components.deploy import router as rt

                with contextlib.suppress(ProcessLookupError):
                    os.kill(router["pid"], signal.SIGHUP)
                with contextlib.suppress(RuntimeError):
                    rt.wait_generation(router["url"], state["generation"], timeout=5)
            if dep is not None:
                for rev in (dep.canary, dep.stable):
                    self._retire(environment, rev, None)
            self.stop_router(environment)  # its port stays recorded for the next deploy

    def delete_all(self) -> None:
        for env in ENVIRONMENTS:
            self.delete(env)

    def start(self, environments: tuple[str, ...] = ENVIRONMENTS, timeout: float = 300
              ) -> dict[str, Deployment | None]:
        """Brings environments back after a reboot: production to the registry's
        ``production`` alias, any other environment to the version it last served; restarts
        dead model servers and routers, drops a canary whose release is gone. Returns what
        each environment serves now (None: nothing to serve)."""
        aliases = self.registry.aliases(self.model_name) if self.registry.models() else {}
        out: dict[str, Deployment | None] = {}
        for environment in environments:
            dep = self.status(_check_env(environment))
            want = aliases.get(environment) if environment == "production" else None
            if want is None and dep is not None:
                want = dep.stable.version
            if want is None:
                out[environment] = None
                continue
            if dep is not None and dep.canary is not None:
                logger.warning("Dropping the canary of version %d in %s: no release is "
                               "watching it", dep.canary.version, environment)
                self.rollback(environment, timeout)
                dep = self.status(environment)
            if dep is not None and dep.stable.version == want and dep.stable.detail["running"]:
                with self._locked():
                    self._commit(environment, self._read())  # the router, if it was down
                out[environment] = self.status(environment)
            else:
                out[environment] = self.deploy(environment, want, timeout)
        return out


# ------------------------------------------------------------------------------------------
# KServe on Kubernetes
# ------------------------------------------------------------------------------------------


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
        deadline = time.monotonic() + timeout
        while True:
            obj = self._get(environment)
            if obj is None:
                raise DeploymentError(f"InferenceService {self.namespace}/"
                                      f"{self.served_name(environment)} disappeared while "
                                      f"waiting for {what}.")
            comp = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
            if done(obj, comp):
                return obj
            if time.monotonic() >= deadline:
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
            time.sleep(self.poll_s)

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
