"""Create-only, sequence-numbered records under ``governance/<model>/`` in the monitoring store.

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
"""

from __future__ import annotations

import datetime as _dt
import json
import re

from components.common.registry import _actor as _registry_actor
from components.common.storage import AlreadyExistsError, ObjectStore, open_store

_SEQ = re.compile(r"^(\d{8})\.json$")


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> _dt.datetime:
    """An ISO time as an aware datetime (naive times are taken as UTC)."""
    t = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


actor = _registry_actor  # who acts: MLOPS_ACTOR, the KFP run, else the user


class GovernanceStore:
    """The ``governance/<model>/`` folder of a monitoring store."""

    def __init__(self, store_uri: str | ObjectStore, model: str):
        root = store_uri if isinstance(store_uri, ObjectStore) else open_store(store_uri)
        self.root = root
        self.model = model
        self.store = root.child(f"governance/{model}")

    def uri_of(self, key: str) -> str:
        return self.store.uri_of(key)

    def append(self, folder: str, record: dict) -> dict:
        """Adds ``record`` as the next numbered record of ``folder``; never overwrites one.
        Returns the record with its ``seq``."""
        n = self.last_seq(folder) + 1
        while True:
            body = {**record, "seq": n}
            try:
                self.store.put(f"{folder}/{n:08d}.json",
                               json.dumps(body, sort_keys=True, default=str).encode(),
                               if_absent=True)
                return body
            except AlreadyExistsError:
                n += 1  # a concurrent writer took it

    def last_seq(self, folder: str) -> int:
        seqs = [int(m.group(1)) for o in self.store.list(folder)
                if (m := _SEQ.match(o.key.rsplit("/", 1)[-1])) and o.key.count("/") == 1]
        return max(seqs, default=0)

    def records(self, folder: str) -> list[dict]:
        """Every numbered record of ``folder``, oldest first."""
        keys = sorted(o.key for o in self.store.list(folder)
                      if o.key.count("/") == 1 and _SEQ.match(o.key.rsplit("/", 1)[-1]))
        return [self.store.get_json(k) for k in keys]

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
