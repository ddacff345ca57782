"""The predictor's HTTP edge: what KServe 0.20's REST server lets through, fixed in one place.

:class:`RequestGuard` is an ASGI middleware placed outside all of KServe's own. Per request it

- refuses a body larger than the limit while it is read (``Content-Length`` or chunked), and a
  body that does not arrive in time, answering 413 / 408 with ``Connection: close``;
- refuses KServe's model repository API (``/v2/repository/…``: load and unload), which would
  let any client unload the served model;
- hands every inference body to the predictor unread, whatever its ``Content-Type``: V2 to
  the strict reader (``v2_compat``), so that one parser answers every malformed request with
  a 400, V1 under a content type KServe passes on, so that large bodies are parsed off the
  event loop (``bodies.py``), never by KServe's JSON (or CloudEvents) decoding;
- turns an unhandled exception into a 500 with a JSON body and keeps the connection usable.
  Starlette's ``ServerErrorMiddleware`` sends the 500 and then re-raises, and uvicorn answers
  an exception raised after the response by closing the keep-alive connection without
  ``Connection: close``; a client that reuses the connection has its next request fail;
- counts inference requests by outcome (``ok``, ``bad_request`` for 4xx, ``error`` for 5xx) and
  logs a client's mistake as one rate-limited WARNING line, without a traceback. A request
  whose client closed the connection before its body arrived (or whose body the HTTP parser
  refused) is the client's outcome, ``bad_request`` (recorded as 499), never a server error:
  only the server's own faults raise the error rate a canary is judged by.

:func:`install` wires it (and quiet exception handlers, and truthful readiness) into KServe's
``RESTServer`` in every process that serves, ``--workers`` children included, through the
one module that patches KServe's internals (``kserve_patches.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from http import HTTPStatus

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import errors
from prometheus_client import Counter

from components.common import prom
from components.common.service import RateLimitedLog
from components.serve import kserve_patches

logger = logging.getLogger(__name__)

REQUESTS = Counter(prom.REQUESTS,
                   "Inference requests by outcome: ok, bad_request (HTTP 4xx, the client's "
                   "mistake) or error (HTTP 5xx, the server's fault)",
                   ["model", "protocol", "outcome"])

_INFER = re.compile(r"^/v1/models/(?P<v1>[^/:]+):(predict|explain)$"
                    r"|^/v2/models/(?P<v2>[^/]+)(/versions/[^/]+)?/infer$")
REPOSITORY_PREFIX = "/v2/repository"
#: The content type a V1 body is handed to KServe with, so that KServe passes it on unread.
UNREAD_V1 = b"application/vnd.mlops.unread-json"


#: The status recorded (nginx's convention; never sent) for a request whose client closed the
#: connection before its body arrived: an ``outcome="bad_request"``, never a server error.
CLIENT_CLOSED = 499


class _BodyRefused(Exception):
    """Raised into the application when the body is over the limit or late."""


class RequestGuard:
    """ASGI middleware; see the module docstring.

    Args:
        app: The inner ASGI application.
        max_body_bytes: Largest request body; more is a 413.
        body_timeout_s: Time allowed for the whole body to arrive; later is a 408.
        known_models: Returns True for a served model name (others are counted as ``""``, so
            clients cannot create metric series at will).
        warn: Where client errors are logged.
    """

    def __init__(self, app, max_body_bytes: int, body_timeout_s: float,
                 known_models=lambda name: True, warn: RateLimitedLog | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.known_models = known_models
        self.warn = warn or RateLimitedLog(logger)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        method = scope.get("method", "")
        match = _INFER.match(path)
        state = {"status": None, "refused": None, "error_body": b""}
        try:
            status = await self._serve(scope, receive, send, path, method, state, match)
        finally:
            if match:
                name = match.group("v1") or match.group("v2")
                status = state["status"] or 500
                REQUESTS.labels(name if self.known_models(name) else "",
                                "v1" if match.group("v1") else "v2",
                                prom.outcome_of(status)).inc()
        if status is not None and 400 <= status < 500:
            detail = _error_text(state["error_body"])
            self.warn.warning("Bad request %s %s: %d %s", method, _printable(path[:200]),
                              status, _printable(detail))

    async def _serve(self, scope, receive, send, path, method, state, match) -> int | None:
        async def reply(status: int, message: str, close: bool = False, extra=()) -> None:
            body = json.dumps({"error": message}).encode()
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode()), *extra]
            if close:
                headers.append((b"connection", b"close"))
            state["status"], state["error_body"] = status, body
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        if path.rstrip("/") == REPOSITORY_PREFIX or path.startswith(REPOSITORY_PREFIX + "/"):
            await reply(403, "The model repository API (load, unload) is disabled on the "
                        "serving port: this server serves the package it was started with.")
            return 403
        if match and method != "POST":
            # KServe would read GET /v1/models/NAME:predict as the model "NAME:predict" (404).
            await reply(405, f"{method} {_printable(path[:200])}: inference takes POST with "
                        "the request as its body.", extra=[(b"allow", b"POST")])
            return 405
        headers = scope.get("headers") or []
        length = _content_length(headers)
        if length is not None and length > self.max_body_bytes:
            await reply(413, f"The request body is {length} bytes; the limit is "
                        f"{self.max_body_bytes} (--max-body-bytes). Send fewer or smaller "
                        "images.", close=True)
            return 413
        if method == "POST" and match:
            # Every inference body reaches the predictor unread: one strict reader for V2,
            # JSON or binary (see v2_compat), and large bodies parsed off the event loop
            # (bodies.py), never by KServe's JSON decoding (nor its CloudEvents, ce-*).
            # (KServe parses V1 bodies of any JSON_HEADERS type, octet-stream included.)
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in headers
                                if k != b"content-type" and not k.startswith(b"ce-")] + [
                (b"content-type", UNREAD_V1 if match.group("v1") else b"application/octet-stream")]

        deadline = time.monotonic() + self.body_timeout_s
        received = 0
        body_done = False

        async def guarded_receive():
            nonlocal received, body_done
            if state["refused"]:
                raise _BodyRefused(state["refused"])
            remaining = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(remaining, 0.001)):  # no task per message
                    message = await receive()
            except TimeoutError:
                state["refused"] = 408
                raise _BodyRefused(408) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    state["refused"] = 413
                    raise _BodyRefused(413)
            elif message["type"] == "http.disconnect" and not body_done:
                # The client left (or sent a body the HTTP parser refused, which uvicorn
                # answers itself) before its body arrived: the client's outcome, not a fault
                # of this server, so a canary's server error rate cannot be raised from outside.
                state["refused"] = CLIENT_CLOSED
                raise _BodyRefused(CLIENT_CLOSED)
            return message

        started = False

        async def guarded_send(message):
            nonlocal started
            if state["refused"] and not started:
                return  # the application's answer to the refused body is replaced below
            if message["type"] == "http.response.start":
                started = True
                state["status"] = message["status"]
            elif (message["type"] == "http.response.body" and state["status"]
                  and 400 <= state["status"] < 500 and len(state["error_body"]) < 2048):
                state["error_body"] += message.get("body", b"")[:2048]
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _BodyRefused:
            pass
        except Exception:
            if not state["refused"]:  # else the application failed on the refused body
                if started:
                    raise  # uvicorn closes the connection: a half-sent answer cannot be fixed
                logger.exception("Server error on %s %s", method, path)
                await reply(500, "Internal server error; the server log has the details.")
                return 500
        if state["refused"] == CLIENT_CLOSED and not started:
            # Nobody to answer; counted (and logged, rate-limited) as the client's outcome.
            state["status"] = CLIENT_CLOSED
            state["error_body"] = b"the client closed the connection before its request " \
                                  b"body arrived"
            return CLIENT_CLOSED
        if state["refused"] and not started:
            if state["refused"] == 413:
                await reply(413, f"The request body is over the limit of "
                            f"{self.max_body_bytes} bytes (--max-body-bytes). Send fewer or "
                            "smaller images.", close=True)
            else:
                await reply(408, f"The request body did not arrive within "
                            f"{self.body_timeout_s:g} s (--body-timeout).", close=True)
        return state["status"]


def _content_length(headers) -> int | None:
    for key, value in headers:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn refuses a malformed Content-Length before us
    return None


def _printable(text: str) -> str:
    """One log line whatever the client sent: control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(data, dict):
        detail = data.get("error", data.get("detail", data))
        return str(detail)[:300]
    return str(data)[:300]


