"""A model registry on the storage layer: versions, aliases with history, lineage, approvals,
release decisions and release holds.

Layout under the registry root (any store URI)::

    <model>/claims/<n>                  create-only claim of version number n
    <model>/versions/<n>/               the package, published atomically with checksums
        lineage.json                    data, code, run, parameters, metrics, parent
        …files of the package…
    <model>/aliases/<alias>/<seq>.json  every move of an alias, create-only; the highest
                                        sequence number is where the alias points now
    <model>/approvals/<n>.json          a person's approval of version n, create-only
    <model>/releases/<seq>.json         every release decision with its measurements
    <model>/apptests/<n>/<seq>.json     the application tests of version n
    <model>/holds/<seq>.json            release holds placed and lifted

Claims, alias moves, release decisions, application tests and holds are numbered record logs
(``components/common/records.py``).

Version numbers are claimed with a create-only write (``If-None-Match: *`` on S3, ``link()``
on a directory), so two concurrent registrations always get two different numbers and neither
is lost. Every claim and record carries a random ``nonce``: a create-only write that finds
exactly its own bytes is the retry of a write whose reply was lost (see ``storage``), and the
nonce makes sure that can never be somebody else's record. An alias event is written at the
sequence number right after the event it names as ``previous``; if another move took that
number first, the event is rebuilt on top of that move, so the history is a chain in which
``previous`` is always what the alias pointed to immediately before. A version whose publish
failed leaves a claimed number unused; numbers are never reused. Versions are immutable, and
every download is checked against the recorded sha256.

A release hold stops releases of a model after a collapse until a person says so:
``{"action": "hold"}`` places it, ``{"action": "lift"}`` lifts it (``mlops govern hold``).
The release step (``components/deploy/release.py``) calls :meth:`ModelRegistry.check_release`
before it deploys anything: while a hold is in force, a version is released only if a person
approved it *after* the hold was placed (``mlops registry approve MODEL VERSION``) or lifted the
hold (``mlops govern hold lift MODEL``); otherwise the release stops with :class:`ReleaseHeld`,
whose message says so, and production is untouched.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.common.errors import MlopsError, UserError
from components.common.records import RecordLog, now_iso, parse_time
from components.common.records import actor as _actor  # `actor` names an argument here
from components.common.storage import (
    AlreadyExistsError,
    ObjectStore,
    check_key,
    open_store,
)

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LINEAGE_FILE = "lineage.json"


class RegistryError(UserError, ValueError):
    """A registry request that cannot be served; the message says what to do."""


class ReleaseHeld(MlopsError, RuntimeError):
    """A release refused because of a governance hold; the message says how to proceed."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    uri: str
    lineage: dict
    files: dict  # name -> {"size", "sha256"}


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise RegistryError(f"Invalid {kind}: {value!r}. Expect lowercase letters, digits and "
                            "'-', at most 63 characters (a Kubernetes-style name).")
    return value


