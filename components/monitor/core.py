"""One monitoring run: judge one window of captured traffic against the production version.

:func:`run_monitoring` reads the window from the monitoring store, the production version's
reference from the registry, and the predictor's telemetry; runs every check; explains the
window (saliency gallery, error analysis by slice); writes the HTML report and Markdown
summary; and appends the verdict to the model's monitoring history, create-only, so two runs
at once write two entries and a reader never sees a torn one. An empty window is a verdict
("no traffic"), not an error.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from components.common.errors import UserError
from components.common.paths import mlops_home
from components.common.registry import ModelRegistry, RegistryError
from components.common.storage import AlreadyExistsError, StorageError, open_store
from components.monitor import checks as C
from components.monitor import explain as E
from components.monitor import reference as ref_mod
from components.monitor import report as R
from components.monitor import telemetry as T
from components.monitor.contract import MIN_CONTEXT_IMAGES, Check, Reference, Verdict
from components.monitor.drift import (
    DriftError,
    check_backend,
    default_backend,
    load_detector,
    saved_settings,
)
from components.monitor.window import Window, iso, parse_time, read_window

logger = logging.getLogger(__name__)

DEFAULT_HOURS = 24.0


class MonitorError(UserError, ValueError):
    """A monitoring request that cannot be served; the message says what to do."""


def default_monitoring_uri() -> str:
    """``$MLOPS_MONITORING_URI`` or ``$MLOPS_CAPTURE_URI``, else ``<mlops home>/monitoring``
    (see :func:`components.common.paths.mlops_home`)."""
    for var in ("MLOPS_MONITORING_URI", "MLOPS_CAPTURE_URI"):
        if os.environ.get(var):
            return os.environ[var]
    return str(mlops_home() / "monitoring")


def history_prefix(model: str) -> str:
    return f"monitoring/{model}/history"


def report_prefix(model: str, run_id: str) -> str:
    return f"monitoring/{model}/reports/{run_id}"


def _stamp(dt: _dt.datetime) -> str:
    return dt.astimezone(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def new_run_id() -> str:
    return f"{_stamp(_dt.datetime.now(_dt.UTC))}-{uuid.uuid4().hex[:8]}"


@dataclass
class RunResult:
    """What a run produced beyond the verdict (for the component and the notebook)."""

    verdict: Verdict
    report_html: str = ""
    summary_md: str = ""
    explanations: dict = field(default_factory=dict)
    telemetry: dict | None = None
    history_key: str = ""


def resolve_version(registry_uri: str, model: str, version: str | int | None) -> int:
    """The version to judge: ``version`` (a number or ``@alias``), else ``@production``."""
    try:
        return ModelRegistry(registry_uri).resolve(model, version if version not in (None, "")
                                                   else "@production")
    except RegistryError as exc:
        raise MonitorError(f"Cannot tell which version of {model!r} to monitor: {exc} "
                           "Release a version to production first, or pass --version.") from exc


def load_reference(registry_uri: str, model: str, version: int, monitoring_uri: str
                   ) -> Reference:
    """The version's monitoring reference (built from its dataset when it has none)."""
    return ref_mod.load_reference(registry_uri, model, version, monitoring_uri)


def _fit_or_load(kind: str, ref: Reference, backend: str, cfg: C.MonitorConfig):
    """The reference's saved detector when it matches the backend and settings, else None."""
    if kind != "mmd" or not ref.detector_uri:
        return None
    path = ref.detector_uri
    if path.startswith("file://"):
        path = path[len("file://"):]
    if "://" in path or not os.path.isdir(path):
        return None
    try:
        # Its settings first: a detector saved for another backend or other settings is not
        # loaded (loading an Alibi Detect one imports and builds Alibi Detect).
        saved = saved_settings(path)
        if (saved.get("backend") != backend or saved.get("p_val") != cfg.p_val
                or saved.get("n_permutations") != cfg.n_permutations):
            return None  # fitted for other settings: fit one for these
        det = load_detector(path)
    except (DriftError, OSError, ValueError, KeyError) as exc:
        logger.warning("Ignoring the saved detector at %s: %s", path, exc)
        return None
    ref_x = getattr(ref, "embeddings", None)
    if ref_x is not None:
        ref_x = np.asarray(ref_x, dtype=np.float32)
        if det.x_ref.shape != ref_x.shape or not np.allclose(det.x_ref, ref_x, atol=1e-6):
            return None  # fitted on other rows (not the sample in the prior's shares)
    logger.info("Using the reference's saved %s detector from %s", backend, path)
    return det


