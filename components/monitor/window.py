"""One window of captured traffic, read from the monitoring store.

Reads the capture batches of one model between two instants (see the store layout in
:mod:`components.monitor.contract`), joins the labels that arrived later by request id and
instance index, and counts everything it could not use instead of failing: a line that is not
JSON, a batch cut off in the middle of a line, a record of another model or without the
required fields, a file that does not belong in the layout. The monitoring run reports these
counts as data-integrity checks; a damaged store never crashes it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from components.common.images import JUNK_REASONS, input_quality
from components.common.records import record_number
from components.common.storage import ObjectStore, StorageError, open_store
from components.monitor.contract import STAT_FIELDS

logger = logging.getLogger(__name__)

REQUIRED = ("request_id", "index", "time", "model", "model_version", "stats", "embedding",
            "label", "probabilities")
_RECORD_FILE = re.compile(r"^capture/records/model=([^/]+)/date=(\d{4}-\d{2}-\d{2})/[^/]+\.jsonl$")
#: Problems a window counts (the keys of ``Window.problems``).
PROBLEMS = {
    "parse_errors": "lines that are not a JSON object",
    "truncated": "batches cut off inside their last line",
    "missing_fields": "records without a required field, or with a field of the wrong type",
    "foreign": "records of another model, or files that do not belong in the capture layout",
    "unreadable_files": "batches the store could not read",
}


def parse_time(value) -> _dt.datetime:
    """An aware UTC datetime from a datetime, unix seconds or an ISO 8601 string."""
    if isinstance(value, _dt.datetime):
        dt = value
    elif isinstance(value, int | float):
        dt = _dt.datetime.fromtimestamp(float(value), _dt.UTC)
    elif isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        try:
            dt = _dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"Invalid time: {value!r}. Expect ISO 8601, for example "
                             "2026-11-23T18:00:00Z, or unix seconds.") from exc
    else:
        raise ValueError(f"Invalid time: {value!r}. Expect ISO 8601 or unix seconds.")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.UTC)
    return dt.astimezone(_dt.UTC)


def iso(dt: _dt.datetime) -> str:
    # Milliseconds: windows of a busy endpoint start and end within the same second.
    return dt.astimezone(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Window:
    """The usable records of one window, and what could not be used.

    Attributes:
        model: Model name.
        start, end: The window, ``[start, end)`` in UTC.
        records: Usable records of ``model_version`` (or of every version when None), oldest
            first, each with ``true_label`` (the latest label, or None) joined in. Junk
            inputs are not among them.
        junk: Records of junk inputs left out of ``records``, by why they are junk (a key of
            ``components.common.images.JUNK_REASONS``), and ``junk_examples`` of each (request
            id/index): blank frames, uniform noise, images too small to be photos. Drift, class
            shares and performance never see them; integrity counts them.
        problems: Counts by kind (see ``PROBLEMS``), and ``examples`` of each kind.
        other_versions: Records of other versions of the model in the window, by version.
        files: Batches read.
    """

    model: str
    start: _dt.datetime
    end: _dt.datetime
    model_version: str | None
    records: list[dict] = field(default_factory=list)
    problems: dict = field(default_factory=lambda: {k: 0 for k in PROBLEMS})
    examples: dict = field(default_factory=dict)
    other_versions: dict = field(default_factory=dict)
    files: int = 0
    lines: int = 0
    junk: dict = field(default_factory=lambda: {k: 0 for k in JUNK_REASONS})
    junk_examples: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def n_junk(self) -> int:
        """Junk inputs of the window's version, left out of ``records``."""
        return sum(self.junk.values())

    @property
    def n_labelled(self) -> int:
        return sum(1 for r in self.records if r.get("true_label") is not None)

    @property
    def bad_records(self) -> int:
        return sum(self.problems[k] for k in ("parse_errors", "truncated", "missing_fields"))

    def embeddings(self) -> np.ndarray:
        if not self.records:
            return np.zeros((0, 0), np.float32)
        return np.asarray([r["embedding"] for r in self.records], dtype=np.float32)

    def stats(self, names=STAT_FIELDS) -> np.ndarray:
        """``[n, len(names)]`` of the input statistics (NaN where a record lacks one)."""
        out = np.full((len(self.records), len(names)), np.nan, dtype=np.float64)
        for i, r in enumerate(self.records):
            for j, name in enumerate(names):
                v = r["stats"].get(name)
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out[i, j] = float(v)
        return out

    def probabilities(self, classes: list[str]) -> np.ndarray:
        return np.asarray([[float(r["probabilities"].get(c, 0.0)) for c in classes]
                           for r in self.records], dtype=np.float64).reshape(-1, len(classes))

    def predicted(self) -> list[str]:
        return [r["label"] for r in self.records]

    def note(self, kind: str, where: str) -> None:
        if kind in ("files", "lines"):  # read, not a problem
            setattr(self, kind, getattr(self, kind) + 1)
            return
        self.problems[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < 5:
            examples.append(where)


def _valid(rec: dict) -> str | None:
    """None if the record has every required field with a usable type, else what is wrong."""
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"missing {missing}"
    if not isinstance(rec["stats"], dict):
        return "stats is not an object"
    emb = rec["embedding"]
    if not isinstance(emb, list) or not emb or not all(isinstance(v, int | float) for v in emb):
        return "embedding is not a list of numbers"
    if not isinstance(rec["probabilities"], dict) or not rec["probabilities"]:
        return "probabilities is not an object"
    if not isinstance(rec["time"], int | float):
        return "time is not unix seconds"
    if not isinstance(rec["index"], int):
        return "index is not an integer"
    return None


def _dates(start: _dt.datetime, end: _dt.datetime) -> list[str]:
    day, out = start.date(), []
    while day <= end.date():
        out.append(day.isoformat())
        day += _dt.timedelta(days=1)
    return out


def read_labels(store: ObjectStore, model: str, request_ids: set[str] | None = None
                ) -> dict[tuple[str, int], dict]:
    """The current label of each labelled instance: ``(request_id, index) -> label record``.

    Each instance's labels are a record log (:class:`components.common.records.RecordLog`),
    one record per correction; the highest number wins.
    Files that are not JSON objects with a ``label`` are skipped and logged.

    Args:
        store: The monitoring store.
        model: Model name.
        request_ids: Read only the labels of these requests (None: every label).
    """
    prefix = f"capture/labels/model={model}"
    latest: dict[tuple[str, int], tuple[int, str]] = {}
    for obj in store.list(prefix):
        parts = obj.key[len(prefix) + 1:].split("/")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].endswith(".json"):
            continue
        rid, index, seq = parts[0], int(parts[1]), record_number(parts[2])
        if seq is None or (request_ids is not None and rid not in request_ids):
            continue
        if (rid, index) not in latest or seq > latest[(rid, index)][0]:
            latest[(rid, index)] = (seq, obj.key)
    out = {}
    for key, (_, obj_key) in latest.items():
        try:
            rec = json.loads(store.get(obj_key))
        except (StorageError, ValueError) as exc:
            logger.warning("Skipping unreadable label %s: %s", store.uri_of(obj_key), exc)
            continue
        if isinstance(rec, dict) and isinstance(rec.get("label"), str):
            out[key] = rec
        else:
            logger.warning("Skipping label %s: not an object with a 'label'",
                           store.uri_of(obj_key))
    return out


