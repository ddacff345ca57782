"""``mlops govern …``: apply the policy, list alerts and the audit log, write the compliance
report, manage release holds, check a policy, write the PrometheusRule, receive Alertmanager's
webhooks."""

from __future__ import annotations

import json
import logging
import os
import sys

from components.cli.common import OptionError, parse_assignments, retrain_defaults
from components.common.errors import MlopsError
from components.common.paths import mlops_home
from components.deploy.targets import TARGETS
from components.govern.trigger import ENDED_STATES

logger = logging.getLogger(__name__)


def _store_default() -> str:
    from components.monitor.core import default_monitoring_uri

    return default_monitoring_uri()


def _stores(p, registry: bool = True) -> None:
    home = mlops_home()
    p.add_argument("--model", default="pet-classifier", help="registered model name")
    p.add_argument("--store", default="",
                   help="monitoring store URI (default: $MLOPS_MONITORING_URI, else "
                        f"{home / 'monitoring'})")
    if registry:
        p.add_argument("--registry", default=str(home / "registry"), help="model registry URI")


def _policy_arg(p) -> None:
    p.add_argument("--policy", default="",
                   help="governance policy YAML (default: the pet park's, "
                        "components/govern/default_policy.yaml)")


class _StorageDown(MlopsError, RuntimeError):
    """The store cannot be reached (exit code 1)."""


def _storage_guard(fn):
    """Network errors of the S3 client become one line that says nothing was half-recorded."""
    def wrapped(args):
        import urllib3

        try:
            return fn(args)
        except urllib3.exceptions.HTTPError as exc:
            raise _StorageDown(
                f"cannot reach the store: {exc}. Every record written so far is whole; run "
                "the command again when storage is back and it catches up.") from exc
    return wrapped


# ------------------------------------------------------------------------------------------
# run
# ------------------------------------------------------------------------------------------


def _launcher(args, policy, store: str):
    from pipelines.launchers import open_launcher

    home = mlops_home()
    extra = parse_assignments(args.retrain_arg, "--retrain-arg")
    if args.launcher == "kfp":
        if not args.kfp_host:
            raise OptionError("--launcher kfp needs --kfp-host (the KFP API, e.g. "
                             "http://localhost:8080).")
        arguments = {"model_name": args.model, **extra}
    else:
        arguments = {**retrain_defaults(args.registry, args.model, home, args.data),
                     "dataset_root": str(home / "datasets"), "registry_uri": args.registry,
                     "work_root": str(home / "work"), "monitoring_uri": store,
                     "model_name": args.model, "deploy_target": "local",
                     "serving_root": getattr(args, "serving_root", "")
                     or str(home / "deployments"),
                     **extra}
    return open_launcher(args.launcher, arguments, runs_root=home / "retraining-runs",
                         pipeline=policy.retrain.pipeline,
                         trigger_argument=policy.retrain.trigger_argument,
                         kfp_host=args.kfp_host, package_path=args.package,
                         namespace=args.namespace or None, wait=args.wait,
                         records_dir=home / "runs")


def _target(args):
    if args.target == "none":
        return None
    from components.deploy.targets import open_target

    return open_target(args.target, args.registry, args.model, namespace=args.namespace,
                       state_dir=args.serving_root or str(mlops_home() / "deployments"))


def _print_actions(verdict_id: str, actions: list[dict]) -> None:
    if verdict_id:
        print(f"verdict {verdict_id}:")
    if not actions:
        print("  nothing to do")
    for a in actions:
        what = a["action"]
        check = a.get("check", "")
        if check and a.get("context"):  # drift.embedding[night]: the context's part judged
            check = f"{check}[{a['context']}]"
        where = " ".join(x for x in (a.get("rule", ""), check) if x)
        delivered = a.get("delivered")
        if delivered is not None:
            state = ", ".join(f"{r} {'delivered' if ok else 'UNDELIVERED'}"
                              for r, ok in delivered.items())
            print(f"  {what:<17} {where}  ({state})")
        else:
            print(f"  {what:<17} {where}  {a.get('detail', '')}".rstrip())


