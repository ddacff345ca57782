"""The model server's connections under clients that send too much, too slowly or too often
(issue 22), over HTTP on 127.0.0.1: each bound refuses the bad client and the good one keeps
being answered. How fast each refusal is, is measured in ``bench/serving_hostile.py``."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from components.serve.tests.test_hostile import MODEL, Connection, _rss_mib, _start
from tests.support import stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
KEEPALIVE = 2.0


@pytest.fixture(scope="module")
def server(package_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("edge") / "server.log"
    proc, url, port = _start(package_dir, log, "--header-timeout", str(HEADER_TIMEOUT),
                             "--body-timeout", str(BODY_TIMEOUT),
                             "--keepalive-timeout", str(KEEPALIVE))
    yield {"url": url, "port": port, "proc": proc, "log": log}
    stop_process(proc)


class GoodClient:
    """A camera on one keep-alive connection, asking ``path`` (readiness) every 20 ms in a
    thread; records each answer's status and when it came."""

    def __init__(self, url: str, path: str = "/v2/health/ready"):
        self.url, self.path = url, path
        self.answers: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                try:
                    status = client.get(self.url + self.path).status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                self.answers.append((time.monotonic(), status))
                time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)

    def statuses(self) -> set:
        return {status for _, status in self.answers}


def send_huge_header(port: int, size: int, timeout_s: float = 60) -> bytes:
    """Sends a request whose one header is ``size`` bytes; returns what the server answered
    (``b""`` if it closed the connection without an answer). ``bench/serving_hostile.py``
    times it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    try:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * (1 << 20)
        for _ in range(size >> 20):
            sock.sendall(chunk)
        sock.sendall(b"\r\n\r\n")
    except OSError:
        pass  # the server refused and closed while we were still sending
    try:
        return sock.recv(4096)
    except OSError:
        return b""
    finally:
        sock.close()


def refused_with(answer: bytes, status: int) -> bool:
    return answer == b"" or answer.startswith(f"HTTP/1.1 {status} ".encode())


def test_a_96_mib_header_is_refused_and_good_clients_are_answered_meanwhile(server):
    rss_before = _rss_mib(server["proc"].pid)
    with GoodClient(server["url"]) as good:
        time.sleep(0.2)
        answer = send_huge_header(server["port"], 96 << 20)
        time.sleep(0.2)
    assert refused_with(answer, 431), answer[:200]
    if answer:
        assert b"--max-header-bytes" in answer
    assert good.statuses() == {200}, good.answers[-5:]
    # The header was never held: reading it whole used to take 190 MiB (and 38 s).
    assert _rss_mib(server["proc"].pid) - rss_before < 40
    assert httpx.get(f"{server['url']}/v2/health/ready", timeout=10).status_code == 200


def test_too_many_headers_are_a_431_and_a_hundred_are_fine(server):
    conn = Connection(server["port"])
    try:
        headers = {f"X-Field-{i}": "1" for i in range(98)}  # with Host and Content-Length: 100
        status, _, _ = conn.exchange("GET", "/v2/health/ready", headers=headers)
        assert status == 200
        status, headers, body = conn.exchange(
            "GET", "/v2/health/ready", headers={f"X-Field-{i}": "1" for i in range(200)})
    finally:
        conn.close()
    assert status == 431 and "--max-headers" in json.loads(body)["error"]
    assert headers.get("connection") == "close"


def trickle(port: int, n: int = 100, limit_s: float = 60, header_bytes: int = 400
            ) -> tuple[dict[int, bytes], float]:
    """Opens ``n`` connections that each send a request line and a header of
    ``header_bytes`` a byte at a time, every 0.2 s, until the server has answered or closed
    every one (or ``limit_s`` passed); returns what each got (``b""``: closed without an
    answer) and the seconds it took. ``bench/serving_hostile.py`` times it."""
    line = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * header_bytes
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    answers: dict[int, bytes] = {}
    started = time.monotonic()
    try:
        for step in range(len(line)):
            for i, sock in enumerate(socks):
                if i in answers:
                    continue
                try:
                    sock.sendall(line[step:step + 1])
                    sock.setblocking(False)
                    try:
                        answers[i] = sock.recv(4096)  # an answer, or b"": closed
                    except BlockingIOError:
                        pass
                    finally:
                        sock.setblocking(True)
                except OSError:
                    answers[i] = b""  # closed under us
            if len(answers) == n or time.monotonic() - started > limit_s:
                break
            time.sleep(0.2)
    finally:
        for sock in socks:
            sock.close()
    return answers, time.monotonic() - started


def test_a_hundred_trickling_connections_are_closed_at_the_header_deadline(server):
    """Each sends its request line a byte every 0.2 s: none is held past the deadline, and
    the good client is answered throughout."""
    with GoodClient(server["url"]) as good:
        answers, elapsed = trickle(server["port"])
    assert len(answers) == 100, f"{100 - len(answers)} slow clients still open after {elapsed} s"
    assert all(refused_with(a, 408) for a in answers.values())
    assert elapsed >= HEADER_TIMEOUT  # not before the deadline
    assert good.statuses() == {200}, good.answers[-5:]


def trickle_body(conn: Connection, n: int = 100, every_s: float = 0.1) -> bytes:
    """Sends a body's bytes one at a time, ``every_s`` apart, until an answer arrives (what
    it says) or ``n`` bytes are sent or the connection is closed (empty)."""
    for _ in range(n):
        try:
            conn.sock.sendall(b" ")
        except OSError:
            break
        conn.sock.setblocking(False)
        try:
            return conn.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            conn.sock.setblocking(True)
        time.sleep(every_s)
    return b""


def test_a_trickled_body_is_a_408_at_the_body_deadline(server):
    conn = Connection(server["port"], timeout=30)
    try:
        conn.send("POST", f"/v1/models/{MODEL}:predict", b"{", {"Content-Type":
                                                                "application/json"},
                  length=1000)
        started = time.monotonic()
        answer = trickle_body(conn)
    finally:
        conn.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"--body-timeout" in answer
    assert time.monotonic() - started < 10 * BODY_TIMEOUT


def test_an_idle_keep_alive_connection_is_closed(server):
    conn = Connection(server["port"], timeout=30)
    try:
        status, _, _ = conn.exchange("GET", "/v2/health/ready")
        assert status == 200
        started = time.monotonic()
        assert conn.sock.recv(100) == b""  # the server closed it
        assert time.monotonic() - started >= KEEPALIVE * 0.9
    finally:
        conn.close()


def _numbers_body(mib: int) -> bytes:
    """A V2 JSON body of about ``mib`` MiB of FP32 numbers (a shape that does not match)."""
    n = mib * (1 << 20) // 10  # "0.1234567," per number
    data = ",".join(["0.1234567"] * n)
    return (f'{{"inputs": [{{"name": "input", "shape": [{n // 3072 + 1}, 3, 32, 32], '
            f'"datatype": "FP32", "data": [{data}]}}]}}').encode()


def test_a_30_mib_v2_body_is_read_while_other_clients_are_answered(server):
    body = _numbers_body(30)
    spans = []

    def big():
        for _ in range(2):
            t0 = time.monotonic()
            r = httpx.post(f"{server['url']}/v2/models/{MODEL}/infer", content=body,
                           timeout=120)
            spans.append((t0, time.monotonic(), r.status_code, r.json()["error"]))

    with GoodClient(server["url"]) as good:
        sender = threading.Thread(target=big)
        sender.start()
        sender.join(120)
    assert [status for *_, status, _ in spans] == [400, 400]
    assert all("needs" in error and "elements" in error for *_, error in spans)
    assert good.statuses() == {200}
    # The event loop kept answering while the body was parsed: the longest wait between two
    # answers is a small part of the big request's time (parsed on the loop, it was most).
    for t0, t1, *_ in spans:
        times = [t0, *(t for t, _ in good.answers if t0 < t < t1), t1]
        longest = max(b - a for a, b in zip(times, times[1:], strict=False))
        assert longest < 0.5 * (t1 - t0), (longest, t1 - t0)


def test_a_large_body_read_off_the_event_loop_is_answered_as_a_small_one(server):
    """100 preprocessed images as V2 JSON (3 MB: read in the body reader process) get the
    answer the same tensor gets with the binary extension (read in place)."""
    x = np.random.default_rng(5).normal(size=(100, 3, 32, 32)).astype(np.float32)
    as_json = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape),
                                      "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
    assert len(as_json) > 2 << 20
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape),
                                     "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    url = f"{server['url']}/v2/models/{MODEL}/infer"
    far = httpx.post(url, content=as_json, timeout=60)
    near = httpx.post(url, content=header + x.tobytes(), timeout=60,
                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert far.status_code == near.status_code == 200, far.text[:300]
    probs = [next(o for o in r.json()["outputs"] if o["name"] == "probabilities")["data"]
             for r in (far, near)]
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)
    assert len(probs[0]) == 200


def test_connections_beyond_the_cap_are_refused_and_open_ones_are_served(package_dir,
                                                                         tmp_path):
    proc, url, port = _start(package_dir, tmp_path / "server.log", "--max-connections", "10",
                             "--header-timeout", "60")
    idle = []
    try:
        with httpx.Client(timeout=30) as established:
            assert established.get(f"{url}/v2/health/ready").status_code == 200
            for _ in range(12):  # opened and left silent: they fill the cap
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            time.sleep(0.5)
            for _ in range(5):  # the connection already open keeps being served
                assert established.get(f"{url}/v2/health/ready").status_code == 200
            with _refused() as refused:  # a new one is not
                refused.status = httpx.get(f"{url}/v2/health/ready", timeout=10).status_code
            assert refused.status in (503, "closed")
            for sock in idle:
                sock.close()
            idle.clear()
            time.sleep(0.5)
            assert httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
        log = (tmp_path / "server.log").read_text()
        assert "--max-connections 10" in log and "Traceback" not in log
    finally:
        for sock in idle:
            sock.close()
        stop_process(proc)


class _refused:
    """Records a new connection's outcome: its status, or ``"closed"`` when it was closed
    before an answer."""

    status: int | str | None = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, httpx.TransportError):
            self.status = "closed"
            return True
        return False


def test_the_bounds_are_options_with_their_defaults_shown():
    import subprocess

    run = subprocess.run([sys.executable, "-m", "components.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split()).split("client bounds", 1)[1]
    for option, default in (("--max-header-bytes", "32768"), ("--max-headers", "100"),
                            ("--header-timeout", "10.0"), ("--body-timeout", "30.0"),
                            ("--keepalive-timeout", "65.0"), ("--max-connections", "512"),
                            ("--max-body-bytes", "33554432")):
        assert option in text
        after = text.split(option, 1)[1]
        assert f"(default: {default})" in after.split("--", 1)[0], option

