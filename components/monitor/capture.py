"""Production data capture: what the predictor saw and answered, written in batches.

The predictor hands each served instance to a :class:`CaptureWriter`. ``submit`` only puts the
record on a bounded in-memory queue and returns at once; a background thread collects records
into batches and writes one JSON Lines object per batch (every ``batch_records`` records or
every ``batch_seconds`` seconds, whichever comes first), partitioned by model and date as
:mod:`components.monitor.contract` lays out. Sampled input images are written once each under
their sha256, so a frame the camera sends a thousand times is stored once.

Capture never delays or fails a prediction. When storage is slow, the queue fills and new
records are dropped and counted; when storage is down, a batch is retried briefly and then
counted as failed. The counts are Prometheus counters on the predictor's ``/metrics``::

    pet_classifier_capture_records_total{model, outcome="written|dropped|failed"}
    pet_classifier_capture_images_total{model, outcome="written|duplicate|dropped|failed"}
    pet_classifier_capture_batches_total{model, outcome="written|failed"}
    pet_classifier_capture_queue_records{model}            (gauge)
    pet_classifier_capture_write_seconds{model}            (histogram of one batch write)

A record's input statistics are :func:`components.common.images.image_stats` of the decoded
image, the same function the monitoring reference and the shards measure with, and its
``input_quality`` the verdict :func:`components.common.images.input_quality` gives on them
(junk inputs are captured, and the monitor counts them apart).
"""

from __future__ import annotations

import atexit
import datetime as _dt
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from components.common import prom
from components.common.paths import mlops_home
from components.common.service import backoff
from components.common.storage import (
    AlreadyExistsError,
    ObjectStore,
    open_store,
)

logger = logging.getLogger(__name__)

RECORDS = Counter(prom.CAPTURE_RECORDS,
                  "Capture records by outcome: written to the store, dropped because the queue "
                  "was full, or lost because the store failed", ["model", "outcome"])
IMAGES = Counter(prom.CAPTURE_IMAGES,
                 "Sampled input images by outcome (duplicate: already in the store)",
                 ["model", "outcome"])
BATCHES = Counter(prom.CAPTURE_BATCHES, "Capture batch writes by outcome",
                  ["model", "outcome"])
QUEUE_DEPTH = Gauge(prom.CAPTURE_QUEUE_RECORDS,
                    "Capture records waiting in the in-memory queue", ["model"])
WRITE_SECONDS = Histogram(prom.CAPTURE_WRITE_SECONDS,
                          "Time to write one capture batch (and its images) to the store",
                          ["model"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                              2.5, 5.0, 10.0, 30.0))

RECORDS_PREFIX = "capture/records"
IMAGES_PREFIX = "capture/images"

# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


def image_key(sha256: str) -> str:
    """Where a sampled image with this sha256 lives in the monitoring store."""
    return f"{IMAGES_PREFIX}/{sha256[:2]}/{sha256}"


def records_prefix(model: str, date: str | None = None) -> str:
    """``capture/records/model=<model>[/date=<YYYY-MM-DD>]``."""
    prefix = f"{RECORDS_PREFIX}/model={model}"
    return f"{prefix}/date={date}" if date else prefix


def _utc(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC)


def default_capture_uri() -> str:
    """The monitoring store when none is named: ``$MLOPS_MONITORING_URI`` or
    ``$MLOPS_CAPTURE_URI``, else ``<mlops home>/monitoring`` (as the monitor reads it)."""
    for var in ("MLOPS_MONITORING_URI", "MLOPS_CAPTURE_URI"):
        if os.environ.get(var):
            return os.environ[var]
    return str(mlops_home() / "monitoring")


