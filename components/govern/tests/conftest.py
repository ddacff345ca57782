"""Real HTTP receivers on loopback for the alert and trigger tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Receiver:
    """A webhook receiver on 127.0.0.1 whose behaviour a test sets.

    ``fail_first``: answer the first N requests with ``fail_status``; ``delay_s``: wait this
    long before answering; ``status``: the answer after that. ``received`` holds the JSON
    bodies of the requests it answered with 2xx; ``hits`` counts every request.
    """

    def __init__(self):
        self.received: list[dict] = []
        self.hits = 0
        self.fail_first = 0
        self.fail_status = 503
        self.delay_s = 0.0
        self.status = 200
        self.on_receive = None
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.hits += 1
                    n = outer.hits
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                status = outer.fail_status if n <= outer.fail_first else outer.status
                if 200 <= status < 300:
                    payload = json.loads(body)
                    outer.received.append(payload)
                    if outer.on_receive:
                        outer.on_receive(payload)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(b"ok" if status < 300 else b"unavailable")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def dead_url():
    """A loopback URL where nothing listens (the receiver is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"
