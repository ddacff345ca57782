"""``mlops monitor …``: run a monitoring window, show the latest verdict, open the report,
scrape telemetry, show (or build) a version's reference, and the feedback path's verbs
(``label``, ``labels``, ``feedback-server``) over :mod:`components.monitor.feedback`."""

from __future__ import annotations

import logging
import sys

from components.cli.common import OptionError, check_range
from components.common.paths import mlops_home

logger = logging.getLogger(__name__)

_ICONS = {"ok": "ok     ", "unknown": "unknown", "warning": "WARNING", "alarm": "ALARM  "}


def _stores(p) -> None:
    home = mlops_home()
    p.add_argument("--model", default="pet-classifier", help="registered model name")
    p.add_argument("--registry", default=str(home / "registry"), help="model registry URI")
    p.add_argument("--store", default="",
                   help="monitoring store URI (default: $MLOPS_MONITORING_URI, "
                        f"$MLOPS_CAPTURE_URI, else {home / 'monitoring'})")


def add_commands(sub) -> None:
    """Adds the ``monitor`` verb group to the top-level subparsers."""
    group = sub.add_parser("monitor", help="monitor the production model: integrity, drift, "
                                           "performance, telemetry, explanations")
    msub = group.add_subparsers(dest="monitor_command", required=True)

    p = msub.add_parser("run",
                        help="judge one window of captured traffic (default: last 24 h)")
    _stores(p)
    p.add_argument("--start", default="", help="window start, ISO 8601 (default: end - hours)")
    p.add_argument("--end", default="", help="window end, ISO 8601 (default: now)")
    p.add_argument("--hours", type=float, default=24.0, help="window length without --start")
    p.add_argument("--version", default="", help="version to judge (default: @production)")
    p.add_argument("--backend", default="", choices=["", "alibi", "torch"],
                   metavar="{alibi,torch}",
                   help="drift backend (default: $MLOPS_DRIFT_BACKEND or alibi; alibi is "
                        "Alibi Detect, BSL 1.1; torch is this project's, Apache-2.0)")
    p.add_argument("--metrics-url", default="",
                   help="predictor base URL whose /metrics gives the window's telemetry")
    p.add_argument("--prometheus-url", default="", help="Prometheus server to query instead")
    p.add_argument("--settings", default="",
                   help='thresholds as JSON, e.g. \'{"p_val": 0.01, "p95_slo_ms": 100}\'')
    p.add_argument("--no-explain", action="store_true", help="skip saliency and slices")
    p.set_defaults(func=_cmd_run)

    p = msub.add_parser("status",
                        help="the latest verdict: every check's status")
    _stores(p)
    p.add_argument("--last", type=int, default=1, help="show this many latest verdicts")
    p.set_defaults(func=_cmd_status)

    p = msub.add_parser("report",
                        help="where the latest HTML report is (--open: in a browser)")
    _stores(p)
    p.add_argument("--open", action="store_true", help="open it in the default browser")
    p.set_defaults(func=_cmd_report)

    p = msub.add_parser("scrape",
                        help="scrape the predictor's /metrics into the telemetry history")
    _stores(p)
    p.add_argument("--url", required=True, help="predictor base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--every", type=float, default=15.0, help="seconds between scrapes")
    p.add_argument("--count", type=int, default=1, help="scrapes to take (0: until stopped)")
    p.set_defaults(func=_cmd_scrape)

    _add_reference_command(msub)
    _add_label_commands(msub)


def _store(args) -> str:
    from components.monitor.core import default_monitoring_uri

    return args.store or default_monitoring_uri()


def _context_line(v) -> str:
    """Each context's status and requests, ``day ok (160 requests), night ALARM (112)``:
    which part of the camera's day the verdict is about, before the checks."""
    from components.monitor.contract import STATUSES

    parts = []
    for ctx in v.contexts():
        mine = [c for c in v.checks if c.context == ctx]
        # the worst measured status: "unknown" only where nothing could be measured (no
        # labels yet leaves accuracy unknown beside drift checks that are ok)
        measured = [c.status for c in mine if c.status != "unknown"] or ["unknown"]
        status = max(measured, key=STATUSES.index)
        n = next((c.extra.get("n_context", c.extra.get("n")) for c in mine
                  if isinstance(c.extra.get("n_context", c.extra.get("n")), int)), None)
        word = status if status in ("ok", "unknown") else status.upper()
        parts.append(f"{ctx} {word}" + (f" ({n} requests)" if n is not None else ""))
    return ", ".join(parts)


