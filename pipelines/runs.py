"""A record of every pipeline run started from the command line, and ``mlops runs``.

kfp.local keeps task outputs under its pipeline root but no index of runs; the CLI writes one
JSON record per run under ``$MLOPS_HOME/runs/`` (pipeline, arguments, start, duration, status,
the failed step and its error, the log file, every output with its path and metadata) so that
``mlops runs list`` and ``mlops runs show RUN`` (:mod:`components.cli.runs`) find a run's
reports later.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

#: Artifact types a person opens in a browser; the CLI gives each a ``.html`` twin.
_BROWSER_TYPES = {"system.HTML", "system.Markdown"}


def new_run_id(pipeline: str) -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{pipeline}-{stamp}-{uuid.uuid4().hex[:6]}"


def describe_outputs(outputs: dict) -> dict:
    """Outputs as plain data: parameters as values, artifacts as type, path and metadata."""
    described = {}
    for name, value in outputs.items():
        if hasattr(value, "uri") and hasattr(value, "metadata"):
            path = getattr(value, "path", "") or ""
            entry = {"type": getattr(value, "schema_title", ""), "path": path,
                     "metadata": _plain(value.metadata)}
            viewable = browser_copy(path, entry["type"])
            if viewable:
                entry["view"] = viewable
            described[name] = entry
        else:
            described[name] = _plain(value)
    return described


def browser_copy(path: str, schema_title: str) -> str:
    """For an HTML or Markdown artifact (a file named after the output, no extension), a
    hard link ``<path>.html`` (or ``.md``) a browser or editor opens by its name."""
    if schema_title not in _BROWSER_TYPES or not path or not os.path.isfile(path):
        return ""
    suffix = ".html" if schema_title == "system.HTML" else ".md"
    twin = path + suffix
    if not os.path.exists(twin):
        try:
            os.link(path, twin)
        except OSError:
            Path(twin).write_bytes(Path(path).read_bytes())
    return twin


def find_run_dir(outputs_root: str | os.PathLike, since: float) -> Path | None:
    """The folder kfp.local made for a run started at ``since`` (the newest one after it)."""
    root = Path(outputs_root)
    if not root.is_dir():
        return None
    made = [p for p in root.iterdir() if p.is_dir() and p.stat().st_mtime >= since - 1]
    return max(made, key=lambda p: p.stat().st_mtime, default=None)


def collect_reports(run_dir: str | os.PathLike) -> dict[str, str]:
    """Every HTML or Markdown report any task of the run wrote, as ``task/output -> path`` of
    a twin with the right extension (kfp.local names artifact files after the output)."""
    reports = {}
    for executor_output in sorted(Path(run_dir).rglob("executor_output.json")):
        try:
            artifacts = json.loads(executor_output.read_text()).get("artifacts", {})
        except (OSError, ValueError):
            continue
        task = executor_output.parent.name
        for name, entry in artifacts.items():
            for artifact in entry.get("artifacts", []):
                path = artifact.get("uri", "")
                kind = _sniff(path)
                if kind:
                    reports[f"{task}/{name}"] = browser_copy(path, kind)
    return reports


def _sniff(path: str) -> str:
    """``system.HTML`` or ``system.Markdown`` for a report file, else empty."""
    if not path or not os.path.isfile(path) or os.path.getsize(path) > 64 * 1024 * 1024:
        return ""
    with open(path, "rb") as f:
        head = f.read(64).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "system.HTML"
    if head.startswith(b"# "):
        return "system.Markdown"
    return ""


def _plain(value):
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def write_record(runs_dir: str | os.PathLike, record: dict) -> Path:
    out = Path(runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{record['run_id']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)
    return path


def _gone(record: dict) -> bool:
    """A ``running`` record whose process on this host no longer runs (killed -9, a lost
    machine): it will never write its outcome."""
    pid, host = record.get("pid"), record.get("host")
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a reused pid: another process started after the run
        started = Path(f"/proc/{pid}").stat().st_mtime
        return started > _dt.datetime.fromisoformat(record["started"]).timestamp() + 5
    except (OSError, KeyError, ValueError):
        return False


def list_records(runs_dir: str | os.PathLike) -> list[dict]:
    folder = Path(runs_dir)
    records = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("Skipping unreadable run record %s: %s", p, exc)
            continue
        if record.get("status") == "running" and _gone(record):
            record["status"] = "killed"
            record["error"] = (f"its process {record['pid']} ended without recording an "
                               "outcome (killed); run it again")
        records.append(record)
    return sorted(records, key=lambda r: r.get("started", ""))


def find_record(runs_dir: str | os.PathLike, run: str) -> dict:
    records = list_records(runs_dir)
    if not records:
        raise FileNotFoundError(f"No pipeline run recorded under {runs_dir}. Runs started "
                                "with `mlops run …` or `mlops demo` are recorded there.")
    if run in ("latest", "last"):
        return records[-1]
    matches = [r for r in records if r["run_id"] == run] or \
        [r for r in records if r["run_id"].startswith(run)]
    if len(matches) != 1:
        hint = "several runs match" if matches else "no run matches"
        raise ValueError(f"Run {run!r}: {hint}. See `mlops runs list` for the run ids.")
    return matches[0]


class RunRecorder:
    """Records one CLI pipeline run: ``with RunRecorder(...) as rec: rec.outputs = …``."""

    def __init__(self, runs_dir: str | os.PathLike, pipeline: str, arguments: dict,
                 log_path: str, outputs_root: str | os.PathLike | None = None):
        self.runs_dir = runs_dir
        self.outputs_root = outputs_root
        self._wall0 = time.time()
        self.record = {"run_id": new_run_id(pipeline), "pipeline": pipeline,
                       "arguments": _plain(arguments), "log": log_path,
                       "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                       "status": "running", "pid": os.getpid(),
                       "host": socket.gethostname()}
        self._t0 = time.monotonic()
        self.outputs: dict | None = None

    def __enter__(self) -> RunRecorder:
        write_record(self.runs_dir, self.record)
        self._sigterm = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (kill, systemd, a pod's end) ends the run as Ctrl-C does: recorded.
            self._sigterm = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL
            signal.signal(signal.SIGTERM, _terminated)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.record["duration_s"] = round(time.monotonic() - self._t0, 1)
        run_dir = find_run_dir(self.outputs_root, self._wall0) if self.outputs_root else None
        if run_dir is not None:
            self.record["run_dir"] = str(run_dir)
            self.record["reports"] = collect_reports(run_dir)
        if exc is None:
            self.record["status"] = "succeeded"
            self.record["outputs"] = describe_outputs(self.outputs or {})
        elif isinstance(exc, KeyboardInterrupt):
            self.record["status"] = "interrupted"
            self.record["error"] = ("stopped by SIGTERM" if isinstance(exc, _Terminated)
                                    else "stopped by Ctrl-C") + "; run it again"
        else:
            # deferred: it imports components.settings, which `mlops compile` sets first
            from components.retrain.core import NOTHING_NEW  # deferred: see above

            self.record["failed_step"] = getattr(exc, "task", "") or "(before any step)"
            self.record["error"] = getattr(exc, "error", "") or str(exc)
            # A retraining that ended before training (nothing new to train on) did not fail.
            self.record["status"] = ("nothing_new" if self.record["error"].startswith(
                NOTHING_NEW) else "failed")
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
        write_record(self.runs_dir, self.record)


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a run was recorded (ends the command as Ctrl-C does)."""


def _terminated(signum, frame):
    raise _Terminated()
