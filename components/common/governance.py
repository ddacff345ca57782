"""The governance folder of a monitoring store, and its audit log.

Two steps write here: governance (alerts, deliveries, episodes, its actions) and the
continuous-training step (a retrained version released or refused), so the folder and the
audit log live in the kernel.

Every governance record is one JSON object written with a create-only put
(``If-None-Match: *`` on S3, ``link()`` on a directory), so a record is either complete or
absent, two writers never overwrite each other, and nothing is ever rewritten. Layout (see
``components/monitor/contract.py``)::

    governance/<model>/alerts/<seq>.json                  one alert (firing or resolved)
    governance/<model>/deliveries/<seq>/<recipient>/<n>.json  delivery round n of alert seq
    governance/<model>/audit/<seq>.json                   one audit entry
    governance/<model>/episodes/<key>.json                a retraining episode's claim
    governance/<model>/episodes/<key>.launch.json         its run (or why none started)
    governance/<model>/episodes/<key>.ended.json          how its run ended (once known)
    governance/<model>/episodes/<key>.closed.json         its end
    governance/<model>/governed/<verdict run_id>.json     a verdict fully governed

Alerts, delivery rounds and audit entries are numbered record logs
(:mod:`components.common.records`); episodes and ``governed`` markers are keyed.

The audit log holds one record per action taken or refused (triggers, retraining runs not
started or not blessed, rollbacks, holds and their lifting, releases), never changed or
deleted. ``components/govern/audit.py`` merges it with the alerts and the registry's own logs
into the audit view.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from components.common.records import RecordLog, actor, now_iso
from components.common.storage import AlreadyExistsError, ObjectStore, open_store

logger = logging.getLogger(__name__)

AUDIT = "audit"

#: What an audit record can be about.
KINDS = ("trigger", "retrain_skipped", "retrain_failed", "rollback", "rollback_skipped",
         "hold", "hold_lifted", "govern", "alert", "resolved", "alias_move", "approval",
         "release")


class GovernanceStore:
    """The ``governance/<model>/`` folder of a monitoring store."""

    def __init__(self, store_uri: str | ObjectStore, model: str):
        root = store_uri if isinstance(store_uri, ObjectStore) else open_store(store_uri)
        self.root = root
        self.model = model
        self.store = root.child(f"governance/{model}")

    def uri_of(self, key: str) -> str:
        return self.store.uri_of(key)

    def log(self, folder: str) -> RecordLog:
        """The numbered records of ``folder`` (``alerts``, ``audit``, a delivery folder)."""
        return RecordLog(self.store, folder)

    def append(self, folder: str, record: dict | Callable[[int], dict]) -> dict:
        """Adds ``record`` (or what it builds from the number) as the next numbered record of
        ``folder``; never overwrites one. Returns the record with its ``seq``."""
        return self.log(folder).append(record)

    def records(self, folder: str) -> list[dict]:
        """Every numbered record of ``folder``, oldest first."""
        return self.log(folder).records()

    def create(self, key: str, record: dict) -> bool:
        """Writes ``record`` at ``key`` if nothing is there; False when somebody was first."""
        try:
            self.store.put(key, json.dumps(record, sort_keys=True, default=str).encode(),
                           if_absent=True)
            return True
        except AlreadyExistsError:
            return False

    def get(self, key: str) -> dict | None:
        return self.store.get_json(key) if self.store.exists(key) else None


class AuditLog:
    """``governance/<model>/audit``: append-only."""

    def __init__(self, gov: GovernanceStore):
        self.gov = gov

    def append(self, kind: str, reason: str, *, subject: str = "", evidence: str = "",
               details: dict | None = None, by: str | None = None,
               once_key: str = "") -> dict | None:
        """Adds a record. With ``once_key``, a record with the same key is written only once
        (a govern run that catches up after a failure does not repeat what was recorded).

        Returns:
            The record, or None when ``once_key`` was already recorded.
        """
        if kind not in KINDS:
            raise ValueError(f"Unknown audit kind {kind!r}; expect one of {', '.join(KINDS)}.")
        if once_key and any(r.get("once_key") == once_key for r in self.records()):
            return None
        record = {"kind": kind, "at": now_iso(), "actor": by or actor(), "subject": subject,
                  "reason": reason, "evidence": evidence, "details": details or {},
                  "model": self.gov.model}
        if once_key:
            record["once_key"] = once_key
        record = self.gov.append(AUDIT, record)
        logger.info("Audit %s #%d: %s", kind, record["seq"], reason)
        return record

    def records(self) -> list[dict]:
        return self.gov.records(AUDIT)
