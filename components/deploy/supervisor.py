"""Supervision of an environment's local model servers: restart on crash, with back-off and a
limit, and a truthful record of what runs.

The :class:`Supervisor` runs inside the environment's router process (``router.py``), which
lives as long as the environment does. Every ``interval`` it checks each revision the router
routes to: is the recorded process alive (the pid runs *and* is a model server on the
revision's port, so a reused pid is not mistaken for it), and does the server say it is ready?
A revision whose process is gone is restarted with the command line, port and log file it was
started with, so its URL does not change, after a back-off of ``backoff_base × 2^(n-1)`` seconds
(at most ``backoff_max``) for its n-th consecutive failure. After ``max_restarts`` consecutive
failures it is left down, the environment is reported unhealthy, and an ``alarm`` event is
recorded. A revision that stays ready for ``stable_after`` seconds has its consecutive count
reset.

What it finds is written, after every change, to ``<state_dir>/<model>.<environment>.supervisor.json``
(read by :class:`~components.deploy.targets.local.LocalTarget` and ``mlops deploy status``), and every
crash, restart and give-up is appended to ``<state_dir>/events.jsonl`` (one JSON object a line,
with ``severity`` ``warning`` or ``alarm``) for alerting.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from components.common.service import backoff

logger = logging.getLogger(__name__)


def supervisor_path(state_dir: str | os.PathLike, model: str, environment: str) -> Path:
    return Path(state_dir) / f"{model}.{environment}.supervisor.json"


def events_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / "events.jsonl"


def revision_key(revision: dict) -> str:
    """Identifies one started revision: its version and port (a new deploy gets a new port)."""
    return f"{revision['version']}@{revision['detail']['port']}"


def read_supervision(state_dir: str | os.PathLike, model: str, environment: str) -> dict:
    """The supervisor's last report of an environment, or ``{}`` if it never wrote one."""
    path = supervisor_path(state_dir, model, environment)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_events(state_dir: str | os.PathLike) -> list[dict]:
    path = events_path(state_dir)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def process_alive(pid: int, port: int) -> bool:
    """True when ``pid`` runs and is our model server on ``port`` (guards against pid reuse)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid
    text = b" ".join(cmdline).decode(errors="replace")
    return "components.serve.server" in text and f"--port={port}" in text


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _log_tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4000))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


@dataclass(frozen=True)
class SupervisionPolicy:
    """How crashed model servers are restarted.

    Attributes:
        interval: Seconds between checks.
        max_restarts: Consecutive failed starts or crashes after which a revision is left down
            and the environment reported unhealthy.
        backoff_base: Wait before the first restart; doubled for each further consecutive one.
        backoff_max: Longest wait between restarts.
        stable_after: Seconds of uninterrupted readiness that reset the consecutive count.
        start_timeout: Seconds a restarted server may take to become ready.
    """

    interval: float = 0.5
    max_restarts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    stable_after: float = 60.0
    start_timeout: float = 120.0

    def backoff(self, failures: int) -> float:
        return backoff(failures, self.backoff_base, self.backoff_max)


class Supervisor:
    """Keeps the revisions of one environment running (see the module docstring)."""

    def __init__(self, state_dir: str | os.PathLike, model: str, environment: str,
                 served_name: str, policy: SupervisionPolicy | None = None):
        self.state_dir = Path(state_dir)
        self.model = model
        self.environment = environment
        self.served_name = served_name
        self.policy = policy or SupervisionPolicy()
        self.records: dict[str, dict] = {}
        self.retired: dict[str, dict] = {}
        self._children: dict[int, subprocess.Popen] = {}
        previous = read_supervision(state_dir, model, environment).get("revisions", {})
        self._carried = previous  # restarts counted by an earlier router process

    # -- reporting ---------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return not any(r["state"] == "failed" for r in self.records.values())

    def report(self) -> dict:
        return {"environment": self.environment, "model": self.model, "router_pid": os.getpid(),
                "updated_at": _now(), "healthy": self.healthy,
                "revisions": {k: {f: v for f, v in r.items() if not f.startswith("_")}
                              for k, r in self.records.items()},
                "retired": {k: {"pid": r["pid"], "version": r["version"], "port": r["port"]}
                            for k, r in self.retired.items()}}

    def save(self) -> None:
        path = supervisor_path(self.state_dir, self.model, self.environment)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.report(), indent=2, sort_keys=True))
        os.replace(tmp, path)

    def _event(self, record: dict, event: str, severity: str, detail: str) -> None:
        entry = {"at": _now(), "model": self.model, "environment": self.environment,
                 "version": record["version"], "role": record["role"], "event": event,
                 "severity": severity, "pid": record["pid"], "detail": detail}
        with open(events_path(self.state_dir), "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
        log = logger.error if severity == "alarm" else logger.warning
        log("%s %s version %s (%s): %s", self.environment, event, record["version"],
            record["role"], detail)

    # -- checking ----------------------------------------------------------------------------

    def _record(self, role: str, revision: dict) -> dict:
        key = revision_key(revision)
        record = self.records.get(key)
        if record is None:
            carried = self._carried.get(key, {})
            detail = revision["detail"]
            record = {"role": role, "version": revision["version"], "port": detail["port"],
                      "url": revision["url"], "pid": carried.get("pid", detail["pid"]),
                      "state": "running", "alive": True, "ready": None,
                      "restarts": carried.get("restarts", 0),
                      "consecutive_failures": carried.get("consecutive_failures", 0),
                      "last_error": carried.get("last_error"),
                      "last_exit_at": carried.get("last_exit_at"), "next_restart_in": None,
                      "_cmd": detail.get("cmd"), "_log": detail.get("log", ""),
                      "_ready_since": None, "_restart_at": None, "_started": None}
            self.records[key] = record
        record["role"] = role
        return record

    def _alive(self, record: dict) -> bool:
        child = self._children.get(record["pid"])
        if child is not None and child.poll() is not None:
            return False
        return process_alive(record["pid"], record["port"])

    def prune(self, revisions: dict[str, dict]) -> bool:
        """Forgets revisions that are no longer routed (the target stops them, not the
        supervisor); True if any was forgotten (and the report rewritten)."""
        current = {revision_key(r) for r in revisions.values()}
        gone = [key for key in self.records if key not in current]
        for key in gone:  # kept in the report a while: the target stops them by these pids
            self.retired[key] = {**self.records.pop(key), "retired_at": time.monotonic()}
        for key in [k for k, r in self.retired.items()
                    if time.monotonic() - r["retired_at"] > 600 or k in current]:
            del self.retired[key]
        if gone:
            self.save()
        return bool(gone)

    async def tick(self, revisions: dict[str, dict], probe) -> None:
        """One check of every routed revision.

        Args:
            revisions: ``{"stable": revision, "canary": revision}`` as the target recorded
                them (``Revision`` dicts with ``detail.pid/port/cmd/log``).
            probe: ``async (url) -> bool``, whether the server at ``url`` says it is ready.
        """
        changed = self.prune(revisions)
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]  # reaped
        now = time.monotonic()
        for role, revision in revisions.items():
            record = self._record(role, revision)
            before = {k: record[k] for k in ("state", "alive", "ready", "pid", "restarts")}
            await self._check(record, now, probe)
            changed |= before != {k: record[k] for k in before}
        if changed:
            self.save()

    async def _check(self, record: dict, now: float, probe) -> None:
        policy = self.policy
        if record["state"] == "failed":
            record["alive"] = self._alive(record)
            return
        if record["state"] == "waiting":
            if now < record["_restart_at"]:
                record["next_restart_in"] = round(record["_restart_at"] - now, 1)
                return
            self._restart(record, now)
            return
        alive = self._alive(record)
        record["alive"] = alive
        if not alive:
            self._failed(record, now, "exited" if record["state"] == "running"
                         else "exited before it became ready")
            return
        ready = await probe(record["url"])
        if record["state"] == "starting":
            if ready:
                record.update(state="running", ready=True)
                record["_ready_since"] = now
                self._event(record, "restarted", "warning",
                            f"ready again after restart {record['restarts']} (pid "
                            f"{record['pid']}, {now - record['_started']:.1f} s)")
            elif now - record["_started"] > policy.start_timeout:
                self._kill(record["pid"])
                self._failed(record, now, f"not ready within {policy.start_timeout:.0f} s")
            return
        record["ready"] = ready
        if ready:
            if record["_ready_since"] is None:
                record["_ready_since"] = now
            if record["consecutive_failures"] and \
                    now - record["_ready_since"] > policy.stable_after:
                record["consecutive_failures"] = 0
        else:
            record["_ready_since"] = None

    def _failed(self, record: dict, now: float, what: str) -> None:
        record["alive"] = False
        record["ready"] = False
        record["_ready_since"] = None
        record["consecutive_failures"] += 1
        record["last_exit_at"] = _now()
        tail = _log_tail(record["_log"])
        child = self._children.get(record["pid"])
        code = child.poll() if child is not None else None
        if code is not None:
            what += f" with {'signal ' + str(-code) if code < 0 else 'status ' + str(code)}"
        record["last_error"] = f"{what}" + (f"; its log ends: {tail}" if tail else "")
        if record["consecutive_failures"] > self.policy.max_restarts:
            record["state"] = "failed"
            self._event(record, "gave_up", "alarm",
                        f"{what}; {record['consecutive_failures']} failures in a row, more "
                        f"than max_restarts={self.policy.max_restarts}: left down, the "
                        f"{self.environment} environment is unhealthy. Last log: {tail}")
            return
        wait = self.policy.backoff(record["consecutive_failures"])
        record["state"] = "waiting"
        record["_restart_at"] = now + wait
        record["next_restart_in"] = round(wait, 1)
        self._event(record, "exited", "warning",
                    f"{what} (pid {record['pid']}); restarting in {wait:.1f} s. Last log: {tail}")

    def _restart(self, record: dict, now: float) -> None:
        cmd = record["_cmd"]
        record["next_restart_in"] = None
        if not cmd:
            record["state"] = "failed"
            self._event(record, "gave_up", "alarm",
                        "no command line was recorded for this revision; redeploy it")
            return
        # A canary promoted since it started is restarted as what it is now (its capture
        # records name the role; the local target starts each server with --revision).
        cmd = [f"--revision={record['role']}" if str(a).startswith("--revision=") and
               record["role"] in ("stable", "canary") else a for a in cmd]
        with open(record["_log"] or os.devnull, "ab") as log:
            child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._children[child.pid] = child
        record.update(pid=child.pid, state="starting", alive=True, ready=False,
                      restarts=record["restarts"] + 1)
        record["_started"] = now
        logger.info("%s: restarting version %s (%s) as pid %d", self.environment,
                    record["version"], record["role"], child.pid)

    def _kill(self, pid: int) -> None:
        child = self._children.pop(pid, None)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)

    def reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]
