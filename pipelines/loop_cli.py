"""``mlops demo-loop``: the closed loop of the pet park's story, printed as it happens."""

from __future__ import annotations

import json
import sys


def add_commands(sub) -> None:
    p = sub.add_parser(
        "demo-loop",
        help="the closed loop: day → night camera, drift alarm, alert, retraining, canary",
        description="Serves day and then night camera frames to the production model "
                    "(after `mlops demo`), monitors every window, alerts a local webhook, "
                    "retrains with the captured night images and releases the challenger by "
                    "canary if it is better, then judges the next window.")
    p.add_argument("--day-requests", type=int, default=200,
                   help="day frames before the switch (default 200)")
    p.add_argument("--max-night-requests", type=int, default=600,
                   help="most night frames while waiting for the alarm (default 600)")
    p.add_argument("--after-requests", type=int, default=200,
                   help="night frames served to the retrained model (default 200)")
    p.add_argument("--window", type=int, default=100,
                   help="requests in a monitoring window (default 100)")
    p.add_argument("--check-every", type=int, default=50,
                   help="requests between monitoring runs (default 50)")
    p.add_argument("--label-share", type=float, default=0.5,
                   help="share of frames a reviewer labels (default 0.5)")
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
    from components.common.paths import mlops_home
    from demo.loop import LoopConfig, run_loop

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
    print(f"  alerts received       {len(result['alerts_received'])}")
    print(f"  production            version {result['version_before']} -> "
          f"{result['version_after']}")
    print(f"  loop wall time        {result['wall_s']:.0f} s")
    if result.get("report"):
        for kind, path in result["report"].items():
            print(f"  compliance report     {kind}: {path}")
