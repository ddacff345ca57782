"""``mlops``: the command line for people. Library code logs; this module prints."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from components.common.paths import mlops_home
from components.deploy.targets import TARGETS


class Progress:
    """A one-line progress display on stderr, throttled to a few updates a second."""

    def __init__(self, label: str):
        self.label = label
        self.last = 0.0
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.25:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        pct = 100.0 * done / total if total else 100.0
        end = "\n" if done >= total else ""
        print(f"\r{self.label}: {done}/{total} ({pct:.0f}%, {rate:.0f}/s)", end=end,
              file=sys.stderr, flush=True)


def _cmd_generate(args) -> int:
    from components.common.storage import open_store
    from components.datagen.core import LakeSpec, generate, parse_size

    _check_range("--n", args.n, 1)
    size = parse_size(args.size)  # 64, or a camera size such as 1920x1080
    if isinstance(size, int):
        _check_range("--size", size, 8)
    _check_range("--cat-fraction", args.cat_fraction, 0.0, 1.0)
    _check_range("--workers", args.workers, 1)
    spec = LakeSpec(n=args.n, size=size, seed=args.seed, condition=args.condition,
                    cat_fraction=args.cat_fraction, layout=args.layout, quality=args.quality)
    store = open_store(args.out)
    counts = generate(spec, store, progress=Progress("generating"), workers=args.workers)
    print(f"Wrote {spec.n} images ({', '.join(f'{v} {k}s' for k, v in counts.items())}) "
          f"to {store.uri}")
    return 0


def _cmd_versions(args) -> int:
    from components.ingest.snapshot import list_versions

    versions = list_versions(args.root)
    if not versions:
        print(f"No dataset version under {args.root}.")
    for v in versions:
        print(v)
    return 0


def _print_ingest(outputs: dict) -> None:
    train, test, report = outputs["train"], outputs["test"], outputs["report"]
    print()
    print(f"Dataset version: {outputs['dataset_version']}")
    print(f"  train: {int(train.metadata['count'])} images "
          f"{ {k: int(v) for k, v in train.metadata['class_counts'].items()} }")
    print(f"  test:  {int(test.metadata['count'])} images "
          f"{ {k: int(v) for k, v in test.metadata['class_counts'].items()} }")
    print(f"  snapshot: {train.metadata['snapshot_uri']}")
    print(f"  report:   {report.path}.md" if os.path.exists(report.path + ".md")
          else f"  report:   {report.path}")
    with open(report.path) as f:
        accounting = next((line.strip("*\n") for line in f if line.startswith("**")), "")
    print(f"  {accounting}")


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


def _cmd_run(args) -> int:
    home = mlops_home()
    if args.pipeline == "ingest":
        _check_range("--test-fraction", args.test_fraction, 0.0, 1.0, low_open=True)
        if args.test_fraction >= 1.0:
            raise _option_error("--test-fraction", args.test_fraction, "a share between 0 and 1")
        _check_range("--workers", args.workers, 0)
        from components.ingest.core import IngestConfig, absolute_uri, parse_aliases, parse_classes

        IngestConfig(classes=parse_classes(args.classes), aliases=parse_aliases(
            args.label_aliases))  # checks --classes and --label-aliases before any work
        arguments = {"data_uri": args.data,
                     "dataset_root": args.dataset_root or str(home / "datasets"),
                     "labels_csv": absolute_uri(args.labels_csv) if args.labels_csv else "",
                     "layout": args.layout, "test_fraction": args.test_fraction,
                     "workers": args.workers, "classes": args.classes,
                     "label_aliases": args.label_aliases}
        outputs = run_pipeline("ingest", arguments, args.outputs, args)
        _print_ingest(outputs)
    elif args.pipeline == "training":
        _check_training_args(args)
        _capture_uri()  # production, once released, captures for the monitor
        if args.trials:  # trial slots are compiled into the pipeline: set before it loads
            os.environ["MLOPS_HPO_SLOTS"] = str(args.trials)
        arguments = _training_arguments(args, home)
        outputs = run_pipeline("training", arguments, args.outputs, args)
        _print_training(outputs, arguments)
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse names the argument on failure)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a version number (1 or more)")
    return value


def _option_error(option: str, value, expected: str) -> ValueError:
    return ValueError(f"{option} {value!r}: expected {expected}.")


def _check_range(option: str, value, low=None, high=None, *, low_open=False) -> None:
    if value is None:
        return
    if (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and value > high):
        bounds = (f"{'>' if low_open else '>='} {low}" if high is None
                  else f"between {low} and {high}")
        raise _option_error(option, value, f"a number {bounds}")


def parse_canary_steps(option: str, text: str) -> list[int]:
    """``10,50`` -> [10, 50]: increasing whole percentages between 1 and 99."""
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        raise _option_error(option, text,
                            "comma-separated whole percentages such as 10,50") from None
    if any(not 1 <= s <= 99 for s in steps) or steps != sorted(set(steps)):
        raise _option_error(option, text, "increasing percentages between 1 and 99, "
                                          "such as 10,50")
    return steps


def _check_training_args(args) -> None:
    """Checks every training option before any work starts (ranges, formats, JSON)."""
    from components.train.core import HParams, search_space_trials

    _check_range("--epochs", args.epochs, 1)
    _check_range("--trial-epochs", args.trial_epochs, 1)
    for option, value in (("--min-accuracy", args.min_accuracy),
                          ("--min-macro-f1", args.min_macro_f1),
                          ("--max-recall-gap", args.max_recall_gap)):
        _check_range(option, value, 0.0, 1.0)
    _check_range("--approval-timeout-s", args.approval_timeout_s, 0.0)
    _check_range("--trials", args.trials, 1)
    if args.canary_steps is not None:
        parse_canary_steps("--canary-steps", args.canary_steps)
    if args.search_space:
        try:
            space = json.loads(args.search_space)
        except ValueError as exc:
            raise ValueError(f"--search-space is not valid JSON: {exc}. Example: "
                             '\'{"lr": [0.003, 0.001], "batch_size": [32, 64]}\'') from None
        if not isinstance(space, dict) or not all(isinstance(v, list) for v in space.values()):
            raise _option_error("--search-space", args.search_space,
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
    arguments = {"data_uri": args.data,
                 "dataset_root": args.dataset_root or str(home / "datasets"),
                 "registry_uri": args.registry or str(home / "registry"),
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


def _print_training(outputs: dict, arguments: dict) -> None:
    from components.common.registry import ModelRegistry

    print()
    print(f"Dataset version: {outputs['dataset_version']}")
    print(f"Quality gate: {outputs['evaluation'].metadata.get('gate')}")
    if not outputs["blessed"]:
        print("No model was registered.")
        return
    registry = ModelRegistry(arguments["registry_uri"])
    mv = registry.get(arguments["model_name"], "latest")
    _print_version(mv)
    releases = [r for r in registry.releases(mv.name) if r["version"] == mv.version]
    if not releases:
        print("Release: none (the application test did not pass, or the release step failed;"
              " see the task logs above)")
        return
    rec = releases[-1]
    print(f"Release: {rec['decision']} (production was version {rec['previous_version']}; "
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


def _print_version(mv) -> None:
    lin = mv.lineage
    m = lin.get("metrics", {})
    print(f"Registered: {mv.name} version {mv.version} at {mv.uri}")
    print(f"  test accuracy {m.get('accuracy', float('nan')):.4f}, macro F1 "
          f"{m.get('macro_f1', float('nan')):.4f}, ROC AUC {m.get('roc_auc', float('nan')):.4f},"
          f" recall gap {m.get('recall_gap', float('nan')):.4f}")
    print("  lineage:")
    print(f"    dataset version  {lin.get('dataset_version')}  ({lin.get('dataset_manifest')})")
    print(f"    code version     {lin.get('code_version')}")
    print(f"    pipeline run     {lin.get('pipeline_run')}")
    print(f"    architecture     {lin.get('arch')}")
    hp = lin.get("hyperparameters", {})
    print(f"    hyperparameters  lr={hp.get('lr')} batch_size={hp.get('batch_size')} "
          f"weight_decay={hp.get('weight_decay')} epochs<={hp.get('epochs')} seed={hp.get('seed')}")
    print(f"    parent version   {lin.get('parent_version')}")


def _cmd_registry(args) -> int:
    from components.common.registry import ModelRegistry

    registry = ModelRegistry(args.registry or str(mlops_home() / "registry"))
    if getattr(args, "model", ""):
        known = registry.models()
        if args.model not in known:
            have = f"Registered models: {', '.join(known)}." if known else "It has no model yet."
            raise ValueError(f"No model named {args.model!r} in the registry at {registry.uri}. "
                             f"{have}")
    if args.registry_command == "list":
        models = [args.model] if args.model else registry.models()
        if not models:
            print(f"No model in {registry.uri}.")
        for name in models:
            aliases = registry.aliases(name)
            for v in registry.versions(name):
                mv = registry.get(name, v)
                tags = ",".join(a for a, n in aliases.items() if n == v)
                acc = mv.lineage.get("metrics", {}).get("accuracy")
                print(f"{name}\tv{v}\tdataset {mv.lineage.get('dataset_version')}\t"
                      f"accuracy {acc if acc is None else round(acc, 4)}\t{tags}")
    elif args.registry_command == "show":
        mv = registry.get(args.model, args.ref)
        _print_version(mv)
        print(f"  files: {', '.join(sorted(mv.files))}")
    elif args.registry_command == "lineage":
        print(json.dumps(registry.get(args.model, args.ref).lineage, indent=2))
    elif args.registry_command == "download":
        out = registry.download(args.model, args.ref, args.dest)
        print(f"Downloaded {args.model}:{args.ref} to {out} (checksums verified)")
    elif args.registry_command == "alias":
        event = registry.set_alias(args.model, args.alias, int(args.version), reason=args.reason)
        print(f"{args.model}@{args.alias} -> version {event['version']} "
              f"(was {event['previous']})")
    elif args.registry_command == "approve":
        registry.get(args.model, args.version)  # the version must exist
        before = registry.approval(args.model, args.version)
        if before:
            print(f"{args.model} version {args.version} was already approved by "
                  f"{before['by']} at {before['at']}; nothing changed.")
            return 0
        rec = registry.approve(args.model, args.version, note=args.note)
        print(f"{args.model} version {rec['version']} approved by {rec['by']} at {rec['at']}")
    elif args.registry_command == "releases":
        for r in registry.releases(args.model):
            why = "; ".join(r["reasons"])
            print(f"{r['at']}  v{r['version']} -> {r['environment']}: {r['decision']} "
                  f"(previous v{r['previous_version']}){'  ' + why if why else ''}")
    elif args.registry_command == "history":
        for e in registry.alias_history(args.model, args.alias):
            print(f"{e['at']}  v{e['previous']} -> v{e['version']}  by {e['by']}  {e['reason']}")
    return 0


def _capture_uri() -> str:
    """Where production captures what it serves: the monitoring store the monitor reads.

    Also exported as ``$MLOPS_CAPTURE_URI`` so that the release steps of a local pipeline run
    (subprocesses) start production's model servers with capture on."""
    from components.monitor.capture import default_capture_uri

    uri = default_capture_uri()
    os.environ.setdefault("MLOPS_CAPTURE_URI", uri)
    return uri