# ---------------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureConfig:
    """How much to capture and how to batch it.

    Attributes:
        uri: The monitoring store's root (``s3://bucket/prefix``, ``file:///…`` or a path).
        sample_rate: Share of requests whose instances are captured (0..1). The decision is
            made per request, so a captured request is captured whole.
        image_rate: Share of captured instances whose input image is kept (0..1).
        queue_records: Most records waiting in memory; beyond it new records are dropped.
        queue_bytes: Most image bytes waiting in memory; beyond it images are dropped (their
            records are still captured, without ``image_sha256``).
        batch_records: A batch is written when it has this many records …
        batch_seconds: … or when its oldest record has waited this long.
        retries: Further attempts to write a batch before it counts as failed.
        retry_seconds: Wait before the first retry (doubled for each further one).
    """

    uri: str
    sample_rate: float = 1.0
    image_rate: float = 0.05
    queue_records: int = 10_000
    queue_bytes: int = 64 * 1024 * 1024
    batch_records: int = 500
    batch_seconds: float = 60.0
    retries: int = 2
    retry_seconds: float = 0.5

    def __post_init__(self):
        for name in ("sample_rate", "image_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Invalid capture {name}: {value}. Expect a share between 0 "
                                 "and 1.")
        for name in ("queue_records", "batch_records"):
            if getattr(self, name) < 1:
                raise ValueError(f"Invalid capture {name}: {getattr(self, name)}. Expect >= 1.")
        if self.batch_seconds <= 0:
            raise ValueError(f"Invalid capture batch_seconds: {self.batch_seconds}. Expect > 0.")
        if self.queue_bytes < 0 or self.retries < 0 or self.retry_seconds < 0:
            raise ValueError("Invalid capture queue_bytes, retries or retry_seconds: expect "
                             "values >= 0.")

    @classmethod
    def from_env(cls, env=None, **overrides) -> CaptureConfig | None:
        """The configuration from ``MLOPS_CAPTURE_*`` variables (as an InferenceService sets
        them), or None when ``MLOPS_CAPTURE_URI`` is not set. Keyword arguments win."""
        env = os.environ if env is None else env
        uri = overrides.pop("uri", None) or env.get("MLOPS_CAPTURE_URI", "")
        if not uri:
            return None
        names = {"sample_rate": ("MLOPS_CAPTURE_SAMPLE_RATE", float),
                 "image_rate": ("MLOPS_CAPTURE_IMAGE_RATE", float),
                 "queue_records": ("MLOPS_CAPTURE_QUEUE_RECORDS", int),
                 "batch_records": ("MLOPS_CAPTURE_BATCH_RECORDS", int),
                 "batch_seconds": ("MLOPS_CAPTURE_BATCH_SECONDS", float),
                 "retries": ("MLOPS_CAPTURE_RETRIES", int)}
        values = {}
        for field_name, (var, kind) in names.items():
            if overrides.get(field_name) is not None:
                values[field_name] = overrides.pop(field_name)
            elif env.get(var):
                try:
                    values[field_name] = kind(env[var])
                except ValueError as exc:
                    raise ValueError(f"Invalid {var}: {env[var]!r}. Expect a number.") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(uri=uri, **values)


