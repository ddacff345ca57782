"""Fanned-out ingestion: plan key ranges of a lake, ingest each range in its own pod, publish once.

:func:`plan_parts` splits the lake, :func:`ingest_part` ingests one range and writes what it
learned to its own part file, and :func:`~components.ingest.core.ingest` with the plan's id is
the publish step: it reads the part files as if cached and publishes the version a single
ingestion of the lake would publish. :func:`ingest_in_parts` runs all three in one process.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from collections.abc import Callable, Mapping

import pandas as pd

from components.common.storage import (
    ObjectNotFoundError,
    open_store,
)
from components.ingest.core import (
    _PART_COLUMNS,
    _PLAN_ID,
    IngestConfig,
    IngestError,
    IngestResult,
    _cache_frame,
    _cache_key,
    _csv_bytes,
    _decode,
    _json_bytes,
    _load_cache,
    _open_lake,
    _parts_prefix,
    _read_part_file,
    _source_id,
    _triage,
    _verified_objects,
    default_workers,
    ingest,
)

logger = logging.getLogger(__name__)


def _utf8(key: str) -> bool:
    try:
        key.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def plan_parts(source_uri: str, dataset_root_uri: str, parts: int,
               config: IngestConfig = IngestConfig()) -> dict:
    """Splits a lake into ``parts`` contiguous key ranges of about equal bytes, for
    :func:`ingest_part` to ingest each (in its own pod) before one :func:`ingest` publishes.

    The ranges cover the whole key space (the first starts at ``""``, the last has no end),
    so an object added after planning still belongs to exactly one part. The plan id is a
    hash of the lake, the validation settings and the range boundaries: planning an
    unchanged lake again gives the same plan. The plan is also written under the dataset root
    (``cache/parts/<lake>-<settings>/<plan-id>/plan.json``), where the publish step reads
    which parts to expect.

    Args:
        source_uri: The data lake.
        dataset_root_uri: The dataset root the parts and the publish step write to.
        parts: How many parts at most (fewer if the lake has fewer objects).
        config: The settings the parts and the publish step will use.

    Returns:
        ``{"plan_id": …, "parts": [part, …]}``; each part is a JSON-serialisable dict
        (plan id, index, count of parts, start and end key, objects, bytes, and the lake and
        settings it was planned for) to pass to :func:`ingest_part` as it is.
    """
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise IngestError(f"Invalid parts: {parts!r}. Expect a whole number >= 1 (how many "
                          "pods ingest the lake's key ranges).")
    view = _open_lake(source_uri, config)
    root = open_store(dataset_root_uri)
    # Weight: bytes to read (an object refused from the listing is never read).
    items = sorted([(o.key, o.size if o.size <= config.max_bytes else 0) for o in view.listing]
                   + [(r["key"], 0) for r in view.refused])
    before = [0]  # before[j]: the weight of items[:j]
    for _, weight in items:
        before.append(before[-1] + max(1, weight))
    n = min(parts, len(items))
    cuts = [0]
    for i in range(1, n):
        # The first object at or past i/n of the bytes, leaving one object for each later part.
        j = min(max(bisect.bisect_left(before, before[-1] * i / n), cuts[-1] + 1),
                len(items) - (n - i))
        while j < len(items) and not _utf8(items[j][0]):
            j += 1  # a boundary travels as a pipeline parameter: a valid UTF-8 key
        if j >= len(items):
            break
        cuts.append(j)
    starts = ["", *(items[j][0] for j in cuts[1:])]
    source_id, settings_id = _source_id(view.store.uri), config.settings_id()
    plan_id = hashlib.sha256(json.dumps({"source": source_id, "settings": settings_id,
                                         "starts": starts}).encode()).hexdigest()[:16]
    bounds = [*starts[1:], None]
    plan = []
    for index, (start, end) in enumerate(zip(starts, bounds, strict=True)):
        inside = [w for k, w in items if start <= k and (end is None or k < end)]
        plan.append({"plan_id": plan_id, "index": index, "of": len(starts), "start": start,
                     "end": end, "objects": len(inside), "bytes": int(sum(inside)),
                     "source_id": source_id, "settings_id": settings_id})
    prefix = _parts_prefix(_cache_key(view.store.uri, config), plan_id)
    root.put(f"{prefix}/plan.json", _json_bytes({"plan_id": plan_id, "source_uri": view.store.uri,
                                                "parts": plan}))
    logger.info("Planned %d parts of %s (plan %s): %s objects", len(plan), view.store.uri,
                plan_id, ", ".join(str(p["objects"]) for p in plan))
    return {"plan_id": plan_id, "parts": plan}


def read_plan(source_uri: str, dataset_root_uri: str, plan_id: str,
              config: IngestConfig = IngestConfig()) -> dict:
    """A plan :func:`plan_parts` wrote, as it returned it (to run its parts by index).

    Raises:
        IngestError: No such plan for this lake and these validation settings (it was made
            for others, or it was published and removed).
    """
    if not _PLAN_ID.match(str(plan_id)):
        raise IngestError(f"Invalid plan id: {plan_id!r}. Expect the 16 hex digits the plan "
                          "step printed.")
    lake = open_store(source_uri)
    root = open_store(dataset_root_uri)
    key = f"{_parts_prefix(_cache_key(lake.uri, config), plan_id)}/plan.json"
    try:
        plan = json.loads(root.get(key))
    except ObjectNotFoundError:
        raise IngestError(f"No plan {plan_id} for {lake.uri} under {root.uri} with these "
                          "validation settings: plan it again (it was made for another lake "
                          "or settings, or it was already published).") from None
    return {"plan_id": plan["plan_id"], "parts": plan["parts"]}


def _check_part(part: Mapping | str) -> dict:
    """A part as :func:`plan_parts` made it (or as JSON text), or an IngestError naming what
    is wrong."""
    expect = ("Expect one item of plan_parts()'s 'parts' as it is (plan_id, index, of, start, "
              "end, source_id, settings_id).")
    if isinstance(part, str):
        try:
            part = json.loads(part)
        except ValueError as exc:
            raise IngestError(f"Invalid part: {part[:200]!r} is not JSON. {expect}") from exc
    if not isinstance(part, Mapping):
        raise IngestError(f"Invalid part: {part!r}. {expect}")
    missing = [k for k in ("plan_id", "index", "of", "start", "end", "source_id", "settings_id")
               if k not in part]
    if missing:
        raise IngestError(f"Invalid part: missing {missing} in {dict(part)}. {expect}")
    index, of = part["index"], part["of"]
    if not (isinstance(index, int) and isinstance(of, int) and 0 <= index < of):
        raise IngestError(f"Invalid part: index {index!r} of {of!r}. {expect}")
    if not _PLAN_ID.match(str(part["plan_id"])):
        raise IngestError(f"Invalid part: plan_id {part['plan_id']!r} is not a plan id. {expect}")
    if not isinstance(part["start"], str) or not (part["end"] is None
                                                  or isinstance(part["end"], str)):
        raise IngestError(f"Invalid part: start {part['start']!r}, end {part['end']!r}. {expect}")
    return dict(part)


def ingest_part(source_uri: str, dataset_root_uri: str, part: Mapping | str,
                config: IngestConfig = IngestConfig(),
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Ingests one key range of a plan: reads, validates, hashes and stores its objects.

    It publishes nothing. It lists the lake (so it sees its range as it is now), decides each
    object the way :func:`ingest` does (key, size and label first; an unchanged object the
    cache knows is not read), stores valid images in ``objects/``, checks the stored images
    its range needs, and writes what it learned per key and fingerprint to its own part file
    ``cache/parts/<lake>-<settings>/<plan-id>/part-<index>.csv`` in one write. Parts never
    write the same file, so any number run at once; running a part again (a retry) rewrites
    its file with the same facts and, with ``use_cache``, reads nothing its last run read.

    Args:
        source_uri: The data lake, as given to :func:`plan_parts`.
        dataset_root_uri: The dataset root, likewise.
        part: One item of :func:`plan_parts`'s ``parts`` (a dict, or the same as JSON).
        config: The same settings as the plan and the publish step.
        progress: Called with (objects done, objects to check) while reading.

    Returns:
        A summary: plan_id, index, objects (in the range), decoded, cache_hits, stored,
        part_uri.

    Raises:
        IngestError: The part is malformed or was planned for another lake or other
            validation settings; a stored object does not match its content hash.
    """
    spec = _check_part(part)
    view = _open_lake(source_uri, config).within(spec["start"], spec["end"])
    if spec["source_id"] != _source_id(view.store.uri) or \
            spec["settings_id"] != config.settings_id():
        raise IngestError(
            f"Part {spec['index']} of plan {spec['plan_id']} was planned for another lake or "
            f"other validation settings than {view.store.uri} with these (max_pixels, "
            "min_side, draft). Give the plan, every part and the publish step the same "
            "data_uri and settings.")
    root = open_store(dataset_root_uri)
    objects = root.child("objects")
    cache_key = _cache_key(view.store.uri, config)
    part_key = f"{_parts_prefix(cache_key, spec['plan_id'])}/part-{spec['index']:05d}.csv"
    cache, own = {}, None
    if config.use_cache:
        cache = _load_cache(root, cache_key)
        own = _read_part_file(root, part_key)  # an earlier attempt of this part
        if own is not None:
            cache.update(own.records)
    present = {o.key.rsplit("/", 1)[-1]: o.fingerprint for o in objects.list()}
    records, to_read = _triage(view, config, cache, present)
    decoded, stored = _decode(records, to_read, view.store, objects, present, config, progress)
    needed: dict[str, list[str]] = {}
    for rec in records:
        if rec["status"] == "ok":
            needed.setdefault(rec["sha256"], []).append(rec["key"])
    verified = _verified_objects(root, objects, needed, stored, present,
                                 own.verified if own is not None else {},
                                 config.workers or default_workers())
    if records:
        frame = _cache_frame(pd.DataFrame.from_records(records))
        frame["object_fingerprint"] = [verified.get(sha, "") if status == "ok" else ""
                                       for sha, status in zip(frame["sha256"], frame["status"],
                                                              strict=True)]
    else:
        frame = pd.DataFrame(columns=_PART_COLUMNS)
    root.put(part_key, _csv_bytes(frame))
    summary = {"plan_id": spec["plan_id"], "index": spec["index"], "objects": len(records),
               "decoded": decoded, "cache_hits": sum(1 for r in records if r.get("cached")),
               "stored": len(stored), "part_uri": root.uri_of(part_key)}
    logger.info("Part %d/%d of plan %s: %d objects, %d decoded, %d from cache, %d stored",
                spec["index"] + 1, spec["of"], spec["plan_id"], summary["objects"], decoded,
                summary["cache_hits"], len(stored))
    return summary


def ingest_in_parts(source_uri: str, dataset_root_uri: str, parts: int,
                    config: IngestConfig = IngestConfig()) -> IngestResult:
    """Plan, every part one after another, and the publish step, in this process: the
    cluster's fan-out on one machine (same files, same version; no faster than ``workers``)."""
    plan = plan_parts(source_uri, dataset_root_uri, parts, config)
    for part in plan["parts"]:
        ingest_part(source_uri, dataset_root_uri, part, config)
    return ingest(source_uri, dataset_root_uri, config, plan_id=plan["plan_id"])