def _deploy_target(args):
    from components.deploy.targets.kserve import KServeTarget
    from components.deploy.targets.local import LocalTarget

    home = mlops_home()
    registry = args.registry or str(home / "registry")
    if args.target == "kserve":
        if not args.namespace:
            raise ValueError("--target kserve needs --namespace.")
        # From outside the cluster: probe the revisions at their external URLs.
        return KServeTarget(registry, args.model, args.namespace, cluster_local=False)
    return LocalTarget(registry, args.model, args.serving_root or str(home / "deployments"),
                       capture_uri=_capture_uri())


def _cmd_deploy(args) -> int:
    target = _deploy_target(args)
    if args.deploy_command in ("status", "start", "install-service"):
        if args.target == "local":
            from components.deploy import local_cli

            return local_cli.run(target, args)
        if args.deploy_command != "status":
            raise ValueError(f"`mlops deploy {args.deploy_command}` is for the local target.")
    if args.deploy_command == "release":
        parse_canary_steps("--canary-steps", args.canary_steps)
        _check_range("--requests-per-step", args.requests_per_step, 1)
        _check_range("--max-p95-ms", args.max_p95_ms, 0.0, low_open=True)
        _check_range("--approval-timeout-s", args.approval_timeout_s, 0.0)
        from components.deploy.apptest import load_labelled_split
        from components.deploy.release import CanaryPolicy, release, release_markdown

        policy = CanaryPolicy.from_steps_text(
            args.canary_steps, requests_per_step=args.requests_per_step,
            max_p95_ms=args.max_p95_ms, require_approval=args.require_approval,
            approval_timeout_s=args.approval_timeout_s)
        images, labels = load_labelled_split(args.probes)
        print(f"Releasing {args.model} version {args.version} to production "
              f"(canary steps {args.canary_steps}) ...", file=sys.stderr)
        record = release(target, int(args.version), images, labels, policy,
                         reason="released from the command line")
        print(release_markdown(record))
        return 0 if record["decision"] != "rolled_back" else 1
    if args.deploy_command == "status":
        for env in ("test", "production"):
            dep = target.status(env)
            if dep is None:
                print(f"{env}: nothing deployed")
                continue
            print(f"{env}: version {dep.stable.version} at {dep.url} "
                  f"(/v1/models/{dep.name}:predict)"
                  + ("" if dep.stable.detail.get("running", True) else "  NOT RUNNING"))
            if dep.canary:
                print(f"  canary: version {dep.canary.version} at {dep.canary.url} "
                      f"({dep.canary_percent}% recorded)")
    elif args.deploy_command == "stop":
        for env in args.env or ["test", "production"]:
            target.delete(env)
            print(f"stopped {env}")
    elif args.deploy_command == "predict":
        from components.deploy.client import predict

        dep = target.status(args.env)
        if dep is None:
            raise ValueError(f"Nothing is deployed in {args.env!r}: run the training pipeline "
                             "(mlops run training) or `make demo` first.")
        images = [Path(p).read_bytes() for p in args.images]
        for path, p in zip(args.images, predict(dep.url, dep.name, images), strict=True):
            prob = p["probabilities"][p["label"]]
            print(f"{path}\t{p['label']}\t{prob:.3f}")
    return 0