def print_verdict(v) -> None:
    print(f"{v.model} version {v.model_version}: {v.status.upper()}  (window {v.window_start} "
          f"to {v.window_end}, {v.n_requests} requests, {v.n_labelled} labelled)")
    if v.contexts():
        print(f"  by camera context: {_context_line(v)}")
    width = max([34, *(len(c.key) for c in v.checks)])  # drift.embedding[night] and longer
    for c in v.checks:
        value = "-" if c.value is None else (f"{c.value:.4g}" if isinstance(c.value, float)
                                             else str(c.value))
        print(f"  {_ICONS[c.status]}  {c.key:<{width}} {value:>10}  {c.detail}")
    if v.report_uri:
        print(f"Report: {v.report_uri}")


def _cmd_run(args) -> int:
    import json

    from components.monitor.core import run_monitoring

    try:
        settings = json.loads(args.settings) if args.settings else {}
    except ValueError as exc:
        raise OptionError(f"Invalid --settings: {exc}. Expect a JSON object.") from exc
    if not isinstance(settings, dict):
        raise OptionError("Invalid --settings: expect a JSON object of thresholds.")
    check_range("--hours", args.hours, 0.0, low_open=True)
    start = args.start or None
    end = args.end or None
    if start is None and args.hours != 24.0:
        import datetime as dt

        from components.monitor.window import parse_time

        end_dt = parse_time(end) if end else dt.datetime.now(dt.UTC)
        start, end = end_dt - dt.timedelta(hours=args.hours), end_dt
    verdict = run_monitoring(args.model, args.registry, _store(args), start=start, end=end,
                             backend=args.backend or None, version=args.version or None,
                             config=settings, metrics_url=args.metrics_url,
                             prometheus_url=args.prometheus_url, explain=not args.no_explain)
    print_verdict(verdict)
    return 0


def _cmd_status(args) -> int:
    from components.monitor.core import read_history

    history = read_history(_store(args), args.model, last=max(1, args.last))
    if not history:
        print(f"No monitoring runs of {args.model} in {_store(args)} yet: run "
              "`mlops monitor run`.")
        return 1
    for v in history:
        print_verdict(v)
    return 0


def _cmd_report(args) -> int:
    from components.monitor.core import latest_verdict

    v = latest_verdict(_store(args), args.model)
    if v is None or not v.report_uri:
        print(f"No monitoring report of {args.model} in {_store(args)} yet: run "
              "`mlops monitor run`.")
        return 1
    print(f"{v.report_uri}  ({v.status}, window {v.window_start} to {v.window_end})")
    if args.open:
        import tempfile
        import webbrowser
        from pathlib import Path

        from components.common.storage import read_uri

        uri = v.report_uri
        if not uri.startswith("file://"):
            path = Path(tempfile.mkdtemp()) / "report.html"
            path.write_bytes(read_uri(uri))
            uri = path.as_uri()
        if not webbrowser.open(uri):
            print(f"No browser available; open {uri} yourself.")
    return 0


def _cmd_scrape(args) -> int:
    import time

    from components.monitor.telemetry import scrape_to_store

    n = 0
    while True:
        snap = scrape_to_store(args.url, args.model, _store(args))
        n += 1
        if snap is None:
            print(f"{args.url}/metrics did not answer (or serves no {args.model}).")
        else:
            total = int(sum(snap["requests"].values()))
            print(f"scrape {n}: {snap['instance']} {total} requests so far")
        if args.count and n >= args.count:
            return 0 if snap is not None else 1
        time.sleep(args.every)


# ------------------------------------------------------------------------------------------
# reference
# ------------------------------------------------------------------------------------------


def _add_reference_command(monitor_sub) -> None:
    from components.monitor.contract import SAMPLE_SIZE

    p = monitor_sub.add_parser(
        "reference",
        help="show a version's monitoring reference, building it if it has none",
        description="Shows the monitoring reference of a registered version; a version "
                    "registered without one gets it built from the dataset version its "
                    "lineage names.")
    p.add_argument("model", help="registered model name")
    p.add_argument("version", help="version number or @alias")
    p.add_argument("--registry", default=str(mlops_home() / "registry"), help="registry URI")
    p.add_argument("--sample", type=int, default=SAMPLE_SIZE,
                   help="most test-split images when building one")
    p.add_argument("--dataset-root", default="",
                   help="where the dataset versions live, if they moved since training")
    p.set_defaults(func=_cmd_reference)


