"""Small service helpers: one way to wait, one back-off, one JSON HTTP app.

- :func:`wait_until` polls a predicate on the monotonic clock until it holds or a timeout
  passes (as KServe's client waits with ``wait_isvc_ready(…, timeout_seconds,
  polling_interval)``). A deadline is never measured on ``time.time()``, which jumps when
  the wall clock is set.
- :func:`backoff` is the wait before a retry: doubled for each further attempt, capped.
- :func:`free_port` is a TCP port nothing listens on now, for a server started next.
- :class:`RateLimitedLog` logs at most one warning per interval, saying how many it held
  back: what a client can make a server log (its own mistakes, refused connections) cannot
  flood the log.
- :func:`json_app` builds the aiohttp application of a small JSON endpoint (the monitor's
  feedback server, governance's Alertmanager receiver): ``GET /healthz``, a body limit, an
  optional bearer token, and JSON bodies for every error aiohttp answers itself.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from components.common.errors import UserError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, poll_s: float = 0.1, *,
               max_poll_s: float | None = None, sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> T:
    """Calls ``predicate`` until it returns something truthy, and returns that.

    The predicate is called at once, then every ``poll_s`` seconds (with ``max_poll_s``, the
    pause backs off: doubled after each call, up to ``max_poll_s``), and a last time at the
    deadline (the pause before it is shortened so that the wait never runs past
    ``timeout_s``). An exception in the predicate propagates: a predicate that can fail fast
    (the process it waits for exited) raises.

    Returns:
        The first truthy result, or the last (falsy) one when ``timeout_s`` passed; the caller
        says what did not happen.
    """
    deadline = clock() + timeout_s
    calls = 0
    while True:
        result = predicate()
        calls += 1
        if result:
            return result
        remaining = deadline - clock()
        if remaining <= 0:
            return result
        pause = poll_s if max_poll_s is None else backoff(calls, poll_s, max_poll_s)
        sleep(min(pause, remaining))


class RateLimitedLog:
    """At most one WARNING line per ``interval`` seconds on ``log``; the next line says how
    many were held back (``held_what``: what they were). Thread-safe."""

    def __init__(self, log: logging.Logger, interval: float = 10.0,
                 held_what: str = "client errors"):
        self.log, self.interval, self.held_what = log, interval, held_what
        self._last = float("-inf")
        self._held = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
        if held:
            msg += f" ({held} more {self.held_what} since the last line)"
        self.log.warning(msg, *args)


def backoff(attempt: int, base_s: float, max_s: float = math.inf) -> float:
    """The wait before retry number ``attempt`` (1 for the first retry): ``base_s``, doubled
    for each further one, at most ``max_s``."""
    return min(base_s * 2 ** max(attempt - 1, 0), max_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that the system had free a moment ago (bind to port 0, read it,
    close). Another process may take it before the caller binds it; a server that must not
    race binds port 0 itself."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class PortTaken(UserError, OSError):
    """The port a server was asked to listen on is in use (exit code 2: choose another)."""


def check_port_free(host: str, port: int, option: str = "--port") -> None:
    """Refuses a port something else listens on, before anything says it serves there: bind
    it (with SO_REUSEADDR, as the servers do) and let it go at once.

    Raises:
        PortTaken: "port N is taken", naming the option that chooses another.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortTaken(f"port {port} is taken on {host} ({exc.strerror}); choose "
                                f"another with {option} or stop what listens there.") from None
            raise


# ---- the JSON app ------------------------------------------------------------------------------

HEALTH_PATH = "/healthz"
UNAUTHORISED = "missing or wrong bearer token"


def json_app(*, health: Callable[[], dict] | None = None, max_body_bytes: int = 1 << 20,
             token: str = "", open_paths: Iterable[str] = ()):
    """An aiohttp application for a small JSON endpoint; add its routes to ``app.router``.

    - ``GET /healthz`` answers 200 ``{"status": "ok", **health()}`` without a token (a
      liveness probe has none).
    - A body over ``max_body_bytes`` is refused with 413 when a handler reads it.
    - With a ``token``, every other route needs ``Authorization: Bearer <token>`` (compared
      in constant time) and answers 401 without it; ``open_paths`` are exempt.
    - An error aiohttp answers itself (404 unknown route, 405 wrong method, 413) has a JSON
      body ``{"error": …}`` like the handlers' own; an exception a handler lets through is
      logged with its traceback and answered 500 ``{"error": …}`` that does not repeat it
      (the log has the details; a handler that has something to tell its client catches
      its own exceptions).

    Raises:
        ImportError: aiohttp is not installed, with the install hint.
    """
    try:
        from aiohttp import web
    except ImportError as exc:  # pragma: no cover - aiohttp comes with kserve
        raise ImportError("This endpoint needs aiohttp: pip install 'mlops-workflow[serve]'") \
            from exc

    expected = f"Bearer {token}".encode()
    exempt = {HEALTH_PATH, *open_paths}

    @web.middleware
    async def edge(request: web.Request, handler):
        if token and request.path not in exempt and not hmac.compare_digest(
                request.headers.get("Authorization", "").encode(), expected):
            return web.json_response({"error": UNAUTHORISED}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            return web.json_response({"error": exc.reason if exc.text is None
                                      or exc.text.startswith(f"{exc.status}:") else exc.text},
                                     status=exc.status, headers=_kept_headers(exc))
        except Exception:  # noqa: BLE001 - answered as a JSON 500, traceback logged
            logger.exception("%s %s failed", request.method, request.path)
            return web.json_response({"error": "Internal server error; the server log has "
                                               "the details."}, status=500)

    async def healthz(_request):
        return web.json_response({"status": "ok", **(health() if health else {})})

    app = web.Application(client_max_size=max_body_bytes, middlewares=[edge])
    app.router.add_get(HEALTH_PATH, healthz)
    return app


def _kept_headers(exc) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "connection")}


async def read_json(request) -> Any:
    """The request's body as JSON; a 400 ``{"error": "the body is not JSON: …"}`` when it is
    not (and a 413 when it is over the app's limit)."""
    from aiohttp import web

    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"the body is not JSON: {exc}"}),
                                 content_type="application/json") from None