def _telemetry(model, monitoring_uri, start, end, metrics_url, prometheus_url, namespace):
    t0, t1 = start.timestamp(), end.timestamp()
    if prometheus_url:
        return T.query_prometheus(prometheus_url, model, t0, t1, namespace), "prometheus"
    if metrics_url and time.time() - 5 <= t1:
        # The window reaches now: a scrape taken now closes it (and is kept for the next
        # window); nothing served after the window's end can be in it.
        snap = T.scrape_to_store(metrics_url, model, monitoring_uri)
        if snap is not None:
            t1 = max(t1, snap["time"] + 0.001)
        else:
            snaps = T.read_snapshots(monitoring_uri, model, until=t1)
            return T.summarize(snaps, t0, t1), (f"{metrics_url}/metrics did not answer, or "
                                                f"serves no {model}")
    snaps = T.read_snapshots(monitoring_uri, model, until=t1)
    return T.summarize(snaps, t0, t1), "scrapes"


#: The checks that judge one context's part of a window against its reference.
_JUDGED = (("drift.embedding", "drift"), ("drift.statistics", "drift"),
           ("prediction_drift.class_shares", "prediction_drift"),
           ("performance.accuracy", "performance"),
           ("performance.estimated_accuracy", "performance"))


def _judge(win: Window, ref: Reference, cfg: C.MonitorConfig, backend: str) -> list[Check]:
    """The reference checks of one window (or one context's part of it)."""
    out = C.inputs(win, ref, cfg)
    # The drift tests and the class-share baseline compare the window with the reference's
    # images in the training split's class shares (Reference.at_prior): a held-out
    # sample's chance class mix is not the camera's change.
    at_prior = ref.at_prior()
    out += C.embedding_drift(win, at_prior, cfg, backend,
                             _fit_or_load("mmd", at_prior, backend, cfg))
    out += C.statistics_drift(win, at_prior, cfg, backend)
    out += C.prediction_drift(win, at_prior, cfg)
    out += C.performance(win, ref, cfg)
    return out


def record_context(record: dict, contexts) -> str:
    """The declared context a captured record is judged in: the one the predictor recorded
    (``images.request_context``), else the one measured with its statistics; a context the
    configuration does not declare is the default (the first)."""
    ctx = record.get("context") or (record.get("stats") or {}).get("context") or ""
    return ctx if ctx in contexts else contexts[0]


def split_by_context(win: Window, contexts) -> dict[str, Window]:
    """Each declared context's part of a window (contexts with no record left out)."""
    parts: dict[str, list] = {c: [] for c in contexts}
    for r in win.records:
        parts[record_context(r, contexts)].append(r)
    # Junk inputs have no context worth judging; each part says how many the window left out.
    return {c: Window(win.model, win.start, win.end, win.model_version, records=rs,
                      junk=dict(win.junk), junk_examples=dict(win.junk_examples))
            for c, rs in parts.items() if rs}