def _cmd_reference(args) -> int:
    import numpy as np

    from components.common.registry import ModelRegistry
    from components.monitor.reference import build_reference, has_reference, load_reference

    if args.sample < 2:
        raise OptionError(f"Invalid --sample {args.sample}: expect at least 2 images.")
    version = ModelRegistry(args.registry).resolve(args.model, args.version)
    built = not has_reference(args.registry, args.model, version)
    if built:
        build_reference(args.registry, args.model, version, args.sample, args.dataset_root)
    ref = load_reference(args.registry, args.model, version, build=False)
    print(f"{'Built' if built else 'Found'} the monitoring reference of {args.model} version "
          f"{version}: {ref.uri}")
    print(f"  {len(ref.labels)} held-out images of dataset {ref.dataset_version}, embedding "
          f"of {ref.embeddings.shape[1]} values")
    if ref.population:
        print(f"  from {ref.population}")
    print("  class prior: " + ", ".join(f"{k} {v:.3f}" for k, v in ref.prior.items()))
    if ref.contexts:
        print("  contexts: " + ", ".join(f"{k} {v}" for k, v in ref.context_counts().items()))
    for name, values in ref.stats.items():
        arr = np.asarray(values, dtype=float)
        print(f"  {name:<10} min {arr.min():.4g}  median {np.median(arr):.4g}  max "
              f"{arr.max():.4g}")
    print(f"  drift detector: {ref.detector_uri or 'none (fitted by the monitor on demand)'}")
    return 0


# ------------------------------------------------------------------------------------------
# the feedback path: label, labels, feedback-server
# ------------------------------------------------------------------------------------------


def _feedback_options(p) -> None:
    home = mlops_home()
    p.add_argument("--model", default="pet-classifier", help="served model name")
    p.add_argument("--store", default="",
                   help="monitoring store URI (when empty: $MLOPS_MONITORING_URI, "
                        f"$MLOPS_CAPTURE_URI, else {home / 'monitoring'})")
    p.add_argument("--registry", default=str(home / "registry"),
                   help="registry URI, for the model's classes")
    p.add_argument("--classes", default="",
                   help="comma-separated classes to validate against instead of the "
                        "registry's")


def _add_label_commands(monitor_sub) -> None:
    p = monitor_sub.add_parser(
        "label",
        help="store ground truth for captured requests (one, a CSV, or the file drop)",
        description="Stores the true class of a captured instance, joined by request id. "
                    "Refuses a different label for an instance that has one unless "
                    "--relabel (the history keeps both).")
    p.add_argument("request_id", nargs="?",
                   help="the request_id the predictor answered (V2: parameters.request_id)")
    p.add_argument("label", nargs="?", help="the true class")
    p.add_argument("--index", type=int, default=0, help="the instance's position in the request")
    p.add_argument("--csv", default="", help="a CSV file of request_id,label[,index] rows")
    p.add_argument("--inbox", action="store_true",
                   help="apply the CSV files dropped under capture/inbox/model=<model>/")
    p.add_argument("--relabel", action="store_true",
                   help="replace an existing different label (recorded as a correction)")
    p.add_argument("--by", default="", help="who says so ($MLOPS_ACTOR or $USER when empty)")
    p.add_argument("--note", default="", help="a note kept with the label")
    p.add_argument("--uncaptured", action="store_true",
                   help="store a label whose request id the capture does not hold (yet)")
    _feedback_options(p)
    p.set_defaults(func=_cmd_label)

    p = monitor_sub.add_parser("labels",
                               help="show the labels (with history) of a captured request")
    p.add_argument("request_id")
    _feedback_options(p)
    p.set_defaults(func=_cmd_labels)

    p = monitor_sub.add_parser(
        "feedback-server",
        help="HTTP endpoint for labelling tools (POST /v1/labels)",
        description="Serves POST /v1/labels and GET /v1/labels/<request_id>. Set "
                    "MLOPS_FEEDBACK_TOKEN to require 'Authorization: Bearer <token>'.")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (0.0.0.0 only behind an authenticating proxy)")
    p.add_argument("--port", type=int, default=8095, help="port to listen on")
    p.add_argument("--inbox-seconds", type=float, default=30.0,
                   help="apply the file drop this often (0: never)")
    _feedback_options(p)
    p.set_defaults(func=_cmd_server)


def _label_store(args):
    from components.monitor.capture import default_capture_uri
    from components.monitor.feedback import LabelError, LabelStore, model_classes

    if args.classes:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    else:
        from components.common.registry import RegistryError

        try:
            classes = model_classes(args.registry, args.model)
        except RegistryError as exc:
            raise LabelError(f"Cannot read the classes of {args.model!r} from the registry "
                             f"{args.registry}: {exc} Pass --classes or --registry.") from exc
    return LabelStore(args.store or default_capture_uri(), args.model, classes)


