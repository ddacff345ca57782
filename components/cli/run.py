"""``mlops run ingest | training``: a pipeline on this machine under kfp.local, with a line per
step, its full log in a file and a run record (``mlops runs``)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from components.cli.common import (
    check_range,
    check_storage,
    option_error,
    parse_canary_steps,
    retrain_defaults,
)
from components.cli.deploy import capture_uri
from components.cli.ingest import lake_arguments, lake_options
from components.cli.registry import print_version
from components.common.paths import mlops_home


def add_commands(sub) -> None:
    run = sub.add_parser("run", help="run a pipeline locally under kfp.local")
    run_sub = run.add_subparsers(dest="pipeline", required=True)
    ing = run_sub.add_parser("ingest", help="the data-ingestion pipeline")
    lake_options(ing, split=True, draft=False)
    ing.add_argument("--outputs", default=str(mlops_home() / "pipeline-runs"),
                     help="local pipeline root for task outputs")
    ing.set_defaults(func=_cmd_run)

    tr = run_sub.add_parser("training", help="the training pipeline (ingest to release)")
    lake_options(tr, split=True, draft=False, version=True)
    tr.add_argument("--registry", default="",
                    help="registry URI (default: $MLOPS_HOME/registry)")
    tr.add_argument("--work-root", default="",
                    help="scratch URI for trial results (default: $MLOPS_HOME/work)")
    tr.add_argument("--model-name", default="pet-classifier", help="registered model name")
    tr.add_argument("--search-space", default="",
                    help='JSON: hyperparameter -> values, e.g. \'{"lr": [0.003, 0.001]}\' '
                         "(default: the pipeline's: lr, batch_size, weight_decay)")
    tr.add_argument("--search-mode", choices=["grid", "random"], default=None,
                    help="grid: every combination; random: one sample per trial "
                         "(default: random)")
    tr.add_argument("--trials", type=int, default=None,
                    help="search trial slots (default: 4; a grid gets one per combination)")
    tr.add_argument("--trial-epochs", type=int, default=None,
                    help="epochs per search trial (default: 3)")
    tr.add_argument("--epochs", type=int, default=None,
                    help="most epochs of the final training; early stopping may end it "
                         "sooner (default: 10)")
    tr.add_argument("--seed", type=int, default=None,
                    help="seed of the search and the training (default: 0)")
    tr.add_argument("--min-accuracy", type=float, default=None,
                    help="quality gate: lowest test accuracy, 0 to 1 (default: 0.9)")
    tr.add_argument("--min-macro-f1", type=float, default=None,
                    help="quality gate: lowest macro F1, 0 to 1 (default: 0.9)")
    tr.add_argument("--max-recall-gap", type=float, default=None,
                    help="quality gate: largest gap between per-class recalls (default: 0.1)")
    tr.add_argument("--canary-steps", default=None,
                    help="canary traffic percentages, increasing (default: 10,50)")
    tr.add_argument("--require-approval", action="store_true", default=None,
                    help="hold the release until `mlops registry approve`")
    tr.add_argument("--approval-timeout-s", type=float, default=None,
                    help="how long a held release waits for approval (default: 0, no wait)")
    tr.add_argument("--outputs", default=str(mlops_home() / "pipeline-runs"),
                    help="local pipeline root for task outputs")
    tr.set_defaults(func=_cmd_run)

    ct = run_sub.add_parser(
        "continuous-training",
        help="retrain on the lake plus labelled production captures; released only if it "
             "beats production (champion vs challenger, gate, application test, canary)")
    ct.add_argument("--data", default="",
                    help="the data lake the export adds to (default: the lake production "
                         "was trained from, read as it was, else $MLOPS_HOME/lake)")
    ct.add_argument("--reason", default="",
                    help="why: kept in the new version's lineage (the trigger)")
    ct.add_argument("--since", default="",
                    help="export captures from this time on, ISO 8601 (default: every "
                         "labelled capture not yet in the lake)")
    ct.add_argument("--trial-epochs", type=int, default=None,
                    help="epochs per search trial (default: 2)")
    ct.add_argument("--epochs", type=int, default=None,
                    help="most epochs of the final training (default: 6)")
    ct.add_argument("--min-new-images", type=int, default=None,
                    help="fewer new labelled captures (with kept images) than this: "
                         "nothing is exported nor trained, the run says why; 0 retrains on "
                         "the lake anyway (default: 1)")
    _store_options(ct)
    ct.set_defaults(func=_cmd_run)

    mon = run_sub.add_parser("monitoring",
                             help="the monitoring pipeline: judge a window of production "
                                  "traffic, then govern the verdict")
    mon.add_argument("--hours", type=float, default=24.0, help="window length, ending now")
    mon.add_argument("--version", default="", help="version to judge (default: @production)")
    mon.add_argument("--backend", default="alibi", choices=["alibi", "torch"],
                     help="drift backend (alibi: Alibi Detect, BSL 1.1; torch: Apache-2.0)")
    mon.add_argument("--no-explain", action="store_true", help="skip saliency and slices")
    mon.add_argument("--launcher", default="none", choices=["none", "local"],
                     help="how governance starts a retraining: none records the episode "
                          "(`mlops govern start-episode` starts it), local starts it here")
    _store_options(mon)
    mon.set_defaults(func=_cmd_run)


def _store_options(p) -> None:
    home = mlops_home()
    p.add_argument("--model-name", default="pet-classifier", help="registered model name")
    p.add_argument("--registry", default="", help="registry URI (default: $MLOPS_HOME/registry)")
    p.add_argument("--store", default="",
                   help="monitoring store URI (default: $MLOPS_MONITORING_URI, else "
                        "$MLOPS_HOME/monitoring)")
    p.add_argument("--outputs", default=str(home / "pipeline-runs"),
                   help="local pipeline root for task outputs")


class StepProgress:
    """Prints one line per pipeline step as kfp.local starts and ends it."""

    def __init__(self):
        self.started: dict[str, float] = {}
        self.count = 0

    def __call__(self, kind: str, task: str, status: str) -> None:
        now = time.monotonic()
        if kind == "start":
            self.started[task] = now
            self.count += 1
            print(f"  [{self.count:>2}] {task} …", file=sys.stderr, flush=True)
        else:
            took = now - self.started.get(task, now)
            mark = "done" if status == "SUCCESS" else status.lower()
            print(f"  [{self.count:>2}] {task}: {mark} in {took:.0f} s", file=sys.stderr,
                  flush=True)


def run_pipeline(name: str, arguments: dict, outputs_root, args) -> dict:
    """Runs a pipeline locally with a per-step summary, its full log in a file and a run
    record (``mlops runs``); with ``--debug`` the task logs stream to the terminal."""
    from pipelines.local import run_local
    from pipelines.runs import RunRecorder

    home = mlops_home()
    debug = getattr(args, "debug", False)
    recorder = RunRecorder(home / "runs", name, arguments, "", outputs_root)
    log_path = None if debug else str(home / "logs" / f"{recorder.record['run_id']}.log")
    recorder.record["log"] = log_path or "(streamed to the terminal: --debug)"
    where = f"; full log: {log_path}" if log_path else ""
    print(f"Running pipeline '{name}' locally (kfp.local, outputs under {outputs_root}"
          f"{where})", file=sys.stderr)
    with recorder:
        outputs = run_local(name, arguments, outputs_root, log_path=log_path,
                            on_event=StepProgress())
        recorder.outputs = outputs
    reports = recorder.record.get("reports") or {}
    if reports:
        print("Reports:")
        for key, path in sorted(reports.items()):
            print(f"  {key:<28} {path}")
    print(f"Run id: {recorder.record['run_id']} (`mlops runs show` lists its outputs)")
    return outputs


def _check_stores(arguments: dict) -> None:
    """Every store URI of a run, checked before the pipeline starts (finding 9 of issue 23:
    a bad one was found 8 to 14 s into it)."""
    check_storage({option: arguments.get(name, "") for option, name in (
        ("--data", "data_uri"), ("--dataset-root", "dataset_root"),
        ("--registry", "registry_uri"), ("--work-root", "work_root"),
        ("--store", "monitoring_uri"), ("--labels-csv", "labels_csv"))})


def _cmd_run(args) -> int:
    home = mlops_home()
    if args.pipeline == "ingest":
        arguments = lake_arguments(args)
        _check_stores(arguments)
        outputs = run_pipeline("ingest", arguments, args.outputs, args)
        _print_ingest(outputs)
    elif args.pipeline == "training":
        _check_training_args(args)
        lake = lake_arguments(args)
        capture_uri()  # production, once released, captures for the monitor
        if args.trials:  # trial slots are compiled into the pipeline: set before it loads
            os.environ["MLOPS_HPO_SLOTS"] = str(args.trials)
        arguments = {**lake, **_training_arguments(args, home)}
        _check_stores(arguments)
        outputs = run_pipeline("training", arguments, args.outputs, args)
        print_training(outputs, arguments)
    elif args.pipeline == "continuous-training":
        from components.retrain.core import NOTHING_NEW
        from pipelines.local import PipelineFailed

        arguments = _continuous_training_arguments(args, home)
        _check_stores(arguments)
        try:
            outputs = run_pipeline("continuous-training", arguments, args.outputs, args)
        except PipelineFailed as exc:
            if not exc.error.startswith(NOTHING_NEW):
                raise
            print(f"Not trained: {exc.error}", file=sys.stderr)  # says what to run next
            return 1
        print_training(outputs, arguments)
    else:
        arguments = _monitoring_arguments(args, home)
        _check_stores(arguments)
        outputs = run_pipeline("monitoring", arguments, args.outputs, args)
        _print_monitoring(outputs, arguments)
    return 0


def _common_stores(args, home: Path) -> dict:
    from components.monitor.core import default_monitoring_uri

    return {"registry_uri": args.registry or str(home / "registry"),
            "monitoring_uri": args.store or default_monitoring_uri(),
            "model_name": args.model_name}


def _continuous_training_arguments(args, home: Path) -> dict:
    check_range("--epochs", args.epochs, 1)
    check_range("--trial-epochs", args.trial_epochs, 1)
    check_range("--min-new-images", args.min_new_images, 0)
    stores = _common_stores(args, home)
    arguments = {**retrain_defaults(stores["registry_uri"], args.model_name, home, args.data),
                 "dataset_root": str(home / "datasets"), "work_root": str(home / "work"),
                 **stores, "trigger": args.reason,
                 "deploy_target": "local", "serving_root": str(home / "deployments")}
    if args.since:
        from components.monitor.window import parse_time

        try:
            arguments["since"] = parse_time(args.since).timestamp()
        except ValueError:
            raise option_error("--since", args.since, "an ISO 8601 time such as "
                                                      "2026-05-01T08:00:00Z") from None
    for name in ("trial_epochs", "epochs", "min_new_images"):
        if getattr(args, name) is not None:
            arguments[name] = getattr(args, name)
    return arguments


def _monitoring_arguments(args, home: Path) -> dict:
    check_range("--hours", args.hours, 0.0, low_open=True)
    stores = _common_stores(args, home)
    return {**stores, "hours": args.hours, "version": args.version,
            "backend": args.backend, "explain": not args.no_explain,
            "deploy_target": "local", "serving_root": str(home / "deployments"),
            "govern_launcher": args.launcher,
            "retrain_arguments": json.dumps({
                **retrain_defaults(stores["registry_uri"], args.model_name, home),
                "dataset_root": str(home / "datasets"),
                "work_root": str(home / "work"), "deploy_target": "local",
                "serving_root": str(home / "deployments")})}


def _print_monitoring(outputs: dict, arguments: dict) -> None:
    from components.cli.monitor import print_verdict
    from components.monitor.core import latest_verdict

    print()
    verdict = latest_verdict(arguments["monitoring_uri"], arguments["model_name"])
    if verdict is not None:
        print_verdict(verdict)
    print("Governance: `mlops govern alerts` and `mlops govern audit` show what it did; "
          "`mlops govern episodes` the retraining episodes.")


def _print_ingest(outputs: dict) -> None:
    train, test, report = outputs["train"], outputs["test"], outputs["report"]
    print()
    print(f"Dataset version: {outputs['dataset_version']}")
    print(f"  train: {int(train.metadata['count'])} images "
          f"{ {k: int(v) for k, v in train.metadata['class_counts'].items()} }")
    print(f"  test:  {int(test.metadata['count'])} images "
          f"{ {k: int(v) for k, v in test.metadata['class_counts'].items()} }")
    print(f"  snapshot: {train.metadata['snapshot_uri']}")
    page = outputs.get("report_page")
    if page is not None and os.path.exists(page.path):
        print(f"  report:   {page.path}.html" if os.path.exists(page.path + ".html")
              else f"  report:   {page.path}")
    else:
        print(f"  report:   {report.path}.md" if os.path.exists(report.path + ".md")
              else f"  report:   {report.path}")
    with open(report.path) as f:
        accounting = next((line.strip("*\n") for line in f if line.startswith("**")), "")
    print(f"  {accounting}")


def _check_training_args(args) -> None:
    """Checks every training option before any work starts (ranges, formats, JSON)."""
    from components.train.core import HParams, search_space_trials

    check_range("--epochs", args.epochs, 1)
    check_range("--trial-epochs", args.trial_epochs, 1)
    for option, value in (("--min-accuracy", args.min_accuracy),
                          ("--min-macro-f1", args.min_macro_f1),
                          ("--max-recall-gap", args.max_recall_gap)):
        check_range(option, value, 0.0, 1.0)
    check_range("--approval-timeout-s", args.approval_timeout_s, 0.0)
    check_range("--trials", args.trials, 1)
    if args.canary_steps is not None:
        parse_canary_steps("--canary-steps", args.canary_steps)
    if args.search_space:
        try:
            space = json.loads(args.search_space)
        except ValueError as exc:
            raise ValueError(f"--search-space is not valid JSON: {exc}. Example: "
                             '\'{"lr": [0.003, 0.001], "batch_size": [32, 64]}\'') from None
        if not isinstance(space, dict) or not all(isinstance(v, list) for v in space.values()):
            raise option_error("--search-space", args.search_space,
                                'a JSON object of parameter -> list of values, such as '
                                '{"lr": [0.003, 0.001]}')
        try:
            trials = search_space_trials(space, args.search_mode or "random",
                                         args.trials or 4, args.seed or 0, HParams())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--search-space: {exc}") from None
        if (args.search_mode == "grid" and args.trials is not None
                and len(trials) > args.trials):
            raise ValueError(f"--search-space has {len(trials)} grid combinations but "
                             f"--trials is {args.trials}: raise --trials to {len(trials)} "
                             "(or leave it out: a local grid run gets a slot per combination)"
                             ", or use --search-mode random.")
        if args.search_mode == "grid" and args.trials is None:
            args.trials = len(trials)


def _training_arguments(args, home: Path) -> dict:
    arguments = {"registry_uri": args.registry or str(home / "registry"),
                 "work_root": args.work_root or str(home / "work"),
                 "model_name": args.model_name}
    for name in ("search_mode", "trial_epochs", "epochs", "seed", "min_accuracy",
                 "min_macro_f1", "max_recall_gap"):
        value = getattr(args, name, None)
        if value is not None:
            arguments[name] = value
    if getattr(args, "search_space", None):
        arguments["search_space"] = args.search_space
    # Locally, the application test and the release use model servers on this machine.
    arguments["deploy_target"] = "local"
    arguments["serving_root"] = str(home / "deployments")
    for name in ("canary_steps", "require_approval", "approval_timeout_s"):
        value = getattr(args, name, None)
        if value is not None:
            arguments[name] = value
    return arguments


def print_training(outputs: dict, arguments: dict) -> None:
    from components.common.registry import ModelRegistry

    print()
    print(f"Dataset version: {outputs['dataset_version']}")
    print(f"Quality gate: {outputs['evaluation'].metadata.get('gate')}")
    if not outputs["blessed"]:
        print("No model was registered.")
        return
    registry = ModelRegistry(arguments["registry_uri"])
    mv = registry.get(arguments["model_name"], "latest")
    print_version(mv)
    releases = [r for r in registry.releases(mv.name) if r["version"] == mv.version]
    if not releases:
        print("Release: none (the application test did not pass, or the release step failed;"
              " see the task logs above)")
        return
    rec = releases[-1]
    was = (f"production was version {rec['previous_version']}"
           if rec.get("previous_version") is not None else "production had no version")
    print(f"Release: {rec['decision']} ({was}; "
          f"now {registry.aliases(mv.name).get('production')})")
    for step in rec["steps"]:
        c, st = step["canary"], step.get("stable") or {}
        versus = (f" (stable: p95 {st['p95_ms']:.1f} ms, accuracy {st['accuracy']:.3f})"
                  if st.get("accuracy") is not None else "")
        accuracy = "-" if c.get("accuracy") is None else f"{c['accuracy']:.3f}"
        served = c.get("served") or {}
        served_text = (f"; served {served['requests']} requests, {served['errors']} server "
                       "errors" if served.get("available") else "")
        live = step.get("live_traffic") or {}
        if sum(live.values()):  # users' (the demo camera's) requests through the router
            served_text += (f"; camera frames through the router: {live['canary']} of "
                            f"{live['canary'] + live['stable']} to the canary")
        print(f"  {step['percent']:>3}% traffic: {c['errors']}/{c['requests']} errors, p95 "
              f"{c['p95_ms']:.1f} ms, accuracy {accuracy}{versus}{served_text}"
              f"{'' if step['passed'] else '  FAILED: ' + '; '.join(step['reasons'])}")