def read_capture(store: ObjectStore, model: str, days: list[str] | None,
                 note: Callable[[str, str], None]) -> Iterator[tuple[str, dict]]:
    """Every JSON object in the capture batches of ``model``: ``(where, record)`` pairs.

    The one reader of ``capture/records/``. What it cannot use it passes to ``note(kind,
    where)``, a kind of ``PROBLEMS`` (foreign files, unreadable batches, lines that are not a
    JSON object, a batch cut off inside its last line); the records themselves are the
    caller's to check.

    Args:
        store: The monitoring store.
        model: Model name.
        days: The date partitions to read (``YYYY-MM-DD``), or None for all.
        note: Called once for each problem, and with ``"files"`` and ``"lines"`` for each
            batch and each non-empty line read.
    """
    root = f"capture/records/model={model}"
    prefixes = [f"{root}/date={day}" for day in days] if days is not None else [root]
    for prefix in prefixes:
        for obj in store.list(prefix):
            m = _RECORD_FILE.match(obj.key)
            if not m or m.group(1) != model:
                note("foreign", obj.key)
                continue
            try:
                data = store.get(obj.key)
            except StorageError as exc:
                logger.warning("Cannot read %s: %s", obj.key, exc)
                note("unreadable_files", obj.key)
                continue
            note("files", obj.key)
            yield from _read_batch(obj.key, data, note)


