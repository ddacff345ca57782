"""The governance policy: which monitor checks lead to which actions, as validated data.

A policy is a YAML file (every key is documented in this folder's README). It maps checks of
a monitoring verdict — chosen by name pattern, kind, status, optionally a hard threshold on
the measured value, and optionally what the verdict's other checks say — to actions:
``alert`` a recipient (a webhook), ``retrain`` (start the continuous-training pipeline, once
per episode), ``rollback`` production to the previous version, ``hold`` releases until a
person approves. The file is checked completely before
anything runs; every mistake is reported with the key that holds it, for example::

    policy.yaml: rules[1].match.value_abov: unknown key; expect one of estimated, kind,
    min_samples, name, status, unless_any, value_above, value_below, with_any
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components.common.errors import UserError
from components.govern.sinks import SINKS
from components.monitor.contract import KINDS, STATUSES, Check

logger = logging.getLogger(__name__)

DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.yaml")

ACTIONS = ("alert", "retrain", "rollback", "hold")
#: Events other steps report through :func:`components.govern.core.notify`.
EVENTS = ("retrain-started", "retrain-failed", "retrain-rejected", "retrain-released")
SEVERITIES = ("info", "warning", "critical")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class PolicyError(UserError, ValueError):
    """A policy file that cannot be used; the message names every key that is wrong."""


# ------------------------------------------------------------------------------------------
# The policy as typed values
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """Somebody who gets alerts, through one webhook.

    Attributes:
        name: The name rules use in ``to:``.
        format: ``slack`` (Slack-compatible incoming-webhook JSON, also understood by
            Mattermost, Rocket.Chat and Teams' Slack connector) or ``alertmanager``
            (Alertmanager's webhook payload, version 4).
        url: The webhook URL written in the file, or
        url_env: the environment variable that holds it (webhook URLs are secrets).
    """

    name: str
    format: str
    url: str = ""
    url_env: str = ""

    def resolved_url(self) -> str:
        if self.url:
            return self.url
        return os.environ.get(self.url_env, "") if self.url_env else ""


@dataclass(frozen=True)
class Delivery:
    """How hard an alert is pushed before it is kept as undelivered.

    Attributes:
        timeout_s: Connect and read timeout of one attempt.
        attempts: Attempts per delivery round (each govern run starts a new round for an
            undelivered alert).
        backoff_s: Wait before the second attempt; doubled each time ...
        max_backoff_s: ... up to this.
    """

    timeout_s: float = 5.0
    attempts: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 10.0


@dataclass(frozen=True)
class Match:
    """Which checks a rule applies to. A check matches when every condition holds.

    Attributes:
        names: Glob patterns on the check's name (``drift.*``); any of them.
        kinds: Check kinds (empty: any).
        statuses: Check statuses that match. Default ``alarm``; with a value threshold the
            default is every status, since a hard threshold does not depend on the monitor's.
        value_above: The measured value must be above this ...
        value_below: ... or below this (a check without a value never matches a threshold).
        min_samples: The observations behind the value must be at least this (the check's
            ``extra.n``, ``n_labelled`` or ``requests``: labelled requests behind an accuracy,
            requests behind an error rate).
        estimated: True: only estimates (no labels); False: only measured values; None: both.
        with_any: Conditions on the other checks of the same verdict (each a ``Match``
            without these two): the rule applies only if some check meets one of them.
        unless_any: The rule does not apply if some check of the verdict meets one of these
            (a statistics-only shift: the input statistics moved, the embeddings and the
            accuracy did not).
    """

    names: tuple[str, ...] = ("*",)
    kinds: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ("alarm",)
    value_above: float | None = None
    value_below: float | None = None
    min_samples: int = 0
    estimated: bool | None = None
    with_any: tuple[Match, ...] = ()
    unless_any: tuple[Match, ...] = ()

    def matches(self, check: Check, verdict_checks: list[Check] | tuple = ()) -> bool:
        """Whether the rule applies to ``check``, one of ``verdict_checks`` (the whole
        verdict, for ``with_any`` and ``unless_any``)."""
        if not self._holds(check):
            return False
        if self.with_any and not any(m._holds(c) for m in self.with_any
                                     for c in verdict_checks):
            return False
        return not any(m._holds(c) for m in self.unless_any for c in verdict_checks)

    def _holds(self, check: Check) -> bool:
        if not any(fnmatch.fnmatchcase(check.name, p) for p in self.names):
            return False
        if self.kinds and check.kind not in self.kinds:
            return False
        if check.status not in self.statuses:
            return False
        extra = check.extra or {}
        if self.estimated is not None and bool(extra.get("estimated")) != self.estimated:
            return False
        if self.min_samples and samples(check) < self.min_samples:
            return False
        if self.value_above is not None or self.value_below is not None:
            if check.value is None:
                return False
            if self.value_above is not None and not check.value > self.value_above:
                return False
            if self.value_below is not None and not check.value < self.value_below:
                return False
        return True

    def covers(self, check: Check) -> bool:
        """True when this rule looks at ``check`` at all (name and kind), whatever its value:
        such a check that no longer matches has *cleared* the rule's condition."""
        return (any(fnmatch.fnmatchcase(check.name, p) for p in self.names)
                and (not self.kinds or check.kind in self.kinds))


def samples(check: Check) -> int:
    """How many observations a check's value rests on: ``extra.n``, ``n_labelled`` (labelled
    requests behind an accuracy) or ``requests`` (behind a telemetry rate); 0 if unknown."""
    extra = check.extra or {}
    for key in ("n", "n_labelled", "requests"):
        if isinstance(extra.get(key), int | float) and not isinstance(extra.get(key), bool):
            return int(extra[key])
    return 0


@dataclass(frozen=True)
class Action:
    """One thing a rule does. ``to`` and ``severity`` are for ``alert`` only."""

    type: str
    to: tuple[str, ...] = ()
    severity: str = "warning"


@dataclass(frozen=True)
class Rule:
    """One rule of the policy.

    Attributes:
        for_windows: How many consecutive monitoring windows of one model version the
            condition must hold in (the same check of the same context) before the rule acts;
            Prometheus' ``for:``. The windows before it are recorded as ``pending``, which
            keeps one window's chance result (a test at level 0.05 errs in one window of
            twenty) from alerting anyone or starting anything.
    """

    name: str
    match: Match
    actions: tuple[Action, ...]
    description: str = ""
    cooldown_s: float | None = None
    for_windows: int = 1

    def does(self, action_type: str) -> bool:
        return any(a.type == action_type for a in self.actions)


@dataclass(frozen=True)
class RetrainSettings:
    """How retraining episodes start and end.

    Attributes:
        pipeline: The pipeline the local launcher runs (a name in ``pipelines.PIPELINES``).
        trigger_argument: The pipeline parameter that receives the triggering verdict (JSON).
        clear_after: An episode ends after this many consecutive monitoring windows of the
            same model version in which no retrain rule matched.
        max_episode_age_s: An episode still open after this long ends, so a condition that
            outlived a failed retraining can start a new one.
    """

    pipeline: str = "continuous-training"
    trigger_argument: str = "trigger"
    clear_after: int = 1
    max_episode_age_s: float = 7 * 86400.0


@dataclass(frozen=True)
class PrometheusThresholds:
    """Thresholds of the PrometheusRule (``components/govern/rules.py``): what Prometheus
    can see by itself from the predictor's metrics, in the monitor's units, so that an alert
    from Prometheus becomes the same check a monitoring run would make.

    Attributes:
        error_rate: Server error share of answered requests (the monitor's
            ``max_error_rate``).
        p95_latency_ms: p95 request latency (the monitor's ``p95_slo_ms``).
        max_share_shift: Largest distance of a predicted class share from its prior (the
            monitor's ``max_share_shift``).
        class_prior: class -> share the model was trained for.
        min_requests: Requests in the window below which nothing is judged.
    """

    error_rate: float = 0.01
    p95_latency_ms: float = 250.0
    max_share_shift: float = 0.10
    class_prior: tuple[tuple[str, float], ...] = (("cats", 0.5), ("dogs", 0.5))
    min_requests: int = 30
    rate_window: str = "10m"
    share_window: str = "1h"
    for_: str = "5m"


@dataclass(frozen=True)
class EventRoute:
    """Who is told about an event (``events.<name>`` in the file)."""

    to: tuple[str, ...]
    severity: str = "info"


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    recipients: dict[str, Recipient] = field(default_factory=dict)
    delivery: Delivery = Delivery()
    cooldown_s: float = 6 * 3600.0
    send_resolved: bool = True
    retrain: RetrainSettings = RetrainSettings()
    prometheus: PrometheusThresholds = PrometheusThresholds()
    events: dict[str, EventRoute] = field(default_factory=dict)
    model: str = ""
    source: str = ""

    def matched(self, checks: list[Check]) -> list[tuple[Rule, Check]]:
        """Every (rule, check) pair whose condition holds, in the file's rule order."""
        return [(rule, c) for rule in self.rules for c in checks
                if rule.match.matches(c, checks)]

    def cooldown_of(self, rule: Rule) -> float:
        return self.cooldown_s if rule.cooldown_s is None else rule.cooldown_s


# ------------------------------------------------------------------------------------------
# Loading and validation
# ------------------------------------------------------------------------------------------


def parse_duration(value, where: str = "duration") -> float:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"6h"``, ``"7d"``, ``"1w"``."""
    if isinstance(value, bool):
        raise PolicyError(f"{where}: {value!r} is not a duration; expect e.g. 30m, 6h, 7d.")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise PolicyError(f"{where}: {value!r} is not a duration; expect e.g. 30m, 6h, 7d.")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise PolicyError(f"{where}: {value!r} is negative; expect a duration ≥ 0.")
    return seconds


class _Errors:
    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def keys(self, where: str, data, allowed: dict[str, str], required: tuple[str, ...] = ()):
        """Checks that ``data`` is a mapping with only known keys; returns it (or {})."""
        if not isinstance(data, dict):
            shown = repr(data) if len(repr(data)) <= 80 else repr(data)[:77] + "…"
            self.add(where, f"expect a mapping, got {type(data).__name__} {shown}")
            return {}
        for key in data:
            if key not in allowed:
                self.add(f"{where}.{key}" if where else str(key),
                         f"unknown key; expect one of {', '.join(sorted(allowed))}")
        for key in required:
            if key not in data:
                self.add(where or "policy", f"missing required key {key!r} ({allowed[key]})")
        return data

    def raise_if_any(self) -> None:
        if self.items:
            head = f"Invalid governance policy {self.source}" if self.source else \
                "Invalid governance policy"
            raise PolicyError(head + ":\n  " + "\n  ".join(self.items))


def _number(errors: _Errors, where: str, value, *, low=None, high=None, integer=False):
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            (integer and not isinstance(value, int)):
        errors.add(where, f"{value!r} is not {'an integer' if integer else 'a number'}")
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"from {low} to {high}" if high is not None else f"≥ {low}")
        errors.add(where, f"{value!r} is out of range; expect {bounds}")
        return None
    return value


def _or(value, default):
    return default if value is None else value


def _duration(errors: _Errors, where: str, value) -> float | None:
    try:
        return parse_duration(value, where)
    except PolicyError as exc:
        errors.items.append(str(exc))
        return None


def _str_list(errors: _Errors, where: str, value, choices=None) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or \
            not all(isinstance(v, str) and v for v in items):
        errors.add(where, f"expect a string or a non-empty list of strings, got {value!r}")
        return ()
    if choices is not None:
        for v in items:
            if v not in choices:
                errors.add(where, f"{v!r} is not one of {', '.join(choices)}")
    return tuple(items)


_TOP = {"version": "schema version, 1", "model": "the model this policy is for (optional)",
        "cooldown": "default time before a still-firing condition alerts again",
        "send_resolved": "send a 'resolved' alert when a condition clears",
        "delivery": "webhook timeouts, attempts and backoff",
        "recipients": "who gets alerts: name -> webhook",
        "retrain": "retraining episodes", "rules": "checks -> actions",
        "prometheus": "thresholds of the PrometheusRule",
        "events": "who is told about retraining outcomes"}
_RECIPIENT = {"format": "slack or alertmanager", "url": "webhook URL",
              "url_env": "environment variable holding the webhook URL"}
_DELIVERY = {"timeout_s": "seconds per attempt", "attempts": "attempts per round",
             "backoff_s": "first wait between attempts", "max_backoff_s": "longest wait"}
_RETRAIN = {"pipeline": "pipeline name", "trigger_argument": "parameter for the verdict",
            "clear_after": "clean windows that end an episode",
            "max_episode_age": "longest episode"}
_RULE = {"name": "rule name", "description": "why the rule exists", "match": "which checks",
         "actions": "what to do", "cooldown": "overrides the policy's cooldown",
         "for_windows": "consecutive windows the condition must hold in before acting"}
_CONDITION = {"name": "glob pattern(s) on the check name", "kind": "check kind(s)",
              "status": "check status(es)", "value_above": "hard threshold",
              "value_below": "hard threshold", "min_samples": "least extra.n",
              "estimated": "true: estimates only, false: measured only"}
_MATCH = {**_CONDITION,
          "with_any": "conditions on the verdict's other checks; one must hold",
          "unless_any": "conditions on the verdict's other checks; none may hold"}
_ACTION = {"type": "alert, retrain, rollback or hold", "to": "recipient name(s), for alert",
           "severity": "info, warning or critical, for alert"}
_PROM = {"error_rate": "server error share", "p95_latency_ms": "p95 request milliseconds",
         "max_share_shift": "largest distance of a class share from its prior",
         "class_prior": "class -> trained share", "min_requests": "least requests judged",
         "rate_window": "PromQL range for rates", "share_window": "PromQL range for shares",
         "for": "how long a condition holds before firing"}


def parse_policy(data, source: str = "") -> Policy:
    """Validates a policy given as parsed YAML; raises :class:`PolicyError` listing every
    mistake with its key."""
    errors = _Errors(source)
    top = errors.keys("", data, _TOP, required=("rules",))
    if "version" in top and top["version"] != 1:
        errors.add("version", f"{top['version']!r} is not a supported version; expect 1")
    model = top.get("model", "")
    if model and (not isinstance(model, str) or not _NAME.match(model)):
        errors.add("model", f"{model!r} is not a model name (lowercase letters, digits, '-')")
    cooldown = _duration(errors, "cooldown", top.get("cooldown", "6h"))
    send_resolved = top.get("send_resolved", True)
    if not isinstance(send_resolved, bool):
        errors.add("send_resolved", f"{send_resolved!r} is not true or false")

    d = errors.keys("delivery", top.get("delivery", {}), _DELIVERY)
    delivery = Delivery(
        timeout_s=_number(errors, "delivery.timeout_s", d.get("timeout_s", 5.0), low=0.1,
                          high=300) or 5.0,
        attempts=_number(errors, "delivery.attempts", d.get("attempts", 4), low=1, high=20,
                         integer=True) or 4,
        backoff_s=_number(errors, "delivery.backoff_s", d.get("backoff_s", 1.0), low=0,
                          high=600) or 0.0,
        max_backoff_s=_number(errors, "delivery.max_backoff_s", d.get("max_backoff_s", 10.0),
                              low=0, high=3600) or 0.0)

    recipients = {}
    raw_recipients = top.get("recipients", {})
    if not isinstance(raw_recipients, dict):
        errors.add("recipients", f"expect a mapping of name -> webhook, got {raw_recipients!r}")
        raw_recipients = {}
    for name, spec in raw_recipients.items():
        where = f"recipients.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            errors.add(where, "a recipient name is lowercase letters, digits and '-'")
        r = errors.keys(where, spec, _RECIPIENT, required=("format",))
        fmt = r.get("format")
        if "format" in r and fmt not in SINKS:
            errors.add(f"{where}.format", f"{fmt!r} is not one of {', '.join(SINKS)}")
        url, url_env = r.get("url", ""), r.get("url_env", "")
        if r and bool(url) == bool(url_env):
            errors.add(where, "give exactly one of url or url_env")
        if url and not (isinstance(url, str) and re.match(r"^https?://[^\s/]+", url)):
            errors.add(f"{where}.url", f"{url!r} is not an http(s) URL")
        if url_env and not (isinstance(url_env, str) and re.match(r"^[A-Za-z_]\w*$", url_env)):
            errors.add(f"{where}.url_env", f"{url_env!r} is not an environment variable name")
        recipients[name] = Recipient(str(name), str(fmt), str(url or ""), str(url_env or ""))

    t = errors.keys("retrain", top.get("retrain", {}), _RETRAIN)
    retrain = RetrainSettings(
        pipeline=str(t.get("pipeline", RetrainSettings.pipeline)),
        trigger_argument=str(t.get("trigger_argument", RetrainSettings.trigger_argument)),
        clear_after=_number(errors, "retrain.clear_after", t.get("clear_after", 1), low=1,
                            high=1000, integer=True) or 1,
        max_episode_age_s=_or(_duration(errors, "retrain.max_episode_age",
                                        t.get("max_episode_age", "7d")), 7 * 86400.0))

    p = errors.keys("prometheus", top.get("prometheus", {}), _PROM)
    prom_defaults = PrometheusThresholds()
    windows = {}
    for key, attr in (("rate_window", "rate_window"), ("share_window", "share_window"),
                      ("for", "for_")):
        value = p.get(key, getattr(prom_defaults, attr))
        if not (isinstance(value, str) and re.match(r"^\d+[smhdw]$", value)):
            errors.add(f"prometheus.{key}", f"{value!r} is not a Prometheus duration "
                       "(e.g. 5m, 1h)")
        windows[attr] = str(value)
    prior = p.get("class_prior", dict(prom_defaults.class_prior))
    if not (isinstance(prior, dict) and prior and all(
            isinstance(k, str) and re.match(r"^[A-Za-z0-9_.-]+$", k) for k in prior)):
        errors.add("prometheus.class_prior", f"{prior!r}: expect a mapping class -> share")
        prior = dict(prom_defaults.class_prior)
    for cls, share in prior.items():
        _number(errors, f"prometheus.class_prior.{cls}", share, low=0, high=1)
    prometheus = PrometheusThresholds(
        error_rate=_or(_number(errors, "prometheus.error_rate",
                               p.get("error_rate", prom_defaults.error_rate), low=0, high=1),
                       prom_defaults.error_rate),
        p95_latency_ms=_or(_number(errors, "prometheus.p95_latency_ms",
                                   p.get("p95_latency_ms", prom_defaults.p95_latency_ms),
                                   low=1, high=60000), prom_defaults.p95_latency_ms),
        max_share_shift=_or(_number(errors, "prometheus.max_share_shift",
                                    p.get("max_share_shift", prom_defaults.max_share_shift),
                                    low=0, high=1), prom_defaults.max_share_shift),
        class_prior=tuple(sorted((str(k), float(v)) for k, v in prior.items()
                                 if isinstance(v, int | float))),
        min_requests=_or(_number(errors, "prometheus.min_requests",
                                 p.get("min_requests", prom_defaults.min_requests), low=0,
                                 integer=True), prom_defaults.min_requests),
        **windows)

    rules = []
    raw_rules = top.get("rules", [])
    if not isinstance(raw_rules, list) or ("rules" in top and not raw_rules):
        errors.add("rules", "expect a non-empty list of rules")
        raw_rules = []
    seen = set()
    for i, raw in enumerate(raw_rules):
        rules.append(_parse_rule(errors, f"rules[{i}]", raw, recipients, seen))
    events = {}
    raw_events = top.get("events", {})
    if not isinstance(raw_events, dict):
        errors.add("events", f"expect a mapping of event -> route, got {raw_events!r}")
        raw_events = {}
    for name, spec in raw_events.items():
        where = f"events.{name}"
        if name not in EVENTS:
            errors.add(where, f"unknown event; expect one of {', '.join(EVENTS)}")
        e = errors.keys(where, spec, {"to": "recipient name(s)",
                                      "severity": "info, warning or critical"},
                        required=("to",))
        to = _str_list(errors, f"{where}.to", e["to"]) if "to" in e else ()
        for rec in to:
            if rec not in recipients:
                errors.add(f"{where}.to", f"unknown recipient {rec!r}")
        severity = e.get("severity", "info")
        if severity not in SEVERITIES:
            errors.add(f"{where}.severity", f"{severity!r} is not one of {', '.join(SEVERITIES)}")
        events[str(name)] = EventRoute(to, str(severity))
    errors.raise_if_any()
    return Policy(rules=tuple(rules), recipients=recipients, delivery=delivery,
                  cooldown_s=cooldown, send_resolved=send_resolved, retrain=retrain,
                  prometheus=prometheus, events=events, model=model or "", source=source)


def _parse_rule(errors: _Errors, where: str, raw, recipients: dict, seen: set) -> Rule:
    r = errors.keys(where, raw, _RULE, required=("name", "match", "actions"))
    name = r.get("name", f"rule-{where}")
    if "name" in r:
        if not isinstance(name, str) or not _NAME.match(name):
            errors.add(f"{where}.name", f"{name!r} is not a rule name (lowercase letters, "
                       "digits and '-')")
        elif name in seen:
            errors.add(f"{where}.name", f"{name!r} is used by another rule; names are unique")
        seen.add(name)
    match = _parse_match(errors, f"{where}.match", r.get("match", {}), _MATCH)

    actions = []
    raw_actions = r.get("actions", [])
    if not isinstance(raw_actions, list) or ("actions" in r and not raw_actions):
        errors.add(f"{where}.actions", "expect a non-empty list of actions")
        raw_actions = []
    for j, raw_action in enumerate(raw_actions):
        aw = f"{where}.actions[{j}]"
        if isinstance(raw_action, str):  # shorthand: "- retrain"
            raw_action = {"type": raw_action}
        a = errors.keys(aw, raw_action, _ACTION, required=("type",))
        kind = a.get("type")
        if "type" in a and kind not in ACTIONS:
            errors.add(f"{aw}.type", f"unknown action {kind!r}; expect one of "
                       f"{', '.join(ACTIONS)}")
        to: tuple[str, ...] = ()
        severity = a.get("severity", "warning")
        if kind == "alert":
            if "to" not in a:
                errors.add(aw, "an alert needs 'to': the recipient name(s)")
            else:
                to = _str_list(errors, f"{aw}.to", a["to"])
                for rec in to:
                    if rec not in recipients:
                        errors.add(f"{aw}.to", f"unknown recipient {rec!r}; define it under "
                                   f"recipients (known: {', '.join(recipients) or 'none'})")
            if severity not in SEVERITIES:
                errors.add(f"{aw}.severity", f"{severity!r} is not one of "
                           f"{', '.join(SEVERITIES)}")
        elif kind in ACTIONS:
            for key in ("to", "severity"):
                if key in a:
                    errors.add(f"{aw}.{key}", f"only an alert takes {key!r}")
        actions.append(Action(str(kind), to, str(severity)))
    cooldown = None
    if "cooldown" in r:
        cooldown = _duration(errors, f"{where}.cooldown", r["cooldown"])
    description = r.get("description", "")
    if not isinstance(description, str):
        errors.add(f"{where}.description", "expect text")
    for_windows = _number(errors, f"{where}.for_windows", r.get("for_windows", 1), low=1,
                          high=100, integer=True) or 1
    return Rule(str(name), match, tuple(actions), str(description), cooldown, for_windows)


def _parse_match(errors: _Errors, where: str, raw, allowed: dict) -> Match:
    m = errors.keys(where, raw, allowed)
    names = _str_list(errors, f"{where}.name", m["name"]) if "name" in m else ("*",)
    kinds = _str_list(errors, f"{where}.kind", m["kind"], KINDS) if "kind" in m else ()
    value_above = value_below = None
    if "value_above" in m:
        value_above = _number(errors, f"{where}.value_above", m["value_above"])
    if "value_below" in m:
        value_below = _number(errors, f"{where}.value_below", m["value_below"])
    if value_above is not None and value_below is not None and value_below <= value_above:
        errors.add(where, f"value_below {value_below} ≤ value_above {value_above} "
                   "can never match")
    has_threshold = "value_above" in m or "value_below" in m
    default_status = STATUSES if has_threshold else ("alarm",)
    statuses = (_str_list(errors, f"{where}.status", m["status"], STATUSES)
                if "status" in m else default_status)
    min_samples = 0
    if "min_samples" in m:
        min_samples = _number(errors, f"{where}.min_samples", m["min_samples"], low=0,
                              integer=True) or 0
    estimated = m.get("estimated")
    if estimated is not None and not isinstance(estimated, bool):
        errors.add(f"{where}.estimated", f"{estimated!r} is not true or false")
        estimated = None
    if m and not any(k in m for k in ("name", "kind")):
        errors.add(where, "give a name pattern or a kind, so that the rule "
                   "does not apply to every check by accident")
    context = {}
    for key in ("with_any", "unless_any"):
        if key not in m:
            continue
        items = m[key]
        if not isinstance(items, list) or not items:
            errors.add(f"{where}.{key}", f"expect a non-empty list of conditions, got {items!r}")
            continue
        context[key] = tuple(_parse_match(errors, f"{where}.{key}[{i}]", item, _CONDITION)
                             for i, item in enumerate(items))
    return Match(names, kinds, statuses, value_above, value_below, min_samples, estimated,
                 **context)


def load_policy(path: str | os.PathLike | None = None) -> Policy:
    """Reads and validates a policy file (default: the pet park's, shipped with the package).

    Raises:
        PolicyError: The file is not YAML or breaks a rule; the message names each key.
        FileNotFoundError: No such file.
    """
    path = Path(path) if path else DEFAULT_POLICY_PATH
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"No governance policy at {path}. Pass --policy FILE, or leave "
                                "it out for the default policy.") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"Invalid governance policy {path}: not valid YAML: {exc}") from exc
    return parse_policy(data, str(path))
