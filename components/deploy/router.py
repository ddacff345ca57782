"""The local target's router: one stable endpoint per environment, a weighted split between the
stable and the canary revision, and the supervisor of the environment's model servers.

    python -m components.deploy.router --state-dir DIR --model pet-classifier \
        --environment production --port 8500

One router process runs per environment (started by
:class:`~components.deploy.targets.local.LocalTarget`). Its address does not change across releases:
the camera's client is configured once. What it routes to is the environment's entry in the
target's state file ``<state-dir>/<model>.json`` (stable and canary revision, canary percent,
and a ``generation`` counter); the router reloads it on ``SIGHUP`` (the target sends one after
each change) and, as a fallback, whenever the file's modification time changes. The target
waits until the router reports the new generation before it stops a revision, and until
that revision has no request in flight, so promotions and rollbacks lose no request.

Per request the router picks a revision by smooth weighted round-robin (nginx's algorithm): over
any 100 consecutive requests the canary gets exactly its percent, spread evenly. The answer
carries ``X-Model-Revision: stable|canary`` and ``X-Model-Version: N``. The model server is
told the role too, with the deployment's token (``components/serve/routing.py``): both headers
are taken out of every client request, so no client can make its traffic count as another
role's. A request that cannot reach the chosen revision (connection refused or closed before
any answer) is retried once on the other revision, or on the same one if it is alone;
predictions have no side effects, so a retry is safe.

Everything under ``/-/`` belongs to the router itself. The serving port (``--port``, which a
camera on the network may reach with ``--host 0.0.0.0``) answers only ``GET /-/healthz`` (200
while the router runs); the rest is a 404 there. The router's state is on a control port bound
to 127.0.0.1 whatever ``--host`` says (``--control-port``):

* ``GET /-/router``: the routes, the generation applied, requests and failures per revision,
  requests in flight per backend, and the supervisor's report.

Every client connection is held to the bounds the model server holds it to (header size and
count, header and body deadlines, idle keep-alive, a connection cap, the same body limit:
``components/serve/limits.py``), so the router never reads or forwards what the model server
would refuse.

Why not nginx, HAProxy, Envoy or Traefik: all four would do the proxying well, but each is a
system binary to install and keep (this project installs with pip only), each changes weights
by rewriting a config file and reloading, and none would restart crashed model servers, which
this process must do anyway. Why not aiohttp's server and client, the first version: measured
here they cost about 310 µs of CPU per proxied request, a quarter of what the model server
itself spends, on a machine where both share two cores. The router therefore speaks HTTP/1.1
itself on asyncio (uvloop) with httptools, the C parser uvicorn and KServe already use, in both
directions (about 135 µs per request); aiohttp is only its readiness prober's client
(``bench/router.py``, ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from components.common.helptext import HelpFormatter
from components.common.service import RateLimitedLog, wait_until
from components.deploy.supervisor import SupervisionPolicy, Supervisor
from components.serve.limits import (
    BoundedHead,
    EdgeLimits,
    add_edge_options,
    edge_limits,
)
from components.serve.routing import REVISION_HEADER, TOKEN_ENV, TOKEN_HEADER

logger = logging.getLogger(__name__)

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
              "expect"}
#: Headers only the router may set on what it forwards: taken out of every client request.
ROUTER_ONLY = {REVISION_HEADER.lower(), TOKEN_HEADER.lower()}
VERSION_HEADER = "X-Model-Version"
__all__ = ["REVISION_HEADER", "VERSION_HEADER", "Router", "WeightedChoice"]

LINGER_S = 1.0
"""How long a refused connection reads and drops what its client still sends before it is
closed, so that the client sees the answer rather than a reset."""


_warn = RateLimitedLog(logger, held_what="refusals")


class WeightedChoice:
    """Smooth weighted round-robin between ``stable`` and ``canary``.

    Each pick adds every backend's weight to its credit, takes the backend with the most
    credit, and subtracts the total from it: over any window of ``100`` picks the canary gets
    exactly ``percent`` of them, interleaved (10% is every tenth request, not ten in a row).
    """

    def __init__(self, percent: int = 0):
        self.set(percent)

    def set(self, percent: int) -> None:
        self.weights = {"stable": 100 - int(percent), "canary": int(percent)}
        self.credit = {"stable": 0, "canary": 0}

    def pick(self) -> str:
        for role, weight in self.weights.items():
            self.credit[role] += weight
        role = max(self.credit, key=lambda r: (self.credit[r], r == "stable"))
        self.credit[role] -= 100
        return role


class Router:
    """The router's state and request handling (one per process and environment)."""

    def __init__(self, state_dir: str | os.PathLike, model: str, environment: str,
                 served_name: str, connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 policy: SupervisionPolicy | None = None, token: str | None = None):
        self.state_path = Path(state_dir) / f"{model}.json"
        self.environment = environment
        self.served_name = served_name
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.routes: dict[str, dict] = {}
        self.percent = 0
        self.generation = -1
        self.chooser = WeightedChoice(0)
        self._mtime = None
        self.served = {"stable": 0, "canary": 0}
        self.failed = {"stable": 0, "canary": 0}
        self.retried = 0
        self.inflight: dict[str, int] = {}
        self.supervisor = Supervisor(state_dir, model, environment, served_name, policy)
        self.session = None
        self.pool = BackendPool(connect_timeout, read_timeout)
        self.connections: set = set()
        self.control_connections: set = set()
        self.stopping = False
        # Proves to the model servers that the role header is the router's (routing.py).
        self.token = os.environ.get(TOKEN_ENV, "") if token is None else token
        self.reload()
        self.supervisor.save()  # replaces the report of an earlier router process

    # -- routes ------------------------------------------------------------------------------

    def reload(self) -> None:
        """Reads the environment's routes from the state file (atomically replaced by the
        target, so a read sees the old or the new content, never a mix)."""
        try:
            mtime = self.state_path.stat().st_mtime_ns
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("Cannot read %s (%s); keeping the current routes", self.state_path, exc)
            return
        self._mtime = mtime
        entry = state.get(self.environment) or {}
        routes = {role: entry[role] for role in ("stable", "canary") if entry.get(role)}
        percent = int(entry.get("canary_percent", 0)) if "canary" in routes else 0
        generation = int(state.get("generation", 0))
        if routes != self.routes or percent != self.percent:
            logger.info("%s routes (generation %d): %s", self.environment, generation,
                        ", ".join(f"{r} v{x['version']} {x['url']}" for r, x in routes.items())
                        + (f", canary {percent}%" if "canary" in routes else "") or "none")
        if percent != self.percent or set(routes) != set(self.routes):
            self.chooser.set(percent if "stable" in routes else 100)
        self.routes, self.percent, self.generation = routes, percent, generation
        self.supervisor.prune(routes)

    def reload_if_changed(self) -> None:
        try:
            mtime = self.state_path.stat().st_mtime_ns
        except OSError:
            return
        if mtime != self._mtime:
            self.reload()

    def choose(self) -> str | None:
        if not self.routes:
            return None
        if len(self.routes) == 1:
            return next(iter(self.routes))
        return self.chooser.pick()

    # -- HTTP --------------------------------------------------------------------------------

    async def start_client(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=256, limit_per_host=128,
                                         keepalive_timeout=30, ttl_dns_cache=None)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout,
                                          sock_read=self.read_timeout))

    async def close(self) -> None:
        self.pool.close()
        if self.session is not None:
            await self.session.close()

    async def probe(self, url: str) -> bool:
        import aiohttp

        try:
            async with self.session.get(f"{url}/v1/models/{self.served_name}",
                                        timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200 and bool((await r.json(content_type=None)).get("ready"))
        except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
            return False

    def status(self) -> dict:
        return {"environment": self.environment, "generation": self.generation,
                "routes": {role: {"version": r["version"], "url": r["url"],
                                  "percent": (self.percent if role == "canary"
                                              else 100 - self.percent if len(self.routes) > 1
                                              else 100)}
                           for role, r in self.routes.items()},
                "served": self.served, "failed": self.failed, "retried": self.retried,
                "inflight": {u: n for u, n in self.inflight.items() if n},
                "supervisor": self.supervisor.report(), "pid": os.getpid()}

    async def route(self, method: str, target: str, headers: dict[str, str],
                    body: Sequence[bytes], remote: str | None, control: bool = False
                    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Serves one request: the router's own endpoints, or a model server's answer with the
        revision that served it. ``body`` is the request's body as the chunks it arrived in
        (never joined: see :meth:`BackendPool.request`). Returns (status, headers, body).

        The router's state (``/-/router``) is answered on the control port only (``control``);
        on the serving port everything under ``/-/`` but the health check is a 404.
        """
        path = target.split("?", 1)[0]
        if path == "/-/healthz":
            return _json(200, {"ok": True})
        if control:
            if path == "/-/router" and method in ("GET", "HEAD"):
                return _json(200, self.status())
            return _json(404, {"error": "The control port answers GET /-/router and "
                                        "/-/healthz."})
        if path.startswith("/-/"):
            return _json(404, {"error": f"Not found: {path[:100]}"})
        role = self.choose()
        if role is None:
            return _json(503, {"error": f"Nothing is deployed in the {self.environment} "
                                        "environment."})
        headers = {k: v for k, v in headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in ROUTER_ONLY}
        if remote:
            headers["X-Forwarded-For"] = remote
        tried = []
        while True:
            backend = self.routes.get(role) or next(iter(self.routes.values()))
            url = backend["url"]
            tried.append(role)
            self.inflight[url] = self.inflight.get(url, 0) + 1
            # The model server records which role served the request (capture), believing it
            # only with the token clients never see.
            sent = {**headers, REVISION_HEADER: role}
            if self.token:
                sent[TOKEN_HEADER] = self.token
            try:
                status, reply_headers, data = await self.pool.request(url, method, target,
                                                                      sent, body)
            except _Unreachable as exc:
                self.failed[role] = self.failed.get(role, 0) + 1
                if len(tried) >= 2 or not self.routes:
                    logger.warning("%s: %s revision at %s unreachable: %s", self.environment,
                                   role, url, exc)
                    return _json(502, {"error": f"The {self.environment} model server did not "
                                                f"answer ({exc}); the router retried once."})
                self.retried += 1
                others = [r for r in self.routes if r != role]
                role = others[0] if others else role
                continue
            except (TimeoutError, ConnectionError) as exc:
                self.failed[role] = self.failed.get(role, 0) + 1
                timed_out = isinstance(exc, TimeoutError)
                logger.warning("%s: %s revision at %s failed: %s", self.environment, role, url,
                               "no answer within the read timeout" if timed_out else exc)
                return _json(504 if timed_out else 502, {
                    "error": f"The {self.environment} model server "
                             + (f"did not answer within {self.read_timeout:g} s."
                                if timed_out else f"failed: {exc}.")})
            finally:
                self.inflight[url] -= 1
            self.served[role] = self.served.get(role, 0) + 1
            out = [(k, v) for k, v in reply_headers
                   if k.lower() not in HOP_BY_HOP or (method == "HEAD"
                                                       and k.lower() == "content-length")]
            out.append((REVISION_HEADER, role))
            out.append((VERSION_HEADER, str(backend["version"])))
            return status, out, data


def _json(status: int, value) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], json.dumps(value).encode()


class _ClientConnection(BoundedHead, asyncio.Protocol):
    """One client's keep-alive HTTP/1.1 connection to the router, parsed with httptools.

    Requests on a connection are answered in order: reading pauses while one is served.
    ``Expect: 100-continue`` is answered, chunked bodies are decoded, a malformed request gets
    400, and the bounds of :class:`~components.serve.limits.EdgeLimits` hold as on the model
    server: the request line and headers are counted before the parser sees them (over
    ``max_header_bytes`` or ``max_headers``: 431 at once), a body over ``max_body_bytes`` is
    refused with 413 (announced or while it arrives), the headers and the body each have a
    deadline that bytes sent slowly do not extend (408), an idle keep-alive connection is closed
    after ``keepalive_timeout_s``, and a connection beyond ``max_connections`` is answered 503.
    A refusal is written, the sending side shut and the rest of what the client sends dropped
    for a moment, so that the client reads the answer rather than a reset.

    ``control`` connections (the control port, on loopback) may ask for the router's state.
    """

    def __init__(self, router: Router, limits: EdgeLimits, control: bool = False):
        import httptools

        self.router, self.limits, self.control = router, limits, control
        self.max_body = limits.max_body_bytes
        self.transport = None
        self._parser = httptools.HttpRequestParser(self)
        self._timer: asyncio.TimerHandle | None = None  # the one deadline now running
        self._timer_kind = ""  # head, body or idle
        self._busy = False
        self._closing = False
        self._refused = False
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._pending: collections.deque = collections.deque()
        self._reset()

    @property
    def _connections(self) -> set:
        return self.router.control_connections if self.control else self.router.connections

    def _reset(self) -> None:
        self._url, self._headers, self._body, self._size = b"", {}, [], 0

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        if len(self._connections) >= self.limits.max_connections:
            _warn.warning("Refused a connection: %d connections are open (--max-connections "
                          "%d)", len(self._connections), self.limits.max_connections)
            self._refuse(503, f"The router has {self.limits.max_connections} connections open, "
                              "its limit (--max-connections); try again in a moment.")
            return
        self._connections.add(self)
        self._arm("head")

    def connection_lost(self, exc) -> None:
        self._closing = True
        self._connections.discard(self)
        self._disarm()

    # data_received is BoundedHead's (components/serve/limits.py): the head's bounds, as the
    # model server holds them.
    def _head_begins(self) -> None:
        if self._timer_kind != "head":  # a request's first byte: its headers' deadline
            self._arm("head")

    def _finished(self) -> bool:
        return self._closing

    def _feed(self, data: bytes) -> None:
        import httptools

        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "Protocol upgrades are not supported by the router.")
        except httptools.HttpParserCallbackError as exc:
            if message := self._head_refusal(exc):
                self._refuse_head(message)
            elif not self._closing:
                self._refuse(400, f"Malformed HTTP request: {exc}.")
        except httptools.HttpParserError as exc:
            if not self._closing:
                self._refuse(400, f"Malformed HTTP request: {exc}.")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._reset()
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header()
        self._headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._closing or self._refused:
            return
        self._reading_head = False
        self._arm("body")
        lowered = {k.lower(): v for k, v in self._headers.items()}
        length = lowered.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            self._refuse(413, f"Request body of {length} bytes is over the router's limit of "
                              f"{self.max_body} bytes (--max-body-bytes).")
            return
        if lowered.get("expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._closing or self._refused:
            return
        self._size += len(body)
        if self._size > self.max_body:
            self._refuse(413, f"Request body over the router's limit of {self.max_body} "
                              "bytes (--max-body-bytes).")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._closing or self._refused:
            return
        self._disarm()
        self._reading_head, self._head_bytes = True, 0
        peer = self.transport.get_extra_info("peername")
        self._pending.append((self._parser.get_method().decode("ascii", "replace"),
                              self._url.decode("latin-1"), self._headers,
                              self._body, peer[0] if peer else None,
                              self._parser.should_keep_alive()))
        self.transport.pause_reading()  # one request at a time per connection
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._process())

    # serving
    async def _process(self) -> None:
        while self._pending and not self._closing:
            method, target, headers, body, remote, keep_alive = self._pending.popleft()
            try:
                status, out, data = await self.router.route(method, target, headers, body,
                                                            remote, control=self.control)
            except Exception:  # noqa: BLE001 - a router bug answers 500 and is logged
                logger.exception("The router failed on %s %s", method, target)
                status, out, data = _json(500, {"error": "The router failed; see its log."})
            if self._closing:
                break
            keep_alive = keep_alive and not self.router.stopping
            self._write(status, out, data, keep_alive, head=method == "HEAD")
            if not keep_alive:
                self._close()
                break
        self._busy = False
        if not self._closing:
            self.transport.resume_reading()
            self._arm("idle")

    def _write(self, status: int, headers, data: bytes, keep_alive: bool,
               head: bool = False) -> None:
        import http

        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not head or not any(k.lower() == "content-length" for k, _ in headers):
            lines.append(f"Content-Length: {len(data)}")
        if not keep_alive:
            lines.append("Connection: close")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
                             + (b"" if head else data))

    def _refuse_head(self, message: str) -> None:
        _warn.warning("Refused a request with 431: %s", message)
        self._refuse(431, message)

    def _refuse(self, status: int, message: str) -> None:
        """Answers ``status`` and closes: lingering (see ``LINGER_S``) unless an answer is
        being made on this connection, which then just closes."""
        if self._closing or self._refused:
            return
        self._refused = True
        self._disarm()
        if self._busy:
            self._close()
            return
        self._write(*_json(status, {"error": message}), keep_alive=False)
        self._connections.discard(self)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_S, self._close)
        else:
            self._close()

    def _close(self) -> None:
        self._closing = True
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # deadlines: one runs at a time (headers, body, or idle between requests)
    def _arm(self, kind: str) -> None:
        seconds, callback = {"head": (self.limits.header_timeout_s, self._head_late),
                             "body": (self.limits.body_timeout_s, self._body_late),
                             "idle": (self.limits.keepalive_timeout_s, self._idle_late)}[kind]
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, callback)
        self._timer_kind = kind

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_kind = ""

    def _head_late(self) -> None:
        self._timer, self._timer_kind = None, ""
        if self._busy or self._closing or not self._reading_head:
            return
        if self._head_bytes == 0:
            self._close()  # opened and never used: nothing to answer
            return
        _warn.warning("Closed a connection: its request headers did not arrive within %g s "
                      "(--header-timeout)", self.limits.header_timeout_s)
        self._refuse(408, f"The request's headers did not arrive within "
                          f"{self.limits.header_timeout_s:g} s (--header-timeout).")

    def _body_late(self) -> None:
        self._timer, self._timer_kind = None, ""
        if self._busy or self._closing or self._reading_head:
            return
        _warn.warning("Closed a connection: its request body did not arrive within %g s "
                      "(--body-timeout)", self.limits.body_timeout_s)
        self._refuse(408, f"The request body did not arrive within "
                          f"{self.limits.body_timeout_s:g} s (--body-timeout).")

    def _idle_late(self) -> None:
        self._timer, self._timer_kind = None, ""
        if not self._busy and self._head_bytes == 0:
            self._close()

    def close_if_idle(self) -> None:
        if not self._busy:
            self._close()


class _Unreachable(Exception):
    """The request never reached a model server, or its connection closed before any answer:
    safe to send again."""


class _BackendConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a model server, parsed with httptools (the C
    parser uvicorn uses): about half the CPU per request of aiohttp's client, which matters
    when the router shares two cores with the model server."""

    def __init__(self):
        import httptools

        self.transport = None
        self.closed = False
        self.waiter: asyncio.Future | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._received = False
        self._head = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        import httptools

        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionError("the model server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed answer from the model server: {exc}"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self._received:
                self.waiter.set_exception(ConnectionError("the model server closed the "
                                                          "connection in the middle of its answer"))
            else:
                self.waiter.set_exception(_Unreachable("the model server closed the connection "
                                                       "before answering"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._head:  # no body follows an answer to HEAD, whatever Content-Length says
            self.on_message_complete()
            self.closed = True
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            keep = self._parser.should_keep_alive()
            self.waiter.set_result((self._parser.get_status_code(), self._headers,
                                    b"".join(self._body), keep))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.closed = True
        self.transport.close()

    def send(self, data: Sequence[bytes], head: bool) -> asyncio.Future:
        self._headers, self._body, self._received, self._head = [], [], False, head
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines(data)  # uvloop sends the chunks as they are: no copy
        return self.waiter


class BackendPool:
    """Keep-alive connections to the model servers, reused request after request."""

    def __init__(self, connect_timeout: float, read_timeout: float, max_idle: int = 64):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_BackendConnection]] = {}

    async def _connect(self, host: str, port: int) -> _BackendConnection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_BackendConnection, host, port), self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise _Unreachable(f"cannot connect to {host}:{port}: {exc!r}") from exc
        return conn

    async def request(self, url: str, method: str, path: str, headers: dict,
                      body: Sequence[bytes]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Forwards one request; ``body`` is a sequence of chunks (``[b"..."]`` for one).

        The chunks are written as they arrived from the client, behind the request's head:
        joining a 30 MiB body and then prefixing its head copied it twice on the event loop
        (about 20 ms a body, which four bodies at once laid end to end: every other client
        waited up to 140 ms; the model server alone, 26 ms)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        key = (parts.hostname, parts.port or 80)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {sum(map(len, body))}")
        data = [("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), *body]
        idle = self._idle.setdefault(key, [])
        conn = None
        while idle:
            candidate = idle.pop()
            if not candidate.closed:
                conn = candidate
                break
        if conn is None:
            conn = await self._connect(*key)
        try:
            status, reply_headers, reply, keep = await asyncio.wait_for(
                conn.send(data, method == "HEAD"), self.read_timeout)
        except TimeoutError:
            conn.closed = True
            conn.transport.close()
            raise
        except BaseException:
            conn.closed = True
            conn.transport.close()
            raise
        if keep and not conn.closed and len(idle) < self.max_idle:
            idle.append(conn)
        elif not conn.closed:
            conn.closed = True
            conn.transport.close()
        return status, reply_headers, reply

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                if not conn.closed:
                    conn.transport.close()
        self._idle.clear()


async def _supervise(router: Router, stop: asyncio.Event) -> None:
    while not stop.is_set():
        router.reload_if_changed()
        try:
            await router.supervisor.tick(dict(router.routes), router.probe)
        except Exception:  # noqa: BLE001 - the supervisor must keep going; logged with cause
            logger.exception("Supervision check failed; trying again")
        try:
            await asyncio.wait_for(stop.wait(), router.supervisor.policy.interval)
        except TimeoutError:
            pass


CONTROL_HOST = "127.0.0.1"
"""The control port's address, whatever the serving port binds: only this machine reads the
router's state (backend addresses, process ids, the supervisor's report)."""


async def serve(router: Router, host: str, port: int, limits: EdgeLimits = EdgeLimits(),
                control_port: int = 0) -> None:
    await router.start_client()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _ClientConnection(router, limits),
                                      host, port, reuse_address=True, backlog=512)
    control = await loop.create_server(lambda: _ClientConnection(router, limits, control=True),
                                       CONTROL_HOST, control_port, reuse_address=True)
    control_port = control.sockets[0].getsockname()[1]
    logger.info("Router of %s listening on http://%s:%d (control: http://%s:%d/-/router)",
                router.environment, host, port, CONTROL_HOST, control_port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, router.reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervise = asyncio.create_task(_supervise(router, stop))
    await stop.wait()
    started = time.monotonic()
    router.stopping = True
    server.close()
    control.close()
    for conn in list(router.connections):
        conn.close_if_idle()  # busy ones close after their answer
    deadline = time.monotonic() + 10
    while any(c._busy for c in router.connections) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await supervise
    await router.close()
    logger.info("Router of %s stopped (%.1f s to drain)", router.environment,
                time.monotonic() - started)


# -- managing router processes (used by LocalTarget) ------------------------------------------


def router_alive(pid: int, port: int) -> bool:
    """True when ``pid`` runs and is a router on ``port`` (guards against pid reuse)."""
    try:
        text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return "components.deploy.router" in text and f"--port={port}" in text


def router_status(control_url: str, timeout: float = 2.0) -> dict | None:
    """``GET /-/router`` of a router's control port, or None if it does not answer."""
    import requests

    try:
        r = requests.get(f"{control_url}/-/router", timeout=timeout)
        return r.json() if r.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def start_router(state_dir: str | os.PathLike, model: str, environment: str, served_name: str,
                 host: str, port: int, log_path: str | os.PathLike, timeout: float = 20.0,
                 extra_args: tuple[str, ...] = (), control_port: int = 0,
                 env: dict[str, str] | None = None) -> int:
    """Starts a router process in its own session and waits until its control port answers
    (``http://127.0.0.1:<control_port>``); returns its pid.

    Args:
        env: The router's environment (default: this process's), e.g. with the token of
            ``components.serve.routing``.

    Raises:
        RuntimeError: It exited or did not answer in time (e.g. a port is taken), with the
            end of its log.
    """
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "components.deploy.router", f"--state-dir={state_dir}",
           f"--model={model}", f"--environment={environment}", f"--served-name={served_name}",
           f"--host={host}", f"--port={port}", f"--control-port={control_port}", *extra_args]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    control_url = f"http://{CONTROL_HOST}:{control_port}"

    def answered_or_exited() -> str | None:
        if proc.poll() is not None:
            return "exited"
        return "answered" if router_status(control_url, timeout=1.0) is not None else None

    if wait_until(answered_or_exited, timeout, 0.05) == "answered":
        return proc.pid
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
    tail = Path(log_path).read_text(errors="replace")[-1200:]
    raise RuntimeError(f"The {environment} router did not start on {host}:{port} (control "
                       f"port {control_port}); see {log_path}:\n{tail}")


def wait_generation(url: str, generation: int, timeout: float = 10.0) -> dict:
    """Waits until the router whose control port is at ``url`` applies routes of at least
    ``generation``."""
    status = None

    def applied() -> bool:
        nonlocal status
        status = router_status(url)
        return status is not None and status["generation"] >= generation

    if not wait_until(applied, timeout, 0.02):
        raise RuntimeError(f"The router at {url} did not apply routes generation "
                           f"{generation} within {timeout:.0f} s (it reports "
                           f"{status['generation'] if status else 'nothing'}).")
    return status


def wait_drained(url: str, backend_url: str, timeout: float = 30.0) -> bool:
    """Waits until the router whose control port is at ``url`` has no request in flight to
    ``backend_url``."""

    def drained() -> bool:
        status = router_status(url)
        return status is None or not status["inflight"].get(backend_url)

    return wait_until(drained, timeout, 0.02)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m components.deploy.router",
                                description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--state-dir", required=True, help="the local target's state folder")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--environment", required=True, help="test or production")
    p.add_argument("--served-name", required=True, help="model name in the URL paths")
    p.add_argument("--host", default="127.0.0.1",
                   help="address of the serving port (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, required=True, help="serving port")
    p.add_argument("--control-port", type=int, default=0,
                   help=f"port of the router's state (GET /-/router), on {CONTROL_HOST} "
                        "only (0: any free port, logged)")
    p.add_argument("--connect-timeout", type=float, default=5.0,
                   help="seconds to connect to a model server")
    p.add_argument("--read-timeout", type=float, default=60.0,
                   help="seconds to wait for a model server's answer")
    p.add_argument("--max-restarts", type=int, default=SupervisionPolicy.max_restarts,
                   help="consecutive crashes after which a revision is left down")
    p.add_argument("--backoff-base", type=float, default=SupervisionPolicy.backoff_base,
                   help="seconds before the first restart (doubles each time)")
    p.add_argument("--backoff-max", type=float, default=SupervisionPolicy.backoff_max,
                   help="longest wait between restarts")
    add_edge_options(p)  # the model server's defaults: the same body limit on both hops
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    policy = SupervisionPolicy(max_restarts=args.max_restarts, backoff_base=args.backoff_base,
                               backoff_max=args.backoff_max)
    router = Router(args.state_dir, args.model, args.environment, args.served_name,
                    args.connect_timeout, args.read_timeout, policy)
    asyncio.run(serve(router, args.host, args.port, edge_limits(args), args.control_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