@_storage_guard
def _cmd_run(args) -> int:
    from components.govern.core import govern, govern_pending, load_verdict
    from components.govern.policy import load_policy

    policy = load_policy(args.policy or None)  # fails before anything runs
    store = args.store or _store_default()
    kwargs = {"registry_uri": args.registry, "target": _target(args),
              "launcher": _launcher(args, policy, store)}
    if args.verdict:
        with open(args.verdict) as f:
            verdict = load_verdict(json.load(f))
        results = [(verdict.run_id, govern(verdict, policy, store_uri=store, **kwargs))]
    else:
        results = govern_pending(store, args.model, policy, limit=args.limit, **kwargs)
    if results == [("", [])]:
        print(f"No verdict of {args.model} to govern and no alert to redeliver in {store}.")
        return 0
    for verdict_id, actions in results:
        _print_actions(verdict_id or "(no new verdict; redelivery only)", actions)
    _print_undelivered(policy, [a for _, actions in results for a in actions])
    return 0


def _print_undelivered(policy, actions: list[dict]) -> None:
    """What to do about alerts a recipient did not get: they are kept, and sent again."""
    missing = sorted({r for a in actions for r, ok in (a.get("delivered") or {}).items()
                      if not ok})
    if not missing:
        return
    unset = [r.url_env for r in policy.recipients.values()
             if r.name in missing and not r.resolved_url() and getattr(r, "url_env", "")]
    how = f"set {' and '.join(unset)}, then " if unset else ""
    print(f"Alerts kept undelivered for {', '.join(missing)}: {how}check with `mlops govern "
          "test-alert`; the next `mlops govern run` sends them (`mlops govern alerts "
          "--undelivered` lists them).", file=sys.stderr)


# ------------------------------------------------------------------------------------------
# alerts, audit
# ------------------------------------------------------------------------------------------


@_storage_guard
def _cmd_alerts(args) -> int:
    from components.common.governance import GovernanceStore
    from components.govern.alerts import AlertBook

    book = AlertBook(GovernanceStore(args.store or _store_default(), args.model))
    rows = []
    for alert in book.alerts()[-args.last:] if args.last else book.alerts():
        state = book.state(alert)
        if args.undelivered and all(s == "delivered" for s in state.values()):
            continue
        rows.append((alert, state, book.rounds(alert["seq"])))
    if args.json:
        print(json.dumps([{**a, "delivery": s, "rounds": r} for a, s, r in rows], indent=2,
                         default=str))
        return 0
    if not rows:
        print(f"No {'undelivered ' if args.undelivered else ''}alert for {args.model}.")
    for alert, state, rounds in rows:
        print(f"#{alert['seq']:<4} {alert['created'][:19]}  {alert['status'].upper():<8} "
              f"{alert['severity']:<8} {alert['rule']}: {alert['summary']}  "
              f"(v{alert['model_version']}, verdict {alert['verdict_run_id']})")
        for recipient, s in state.items():
            last = (rounds.get(recipient) or [{}])[-1]
            why = f" - {last.get('error')}" if s != "delivered" and last.get("error") else ""
            print(f"       -> {recipient}: {s.upper() if s != 'delivered' else s}"
                  f" ({len(rounds.get(recipient, []))} round(s)){why}")
    return 0


@_storage_guard
def _cmd_audit(args) -> int:
    from components.govern.audit import audit_view

    entries = audit_view(args.store or _store_default(), args.model, args.registry)
    if args.last:
        entries = entries[-args.last:]
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
        return 0
    if not entries:
        print(f"No audit record for {args.model}.")
    for e in entries:
        print(f"{str(e['at'])[:19]}  {e['kind']:<16} {e.get('actor', ''):<14} "
              f"{e.get('subject', '')}: {e.get('reason', '')}")
        if e.get("evidence"):
            print(f"{'':<37}evidence: {e['evidence']}")
    return 0


# ------------------------------------------------------------------------------------------
# report, hold, policy, rules, receiver
# ------------------------------------------------------------------------------------------


@_storage_guard
def _cmd_report(args) -> int:
    from components.govern.report import write_report

    model, _, ref = args.model_ref.partition("@")
    if not ref and ":" in model:
        model, _, ref = model.partition(":")
    ref = ("@" + ref) if ref and not ref.isdigit() else (ref or "@production")
    paths = write_report(model, ref, args.registry, args.store or _store_default(), args.out,
                         qa_report=args.qa_report)
    print(f"Compliance report of {model} {ref}:")
    for kind, path in paths.items():
        print(f"  {kind}: {path}")
    return 0