class ModelRegistry:
    """Models and their versions under one store URI."""

    def __init__(self, root_uri: str):
        self.store: ObjectStore = open_store(root_uri)
        self.uri = self.store.uri

    def _log(self, folder: str) -> RecordLog:
        return RecordLog(self.store, folder)

    def _append(self, folder: str, event: dict) -> int:
        """Adds ``event`` (with a nonce) as the next numbered record of ``folder``."""
        return self._log(folder).append({**event, "nonce": uuid.uuid4().hex})["seq"]

    # -- versions -----------------------------------------------------------------------

    def register(self, model: str, files: Mapping[str, bytes], lineage: dict) -> ModelVersion:
        """Publishes a new immutable version of ``model``.

        Args:
            model: Model name (Kubernetes-style).
            files: The package: file name -> bytes.
            lineage: Where the model comes from (dataset version, code version, run,
                parameters, metrics, parent version). Stored as ``lineage.json``.

        Returns:
            The new version.
        """
        _check_name("model name", model)
        if not files:
            raise RegistryError("Nothing to register: the package has no files.")
        if LINEAGE_FILE in files:
            raise RegistryError(f"{LINEAGE_FILE!r} is written by the registry; pass lineage=.")
        claims = RecordLog(self.store, f"{model}/claims", bare_names=True)
        version = claims.append({"claimed_at": now_iso(), "by": _actor(),
                                 "nonce": uuid.uuid4().hex})["seq"]
        record = {**lineage, "model": model, "version": version, "registered_at": now_iso(),
                  "registered_by": _actor()}
        payload = dict(files)
        payload[LINEAGE_FILE] = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
        marker = self.store.publish(f"{model}/versions/{version}", payload)
        logger.info("Registered %s version %d at %s", model, version, self.version_uri(model,
                                                                                        version))
        return ModelVersion(model, version, self.version_uri(model, version), record,
                            marker["files"])

    def version_uri(self, model: str, version: int) -> str:
        return self.store.uri_of(f"{model}/versions/{version}")

    def models(self) -> list[str]:
        return sorted({o.key.split("/")[0] for o in self.store.list()
                       if o.key.count("/") >= 2 and o.key.split("/")[1] == "versions"})

    def versions(self, model: str) -> list[int]:
        """Completely published versions, oldest first."""
        _check_name("model name", model)
        return sorted(int(o.key.split("/")[2]) for o in self.store.list(f"{model}/versions")
                      if o.key.endswith("/_PUBLISHED"))

    def resolve(self, model: str, ref: str | int | None = None) -> int:
        """A version number from ``N``, ``latest`` (or None), or an alias (``@production``)."""
        versions = self.versions(model)
        if not versions:
            raise RegistryError(f"Model {model!r} has no version in {self.uri}. Register one "
                                "first (the training pipeline does).")
        if ref is None or ref == "latest":
            return versions[-1]
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            n = int(ref)
            if n not in versions:
                raise RegistryError(f"Model {model!r} has no version {n}. Versions: {versions}.")
            return n
        alias = ref[1:] if ref.startswith("@") else ref
        version = self.alias(model, alias)["version"]
        if version not in versions:
            raise RegistryError(
                f"{model}@{alias} points at version {version}, which was deleted from "
                f"{self.uri} (versions now: {versions}). Point it at one: `mlops registry "
                f"alias {model} {alias} {versions[-1]}`.")
        return version

    def get(self, model: str, ref: str | int | None = None) -> ModelVersion:
        version = self.resolve(model, ref)
        prefix = f"{model}/versions/{version}"
        marker = self.store.get_json(f"{prefix}/_PUBLISHED")
        lineage = json.loads(self.store.read_published(prefix, LINEAGE_FILE))
        return ModelVersion(model, version, self.version_uri(model, version), lineage,
                            marker["files"])

    def read_file(self, model: str, version: int, name: str) -> bytes:
        """One file of a version, verified against its recorded sha256."""
        return self.store.read_published(f"{model}/versions/{version}", check_key(name))

    def download(self, model: str, ref: str | int | None, dest: str | os.PathLike) -> Path:
        """Copies a version's files into ``dest``, verifying every checksum first."""
        mv = self.get(model, ref)
        out = Path(dest)
        data = {name: self.read_file(model, mv.version, name) for name in mv.files}
        for name, content in data.items():
            path = out.joinpath(*name.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return out

    # -- aliases ------------------------------------------------------------------------

    def set_alias(self, model: str, alias: str, version: int, *, reason: str = "",
                  actor: str | None = None) -> dict:
        """Points ``alias`` at ``version``; the move is appended to the alias's history."""
        _check_name("alias", alias)
        if version not in self.versions(model):
            raise RegistryError(f"Model {model!r} has no version {version} to point "
                                f"{alias!r} at. Versions: {self.versions(model)}.")
        log = self._log(f"{model}/aliases/{alias}")
        event = {"alias": alias, "version": int(version), "at": now_iso(),
                 "by": actor or _actor(), "reason": reason, "nonce": uuid.uuid4().hex}
        # Written right after the move it names as previous: if another move took number n,
        # this one is rebuilt on top of that one.
        record = log.append(lambda n: {**event,
                                       "previous": log.read(n - 1)["version"] if n > 1 else None})
        logger.info("Alias %s@%s -> version %d (%s)", model, alias, version, reason or "no reason")
        return record

    def _alias_events(self, model: str, alias: str) -> list[dict]:
        return self._log(f"{model}/aliases/{alias}").records()

    def aliases(self, model: str) -> dict[str, int]:
        """Every alias of ``model`` and the version it points at now."""
        names = sorted({o.key.split("/")[2] for o in self.store.list(f"{model}/aliases")})
        return {name: self._alias_events(model, name)[-1]["version"] for name in names}

    def alias(self, model: str, alias: str) -> dict:
        """The current event of an alias; a clear error if the alias was never set."""
        _check_name("alias", alias)
        events = self._alias_events(model, alias)
        if not events:
            known = sorted(self.aliases(model))
            if not known:
                raise RegistryError(
                    f"Model {model!r} has no alias {alias!r} (no alias yet). Set one with "
                    f"`mlops registry alias {model} {alias} VERSION`.")
            # A typo: name the aliases there are, never the command that would create it.
            close = difflib.get_close_matches(alias, known, n=1, cutoff=0.5) or [
                k for k in known if k.startswith(alias) or alias.startswith(k)][:1]
            hint = f" Did you mean {model}@{close[0]}?" if close else ""
            raise RegistryError(f"Model {model!r} has no alias {alias!r}; its aliases: "
                                f"{', '.join(known)}.{hint}")
        return events[-1]

    def alias_history(self, model: str, alias: str) -> list[dict]:
        """Every move of an alias, oldest first: version, when, by whom, why."""
        _check_name("alias", alias)
        return self._alias_events(model, alias)

    # -- approvals and release records --------------------------------------------------

    def approve(self, model: str, version: int, *, note: str = "",
                actor: str | None = None) -> dict:
        """Records that a person approved ``version`` for production (kept forever)."""
        if version not in self.versions(model):
            raise RegistryError(f"Model {model!r} has no version {version} to approve. "
                                f"Versions: {self.versions(model)}.")
        record = {"version": int(version), "at": now_iso(), "by": actor or _actor(), "note": note}
        try:
            self.store.put(f"{model}/approvals/{int(version)}.json",
                           json.dumps(record, sort_keys=True).encode(), if_absent=True)
        except AlreadyExistsError:
            existing = self.approval(model, version)
            logger.info("Version %d of %s was already approved by %s", version, model,
                        existing["by"])
            return existing
        logger.info("Version %d of %s approved by %s", version, model, record["by"])
        return record

    def approval(self, model: str, version: int) -> dict | None:
        """The approval of ``version``, or None."""
        key = f"{model}/approvals/{int(version)}.json"
        return self.store.get_json(key) if self.store.exists(key) else None

    def record_release(self, model: str, record: dict) -> int:
        """Appends a release decision (canary steps, measurements, outcome) to the audit log."""
        _check_name("model name", model)
        return self._append(f"{model}/releases", {**record, "at": now_iso()})

    def releases(self, model: str) -> list[dict]:
        """Every recorded release decision, oldest first."""
        return self._log(f"{model}/releases").records()

    def record_apptest(self, model: str, version: int, report: dict) -> int:
        """Keeps an application test's report with ``version`` (for its compliance report)."""
        _check_name("model name", model)
        return self._append(f"{model}/apptests/{int(version)}", report)

    def apptests(self, model: str, version: int) -> list[dict]:
        """The application tests of ``version``, oldest first."""
        return self._log(f"{model}/apptests/{int(version)}").records()

    # -- release holds --------------------------------------------------------------------

    def hold_records(self, model: str) -> list[dict]:
        """Every hold placed and lifted on releases of ``model``, oldest first."""
        return self._log(f"{model}/holds").records()

    def active_hold(self, model: str) -> dict | None:
        """The hold in force, or None."""
        records = self.hold_records(model)
        return records[-1] if records and records[-1]["action"] == "hold" else None

    def place_hold(self, model: str, reason: str, evidence: str = "",
                   by: str | None = None) -> tuple[dict, bool]:
        """Places a hold unless one is in force. Returns (the hold in force, placed now)."""
        current = self.active_hold(model)
        if current is not None:
            return current, False
        seq = self._append(f"{model}/holds", {"action": "hold", "at": now_iso(),
                                              "by": by or _actor(), "reason": reason,
                                              "evidence": evidence})
        logger.warning("Releases of %s are held: %s", model, reason)
        placed = next(r for r in self.hold_records(model) if r["seq"] == seq)
        return placed, True

    def lift_hold(self, model: str, note: str, by: str | None = None) -> dict:
        """A person lifts the hold in force."""
        if self.active_hold(model) is None:
            raise ValueError(f"Releases of {model!r} are not held; nothing to lift.")
        if not note:
            raise ValueError("Say why the hold can be lifted (--note).")
        self._append(f"{model}/holds", {"action": "lift", "at": now_iso(),
                                        "by": by or _actor(), "reason": note})
        logger.info("Hold on %s lifted: %s", model, note)
        return self.hold_records(model)[-1]

    def check_release(self, model: str, version: int) -> dict:
        """What the release step needs to know about holds: ``{}`` when none is in force,
        ``{"hold": …, "approval": …}`` when a person approved ``version`` after the hold.

        Raises:
            ReleaseHeld: A hold is in force and nobody approved ``version`` since.
        """
        hold = self.active_hold(model)
        if hold is None:
            return {}
        approval = self.approval(model, version)
        if approval and parse_time(approval["at"]) > parse_time(hold["at"]):
            logger.info("Hold on %s: version %d was approved by %s after it", model, version,
                        approval["by"])
            return {"hold": hold, "approval": approval}
        why = ("its approval predates the hold" if approval else "nobody approved it since")
        raise ReleaseHeld(
            f"Releases of {model!r} are held since {hold['at']} by {hold['by']}: "
            f"{hold['reason']}. Version {version} cannot be released ({why}). A person approves "
            f"it with `mlops registry approve {model} {version}`, or lifts the hold with "
            f"`mlops govern hold lift {model} --note WHY`; then release again.")
