"""``mlops deploy status | start | install-service`` for the local target (the park's computer).

``components/cli.py`` builds the ``deploy`` group; these handlers do the local target's part:

* ``status``: per environment, the endpoint (router: pid, alive), and per revision the
  version, traffic share, pid, whether the process is alive and the server says ready
  (asked now), restarts and the last error, as the supervisor recorded them. Exit code 1 when
  something deployed is not running or ready, so scripts and monitors can rely on it.
* ``start``: after a reboot (or any time), brings every environment back to what the registry
  says (production: the ``production`` alias) and prints the address for the camera's client.
* ``install-service``: writes a systemd unit that runs ``start`` at boot and ``stop`` at
  shutdown.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

ENVIRONMENTS = ("test", "production")


def add_verbs(dp_sub) -> None:
    """Adds ``start`` and ``install-service`` to the ``deploy`` subparsers (``status`` exists)."""
    d = dp_sub.add_parser("start",
                          help="bring the local environments back to what the registry says "
                               "(after a reboot) and print their addresses")
    d.add_argument("--env", action="append", choices=list(ENVIRONMENTS),
                   help="environment to start (repeatable; default: both)")
    d.add_argument("--host", default=None,
                   help="address the routers bind (default 127.0.0.1, or what they used "
                        "before); 0.0.0.0 lets a camera on the network reach them")
    d.add_argument("--port", action="append", default=[], metavar="ENV=PORT",
                   help="port of an environment's router, e.g. production=8500 (default: "
                        "the one it had, else a free one)")
    d = dp_sub.add_parser("install-service",
                          help="write a systemd unit that runs `mlops deploy start` at boot")
    d.add_argument("--unit", default=str(Path.home() / ".config/systemd/user/"
                                         "mlops-deploy.service"),
                   help="where to write the unit file (default: %(default)s)")
    d.add_argument("--print", dest="print_only", action="store_true",
                   help="print the unit instead of writing it")


def _ports(values: list[str]) -> dict[str, int]:
    out = {}
    for value in values:
        env, _, port = value.partition("=")
        if env not in ENVIRONMENTS or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"Invalid --port {value!r}. Expect ENV=PORT with ENV one of "
                             f"{', '.join(ENVIRONMENTS)}, e.g. production=8500.")
        out[env] = int(port)
    return out


def _ready(url: str, name: str) -> bool:
    import requests

    try:
        r = requests.get(f"{url}/v1/models/{name}", timeout=2)
        return r.status_code == 200 and bool(r.json().get("ready"))
    except (requests.RequestException, ValueError):
        return False


def print_status(target) -> int:
    """Prints what runs where, asking every process now; 1 if anything deployed is down."""
    from components.deploy import router as rt

    problems = 0
    for env in ENVIRONMENTS:
        dep = target.status(env)
        if dep is None:
            print(f"{env}: nothing deployed")
            continue
        router = target.router(env)
        router_up = bool(router.get("pid")) and rt.router_alive(router["pid"], router["port"])
        health = target.supervision(env)
        healthy = health.get("healthy", True)
        print(f"{env}: version {dep.stable.version} at {dep.url} "
              f"(/v1/models/{dep.name}:predict)"
              + ("" if router_up else "  ROUTER NOT RUNNING (mlops deploy start)")
              + ("" if healthy else "  UNHEALTHY: a model server was given up on"))
        problems += (not router_up) + (not healthy)
        if router:
            print(f"  router: pid {router.get('pid')} {'alive' if router_up else 'gone'}, "
                  f"binds {router.get('host')}:{router.get('port')}, log {router.get('log')}")
        for role, rev in (("stable", dep.stable), ("canary", dep.canary)):
            if rev is None:
                continue
            share = dep.canary_percent if role == "canary" else (
                100 - dep.canary_percent if dep.canary else 100)
            d = rev.detail
            alive = d.get("running", False)
            ready = alive and _ready(rev.url, dep.name)
            problems += not ready
            line = (f"  {role}: version {rev.version}, {share}% of traffic, pid {d['pid']} "
                    f"{'alive' if alive else 'NOT RUNNING'}, "
                    f"{'ready' if ready else 'NOT READY'}, restarts {d.get('restarts', 0)}"
                    + (f" ({d['state']})" if d.get("state") not in (None, "running") else "")
                    + f", {rev.url}")
            print(line)
            if d.get("last_error"):
                print(f"    last error: {d['last_error']}")
    return 1 if problems else 0


def start(target, args) -> int:
    """``mlops deploy start``: every environment back to what the registry says."""
    from components.deploy.targets.local import LocalTarget

    ports = _ports(args.port)
    envs = tuple(args.env or ENVIRONMENTS)
    local = LocalTarget(target.registry.uri, target.model_name, target.state_dir,
                        host=target.host, server_args=target.server_args,
                        router_host=args.host, router_ports=ports)
    for env in envs:
        recorded = local.router(env)
        moved = (args.host and recorded.get("host") not in (None, args.host)) or \
            (env in ports and recorded.get("port") not in (None, ports[env]))
        if moved:  # a new address asked for: the router restarts there
            local.stop_router(env)
            with local._locked():
                state = local._read()
                state.setdefault("routers", {})[env] = {
                    "port": ports.get(env, recorded.get("port"))}
                local._write(state)
    results = local.start(envs)
    for env in envs:
        dep = results.get(env)
        if dep is None:
            why = ("no 'production' alias in the registry yet: release a version first"
                   if env == "production" else "nothing was deployed there")
            print(f"{env}: nothing to serve ({why})")
            continue
        print(f"{env}: version {dep.stable.version} at {dep.url}")
        print(f"  give the camera's client: {dep.url}/v1/models/{dep.name}:predict")
    return 0


def install_service(target, args) -> int:
    """Writes (or prints) a systemd unit running ``mlops deploy start`` at boot."""
    exe = Path(sys.executable).with_name("mlops")
    command = ([str(exe)] if exe.exists() else [sys.executable, "-m", "components.cli"]) + [
        "deploy", "--registry", target.registry.uri, "--serving-root",
        str(Path(target.state_dir).resolve()), "--model", target.model_name]
    base = shlex.join(command)
    unit = f"""[Unit]