def _cmd_demo(args) -> int:
    from components.common.storage import open_store
    from components.datagen.core import LakeSpec, generate

    home = mlops_home()
    _capture_uri()  # production captures what it serves, for `mlops monitor run`
    lake_uri = str(home / "lake" / "petpark")
    lake = open_store(lake_uri)
    spec = LakeSpec(n=args.n, size=args.size, seed=0)
    if sum(1 for _ in lake.list()) != spec.n:
        print(f"Step 1/3: generating the sample data lake ({spec.n} images) at {lake.uri}",
              file=sys.stderr)
        generate(spec, lake, progress=Progress("generating"))
    else:
        print(f"Step 1/3: sample data lake already at {lake.uri}", file=sys.stderr)
    print("Step 2/3: running the training pipeline locally (kfp.local): ingest, "
          "hyperparameter search, train, test, gate, package, register, application test, "
          "canary release", file=sys.stderr)
    arguments = {"data_uri": lake_uri, "dataset_root": str(home / "datasets"),
                 "registry_uri": str(home / "registry"), "work_root": str(home / "work"),
                 "model_name": "pet-classifier", "image_size": args.size,
                 "deploy_target": "local", "serving_root": str(home / "deployments")}
    started = time.monotonic()
    from components.deploy.local_cli import Camera
    from components.deploy.targets.local import LocalTarget

    camera = Camera.from_lake(LocalTarget(arguments["registry_uri"], arguments["model_name"],
                                          arguments["serving_root"]), lake_uri).start()
    try:
        outputs = run_pipeline("training", arguments, home / "pipeline-runs", args)
    finally:
        camera.stop()
    _print_training(outputs, arguments)
    print(camera.summary())
    print(f"Pipeline wall time: {time.monotonic() - started:.0f} s")
    print("Step 3/3: asking the production endpoint about a few sample images",
          file=sys.stderr)
    return _demo_answers(arguments, outputs, keep_serving=args.keep_serving)


