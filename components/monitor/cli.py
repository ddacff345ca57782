"""``mlops monitor …``: run a monitoring window, show the latest verdict, open the report.

The feedback verbs (``label``, ``labels``, ``feedback-server``) live with the feedback path in
:mod:`components.monitor.feedback` and are added to the same group here.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_ICONS = {"ok": "ok     ", "unknown": "unknown", "warning": "WARNING", "alarm": "ALARM  "}


def _stores(p) -> None:
    from components.common.paths import mlops_home

    home = mlops_home()
    p.add_argument("--model", default="pet-classifier", help="registered model name")
    p.add_argument("--registry", default=str(home / "registry"), help="model registry URI")
    p.add_argument("--store", default="",
                   help="monitoring store URI (default: $MLOPS_MONITORING_URI, "
                        f"$MLOPS_CAPTURE_URI, else {home / 'monitoring'})")


def add_commands(sub) -> None:
    """Adds the ``monitor`` verb group to the top-level subparsers."""
    from components.cli import HelpFormatter as fmt  # defaults shown once, never empty
    group = sub.add_parser("monitor", help="monitor the production model: integrity, drift, "
                                           "performance, telemetry, explanations")
    msub = group.add_subparsers(dest="monitor_command", required=True)

    p = msub.add_parser("run", formatter_class=fmt,
                        help="judge one window of captured traffic (default: last 24 h)")
    _stores(p)
    p.add_argument("--start", default="", help="window start, ISO 8601 (default: end - hours)")
    p.add_argument("--end", default="", help="window end, ISO 8601 (default: now)")
    p.add_argument("--hours", type=float, default=24.0, help="window length without --start")
    p.add_argument("--version", default="", help="version to judge (default: @production)")
    p.add_argument("--backend", default="", choices=["", "alibi", "torch"],
                   help="drift backend (default: $MLOPS_DRIFT_BACKEND or alibi; alibi is "
                        "Alibi Detect, BSL 1.1; torch is this project's, Apache-2.0)")
    p.add_argument("--metrics-url", default="",
                   help="predictor base URL whose /metrics gives the window's telemetry")
    p.add_argument("--prometheus-url", default="", help="Prometheus server to query instead")
    p.add_argument("--settings", default="",
                   help='thresholds as JSON, e.g. \'{"p_val": 0.01, "p95_slo_ms": 100}\'')
    p.add_argument("--no-explain", action="store_true", help="skip saliency and slices")
    p.set_defaults(func=_cmd_run)

    p = msub.add_parser("status", formatter_class=fmt,
                        help="the latest verdict: every check's status")
    _stores(p)
    p.add_argument("--last", type=int, default=1, help="show this many latest verdicts")
    p.set_defaults(func=_cmd_status)

    p = msub.add_parser("report", formatter_class=fmt,
                        help="where the latest HTML report is (--open: in a browser)")
    _stores(p)
    p.add_argument("--open", action="store_true", help="open it in the default browser")
    p.set_defaults(func=_cmd_report)

    p = msub.add_parser("scrape", formatter_class=fmt,
                        help="scrape the predictor's /metrics into the telemetry history")
    _stores(p)
    p.add_argument("--url", required=True, help="predictor base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--every", type=float, default=15.0, help="seconds between scrapes")
    p.add_argument("--count", type=int, default=1, help="scrapes to take (0: until stopped)")
    p.set_defaults(func=_cmd_scrape)

    # The feedback path's verbs, owned by components.monitor.feedback.
    from components.monitor.feedback import add_label_commands

    add_label_commands(msub)


def _store(args) -> str:
    from components.monitor.core import default_monitoring_uri

    return args.store or default_monitoring_uri()


def print_verdict(v) -> None:
    print(f"{v.model} version {v.model_version}: {v.status.upper()}  (window {v.window_start} "
          f"to {v.window_end}, {v.n_requests} requests, {v.n_labelled} labelled)")
    for c in v.checks:
        value = "-" if c.value is None else (f"{c.value:.4g}" if isinstance(c.value, float)
                                             else str(c.value))
        print(f"  {_ICONS[c.status]}  {c.name:<34} {value:>10}  {c.detail}")
    if v.report_uri:
        print(f"Report: {v.report_uri}")


def _cmd_run(args) -> int:
    import json

    from components.monitor.core import run_monitoring

    try:
        settings = json.loads(args.settings) if args.settings else {}
    except ValueError as exc:
        raise ValueError(f"Invalid --settings: {exc}. Expect a JSON object.") from exc
    if not isinstance(settings, dict):
        raise ValueError("Invalid --settings: expect a JSON object of thresholds.")
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
