"""The local target's router and supervisor against real KServe model servers on loopback."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from components.common.registry import ModelRegistry
from components.deploy.apptest import load_labelled_split
from components.deploy.client import v1_body
from components.deploy.router import REVISION_HEADER, VERSION_HEADER, WeightedChoice
from components.deploy.supervisor import process_alive, read_events
from components.deploy.targets.local import LocalTarget
from components.serve.routing import TOKEN_ENV, TOKEN_HEADER
from tests.support import free_port

MODEL = "pets"
FAST = ("--backoff-base=0.2", "--backoff-max=1", "--max-restarts=2")


def test_weighted_choice_is_exact_and_interleaved():
    choice = WeightedChoice(10)
    picks = [choice.pick() for _ in range(1000)]
    assert picks.count("canary") == 100
    assert all(picks[i:i + 10].count("canary") == 1 for i in range(0, 1000, 10))
    choice.set(50)
    assert [choice.pick() for _ in range(200)].count("canary") == 100


@pytest.fixture(scope="module")
def env(package_dir, dataset_dirs, tmp_path_factory):
    """A registry with three versions of one package and a local target with fast restarts."""
    base = tmp_path_factory.mktemp("router")
    registry = ModelRegistry(str(base / "registry"))
    files = {p.relative_to(package_dir).as_posix(): p.read_bytes()
             for p in package_dir.rglob("*") if p.is_file()}
    for _ in range(3):
        registry.register(MODEL, files, {"dataset_version": "test"})
    images, _ = load_labelled_split(dataset_dirs[1])
    target = LocalTarget(registry.uri, MODEL, base / "deployments", router_args=FAST)
    yield registry, target, images[:20]
    target.delete_all()


def _ask(session, url, image, timeout=10):
    r = session.post(f"{url}/v1/models/{MODEL}:predict", json=v1_body([image]), timeout=timeout)
    return r.status_code, r.headers.get(REVISION_HEADER), r.headers.get(VERSION_HEADER)


def _send(url, images, n, concurrency=8):
    local = threading.local()

    def one(i):
        if not hasattr(local, "s"):
            local.s = requests.Session()
        return _ask(local.s, url, images[i % len(images)])

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(n)))


class Load:
    """An application calling the endpoint without pause while the test changes routes."""

    def __init__(self, url, images, threads=4):
        self.url, self.images = url, images
        self.stop = threading.Event()
        self.answers, self.failures = [], []
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        session, i = requests.Session(), 0
        while not self.stop.is_set():
            try:
                status, role, version = _ask(session, self.url, self.images[i % 20])
                (self.answers if status == 200 else self.failures).append((status, version))
            except requests.RequestException as exc:
                self.failures.append((repr(exc), None))
            i += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _deployed(target, version):
    dep = target.status("production")
    if dep is None or dep.stable.version != version or dep.canary is not None:
        dep = target.deploy("production", version)
    return dep


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_traffic_is_split_by_weight_and_answers_name_the_revision(env):
    registry, target, images = env
    _deployed(target, 1)
    dep = target.start_canary("production", 2, 10)
    assert dep.url.startswith("http://127.0.0.1:") and dep.url != dep.stable.url
    for percent in (10, 50):
        target.set_canary_traffic("production", percent)
        answers = _send(dep.url, images, 1000)
        assert all(status == 200 for status, _, _ in answers)
        roles = Counter(role for _, role, _ in answers)
        versions = Counter(version for _, _, version in answers)
        assert abs(roles["canary"] - 10 * percent) <= 30, roles  # within 3% of 1,000
        assert versions["2"] == roles["canary"] and versions["1"] == roles["stable"]
    # The analysis still reaches each revision on its own URL.
    for rev in (dep.stable, dep.canary):
        status, role, _ = _ask(requests.Session(), rev.url, images[0])
        assert status == 200 and role is None  # straight to the model server
    control = target.router("production")["control_url"]
    assert control.startswith("http://127.0.0.1:") and control != dep.url
    router = requests.get(f"{control}/-/router", timeout=5).json()
    assert router["routes"]["canary"] == {"version": 2, "url": dep.canary.url, "percent": 50}
    # The serving port, which a camera on the network reaches, does not show it.
    for method in ("GET", "POST"):
        r = requests.request(method, f"{dep.url}/-/router", timeout=5)
        assert r.status_code == 404 and "routes" not in r.text
    assert requests.get(f"{dep.url}/-/healthz", timeout=5).status_code == 200
    target.rollback("production")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_promote_and_rollback_under_load_fail_no_request_and_keep_the_endpoint(env):
    registry, target, images = env
    endpoint = _deployed(target, 1).url
    releases = [(2, "promote"), (3, "rollback"), (3, "promote"), (1, "promote")]
    with Load(endpoint, images) as load:
        for version, action in releases:
            target.start_canary("production", version, 50)
            time.sleep(0.5)
            before = len(load.answers)
            dep = getattr(target, action)("production")
            assert dep.url == endpoint
            time.sleep(0.5)
            assert len(load.answers) > before  # traffic kept flowing through the switch
    assert load.failures == [], load.failures[:5]
    assert len(load.answers) > 100
    # Three releases later the camera's endpoint is the same and serves the last promoted.
    dep = target.status("production")
    assert dep.url == endpoint and dep.stable.version == 1
    assert _send(endpoint, images, 20) == [(200, "stable", "1")] * 20


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_model_server_is_restarted_and_status_says_so(env):
    registry, target, images = env
    dep = _deployed(target, 2)
    old_pid = dep.stable.detail["pid"]
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = target.status("production")
        if now.stable.detail.get("restarts", 0) >= 1 and now.stable.detail.get("ready"):
            break
        time.sleep(0.2)
    assert now.stable.detail["restarts"] >= 1 and now.stable.detail["running"]
    assert now.stable.detail["pid"] != old_pid and now.stable.detail["state"] == "running"
    assert "exited" in now.stable.detail["last_error"]
    assert now.url == dep.url and now.stable.url == dep.stable.url  # same addresses
    assert _send(dep.url, images, 10) == [(200, "stable", "2")] * 10
    events = [e["event"] for e in read_events(target.state_dir) if e["version"] == 2]
    assert events[-2:] == ["exited", "restarted"]
    # Stopping the environment stops the restarted server too (the supervisor's child).
    restarted = now.stable.detail["pid"]
    target.delete("production")
    assert not process_alive(restarted, now.stable.detail["port"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_server_that_keeps_crashing_is_given_up_and_reported(env, tmp_path):
    registry, target, images = env
    dep = _deployed(target, 3)
    package = target.state_dir / "packages" / MODEL / "3" / "model.onnx"
    saved = package.read_bytes()
    package.write_bytes(b"broken on disk")
    try:
        os.kill(dep.stable.detail["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            report = target.supervision("production")
            if not report.get("healthy", True):
                break
            time.sleep(0.3)
        assert report["healthy"] is False
        now = target.status("production")
        assert now.stable.detail["state"] == "failed" and not now.stable.detail["running"]
        assert now.stable.detail["restarts"] == 2  # max_restarts, then it stopped trying
        alarm = [e for e in read_events(target.state_dir) if e["severity"] == "alarm"]
        assert alarm and alarm[-1]["event"] == "gave_up" and alarm[-1]["version"] == 3
    finally:
        package.write_bytes(saved)
    target.deploy("production", 3)  # a new deploy brings it back
    assert target.supervision("production")["healthy"] is True


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_start_after_a_reboot_restores_what_the_registry_alias_says(env):
    registry, target, images = env
    dep = _deployed(target, 1)
    registry.set_alias(MODEL, "production", 2, reason="test")
    # A reboot: every process is gone, the state folder stays.
    os.kill(dep.stable.detail["pid"], signal.SIGKILL)
    router = target.router("production")
    os.kill(router["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_alive(dep.stable.detail["pid"], dep.stable.detail["port"]) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    back = target.start(("production",))["production"]
    assert back.url == dep.url and back.stable.version == 2
    assert _send(dep.url, images, 5) == [(200, "stable", "2")] * 5
    state = json.loads((target.state_dir / f"{MODEL}.json").read_text())
    assert state["routers"]["production"]["port"] == int(dep.url.rsplit(":", 1)[1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_start_prints_the_camera_address_and_status_tells_the_truth(env):
    import subprocess
    import sys

    registry, target, images = env
    dep = _deployed(target, 2)
    registry.set_alias(MODEL, "production", 2, reason="test")
    common = ["deploy", "--registry", registry.uri, "--serving-root", str(target.state_dir),
              "--model", MODEL]

    def mlops(*args):
        return subprocess.run([sys.executable, "-m", "components.cli", *common, *args],
                              capture_output=True, text=True, env=dict(os.environ), timeout=120)

    started = mlops("start", "--env", "production")
    assert started.returncode == 0, started.stderr
    assert f"give the camera's client: {dep.url}/v1/models/{MODEL}:predict" in started.stdout
    status = mlops("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"production: version 2 at {dep.url}" in status.stdout
    assert "stable: version 2, 100% of traffic" in status.stdout and "alive, ready" in status.stdout
    # A dead router is reported, and the exit code says something is wrong.
    os.kill(target.router("production")["pid"], signal.SIGKILL)
    time.sleep(0.3)
    down = mlops("status")
    assert down.returncode == 1 and "ROUTER NOT RUNNING" in down.stdout
    assert mlops("start").returncode == 0
    assert _send(dep.url, images, 3) == [(200, "stable", "2")] * 3


ECHO_TOKEN = "token-of-the-echo-deployment"


def _start_echo_router(tmp_path, *args):
    """A router in front of two plain HTTP servers on loopback that echo what they get;
    returns (serving URL, control URL, servers, state file, revisions, router pid)."""
    import hashlib
    import http.server

    from components.deploy.router import start_router

    class Echo(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, body: bytes):
            self.send_response(404 if self.path.startswith("/missing") else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _seen(self) -> dict:
            return {"server": self.server.name, "expect": self.headers.get("Expect"),
                    "revision": self.headers.get(REVISION_HEADER),
                    "token": self.headers.get(TOKEN_HEADER)}

        def do_POST(self):
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(json.dumps({**self._seen(), "len": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest()}).encode())

        def do_GET(self):
            self._answer(json.dumps(self._seen()).encode())

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    servers = []
    for name in ("a", "b"):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
        srv.daemon_threads = True
        srv.name = name
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    rev = [{"version": i + 1, "url": f"http://127.0.0.1:{s.server_address[1]}",
            "storage_uri": "", "detail": {"pid": 0, "port": s.server_address[1]}}
           for i, s in enumerate(servers)]
    state = tmp_path / f"{MODEL}.json"
    state.write_text(json.dumps({"generation": 1, "production": {
        "stable": rev[0], "canary": rev[1], "canary_percent": 50}}))
    port, control = free_port(), free_port()
    pid = start_router(tmp_path, MODEL, "production", MODEL, "127.0.0.1", port,
                       tmp_path / "router.log", extra_args=args, control_port=control,
                       env={**os.environ, TOKEN_ENV: ECHO_TOKEN})
    return (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control}", servers, state, rev,
            pid)


@pytest.fixture
def echo_router(tmp_path):
    url, control, servers, state, rev, pid = _start_echo_router(
        tmp_path, "--max-body-bytes=100000")
    yield url, control, servers, state, rev
    os.kill(pid, signal.SIGTERM)
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.mark.timeout(60)
def test_router_passes_http_through_faithfully(echo_router):
    import http.client

    url, control, servers, state, rev = echo_router
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    # Expect: 100-continue (curl sends it for bodies over 1 KiB) is answered by the router.
    conn.request("POST", "/v1/models/x:predict", body=b"x" * 5000,
                 headers={"Expect": "100-continue", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["len"] == 5000
    # Chunked request bodies arrive whole; HEAD has no body; a 404 stays a 404.
    conn.request("POST", "/echo", body=iter([b"ab", b"cde"]), encode_chunked=True)
    r = conn.getresponse()
    assert json.loads(r.read())["len"] == 5
    conn.request("HEAD", "/v1/models/x")
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b"" and r.getheader(REVISION_HEADER)
    conn.request("GET", "/missing")
    r = conn.getresponse()
    assert r.status == 404 and r.read()
    conn.request("POST", "/big", body=b"x" * 200_000)
    r = conn.getresponse()
    assert r.status == 413
    r.read()
    # One revision down (nothing listens on its port): its share goes to the other one,
    # nobody sees an error.
    dead = free_port()
    down = dict(rev[1], url=f"http://127.0.0.1:{dead}")
    state.write_text(json.dumps({"generation": 2, "production": {
        "stable": rev[0], "canary": down, "canary_percent": 50}}))
    time.sleep(1.2)  # picked up by the file watch, without a SIGHUP
    answers = [requests.post(f"{url}/p", data=b"{}", timeout=5) for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert {a.json()["server"] for a in answers} == {"a"}
    status = requests.get(f"{control}/-/router", timeout=5).json()
    assert status["retried"] >= 5 and status["served"]["stable"] >= 10
    # Nothing deployed: a 503 that says so.
    state.write_text(json.dumps({"generation": 3}))
    time.sleep(1.2)
    r = requests.post(f"{url}/p", data=b"{}", timeout=5)
    assert r.status_code == 503 and "Nothing is deployed" in r.json()["error"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_camera_sees_the_split_and_no_failure_across_a_promotion(env):
    from demo.camera import ProductionCamera

    registry, target, images = env
    _deployed(target, 1)
    camera = ProductionCamera(target, images[:5], interval=0.02).start()
    try:
        target.start_canary("production", 2, 50)
        time.sleep(1.5)
        target.promote("production")
        time.sleep(1.0)
    finally:
        camera.stop()
    assert camera.failed == []
    assert camera.answers.get(("canary", "2"), 0) > 0  # the canary's share, live
    assert camera.answers.get(("stable", "1"), 0) > 0 and camera.answers.get(("stable", "2"), 0)
    assert "0 failed" in camera.summary() and target.status("production").url in camera.summary()