def _cmd_label(args) -> int:
    from components.monitor.feedback import (
        LABELS_PREFIX,
        LabelError,
        LabelRequest,
        capture_coverage,
        inbox_prefix,
        parse_csv,
        process_inbox,
    )

    single = args.request_id is not None or args.label is not None
    if sum([single, bool(args.csv), args.inbox]) != 1:
        raise LabelError("Give exactly one of: REQUEST_ID LABEL, --csv FILE, or --inbox.")
    if single and (args.request_id is None or args.label is None):
        raise LabelError("Give both REQUEST_ID and LABEL (or --csv FILE).")
    if args.csv:
        try:
            with open(args.csv, encoding="utf-8-sig", newline="") as f:
                text = f.read()
        except OSError as exc:
            raise FileNotFoundError(f"Cannot read --csv {args.csv}: {exc.strerror}.") from exc
    labels = _label_store(args)
    if args.inbox:
        summary = process_inbox(labels, relabel=args.relabel)
        print(f"File drop {labels.store.uri_of(inbox_prefix(labels.model))}: "
              f"{summary['files']} files, {summary['applied']} applied "
              f"({summary['labels']} labels), {summary['rejected']} rejected (see rejected/).")
        return 1 if summary["rejected"] else 0
    reqs = (parse_csv(text, default_by=args.by, name=args.csv) if args.csv else
            [LabelRequest(args.request_id, args.label, args.index, args.by, args.note)])
    missing, no_image = ([], []) if args.uncaptured else capture_coverage(labels, reqs)
    if missing:  # a typo'd id would be stored and never join a capture
        where = labels.store.uri_of(f"capture/records/model={labels.model}")
        ids = ", ".join(f"{r.where + ' ' if r.where else ''}{r.request_id!r}"
                        for r in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise LabelError(
            f"{len(missing)} of {len(reqs)} request ids were never captured for "
            f"{labels.model} in {where}: {ids}; nothing was written. Check the id (`mlops "
            "deploy predict` prints them; captures are flushed in batches, `mlops deploy stop` "
            "flushes them now), or store it anyway with --uncaptured.")
    if args.csv:
        results = labels.add_many(reqs, relabel=args.relabel, source="csv")
    else:
        results = [labels.add(reqs[0], relabel=args.relabel, source="cli")]
    counts = {s: sum(r["status"] == s for r in results)
              for s in ("created", "relabelled", "unchanged")}
    for r in results if len(results) <= 10 else []:
        rec = r["record"]
        extra = f" (was {rec['previous']})" if r["status"] == "relabelled" else ""
        print(f"{rec['request_id']}/{rec['index']}: {rec['label']} {r['status']}{extra} "
              f"by {rec['by']} at {rec['at']}")
    print(f"{len(results)} labels: {counts['created']} new, {counts['relabelled']} corrected, "
          f"{counts['unchanged']} already stored, in "
          f"{labels.store.uri_of(f'{LABELS_PREFIX}/model={labels.model}')}")
    if no_image:
        print(f"note: {len(no_image)} of these requests have no stored image (the capture "
              "keeps a sample, MLOPS_CAPTURE_IMAGE_RATE on the model server): their labels "
              "measure accuracy, but a retraining cannot learn from them.", file=sys.stderr)
    return 0


def _cmd_labels(args) -> int:
    from components.monitor.feedback import REQUEST_ID, LabelError

    if not REQUEST_ID.match(args.request_id):
        raise LabelError(f"Invalid request id {args.request_id!r}: expect the request_id the "
                         "predictor answered (V2: parameters.request_id).")
    labels = _label_store(args)
    found = labels.request_labels(args.request_id)
    if not found:
        print(f"No label for request {args.request_id}.")
        return 1
    for index, history in found.items():
        for rec in history:
            mark = "*" if rec is history[-1] else " "
            print(f"{mark} {args.request_id}/{index}: {rec['label']:<10} by {rec['by']} at "
                  f"{rec['at']} ({rec['source']}){' - ' + rec['note'] if rec.get('note') else ''}")
    return 0


def _cmd_server(args) -> int:
    import os

    from components.common.service import check_port_free
    from components.monitor.feedback import serve

    check_port_free(args.host, args.port)
    labels = _label_store(args)
    print(f"Feedback endpoint for {labels.model} on http://{args.host}:{args.port}/v1/labels "
          f"(classes {labels.classes}; labels in {labels.store.uri})", flush=True)
    serve(labels, args.host, args.port, os.environ.get("MLOPS_FEEDBACK_TOKEN", ""),
          args.inbox_seconds)
    return 0