Description=Pet park model serving ({target.model_name}): routers and KServe model servers
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
WorkingDirectory={os.getcwd()}
{"Environment=MLOPS_HOME=" + os.environ["MLOPS_HOME"] + chr(10) if os.environ.get("MLOPS_HOME")
 else ""}ExecStart={base} start
ExecStop={base} stop

[Install]
WantedBy=default.target
"""
    if args.print_only:
        print(unit, end="")
        return 0
    path = Path(args.unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit)
    print(f"Wrote {path}. Enable it with:\n  systemctl --user daemon-reload && "
          f"systemctl --user enable --now {path.name}\n(and `loginctl enable-linger "
          f"{os.environ.get('USER', '$USER')}` so it starts without a login).")
    return 0


def run(target, args) -> int:
    """Dispatches the local target's verbs; called from ``components/cli.py``."""
    if args.deploy_command == "status":
        return print_status(target)
    if args.deploy_command == "start":
        return start(target, args)
    if args.deploy_command == "install-service":
        return install_service(target, args)
    raise ValueError(f"Unknown local deploy command {args.deploy_command!r}.")


class Camera:
    """The park's camera for the demo: while the pipeline runs, sends a frame to the production
    endpoint (the router) every ``interval`` seconds and counts the answers by the revision and
    version that served them, so the demo shows live traffic split during the release and that
    no frame failed across it.

    Args:
        target: The local target whose production endpoint to call.
        frames: Encoded images to send in turn.
    """

    def __init__(self, target, frames: list[bytes], interval: float = 0.1):
        import threading

        self.target, self.frames, self.interval = target, frames, interval
        self.answers: dict[tuple[str, str], int] = {}
        self.failed: list[str] = []
        self.endpoint = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="demo-camera")

    @classmethod
    def from_lake(cls, target, lake_uri: str, n: int = 40, **kwargs) -> Camera:
        from components.common.storage import open_store

        lake = open_store(lake_uri)
        keys = [o.key for o in lake.list() if o.key.lower().endswith((".jpg", ".jpeg", ".png"))]
        return cls(target, [lake.get(k) for k in keys[:: max(1, len(keys) // n)][:n]], **kwargs)

    def start(self) -> Camera:
        if self.frames:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)

    def _run(self) -> None:
        import requests

        from components.deploy.client import v1_body
        from components.deploy.router import REVISION_HEADER, VERSION_HEADER

        session, i = requests.Session(), 0
        while not self._stop.wait(self.interval):
            dep = self.target.status("production")
            if dep is None or dep.url == dep.stable.url:  # nothing (or no router) yet
                continue
            self.endpoint = dep.url
            try:
                r = session.post(f"{dep.url}/v1/models/{dep.name}:predict",
                                 json=v1_body([self.frames[i % len(self.frames)]]), timeout=10)
                if r.status_code == 200:
                    key = (r.headers.get(REVISION_HEADER, "?"), r.headers.get(VERSION_HEADER, "?"))
                    self.answers[key] = self.answers.get(key, 0) + 1
                else:
                    self.failed.append(f"HTTP {r.status_code}")
            except requests.RequestException as exc:
                self.failed.append(type(exc).__name__)
            i += 1

    def summary(self) -> str:
        total = sum(self.answers.values())
        if not total and not self.failed:
            return "Camera: production had no endpoint while the pipeline ran."
        parts = ", ".join(f"version {v} ({role}) {n}"
                          for (role, v), n in sorted(self.answers.items(), key=lambda x: x[0][1]))
        return (f"Camera at {self.endpoint}: {total} frames answered ({parts}), "
                f"{len(self.failed)} failed")