class CaptureWriter:
    """Writes capture records in batches from a background thread; never blocks the caller.

    Args:
        config: What to capture and how to batch it.
        model: The served model's name (the ``model=`` partition).
        store: An open store to write to (default: ``open_store(config.uri)``).
        instance: Names this process in file names (default ``<host>-<pid>``), so that
            replicas and worker processes never write the same key.

    Use ``should_capture()`` once per request, ``should_keep_image()`` once per captured
    instance, ``submit(record, image)`` per captured instance, and ``close()`` at shutdown
    (registered with ``atexit`` too).
    """

    def __init__(self, config: CaptureConfig, model: str, store: ObjectStore | None = None,
                 instance: str | None = None):
        self.config = config
        self.model = model
        self.store = store if store is not None else open_store(config.uri)
        host = socket.gethostname().replace("/", "_").replace("-", "_") or "host"
        self.instance = instance or f"{host}-{os.getpid()}"
        # A deque, not a queue.Queue: appending never wakes the writer thread. The thread
        # wakes when a batch is full, when the oldest record is due, or on flush/close; waking
        # it for every record would make it contend for the GIL with the server's event loop
        # hundreds of times a second.
        self._buffer: deque = deque()
        self._wake = threading.Event()
        self._flushes: list[threading.Event] = []
        self._stopping = False
        self._pending_bytes = 0
        self._bytes_lock = threading.Lock()
        self._seq = 0
        self._known_images: OrderedDict[str, None] = OrderedDict()  # recently written shas
        self._closed = False
        self._rng = random.Random()
        self._last_error_log = 0.0
        self.counts = {"written": 0, "dropped": 0, "failed": 0, "images_written": 0,
                       "images_duplicate": 0, "images_dropped": 0, "images_failed": 0,
                       "batches": 0}
        self._counter = {o: RECORDS.labels(model, o) for o in ("written", "dropped", "failed")}
        self._images = {o: IMAGES.labels(model, o)
                        for o in ("written", "duplicate", "dropped", "failed")}
        self._batches = {o: BATCHES.labels(model, o) for o in ("written", "failed")}
        self._depth = QUEUE_DEPTH.labels(model)
        self._write_seconds = WRITE_SECONDS.labels(model)
        self._thread = threading.Thread(target=self._run, name=f"capture-{model}", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)
        self._atexit = lambda: (ref() and ref().close(timeout=5.0))
        atexit.register(self._atexit)
        logger.info("Capturing %s to %s (requests %.0f%%, images %.0f%% of those, batches of "
                    "%d records or %.0f s)", model, self.store.uri, 100 * config.sample_rate,
                    100 * config.image_rate, config.batch_records, config.batch_seconds)

    # ---- the request path: cheap, never blocks ---------------------------------------------

    def should_capture(self) -> bool:
        """Draws the per-request sampling decision."""
        rate = self.config.sample_rate
        return not self._closed and (rate >= 1.0 or self._rng.random() < rate)

    def should_keep_image(self) -> bool:
        """Draws the per-instance image sampling decision."""
        rate = self.config.image_rate
        return rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)

    def submit(self, record: dict, image: bytes | None = None) -> bool:
        """Queues one record (and optionally its encoded input image) for writing.

        Returns at once. False when the record was dropped (queue full or writer closed);
        an image that does not fit ``queue_bytes`` is dropped alone.
        """
        if self._closed:
            self._drop()
            return False
        if image is not None:
            with self._bytes_lock:
                if self._pending_bytes + len(image) > self.config.queue_bytes:
                    image = None
                    self._count("images_dropped", self._images["dropped"])
                else:
                    self._pending_bytes += len(image)
        if len(self._buffer) >= self.config.queue_records:
            if image is not None:
                self._release(len(image))
                self._count("images_dropped", self._images["dropped"])
            self._drop()
            return False
        self._buffer.append((time.monotonic(), record, image))
        if len(self._buffer) >= self.config.batch_records:
            self._wake.set()
        return True

    def _drop(self) -> None:
        self._count("dropped", self._counter["dropped"])
        now = time.monotonic()
        if now - self._last_error_log > 60:
            self._last_error_log = now
            logger.warning("Capture queue of %s is full (%d records): dropping records until "
                           "the store keeps up (%d dropped so far)", self.model,
                           self.config.queue_records, self.counts["dropped"])

    def _count(self, key: str, counter, n: int = 1) -> None:
        self.counts[key] += n
        counter.inc(n)

    def _release(self, n: int) -> None:
        with self._bytes_lock:
            self._pending_bytes -= n

    # ---- the background thread -------------------------------------------------------------

    def _run(self) -> None:
        size = self.config.batch_records
        while True:
            if self._buffer:
                due = self._buffer[0][0] + self.config.batch_seconds
                timeout = min(max(0.0, due - time.monotonic()), 1.0)
            else:
                timeout = 1.0
            self._wake.wait(timeout)
            self._wake.clear()
            stopping = self._stopping
            flushes, self._flushes = self._flushes, []
            self._depth.set(len(self._buffer))
            everything = stopping or bool(flushes)
            while self._buffer:
                full = len(self._buffer) >= size
                due = self._buffer[0][0] + self.config.batch_seconds <= time.monotonic()
                if not (full or due or everything):
                    break
                batch = [self._buffer.popleft() for _ in range(min(size, len(self._buffer)))]
                try:
                    self._write_batch([(record, image) for _, record, image in batch])
                except Exception:  # noqa: BLE001 - a dead writer thread would stop capture
                    self._count("failed", self._counter["failed"], len(batch))
                    logger.exception("Capture batch of %d records lost", len(batch))
            self._depth.set(len(self._buffer))
            for done in flushes:
                done.set()
            if stopping and not self._buffer:
                return

    def _write_batch(self, items: list) -> None:
        started = time.perf_counter()
        records = []
        for record, image in items:
            if image is not None:
                sha = self._write_image(image)
                self._release(len(image))
                if sha:
                    record = {**record, "image_sha256": sha}
            records.append(record)
        by_date: dict[str, list[dict]] = {}
        for record in records:
            day = _utc(float(record.get("time") or time.time())).strftime("%Y-%m-%d")
            by_date.setdefault(day, []).append(record)
        for day, group in by_date.items():
            first = min(float(r.get("time") or time.time()) for r in group)
            self._seq += 1
            key = (f"{records_prefix(self.model, day)}/{_utc(first).strftime('%H%M%S')}-"
                   f"{self.instance}-{self._seq:06d}.jsonl")
            lines = []
            for r in group:
                try:
                    lines.append(_dumps(r) + b"\n")
                except (TypeError, ValueError) as exc:  # a record the caller built wrongly
                    self._count("failed", self._counter["failed"])
                    logger.error("Capture record %s/%s is not serialisable (%s); dropped",
                                 r.get("request_id"), r.get("index"), exc)
            if not lines:
                continue
            body = b"".join(lines)
            if self._put(key, body):
                self._count("written", self._counter["written"], len(lines))
                self._count("batches", self._batches["written"])
            else:
                self._count("failed", self._counter["failed"], len(lines))
                self._batches["failed"].inc()
        self._write_seconds.observe(time.perf_counter() - started)

    def _put(self, key: str, body: bytes) -> bool:
        for attempt in range(self.config.retries + 1):
            try:
                self.store.put(key, body, if_absent=True)
                return True
            except AlreadyExistsError:
                logger.error("Capture batch %s already exists; not overwriting it", key)
                return False
            except Exception as exc:  # noqa: BLE001 - counted and logged, see below
                # The store's clients raise OSError, StorageError, minio's S3Error and
                # urllib3's HTTPError (neither an OSError); a capture thread that died on one
                # would silently stop capturing, which is worse than counting the failure.
                last = exc
            if attempt < self.config.retries and not self._closed:
                time.sleep(backoff(attempt + 1, self.config.retry_seconds))
        logger.warning("Could not write capture batch %s to %s: %s", key, self.store.uri, last)
        return False

    def _write_image(self, image: bytes) -> str | None:
        sha = hashlib.sha256(image).hexdigest()
        if sha in self._known_images:
            self._known_images.move_to_end(sha)
            self._count("images_duplicate", self._images["duplicate"])
            return sha
        try:
            self.store.put(image_key(sha), image, if_absent=True)
            self._count("images_written", self._images["written"])
        except AlreadyExistsError:
            self._count("images_duplicate", self._images["duplicate"])
        except Exception as exc:  # noqa: BLE001 - the store's client errors vary; count them
            self._count("images_failed", self._images["failed"])
            logger.warning("Could not write a captured image to %s: %s", self.store.uri, exc)
            return None
        self._known_images[sha] = None
        if len(self._known_images) > 100_000:
            self._known_images.popitem(last=False)
        return sha

    # ---- shutdown ------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Writes everything queued so far, then keeps capturing. True when done in time."""
        if self._closed:
            return not self._thread.is_alive()
        done = threading.Event()
        self._flushes.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Stops accepting records, writes what is queued, and stops the thread.

        Returns True when every queued record was handled within ``timeout`` seconds.
        """
        if not self._closed:
            self._closed = True
            self._stopping = True
            atexit.unregister(self._atexit)
            self._wake.set()
            self._thread.join(timeout)
        alive = self._thread.is_alive()
        if alive:
            logger.warning("Capture of %s did not finish writing within %.0f s; %d records "
                           "are lost", self.model, timeout, len(self._buffer))
        return not alive


def _dumps(record: dict) -> bytes:
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson comes with KServe
        return json.dumps(record, separators=(",", ":"), default=_jsonable).encode()
    return orjson.dumps(record, default=_jsonable, option=orjson.OPT_SERIALIZE_NUMPY)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"Not JSON serialisable in a capture record: {type(value).__name__}")
