"""A week of the park: seven simulated days, each a day period then a night period, through
the capturing model server, the monitor and governance; one real change (the camera is
knocked and looks down the gravel path) part-way through day 5's day period, which stays.

Measured: false alarms per day (windows with no moved frame that alarm on a drift,
prediction-drift or performance check), the alerts the product owner and the QA expert
received, the retraining episodes governance recorded, the detection delay of the real change
in each context (requests of that context served from the change until a check of that
context alarms), and the served accuracy per context per day.

Everything is the closed loop's (:mod:`demo.loop`): production is a KServe model server
started by the local deployment target with capture on, trained by ``bootstrap_production``
on a day-and-night lake so that its reference has both contexts; the monitor judges the last
``window`` requests every ``check_every`` requests (``run_monitoring``, the shipped policy
governs every verdict) and the people's webhooks are a receiver on 127.0.0.1. A reviewer
labels a share of the frames, late (the labels of a batch arrive ``label_lag`` checks after
it was served). Governance runs without a retraining launcher: a retraining trigger is
recorded as an episode (what ``mlops govern start-episode`` would start) and no
continuous-training run is started, so the week measures the monitor and the policy, not a
retrain.

    nice -n 10 .venv/bin/python bench/week.py            # the full week, written to docs
    nice -n 10 .venv/bin/python bench/week.py --quick    # a smoke run (3 short days)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchdoc import publish
from components.deploy.targets.local import LocalTarget
from demo.loop import ALERTING_KINDS, Loop, LoopConfig, bootstrap_production, people_webhooks

CONTEXTS = ("day", "night")
_LOAD = os.getloadavg()


def run_week(loop: Loop, receiver, days: int, period: int, change_day: int,
             change_after: int, label_lag: int, on_line=print) -> dict:
    """Serves the week through ``loop`` (started), judging and governing every
    ``check_every`` requests; returns every window's record and the served frames' days."""
    cfg = loop.cfg
    windows: list[dict] = []
    day_of: list[int] = []  # the day of each served request, in loop.served's order
    pending: list[list] = []  # served batches whose labels have not arrived yet
    change = {"first": {}}  # the first moved request's index, per context
    for day in range(1, days + 1):
        for condition in CONTEXTS:
            done = 0
            while done < period:
                n = min(cfg.check_every, period - done)
                batch = []
                # The change falls where it falls: a check's requests may be split by it.
                cut = change_after - done if (day, condition) == (change_day, "day") else \
                    (n if day < change_day else 0)
                usual = max(0, min(n, cut))
                for view, k in (("usual", usual), ("moved", n - usual)):
                    if not k:
                        continue
                    if view == "moved" and condition not in change["first"]:
                        change["first"][condition] = len(loop.served)
                    part = loop.serve(condition, k, view=view)
                    day_of.extend([day] * len(part))
                    batch += part
                done += n
                pending.append(batch)
                while len(pending) > label_lag:
                    loop.label(pending.pop(0))
                if len(loop.served) >= cfg.window:
                    windows.append(judge(loop, receiver, day, condition))
                    on_line(_line(windows[-1]))
    return {"windows": windows, "day_of": day_of, "change": change}


def judge(loop: Loop, receiver, day: int, period: str) -> dict:
    """One monitoring run over the last ``window`` requests, governed (no launcher)."""
    cfg = loop.cfg
    before = len(receiver.messages)
    verdict, actions, entry = loop.monitor(cfg.window, retrain=False)
    window = loop.served[-cfg.window:]
    mix = Counter(f"{s.condition}/{s.view}" for s in window)
    alarms = [c for c in verdict.checks if c.status == "alarm"]
    received = receiver.messages[before:]
    return {
        "day": day, "period": period, "requests": len(loop.served), "mix": dict(mix),
        "moved": sum(s.view == "moved" for s in window), "status": verdict.status,
        "labelled": verdict.n_labelled,
        "alerting": [c.key for c in alarms if c.kind in ALERTING_KINDS],
        "other_alarms": [c.key for c in alarms if c.kind not in ALERTING_KINDS],
        "alarm_details": [{"check": c.key, "kind": c.kind, "context": c.context,
                           "value": c.value, "threshold": c.threshold, "detail": c.detail,
                           "p_val": (c.extra or {}).get("p_val")} for c in alarms],
        "actions": [{k: a.get(k) for k in ("action", "rule", "episode", "detail")}
                    for a in actions],
        "received": [{"path": m["path"], "body": m["body"]} for m in received],
        "served_accuracy": entry["served_accuracy"],
    }


def _line(w: dict) -> str:
    mix = ", ".join(f"{k} {v}" for k, v in sorted(w["mix"].items()))
    acts = ", ".join(sorted({a["action"] for a in w["actions"]})) or "-"
    return (f"day {w['day']} {w['period']:<5} @{w['requests']:>5}: {w['status']:<7} [{mix}] "
            f"alarms {', '.join(w['alerting'] + w['other_alarms']) or '-'}; actions {acts}; "
            f"{len(w['received'])} messages")


def summarise(loop: Loop, week: dict, days: int) -> dict:
    """Per day: false alarms, true alarm windows, alerts, episodes, served accuracy; and the
    detection delay of the change in each context."""
    windows, day_of, change = week["windows"], week["day_of"], week["change"]
    per_day = []
    for day in range(1, days + 1):
        ws = [w for w in windows if w["day"] == day]
        clean = [w for w in ws if not w["moved"]]
        received = [m for w in ws for m in w["received"]]
        served = [s for s, d in zip(loop.served, day_of, strict=True) if d == day]
        acc = {}
        for ctx in CONTEXTS:
            part = [s for s in served if s.condition == ctx]
            acc[ctx] = (round(sum(s.truth == s.predicted for s in part) / len(part), 4)
                        if part else None)
        moved = [s for s in served if s.view == "moved"]
        per_day.append({
            "day": day, "requests": len(served), "windows": len(ws),
            "clean_windows": len(clean),
            "false_alarms": sum(bool(w["alerting"]) for w in clean),
            "false_alarm_checks": dict(Counter(k for w in clean for k in w["alerting"])),
            "other_alarms_clean": sum(bool(w["other_alarms"]) for w in clean),
            "other_alarm_checks": dict(Counter(k for w in clean for k in w["other_alarms"])),
            "alarm_windows_moved": sum(bool(w["alerting"]) for w in ws if w["moved"]),
            "moved_windows": len(ws) - len(clean),
            "alerts_product_owner": sum(m["path"].endswith("/product-owner")
                                        for m in received),
            "alerts_qa": sum(m["path"].endswith("/qa-expert") for m in received),
            "alert_texts": [_text(m) for m in received],
            "episodes": [a["episode"] for w in ws for a in w["actions"]
                         if a["action"] == "retrain"],
            "accuracy": acc,
            "accuracy_moved": (round(sum(s.truth == s.predicted for s in moved) / len(moved),
                                     4) if moved else None),
        })
    detection = {}
    for ctx, first in change["first"].items():
        hit = next((w for w in windows if w["requests"] > first and any(
            k.endswith(f"[{ctx}]") for k in w["alerting"])), None)
        if hit is None:
            detection[ctx] = {"first_request": first, "delay": None, "checks": []}
            continue
        # Requests of this context served from its first moved one to the alarm's window end.
        delay = sum(1 for s in loop.served[first:hit["requests"]] if s.condition == ctx)
        detection[ctx] = {"first_request": first, "delay": delay, "day": hit["day"],
                          "checks": [k for k in hit["alerting"] if k.endswith(f"[{ctx}]")]}
    false_details = [{"day": w["day"], "period": w["period"], "requests": w["requests"],
                      "alarms": [d for d in w["alarm_details"]
                                 if d["kind"] in ALERTING_KINDS]}
                     for w in windows if not w["moved"] and w["alerting"]]
    return {"per_day": per_day, "detection": detection, "false_alarm_details": false_details}


def _text(message: dict) -> str:
    from demo.webhook import alert_text  # the one-line form the demo prints

    who = "product owner" if message["path"].endswith("/product-owner") else "QA expert"
    return f"{who}: {alert_text(message['body'])}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 3 short days, change on day 2, not written to docs")
    parser.add_argument("--home", default="", help="stores folder (default: a temporary one)")
    parser.add_argument("--days", type=int, default=7, help="simulated days")
    parser.add_argument("--period", type=int, default=300,
                        help="requests in each day period and each night period")
    parser.add_argument("--change-day", type=int, default=5,
                        help="the day the camera is moved (it stays moved)")
    parser.add_argument("--change-after", type=int, default=125,
                        help="requests of that day's day period served before the change")
    parser.add_argument("--window", type=int, default=100, help="requests per window")
    parser.add_argument("--check-every", type=int, default=50,
                        help="requests between monitoring runs")
    parser.add_argument("--label-share", type=float, default=0.5,
                        help="share of frames a reviewer labels")
    parser.add_argument("--label-lag", type=int, default=1,
                        help="checks between a batch being served and its labels arriving")
    parser.add_argument("--lake", type=int, default=1000,
                        help="production's training lake: images of each context")
    parser.add_argument("--epochs", type=int, default=8, help="production's training epochs")
    parser.add_argument("--backend", default="", help="drift backend (default: the monitor's)")
    parser.add_argument("--seed", type=int, default=11, help="camera and labelling seed")
    parser.add_argument("--no-write", action="store_true", help="do not write docs")
    args = parser.parse_args()
    if args.quick:
        args.days, args.period, args.change_day, args.change_after = 3, 100, 2, 50
        args.lake, args.epochs = 300, 4
    size = 32
    home = Path(args.home or tempfile.mkdtemp(prefix="bench-week-"))
    os.environ["MLOPS_HOME"] = str(home)
    t0 = time.monotonic()
    prod = bootstrap_production(home, n=args.lake, size=size, epochs=args.epochs,
                                conditions=CONTEXTS)
    bootstrap_s = time.monotonic() - t0
    print(f"production v{prod['version']} (day+night test accuracy "
          f"{prod['test_accuracy']:.3f}) in {bootstrap_s:.0f} s", flush=True)
    config = LoopConfig(home=home, size=size, seed=args.seed, window=args.window,
                        check_every=args.check_every, label_share=args.label_share,
                        backend=args.backend or None)
    loop = Loop(config)
    t1 = time.monotonic()
    try:
        with people_webhooks() as receiver:
            loop.start()
            week = run_week(loop, receiver, args.days, args.period, args.change_day,
                            args.change_after, args.label_lag,
                            on_line=lambda s: print(s, flush=True))
    finally:
        s = config.stores
        LocalTarget(s["registry"], config.model_name, s["deployments"]).delete_all()
    week_s = time.monotonic() - t1
    summary = summarise(loop, week, args.days)
    summary.update({"bootstrap_s": round(bootstrap_s, 1), "week_s": round(week_s, 1),
                    "production": prod, "reference": _reference_counts(config, prod),
                    "args": vars(args), "load": [_LOAD[0], os.getloadavg()[0]]})
    (home / "week.json").write_text(json.dumps({**summary, "windows": week["windows"]},
                                               indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str))
    print(f"windows and summary: {home / 'week.json'}")
    publish(doc_section(summary, args), write=not (args.quick or args.no_write))
    return 0


def _reference_counts(config: LoopConfig, prod: dict) -> dict:
    path = (Path(config.stores["registry"]) / config.model_name / "versions"
            / str(prod["version"]) / "reference" / "reference.json")
    try:
        doc = json.loads(path.read_text())
        return {"n": doc["sample"]["n"], "contexts": dict(Counter(doc.get("contexts") or []))}
    except (OSError, ValueError, KeyError):
        return {}


def doc_section(summary: dict, args) -> str:
    def f(v):
        return "—" if v is None else f"{v:.3f}"

    rows = summary["per_day"]
    det = summary["detection"]
    prod = summary["production"]
    ref = summary.get("reference") or {}
    total_false = sum(r["false_alarms"] for r in rows)
    episodes = [e for r in rows for e in r["episodes"]]
    lines = [
        "## A week of the park (day and night as contexts)",
        "",
        f"`bench/week.py`: {args.days} simulated days, each {args.period} day requests then "
        f"{args.period} night requests, sent one at a time over HTTP to production (a KServe "
        "model server with capture on, started by the local deployment target as `demo/loop.py` "
        f"does). Production was trained on a day-and-night sample lake ({args.lake} images of "
        f"each context, 32 px, {args.epochs} epochs, test accuracy "
        f"{prod['test_accuracy']:.3f}) with `bootstrap_production(conditions=('day', "
        "'night'))`; its reference has "
        + (", ".join(f"{v} {k}" for k, v in sorted(ref.get("contexts", {}).items()))
           or "both contexts") + " images. "
        f"Every {args.check_every} requests the monitor judges the last {args.window} "
        "(`run_monitoring`, each context's part against its own reference) and governance "
        "applies the shipped policy; the product owner's and the QA expert's webhooks are a "
        f"receiver on 127.0.0.1. A reviewer labels {args.label_share:.0%} of the frames, "
        f"late: a batch's labels arrive {args.label_lag} check(s) after it was served. On day "
        f"{args.change_day}, after {args.change_after} day requests, the camera is knocked "
        "and looks down the gravel path (`LakeSpec(view='moved')`) and stays so. Governance "
        "has no retraining launcher here: a retraining trigger is recorded as an episode "
        "(started later by `mlops govern start-episode`), no continuous-training run starts.",
        "",
        "| day | windows (with moved frames) | false alarms | other alarms, unmoved windows "
        "| alarm windows with moved frames | alerts: product owner / QA | retraining "
        "episodes recorded | served accuracy day / night |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fa = str(r["false_alarms"]) + (
            f" ({', '.join(f'{k} {v}' for k, v in r['false_alarm_checks'].items())})"
            if r["false_alarm_checks"] else "")
        other = str(r["other_alarms_clean"]) + (
            f" ({', '.join(f'{k} {v}' for k, v in r['other_alarm_checks'].items())})"
            if r["other_alarm_checks"] else "")
        acc = f"{f(r['accuracy']['day'])} / {f(r['accuracy']['night'])}"
        if r["accuracy_moved"] is not None:
            acc += f" (moved frames {f(r['accuracy_moved'])})"
        lines.append(
            f"| {r['day']}{' (change)' if r['day'] == args.change_day else ''} | "
            f"{r['windows']} ({r['moved_windows']}) | {fa} | {other} | "
            f"{r['alarm_windows_moved']} | {r['alerts_product_owner']} / {r['alerts_qa']} | "
            f"{len(r['episodes'])} | {acc} |")
    lines += ["", "| real change, context | detection delay (requests of that context) "
                  "| checks that alarmed |", "|---|---|---|"]
    for ctx in CONTEXTS:
        d = det.get(ctx)
        if d is None:
            lines.append(f"| {ctx} | not reached | |")
            continue
        lines.append(f"| {ctx} | {d['delay'] if d['delay'] is not None else 'not detected'} "
                     f"| {', '.join(d['checks']) or '—'} |")
    alerts = [t for r in rows for t in r["alert_texts"]]
    lines += ["", f"False alarms over the week: {total_false} (target 0): a window with no "
                  "moved frame in which a drift, prediction-drift or performance check "
                  "alarmed (what alerts the product owner or retrains under the policy). "
                  "\"Other alarms\" are integrity or telemetry checks (the QA expert's). "
                  f"Retraining episodes recorded: {len(episodes)} "
                  f"({', '.join(episodes) or 'none'}); every later verdict of the change "
                  "joined the open episode. The detection delay counts the requests of that "
                  "context served from its first moved frame to the end of the first window "
                  f"with an alarm of that context (granularity {args.check_every} requests)."]
    if summary["false_alarm_details"]:
        lines += ["", "The false alarms, check by check:", ""]
        for fd in summary["false_alarm_details"]:
            for a in fd["alarms"]:
                lines.append(f"- day {fd['day']} {fd['period']}, window ending at request "
                             f"{fd['requests']}: `{a['check']}` {a['detail']}")
    if alerts:
        lines += ["", "What the people received (one line each):", ""]
        lines += [f"- {t}" for t in alerts]
    lines += [
        "",
        f"Wall time: {summary['bootstrap_s']:.0f} s to train and register production, "
        f"{summary['week_s']:.0f} s for the week "
        f"({sum(r['requests'] for r in rows)} requests, {sum(r['windows'] for r in rows)} "
        f"monitoring runs). Machine: 2 shared cores (other work ran on them), load average "
        f"{summary['load'][0]:.1f} at the start and {summary['load'][1]:.1f} at the end.",
        "",
        "Command: `nice -n 10 .venv/bin/python bench/week.py` (fresh temporary stores each "
        "run; `--quick` for a smoke run, not written here).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
