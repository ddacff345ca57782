"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1 for the storage tests.

It sits between a client (the minio client of an ``S3Store``) and a real server (the moto S3
server over HTTP) and relays requests one by one, keep-alive included, except where told to
misbehave:

* ``drop_reply``: a predicate over ``(method, path, headers)``; the first ``drop_count``
  requests that match are forwarded to the server, which executes them, and then the client's
  connection is closed without the reply: the "lost reply" of a network blip.
* ``blackhole=True``: connections are accepted and read, and nothing is ever answered: a
  partitioned server.
* :meth:`outage` / :meth:`partition` / :meth:`restore` switch a relaying proxy while it runs:
  during an outage every connection (new or kept alive) is closed at its next request without
  an answer, as by a server that went down; during a partition requests are read and never
  answered; after :meth:`restore` requests are relayed again. ``trip`` (a predicate like
  ``drop_reply``) and ``trip_to`` switch the mode when the first matching request arrives,
  before it is relayed: an outage in the middle of a publish.

Every socket has a timeout, the serving threads are daemons, and :meth:`stop` closes the
listening socket and every open connection, then joins the threads.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlparse

Predicate = Callable[[str, str, dict], bool]


class FaultProxy:
    def __init__(self, upstream: str | None = None, *, drop_reply: Predicate | None = None,
                 drop_count: int = 1, blackhole: bool = False, timeout: float = 30.0,
                 trip: Predicate | None = None, trip_to: str = "outage"):
        if not blackhole and not upstream:
            raise ValueError("A relaying proxy needs an upstream URL.")
        self.upstream = urlparse(upstream) if upstream else None
        self.drop_reply = drop_reply
        self.drops_left = drop_count
        self.mode = "blackhole" if blackhole else "relay"
        self.trip, self.trip_to = trip, trip_to
        self.tripped: list[tuple[str, str]] = []
        self.unanswered = 0  # requests (or connections) met by an outage or a partition
        self.timeout = timeout
        self.dropped: list[tuple[str, str]] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._accept_thread = threading.Thread(target=self._accept, daemon=True,
                                               name="faultproxy-accept")

    def __enter__(self) -> FaultProxy:
        self._accept_thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._accept_thread.join(timeout=5)
        self._server.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def blackhole(self) -> bool:
        return self.mode == "blackhole"

    def outage(self) -> None:
        """From now on, close every connection at its next request, unanswered."""
        self.mode = "outage"

    def partition(self) -> None:
        """From now on, read requests and answer none."""
        self.mode = "blackhole"

    def restore(self) -> None:
        """Relay requests again."""
        if self.upstream is None:
            raise ValueError("A proxy without an upstream cannot relay.")
        self.mode = "relay"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(self.timeout)
            with self._lock:
                self._conns.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                      name="faultproxy-conn")
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.mode in ("outage", "blackhole"):
                with self._lock:
                    self.unanswered += 1
                if self.blackhole:
                    self._swallow(conn)
                return
            self._relay(conn)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _swallow(self, conn: socket.socket) -> None:
        while not self._stopping.is_set() and conn.recv(65536):
            pass  # read everything, answer nothing

    def _relay(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port,
                                              timeout=self.timeout)
        try:
            while not self._stopping.is_set():
                line = reader.readline(65537)
                if not line or line in (b"\r\n", b"\n"):
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    header = reader.readline(65537)
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip()] = value.strip()
                lowered = {k.lower(): v for k, v in headers.items()}
                if "chunked" in lowered.get("transfer-encoding", "").lower():
                    raise OSError("chunked request bodies are not supported by this proxy")
                body = reader.read(int(lowered.get("content-length", "0") or 0))
                with self._lock:
                    if self.trip is not None and self.trip(method, path, lowered):
                        self.trip = None
                        self.tripped.append((method, path))
                        self.mode = self.trip_to
                    if self.mode != "relay":
                        self.unanswered += 1
                if self.mode == "outage":
                    return  # the connection is closed unanswered
                if self.mode == "blackhole":
                    self._swallow(conn)
                    return
                self.requests.append((method, path))
                upstream.request(method, path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                with self._lock:
                    drop = (self.drop_reply is not None and self.drops_left > 0
                            and self.drop_reply(method, path, lowered))
                    if drop:
                        self.drops_left -= 1
                        self.dropped.append((method, path))
                if drop:
                    return  # executed by the server; the client never hears of it
                out = [f"HTTP/1.1 {response.status} {response.reason}\r\n"]
                for name, value in response.getheaders():
                    if name.lower() in ("transfer-encoding", "connection", "content-length"):
                        continue
                    out.append(f"{name}: {value}\r\n")
                length = (response.getheader("Content-Length", "0") if method == "HEAD"
                          else str(len(data)))
                out.append(f"Content-Length: {length}\r\n\r\n")
                conn.sendall("".join(out).encode("latin-1") + (b"" if method == "HEAD" else data))
        finally:
            upstream.close()
            reader.close()
