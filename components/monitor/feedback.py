"""Ground truth that arrives late: labels joined to captured requests by request id.

A person reviewing camera frames (or a labelling tool) says what a captured instance really
showed. Each label is stored as its own create-only object in the monitoring store::

    capture/labels/model=<model>/<request_id>/<index>/<seq:08d>.json
        {"request_id", "index", "label", "by", "at", "source", "note", "seq", "previous"}

The highest sequence number is the current label. A label is validated against the model's
classes before anything is written. Saying the same label again changes nothing; a different
label for an instance that already has one is refused unless the caller asks to relabel, and
then the new label gets the next number, so the history keeps who said what, when.

Three ways in, all through :class:`LabelStore`:

* ``mlops monitor label REQUEST_ID LABEL [--index N]`` and ``mlops monitor label --csv FILE``
  (columns ``request_id,label`` and optionally ``index``, ``by``, ``note``): every row is
  checked (ids, classes, conflicts with stored labels or with other rows) before any is
  written, so a file with one mistake writes nothing and names the line to fix;
* an HTTP endpoint for labelling tools (``mlops monitor feedback-server``, 127.0.0.1 unless
  told otherwise, optional bearer token from ``MLOPS_FEEDBACK_TOKEN``);
* a file drop in the store: CSV files put under ``capture/inbox/model=<model>/`` are applied
  by ``mlops monitor label --inbox`` (and by the feedback server every ``--inbox-seconds``)
  and moved to ``…/done/`` or, with an ``.errors.json`` beside them, to ``…/rejected/``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import dataclass

from components.common.errors import UserError
from components.common.records import RecordLog, actor
from components.common.registry import ModelRegistry, RegistryError
from components.common.service import json_app, read_json
from components.common.storage import ObjectStore, open_store
from components.ingest.core import IngestConfig
from components.monitor.contract import utcnow
from components.monitor.window import read_capture

logger = logging.getLogger(__name__)

LABELS_PREFIX = "capture/labels"
INBOX_PREFIX = "capture/inbox"
MAX_ROWS = 100_000
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@+=-]{1,200}$")


class LabelError(UserError, ValueError):
    """A label that cannot be stored; the message says what to fix."""


class LabelConflict(LabelError):
    """The instance already has a different label and relabelling was not asked for (HTTP
    409 at the feedback endpoint)."""

    http_status = 409


@dataclass(frozen=True)
class LabelRequest:
    """One label to store (a CLI argument, a CSV row or an HTTP request item)."""

    request_id: str
    label: str
    index: int = 0
    by: str = ""
    note: str = ""
    where: str = ""  # "line 3" of a file, for messages


def model_classes(registry_uri: str, model: str) -> list[str]:
    """The classes of the model in production (else its latest version), from the registry."""
    registry = ModelRegistry(registry_uri)
    try:
        version = registry.resolve(model, "@production")
    except RegistryError:
        version = registry.resolve(model, "latest")  # raises with a clear message if none
    meta = json.loads(registry.read_file(model, version, "metadata.json"))
    return list(meta["classes"])


class LabelStore:
    """Labels of one model in a monitoring store.

    Args:
        store: The monitoring store (URI or open store), as the predictor's capture uses.
        model: The served model's name.
        classes: The model's classes; labels outside them are refused.
    """

    def __init__(self, store: str | ObjectStore, model: str, classes: list[str]):
        self.store = open_store(store) if isinstance(store, str) else store
        self.model = model
        if not classes:
            raise LabelError("No classes to validate labels against: pass the model's classes.")
        self.classes = list(classes)

    # ---- validation ----------------------------------------------------------------------

    def check(self, req: LabelRequest) -> LabelRequest:
        """Returns the request with its fields normalised, or raises :class:`LabelError`."""
        where = f"{req.where}: " if req.where else ""
        rid = str(req.request_id).strip()
        if not REQUEST_ID.match(rid) or rid in (".", ".."):
            raise LabelError(f"{where}invalid request id {req.request_id!r}: expect the "
                             "request_id the predictor answered (V1: request_id, V2: "
                             "parameters.request_id), 1-200 letters, digits or . _ : @ + = -")
        label = str(req.label).strip()
        if label not in self.classes:  # the names ingestion accepts: Cat, dog, DOGS …
            label = IngestConfig(classes=tuple(self.classes)).canonical_label(label) or label
        if label not in self.classes:
            raise LabelError(f"{where}unknown label {req.label!r} for request {rid}: expect "
                             f"one of the model's classes {self.classes}.")
        try:
            index = int(req.index)
        except (TypeError, ValueError) as exc:
            raise LabelError(f"{where}invalid index {req.index!r} for request {rid}: expect "
                             "the instance's position in the request (0, 1, …).") from exc
        if index < 0:
            raise LabelError(f"{where}invalid index {index} for request {rid}: expect >= 0.")
        return LabelRequest(rid, label, index, str(req.by or "").strip(),
                            str(req.note or "").strip(), req.where)

    # ---- reading ---------------------------------------------------------------------------

    def _log(self, request_id: str, index: int) -> RecordLog:
        return RecordLog(self.store, f"{LABELS_PREFIX}/model={self.model}/{request_id}/{index}")

    def history(self, request_id: str, index: int = 0) -> list[dict]:
        """Every label of one instance, oldest first (the last is the current one)."""
        return self._log(request_id, index).records()

    def current(self, request_id: str, index: int = 0) -> dict | None:
        history = self.history(request_id, index)
        return history[-1] if history else None

    def request_labels(self, request_id: str) -> dict[int, list[dict]]:
        """Every labelled instance of a request: index -> history."""
        prefix = f"{LABELS_PREFIX}/model={self.model}/{request_id}"
        indexes = sorted({int(o.key.split("/")[4]) for o in self.store.list(prefix)
                          if o.key.split("/")[4].isdigit()})
        return {i: self.history(request_id, i) for i in indexes}

    # ---- writing ---------------------------------------------------------------------------

    def add(self, req: LabelRequest, *, relabel: bool = False, source: str = "cli") -> dict:
        """Stores one label.

        Returns:
            ``{"status": "created" | "unchanged" | "relabelled", "record": …}``.

        Raises:
            LabelError: Invalid id, index or class.
            LabelConflict: A different label is stored and ``relabel`` is False.
        """
        req = self.check(req)
        log = self._log(req.request_id, req.index)
        for _ in range(100):
            numbers = log.numbers()
            history = [log.read(n) for n in numbers]
            current = history[-1] if history else None
            if current is not None and current.get("label") == req.label:
                return {"status": "unchanged", "record": current}
            if current is not None and not relabel:
                raise LabelConflict(
                    f"{req.where + ': ' if req.where else ''}request {req.request_id} instance "
                    f"{req.index} is already labelled {current.get('label')!r} (by "
                    f"{current.get('by')}, {current.get('at')}); refusing to replace it with "
                    f"{req.label!r}. Relabel explicitly (--relabel) to record the correction; "
                    "the history keeps both.")
            seq = (numbers[-1] if numbers else 0) + 1
            record = {"request_id": req.request_id, "index": req.index, "label": req.label,
                      "by": req.by or actor(), "at": utcnow(), "source": source,
                      "note": req.note, "seq": seq,
                      "previous": current.get("label") if current else None}
            if not log.create(seq, record):
                continue  # someone labelled it at the same moment: look again
            logger.info("Label %s/%d = %s by %s (%s)", req.request_id, req.index, req.label,
                        record["by"], source)
            return {"status": "relabelled" if current else "created", "record": record}
        raise LabelError(f"Could not store the label of {req.request_id}/{req.index}: the "
                         "instance kept changing under concurrent writers.")

    def add_many(self, reqs: list[LabelRequest], *, relabel: bool = False,
                 source: str = "csv") -> list[dict]:
        """Validates every label, then stores them; nothing is written if any is invalid.

        Checks, before writing: each row's id, index and class; two rows for one instance with
        different labels; and (unless ``relabel``) rows that would replace a stored label.

        Raises:
            LabelError: Listing every problem found (at most 20 shown).
        """
        if len(reqs) > MAX_ROWS:
            raise LabelError(f"{len(reqs)} labels in one go; the limit is {MAX_ROWS}: split "
                             "the file.")
        problems, checked, seen, conflicts = [], [], {}, 0
        for req in reqs:
            try:
                ok = self.check(req)
            except LabelError as exc:
                problems.append(str(exc))
                continue
            ident = (ok.request_id, ok.index)
            if ident in seen and seen[ident].label != ok.label:
                problems.append(f"{ok.where}: request {ok.request_id} instance {ok.index} is "
                                f"labelled {ok.label!r} here and {seen[ident].label!r} at "
                                f"{seen[ident].where}; keep one.")
                continue
            if ident not in seen:
                seen[ident] = ok
                checked.append(ok)
        if not relabel and not problems:
            for ok in checked:
                current = self.current(ok.request_id, ok.index)
                if current is not None and current.get("label") != ok.label:
                    conflicts += 1
                    problems.append(f"{ok.where}: request {ok.request_id} instance {ok.index} "
                                    f"is already labelled {current.get('label')!r} (by "
                                    f"{current.get('by')}); this row says {ok.label!r}. Remove "
                                    "the row or relabel explicitly (--relabel).")
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
            kind = LabelConflict if conflicts == len(problems) else LabelError
            raise kind(f"{len(problems)} of {len(reqs)} labels refused; nothing was "
                       f"written:\n  {shown}{more}")
        return [self.add(ok, relabel=relabel, source=source) for ok in checked]


def uncaptured(labels: LabelStore, reqs: list[LabelRequest]) -> list[LabelRequest]:
    """The labels whose request id the model's capture does not hold (a typo, another model's
    request, or a capture not flushed yet): one pass over the capture batches."""
    return capture_coverage(labels, reqs)[0]


def capture_coverage(labels: LabelStore, reqs: list[LabelRequest]
                     ) -> tuple[list[LabelRequest], list[LabelRequest]]:
    """(the labels whose request the capture does not hold, the labels whose captured
    instance has no stored image): one pass over the capture batches. A label of the second
    kind measures accuracy but cannot be retrained on (the capture keeps a sample of the
    images, ``MLOPS_CAPTURE_IMAGE_RATE``)."""
    wanted = {str(r.request_id).strip() for r in reqs}
    instances = {(str(r.request_id).strip(), int(r.index or 0)) for r in reqs}
    seen: set[str] = set()
    found: set[tuple[str, int]] = set()
    imaged: set[tuple[str, int]] = set()
    for _, rec in read_capture(labels.store, labels.model, None, lambda *a: None):
        rid = rec.get("request_id")
        if rid in wanted:
            seen.add(rid)
            instance = (rid, int(rec.get("index", 0)))
            found.add(instance)
            if rec.get("image_sha256"):
                imaged.add(instance)
            if found >= instances:
                break
    missing = [r for r in reqs if str(r.request_id).strip() not in seen]
    no_image = [r for r in reqs if str(r.request_id).strip() in seen
                and (str(r.request_id).strip(), int(r.index or 0)) not in imaged]
    return missing, no_image


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


def parse_csv(text: str, default_by: str = "", name: str = "the CSV") -> list[LabelRequest]:
    """Reads ``request_id,label[,index][,by][,note]`` rows (a header row names the columns;
    without one, the columns are taken in that order)."""
    reader = csv.reader(io.StringIO(text))
    try:
        rows = list(reader)
    except csv.Error as exc:  # a cell over the csv module's field limit, a stray NUL …
        raise LabelError(f"{name} line {reader.line_num}: {exc} (a cell holds at most "
                         f"{csv.field_size_limit():,} characters; a request id at most 200, "
                         "a label a class name): fix that row.") from exc
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise LabelError(f"{name} has no rows: expect request_id,label[,index] lines.")
    columns = ["request_id", "label", "index", "by", "note"]
    first = [c.strip().lower() for c in rows[0]]
    start = 0
    if "request_id" in first:
        unknown = set(first) - set(columns)
        if unknown or "label" not in first:
            raise LabelError(f"{name}: header {rows[0]} must name request_id and label "
                             f"(optionally index, by, note); unknown: {sorted(unknown)}.")
        columns, start = first, 1
    out = []
    for n, row in enumerate(rows[start:], start + 1):
        if len(row) > len(columns):
            raise LabelError(f"{name} line {n}: {len(row)} columns, expected at most "
                             f"{len(columns)} ({', '.join(columns)}).")
        if len(row) < 2:
            raise LabelError(f"{name} line {n}: expected at least request_id,label.")
        values = dict(zip(columns, (c.strip() for c in row), strict=False))
        out.append(LabelRequest(values.get("request_id", ""), values.get("label", ""),
                                values.get("index") or 0, values.get("by") or default_by,
                                values.get("note", ""), f"line {n}"))
    return out


# ---------------------------------------------------------------------------------------------
# File drop
# ---------------------------------------------------------------------------------------------


def inbox_prefix(model: str) -> str:
    return f"{INBOX_PREFIX}/model={model}"


def process_inbox(labels: LabelStore, *, relabel: bool = False) -> dict:
    """Applies every CSV dropped under ``capture/inbox/model=<model>/``.

    A file is applied whole or not at all (see :meth:`LabelStore.add_many`), then moved to
    ``done/`` (with a ``.result.json``) or ``rejected/`` (with a ``.errors.json`` that says
    what to fix). Returns counts per outcome.
    """
    prefix = inbox_prefix(labels.model)
    summary = {"files": 0, "applied": 0, "rejected": 0, "labels": 0}
    for obj in list(labels.store.list(prefix)):
        rel = obj.key[len(prefix) + 1:]
        if "/" in rel or not rel.lower().endswith(".csv"):
            continue  # done/, rejected/ and anything that is not a CSV
        summary["files"] += 1
        data = labels.store.get(obj.key)
        try:
            reqs = parse_csv(data.decode("utf-8-sig"), default_by=f"file-drop:{rel}",
                             name=rel)
            results = labels.add_many(reqs, relabel=relabel, source="file-drop")
        except (LabelError, UnicodeDecodeError) as exc:
            labels.store.put(f"{prefix}/rejected/{rel}", data)
            labels.store.put_json(f"{prefix}/rejected/{rel}.errors.json",
                                  {"file": rel, "at": utcnow(), "error": str(exc)})
            labels.store.delete(obj.key)
            summary["rejected"] += 1
            logger.warning("Rejected dropped label file %s: %s", rel, exc)
            continue
        counts = {s: sum(r["status"] == s for r in results)
                  for s in ("created", "unchanged", "relabelled")}
        labels.store.put(f"{prefix}/done/{rel}", data)
        labels.store.put_json(f"{prefix}/done/{rel}.result.json",
                              {"file": rel, "at": utcnow(), **counts})
        labels.store.delete(obj.key)
        summary["applied"] += 1
        summary["labels"] += len(results)
    return summary


# ---------------------------------------------------------------------------------------------
# HTTP endpoint
# ---------------------------------------------------------------------------------------------


def make_app(labels: LabelStore, token: str = "", max_body_bytes: int = 1024 * 1024):
    """An aiohttp application for labelling tools.

    ``POST /v1/labels`` with ``{"request_id", "label", "index"?, "by"?, "note"?,
    "relabel"?}`` or ``{"labels": [...], "relabel"?}`` → 201 (stored), 200 (the same label
    was already stored), 400 (invalid: nothing stored), 409 (a different label is stored:
    send ``"relabel": true`` to correct it), 401 (token required), 413 (body over
    ``max_body_bytes``).
    ``GET /v1/labels/{request_id}`` → every labelled instance of the request, with history.
    ``GET /healthz`` → ``{"status": "ok", "model", "classes"}`` (no token needed).
    The app is the kernel's :func:`components.common.service.json_app`.
    """
    import asyncio

    from aiohttp import web

    async def post_labels(request):
        body = await read_json(request)
        if not isinstance(body, dict):
            return web.json_response({"error": 'expect a JSON object: {"request_id", '
                                               '"label", "index"} or {"labels": [...]}'},
                                     status=400)
        items = body.get("labels", [body]) if "labels" in body else [body]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return web.json_response({"error": '"labels" must be a list of objects'},
                                     status=400)
        peer = request.remote or "unknown"
        reqs = [LabelRequest(i.get("request_id", ""), i.get("label", ""), i.get("index", 0),
                             i.get("by") or request.headers.get("X-User", "") or f"http:{peer}",
                             i.get("note", ""), f"item {n}")
                for n, i in enumerate(items)]
        relabel = bool(body.get("relabel", False))
        try:
            results = await asyncio.to_thread(labels.add_many, reqs, relabel=relabel,
                                              source="http")
        except LabelError as exc:  # 400, or 409 for a conflicting label
            return web.json_response({"error": str(exc)}, status=exc.http_status)
        created = any(r["status"] in ("created", "relabelled") for r in results)
        return web.json_response({"results": results}, status=201 if created else 200)

    async def get_labels(request):
        rid = request.match_info["request_id"]
        if not REQUEST_ID.match(rid):
            return web.json_response({"error": f"invalid request id {rid!r}"}, status=400)
        found = await asyncio.to_thread(labels.request_labels, rid)
        if not found:
            return web.json_response({"error": f"no label for request {rid}"}, status=404)
        return web.json_response({"request_id": rid,
                                  "instances": {str(k): v for k, v in found.items()}})

    app = json_app(health=lambda: {"model": labels.model, "classes": labels.classes},
                   max_body_bytes=max_body_bytes, token=token)
    app.router.add_post("/v1/labels", post_labels)
    app.router.add_get("/v1/labels/{request_id}", get_labels)
    return app


def serve(labels: LabelStore, host: str = "127.0.0.1", port: int = 8095, token: str = "",
          inbox_seconds: float = 0.0) -> None:
    """Runs the feedback endpoint until interrupted; applies the file drop every
    ``inbox_seconds`` (0: never)."""
    import asyncio

    from aiohttp import web

    app = make_app(labels, token)

    async def poll_inbox(app):
        async def loop():
            while True:
                try:
                    summary = await asyncio.to_thread(process_inbox, labels)
                    if summary["files"]:
                        logger.info("Label file drop: %s", summary)
                except Exception as exc:  # noqa: BLE001 - a store outage must not end the server
                    logger.warning("Could not process the label file drop: %s", exc)
                await asyncio.sleep(inbox_seconds)

        task = asyncio.create_task(loop())
        yield
        task.cancel()

    if inbox_seconds > 0:
        app.cleanup_ctx.append(poll_inbox)
    web.run_app(app, host=host, port=port, print=None, handle_signals=True)
