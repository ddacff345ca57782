"""Numbered record logs: append-only folders of create-only JSON records, and who wrote when.

Every numbered log of the project is a :class:`RecordLog`: the registry's version claims,
alias moves, release decisions, holds and application tests, governance alerts, delivery
rounds and audit entries, the labels of a captured instance. A record is one object in the
log's folder, named by its number::

    <folder>/00000001.json    {..., "seq": 1}
    <folder>/00000002.json    {..., "seq": 2}

written with a create-only put (``If-None-Match: *`` on S3, ``link()`` on a directory), so a
record is complete or absent, two writers never overwrite each other, and nothing is rewritten.
A writer that finds its number taken takes the next one. The registry's version claims keep
their historical bare names (``<model>/claims/<n>``, the version number, as ``versions/<n>/``)
so that registries written before still claim numbers exclusively; :func:`record_number`
reads both forms.

A create-only write that finds exactly its own bytes succeeds (the retry of a write whose reply
was lost, see ``storage``): a log whose records could be identical puts a random ``nonce`` in
them (the registry does).
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import re
from collections.abc import Callable

from components.common.errors import MlopsError
from components.common.storage import AlreadyExistsError, ObjectNotFoundError, ObjectStore

#: Numbers a writer tries before it gives up (only a store that refuses every write gets there).
MAX_TRIES = 1000
_NAME = re.compile(r"^(\d+)(?:\.json)?$")


class RecordLogError(MlopsError, RuntimeError):
    """A record could not be appended: every number tried was taken."""


def record_name(n: int) -> str:
    """The object name of record ``n``: ``00000012.json``."""
    return f"{int(n):08d}.json"


def record_number(key: str) -> int | None:
    """The number of a record from its key or name (``…/00000012.json``, or a version claim's
    bare ``…/12``); None for anything else."""
    match = _NAME.match(key.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def now_iso() -> str:
    """The time now as ISO 8601 UTC with milliseconds: when a record was written."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> _dt.datetime:
    """An ISO time as an aware datetime (naive times are taken as UTC)."""
    t = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


def actor() -> str:
    """Who acts: ``MLOPS_ACTOR``, else the KFP run (``kfp-run:<id>``), else the user."""
    for var in ("MLOPS_ACTOR", "KFP_RUN_ID", "USER"):
        if os.environ.get(var):
            return os.environ[var] if var != "KFP_RUN_ID" else f"kfp-run:{os.environ[var]}"
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class RecordLog:
    """The numbered records directly under ``folder`` in ``store``, oldest first.

    Args:
        store: The store that holds the log.
        folder: The log's folder (a key prefix); records in subfolders are not its own.
        bare_names: Name records ``<n>`` instead of ``<n:08d>.json`` (the registry's version
            claims only).
    """

    def __init__(self, store: ObjectStore, folder: str, *, bare_names: bool = False):
        self.store = store
        self.folder = folder.strip("/")
        self.bare_names = bare_names

    def key(self, n: int) -> str:
        """The key of record ``n``."""
        return f"{self.folder}/{int(n) if self.bare_names else record_name(n)}"

    def _keys(self) -> dict[int, str]:
        """number -> key of the records present (a key written before the one format too)."""
        found: dict[int, str] = {}
        for obj in self.store.list(self.folder):
            parent, _, _ = obj.key.rpartition("/")
            if parent == self.folder and (n := record_number(obj.key)) is not None:
                found.setdefault(n, obj.key)
        return found

    def numbers(self) -> list[int]:
        """The numbers of the records present, ascending."""
        return sorted(self._keys())

    def last(self) -> int:
        """The highest record number, 0 when the log is empty."""
        return max(self._keys(), default=0)

    def read(self, n: int) -> dict:
        """Record ``n`` (``ObjectNotFoundError`` if absent)."""
        try:
            return self.store.get_json(self.key(n))
        except ObjectNotFoundError:
            key = self._keys().get(int(n))  # written under an older name
            if key is None:
                raise
            return self.store.get_json(key)

    def records(self) -> list[dict]:
        """Every record, oldest first."""
        keys = self._keys()
        return [self.store.get_json(keys[n]) for n in sorted(keys)]

    def create(self, n: int, record: dict) -> bool:
        """Writes ``record`` as number ``n`` (with ``seq``) unless that number is taken.

        Returns:
            True if written, False if another record holds the number.
        """
        body = json.dumps({**record, "seq": int(n)}, sort_keys=True, default=str).encode()
        try:
            self.store.put(self.key(n), body, if_absent=True)
            return True
        except AlreadyExistsError:
            return False

    def append(self, record: dict | Callable[[int], dict]) -> dict:
        """Adds a record under the next free number; never overwrites one.

        Args:
            record: The record, or a function of the number that builds it (for a record
                that names the one before it: called again with the next number when a
                concurrent writer took this one).

        Returns:
            The record as written, with its ``seq``.

        Raises:
            RecordLogError: :data:`MAX_TRIES` numbers in a row were taken.
        """
        n = self.last() + 1
        for _ in range(MAX_TRIES):
            body = record(n) if callable(record) else record
            if self.create(n, body):
                return {**body, "seq": n}
            n += 1  # a concurrent writer took it
        raise RecordLogError(f"Could not append to {self.store.uri_of(self.folder)}: "
                             f"{MAX_TRIES} numbers in a row were taken by other writers.")
