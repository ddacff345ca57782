"""``mlops demo`` (the sample lake through the training pipeline to production, with the
park's camera calling production meanwhile) and ``mlops demo-loop`` (the closed loop of the
pet park's story, printed as it happens)."""

from __future__ import annotations

import json
import sys
import time

from components.cli.common import Progress, check_range
from components.cli.deploy import capture_uri
from components.cli.run import print_training, run_pipeline
from components.common.paths import mlops_home


def add_commands(sub) -> None:
    """Adds ``demo`` to the top-level subparsers."""
    demo = sub.add_parser("demo", help="generate the sample lake and run the training pipeline")
    demo.add_argument("--n", type=int, default=2000, help="images in the sample lake")
    demo.add_argument("--size", type=int, default=64, help="image side in pixels")
    demo.add_argument("--keep-serving", action="store_true",
                      help="leave the production model server running afterwards")
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from components.common.storage import open_store
    from components.datagen.core import LakeSpec, generate

    check_range("--n", args.n, 1)
    check_range("--size", args.size, 16, 1024)
    home = mlops_home()
    capture_uri()  # production captures what it serves, for `mlops monitor run`
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
    from components.deploy.targets.local import LocalTarget
    from demo.camera import ProductionCamera

    production = LocalTarget(arguments["registry_uri"], arguments["model_name"],
                             arguments["serving_root"])
    camera = ProductionCamera.from_lake(production, lake_uri).start()
    try:
        outputs = run_pipeline("training", arguments, home / "pipeline-runs", args)
    finally:
        camera.stop()
    print_training(outputs, arguments)
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


def add_loop_commands(sub) -> None:
    """Adds ``demo-loop`` to the top-level subparsers."""
    p = sub.add_parser(
        "demo-loop",
        help="the closed loop: day → night camera, drift alarm, alert, retraining, canary",
        description="Serves day and then night camera frames to the production model "
                    "(after `mlops demo`), monitors every window, alerts a local webhook, "
                    "retrains with the captured night images and releases the challenger by "
                    "canary if it is better, then judges the next window.")
    p.add_argument("--day-requests", type=int, default=200,
                   help="day frames before the switch (default: 200)")
    p.add_argument("--max-night-requests", type=int, default=600,
                   help="most night frames while waiting for the alarm (default: 600)")
    p.add_argument("--after-requests", type=int, default=200,
                   help="night frames served to the retrained model (default: 200)")
    p.add_argument("--window", type=int, default=100,
                   help="requests in a monitoring window (default: 100)")
    p.add_argument("--check-every", type=int, default=50,
                   help="requests between monitoring runs (default: 50)")
    p.add_argument("--label-share", type=float, default=0.5,
                   help="share of frames a reviewer labels (default: 0.5)")
    p.add_argument("--seed", type=int, default=7, help="seed of the sample lakes and training")
    p.add_argument("--policy", default=None, help="governance policy file (default: shipped)")
    p.add_argument("--keep-serving", action="store_true",
                   help="leave the production model server running afterwards")
    p.add_argument("--json", default="", help="also write the measurements to this file")
    p.set_defaults(func=_cmd_demo_loop)


def _print_event(e: dict) -> None:
    print(f"  {e['t']:>6.1f} s  {e['requests']:>5} req  {e['kind']:<9} {e['text']}",
          flush=True)


def _print_alert(m: dict) -> None:
    from demo.webhook import alert_text

    print(f"  >> webhook {m['path']} received: {alert_text(m['body'])}", flush=True)


def _cmd_demo_loop(args) -> int:
    from demo.loop import LoopConfig, run_loop

    for option, value in (("--day-requests", args.day_requests),
                          ("--max-night-requests", args.max_night_requests),
                          ("--after-requests", args.after_requests)):
        check_range(option, value, 1)
    check_range("--window", args.window, 10)
    check_range("--check-every", args.check_every, 1, args.window)  # a run at least per window
    check_range("--label-share", args.label_share, 0.0, 1.0)
    config = LoopConfig(home=mlops_home(), day_requests=args.day_requests,
                        max_night_requests=args.max_night_requests,
                        after_requests=args.after_requests, window=args.window,
                        check_every=args.check_every, label_share=args.label_share,
                        seed=args.seed, policy_path=args.policy)
    print("The closed loop: production serves the camera; the camera turns to night mode; "
          "the monitor, governance and continuous training respond.", file=sys.stderr)
    print("Timeline:")
    try:
        result = run_loop(config, on_event=_print_event, on_alert=_print_alert)
    finally:
        if not args.keep_serving:
            from components.deploy.targets.local import LocalTarget

            s = config.stores
            LocalTarget(s["registry"], config.model_name, s["deployments"]).delete_all()
    print_summary(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in result.items() if k != "events"}, f, indent=2,
                      default=str)
    return 0


def print_summary(result: dict) -> None:
    acc = result["accuracy"]
    det = result["detection"]

    def pct(v):
        return "-" if v is None else f"{v:.3f}"

    print()
    print("Measured:")
    if det:
        print(f"  detection delay       {det['requests_after_switch']} requests after the "
              f"switch to night ({', '.join(det['checks'])})")
    else:
        print("  detection delay       no alarm")
    fa = result["false_alarms"]
    print(f"  false alarms (day)    {fa['alarms']} of {fa['windows']} day windows")
    print(f"  served accuracy       day {pct(acc['day_before'])}; night before retraining "
          f"{pct(acc['night_before'])}; night after {pct(acc['night_after'])}")
    rel = result.get("release")
    if rel:
        gate = rel.get("gate") or {}
        recent = (gate.get("recent") or {}).get("recent_accuracy")
        if recent:
            print(f"  retraining gate       {'blessed' if gate.get('blessed') else 'not blessed'}"
                  f": recent-production test slice {recent['champion']:.3f} -> "
                  f"{recent['challenger']:.3f} ({gate['recent']['recent_images']} images)")
        print(f"  release decision      {rel.get('decision') or 'none'}"
              + (f" (version {rel['version']})" if rel.get("version") else "")
              + "".join(f"; {s['percent']}%: canary {pct(s['canary_accuracy'])} vs stable "
                        f"{pct(s['stable_accuracy'])}" for s in rel.get("steps", [])))
    after = result.get("after")
    if after:
        from demo.loop import Loop

        print(f"  next window           {Loop._summary(after)}")
    morning = result.get("day_after")
    if morning:
        from demo.loop import Loop

        print(f"  back to day           {Loop._summary(morning)}"
              + (f"; alarms: {', '.join(morning['alarms'])}" if morning.get("alarms") else ""))
    print(f"  alerts received       {len(result['alerts_received'])}")
    print(f"  production            version {result['version_before']} -> "
          f"{result['version_after']}")
    print(f"  loop wall time        {result['wall_s']:.0f} s")
    if result.get("report"):
        for kind, path in result["report"].items():
            print(f"  compliance report     {kind}: {path}")
