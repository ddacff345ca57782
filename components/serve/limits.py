"""The bounds every HTTP hop in front of the model holds a client to, in one place.

Both hops a camera's request crosses read the same :class:`EdgeLimits`: the model server
(``mlops serve``; its connections are bounded in ``edge.py``, its bodies in ``guard.py``) and
the local target's router (``components/deploy/router.py``). So the router never buffers a body
the model server would refuse, and an option means the same on both.

The defaults fit a camera client on a local network: a frame of a few megabytes in one request,
a handful of short headers, requests every second or so on one keep-alive connection. Each is a
command-line option of both programs (:func:`add_edge_options`).

This module imports nothing heavy: the router reads it without loading KServe.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class EdgeLimits:
    """Bounds on one HTTP connection and the requests on it.

    Attributes:
        max_body_bytes: Largest request body, counted while it is read (chunked too); more is
            a 413. A 16 MP camera JPEG is about 5 MB, 7 MB as base64 in JSON.
        body_timeout_s: Time for a whole request body to arrive, counted from the end of its
            headers; a body still arriving then is a 408. Bytes sent slowly do not extend it.
        max_header_bytes: Most bytes of a request's line and headers together; more is a 431,
            answered as soon as that many bytes have arrived, whatever size is being sent.
        max_headers: Most header fields in one request; more is a 431.
        header_timeout_s: Time for a request's line and headers to arrive, from the
            connection's opening or the request's first byte; later is a 408 and the
            connection is closed. Bytes sent slowly do not extend it.
        keepalive_timeout_s: How long an idle keep-alive connection waits for its next
            request before it is closed.
        max_connections: Most client connections open at once (per server process). A new
            connection beyond it is answered 503 and closed; the connections already open
            keep being served.
    """

    max_body_bytes: int = 32 * 1024 * 1024
    body_timeout_s: float = 30.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 65.0
    max_connections: int = 512

    def __post_init__(self):
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"EdgeLimits.{f.name} must be positive, got "
                                 f"{getattr(self, f.name)!r}")


class _HeadRefused(Exception):
    """Raised from a parser callback to stop reading a request's head (a 431)."""


class BoundedHead:
    """The head bounds of :class:`EdgeLimits` for an httptools protocol: the model server's
    (``edge.BoundedHttpProtocol``) and the router's (``components/deploy/router.py``).

    The request line and headers are counted before they reach the parser: past
    ``max_header_bytes`` (or ``max_headers`` fields) the answer is a 431, sent after at most that
    many bytes whatever size is on its way. A protocol that mixes it in keeps ``limits``,
    ``_refused``, ``_reading_head``, ``_head_bytes`` and ``_header_count``, takes its
    ``data_received`` from here, calls :meth:`_count_header` from its ``on_header`` (and
    :meth:`_head_refusal` on the parser's callback errors), and
    provides ``_head_begins()`` (arms the header deadline unless it runs), ``_feed(data)`` (to
    the parser), ``_finished()`` (refused or closing: read nothing more) and
    ``_refuse_head(message)`` (the 431).
    """

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and dropped
        if not self._reading_head:
            self._feed(data)
            return
        self._head_begins()
        self._receive_head(data)

    def _receive_head(self, data: bytes) -> None:
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            self._feed(data)
            return
        # Only what the limit allows reaches the parser (whose header values grow by
        # concatenation: reading 96 MiB of one header took 49 s); if the head has not ended
        # within it, the request is refused without reading the rest.
        self._head_bytes += room
        self._feed(data[:room])
        if self._finished():
            return
        if self._reading_head:
            self._refuse_head(f"The request's line and headers are over "
                              f"{self.limits.max_header_bytes} bytes (--max-header-bytes).")
            return
        self.data_received(data[room:])

    @staticmethod
    def _head_refusal(exc: BaseException) -> str:
        """The 431's message when the parser's callback error came from
        :meth:`_count_header`; empty otherwise."""
        return str(exc.__context__) if isinstance(exc.__context__, _HeadRefused) else ""

    def _count_header(self) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _HeadRefused(f"The request has more than {self.limits.max_headers} header "
                              "fields (--max-headers).")


def positive_int(text: str) -> int:
    """An argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def add_edge_options(parser: argparse.ArgumentParser, defaults: EdgeLimits = EdgeLimits(),
                     ) -> None:
    """Adds the options of :class:`EdgeLimits` to ``parser`` (same names and help on every
    hop); :func:`edge_limits` reads them back."""
    group = parser.add_argument_group(
        "client bounds (the same options on the model server and the router)")
    group.add_argument("--max-body-bytes", type=positive_int, default=defaults.max_body_bytes,
                       help="largest request body, counted while it is read; more is a 413")
    group.add_argument("--body-timeout", type=positive_seconds, default=defaults.body_timeout_s,
                       help="seconds for a request body to arrive after its headers; later is "
                            "a 408 (a slow trickle does not extend it)")
    group.add_argument("--max-header-bytes", type=positive_int,
                       default=defaults.max_header_bytes,
                       help="most bytes of a request line and its headers; more is a 431, "
                            "answered as soon as they have arrived")
    group.add_argument("--max-headers", type=positive_int, default=defaults.max_headers,
                       help="most header fields in a request; more is a 431")
    group.add_argument("--header-timeout", type=positive_seconds,
                       default=defaults.header_timeout_s,
                       help="seconds for a request line and its headers to arrive; later is "
                            "a 408 and the connection is closed")
    group.add_argument("--keepalive-timeout", type=positive_seconds,
                       default=defaults.keepalive_timeout_s,
                       help="seconds an idle keep-alive connection is kept for its next "
                            "request")
    group.add_argument("--max-connections", type=positive_int,
                       default=defaults.max_connections,
                       help="most client connections open at once; a new one beyond it is "
                            "answered 503 and closed, open ones keep being served")


def edge_limits(args: argparse.Namespace) -> EdgeLimits:
    """The :class:`EdgeLimits` of options added by :func:`add_edge_options`."""
    return EdgeLimits(max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout,
                      max_header_bytes=args.max_header_bytes, max_headers=args.max_headers,
                      header_timeout_s=args.header_timeout,
                      keepalive_timeout_s=args.keepalive_timeout,
                      max_connections=args.max_connections)


def edge_args(limits: EdgeLimits) -> list[str]:
    """The command-line options that give a server or router ``limits``."""
    return [f"--max-body-bytes={limits.max_body_bytes}",
            f"--body-timeout={limits.body_timeout_s:g}",
            f"--max-header-bytes={limits.max_header_bytes}",
            f"--max-headers={limits.max_headers}",
            f"--header-timeout={limits.header_timeout_s:g}",
            f"--keepalive-timeout={limits.keepalive_timeout_s:g}",
            f"--max-connections={limits.max_connections}"]