@_storage_guard
def _cmd_hold(args) -> int:
    from components.common.governance import AuditLog, GovernanceStore
    from components.common.registry import ModelRegistry

    registry = ModelRegistry(args.registry)
    audit = AuditLog(GovernanceStore(args.store or _store_default(), args.model_name))
    if args.hold_command == "lift":
        record = registry.lift_hold(args.model_name, args.note)
        audit.append("hold_lifted", args.note, subject="releases", by=record["by"])
        print(f"Hold on {args.model_name} lifted by {record['by']}: {record['reason']}")
    elif args.hold_command == "place":
        if not args.note:
            raise OptionError("Say why releases are held (--note).")
        record, placed = registry.place_hold(args.model_name, args.note)
        if placed:
            audit.append("hold", args.note, subject="releases", by=record["by"])
        print(("Releases of {m} are now held" if placed else "Releases of {m} were already "
               "held").format(m=args.model_name) + f" ({record['reason']})")
    else:
        hold = registry.active_hold(args.model_name)
        if hold is None:
            print(f"Releases of {args.model_name} are not held "
                  f"({len(registry.hold_records(args.model_name))} hold record(s) in all).")
        else:
            print(f"Releases of {args.model_name} are HELD since {hold['at']} by {hold['by']}: "
                  f"{hold['reason']}")
            print(f"  approve a version: mlops registry approve {args.model_name} VERSION")
            print(f"  or lift the hold:  mlops govern hold lift {args.model_name} --note WHY")
    return 0


def _cmd_policy(args) -> int:
    from components.govern.policy import load_policy

    policy = load_policy(args.file or None)
    print(f"{policy.source}: valid ({len(policy.rules)} rules, "
          f"{len(policy.recipients)} recipients)")
    def conditions(m) -> str:
        cond = [f"name {'|'.join(m.names)}" if m.names != ("*",) else "",
                f"kind {'|'.join(m.kinds)}" if m.kinds else "",
                f"status {'|'.join(m.statuses)}" if len(m.statuses) < 4 else "",
                f"value > {m.value_above}" if m.value_above is not None else "",
                f"value < {m.value_below}" if m.value_below is not None else "",
                f"n >= {m.min_samples}" if m.min_samples else "",
                {True: "estimates only", False: "measured only"}.get(m.estimated, ""),
                ("with any of [" + "; ".join(conditions(c) for c in m.with_any) + "]"
                 if m.with_any else ""),
                ("unless any of [" + "; ".join(conditions(c) for c in m.unless_any) + "]"
                 if m.unless_any else "")]
        return ", ".join(c for c in cond if c)

    for rule in policy.rules:
        acts = [a.type + (f" {','.join(a.to)} ({a.severity})" if a.type == "alert" else "")
                for a in rule.actions]
        print(f"  {rule.name}: {conditions(rule.match)} -> {'; '.join(acts)}")
    for r in policy.recipients.values():
        where = r.url_env and f"${r.url_env}" + ("" if r.resolved_url() else " (NOT SET)")
        print(f"  recipient {r.name}: {r.format} webhook {where or r.url}")
    return 0


def _cmd_rules(args) -> int:
    from components.govern.policy import load_policy
    from components.govern.rules import prometheus_rule, to_yaml

    text = to_yaml(prometheus_rule(load_policy(args.policy or None), namespace=args.namespace,
                                   model=args.model))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"Wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_receiver(args) -> int:
    from components.common.service import check_port_free
    from components.govern.policy import load_policy
    from components.govern.receiver import serve

    check_port_free(args.host, args.port)
    policy = load_policy(args.policy or None)
    store = args.store or _store_default()
    print(f"Alertmanager webhook receiver on http://{args.host}:{args.port}/alerts "
          f"(store {store}); Ctrl-C stops it.", file=sys.stderr)
    serve(policy, store_uri=store, registry_uri=args.registry, host=args.host, port=args.port,
          target=_target(args), launcher=_launcher(args, policy, store),
          token=os.environ.get("MLOPS_RECEIVER_TOKEN", ""))
    return 0


def _target_args(p, *, launcher: bool = True) -> None:
    p.add_argument("--target", default="local", choices=["none", *TARGETS],
                   help="where production runs, for rollbacks: local model servers, KServe "
                        "InferenceServices in --namespace, or none (record only)")
    p.add_argument("--serving-root", default="",
                   help="local target state (default: $MLOPS_HOME/deployments)")
    p.add_argument("--namespace", default="", help="Kubernetes namespace (kserve, kfp)")
    if launcher:
        _launcher_args(p)


