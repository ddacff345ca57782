"""Worker processes that end with the process that started them.

A process pool's workers wait on a queue whose writing end they hold themselves, so when the
process that started them is killed (``kill -9``, an out-of-memory kill, a pod's SIGKILL
after its grace period) nothing tells them: they, the forkserver they were forked from and
multiprocessing's resource tracker stay behind, idle, for ever. :func:`exit_with` is the
pools' initializer: each worker watches the starting process and ends itself the moment that
process is gone; the forkserver and the resource tracker then see their last client leave
and end too.
"""

from __future__ import annotations

import logging
import os
import select
import threading

logger = logging.getLogger(__name__)

#: How often a worker looks whether its starter still runs where it cannot be told at once.
POLL_S = 0.5


def exit_with(pid: int) -> None:
    """Ends this process as soon as process ``pid`` ends (call it in a pool worker).

    Linux tells a waiting thread at once through a pidfd (``pidfd_open``, Linux 5.3); where
    that is not available, the thread looks every :data:`POLL_S` seconds.
    """
    thread = threading.Thread(target=_watch, args=(pid,), daemon=True, name=f"exit-with-{pid}")
    thread.start()


def _watch(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)  # gone before we looked
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # readable once the process has ended
    else:
        while pid_alive(pid):
            threading.Event().wait(POLL_S)
    os._exit(1)


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists on this host (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = _proc_stat(pid)
    return not (state and state[0] == "Z")


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def process_started(pid: int) -> str | None:
    """When a process started, in clock ticks after boot (Linux), to tell a reused pid."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None
