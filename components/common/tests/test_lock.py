"""Storage locks that heal: a gone holder is taken over at once, a live one is waited for."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.common.storage import StorageUnavailableError, open_store
from components.common.storage.lock import LeaseLock, LockTimeout

ROOT = Path(__file__).resolve().parents[3]

_HOLDER = """
import sys
from components.common.storage import open_store
from components.common.storage.lock import LeaseLock

lock = LeaseLock(open_store(sys.argv[1]), "locks/v.lock", what="a test holder")
assert lock.acquire()
print("held", flush=True)
sys.stdin.read()  # holds the lock until the test closes its stdin
lock.release()
print("released", flush=True)
"""


def _gone_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def _lock_objects(store) -> list[str]:
    return [o.key for o in store.list("locks")]


@pytest.mark.timeout(60)
def test_a_lock_whose_process_is_gone_is_taken_over_at_once(store_uri, caplog):
    store = open_store(store_uri)
    dead = _gone_pid()
    store.put("locks/v.lock-000001", json.dumps(
        {"owner": "x", "host": socket.gethostname(), "pid": dead, "beat": 3}).encode())
    lock = LeaseLock(store, "locks/v.lock", what="publishing v", wait_s=600)
    with caplog.at_level(logging.WARNING, logger="components.common.storage.lock"):
        started = time.monotonic()
        assert lock.acquire()
        took = time.monotonic() - started
    assert took < 30, f"took {took:.1f} s over a lock whose holder is gone (lease 60 s)"
    assert lock.generation == 2
    assert f"its process {dead} on this host is gone" in caplog.text
    lock.release()
    assert _lock_objects(store) == []


@pytest.mark.timeout(60)
def test_a_lock_left_by_an_earlier_attempt_of_this_process_is_taken_over_at_once(store_uri):
    """The attempt failed while the store did not answer, so it could not delete its lock."""
    store = open_store(store_uri)
    first = LeaseLock(store, "locks/v.lock", what="publishing v", wait_s=600)
    with pytest.raises(StorageUnavailableError), first:
        raise StorageUnavailableError("the store went away mid-publish")
    assert _lock_objects(store) == ["locks/v.lock-000001"]  # left behind, on purpose
    second = LeaseLock(store, "locks/v.lock", what="publishing v", wait_s=600)
    started = time.monotonic()
    with second as held:
        assert held and second.generation == 2
        second.check()  # it is the holder now
    assert time.monotonic() - started < 30
    assert _lock_objects(store) == []
    with pytest.raises(Exception, match="Lost the lock"):
        first.check()  # the first attempt may never write again


@pytest.mark.timeout(90)
def test_a_live_holder_is_waited_for_with_its_name_and_then_the_lock_is_taken(
        store_uri, caplog, monkeypatch):
    monkeypatch.setenv("MLOPS_PUBLISH_LEASE", "30")
    store = open_store(store_uri)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, store_uri], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        # A waiter says who it waits for, and with a short bound gives up naming the holder
        # and the lock.
        with caplog.at_level(logging.INFO, logger="components.common.storage.lock"), \
                pytest.raises(LockTimeout, match=rf"pid {holder.pid} on .*alive.*locks/v.lock"):
            LeaseLock(store, "locks/v.lock", what="publishing v", wait_s=1).acquire()
        waiting = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert waiting and f"Waiting for publishing v: the lock {store.uri_of('locks')}" in (
            waiting[0])
        assert f"held by pid {holder.pid} on {socket.gethostname()}" in waiting[0]
        # One with time enough takes the lock once the holder has finished.
        waiter = LeaseLock(store, "locks/v.lock", what="publishing v", wait_s=60)
        holder.stdin.close()  # the holder finishes now
        assert waiter.acquire()
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert waiter.generation == 1  # waited for, not taken over
    waiter.release()


@pytest.mark.timeout(60)
def test_a_lock_that_is_not_renewed_is_taken_over_after_the_lease(store_uri, monkeypatch):
    monkeypatch.setenv("MLOPS_PUBLISH_LEASE", "1")
    store = open_store(store_uri)
    store.put("locks/v.lock-000001", json.dumps(
        {"owner": "y", "host": "another-host", "pid": 1, "beat": 0}).encode())
    lock = LeaseLock(store, "locks/v.lock", what="publishing v", wait_s=30)
    assert lock.acquire() and lock.generation == 2
    lock.release()
    assert _lock_objects(store) == []
