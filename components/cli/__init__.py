"""``mlops``: the command line for people. Library code logs; the command line prints.

This module only assembles: each verb group lives in a module of its own
(``components/cli/<group>.py`` with ``add_commands(sub)``), and what they share (the help
formatter, the option checks, the error table) in :mod:`components.cli.common`. A verb group
module imports what its handlers need inside the handlers, so ``mlops --help`` stays quick.
"""

from __future__ import annotations

import logging
import os
import sys

from components.cli import (
    cluster,
    data,
    demo,
    deploy,
    govern,
    ingest,
    monitor,
    registry,
    run,
    runs,
    trace,
)
from components.cli.common import MlopsParser, explain_error
from components.common.helptext import DescriptionFormatter

DESCRIPTION = """\
Build, deploy, monitor, govern and retrain the pet park's cats-and-dogs classifier.

The workflow's verbs, in the order you use them:
  data generate / versions   a sample data lake; published dataset versions
  run ingest / training / continuous-training / monitoring
                             run a pipeline on this machine (kfp.local)
  ingest plan / part / publish / fanout
                             one ingestion over several machines or processes
  runs list / show           find a run's reports, log and outputs later
  registry …                 versions, lineage, aliases, approvals, releases
  serve                      one KServe model server for a registered version
  deploy …                   test and production deployments, canary releases
  monitor …                  capture, labels, drift, performance, reports
  govern …                   alerts, actions, audit, compliance reports; a person's
                             retrain, rollback and test alert
  trace REQUEST_ID           where an answer came from: model, data, code, run, monitoring
  manifests / compile / submit / schedule
                             the same workflow on Kubeflow and KServe
  demo                       all of it on the sample lake
  demo-loop                  then the closed loop: night camera, alarm, retraining, canary

Local stores live in $MLOPS_HOME, else the nearest .mlops folder up from here, else ~/.mlops.
Add --debug to see the full logs and tracebacks."""


def _add_serve(sub) -> None:
    # Listed for --help only: main() hands `serve` its arguments before parsing.
    sub.add_parser("serve", help="serve a registered model with KServe (mlops serve --help)")


#: The verb groups, in the order ``mlops --help`` lists them.
VERB_GROUPS = (data.add_commands, run.add_commands, registry.add_commands,
               deploy.add_commands, _add_serve, demo.add_commands, runs.add_commands,
               monitor.add_commands, cluster.add_commands, govern.add_commands,
               demo.add_loop_commands, ingest.add_commands, trace.add_commands)


def build_parser() -> MlopsParser:
    parser = MlopsParser(prog="mlops", description=DESCRIPTION,
                         formatter_class=DescriptionFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="stream task logs and show tracebacks instead of one-line errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_commands in VERB_GROUPS:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the server has its own parser (mlops serve --help)
        from components.serve.server import main as serve_main

        return serve_main(argv[1:])
    home = os.environ.get("MLOPS_HOME", "")
    if home and os.path.exists(home) and not os.path.isdir(home):
        print(f"error: MLOPS_HOME={home} is a file; point it at a folder (created if missing)"
              " or unset it.", file=sys.stderr)
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the usage of the sub-command that was given them, not the top level's
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.debug:  # tracebacks as they are
        return args.func(args)
    try:
        return args.func(args)
    except BrokenPipeError:  # `mlops registry lineage | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error becomes one line; --debug shows all
        code, message = explain_error(exc)
        print(f"error: {message}", file=sys.stderr)
        return code