# ---- wiring into KServe ------------------------------------------------------------------


def _handler(status: HTTPStatus, *, traceback: bool = False, prefix: str = ""):
    async def handle(_request, exc):
        if traceback:
            logger.error("Server error: %s", exc, exc_info=exc)
        return JSONResponse(status_code=status, content={"error": prefix + str(exc)})

    return handle


def _quiet_exception_handlers(app) -> None:
    """KServe's handlers log every 4xx as an ERROR with a traceback; these do not (the guard
    logs client errors, rate-limited). Server faults keep their traceback."""
    handlers = {
        errors.InvalidInput: _handler(HTTPStatus.BAD_REQUEST),
        errors.ModelNotFound: _handler(HTTPStatus.NOT_FOUND),
        errors.UnsupportedProtocol: _handler(HTTPStatus.BAD_REQUEST),
        # KServe raises it for what this server does not offer (model versions in the path,
        # an explainer): the resource does not exist here.
        NotImplementedError: _handler(HTTPStatus.NOT_FOUND, prefix="Not served here: "),
        errors.ModelNotReady: _handler(HTTPStatus.SERVICE_UNAVAILABLE),
        errors.ServerNotReady: _handler(HTTPStatus.SERVICE_UNAVAILABLE),
        errors.ServerNotLive: _handler(HTTPStatus.SERVICE_UNAVAILABLE),
        errors.InferenceError: _handler(HTTPStatus.INTERNAL_SERVER_ERROR, traceback=True),
    }
    for exc_class, handle in handlers.items():
        app.add_exception_handler(exc_class, handle)
    app.add_exception_handler(RequestValidationError, _invalid_request)


