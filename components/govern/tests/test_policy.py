"""The policy file: the shipped default loads, and every kind of mistake fails before anything
runs, with the key that holds it."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from components.govern.policy import PolicyError, load_policy, parse_duration, parse_policy
from components.monitor.contract import Check

GOOD = textwrap.dedent("""
    version: 1
    recipients:
      po: {format: slack, url: "http://127.0.0.1:9/hook"}
    rules:
      - name: drift
        match: {kind: drift}
        actions: [{type: alert, to: po}, retrain]
""")


def _with(path: str, value):
    data = yaml.safe_load(GOOD)
    node, keys = data, path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


BAD = [
    # (what is wrong, the data, the text the error must contain)
    ("unknown top-level key", _with("cooldwn", "1h"), "cooldwn: unknown key"),
    ("unknown match key", _with("rules.0.match", {"kind": "drift", "value_abov": 1}),
     "rules[0].match.value_abov: unknown key"),
    ("unknown action", _with("rules.0.actions", ["page-the-ceo"]),
     "rules[0].actions[0].type: unknown action 'page-the-ceo'"),
    ("threshold not a number", _with("rules.0.match", {"name": "performance.accuracy",
                                                       "value_below": "low"}),
     "rules[0].match.value_below: 'low' is not a number"),
    ("impossible thresholds", _with("rules.0.match", {"name": "x", "value_above": 0.9,
                                                      "value_below": 0.5}),
     "rules[0].match: value_below 0.5 ≤ value_above 0.9 can never match"),
    ("unknown status", _with("rules.0.match", {"kind": "drift", "status": "red"}),
     "rules[0].match.status: 'red' is not one of ok, unknown, warning, alarm"),
    ("unknown kind", _with("rules.0.match", {"kind": "vibes"}),
     "rules[0].match.kind: 'vibes' is not one of"),
    ("match on nothing", _with("rules.0.match", {"status": "alarm"}),
     "rules[0].match: give a name pattern or a kind"),
    ("other checks not a list", _with("rules.0.match", {"kind": "drift", "with_any": "x"}),
     "rules[0].match.with_any: expect a non-empty list of conditions"),
    ("nested condition", _with("rules.0.match", {"kind": "drift", "unless_any": [
        {"name": "drift.embedding", "unless_any": [{"kind": "drift"}]}]}),
     "rules[0].match.unless_any[0].unless_any: unknown key"),
    ("other check's status", _with("rules.0.match", {"kind": "drift", "unless_any": [
        {"name": "drift.embedding", "status": "moved"}]}),
     "rules[0].match.unless_any[0].status: 'moved' is not one of"),
    ("unknown recipient", _with("rules.0.actions", [{"type": "alert", "to": "ceo"}]),
     "rules[0].actions[0].to: unknown recipient 'ceo'"),
    ("alert without recipient", _with("rules.0.actions", [{"type": "alert"}]),
     "rules[0].actions[0]: an alert needs 'to'"),
    ("severity on retrain", _with("rules.0.actions", [{"type": "retrain",
                                                       "severity": "critical"}]),
     "rules[0].actions[0].severity: only an alert takes 'severity'"),
    ("bad duration", _with("cooldown", "soon"), "cooldown: 'soon' is not a duration"),
    ("negative rule cool-down", _with("rules.0.cooldown", -5), "rules[0].cooldown: -5 is negative"),
    ("attempts out of range", _with("delivery", {"attempts": 0}),
     "delivery.attempts: 0 is out of range"),
    ("bad recipient format", _with("recipients.po", {"format": "email", "url": "http://x"}),
     "recipients.po.format: 'email' is not one of slack, alertmanager"),
    ("url and url_env", _with("recipients.po", {"format": "slack", "url": "http://x",
                                                "url_env": "X"}),
     "recipients.po: give exactly one of url or url_env"),
    ("not a URL", _with("recipients.po", {"format": "slack", "url": "hooks.slack.com"}),
     "recipients.po.url: 'hooks.slack.com' is not an http(s) URL"),
    ("duplicate rule names", {**yaml.safe_load(GOOD), "rules": yaml.safe_load(GOOD)["rules"] * 2},
     "rules[1].name: 'drift' is used by another rule"),
    ("no rules", _with("rules", []), "rules: expect a non-empty list of rules"),
    ("wrong version", _with("version", 2), "version: 2 is not a supported version"),
    ("bad Prometheus window", _with("prometheus", {"for": "ten minutes"}),
     "prometheus.for: 'ten minutes' is not a Prometheus duration"),
    ("shift above 1", _with("prometheus", {"max_share_shift": 1.5}),
     "prometheus.max_share_shift: 1.5 is out of range"),
    ("bad prior", _with("prometheus", {"class_prior": {"cats": "half"}}),
     "prometheus.class_prior.cats: 'half' is not a number"),
    ("not a mapping", ["rules"], "expect a mapping"),
]


@pytest.mark.parametrize("what,data,message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_policy_fails_naming_the_key(what, data, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(data, "policy.yaml")
    assert message in str(info.value), str(info.value)
    assert str(info.value).startswith("Invalid governance policy policy.yaml")


def test_every_mistake_is_reported_at_once():
    data = _with("rules.0", {"name": "Bad Name", "match": {"kind": "drift", "min_samples": -1},
                             "actions": ["explode"]})
    data["cooldown"] = "later"
    with pytest.raises(PolicyError) as info:
        parse_policy(data)
    text = str(info.value)
    for part in ("cooldown", "rules[0].name", "rules[0].match.min_samples",
                 "rules[0].actions[0].type"):
        assert part in text


def test_a_file_that_is_not_yaml_or_missing_is_a_clear_error(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("rules: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)
    with pytest.raises(FileNotFoundError, match="No governance policy at"):
        load_policy(tmp_path / "absent.yaml")


def test_the_default_policy_loads_and_says_what_the_pet_park_expects():
    policy = load_policy()
    assert policy.model == "pet-classifier"
    rules = {r.name: r for r in policy.rules}
    # Drift and an accuracy drop retrain; an accuracy collapse rolls back (and leaves the
    # retraining free to fix it); a server-error collapse rolls back and holds releases.
    assert rules["data-drift"].does("retrain") and not rules["data-drift"].does("rollback")
    assert rules["accuracy-collapse"].does("rollback")
    assert not rules["accuracy-collapse"].does("hold")
    assert rules["error-rate-collapse"].does("rollback") and \
        rules["error-rate-collapse"].does("hold")
    # The monitor's shape: labelled requests as extra.n_labelled.
    collapse = Check("performance.accuracy", "performance", 0.55, 0.85, "alarm", "",
                     extra={"n_labelled": 120, "estimated": False})
    estimated = Check("performance.accuracy", "performance", 0.55, 0.85, "alarm", "",
                      extra={"n": 120, "estimated": True})
    few = Check("performance.accuracy", "performance", 0.4, 0.85, "alarm", "", extra={"n": 10})
    drop = Check("performance.accuracy", "performance", 0.78, 0.85, "alarm", "",
                 extra={"n": 120})
    assert rules["accuracy-collapse"].match.matches(collapse)
    assert not rules["accuracy-collapse"].match.matches(estimated)  # no rollback on a guess
    assert not rules["accuracy-collapse"].match.matches(few)  # nor on ten labels
    assert not rules["accuracy-collapse"].match.matches(drop)
    assert rules["accuracy-drop"].match.matches(drop)
    names = [r.name for r, _ in policy.matched([collapse])]
    assert names == ["accuracy-drop", "accuracy-collapse"]
    # The webhook URLs are secrets from the environment, never in the file.
    assert all(r.url_env and not r.url for r in policy.recipients.values())


def test_thresholds_and_durations():
    assert parse_duration("90s") == 90 and parse_duration("6h") == 21600
    assert parse_duration("7d") == 7 * 86400 and parse_duration(30) == 30
    policy = parse_policy(_with("rules.0.match", {"name": "telemetry.error_rate",
                                                  "value_above": 0.05}))
    rule = policy.rules[0]
    assert rule.match.statuses == ("ok", "unknown", "warning", "alarm")  # hard threshold
    ok_but_high = Check("telemetry.error_rate", "telemetry", 0.2, 0.5, "ok", "")
    assert rule.match.matches(ok_but_high)
    assert not rule.match.matches(Check("telemetry.error_rate", "telemetry", 0.01, 0.5, "ok", ""))
    assert not rule.match.matches(Check("telemetry.error_rate", "telemetry", None, 0.5,
                                        "unknown", ""))


def _window(embedding="ok", statistics="alarm", estimated="ok", accuracy="unknown"):
    """The checks of one window that matter to the drift rules."""
    return [Check("drift.embedding", "drift", 0.001 if embedding == "alarm" else 0.4, 0.05,
                  embedding, ""),
            Check("drift.statistics", "drift", 1e-6 if statistics == "alarm" else 0.3, 0.0167,
                  statistics, "moved: brightness (p=1.0e-06, KS 0.31)"),
            Check("performance.accuracy", "performance", None, 0.91, accuracy, "",
                  extra={"n_labelled": 0, "estimated": False}),
            Check("performance.estimated_accuracy", "performance",
                  0.85 if estimated == "warning" else 0.95, 0.91, estimated, "",
                  extra={"n": 300, "estimated": True})]


def test_the_default_policy_grades_a_statistics_only_shift_as_a_warning(tmp_path,
                                                                         monkeypatch):
    """Brightness or JPEG quality moved the input statistics, but neither the embeddings
    nor any measured or estimated accuracy: nobody can act on it, so it is a notice to the QA
    expert, not the product owner's alarm and not a retraining."""
    from components.govern.core import govern
    from components.monitor.contract import Verdict

    policy = load_policy()
    rules = {r.name: r for r in policy.rules}

    def matched(**window):
        return sorted((r.name, c.name) for r, c in policy.matched(_window(**window)))

    assert matched() == [("input-statistics-shift", "drift.statistics")]
    notice = rules["input-statistics-shift"]
    assert not notice.does("retrain") and not notice.does("rollback")
    assert [(a.to, a.severity) for a in notice.actions] == [(("qa-expert",), "info")]
    # The embeddings moved too: data drift, for both tests.
    assert matched(embedding="alarm") == [("data-drift", "drift.embedding"),
                                          ("data-drift", "drift.statistics")]
    # The accuracy fell, estimated or measured: the statistics' shift is data drift.
    assert matched(estimated="warning") == [("data-drift", "drift.statistics")]
    assert matched(accuracy="alarm") == [("accuracy-drop", "performance.accuracy"),
                                         ("data-drift", "drift.statistics")]
    assert matched(statistics="ok") == []

    # Governed: one info notice to the QA expert; no retraining episode, nothing for the
    # product owner.
    monkeypatch.delenv("MLOPS_ALERT_PRODUCT_OWNER_URL", raising=False)
    monkeypatch.delenv("MLOPS_ALERT_QA_URL", raising=False)
    first = Verdict("pet-classifier", "3", "2026-11-19T10:00:00+00:00",
                    "2026-11-19T11:00:00+00:00", "w1", 300, 0, _window())
    second = Verdict("pet-classifier", "3", "2026-11-19T10:30:00+00:00",
                     "2026-11-19T11:30:00+00:00", "w2", 300, 0, _window())
    # One window is a chance result the rule waits on (for_windows: 2); the second acts.
    taken = govern(first, policy, store_uri=str(tmp_path), previous=[])
    assert [(a["action"], a["rule"]) for a in taken] == [
        ("pending", "input-statistics-shift")]
    taken = govern(second, policy, store_uri=str(tmp_path), previous=[first])
    assert [(a["action"], a["rule"], a.get("severity")) for a in taken] == [
        ("alert", "input-statistics-shift", "info")]
    assert list(taken[0]["delivered"]) == ["qa-expert"]


def test_mlops_govern_policy_shows_what_the_other_checks_must_say(capsys):
    from components.cli import main

    assert main(["govern", "policy"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("input-statistics-shift"))
    assert "unless any of [name drift.embedding, status alarm;" in line
    assert line.endswith("-> alert qa-expert (info)")
