"""``mlops deploy …``: test and production deployments, canary releases, predictions.

For the local target (the park's computer) also:

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

from components.cli.common import OptionError, check_range, parse_canary_steps, positive_int
from components.common.paths import mlops_home
from components.deploy.targets import TARGETS

ENVIRONMENTS = ("test", "production")


def add_commands(sub) -> None:
    """Adds the ``deploy`` verb group to the top-level subparsers."""
    dp = sub.add_parser("deploy", help="deployments: status, release, predict, stop")
    dp.add_argument("--registry", default="", help="registry URI (default: $MLOPS_HOME/registry)")
    dp.add_argument("--serving-root", default="",
                    help="local target state (default: $MLOPS_HOME/deployments)")
    dp.add_argument("--model", default="pet-classifier", help="registered model name")
    dp.add_argument("--target", choices=list(TARGETS), default="local",
                    help="local model servers (default) or InferenceServices in --namespace")
    dp.add_argument("--namespace", default="", help="Kubernetes namespace (kserve target)")
    dp_sub = dp.add_subparsers(dest="deploy_command", required=True)
    d = dp_sub.add_parser("release", help="release a registered version by canary")
    d.add_argument("version", type=positive_int, help="registry version to release")
    d.add_argument("--probes", required=True,
                   help="a labelled dataset folder (a split written by the ingest step)")
    d.add_argument("--canary-steps", default="10,50",
                   help="canary traffic percentages, increasing, each 1 to 99")
    d.add_argument("--requests-per-step", type=int, default=100,
                   help="labelled probe requests sent to each revision per step")
    d.add_argument("--max-p95-ms", type=float, default=250.0,
                   help="largest canary p95 latency in ms")
    d.add_argument("--require-approval", action="store_true",
                   help="hold the release until `mlops registry approve`")
    d.add_argument("--approval-timeout-s", type=float, default=0.0,
                   help="how long a held release waits for approval")
    dp_sub.add_parser("status", help="what runs in test and production")
    _add_local_verbs(dp_sub)  # start, install-service
    d = dp_sub.add_parser("stop", help="stop the local model servers")
    d.add_argument("--env", action="append", choices=["test", "production"],
                   help="stop only this environment (repeatable; default: all)")
    d = dp_sub.add_parser("predict", help="classify image files with a deployed model")
    d.add_argument("images", nargs="+", help="image files (JPEG, PNG, …)")
    d.add_argument("--env", default="production", choices=["test", "production"],
                   help="which environment to ask")
    d.add_argument("--context", default="",
                   help="the camera's mode the frames were taken in, sent as the "
                        "x-camera-context header: one of the deployment's contexts "
                        "(MLOPS_CONTEXTS; the park's are day and night); recorded with each "
                        "capture, never overriding what the image shows (default: none sent)")
    dp.set_defaults(func=_cmd_deploy)


def _add_local_verbs(dp_sub) -> None:
    """Adds ``start`` and ``install-service`` to the ``deploy`` subparsers (``status`` exists)."""
    d = dp_sub.add_parser("start",
                          help="bring the local environments back to what the registry says "
                               "(after a reboot) and print their addresses")
    d.add_argument("--env", action="append", choices=list(ENVIRONMENTS),
                   help="environment to start (repeatable; default: both)")
    d.add_argument("--host", default=None,
                   help="address the routers bind (default: 127.0.0.1, or what they used "
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


def capture_uri() -> str:
    """Where production captures what it serves: the monitoring store the monitor reads.

    Also exported as ``$MLOPS_CAPTURE_URI`` so that the release steps of a local pipeline run
    (subprocesses) start production's model servers with capture on."""
    from components.monitor.capture import default_capture_uri

    uri = default_capture_uri()
    os.environ.setdefault("MLOPS_CAPTURE_URI", uri)
    return uri


def _deploy_target(args):
    from components.deploy.targets.kserve import KServeTarget
    from components.deploy.targets.local import LocalTarget

    home = mlops_home()
    registry = args.registry or str(home / "registry")
    if args.target == "kserve":
        if not args.namespace:
            raise ValueError("--target kserve needs --namespace.")
        # From outside the cluster: probe the revisions at their external URLs.
        return KServeTarget(registry, args.model, args.namespace, cluster_local=False)
    return LocalTarget(registry, args.model, args.serving_root or str(home / "deployments"),
                       capture_uri=capture_uri())