def _launcher_args(p) -> None:
    from pipelines.launchers import LAUNCHER_KINDS

    if not any("--namespace" in a.option_strings for a in p._actions):
        p.add_argument("--namespace", default="", help="Kubernetes namespace (kfp)")
    p.add_argument("--launcher", default="local", choices=LAUNCHER_KINDS,
                   help="how a retraining starts: the continuous-training pipeline under "
                        "kfp.local, submitted to --kfp-host, or none (record the trigger only)")
    p.add_argument("--data", default="",
                   help="data lake URI for local retraining (default: the lake production "
                        "was trained from, read as it was, else $MLOPS_HOME/lake)")
    p.add_argument("--wait", action="store_true",
                   help="wait for a local retraining run to end instead of leaving it running")
    p.add_argument("--kfp-host", default="", help="KFP API, e.g. http://localhost:8080")
    p.add_argument("--package", default="",
                   help="compiled continuous-training pipeline YAML (--launcher kfp; default: "
                        "compile this code's pipeline)")
    p.add_argument("--retrain-arg", action="append", default=[],
                   help="NAME=VALUE for the continuous-training pipeline, repeatable")


# ------------------------------------------------------------------------------------------
# A person's actions: retrain, roll back, start a recorded episode, list episodes, test alert
# ------------------------------------------------------------------------------------------


def _run_ending(url: str) -> tuple[str, str, dict]:
    """(`mlops runs show ID` or the log's path, the error, the outputs) of a local retraining
    run that ended, from its result file; empty where there is none."""
    import json
    from pathlib import Path

    run_dir = Path((url or "").removeprefix("file://"))
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return "", "", {}
    where = (f"mlops runs show {result['run_record']}" if result.get("run_record")
             else f"its log: {run_dir / 'run.log'}")
    return (where, str(result.get("error", "")).removeprefix("PipelineFailed: "),
            result.get("outputs") or {})


def _print_launch(result: dict, model: str) -> int:
    """Prints what a person's retraining started; 1 when a run waited for (--wait) failed or
    had nothing new to train on."""
    print(result["detail"])
    if result["action"] == "retrain_failed":
        return 1
    if result.get("state") in ENDED_STATES and result.get("url"):
        where, error, outputs = _run_ending(result["url"])
        if result["state"] == "nothing_new":  # the error says why and what to run next
            print(f"  it did not train: {error}", file=sys.stderr)
            return 1
        if result["state"] == "failed":
            print(f"  it failed: {error or 'see its log'}", file=sys.stderr)
            if where:
                print(f"  {where}", file=sys.stderr)
            print("  once that is fixed, retrain again: mlops govern retrain --reason WHY",
                  file=sys.stderr)
            return 1
        if outputs.get("blessed") is False:
            print("  it ended: the retrained model did not beat production, which is "
                  f"unchanged (its test report: {where})")
        else:
            print(f"  it ended: {where}; `mlops registry releases {model}` says whether "
                  "the retrained model was released")
        return 0
    if result.get("run_id"):
        print(f"  follow it: mlops govern episodes --model {model}; its log: "
              f"{(result.get('url') or '').removeprefix('file://')}/run.log")
        print("  it is released only if it beats production (champion vs challenger, quality "
              "gate, application test, canary); `mlops registry releases "
              f"{model}` says what happened")


@_storage_guard
def _cmd_retrain(args) -> int:
    from components.govern.core import manual_retrain
    from components.govern.policy import load_policy

    policy = load_policy(args.policy or None)
    store = args.store or _store_default()
    launcher = _launcher(args, policy, store)
    result = manual_retrain(store, args.model, args.registry, args.reason, launcher)
    return _print_launch(result, args.model)


@_storage_guard
def _cmd_rollback(args) -> int:
    from components.govern.core import manual_rollback

    target = _target(args)
    if target is None:
        raise OptionError("--target none cannot roll back; name where production runs "
                          "(--target local or --target kserve --namespace NS).")
    result = manual_rollback(args.store or _store_default(), args.model, target, args.reason)
    print(f"Rolled {args.model} production back from version {result['from']} to "
          f"{result['to']} ({result.get('url') or 'served'}); recorded in the audit log "
          "(`mlops govern audit`).")
    return 0