def _demo_answers(arguments: dict, outputs: dict, keep_serving: bool) -> int:
    """Sends test images of each class to the production endpoint and prints its answers."""
    from components.common.storage import read_uri
    from components.deploy.client import predict
    from components.deploy.targets.local import LocalTarget
    from components.ingest.snapshot import read_split

    target = LocalTarget(arguments["registry_uri"], arguments["model_name"],
                         arguments["serving_root"])
    dep = target.status("production")
    if dep is None:
        print("Nothing is deployed in production (see the release above).")
        return 1
    rows, _ = read_split(outputs["test_split"].path)
    sample = rows.sort_values("sha256").groupby("label").head(3).sort_values("label")
    answers = predict(dep.url, dep.name, [read_uri(u) for u in sample["uri"]])
    print()
    print(f"Production endpoint {dep.url}/v1/models/{dep.name}:predict "
          f"(version {dep.stable.version}):")
    for (_, row), a in zip(sample.iterrows(), answers, strict=True):
        mark = "ok" if a["label"] == row["label"] else "WRONG"
        print(f"  {row['key']:<28} true {row['label']:<5} -> {a['label']:<5} "
              f"p={a['probabilities'][a['label']]:.3f}  {mark}")
    if keep_serving:
        print(f"Still serving at {dep.url}; stop with `mlops deploy stop`.")
    else:
        target.delete_all()
        print("Stopped the local model servers (use --keep-serving to leave them running).")
    return 0


