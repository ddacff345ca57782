"""The local deployment target: KServe model servers as processes on loopback.

:class:`LocalTarget` runs real KServe model servers (``components.serve.server``) as processes on
loopback, one per revision, behind one router per environment (``router.py``): a stable endpoint
that splits traffic by the canary percent and restarts crashed servers. Each revision also
answers on its own URL, where the canary analysis sends its probes. See the README of this folder
for what else differs from the KServe target.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from components.common import k8s
from components.common.service import free_port, wait_until
from components.deploy import router as rt
from components.deploy.client import EndpointError, wait_ready
from components.deploy.supervisor import process_alive, read_supervision, revision_key
from components.deploy.targets.base import (
    ENVIRONMENTS,
    Deployment,
    DeploymentError,
    DeploymentTarget,
    Revision,
    _check_env,
    _check_percent,
)
from components.serve import routing

logger = logging.getLogger(__name__)


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

    @classmethod
    def open(cls, registry_uri: str, model_name: str, *, namespace: str = "",
             state_dir: str = "", config: k8s.ServingConfig | None = None) -> LocalTarget:
        if not state_dir:
            raise DeploymentError("The local target needs a state folder (serving_root).")
        return cls(registry_uri, model_name, state_dir)

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

    def _env(self) -> dict[str, str]:
        """The environment of the routers and model servers this target starts: this
        process's, with the deployment's router token (``components/serve/routing.py``; made
        once per state folder, readable by its owner only, never on a command line)."""
        path = self.state_dir / "router.token"
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"router.token.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(routing.new_token())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # the first writer's token wins; both then read it
            tmp.unlink()
        return {**os.environ, routing.TOKEN_ENV: path.read_text().strip()}

    def probe_headers(self, environment: str, role: str) -> dict[str, str]:
        """The router's proof of ``role`` (``components/serve/routing.py``): a probe sent
        straight to a server is then captured under the role the server has now, not the one
        it was started as (a promoted canary serves as the stable revision without a
        restart)."""
        return {routing.REVISION_HEADER: role,
                routing.TOKEN_HEADER: self._env()[routing.TOKEN_ENV]}

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
        rec = self.router(environment)
        status = rt.router_status(rec["control_url"]) if rec.get("control_url") else None
        return dict(status["served"]) if status else None

    def supervision(self, environment: str) -> dict:
        """What the environment's supervisor last reported (see ``supervisor.py``)."""
        return read_supervision(self.state_dir, self.model_name, _check_env(environment))

    def status(self, environment: str) -> Deployment | None:
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
            if not process_alive(r.detail["pid"], r.detail["port"]):
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
        routers = state.setdefault("routers", {})
        rec = dict(routers.get(environment) or {})
        if rec.get("pid") and rt.router_alive(rec["pid"], rec["port"]):
            if rec.get("control_url"):
                return rec
            self.stop_router(environment)  # a router of before the control port: replaced
        host = rec.get("host") or self.router_host or "127.0.0.1"
        if self.router_host and self.router_host != host:
            host = self.router_host
        port = rec.get("port") or self.router_ports.get(environment) or free_port(host)
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"router-{self.model_name}-{environment}.log"
        control_port = free_port(rt.CONTROL_HOST)
        try:
            pid = rt.start_router(self.state_dir, self.model_name, environment,
                                  self.served_name(environment), host, port, log_path,
                                  extra_args=self.router_args, control_port=control_port,
                                  env=self._env())
        except RuntimeError as exc:
            raise DeploymentError(f"{exc}\nIf the port is taken, free it or give the "
                                  "environment another one (mlops deploy start --port).") from exc
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        rec = {"pid": pid, "host": host, "port": port, "url": f"http://{shown}:{port}",
               "control_port": control_port,
               "control_url": f"http://{rt.CONTROL_HOST}:{control_port}", "log": str(log_path)}
        routers[environment] = rec
        logger.info("%s endpoint (router pid %d): %s", environment, pid, rec["url"])
        return rec

    def _commit(self, environment: str, state: dict) -> dict:
        """Writes the state, makes sure the router runs and waits until it applies it."""
        self._write(state)  # routes first, so that a router starting now reads them
        rec = self._ensure_router(environment, state)
        self._write(state)
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec["pid"], signal.SIGHUP)
        try:
            rt.wait_generation(rec["control_url"], state["generation"])
        except RuntimeError as exc:
            raise DeploymentError(f"{exc} See {rec['log']}.") from exc
        return rec

    def _retire(self, environment: str, rev: Revision | None, router: dict | None) -> None:
        """Stops a revision the router no longer routes to, once nothing is in flight to it."""
        if rev is None:
            return
        if router and not rt.wait_drained(router["control_url"], rev.url):
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
        if rec.get("pid") and rt.router_alive(rec["pid"], rec["port"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec["pid"], signal.SIGTERM)
            if not wait_until(lambda: not rt.router_alive(rec["pid"], rec["port"]), 10, 0.05):
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

    def _start(self, environment: str, version: int, timeout: float,
               role: str = "stable") -> Revision:
        """Starts a model server for ``version`` as ``role`` (``--revision``: what its capture
        records say when no router proves another role, e.g. the canary analysis's probes,
        which reach it directly)."""
        package = self._package(version)
        port = free_port(self.host)
        name = self.served_name(environment)
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}-v{version}-{port}.log"
        cmd = [sys.executable, "-m", "components.serve.server", f"--package-dir={package}",
               f"--name={name}", f"--host={self.host}", f"--port={port}", *self.server_args]
        if not any(a.startswith("--capture-uri") for a in self.server_args):
            capture = self.capture_uri if environment == "production" else ""
            cmd.append(f"--capture-uri={capture}")
        if not any(a.startswith("--revision") for a in self.server_args):
            cmd.append(f"--revision={role}")
        started = time.perf_counter()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=self._env())
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
        if not process_alive(pid, port):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        child = self._children.pop(pid, None)

        def ended() -> bool:
            if child is not None:
                return child.poll() is not None
            return not process_alive(pid, port)

        if wait_until(ended, grace, 0.05):
            return
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
            rev = self._start(environment, version, timeout, role="canary")
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
            if router.get("pid") and router.get("control_url"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(router["pid"], signal.SIGHUP)
                with contextlib.suppress(RuntimeError):
                    rt.wait_generation(router["control_url"], state["generation"], timeout=5)
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