@_storage_guard
def _cmd_start_episode(args) -> int:
    from components.govern.core import start_episode
    from components.govern.policy import load_policy

    policy = load_policy(args.policy or None)
    store = args.store or _store_default()
    launcher = _launcher(args, policy, store)
    if launcher is None:
        raise OptionError("--launcher none starts nothing; use --launcher local (this "
                          "machine) or --launcher kfp --kfp-host URL.")
    result = start_episode(store, args.model, args.episode, launcher)
    return _print_launch(result, args.model)


@_storage_guard
def _cmd_episodes(args) -> int:
    from components.common.governance import GovernanceStore
    from components.govern.core import start_command
    from components.govern.trigger import Episodes
    from pipelines.launchers import open_launcher

    store = args.store or _store_default()
    every = Episodes(GovernanceStore(store, args.model)).all()
    if not every:
        print(f"No retraining episode of {args.model}.")
        return 0
    local = open_launcher("local", {}, runs_root=mlops_home() / "retraining-runs")
    for ep in every[-args.last:] if args.last else every:
        launch = ep.get("relaunch") or ep.get("launch") or {}
        state = launch.get("state", "being started")
        if launch.get("run_id") and launch.get("launcher") == "local" and "ended" not in ep:
            state = local.state(launch)
        elif "ended" in ep:
            state = ep["ended"].get("state", state)
        why = ep.get("reason") or ", ".join(ep.get("rules") or [])
        closed = f", closed ({ep['closed'].get('reason')})" if "closed" in ep else ""
        print(f"{ep['key']:<12} {str(ep['claimed_at'])[:19]}  version {ep['model_version']}  "
              f"{why}: run {launch.get('run_id') or '-'} {state}{closed}")
        if state == "not_started" and "closed" not in ep:
            print(f"{'':<14}start it: {start_command(ep['key'], args.model)}")
        elif state == "succeeded" and launch.get("launcher") == "local":
            where, _, outputs = _run_ending(launch.get("url", ""))
            if outputs.get("blessed") is False:
                print(f"{'':<14}not released: the retrained model did not beat production, "
                      f"which is unchanged ({where})")
        elif state == "nothing_new" and launch.get("launcher") == "local":
            _, error, _ = _run_ending(launch.get("url", ""))
            print(f"{'':<14}not trained: {error or 'nothing new to train on'}")
        elif state == "failed" and launch.get("launcher") == "local" and "closed" not in ep:
            where, error, _ = _run_ending(launch.get("url", ""))
            if error:
                print(f"{'':<14}why: {error}")
            print(f"{'':<14}{where or 'its log: ' + launch.get('run_dir', '') + '/run.log'}; "
                  "once fixed, retrain again: mlops govern retrain --reason WHY")
    return 0


def _cmd_test_alert(args) -> int:
    from components.govern.core import send_test_alert
    from components.govern.policy import load_policy

    policy = load_policy(args.policy or None)
    results = send_test_alert(policy, args.model, args.to or None)
    if not results:
        print(f"The policy {policy.source} has no recipients; add some under `recipients:`.")
        return 1
    print(f"Test alert for {args.model} ({policy.source}):")
    for r in results:
        print(f"  {r['recipient']:<16} {r['where']}: {r['detail']}")
    # A configured webhook that did not get it is a failure; one not configured is said.
    failed = [r for r in results if not r["delivered"] and not r.get("unconfigured")]
    return 1 if failed else 0


