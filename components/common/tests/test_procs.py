"""Worker processes end with the process that started them (procs.exit_with)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from components.common.procs import pid_alive, process_started
from components.common.service import wait_until

ROOT = Path(__file__).resolve().parents[3]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if int(f.read().rpartition(b")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
@pytest.mark.timeout(60)
def test_pool_workers_end_when_their_starter_is_killed(tmp_path):
    script = tmp_path / "starter.py"
    script.write_text(
        "import os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from components.common.procs import exit_with\n"
        "def pid(_):\n"
        "    time.sleep(0.2)\n"
        "    return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(2, initializer=exit_with, initargs=(os.getpid(),))\n"
        "    print(' '.join(map(str, sorted(set(pool.map(pid, range(4)))))), flush=True)\n"
        "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert workers and all(pid_alive(p) for p in workers)
        assert set(workers) <= set(_children(proc.pid))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    wait_until(lambda: not any(pid_alive(p) for p in workers), 30, 0.1)
    still = [p for p in workers if pid_alive(p)]
    for pid in still:
        os.kill(pid, signal.SIGKILL)
    assert not still, f"workers {still} outlived the process that started them"


def test_a_gone_process_is_not_alive_and_has_no_start_time():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    gone = int(done.stdout)
    assert pid_alive(os.getpid()) and not pid_alive(gone)
    if os.path.isdir("/proc"):
        assert process_started(os.getpid()) and process_started(gone) is None
