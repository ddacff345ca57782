"""``mlops``: the command line for people. Library code logs; this module prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def mlops_home() -> Path:
    """Where local stores live by default: ``$MLOPS_HOME``, else ``~/.mlops``."""
    return Path(os.environ.get("MLOPS_HOME") or Path.home() / ".mlops").expanduser().resolve()


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
    from components.datagen.core import LakeSpec, generate

    spec = LakeSpec(n=args.n, size=args.size, seed=args.seed, condition=args.condition,
                    cat_fraction=args.cat_fraction, layout=args.layout)
    store = open_store(args.out)
    counts = generate(spec, store, progress=Progress("generating"))
    print(f"Wrote {spec.n} images ({', '.join(f'{v} {k}s' for k, v in counts.items())}) "
          f"to {store.uri}")
    return 0


def _cmd_versions(args) -> int:
    from components.ingest.core import list_versions

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
    print(f"  report:   {report.path}")
    with open(report.path) as f:
        accounting = next((line.strip("*\n") for line in f if line.startswith("**")), "")
    print(f"  {accounting}")


def _cmd_run(args) -> int:
    from pipelines.local import run_local

    home = mlops_home()
    if args.pipeline == "ingest":
        arguments = {"data_uri": args.data,
                     "dataset_root": args.dataset_root or str(home / "datasets"),
                     "labels_csv": args.labels_csv, "layout": args.layout,
                     "test_fraction": args.test_fraction, "workers": args.workers}
        print(f"Running pipeline 'ingest' locally (kfp.local, outputs under {args.outputs})",
              file=sys.stderr)
        outputs = run_local("ingest", arguments, args.outputs)
        _print_ingest(outputs)
    return 0


def _cmd_compile(args) -> int:
    if args.image:
        os.environ["MLOPS_COMPONENT_IMAGE"] = args.image
    if args.storage_secret:
        os.environ["MLOPS_STORAGE_SECRET"] = args.storage_secret
    if "components.settings" in sys.modules:
        raise SystemExit("compile must run before the components are imported; run it alone.")
    from pipelines.local import compile_all

    for path in compile_all(args.out, args.pipelines or None):
        print(f"compiled {path}")
    return 0


def _cmd_submit(args) -> int:
    import kfp

    from pipelines import load

    arguments = {}
    for item in args.arg:
        if "=" not in item:
            raise SystemExit(f"Invalid --arg {item!r}. Expect NAME=VALUE.")
        key, value = item.split("=", 1)
        try:  # numbers, booleans, lists as JSON; anything else is a string
            arguments[key] = json.loads(value)
        except json.JSONDecodeError:
            arguments[key] = value
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        client = kfp.Client(host=args.host, namespace=args.namespace)
        run = client.create_run_from_pipeline_func(load(args.pipeline), arguments=arguments,
                                                   experiment_name=args.experiment)
    except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
        print(f"error: cannot submit to the Kubeflow Pipelines API at {args.host}: {exc}. "
              "Check --host (port-forward ml-pipeline-ui, or the KFP endpoint) and your "
              "credentials.", file=sys.stderr)
        return 1
    print(f"Submitted run {run.run_id} to {args.host}")
    return 0


def _cmd_demo(args) -> int:
    from components.common.storage import open_store
    from components.datagen.core import LakeSpec, generate
    from pipelines.local import run_local

    home = mlops_home()
    lake_uri = str(home / "lake" / "petpark")
    lake = open_store(lake_uri)
    spec = LakeSpec(n=args.n, size=args.size, seed=0)
    if sum(1 for _ in lake.list()) != spec.n:
        print(f"Step 1/2: generating the sample data lake ({spec.n} images) at {lake.uri}",
              file=sys.stderr)
        generate(spec, lake, progress=Progress("generating"))
    else:
        print(f"Step 1/2: sample data lake already at {lake.uri}", file=sys.stderr)
    print("Step 2/2: running the ingestion pipeline locally (kfp.local)", file=sys.stderr)
    outputs = run_local("ingest", {"data_uri": lake_uri,
                                   "dataset_root": str(home / "datasets")},
                        home / "pipeline-runs")
    _print_ingest(outputs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="sample data lake and dataset versions")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    gen = data_sub.add_parser("generate", help="write a deterministic sample data lake")
    gen.add_argument("--out", required=True, help="store URI: s3://bucket/prefix or a path")
    gen.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    gen.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--condition", default="day", choices=["day", "night", "blur"])
    gen.add_argument("--cat-fraction", type=float, default=0.5,
                     help="class prior of cats (default 0.5; change it for prior shift)")
    gen.add_argument("--layout", default="folders", choices=["folders", "kaggle"])
    gen.set_defaults(func=_cmd_generate)
    ver = data_sub.add_parser("versions", help="list published dataset versions")
    ver.add_argument("--root", default=str(mlops_home() / "datasets"))
    ver.set_defaults(func=_cmd_versions)

    run = sub.add_parser("run", help="run a pipeline locally under kfp.local")
    run_sub = run.add_subparsers(dest="pipeline", required=True)
    ing = run_sub.add_parser("ingest", help="the data-ingestion pipeline")
    ing.add_argument("--data", required=True, help="data lake URI")
    ing.add_argument("--dataset-root", default="",
                     help="where snapshots go (default $MLOPS_HOME/datasets)")
    ing.add_argument("--labels-csv", default="", help="URI of a key,label CSV")
    ing.add_argument("--layout", default="auto", choices=["auto", "folders", "kaggle", "csv"])
    ing.add_argument("--test-fraction", type=float, default=0.2)
    ing.add_argument("--workers", type=int, default=8)
    ing.add_argument("--outputs", default=str(mlops_home() / "pipeline-runs"),
                     help="local pipeline root for task outputs")
    ing.set_defaults(func=_cmd_run)

    comp = sub.add_parser("compile", help="compile every pipeline to KFP IR YAML")
    comp.add_argument("--out", default="compiled")
    comp.add_argument("--image", default="", help="component image (default: settings)")
    comp.add_argument("--storage-secret", default="", help="Kubernetes Secret with S3 keys")
    comp.add_argument("pipelines", nargs="*", help="names (default: all)")
    comp.set_defaults(func=_cmd_compile)

    sb = sub.add_parser("submit", help="submit a pipeline run to a Kubeflow Pipelines API")
    sb.add_argument("pipeline")
    sb.add_argument("--host", required=True, help="KFP API, e.g. http://localhost:8080")
    sb.add_argument("--namespace", default=None)
    sb.add_argument("--experiment", default="pet-classifier")
    sb.add_argument("--arg", action="append", default=[], help="NAME=VALUE, repeatable")
    sb.set_defaults(func=_cmd_submit)

    demo = sub.add_parser("demo", help="generate the sample lake and run the pipeline")
    demo.add_argument("--n", type=int, default=2000)
    demo.add_argument("--size", type=int, default=64)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # Bad input: say what to fix, without a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a failed pipeline task; its log is printed above
        print(f"error: {exc} (see the task log above for the cause)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
