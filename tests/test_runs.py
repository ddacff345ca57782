"""Run records (`mlops runs`): a run stopped by SIGTERM or Ctrl-C says so, a run killed -9
is shown as killed instead of `running` forever (issue 23, finding 7)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from pipelines.runs import list_records

SCRIPT = """
import sys, time
from pipelines.runs import RunRecorder
with RunRecorder(sys.argv[1], "training", {}, "log"):
    print("started", flush=True)
    time.sleep(60)
"""


def _start(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "started"
    return proc


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig,status,words", [
    (signal.SIGTERM, "interrupted", "stopped by SIGTERM"),
    (signal.SIGINT, "interrupted", "stopped by Ctrl-C"),
    (signal.SIGKILL, "killed", "ended without recording an outcome")])
def test_a_stopped_run_says_how_it_ended(tmp_path, sig, status, words):
    proc = _start(tmp_path)
    assert [r["status"] for r in list_records(tmp_path)] == ["running"]
    proc.send_signal(sig)
    proc.wait(30)
    time.sleep(0.1)
    (record,) = list_records(tmp_path)
    assert record["status"] == status and words in record["error"]
