"""The model server's connections, bounded before any request reaches KServe.

uvicorn (KServe's HTTP server) reads request headers without a limit or a deadline: a 96 MiB
header took it 38 s to read (its parser builds each header value by concatenation per chunk, so
the cost grows with the square of the size), during which every other request waited; a client
sending a byte a second is held for ever; and nothing caps the connections. uvicorn accepts a
protocol class in place of its own (``uvicorn.Config(http=...)``): :class:`BoundedHttpProtocol`
is its httptools protocol with the bounds of :class:`~components.serve.limits.EdgeLimits`:

- the request line and headers are counted before they reach the parser: past
  ``max_header_bytes`` (or ``max_headers`` fields) the answer is a 431, sent after at most that
  many bytes whatever size is on its way;
- a header deadline from the connection's opening (or a request's first byte) to the end of the
  headers, and a body deadline from there to the end of the body; bytes that trickle in do not
  extend either (``guard.py`` answers a late body 408; the connection is closed a moment after
  its deadline whether or not anybody reads the body);
- a keep-alive connection idle for ``keepalive_timeout_s`` is closed (uvicorn's own timer);
- beyond ``max_connections`` open connections, a new one is answered 503 and closed; the
  connections already open keep being served.

A refusal is written, the sending side shut, and what the client still sends is read and
dropped for a moment (a lingering close, as nginx does) so that the client reads the answer
instead of a connection reset. ``kserve_patches.serve_connections_with`` installs the class.
"""

from __future__ import annotations

import asyncio
import json
import logging

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from components.common.service import RateLimitedLog
from components.serve.limits import BoundedHead, EdgeLimits

logger = logging.getLogger(__name__)

LINGER_S = 1.0
"""How long a refused connection reads and drops what its client still sends before it is
closed, so that the client sees the answer rather than a reset."""

BODY_GRACE_S = 1.0
"""The connection of a body that missed its deadline is closed this long after it, leaving the
guard (which answers 408 at the deadline) the time to answer first."""


_warn = RateLimitedLog(logger, held_what="refused connections")


def refusal(status: int, message: str) -> bytes:
    """An HTTP/1.1 answer with a JSON ``error`` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    phrase = {408: "Request Timeout", 431: "Request Header Fields Too Large",
              503: "Service Unavailable"}.get(status, "")
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class BoundedHttpProtocol(BoundedHead, HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of ``limits`` (see the module docstring).

    uvicorn builds it per connection with ``config``, ``server_state`` and ``app_state``; give
    the limits with ``functools.partial(BoundedHttpProtocol, limits=...)``.
    """

    def __init__(self, *args, limits: EdgeLimits = EdgeLimits(), **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._reading_head = True  # between requests or inside a request's head
        self._head_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)  # a refused connection holds no place
            _warn.warning("Refused a connection from %s: %d connections are open "
                          "(--max-connections %d)", _peer(self.client),
                          len(self.connections), self.limits.max_connections)
            self._refuse(503, f"The server has {self.limits.max_connections} connections open, "
                              "its limit (--max-connections); try again in a moment.")
            return
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    # data_received is BoundedHead's (limits.py): the head's bounds, as the router holds them.
    def _head_begins(self) -> None:
        if self._head_timer is None:  # the first byte of the next request
            self._arm_head_timer()

    def _finished(self) -> bool:
        return self._refused or self.transport.is_closing()

    # -- parsing ---------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, with a too-long head answered 431 instead of 400."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if message := self._head_refusal(exc):
                self._refuse_head(message)
                return
            self._bad_request()
        except httptools.HttpParserError:
            self._bad_request()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self._cancel_timers()
        self.send_400_response(msg)

    def on_message_begin(self) -> None:
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel(self._head_timer)
        self._head_timer = None
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s + BODY_GRACE_S,
                                                self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_head, self._head_bytes = True, 0
        self._cancel(self._body_timer)
        self._body_timer = None
        super().on_message_complete()

    # -- deadlines and refusals ------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing() or not self._reading_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; its next one may take its time to start
        if self._head_bytes == 0:
            self.transport.close()  # opened and never used, or idle: nothing to answer
            return
        _warn.warning("Closed a connection from %s: its request headers did not arrive within "
                      "%g s (--header-timeout)", _peer(self.client),
                      self.limits.header_timeout_s)
        self._refuse(408, f"The request's headers did not arrive within "
                          f"{self.limits.header_timeout_s:g} s (--header-timeout).")

    def _body_late(self) -> None:
        self._body_timer = None
        if not self._reading_head and not self.transport.is_closing():
            # The guard answered 408 at the deadline if the application was reading the body;
            # closing tells the application, if any, that its client is gone.
            self.transport.close()

    def _refuse_head(self, message: str) -> None:
        _warn.warning("Refused a request from %s with 431: %s", _peer(self.client), message)
        self._refuse(431, message)

    def _refuse(self, status: int, message: str) -> None:
        """Answers ``status`` and closes, lingering (see ``LINGER_S``) when nothing else is
        being written on the connection."""
        self._refused = True
        self._cancel_timers()
        self._unset_keepalive_if_required()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an answer is being written: no second one
            return
        self.transport.write(refusal(status, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self._close)
        else:
            self.transport.close()

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_timers(self) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._body_timer)
        self._head_timer = self._body_timer = None

    @staticmethod
    def _cancel(timer) -> None:
        if timer is not None:
            timer.cancel()


def _peer(client) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"
