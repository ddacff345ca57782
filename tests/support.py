"""Test plumbing every test shares (``from tests.support import …``; the repository root is on
``sys.path`` in every test run through the root ``conftest.py``).

- :func:`free_port`: a free TCP port on 127.0.0.1 (the kernel's, which production uses too).
- :func:`start_model_server` and :func:`stop_process`: a model server (or the CLI that starts
  one) as a separate process, waited for until its model is ready, and stopped by its process
  id with bounded waits.
- :class:`WebhookReceiver`: the demo's webhook receiver, which records what it is sent and
  fails, delays or refuses as a test tells it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from components.common.service import free_port
from components.deploy.client import EndpointError, wait_ready
from demo.webhook import WebhookReceiver

__all__ = ["WebhookReceiver", "free_port", "start_model_server", "stop_process"]


def start_model_server(cmd: list[str], url: str, model: str, log_path: str | os.PathLike, *,
                       env: dict | None = None, timeout: float = 90) -> subprocess.Popen:
    """Starts ``cmd`` (its output to ``log_path``) and waits until ``model`` is ready at
    ``url``; fails the test with the log's tail when it exits or is not ready in ``timeout``
    seconds (the process is killed then)."""
    log_path = Path(log_path)
    with open(log_path, "w") as log:  # a pipe nobody reads would fill and block
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env=os.environ.copy() if env is None else env)
    try:
        wait_ready(url, model, timeout=timeout, alive=lambda: proc.poll() is None)
    except EndpointError as exc:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"server did not start ({exc}): {log_path.read_text()[-3000:]}")
    return proc


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Sends ``sig`` to the process, waits ``timeout`` seconds for it to exit, then kills it;
    returns its exit status."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)
