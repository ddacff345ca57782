"""The product owner's webhook: an HTTP receiver on loopback that records what it is sent.

The closed loop sends its alerts here (Slack or Alertmanager JSON). The tests and benchmarks
of the alert path use the same receiver, with the faults they need set while it runs: fail
the first requests, answer slowly, answer another status.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY_BYTES = 1 << 20


class WebhookReceiver:
    """An HTTP receiver on 127.0.0.1 that keeps what it is sent.

    Use it as a context manager (or :meth:`start` and :meth:`stop`). Each POST answered with
    a 2xx is recorded in :attr:`messages` as ``{"at": time, "path": path, "body": JSON}`` (a
    body that is not JSON is kept as ``{"raw": text}``) and handed to ``on_message``.

    Faults a test sets while it runs: ``fail_first`` (answer the first N requests with
    ``fail_status``), ``delay_s`` (wait this long before answering), ``status`` (the answer
    after that). ``hits`` counts every request.

    Args:
        on_message: Called with each recorded entry (the demo prints it).
        host: The address it binds.
        port: The port it binds; 0 takes a free one.
        path: Appended to :attr:`url`, the address senders are given.
    """

    def __init__(self, on_message=None, host: str = "127.0.0.1", port: int = 0,
                 path: str = ""):
        self.messages: list[dict] = []
        self.on_message = on_message
        self.hits = 0
        self.fail_first = 0
        self.fail_status = 503
        self.delay_s = 0.0
        self.status = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, MAX_BODY_BYTES))
                with receiver.lock:
                    receiver.hits += 1
                    n = receiver.hits
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                status = receiver.fail_status if n <= receiver.fail_first else receiver.status
                if 200 <= status < 300:
                    try:
                        message = json.loads(body or b"{}")
                    except json.JSONDecodeError:
                        message = {"raw": body.decode("utf-8", "replace")}
                    entry = {"at": time.time(), "path": self.path, "body": message}
                    with receiver.lock:
                        receiver.messages.append(entry)
                    if receiver.on_message:
                        receiver.on_message(entry)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"ok": true}' if status < 300 else b'{"ok": false}')
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender timed out and went away

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.server.timeout = 5
        self.url = f"http://{host}:{self.server.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def received(self) -> list:
        """The bodies of the requests answered with a 2xx, in the order they came."""
        with self.lock:
            return [m["body"] for m in self.messages]

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def alert_text(body: dict) -> str:
    """One line from a Slack or Alertmanager payload."""
    if "text" in body:
        return str(body["text"]).splitlines()[0]
    alerts = body.get("alerts") or []
    if alerts:
        a = alerts[0]
        return (f"[{a.get('status', body.get('status', ''))}] "
                f"{a.get('annotations', {}).get('summary') or a.get('labels', {})}")
    return json.dumps(body)[:200]