def add_commands(sub) -> None:
    """Adds the ``govern`` verb group to the top-level subparsers."""
    group = sub.add_parser("govern", help="governance: alerts, rollback, holds, retraining "
                                          "triggers, audit log, compliance report")
    gsub = group.add_subparsers(dest="govern_command", required=True)

    p = gsub.add_parser("run",
                        help="apply the policy to every verdict not governed yet (cron-able)")
    _stores(p)
    _policy_arg(p)
    p.add_argument("--verdict", default="", help="govern this verdict JSON file instead")
    p.add_argument("--limit", type=int, default=20,
                   help="at most this many of the newest ungoverned verdicts")
    _target_args(p)
    p.set_defaults(func=_cmd_run)

    p = gsub.add_parser("retrain",
                        help="a person's retraining of production (audited; released only "
                             "through the gate and the canary, like governance's)")
    _stores(p)
    _policy_arg(p)
    p.add_argument("--reason", required=True, help="why (kept in the audit log and lineage)")
    _launcher_args(p)
    p.set_defaults(func=_cmd_retrain)

    p = gsub.add_parser("rollback",
                        help="a person's rollback of production to the version before it "
                             "(audited; the same action as governance's)")
    _stores(p)
    p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    _target_args(p, launcher=False)
    p.set_defaults(func=_cmd_rollback)

    p = gsub.add_parser("start-episode",
                        help="start the retraining of an episode that was recorded but not "
                             "started (govern run --launcher none)")
    p.add_argument("episode", help="the episode key, e.g. v3-0001 (`mlops govern episodes`)")
    _stores(p)
    _policy_arg(p)
    _launcher_args(p)
    p.set_defaults(func=_cmd_start_episode)

    p = gsub.add_parser("episodes", help="retraining episodes: why, which run, its state")
    _stores(p, registry=False)
    p.add_argument("--last", type=int, default=0, help="only the last N episodes (0: all)")
    p.set_defaults(func=_cmd_episodes)

    p = gsub.add_parser("test-alert",
                        help="send a test alert to the policy's webhooks and say what was "
                             "delivered (nothing is stored)")
    p.add_argument("--model", default="pet-classifier", help="model named in the test alert")
    _policy_arg(p)
    p.add_argument("--to", action="append", default=[],
                   help="only this recipient (repeatable; default: every recipient)")
    p.set_defaults(func=_cmd_test_alert)

    p = gsub.add_parser("alerts", help="every alert and whether each recipient got it")
    _stores(p, registry=False)
    p.add_argument("--undelivered", action="store_true", help="only alerts not delivered yet")
    p.add_argument("--last", type=int, default=0, help="only the last N alerts (0: all)")
    p.add_argument("--json", action="store_true", help="as JSON, with every delivery round")
    p.set_defaults(func=_cmd_alerts)

    p = gsub.add_parser("audit",
                        help="the audit log: governance actions, alerts, alias moves, "
                             "approvals, releases")
    _stores(p)
    p.add_argument("--last", type=int, default=0, help="only the last N entries (0: all)")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=_cmd_audit)

    p = gsub.add_parser("report",
                        help="compliance report (HTML and Markdown) of MODEL[@alias|version]")
    p.add_argument("model_ref", help="e.g. pet-classifier, pet-classifier@production, "
                                     "pet-classifier@3")
    p.add_argument("--registry", default=str(mlops_home() / "registry"), help="model registry URI")
    p.add_argument("--store", default="", help="monitoring store URI")
    p.add_argument("--out", default=str(mlops_home() / "reports"), help="folder for the report")
    p.add_argument("--qa-report", default="",
                   help="the application test's qa_report JSON, if the registry has none")
    p.set_defaults(func=_cmd_report)

    p = gsub.add_parser("hold", help="release holds: status, place, lift")
    p.add_argument("hold_command", choices=["status", "place", "lift"])
    p.add_argument("model_name", nargs="?", default="pet-classifier",
                   help="registered model name (default: pet-classifier)")
    p.add_argument("--note", default="", help="why (required to place or lift)")
    p.add_argument("--registry", default=str(mlops_home() / "registry"), help="model registry URI")
    p.add_argument("--store", default="", help="monitoring store URI (its audit log)")
    p.set_defaults(func=_cmd_hold)

    p = gsub.add_parser("policy", help="check a policy file and show what it does")
    p.add_argument("file", nargs="?", default="", help="policy YAML (default: the pet park's)")
    p.set_defaults(func=_cmd_policy)

    p = gsub.add_parser("rules", help="the PrometheusRule built from the policy's thresholds")
    _policy_arg(p)
    p.add_argument("--model", default="pet-classifier", help="served model name")
    p.add_argument("--namespace", default="kubeflow-user-example-com",
                   help="namespace of the rule")
    p.add_argument("--out", default="", help="write to this file (default: print)")
    p.set_defaults(func=_cmd_rules)

    p = gsub.add_parser("receiver",
                        help="an Alertmanager webhook receiver that governs what it is sent",
                        description="Serves POST /alerts (Alertmanager's webhook). Set "
                                    "MLOPS_RECEIVER_TOKEN to require 'Authorization: Bearer "
                                    "<token>'.")
    _stores(p)
    _policy_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=9095, help="port")
    _target_args(p)
    p.set_defaults(func=_cmd_receiver)
