"""Create-only records under ``governance/<model>/`` in the monitoring store.

Every governance record (alert, delivery round, audit entry, episode) is one JSON object
written with a create-only put (``If-None-Match: *`` on S3, ``link()`` on a directory), so
a record is either complete or absent, two writers never overwrite each other, and nothing
is ever rewritten. Layout (see ``components/monitor/contract.py``)::

    governance/<model>/alerts/<seq>.json                  one alert (firing or resolved)
    governance/<model>/deliveries/<seq>/<recipient>/<n>.json  delivery round n of alert seq
    governance/<model>/audit/<seq>.json                   one audit entry
    governance/<model>/episodes/<key>.json                a retraining episode's claim
    governance/<model>/episodes/<key>.launch.json         its run (or why none started)
    governance/<model>/episodes/<key>.ended.json          how its run ended (once known)
    governance/<model>/episodes/<key>.closed.json         its end
    governance/<model>/governed/<verdict run_id>.json     a verdict fully governed

Alerts, delivery rounds and audit entries are numbered record logs
(``components/common/records.py``); episodes and ``governed`` markers are keyed.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from components.common.records import RecordLog
from components.common.storage import AlreadyExistsError, ObjectStore, open_store


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
