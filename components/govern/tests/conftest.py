"""Real HTTP receivers on loopback for the alert and trigger tests."""

from __future__ import annotations

import pytest

from tests.support import WebhookReceiver, free_port


@pytest.fixture
def receiver():
    """The demo's webhook receiver at ``…/hook``; a test sets its faults (``fail_first``,
    ``fail_status``, ``delay_s``, ``status``) and reads ``received`` and ``hits``."""
    with WebhookReceiver(path="/hook") as r:
        yield r


@pytest.fixture
def dead_url():
    """A loopback URL where nothing listens (the receiver is down)."""
    return f"http://127.0.0.1:{free_port()}/hook"
