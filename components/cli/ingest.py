"""``mlops ingest …``: a fanned-out ingestion by hand, on any machines that share the stores.

``plan`` cuts the lake into key ranges, ``part`` ingests one range (run each wherever you
like: other machines, a batch system), ``publish`` publishes the one dataset version;
``fanout`` does all three here, the parts as separate processes. The version is the one
``mlops run ingest`` publishes for the same lake.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from components.cli.common import OptionError, check_range, check_whole_number, option_error
from components.common.paths import mlops_home


def _config(args, *, with_split: bool = False):
    from components.ingest.core import IngestConfig, absolute_uri, parse_aliases, parse_classes

    if args.workers < 0:
        raise OptionError(f"--workers {args.workers}: expected 0 (one per CPU core) or more.")
    extra = {"test_fraction": args.test_fraction} if with_split else {}
    if _max_pixels(args):
        extra["max_pixels"] = args.max_pixels
    return IngestConfig(layout=args.layout,
                        labels_csv=absolute_uri(args.labels_csv) if args.labels_csv else None,
                        workers=args.workers, classes=parse_classes(args.classes),
                        aliases=parse_aliases(args.label_aliases), draft=not args.no_draft,
                        **extra)


def _max_pixels(args) -> int:
    """``--max-pixels``, checked, and exported as MLOPS_MAX_PIXELS for the steps and parts this
    command starts (kfp.local tasks and `mlops ingest part` processes inherit it); 0 if not
    given."""
    if not getattr(args, "max_pixels", 0):
        return 0
    check_range("--max-pixels", args.max_pixels, 1)
    os.environ["MLOPS_MAX_PIXELS"] = str(args.max_pixels)
    return args.max_pixels


def _root(args) -> str:
    return args.dataset_root or str(mlops_home() / "datasets")


def _print_plan(plan: dict) -> None:
    print(f"Plan {plan['plan_id']}: {len(plan['parts'])} parts")
    for p in plan["parts"]:
        end = p["end"] if p["end"] is not None else "(end)"
        print(f"  part {p['index']:>3}  {p['objects']:>8} objects  {p['bytes'] / 2**20:>9.1f} "
              f"MiB  from {p['start'] or '(start)'!r} to {end!r}")


def _print_result(result) -> None:
    r = result.report
    print(f"Dataset version: {result.version} "
          f"({'published' if result.created else 'already published'})")
    print(f"  {r['accounting']}")
    if r.get("parts"):
        p = r["parts"]
        print(f"  parts merged {p['merged']}" + (f"; parts that wrote nothing, read here: "
                                                 f"{p['missing']}" if p["missing"] else ""))
    print(f"  decoded by this step: {r['decoded']}; snapshot: {result.snapshot_uri}")


def _cmd_plan(args) -> int:
    from components.ingest.fanout import plan_parts

    plan = plan_parts(args.data, _root(args), check_whole_number("--parts", args.parts),
                      _config(args))
    _print_plan(plan)
    print(f"Next: mlops ingest part --plan {plan['plan_id']} --index I (each I), then "
          f"mlops ingest publish --plan {plan['plan_id']} (same --data and options).")
    return 0


def _cmd_part(args) -> int:
    from components.ingest.fanout import ingest_part, read_plan

    config = _config(args)
    plan = read_plan(args.data, _root(args), args.plan, config)
    if not 0 <= args.index < len(plan["parts"]):
        raise OptionError(f"--index {args.index}: plan {args.plan} has parts 0 to "
                         f"{len(plan['parts']) - 1}.")
    s = ingest_part(args.data, _root(args), plan["parts"][args.index], config)
    print(f"Part {s['index']} of plan {s['plan_id']}: {s['objects']} objects, {s['decoded']} "
          f"decoded, {s['cache_hits']} from cache, {s['stored']} stored -> {s['part_uri']}")
    return 0


def _cmd_publish(args) -> int:
    from components.ingest.core import ingest

    _print_result(ingest(args.data, _root(args), _config(args, with_split=True),
                         plan_id=args.plan))
    return 0


def _cmd_fanout(args) -> int:
    from components.ingest.core import available_cpus, ingest
    from components.ingest.fanout import plan_parts

    check_whole_number("--parts", args.parts)
    processes = check_whole_number("--processes", args.processes) if args.processes else min(
        args.parts, available_cpus())
    config = _config(args, with_split=True)
    root = _root(args)
    t0 = time.monotonic()
    plan = plan_parts(args.data, root, args.parts, config)
    _print_plan(plan)
    # Each part runs as its own `mlops ingest part` process, as a pod would; they share
    # this machine's cores, so each gets its share as decoding workers unless told.
    workers = args.workers or max(1, available_cpus() // processes)
    common = ["--data", args.data, "--dataset-root", root, "--layout", args.layout,
              "--labels-csv", args.labels_csv, "--workers", str(workers),
              "--classes", args.classes, "--label-aliases", args.label_aliases,
              *(["--no-draft"] if args.no_draft else [])]
    pending = list(range(len(plan["parts"])))
    running: dict[int, subprocess.Popen] = {}
    failed = []
    while pending or running:
        while pending and len(running) < processes:
            index = pending.pop(0)
            running[index] = subprocess.Popen(
                [sys.executable, "-m", "components.cli", "ingest", "part", "--plan",
                 plan["plan_id"], "--index", str(index), *common],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ})
        index, proc = next(iter(running.items()))
        out, _ = proc.communicate()
        del running[index]
        print("  " + (out.strip().splitlines() or ["(no output)"])[-1])
        if proc.returncode:
            failed.append(index)
    if failed:
        print(f"  parts {failed} failed; the publish step reads their objects itself.")
    result = ingest(args.data, root, config, plan_id=plan["plan_id"])
    _print_result(result)
    print(f"  wall time {time.monotonic() - t0:.1f} s ({processes} part processes at once)")
    return 0


def lake_options(parser: argparse.ArgumentParser, *, split: bool = False,
                 draft: bool = True, version: bool = False) -> None:
    """The options that say which lake to ingest and how: the one definition that
    ``mlops ingest``, ``mlops run ingest`` and ``mlops run training`` share.

    Args:
        split: Add ``--test-fraction`` (the steps that publish a version).
        draft: Add ``--no-draft``.
        version: Add ``--dataset-version`` (an already published version instead of a lake):
            ``--data`` is then not required, and :func:`lake_arguments` wants one of the two.
    """
    parser.add_argument("--data", required=not version, default="",
                        help="the data lake: a folder, or s3://bucket/prefix")
    if version:
        parser.add_argument("--dataset-version", default="",
                            help="train on this published dataset version (`mlops data "
                                 "versions` lists them) instead of ingesting --data")
    parser.add_argument("--dataset-root", default="",
                        help="where snapshots go (default: $MLOPS_HOME/datasets)")
    parser.add_argument("--labels-csv", default="",
                        help="a key,label CSV (path or URI) for lakes without class folders")
    parser.add_argument("--layout", default="auto",
                        choices=["auto", "folders", "kaggle", "csv"],
                        help="how labels are read: from folders, kaggle-style names or a CSV")
    parser.add_argument("--workers", type=int, default=0,
                        help="decoding processes of this step; 0 = one per CPU core")
    parser.add_argument("--classes", default="cats,dogs",
                        help="the declared classes; images labelled otherwise are quarantined")
    parser.add_argument("--label-aliases", default="",
                        help="alias=class pairs, e.g. cat=cats (default: cat=cats,dog=dogs)")
    parser.add_argument("--max-pixels", type=int, default=0,
                        help="largest image accepted (width x height); larger ones are "
                             "quarantined (default: MLOPS_MAX_PIXELS, else 50,000,000); serve "
                             "with the same limit (mlops serve --max-pixels)")
    if draft:
        parser.add_argument("--no-draft", action="store_true",
                            help="decode JPEGs at full size (the same for plan, parts and "
                                 "publish)")
    if split:
        parser.add_argument("--test-fraction", type=float, default=0.2,
                            help="share of each class held out for testing")


def lake_arguments(args) -> dict:
    """Checks the options of :func:`lake_options` before any work starts and returns them as
    the ingestion parameters of a pipeline (``mlops run ingest`` and ``run training``)."""
    from components.ingest.core import IngestConfig, absolute_uri, parse_aliases, parse_classes

    version = getattr(args, "dataset_version", "")
    root = _root(args)
    if version:
        from components.ingest.snapshot import load_snapshot

        if args.data:
            raise OptionError(f"--data {args.data!r} and --dataset-version {version!r}: "
                              "give one of them (a lake to ingest, or a published version).")
        load_snapshot(root, version)  # published? (names `mlops data versions` if not)
        return {"data_uri": "", "dataset_root": root, "dataset_version": version}
    if not args.data:
        raise OptionError("no data: give --data LAKE (a folder or s3://bucket/prefix) or "
                          "--dataset-version VERSION (`mlops data versions` lists them).")
    check_range("--test-fraction", args.test_fraction, 0.0, 1.0, low_open=True)
    if args.test_fraction >= 1.0:
        raise option_error("--test-fraction", args.test_fraction, "a share between 0 and 1")
    check_range("--workers", args.workers, 0)
    if args.layout == "csv" and not args.labels_csv:
        raise OptionError("--layout csv needs --labels-csv FILE (a key,label CSV).")
    if args.labels_csv and args.layout not in ("auto", "csv"):
        raise OptionError(f"--layout {args.layout} and --labels-csv: the labels come from the "
                          "CSV (layout csv); leave --layout out, or leave --labels-csv out.")
    IngestConfig(classes=parse_classes(args.classes), aliases=parse_aliases(
        args.label_aliases))  # checks --classes and --label-aliases
    _max_pixels(args)  # the pipeline's steps read it from MLOPS_MAX_PIXELS
    return {"data_uri": args.data, "dataset_root": root,
            "labels_csv": absolute_uri(args.labels_csv) if args.labels_csv else "",
            "layout": args.layout, "test_fraction": args.test_fraction,
            "workers": args.workers, "classes": args.classes,
            "label_aliases": args.label_aliases}


def add_commands(sub) -> None:
    """Adds the ``ingest`` verb group to the top-level subparsers."""
    group = sub.add_parser("ingest", help="a fanned-out ingestion: plan key ranges, ingest "
                                          "each part anywhere, publish one version")
    verbs = group.add_subparsers(dest="ingest_command", required=True)
    plan = verbs.add_parser("plan", help="cut the lake into key ranges of about equal bytes")
    lake_options(plan)
    plan.add_argument("--parts", type=int, required=True, help="how many parts at most")
    plan.set_defaults(func=_cmd_plan)
    part = verbs.add_parser("part", help="ingest one part of a plan (publishes nothing)")
    lake_options(part)
    part.add_argument("--plan", required=True, help="the plan id `mlops ingest plan` printed")
    part.add_argument("--index", type=int, required=True, help="which part (0, 1, …)")
    part.set_defaults(func=_cmd_part)
    publish = verbs.add_parser("publish", help="publish the plan's dataset version once")
    lake_options(publish, split=True)
    publish.add_argument("--plan", required=True, help="the plan id `mlops ingest plan` printed")
    publish.set_defaults(func=_cmd_publish)
    fan = verbs.add_parser("fanout", help="plan, every part as its own process, publish")
    lake_options(fan, split=True)
    fan.add_argument("--parts", type=int, required=True, help="how many parts at most")
    fan.add_argument("--processes", type=int, default=0,
                     help="parts at once; 0 = as many as CPU cores, at most --parts")
    fan.set_defaults(func=_cmd_fanout)
