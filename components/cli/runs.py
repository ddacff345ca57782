"""``mlops runs list | show``: the pipeline runs started from this command line, found by the
run records :mod:`pipelines.runs` writes."""

from __future__ import annotations

from pathlib import Path

from components.common.paths import mlops_home


def add_commands(sub) -> None:
    """Adds the ``runs`` verb group to the top-level subparsers."""
    runs = sub.add_parser("runs", help="pipeline runs started from this command line: "
                                       "list them, show one's outputs and reports")
    runs.add_argument("--runs-dir", default="",
                      help="where run records are kept (default: $MLOPS_HOME/runs)")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    ls = runs_sub.add_parser("list", help="recorded runs, oldest first")
    ls.add_argument("--last", type=int, default=20, help="show only the last N runs")
    ls.set_defaults(func=_cmd_list)
    show = runs_sub.add_parser("show", help="one run: status, log, arguments, outputs")
    show.add_argument("run", nargs="?", default="latest",
                      help="a run id (or a unique prefix), or 'latest'")
    show.set_defaults(func=_cmd_show)


def _runs_dir(args) -> Path:
    return Path(args.runs_dir) if args.runs_dir else mlops_home() / "runs"


def _cmd_list(args) -> int:
    from pipelines.runs import list_records

    records = list_records(_runs_dir(args))
    if not records:
        print(f"No pipeline run recorded under {_runs_dir(args)}: runs started with "
              "`mlops run …` or `mlops demo` are.")
        return 0
    for r in records[-args.last:]:
        extra = (f"  failed at {r.get('failed_step')}: {r.get('error')}"
                 if r.get("status") == "failed" else f"  {r.get('error')}"
                 if r.get("status") in ("interrupted", "killed", "nothing_new") else "")
        print(f"{r['run_id']:<48} {r['started']}  {r.get('status', '?'):<9} "
              f"{r.get('duration_s', '-'):>7} s{extra}")
    return 0


def _cmd_show(args) -> int:
    from pipelines.runs import find_record

    r = find_record(_runs_dir(args), args.run)
    print(f"Run {r['run_id']} (pipeline '{r['pipeline']}'): {r.get('status')}, "
          f"started {r['started']}, {r.get('duration_s', '-')} s")
    if r.get("status") == "failed":
        print(f"  failed step: {r.get('failed_step')}: {r.get('error')}")
    elif r.get("status") == "nothing_new":
        print(f"  ended at {r.get('failed_step')}: {r.get('error')}")
    print(f"  log: {r.get('log')}")
    if r.get("run_dir"):
        print(f"  task outputs: {r['run_dir']}")
    if r.get("reports"):
        print("  reports:")
        for name, path in sorted(r["reports"].items()):
            print(f"    {name:<28} {path}")
    print("  arguments:")
    for k, v in sorted(r.get("arguments", {}).items()):
        print(f"    {k} = {v}")
    outputs = r.get("outputs") or {}
    if outputs:
        print("  outputs:")
    for name, v in sorted(outputs.items()):
        if isinstance(v, dict) and "path" in v:
            print(f"    {name:<18} {v.get('view') or v['path']}")
        else:
            print(f"    {name:<18} {v}")
    return 0