#: Modules that add their own verb groups: each has ``add_commands(sub)``.
COMMAND_MODULES: list[str] = ["pipelines.runs", "components.monitor.cli",
                              "components.deploy.cluster_cli", "components.govern.cli",
                              "pipelines.loop_cli", "components.ingest.cli"]

DESCRIPTION = """\
Build, deploy, monitor, govern and retrain the pet park's cats-and-dogs classifier.

The workflow's verbs, in the order you use them:
  data generate / versions   a sample data lake; published dataset versions
  run ingest / training      run a pipeline on this machine (kfp.local)
  ingest plan / part / publish / fanout
                             one ingestion over several machines or processes
  runs list / show           find a run's reports, log and outputs later
  registry …                 versions, lineage, aliases, approvals, releases
  serve                      one KServe model server for a registered version
  deploy …                   test and production deployments, canary releases
  monitor …                  capture, labels, drift, performance, reports
  govern …                   alerts, actions, audit, compliance reports
  manifests / compile / submit / schedule
                             the same workflow on Kubeflow and KServe
  demo                       all of it on the sample lake
  demo-loop                  then the closed loop: night camera, alarm, retraining, canary

Local stores live in $MLOPS_HOME, else the nearest .mlops folder up from here, else ~/.mlops.
Add --debug to see the full logs and tracebacks."""


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, unless the help already says it or there
    is none to show (required options, flags, empty values)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.help == argparse.SUPPRESS or "default" in text or action.required
                or not action.option_strings
                or action.default is None or action.default is False
                or action.default in ("", [], argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


class DescriptionFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The top-level help: the description as written, defaults as above."""


class MlopsParser(argparse.ArgumentParser):
    """Every parser and sub-parser shows each option's default in its help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = MlopsParser(prog="mlops", description=DESCRIPTION,
                         formatter_class=DescriptionFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="stream task logs and show tracebacks instead of one-line errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="sample data lake and dataset versions")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    gen = data_sub.add_parser("generate", help="write a deterministic sample data lake")
    gen.add_argument("--out", required=True,
                     help="where to write the lake: a folder, or s3://bucket/prefix")
    gen.add_argument("--n", type=int, default=2000, help="number of images")
    gen.add_argument("--size", default="64",
                     help="image side in pixels (square sample images), or a camera size WxH "
                          "(1280x720, 1920x1080, 4000x3000; or 720p, 1080p, 12mp) for "
                          "CCTV-like JPEG frames")
    gen.add_argument("--quality", type=int, default=None,
                     help="JPEG quality (default 90 for square images, 85 for camera sizes)")
    gen.add_argument("--workers", type=int, default=1,
                     help="processes rendering images (the bytes do not depend on it)")
    gen.add_argument("--seed", type=int, default=0, help="seed: the same seed writes the same "
                                                         "images")
    gen.add_argument("--condition", default="day", choices=["day", "night", "blur"],
                     help="lighting of the scene: night and blur make drifted data")
    gen.add_argument("--cat-fraction", type=float, default=0.5,
                     help="share of cats (change it for a prior shift)")
    gen.add_argument("--layout", default="folders", choices=["folders", "kaggle"],
                     help="folders: <class>/<file>; kaggle: <class>.<n>.jpg in one folder")
    gen.set_defaults(func=_cmd_generate)
    ver = data_sub.add_parser("versions", help="list published dataset versions")
    ver.add_argument("--root", default=str(mlops_home() / "datasets"),
                     help="the dataset root the ingest step publishes to")
    ver.set_defaults(func=_cmd_versions)

    run = sub.add_parser("run", help="run a pipeline locally under kfp.local")
    run_sub = run.add_subparsers(dest="pipeline", required=True)
    ing = run_sub.add_parser("ingest", help="the data-ingestion pipeline")
    from components.ingest.cli import lake_options

    lake_options(ing, split=True, draft=False)
    ing.add_argument("--outputs", default=str(mlops_home() / "pipeline-runs"),
                     help="local pipeline root for task outputs")
    ing.set_defaults(func=_cmd_run)

    tr = run_sub.add_parser("training", help="the training pipeline (ingest to release)")
    tr.add_argument("--data", required=True,
                    help="the data lake: a folder, or s3://bucket/prefix")
    tr.add_argument("--dataset-root", default="",
                    help="where snapshots go (default: $MLOPS_HOME/datasets)")
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

    reg = sub.add_parser("registry", help="list, show, trace and download registered models")
    reg.add_argument("--registry", default="",
                     help="registry URI (default: $MLOPS_HOME/registry)")
    reg_sub = reg.add_subparsers(dest="registry_command", required=True)
    r = reg_sub.add_parser("list", help="models and versions")
    r.add_argument("model", nargs="?", default="", help="only this model")
    for name, helptext in (("show", "one version"), ("lineage", "a version's lineage as JSON")):
        r = reg_sub.add_parser(name, help=helptext)
        r.add_argument("model", help="registered model name")
        r.add_argument("ref", nargs="?", default="latest", help="N, latest or @alias")
    r = reg_sub.add_parser("download", help="copy a version's files, verifying checksums")
    r.add_argument("model", help="registered model name")
    r.add_argument("ref", nargs="?", default="latest", help="N, latest or @alias")
    r.add_argument("--dest", required=True, help="folder to write the files to")
    r = reg_sub.add_parser("alias", help="point an alias at a version")
    r.add_argument("model", help="registered model name")
    r.add_argument("alias", help="alias name, e.g. staging or production")
    r.add_argument("version", type=_positive_int, help="version number")
    r.add_argument("--reason", default="set by hand", help="why, kept in the alias history")
    r = reg_sub.add_parser("approve", help="approve a version for production (manual gate)")
    r.add_argument("model", help="registered model name")
    r.add_argument("version", type=_positive_int, help="version number")
    r.add_argument("--note", default="", help="a note kept with the approval")
    r = reg_sub.add_parser("releases", help="every release decision, oldest first")
    r.add_argument("model", help="registered model name")
    r = reg_sub.add_parser("history", help="every move of an alias")
    r.add_argument("model", help="registered model name")
    r.add_argument("alias", help="alias name, e.g. production")
    reg.set_defaults(func=_cmd_registry)

    dp = sub.add_parser("deploy", help="deployments: status, release, predict, stop")
    dp.add_argument("--registry", default="", help="registry URI (default $MLOPS_HOME/registry)")
    dp.add_argument("--serving-root", default="",
                    help="local target state (default $MLOPS_HOME/deployments)")
    dp.add_argument("--model", default="pet-classifier", help="registered model name")
    dp.add_argument("--target", choices=list(TARGETS), default="local",
                    help="local model servers (default) or InferenceServices in --namespace")
    dp.add_argument("--namespace", default="", help="Kubernetes namespace (kserve target)")
    dp_sub = dp.add_subparsers(dest="deploy_command", required=True)
    d = dp_sub.add_parser("release", help="release a registered version by canary")
    d.add_argument("version", type=_positive_int, help="registry version to release")
    d.add_argument("--probes", required=True,
                   help="a labelled dataset folder (a split written by the ingest step)")
    d.add_argument("--canary-steps", default="10,50",
                   help="canary traffic percentages, increasing, each 1 to 99")
    d.add_argument("--requests-per-step", type=int, default=100,
                   help="labelled probe requests sent to each revision per step")
    d.add_argument("--max-p95-ms", type=float, default=250.0,
                   help="largest canary p95 latency in ms")
    d.add_argument("--require-approval", action="store_true",
                   help="hold the release until `mlops registry approve`")
    d.add_argument("--approval-timeout-s", type=float, default=0.0,
                   help="how long a held release waits for approval")
    dp_sub.add_parser("status", help="what runs in test and production")
    from components.deploy import local_cli

    local_cli.add_verbs(dp_sub)  # start, install-service
    d = dp_sub.add_parser("stop", help="stop the local model servers")
    d.add_argument("--env", action="append", choices=["test", "production"],
                   help="stop only this environment (repeatable; default: all)")
    d = dp_sub.add_parser("predict", help="classify image files with a deployed model")
    d.add_argument("images", nargs="+", help="image files (JPEG, PNG, …)")
    d.add_argument("--env", default="production", choices=["test", "production"],
                   help="which environment to ask")
    dp.set_defaults(func=_cmd_deploy)

    # Listed for --help only: main() hands `serve` its arguments before parsing.
    sub.add_parser("serve", help="serve a registered model with KServe (mlops serve --help)")

    demo = sub.add_parser("demo", help="generate the sample lake and run the training pipeline")
    demo.add_argument("--n", type=int, default=2000, help="images in the sample lake")
    demo.add_argument("--size", type=int, default=64, help="image side in pixels")
    demo.add_argument("--keep-serving", action="store_true",
                      help="leave the production model server running afterwards")
    demo.set_defaults(func=_cmd_demo)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the server has its own parser (mlops serve --help)
        from components.serve.server import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.debug:  # tracebacks as they are
        return args.func(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error becomes one line; --debug shows all
        code, message = explain_error(exc)
        print(f"error: {message}", file=sys.stderr)
        return code


def explain_error(exc: BaseException) -> tuple[int, str]:
    """An exit code and one line for an error: 2 for a user's mistake, 1 for a failure."""
    from components.common.storage import StorageError
    from pipelines.local import PipelineFailed

    if isinstance(exc, PipelineFailed):
        return 1, str(exc)
    if isinstance(exc, StorageError):
        return 1, f"{exc}"
    if isinstance(exc, KeyError):
        return 2, str(exc.args[0]) if exc.args else "missing key"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return 2, f"{exc.strerror or 'not found'}: {exc.filename}"
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return 2, str(exc)
    if isinstance(exc, PermissionError):
        return 1, (f"permission denied: {exc.filename or exc}. Choose a path you can write "
                   "to, or fix its permissions.")
    if isinstance(exc, IsADirectoryError):
        return 2, f"{exc.filename} is a directory; a file path is expected there."
    if isinstance(exc, NotADirectoryError):
        return 2, f"{exc.filename}: a part of this path is a file, not a directory."
    if isinstance(exc, OSError):
        # Connection errors (requests' included), full disks and the like.
        return 1, f"{exc}"
    if type(exc).__name__ == "DeploymentError":  # a deployment that could not be done
        return 1, str(exc)
    if isinstance(exc, RuntimeError):
        return 1, str(exc)
    return 1, (f"unexpected {type(exc).__name__}: {exc}. This is a bug; run the command "
               "again with --debug and report the traceback.")


if __name__ == "__main__":
    sys.exit(main())