def _read_batch(key: str, data: bytes, note: Callable[[str, str], None]
                ) -> Iterator[tuple[str, dict]]:
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines = lines[:-1]
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{key}:{n}"
        note("lines", where)
        try:
            rec = json.loads(line)
        except ValueError:
            last = n == len(lines) and not complete
            note("truncated" if last else "parse_errors", where)
            continue
        if not isinstance(rec, dict):
            note("parse_errors", where)
            continue
        yield where, rec


def read_window(monitoring_uri: str, model: str, start, end, model_version: str | None = None,
                *, with_labels: bool = True) -> Window:
    """Reads the captured records of ``model`` in ``[start, end)``.

    Args:
        monitoring_uri: Root of the monitoring store (``capture/…`` lives under it).
        model: Model name.
        start, end: The window (datetime, unix seconds or ISO 8601).
        model_version: Keep only records of this version (others are counted in
            ``other_versions``); None keeps every version.
        with_labels: Join the labels that arrived for the window's requests.
    """
    start, end = parse_time(start), parse_time(end)
    if end <= start:
        raise ValueError(f"Invalid window: end {iso(end)} is not after start {iso(start)}.")
    store = open_store(monitoring_uri)
    win = Window(model, start, end, None if model_version is None else str(model_version))
    t0, t1 = start.timestamp(), end.timestamp()
    for where, rec in read_capture(store, model, _dates(start, end), win.note):
        if rec.get("model") != win.model:
            win.note("foreign", where)
            continue
        problem = _valid(rec)
        if problem:
            win.note("missing_fields", f"{where} ({problem})")
            continue
        if not t0 <= rec["time"] < t1:
            continue
        version = str(rec["model_version"])
        if win.model_version is not None and version != win.model_version:
            win.other_versions[version] = win.other_versions.get(version, 0) + 1
            continue
        quality = rec.get("input_quality")
        if quality is None:  # captured before the predictor judged inputs
            quality = input_quality(rec["stats"])
        if quality in JUNK_REASONS:
            win.junk[quality] += 1
            examples = win.junk_examples.setdefault(quality, [])
            if len(examples) < 5:
                examples.append(f"{rec['request_id']}/{rec['index']}")
            continue
        win.records.append(rec)
    if win.records:  # one model version, one embedding size: anything else is damaged
        dims = Counter(len(r["embedding"]) for r in win.records)
        usual = dims.most_common(1)[0][0]
        if len(dims) > 1:
            keep = []
            for r in win.records:
                if len(r["embedding"]) == usual:
                    keep.append(r)
                else:
                    win.note("missing_fields", f"request {r['request_id']}/{r['index']} "
                             f"(embedding of {len(r['embedding'])} values, expected {usual})")
            win.records = keep
    win.records.sort(key=lambda r: (r["time"], str(r["request_id"]), r["index"]))
    if with_labels and win.records:
        labels = read_labels(store, model, {r["request_id"] for r in win.records})
        for r in win.records:
            lab = labels.get((r["request_id"], r["index"]))
            r["true_label"] = lab["label"] if lab else None
    else:
        for r in win.records:
            r["true_label"] = None
    if win.bad_records or win.problems["foreign"]:
        logger.warning("Window of %s: %d usable records; problems %s", model, len(win),
                       {k: v for k, v in win.problems.items() if v})
    if win.n_junk:
        logger.info("Window of %s: %d junk inputs left out (%s)", model, win.n_junk,
                    {k: v for k, v in win.junk.items() if v})
    return win


def record_role(record: dict, roles: dict[str, str] | None = None) -> str:
    """The role (``stable``, ``canary``; ``""`` when unknown) of the revision that served a
    captured record.

    A record from a Knative revision names it (``knative_revision``): its role is the one
    ``roles`` (revision name -> role, ``KServeTarget.revision_roles``) gives that revision,
    ``""`` for a revision in no role (a rolled-back canary, an older stable one). Any other
    record keeps the role its server recorded (``revision``)."""
    name = record.get("knative_revision") or ""
    if name:
        return (roles or {}).get(name, "")
    return str(record.get("revision") or "")


def role_counts(records, roles: dict[str, str] | None = None) -> dict[str, int]:
    """Requests (distinct request ids) per role among ``records`` (:func:`record_role`;
    ``""``: no known role)."""
    seen: dict[str, set] = {}
    for rec in records:
        seen.setdefault(record_role(rec, roles), set()).add(rec.get("request_id"))
    return {role: len(ids) for role, ids in seen.items()}


def mode_counts(win: Window) -> Counter:
    return Counter(str(r["stats"].get("mode", "?")) for r in win.records)