def run_checks(win: Window, ref: Reference | None, cfg: C.MonitorConfig, backend: str,
               telemetry: dict | None, telemetry_source: str = "") -> list[Check]:
    """Every check of a window, in report order.

    With a reference that records its images' contexts, each context's part of the window
    is judged against the reference's images of that context, and every check of it names
    the context (``Check.context``). A context with fewer than ``min_requests`` requests in
    the window is ``unknown`` (never judged against another context's reference); a context
    of which the reference has fewer than ``contract.MIN_CONTEXT_IMAGES`` images (the model
    was not trained for it) is judged against the reference as a whole, and says so.
    """
    out = C.traffic(win, cfg)
    out += C.integrity(win, None, cfg, telemetry)
    if ref is not None and len(win) and ref.contexts:
        counts = ref.context_counts()
        for ctx, part in split_by_context(win, cfg.contexts).items():
            if len(part) < cfg.min_requests:
                checks = [Check(name, kind, None, None, "unknown",
                                f"{len(part)} {ctx} requests: too few to judge (< "
                                f"{cfg.min_requests}); not judged against another context",
                                "", {"n": len(part), "too_few": True})
                          for name, kind in _JUDGED]
            else:
                own = counts.get(ctx, 0) >= MIN_CONTEXT_IMAGES
                against = ref.part(ctx) if own else ref
                checks = _judge(part, against, cfg, backend)
                for c in checks:
                    c.extra = {**c.extra, "n_context": len(part),
                               "reference_context": ctx if own else "all",
                               "n_reference": len(against.embeddings)}
                    if not own:
                        c.detail += (f" (the reference has {counts.get(ctx, 0)} {ctx} images: "
                                     "judged against the training data as a whole)")
            for c in checks:
                c.context = ctx
            out += checks
    elif ref is not None and len(win):
        out += _judge(win, ref, cfg, backend)
    elif ref is not None:
        for name, kind in _JUDGED[:4]:
            out.append(Check(name, kind, None, None, "unknown", "no traffic in the window"))
    out += C.telemetry_checks(telemetry, cfg, telemetry_source)
    return out


def run_monitoring(model: str, registry_uri: str, monitoring_uri: str | None = None,
                   start=None, end=None, backend: str | None = None, *,
                   version: str | int | None = None, config: C.MonitorConfig | dict | None = None,
                   metrics_url: str = "", prometheus_url: str = "", namespace: str = "",
                   explain: bool = True, gallery_size: int = 4, history_windows: int = 30,
                   reference: Reference | None = None, run_id: str | None = None,
                   write: bool = True, full: bool = False) -> Verdict | RunResult:
    """Judges one window of a model's captured traffic.

    Args:
        model: Registered model name.
        registry_uri: The model registry.
        monitoring_uri: The monitoring store (capture, history, reports); default
            :func:`default_monitoring_uri`.
        start, end: The window (datetime, unix seconds or ISO 8601); default the last
            24 hours up to now.
        backend: Drift backend, ``alibi`` or ``torch``; default ``MLOPS_DRIFT_BACKEND`` or
            ``alibi``.
        version: The version to judge (number or ``@alias``); default ``@production``.
        config: Thresholds (:class:`~components.monitor.checks.MonitorConfig` or a dict).
        metrics_url: The predictor's base URL; its ``/metrics`` is scraped once at the end of
            a window that reaches now, and stored scrapes give the window's telemetry.
        prometheus_url: In a cluster, a Prometheus server to query instead of scrapes.
        namespace: Kubernetes namespace of the predictor pods (Prometheus queries).
        explain: Build the saliency gallery and the error analysis by slice.
        gallery_size: Inputs per gallery group (least confident, misclassified, random).
        history_windows: Past windows in the report's trend plots.
        reference: A reference to use instead of the version's (tests, notebooks).
        run_id: This run's id (default: time and a random suffix).
        write: Append to the history and store the report (False for a dry run).
        full: Return a :class:`RunResult` (verdict, report HTML, summary, explanations)
            instead of the verdict alone.

    Returns:
        The verdict (or a RunResult with ``full=True``).
    """
    cfg = config if isinstance(config, C.MonitorConfig) else C.MonitorConfig.from_dict(config)
    backend = check_backend(backend) if backend else default_backend()
    monitoring_uri = monitoring_uri or default_monitoring_uri()
    end_dt = parse_time(end) if end is not None else _dt.datetime.now(_dt.UTC)
    start_dt = parse_time(start) if start is not None else end_dt - _dt.timedelta(
        hours=DEFAULT_HOURS)
    if end_dt <= start_dt:
        raise MonitorError(f"Invalid window: end {iso(end_dt)} is not after start "
                           f"{iso(start_dt)}.")
    run_id = run_id or new_run_id()
    if reference is not None and version is None:
        number = int(reference.model_version) if str(reference.model_version).isdigit() else None
    else:
        number = resolve_version(registry_uri, model, version)
    model_version = str(number if number is not None else reference.model_version)
    t_start = time.perf_counter()
    win = read_window(monitoring_uri, model, start_dt, end_dt, model_version)
    logger.info("Window %s .. %s of %s version %s: %d records (%d labelled), problems %s",
                iso(start_dt), iso(end_dt), model, model_version, len(win), win.n_labelled,
                {k: v for k, v in win.problems.items() if v})
    ref = reference
    if ref is None and len(win):
        ref = load_reference(registry_uri, model, number, monitoring_uri)
    summary, source = _telemetry(model, monitoring_uri, start_dt, end_dt, metrics_url,
                                 prometheus_url, namespace)
    checks = run_checks(win, ref, cfg, backend, summary, source)
    verdict = Verdict(model=model, model_version=model_version, window_start=iso(start_dt),
                      window_end=iso(end_dt), run_id=run_id, n_requests=len(win),
                      n_labelled=win.n_labelled, checks=checks)
    explanations = {}
    if explain and ref is not None and len(win):
        explanations = E.explain_window(win, ref, registry_uri, monitoring_uri, number,
                                        per_group=gallery_size)
    store = open_store(monitoring_uri)
    prefix = report_prefix(model, run_id)
    verdict.report_uri = store.uri_of(f"{prefix}/report.html") if write else ""
    if verdict.report_uri:
        for c in verdict.checks:  # where a person looks: the check's row in the report
            c.evidence = c.evidence or f"{verdict.report_uri}#{c.key}"
    history = read_history(monitoring_uri, model, last=history_windows)
    html = R.html_report(verdict, history + [verdict], explanations, summary)
    md = R.markdown_summary(verdict, explanations)
    history_key = ""
    if write:
        for name, data in R.report_files(html, md, explanations).items():
            store.put(f"{prefix}/{name}", data)
        history_key = append_history(monitoring_uri, verdict)
    logger.info("Monitoring of %s version %s: %s in %.1f s (%s)", model, model_version,
                verdict.status, time.perf_counter() - t_start, verdict.report_uri or "not saved")
    if full:
        return RunResult(verdict, html, md, explanations, summary, history_key)
    return verdict


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------