def _cmd_deploy(args) -> int:
    target = _deploy_target(args)
    if args.deploy_command in ("status", "start", "install-service"):
        if args.target == "local":
            return _run_local(target, args)
        if args.deploy_command != "status":
            raise ValueError(f"`mlops deploy {args.deploy_command}` is for the local target.")
    if args.deploy_command == "release":
        parse_canary_steps("--canary-steps", args.canary_steps)
        check_range("--requests-per-step", args.requests_per_step, 1)
        check_range("--max-p95-ms", args.max_p95_ms, 0.0, low_open=True)
        check_range("--approval-timeout-s", args.approval_timeout_s, 0.0)
        from components.deploy.apptest import load_labelled_split
        from components.deploy.release import CanaryPolicy, release, release_markdown

        policy = CanaryPolicy.from_steps_text(
            args.canary_steps, requests_per_step=args.requests_per_step,
            max_p95_ms=args.max_p95_ms, require_approval=args.require_approval,
            approval_timeout_s=args.approval_timeout_s)
        try:
            images, labels = load_labelled_split(args.probes)
        except FileNotFoundError as exc:
            raise OptionError(
                f"--probes {args.probes!r}: expected a labelled split folder written by the "
                "ingest step (dataset.json and manifest.csv), e.g. a training run's "
                "ingest-data/test output (`mlops runs show` lists them); "
                f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None
        print(f"Releasing {args.model} version {args.version} to production "
              f"(canary steps {args.canary_steps}) ...", file=sys.stderr)
        record = release(target, int(args.version), images, labels, policy,
                         reason="released from the command line")
        print(release_markdown(record))
        return 0 if record["decision"] != "rolled_back" else 1
    if args.deploy_command == "status":
        for env in ("test", "production"):
            dep = target.status(env)
            if dep is None:
                print(f"{env}: nothing deployed")
                continue
            if dep.stable is None:
                print(f"{env}: {dep.name} has no ready revision yet")
                continue
            print(f"{env}: version {dep.stable.version} at {dep.url} "
                  f"(/v1/models/{dep.name}:predict)"
                  + ("" if dep.stable.detail.get("running", True) else "  NOT RUNNING"))
            if dep.canary:
                print(f"  canary: version {dep.canary.version} at {dep.canary.url} "
                      f"({dep.canary_percent}% recorded)")
            detail = dep.stable.detail
            if detail.get("held_revision"):  # KServe: a rolled-back revision not yet replaced
                print(f"  held at 0%: revision {detail['held_revision']} (version "
                      f"{detail.get('held_version')}), replaced by the next release")
            if detail.get("pending_revision"):
                print(f"  not ready: revision {detail['pending_revision']} (version "
                      f"{detail.get('pending_version')}), no traffic")
    elif args.deploy_command == "stop":
        for env in args.env or ["test", "production"]:
            target.delete(env)
            print(f"stopped {env}")
    elif args.deploy_command == "predict":
        from components.deploy.client import RequestRefused, predict_answer

        dep = target.status(args.env)
        if dep is None:
            raise ValueError(f"Nothing is deployed in {args.env!r}: `mlops deploy start` "
                             "serves the registry's version again (after `mlops deploy stop` "
                             "or a reboot); `mlops run training --data LAKE` trains and "
                             "releases one.")
        images = [Path(p).read_bytes() for p in args.images]
        headers = {"x-camera-context": args.context} if args.context else {}
        refused = 0
        # One request per image, so that each answer has a request id of its own for
        # `mlops monitor label` and `mlops trace`.
        for path, image in zip(args.images, images, strict=True):
            try:
                answer = predict_answer(dep.url, dep.name, [image], headers=headers)
            except RequestRefused as exc:
                if "context" in exc.reason and args.context:
                    raise OptionError(f"--context {args.context!r}: {exc.reason}") from None
                refused += 1
                print(f"error: {path} was refused ({exc.status}): {exc.reason}",
                      file=sys.stderr)
                continue
            p = answer["predictions"][0]
            prob = p["probabilities"][p["label"]]
            print(f"{path}\t{p['label']}\t{prob:.3f}\t{answer.get('request_id', '')}")
        print("(file, answer, probability, request id: `mlops trace ID`, "
              "`mlops monitor label ID CLASS`)", file=sys.stderr)
        if refused:
            return 2
    return 0


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
            if env == "production":
                print("  `mlops deploy start` serves the registry's production version "
                      "again; `mlops run training --data LAKE` trains and releases one")
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
                  f"binds {router.get('host')}:{router.get('port')}, state at "
                  f"{router.get('control_url', '-')}/-/router, log {router.get('log')}")
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
    from components.common.service import check_port_free
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
        if moved or (env in ports and recorded.get("port") is None):
            # A new address asked for: the router (re)starts there, if nothing else has it.
            local.stop_router(env)
            port = ports.get(env, recorded.get("port"))
            if port:
                check_port_free(args.host or "127.0.0.1", port, f"--port {env}=PORT")
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


def _run_local(target, args) -> int:
    """Dispatches the local target's verbs."""
    if args.deploy_command == "status":
        return print_status(target)
    if args.deploy_command == "start":
        return start(target, args)
    if args.deploy_command == "install-service":
        return install_service(target, args)
    raise ValueError(f"Unknown local deploy command {args.deploy_command!r}.")
