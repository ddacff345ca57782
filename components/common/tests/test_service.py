"""One way to wait, one back-off, a rate-limited log, and the JSON app both small endpoints
are built on."""

from __future__ import annotations

import asyncio
import math
import socket

import pytest

from components.common.service import (
    RateLimitedLog,
    backoff,
    free_port,
    json_app,
    read_json,
    wait_until,
)


class _Clock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_wait_until_returns_the_first_truthy_result():
    clock, calls = _Clock(), []

    def ready():
        calls.append(clock.now)
        return {"ready": True} if len(calls) == 3 else None

    assert wait_until(ready, 10, 0.5, sleep=clock.sleep, clock=clock) == {"ready": True}
    assert clock.sleeps == [0.5, 0.5]


def test_wait_until_checks_once_more_at_the_deadline_and_never_runs_past_it():
    clock = _Clock()
    assert wait_until(lambda: 0, 1.2, 0.5, sleep=clock.sleep, clock=clock) == 0
    assert clock.sleeps == pytest.approx([0.5, 0.5, 0.2])
    assert clock.now == pytest.approx(101.2)
    # A zero timeout checks once and does not sleep.
    clock = _Clock()
    assert wait_until(lambda: [], 0, 1, sleep=clock.sleep, clock=clock) == []
    assert clock.sleeps == []


def test_wait_until_can_back_off_between_checks():
    clock = _Clock()
    assert wait_until(lambda: None, 5, 0.5, max_poll_s=2, sleep=clock.sleep, clock=clock) is None
    assert clock.sleeps == pytest.approx([0.5, 1, 2, 1.5])


def test_wait_until_lets_the_predicates_exception_through():
    def crashed():
        raise RuntimeError("the server exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_until(crashed, 10, 0.1)


def test_wait_until_on_the_real_clock():
    assert wait_until(lambda: "done", 1, 0.01) == "done"
    assert wait_until(lambda: False, 0.05, 0.01) is False


def test_backoff_doubles_up_to_its_cap():
    assert [backoff(n, 1.0, 10.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert backoff(0, 0.5) == 0.5  # attempt 0 waits the base too
    assert backoff(40, 0.25) == 0.25 * 2 ** 39 and backoff(1, 3.0, math.inf) == 3.0


def test_free_port_can_be_bound_on_loopback():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def _run(app, calls):
    """Sends ``calls`` (method, path, kwargs) to ``app`` in-process; (status, json, headers)."""
    from aiohttp.test_utils import TestClient, TestServer

    async def go():
        async with TestClient(TestServer(app)) as client:
            out = []
            for method, path, kwargs in calls:
                r = await client.request(method, path, **kwargs)
                out.append((r.status, await r.json(), r.headers))
            return out

    return asyncio.run(go())


def _echo_app(**kwargs):
    from aiohttp import web

    app = json_app(**kwargs)

    async def echo(request):
        return web.json_response({"got": await read_json(request)})

    async def boom(_request):
        raise KeyError("secret path /var/x")

    app.router.add_post("/echo", echo)
    app.router.add_get("/boom", boom)
    return app


def test_json_app_health_body_limit_and_json_errors():
    app = _echo_app(health=lambda: {"model": "pets"}, max_body_bytes=100)
    (health, ok, bad, big, missing, method, boom) = _run(app, [
        ("GET", "/healthz", {}),
        ("POST", "/echo", {"json": {"a": 1}}),
        ("POST", "/echo", {"data": b"{not json"}),
        ("POST", "/echo", {"data": b"x" * 500}),
        ("GET", "/nowhere", {}),
        ("GET", "/echo", {}),
        ("GET", "/boom", {}),
    ])
    assert health[:2] == (200, {"status": "ok", "model": "pets"})
    assert ok[:2] == (200, {"got": {"a": 1}})
    assert bad[0] == 400 and bad[1]["error"].startswith("the body is not JSON")
    assert big[0] == 413 and "100" in big[1]["error"]
    assert missing[:2] == (404, {"error": "Not Found"})
    assert method[0] == 405 and method[2]["Allow"] == "POST"
    # A handler's unexpected failure is a JSON 500 that does not repeat its details.
    assert boom[0] == 500 and "secret" not in boom[1]["error"]


def test_json_app_bearer_token():
    app = _echo_app(token="s3cret", health=lambda: {})
    (health, none, wrong, right) = _run(app, [
        ("GET", "/healthz", {}),
        ("POST", "/echo", {"json": 1}),
        ("POST", "/echo", {"json": 1, "headers": {"Authorization": "Bearer nope"}}),
        ("POST", "/echo", {"json": 1, "headers": {"Authorization": "Bearer s3cret"}}),
    ])
    assert health[:2] == (200, {"status": "ok"})  # a probe has no token
    assert none[:2] == (401, {"error": "missing or wrong bearer token"})
    assert none[2]["WWW-Authenticate"] == "Bearer"
    assert wrong[0] == 401 and right[:2] == (200, {"got": 1})


def test_a_rate_limited_log_writes_one_line_per_interval_and_counts_the_rest(caplog,
                                                                           monkeypatch):
    import logging

    from components.common import service

    clock = _Clock()
    monkeypatch.setattr(service.time, "monotonic", clock)
    log = RateLimitedLog(logging.getLogger("test.ratelimited"), interval=10,
                         held_what="refusals")
    with caplog.at_level(logging.WARNING, logger="test.ratelimited"):
        for i in range(5):
            log.warning("refused %d", i)
        clock.sleep(10)
        log.warning("refused %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 5 (4 more refusals since the last line)"]
