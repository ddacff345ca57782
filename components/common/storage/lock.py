"""Leases on a name in any store: one holder at a time, and a lock whose holder is gone heals.

A :class:`LeaseLock` is a series of objects ``<name>-<generation>`` (``-000001``, ``-000002``
...). Taking the lock is a create-only write of generation 1, so two takers can never both
win. The holder rewrites its object every lease/4 seconds (a heartbeat). A taker that finds
the lock held decides, on every look, whether its holder is provably gone:

* its holder ran on this host and its process no longer exists (or its pid now belongs to a
  process started at another time);
* its holder is this very process, but no lock object of this process holds it any more (an
  earlier attempt that failed, for example while the store was unreachable, and could not
  delete it);
* its object has not changed for a whole lease (``MLOPS_PUBLISH_LEASE``, 60 s), measured on
  the taker's own monotonic clock, so clock skew between machines does not matter: a holder
  on another machine that crashed.

A lock whose holder is gone is taken over at once by writing generation g+1 create-only (one
winner). A lock held by a live process is waited for, with a line at INFO that names the
holder and how long this one has waited, for at most ``MLOPS_PUBLISH_WAIT`` (900 s) or the
caller's bound. The holder checks before each write it guards that it still holds the
newest generation (:meth:`LeaseLock.check`), so a holder that was only slow stops instead of
overwriting its successor's work.

When the store itself stops answering, the holder cannot delete its lock: it leaves it (and
says so) rather than wait for the store again, because the next attempt, in this process or
another on this host, takes it over at once, and one on another host after a lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from components.common.procs import pid_alive, process_started
from components.common.service import wait_until
from components.common.storage.base import (
    AlreadyExistsError,
    ObjectNotFoundError,
    ObjectStore,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
)

logger = logging.getLogger(__name__)

LEASE_VAR, DEFAULT_LEASE_S = "MLOPS_PUBLISH_LEASE", 60.0
WAIT_VAR, DEFAULT_WAIT_S = "MLOPS_PUBLISH_WAIT", 900.0
#: How often a waiter says again who it waits for.
PROGRESS_EVERY_S = 15.0

# Owners of the locks this process holds right now (a lock of this pid whose owner is not
# here was left by an attempt that ended).
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()


class LockTimeout(StorageError):
    """A live holder kept the lock for longer than the waiter's bound."""


class LockLost(StorageError):
    """Another process took the lock over from this holder (it was presumed dead)."""


def _seconds_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise StorageConfigError(f"Invalid {name}: {raw!r}. Expect a number of seconds > 0.")
    return value


def lease_seconds() -> float:
    """``MLOPS_PUBLISH_LEASE``: how long a lock may go unrenewed before it is taken over."""
    return _seconds_env(LEASE_VAR, DEFAULT_LEASE_S)


def wait_seconds() -> float:
    """``MLOPS_PUBLISH_WAIT``: how long to wait for a live holder by default."""
    return _seconds_env(WAIT_VAR, DEFAULT_WAIT_S)