async def _invalid_request(_request, exc: RequestValidationError):
    """FastAPI's own request validation (a V2 body that is missing, for one) answers 400 with
    an ``error`` like every other client mistake, not its 422 ``detail`` list."""
    problems = exc.errors()
    if problems and all(p.get("type") == "missing" and tuple(p.get("loc", ()))[:1] == ("body",)
                        for p in problems):
        message = ("The request body is empty: a V2 request is a JSON object with an "
                   "'inputs' list.")
    else:
        message = "Invalid request: " + "; ".join(
            f"{'.'.join(map(str, p.get('loc', ())))}: {p.get('msg', '')}" for p in problems[:5])
    return JSONResponse(status_code=HTTPStatus.BAD_REQUEST, content={"error": message})


class _RateLimitFilter(logging.Filter):
    """Holds back uvicorn's per-request warning about malformed HTTP (one line per request,
    which a client could use to flood the log) to one line per interval."""

    def __init__(self, interval: float = 10.0):
        super().__init__()
        self.interval = interval
        self._last = float("-inf")
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Invalid HTTP request"):
            return True
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval:
                return False
            self._last = now
        return True


def install(max_body_bytes: int, body_timeout_s: float) -> None:
    """Wires the guard into KServe's REST server (idempotent; the last limits win).

    Through :func:`components.serve.kserve_patches.configure_rest_app`, which every serving
    process runs before its first request: after KServe has built the app, the model
    repository routes are removed, the exception handlers are replaced with quiet ones,
    readiness is made to reflect the models, and :class:`RequestGuard` becomes the outermost
    middleware.
    """

    def configure(app, server) -> None:
        kserve_patches.remove_routes(app, REPOSITORY_PREFIX)
        _quiet_exception_handlers(app)
        kserve_patches.truthful_readiness(server.dataplane)
        # The repository extension is not offered here.
        kserve_patches.without_extension(server.dataplane, "model_repository_extension")
        registry = server.dataplane.model_registry
        app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes,
                           body_timeout_s=body_timeout_s,
                           known_models=lambda name: registry.get_model(name) is not None)

    kserve_patches.configure_rest_app(configure)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _RateLimitFilter) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_RateLimitFilter())