def append_history(monitoring_uri: str, verdict: Verdict) -> str:
    """Writes the verdict as a new history entry, create-only; returns its key."""
    store = open_store(monitoring_uri)
    key = (f"{history_prefix(verdict.model)}/{_stamp(parse_time(verdict.window_end))}-"
           f"{verdict.run_id}.json")
    try:
        store.put(key, json.dumps(verdict.to_dict(), sort_keys=True, default=_jsonable).encode(),
                  if_absent=True)
    except AlreadyExistsError as exc:
        raise MonitorError(f"History entry {key} already exists: run ids must be unique.") \
            from exc
    return key


def read_history(monitoring_uri: str, model: str, last: int | None = None,
                 ends_between: tuple | None = None) -> list[Verdict]:
    """The model's monitoring verdicts, oldest window first (unreadable entries skipped).

    ``ends_between=(start, end)`` reads only the entries whose window ends between the two
    (whole seconds around them: a history key begins with its window's end), without
    fetching the others.
    """
    store = open_store(monitoring_uri)
    prefix = history_prefix(model) + "/"
    keys = sorted(o.key for o in store.list(history_prefix(model)) if o.key.endswith(".json"))
    if ends_between is not None:
        low = _stamp(parse_time(ends_between[0]) - _dt.timedelta(seconds=1))
        high = _stamp(parse_time(ends_between[1]) + _dt.timedelta(seconds=1))
        keys = [k for k in keys if low <= k[len(prefix):][:len(low)] <= high]
    if last is not None:
        keys = keys[-last:] if last > 0 else []
    out = []
    for key in keys:
        try:
            out.append(Verdict.from_dict(json.loads(store.get(key))))
        except (StorageError, ValueError, TypeError, KeyError) as exc:
            logger.warning("Skipping unreadable history entry %s: %s", key, exc)
    return out


def latest_verdict(monitoring_uri: str, model: str) -> Verdict | None:
    hist = read_history(monitoring_uri, model, last=1)
    return hist[-1] if hist else None


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.floating | np.integer | np.bool_):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
