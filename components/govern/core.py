"""Govern: a monitoring verdict and a policy in, alerts and actions out, every one recorded.

:func:`govern` applies the policy to one verdict; :func:`govern_pending` applies it to every
verdict in the monitoring history that was not governed yet (oldest first), which is what
``mlops govern run`` and the monitoring pipeline's last step call. A verdict counts as
governed only when its marker ``governance/<model>/governed/<run_id>.json`` is written, and
that is written last: if storage fails in between, every record already written is whole
(create-only objects), and the next run governs the verdict again; deduplication, episode
claims and the idempotent actions make that repeat send, start and change nothing twice.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable
from dataclasses import fields

from components.common.errors import UserError
from components.common.governance import AuditLog, GovernanceStore
from components.common.records import actor, now_iso, parse_time
from components.common.registry import ModelRegistry
from components.common.storage import open_store
from components.govern.actions import hold, rollback
from components.govern.alerts import (
    AlertBook,
    deliver,
    fingerprint,
    people_text,
    send_to,
    sink_for,
)
from components.govern.policy import Policy, Rule, load_policy
from components.govern.sinks import AlertSink
from components.govern.trigger import (
    ENDED_STATES,
    RELAUNCH_AFTER_S,
    Episodes,
    LaunchError,
    RetrainLauncher,
    episode_age_s,
)
from components.monitor.contract import Check, Verdict

logger = logging.getLogger(__name__)

GOVERNED = "governed"
_SEVERITY = ("info", "warning", "critical")


def load_verdict(d: dict) -> Verdict:
    """A verdict from its stored JSON, ignoring fields this version does not know."""
    known = {f.name for f in fields(Verdict)}
    check_fields = {f.name for f in fields(Check)}
    d = {k: v for k, v in d.items() if k in known}
    d["checks"] = [{k: v for k, v in c.items() if k in check_fields} for c in d.get("checks", [])]
    return Verdict.from_dict(d)


def history(store_uri: str, model: str) -> list[tuple[str, Verdict]]:
    """The monitoring history of ``model`` as (URI, verdict), oldest window first."""
    store = open_store(store_uri)
    out = []
    for o in store.list(f"monitoring/{model}/history"):
        if not o.key.endswith(".json"):
            continue
        try:
            out.append((store.uri_of(o.key), load_verdict(store.get_json(o.key))))
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("Skipping unreadable verdict %s: %s", store.uri_of(o.key), exc)
    return sorted(out, key=lambda x: (x[1].window_end, x[1].created))


def _before(hist: list[tuple[str, Verdict]], run_id: str) -> list[Verdict]:
    """The verdicts of a history (oldest first) before the one called ``run_id`` (all of
    them when it is not there)."""
    verdicts = [v for _, v in hist]
    return verdicts[:next((j for j, v in enumerate(verdicts) if v.run_id == run_id),
                          len(verdicts))]


class _Before:
    """The verdicts of a model before one verdict, oldest first: given, or read from the
    monitoring history the first time a rule needs them."""

    def __init__(self, verdict: Verdict, previous, store_uri: str):
        self.verdict, self._list, self.store_uri = verdict, previous, store_uri

    def verdicts(self) -> list[Verdict]:
        if self._list is None:
            self._list = _before(history(self.store_uri, self.verdict.model),
                                 self.verdict.run_id)
        return self._list

    def streak(self, policy: Policy, rule: Rule, key: str, matching: bool, most: int) -> int:
        """How many of the windows just before this one, of its model version (at most
        ``most``), the rule matched the check ``key`` in (``matching``) or did not."""
        n = 0
        for v in reversed(self.verdicts()[-most:] if most else []):
            hit = any(r.name == rule.name and c.key == key for r, c in policy.matched(v.checks))
            if v.model_version != self.verdict.model_version or hit != matching:
                break
            n += 1
        return n


def _waits(rule: Rule, check: Check) -> bool:
    """A rule that waits for consecutive windows, on a check the monitor judged (a condition
    Prometheus raised through Alertmanager has held for its alerting rule's ``for:``)."""
    return rule.for_windows > 1 and (check.extra or {}).get("source") != "alertmanager"


def _confirmed(verdict: Verdict, policy: Policy, matched, before: _Before):
    """The matches a rule acts on now, and a ``pending`` action for each one that waits.

    A rule with ``for_windows`` N acts when its condition (the same check of the same
    context) also held in the N - 1 windows of this model version just before this one; a
    window of another version, or one where the condition did not hold, starts the count
    again. A condition Prometheus raised (through Alertmanager) is acted on at once. Returns
    (matches to act on, pending actions)."""
    act, pending = [], []
    for rule, check in matched:
        need = rule.for_windows - 1
        held = before.streak(policy, rule, check.key, True, need) if _waits(rule, check) \
            else need
        if held >= need:
            act.append((rule, check))
            continue
        pending.append({"action": "pending", "rule": rule.name, "check": check.name,
                        "context": check.context,
                        "detail": f"{check.key} matched in {held + 1} of the {rule.for_windows} "
                                  "consecutive windows the rule waits for; it acts if the next "
                                  "window confirms"})
    return act, pending


def _verdict_time(verdict: Verdict) -> _dt.datetime:
    for text in (verdict.window_end, verdict.created):
        try:
            return parse_time(text)
        except (TypeError, ValueError):
            continue
    return _dt.datetime.now(_dt.UTC)


def _evidence(verdict: Verdict, check: Check) -> str:
    return check.evidence or verdict.report_uri


def govern(verdict: Verdict, policy: Policy, *, store_uri: str, registry_uri: str = "",
           target=None, launcher: RetrainLauncher | None = None,
           sinks: dict[str, AlertSink] | None = None, redeliver: bool = True,
           verdict_uri: str = "", sleep: Callable[[float], None] = time.sleep,
           previous: list[Verdict] | None = None) -> list[dict]:
    """Applies ``policy`` to ``verdict``: alerts, rollback, hold, retraining trigger.

    Args:
        verdict: One monitoring run's verdict.
        policy: A validated policy (:func:`~components.govern.policy.load_policy`).
        store_uri: The monitoring store (governance records go under ``governance/<model>``).
        registry_uri: The model registry (holds, rollbacks, the audit view); without it,
            rollback and hold are recorded as not possible.
        target: The :class:`~components.deploy.targets.base.DeploymentTarget` of production, for
            rollbacks; without it a rollback is recorded as not possible.
        launcher: Starts retraining runs; without it a trigger is recorded but no run starts.
        sinks: recipient name -> sink, overriding the policy's webhooks.
        redeliver: First retry the delivery of alerts still undelivered.
        verdict_uri: Where the verdict is stored (the evidence of a trigger).
        previous: The verdicts of the model before this one, oldest first, for the rules
            that act only after several consecutive windows (``for_windows``); read from
            the monitoring history when needed and not given.

    Returns:
        The actions taken or refused, each ``{"action", "rule", "detail", …}``.
    """
    if policy.model and verdict.model != policy.model:
        raise ValueError(f"The policy {policy.source or ''} is for model {policy.model!r}, "
                         f"the verdict for {verdict.model!r}. Use a policy for this model.")
    gov = GovernanceStore(store_uri, verdict.model)
    audit = AuditLog(gov)
    taken: list[dict] = []
    if redeliver:
        taken += redeliver_alerts(gov, policy, sinks, sleep)
    before = _Before(verdict, previous, store_uri)
    matched, pending = _confirmed(verdict, policy, policy.matched(verdict.checks), before)
    taken += pending
    taken += _alerts(gov, verdict, policy, matched, sinks, sleep, before)
    taken += _production_actions(verdict, policy, matched, audit, registry_uri, target)
    taken += _retrain(gov, audit, verdict, policy, matched, launcher, verdict_uri, before)
    gov.create(f"{GOVERNED}/{verdict.run_id}.json", {
        "verdict": verdict.run_id, "model_version": verdict.model_version,
        "window_end": verdict.window_end, "status": verdict.status, "at": now_iso(),
        "actions": [{k: v for k, v in a.items() if k in ("action", "rule", "check", "seq")}
                    for a in taken]})
    for a in taken:
        logger.info("govern %s: %s %s", verdict.run_id, a["action"], a.get("detail", ""))
    return taken


def govern_pending(store_uri: str, model: str, policy: Policy, *, limit: int = 20,
                   **kwargs) -> list[tuple[str, list[dict]]]:
    """Governs every verdict of ``model`` in the monitoring history that has no governed
    marker yet, oldest first (at most the ``limit`` newest of them); then redelivers.

    Returns:
        (verdict run id, actions) for each verdict governed; ``("", actions)`` for a
        redelivery-only run when nothing was pending.
    """
    gov = GovernanceStore(store_uri, model)
    done = {o.key.rsplit("/", 1)[1][:-5] for o in gov.store.list(GOVERNED)}
    hist = history(store_uri, model)
    pending = [(uri, v) for uri, v in hist if v.run_id not in done]
    if limit and len(pending) > limit:
        # Older windows than the newest `limit` are not governed now or later (their
        # conditions are judged again by the newer windows); each is marked as skipped.
        for _, old in pending[:-limit]:
            gov.create(f"{GOVERNED}/{old.run_id}.json", {
                "verdict": old.run_id, "model_version": old.model_version,
                "window_end": old.window_end, "status": old.status, "at": now_iso(),
                "skipped": f"older than the newest {limit} ungoverned verdicts", "actions": []})
        pending = pending[-limit:]
    out = []
    for i, (uri, verdict) in enumerate(pending):
        out.append((verdict.run_id, govern(verdict, policy, store_uri=store_uri,
                                           verdict_uri=uri, redeliver=(i == 0),
                                           previous=_before(hist, verdict.run_id),
                                           **kwargs)))
    if not pending:
        out.append(("", redeliver_alerts(gov, policy, kwargs.get("sinks"),
                                         kwargs.get("sleep", time.sleep))))
    return out


def notify(event: str, *, store_uri: str, model: str, summary: str, detail: str = "",
           evidence: str = "", model_version: str = "", key: str = "",
           policy: Policy | None = None, sinks: dict[str, AlertSink] | None = None,
           sleep: Callable[[float], None] = time.sleep) -> dict | None:
    """Tells the people the policy names (``events.<event>``) about something another step
    did, e.g. the continuous-training pipeline's ``retrain-rejected``: the gate kept the
    champion, production is untouched. Kept and delivered like any alert.

    Args:
        key: Makes the notice idempotent: a second call with the same key sends nothing.

    Returns:
        ``{"action": "notify", "seq", "delivered"}``, or None when the policy routes the
        event nowhere or it was already sent.
    """
    policy = policy or load_policy()
    route = policy.events.get(event)
    if route is None:
        return None
    book = AlertBook(GovernanceStore(store_uri, model))
    if key and any(a.get("event_key") == key for a in book.alerts()):
        return None
    alert = book.create({
        "model": model, "model_version": str(model_version), "rule": f"event-{event}",
        "check": event, "kind": "event", "status": "firing", "severity": route.severity,
        "summary": summary, "detail": detail, "value": None, "threshold": None,
        "check_status": "", "evidence": evidence, "verdict_run_id": "", "window_start": "",
        "window_end": "", "recipients": list(route.to),
        "fingerprint": fingerprint(model, f"event-{event}", key or now_iso()),
        "starts_at": "", "event_key": key, "created": now_iso()})
    results = send_to(book, alert, list(route.to), policy.recipients, policy.delivery, sinks,
                      sleep)
    return {"action": "notify", "event": event, "seq": alert["seq"],
            "delivered": {r.recipient: r.delivered for r in results}}


# ------------------------------------------------------------------------------------------
# Alerts: deduplicated per condition, cool-down, resolved notices, redelivery
# ------------------------------------------------------------------------------------------


def redeliver_alerts(gov: GovernanceStore, policy: Policy, sinks=None,
                     sleep: Callable[[float], None] = time.sleep) -> list[dict]:
    """One more delivery round for every alert a recipient has not got yet."""
    book = AlertBook(gov)
    taken = []
    for alert, missing in book.undelivered():
        results = send_to(book, alert, missing, policy.recipients, policy.delivery, sinks, sleep)
        taken.append({"action": "redeliver", "seq": alert["seq"], "rule": alert["rule"],
                      "check": alert["check"], "context": alert.get("context", ""),
                      "delivered": {r.recipient: r.delivered for r in results},
                      "detail": "; ".join(f"{r.recipient}: "
                                          + ("delivered" if r.delivered else r.error)
                                          for r in results)})
    return taken


def _alert_record(verdict: Verdict, rule: Rule, check: Check, status: str,
                  recipients: list[str], severity: str, starts_at: str = "") -> dict:
    value = check.value
    technical = (f"{check.key} = {value:.4g}" if isinstance(value, float)
                 else f"{check.key} = {value}")
    if status == "resolved":
        technical = f"{check.key} is back to {check.status} ({technical})"
    summary, text = people_text(verdict, check, [a.type for a in rule.actions], status)
    return {"model": verdict.model, "model_version": str(verdict.model_version),
            "rule": rule.name, "check": check.name, "kind": check.kind, "status": status,
            "severity": severity, "summary": summary, "text": text,
            "technical": f"{technical} (threshold {check.threshold}; rule {rule.name})",
            "detail": " ".join(x for x in (check.detail, rule.description) if x),
            "value": value, "threshold": check.threshold, "check_status": check.status,
            "evidence": _evidence(verdict, check), "verdict_run_id": verdict.run_id,
            "window_start": verdict.window_start, "window_end": verdict.window_end,
            "context": check.context,
            "recipients": recipients, "fingerprint": fingerprint(verdict.model, rule.name,
                                                                 check.key),
            "starts_at": starts_at, "created": now_iso()}


def _alerts(gov, verdict: Verdict, policy: Policy, matched, sinks, sleep,
            before: _Before) -> list[dict]:
    book = AlertBook(gov)
    last = book.last_by_condition()
    at = _verdict_time(verdict)
    taken, firing_now = [], set()
    for rule, check in matched:
        alerts = [a for a in rule.actions if a.type == "alert"]
        if not alerts:
            continue
        fp = fingerprint(verdict.model, rule.name, check.key)
        firing_now.add(fp)
        prev = last.get(fp)
        if prev and prev["status"] == "firing":
            if prev.get("verdict_run_id") == verdict.run_id:
                continue  # alerted for this very verdict by an earlier (interrupted) run
            since = (at - parse_time(prev.get("window_end") or prev["created"])).total_seconds()
            if since < policy.cooldown_of(rule):
                taken.append({"action": "alert_suppressed", "rule": rule.name,
                              "check": check.name, "context": check.context,
                              "seq": prev["seq"],
                              "detail": f"alert #{prev['seq']} for this condition is still "
                                        f"firing ({since / 3600:.1f} h < cool-down "
                                        f"{policy.cooldown_of(rule) / 3600:.1f} h)"})
                continue
        recipients = list(dict.fromkeys(r for a in alerts for r in a.to))
        severity = max((a.severity for a in alerts), key=_SEVERITY.index)
        alert = book.create(_alert_record(verdict, rule, check, "firing", recipients, severity))
        results = send_to(book, alert, recipients, policy.recipients, policy.delivery, sinks,
                          sleep)
        taken.append({"action": "alert", "rule": rule.name, "check": check.name,
                      "context": check.context, "seq": alert["seq"], "severity": severity,
                      "delivered": {r.recipient: r.delivered for r in results},
                      "detail": alert["summary"]})
    if policy.send_resolved:
        rules = {r.name: r for r in policy.rules}
        for fp, prev in last.items():
            rule = rules.get(prev["rule"])
            check = verdict.check(prev["check"], prev.get("context"))
            if prev["status"] != "firing" or fp in firing_now or rule is None or check is None \
                    or check.status == "unknown" or rule.match.matches(check, verdict.checks) \
                    or _still_warning(rule, check) \
                    or (_waits(rule, check) and before.streak(
                        policy, rule, check.key, False, rule.for_windows - 1)
                        < rule.for_windows - 1):
                # A rule that waits for N windows to fire also waits for N clean ones to
                # resolve: a test that wavers about its level is one alert, not a
                # "resolved" and a new alert every other window.
                continue
            alert = book.create(_alert_record(verdict, rule, check, "resolved",
                                              prev["recipients"], prev["severity"],
                                              starts_at=prev["created"]))
            results = send_to(book, alert, alert["recipients"], policy.recipients,
                              policy.delivery, sinks, sleep)
            taken.append({"action": "resolved", "rule": rule.name, "check": check.name,
                          "context": check.context, "seq": alert["seq"],
                          "delivered": {r.recipient: r.delivered for r in results},
                          "detail": alert["summary"]})
    return taken


def _still_warning(rule: Rule, check: Check) -> bool:
    """A condition of the monitor's statuses has not cleared while its check is a warning
    (a measured accuracy below the floor but not confidently, a significant but small class
    share move): it resolves when the check is ok, so a value that wavers about the line
    does not send "resolved" and a new alert every window. A rule with a value threshold
    clears when the value is back on the good side, whatever the status."""
    return check.status == "warning" and rule.match.value_above is None and \
        rule.match.value_below is None


# ------------------------------------------------------------------------------------------
# Rollback and hold
# ------------------------------------------------------------------------------------------


def _production_actions(verdict, policy, matched, audit: AuditLog, registry_uri, target):
    taken = []
    for kind in ("rollback", "hold"):
        hits = [(r, c) for r, c in matched if r.does(kind)]
        if not hits:
            continue
        rule, check = hits[0]
        reason = (f"rule {rule.name}: {check.name} = {check.value} on version "
                  f"{verdict.model_version} (window ending {verdict.window_end})")
        evidence = _evidence(verdict, check)
        once = f"{kind}:{verdict.run_id}"
        if kind == "rollback":
            if target is None:
                result = {"action": "rollback_skipped",
                          "detail": "no deployment target was given to govern, so production "
                                    "could not be rolled back; roll back by hand"}
            else:
                result = rollback(target, verdict.model_version, reason, evidence,
                                  verdict.run_id)
        else:
            if not registry_uri:
                result = {"action": "hold_skipped",
                          "detail": "no registry was given to govern, so releases could not "
                                    "be held"}
            else:
                result = hold(ModelRegistry(registry_uri), verdict.model, reason, evidence)
        result.update(rule=rule.name, check=check.name)
        audit_kind = {"rollback": "rollback", "rollback_skipped": "rollback_skipped",
                      "hold": "hold"}.get(result["action"])
        if audit_kind:
            audit.append(audit_kind, result.get("detail", reason),
                         subject=f"version {verdict.model_version}", evidence=evidence,
                         details={k: v for k, v in result.items() if k != "detail"}
                         | {"verdict": verdict.run_id}, once_key=once)
        taken.append(result)
    return taken


# ------------------------------------------------------------------------------------------
# Retraining episodes
# ------------------------------------------------------------------------------------------


def _retrain_rules(policy: Policy) -> list[Rule]:
    return [r for r in policy.rules if r.does("retrain")]


def _clean(verdict: Verdict, rules: list[Rule]) -> bool:
    """No retrain rule matches, and the checks they look at were measured, as long as one
    was judged. Left out: a context with too few requests in the window to be judged, and a
    label-free estimate that says it cannot be trusted (``unknown``: a reference with too few
    errors to calibrate on stays so for the version's life, and would keep every episode of
    it open; the measured checks decide)."""
    covered = [c for c in verdict.checks if any(r.match.covers(c) for r in rules)]
    judged = [c for c in covered if not (c.extra or {}).get("too_few")
              and not (c.status == "unknown" and (c.extra or {}).get("estimated") is True)]
    return bool(judged) and all(c.status != "unknown" for c in judged) and \
        not any(r.match.matches(c, verdict.checks) for r in rules for c in verdict.checks)


def _retrain(gov, audit: AuditLog, verdict, policy, matched, launcher, verdict_uri,
             before: _Before) -> list[dict]:
    rules = _retrain_rules(policy)
    hits = [(r, c) for r, c in matched if r.does("retrain")]
    episodes = Episodes(gov)
    version = str(verdict.model_version)
    mine = episodes.of_version(version)
    current = mine[-1] if mine and "closed" not in mine[-1] else None
    at = _verdict_time(verdict)
    if not hits:
        if current is None or not _clean(verdict, rules):
            return []
        # The episode ends after `clear_after` consecutive clean windows of this version.
        recent = [v for v in before.verdicts()
                  if str(v.model_version) == version and v.window_end <= verdict.window_end]
        window = (recent + [verdict])[-policy.retrain.clear_after:]
        if len(window) < policy.retrain.clear_after or not all(_clean(v, rules)
                                                               for v in window):
            return []
        if episodes.record(current["key"], "closed", {"reason": "cleared",
                                                      "verdict": verdict.run_id}):
            return [{"action": "episode_closed", "episode": current["key"],
                     "detail": f"{len(window)} clean window(s) of version {version}"}]
        return []

    if current is not None and episode_age_s(current, at) > policy.retrain.max_episode_age_s:
        episodes.record(current["key"], "closed", {"reason": "expired",
                                                   "verdict": verdict.run_id})
        current = None
    names = sorted({r.name for r, _ in hits})
    if current is not None:
        result = _join_episode(episodes, audit, current, verdict, launcher)
        if result["action"] == "retrain_skipped":
            audit.append("retrain_skipped", result["detail"], subject=f"version {version}",
                         evidence=verdict_uri or verdict.report_uri,
                         details={"verdict": verdict.run_id, "rules": names,
                                  "episode": current["key"]},
                         once_key=f"retrain_skipped:{verdict.run_id}")
        return [result]

    # A new episode: but no second run while one of the model is still going.
    if launcher is not None:
        for ep in episodes.all():
            launch = ep.get("relaunch") or ep.get("launch") or {}
            if not launch.get("run_id") or launcher.kind != launch.get("launcher") or \
                    "ended" in ep or \
                    episode_age_s(ep, at) > policy.retrain.max_episode_age_s:
                continue
            state = launcher.state(launch)
            if state in ENDED_STATES:  # never asked again
                episodes.record(ep["key"], "ended", {"state": state, "run_id": launch["run_id"]})
            elif state == "running":
                detail = (f"retraining run {launch['run_id']} (episode {ep['key']}) is still "
                          "in progress; none started")
                audit.append("retrain_skipped", detail, subject=f"version {version}",
                             evidence=verdict_uri or verdict.report_uri,
                             details={"verdict": verdict.run_id, "rules": names,
                                      "running": launch["run_id"]},
                             once_key=f"retrain_skipped:{verdict.run_id}")
                return [{"action": "retrain_skipped", "rule": names[0], "detail": detail}]
    trigger_checks = [{"name": c.name, "kind": c.kind, "value": c.value,
                       "threshold": c.threshold, "status": c.status} for _, c in hits]
    next_seq = (mine[-1]["seq"] if mine else 0) + 1  # from the listing that found none open
    episode, claimed = episodes.claim(version, next_seq, {
        "model": verdict.model, "verdict": verdict.run_id, "verdict_uri": verdict_uri,
        "window_start": verdict.window_start, "window_end": verdict.window_end,
        "report_uri": verdict.report_uri, "rules": names, "checks": trigger_checks})
    if not claimed:
        return [{"action": "retrain_skipped", "rule": names[0], "episode": episode["key"],
                 "detail": f"episode {episode['key']} was claimed at once by another govern "
                           f"run (verdict {episode['verdict']}); none started"}]
    return [_launch(episodes, audit, episode, launcher, verdict, "launch")]


def _trigger(episodes: Episodes, episode: dict) -> dict:
    return {"episode": episode["key"], "model": episode["model"],
            "model_version": episode["model_version"], "verdict": episode["verdict"],
            "verdict_uri": episode.get("verdict_uri", ""),
            "window_start": episode.get("window_start"), "window_end": episode.get("window_end"),
            "rules": episode["rules"], "checks": episode["checks"],
            "episode_uri": episodes.uri(episode["key"])}


def start_command(episode_key: str, model: str = "pet-classifier") -> str:
    """The command that starts a recorded episode's retraining later."""
    tail = "" if model == "pet-classifier" else f" --model {model}"
    return f"mlops govern start-episode {episode_key}{tail}"


def _launch(episodes: Episodes, audit: AuditLog, episode: dict, launcher, verdict,
            part: str, by: str | None = None) -> dict:
    trigger = _trigger(episodes, episode)
    subject = f"version {episode['model_version']}, episode {episode['key']}"
    verdict_id = verdict.run_id if verdict is not None else episode.get("verdict", "")
    report_uri = verdict.report_uri if verdict is not None else episode.get("report_uri", "")
    if launcher is None:
        launch = {"state": "not_started", "launcher": None,
                  "detail": "recorded, not started (no retraining launcher was given); start "
                            f"it with `{start_command(episode['key'], episode['model'])}`"}
    else:
        try:
            launch = launcher.launch(trigger)
        except LaunchError as exc:
            launch = {"state": "failed", "launcher": launcher.kind, "error": str(exc)}
    episodes.record(episode["key"], part, {**launch, "trigger": trigger})
    if launch["state"] == "failed" and not launch.get("run_id"):
        audit.append("retrain_failed", f"retraining could not start: {launch['error']}",
                     subject=subject, evidence=episodes.uri(episode["key"]),
                     details={"verdict": verdict_id, "trigger": trigger}, by=by,
                     once_key=f"{part}:{episode['key']}")
        return {"action": "retrain_failed", "rule": episode["rules"][0],
                "episode": episode["key"], "detail": launch["error"]}
    detail = (f"episode {episode['key']} started run {launch.get('run_id')} "
              f"({launch.get('launcher')})" if launch.get("run_id")
              else f"episode {episode['key']}: {launch['detail']}")
    audit.append("trigger", detail, subject=subject,
                 evidence=trigger["verdict_uri"] or report_uri,
                 details={"verdict": episode["verdict"], "rules": episode["rules"],
                          "checks": episode["checks"], "run": launch,
                          **({"reason": episode["reason"]} if episode.get("reason") else {})},
                 by=by, once_key=f"{part}:{episode['key']}")
    return {"action": "retrain", "rule": episode["rules"][0], "episode": episode["key"],
            "run_id": launch.get("run_id"), "url": launch.get("url"), "detail": detail,
            "state": launch.get("state", "")}


def _join_episode(episodes: Episodes, audit: AuditLog, episode: dict, verdict, launcher):
    launch = episode.get("relaunch") or episode.get("launch")
    if launch is not None and launch.get("state") == "not_started" and "relaunch" not in \
            episode:
        if launcher is None:
            return {"action": "retrain_skipped", "rule": episode["rules"][0],
                    "episode": episode["key"],
                    "detail": f"episode {episode['key']} (since verdict {episode['verdict']}) "
                              "was recorded but not started; start it with "
                              f"`{start_command(episode['key'], episode['model'])}`"}
        if episodes.record(episode["key"], "relaunch_claim", {"verdict": verdict.run_id}):
            return _launch(episodes, audit, episode, launcher, verdict, "relaunch")
    if launch is None:
        age = episode_age_s(episode, _dt.datetime.now(_dt.UTC))
        if age > RELAUNCH_AFTER_S and "relaunch" not in episode and \
                episodes.record(episode["key"], "relaunch_claim", {"verdict": verdict.run_id}):
            # The run that claimed the episode died before recording its launch.
            return _launch(episodes, audit, episode, launcher, verdict, "relaunch")
        return {"action": "retrain_skipped", "rule": episode["rules"][0],
                "episode": episode["key"],
                "detail": f"episode {episode['key']} is being started by another govern run"}
    state = launcher.state(launch) if launcher is not None and launch.get("run_id") and \
        launcher.kind == launch.get("launcher") else launch.get("state", "unknown")
    since = (f"since verdict {episode['verdict']}" if episode.get("verdict")
             else episode.get("reason") or ", ".join(episode["rules"]))
    detail = (f"episode {episode['key']} ({since}) already started run {launch.get('run_id')} "
              f"({state}); none started")
    if state in ENDED_STATES:  # the episode's one run is over
        detail += ("; an episode retrains once: `mlops govern retrain --reason WHY` starts "
                   "another")
    return {"action": "retrain_skipped", "rule": episode["rules"][0], "episode": episode["key"],
            "detail": detail}


# ------------------------------------------------------------------------------------------
# A person's actions: start a recorded episode, retrain, roll back (audited as governance's)
# ------------------------------------------------------------------------------------------


class GovernError(UserError, ValueError):
    """A person's governance action that cannot be done as asked; says what can."""


def start_episode(store_uri: str, model: str, key: str, launcher: RetrainLauncher,
                  *, by: str | None = None) -> dict:
    """Starts the retraining of an episode that was recorded but not started (a govern run
    without a launcher), once: two people starting it at once start one run.

    Raises:
        GovernError: No such episode, or it is closed, started or being started.
    """
    episodes = Episodes(GovernanceStore(store_uri, model))
    every = episodes.all()
    episode = next((e for e in every if e["key"] == key), None)
    if episode is None:
        known = ", ".join(e["key"] for e in every[-5:]) or "none"
        raise GovernError(f"no retraining episode {key!r} of {model} (latest: {known}; "
                          "`mlops govern episodes` lists them).")
    launch = episode.get("relaunch") or episode.get("launch") or {}
    if "closed" in episode:
        raise GovernError(f"episode {key} is closed ({episode['closed'].get('reason')}); "
                          "start a new retraining with `mlops govern retrain --reason WHY`.")
    if launch.get("state") != "not_started" or "relaunch" in episode:
        # The run's state now (the launch record says what it was when it started).
        state = launch.get("state", "being started")
        if "ended" in episode:
            state = episode["ended"].get("state", state)
        elif launch.get("run_id") and launcher.kind == launch.get("launcher"):
            state = launcher.state(launch)
        if state == "failed":
            raise GovernError(f"episode {key} already ran: run {launch.get('run_id')} failed "
                              "(`mlops govern episodes` says where its log is). An episode "
                              "starts once; start a new retraining with `mlops govern retrain "
                              "--reason WHY`.")
        if state == "nothing_new":
            raise GovernError(f"episode {key} already ran: run {launch.get('run_id')} had "
                              "nothing new to train on (`mlops govern episodes` says why). An "
                              "episode starts once; once labelled images are kept, start a "
                              "new retraining with `mlops govern retrain --reason WHY`.")
        raise GovernError(f"episode {key} already started run {launch.get('run_id')} "
                          f"({state}); nothing to start.")
    audit = AuditLog(GovernanceStore(store_uri, model))
    if not episodes.record(key, "relaunch_claim", {"by": by or "", "verdict": ""}):
        raise GovernError(f"episode {key} is being started by someone else; nothing started.")
    return _launch(episodes, audit, episode, launcher, None, "relaunch", by=by)


def manual_retrain(store_uri: str, model: str, registry_uri: str, reason: str,
                   launcher: RetrainLauncher | None, *, by: str | None = None) -> dict:
    """A person's retraining of the production version: an episode of its own (rule
    ``manual``, the reason kept), started by the same launcher and pipeline as governance's
    (export, train, champion against challenger, gate, application test, canary), and
    audited as a trigger with its actor. No second run starts while one of the model is
    still going.

    Raises:
        GovernError: No reason, no production version, or a retraining still running.
    """
    if not reason.strip():
        raise GovernError("say why you retrain (--reason WHY); the audit log keeps it.")
    version = ModelRegistry(registry_uri).aliases(model).get("production")
    if version is None:
        raise GovernError(f"{model} has no production version to retrain; train one with "
                          "`mlops run training --data LAKE`.")
    gov = GovernanceStore(store_uri, model)
    episodes, audit = Episodes(gov), AuditLog(gov)
    if launcher is not None:
        for ep in episodes.all():
            launch = ep.get("relaunch") or ep.get("launch") or {}
            if launch.get("run_id") and "ended" not in ep and \
                    launcher.kind == launch.get("launcher") and \
                    launcher.state(launch) == "running":
                raise GovernError(f"retraining run {launch['run_id']} (episode {ep['key']}) "
                                  "is still in progress; wait for it (`mlops runs list`).")
    mine = episodes.of_version(str(version))
    now = now_iso()
    episode, claimed = episodes.claim(str(version), (mine[-1]["seq"] if mine else 0) + 1, {
        "model": model, "verdict": "", "verdict_uri": "", "window_start": None,
        "window_end": None, "report_uri": "", "rules": ["manual"], "checks": [],
        "reason": reason, "requested_by": by or actor(), "requested_at": now})
    if not claimed:
        raise GovernError(f"episode {episode['key']} was claimed at the same moment by "
                          "another govern run; nothing started.")
    return _launch(episodes, audit, episode, launcher, None, "launch", by=by)


def manual_rollback(store_uri: str, model: str, target, reason: str, *,
                    by: str | None = None) -> dict:
    """A person's rollback of production to the version it served before: the same action
    governance takes (:func:`components.govern.actions.rollback`: the earlier version served
    with its recorded configuration, then the alias moved and the release recorded), audited
    with its actor and reason.

    Raises:
        GovernError: No reason, or nothing to roll back to (the line says why).
    """
    if not reason.strip():
        raise GovernError("say why you roll back (--reason WHY); the audit log keeps it.")
    registry = target.registry
    current = registry.aliases(model).get("production")
    history = registry.alias_history(model, "production") if current is not None else []
    previous = history[-1].get("previous") if history else None
    rolled_back = {int(r["previous_version"]) for r in registry.releases(model)
                   if r.get("decision") == "governance_rollback"}
    if previous is not None and int(previous) in rolled_back:
        raise GovernError(f"production serves version {current} because version {previous} "
                          f"was rolled back; nothing earlier to roll back to. Release another "
                          f"version with `mlops deploy release VERSION`.")
    result = rollback(target, current if current is not None else "", reason)
    audit = AuditLog(GovernanceStore(store_uri, model))
    if result["action"] != "rollback":
        raise GovernError(f"nothing rolled back: {result['detail']}.")
    audit.append("rollback", reason, subject=f"version {current}",
                 details={k: v for k, v in result.items() if k != "detail"} | {"manual": True},
                 by=by)
    return result


def send_test_alert(policy: Policy, model: str, recipients: list[str] | None = None,
                    by: str | None = None) -> list[dict]:
    """Sends a test alert to the policy's recipients (all, or those named) through the same
    sinks and retries as a real one, and says for each what happened. Nothing is stored: a
    test alert is not an alert about the model.

    Returns:
        One ``{"recipient", "delivered", "where", "detail"}`` per recipient.

    Raises:
        GovernError: A named recipient is not in the policy.
    """
    names = recipients or list(policy.recipients)
    unknown = [n for n in names if n not in policy.recipients]
    if unknown:
        raise GovernError(f"no recipient {', '.join(map(repr, unknown))} in the policy "
                          f"(it has: {', '.join(policy.recipients) or 'none'}).")
    now = now_iso()
    alert = {"seq": 0, "model": model, "model_version": "-", "rule": "test-alert",
             "check": "test", "kind": "test", "status": "firing", "severity": "info",
             "summary": f"Test alert for {model}: alerts reach you",
             "text": (f"A test alert sent by {by or actor()} at {now[:16].replace('T', ' ')} "
                      "UTC with `mlops govern test-alert`. Nothing changed in production; "
                      "real alerts come here when the monitoring finds one."),
             "technical": "test alert (no check, no rule)", "detail": "", "value": None,
             "threshold": None, "evidence": "", "window_start": "", "window_end": "",
             "fingerprint": fingerprint(model, "test-alert", now), "created": now}
    out = []
    for name in names:
        rec = policy.recipients[name]
        url = rec.resolved_url()
        where = f"${rec.url_env}" if rec.url_env else (url or "no URL")
        sink = sink_for(rec)
        if sink is None:
            out.append({"recipient": name, "delivered": False, "where": where,
                        "unconfigured": True,
                        "detail": f"not configured: set {rec.url_env} to the webhook URL"
                        if rec.url_env else "the policy gives no URL"})
            continue
        result = deliver(sink, alert, policy.delivery)
        out.append({"recipient": name, "delivered": result.delivered,
                    "where": f"{where} = {url}" if rec.url_env else url,
                    "detail": (f"delivered ({rec.format} format, {result.attempts} "
                               f"attempt(s), {result.seconds:.1f} s)") if result.delivered
                    else f"NOT delivered after {result.attempts} attempt(s): {result.error}"})
    return out