def holder_gone(holder: dict) -> str | None:
    """Why the holder a lock object names provably holds it no more, or None if it may."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return None
    if pid == os.getpid():
        with _HELD_GUARD:
            if holder.get("owner") in _HELD:
                return None
        return f"this process (pid {pid}) left it in an attempt that ended"
    if not pid_alive(pid):
        return f"its process {pid} on this host is gone"
    started = holder.get("started")
    if started and process_started(pid) not in (None, started):
        return f"its process {pid} on this host is gone (the pid is another process's now)"
    return None


def describe(holder: dict) -> str:
    if not holder:
        return "an unreadable lock"
    since = f" since {holder['since']}" if holder.get("since") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{since}"


class LeaseLock:
    """A lease on ``name`` in ``store``; see the module's docstring.

    Args:
        store: Where the lock objects live (any backend).
        name: The lock's key without its generation, e.g. ``locks/versions-ab12.lock``.
        what: What the holder does, for people: "publishing s3://…/versions/ab12".
        wait_s: The longest wait for a live holder (default ``MLOPS_PUBLISH_WAIT``).
        done: Tells whether the work the lock guards is done already (another holder did
            it): then :meth:`acquire` returns False instead of taking the lock.
    """

    def __init__(self, store: ObjectStore, name: str, *, what: str,
                 wait_s: float | None = None, done: Callable[[], bool] | None = None):
        self.store = store
        self.name = name
        self.what = what
        self.folder, _, self.base = name.rpartition("/")
        self.wait_s = wait_seconds() if wait_s is None else wait_s
        self.lease = lease_seconds()
        self.done = done or (lambda: False)
        self.owner = uuid.uuid4().hex
        self.generation = 0
        self.held = False
        self._beat = 0
        self._since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def key(self, generation: int) -> str:
        return f"{self.name}-{generation:06d}"

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(),
                           "pid": os.getpid(), "started": process_started(os.getpid()),
                           "since": self._since, "what": self.what,
                           "beat": self._beat}).encode()

    def _generations(self) -> list[int]:
        head = self.base + "-"
        found = []
        for obj in self.store.list(self.folder):
            name = obj.key.rsplit("/", 1)[-1]
            if name.startswith(head) and name[len(head):].isdigit():
                found.append(int(name[len(head):]))
        return sorted(found)

    def _try(self, generation: int) -> bool:
        with _HELD_GUARD:  # registered first: a look in between must not find it "left"
            _HELD.add(self.owner)
        try:
            self.store.put(self.key(generation), self._body(), if_absent=True)
        except AlreadyExistsError:
            with _HELD_GUARD:
                _HELD.discard(self.owner)
            return False
        except BaseException:
            with _HELD_GUARD:
                _HELD.discard(self.owner)
            raise
        self.generation, self.held = generation, True
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name=f"lease-{self.base}")
        self._thread.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 4):
            self._beat += 1
            try:
                self.store.put(self.key(self.generation), self._body())
            except StorageError as exc:  # the next check() or the guarded write decides
                logger.warning("Could not renew the lock %s: %s", self.store.uri_of(
                    self.key(self.generation)), exc)

    def acquire(self) -> bool:
        """Takes the lock: True once held, False if ``done`` became true meanwhile.

        Raises:
            LockTimeout: A live holder kept it for ``wait_s``; names the holder and the
                lock's key.
        """
        seen: tuple[int, bytes] | None = None
        seen_at = started = time.monotonic()
        told = -PROGRESS_EVERY_S
        holder: dict = {}

        def attempt() -> str | None:
            """"held", "done", or None while a live holder keeps the lock."""
            nonlocal seen, seen_at, holder, told
            while True:  # a lock released or taken over meanwhile is looked at again at once
                if self.done():
                    return "done"
                generations = self._generations()
                if not generations:
                    if self._try(1):
                        return "held"
                    continue
                top = generations[-1]
                try:
                    body = self.store.get(self.key(top))
                except ObjectNotFoundError:
                    continue  # released meanwhile
                now = time.monotonic()
                if seen != (top, body):
                    seen, seen_at = (top, body), now
                holder = _parse(body)
                gone = holder_gone(holder)
                if gone is None and now - seen_at > self.lease:
                    gone = f"not renewed for {now - seen_at:.0f} s ({LEASE_VAR})"
                if gone:
                    logger.warning("Taking over the lock of %s from %s: %s", self.what,
                                   describe(holder), gone)
                    if self._try(top + 1):
                        return "held"
                    continue
                if now - told >= PROGRESS_EVERY_S:
                    told = now
                    logger.info("Waiting for %s: the lock %s is held by %s, a live process "
                                "(renewed %.0f s ago); waited %.0f s of at most %.0f s",
                                self.what, self.store.uri_of(self.key(top)), describe(holder),
                                now - seen_at, now - started, self.wait_s)
                return None

        outcome = wait_until(attempt, self.wait_s, 0.05, max_poll_s=1.0)
        if outcome is None:
            raise LockTimeout(
                f"Gave up waiting for {self.what} after {self.wait_s:.0f} s: the lock is held "
                f"by {describe(holder)}, which is alive and renews it. Run again once it has "
                f"finished; if no such process runs any more, delete "
                f"{self.store.uri_of(self.name)}-* and run again.")
        if outcome == "held":
            waited = time.monotonic() - started
            if waited >= 1.0:
                logger.info("Took the lock of %s after waiting %.0f s", self.what, waited)
        return outcome == "held"

    def check(self) -> None:
        """Raises :class:`LockLost` if another process took the lock over from this one."""
        if self.store.exists(self.key(self.generation + 1)):
            raise LockLost(
                f"Lost the lock of {self.what}: another process took it over after this one "
                f"did not renew it for {self.lease:.0f} s ({LEASE_VAR}). Nothing more was "
                "written by this one.")
        try:
            holder = _parse(self.store.get(self.key(self.generation)))
        except ObjectNotFoundError:
            holder = {}
        if holder.get("owner") != self.owner:
            raise LockLost(f"Lost the lock of {self.what} to {describe(holder)}; nothing more "
                           "was written by this one.")

    def release(self, *, leave: bool = False) -> None:
        """Stops renewing and deletes the lock's objects.

        Args:
            leave: Do not touch the store (it stopped answering): the lock stays behind and
                the next attempt takes it over at once, since no process holds it.
        """
        self._stop.set()
        with _HELD_GUARD:
            _HELD.discard(self.owner)
        if not self.held:
            return
        self.held = False
        if leave:
            logger.warning("Left the lock %s behind (the store did not answer); the next "
                           "attempt takes it over at once", self.store.uri_of(
                               self.key(self.generation)))
            return
        if self._thread is not None:
            self._thread.join()
        try:
            for generation in range(1, self.generation + 1):
                self.store.delete(self.key(generation))
        except StorageError as exc:
            logger.warning("Could not remove the lock %s: %s; the next attempt takes it over "
                           "at once", self.store.uri_of(self.key(self.generation)), exc)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(leave=isinstance(exc, StorageUnavailableError))


def _parse(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
