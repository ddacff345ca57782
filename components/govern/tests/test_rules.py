"""The PrometheusRule: the committed manifest is the builder's output for the default policy,
its structure is what the Prometheus Operator reads, its thresholds are the policy's, and its
PromQL names only metrics and labels the predictor exports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from components.govern.policy import load_policy
from components.govern.rules import expressions, prometheus_rule

REPO = Path(__file__).resolve().parents[3]


def _exported() -> dict[str, set[str]]:
    """Sample name -> label names, from the predictor's own metric objects."""
    from components.serve import guard, predictor

    out = {}
    for module in (guard, predictor):
        for obj in vars(module).values():
            if type(obj).__module__ != "prometheus_client.metrics":
                continue
            name, labels = obj._name, set(obj._labelnames)
            kind = obj._type
            if kind == "counter":
                out[name + "_total"] = labels
            elif kind == "histogram":
                for suffix in ("_bucket", "_count", "_sum"):
                    out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
            else:
                out[name] = labels
    return out


def test_committed_manifest_is_the_default_policys_rule():
    committed = yaml.safe_load((REPO / "manifests/base/prometheus-rule.yaml").read_text())
    assert committed == prometheus_rule(load_policy())
    kustomization = yaml.safe_load((REPO / "manifests/base/kustomization.yaml").read_text())
    assert "prometheus-rule.yaml" in kustomization["resources"]


def test_rule_structure_is_what_the_prometheus_operator_reads():
    rule = prometheus_rule(load_policy(), namespace="pets")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "pets"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rule["metadata"]["name"])
    (group,) = rule["spec"]["groups"]
    assert set(group) == {"name", "rules"}
    for r in group["rules"]:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", r["alert"])
        assert re.fullmatch(r"\d+[smhdw]", r["for"])
        assert all(isinstance(v, str) for v in {**r["labels"], **r["annotations"]}.values())
        # The labels the receiver turns into a monitor check.
        assert {"severity", "model", "check", "kind"} <= set(r["labels"])


def test_thresholds_are_the_policys_and_the_monitors():
    policy = load_policy()
    exprs = expressions(policy)
    p = policy.prometheus
    assert exprs["PetClassifierErrorRate"].split("\nand")[0].endswith(f"> {p.error_rate:g}")
    assert exprs["PetClassifierLatencyP95"].split("\nand")[0].endswith(f"> {p.p95_latency_ms:g}")
    # Every alert is judged over at least min_requests observations, as the monitor's checks.
    for expr in exprs.values():
        assert expr.endswith(f">= {p.min_requests})")
    assert f"> {p.max_share_shift:g}" in exprs["PetClassifierPredictedClassShare"]
    # The default policy's Prometheus thresholds are the monitor's alarm thresholds, so an
    # alert from Prometheus is the check a monitoring run would make.
    from components.monitor.checks import MonitorConfig

    cfg = MonitorConfig()
    assert (p.error_rate, p.p95_latency_ms, p.max_share_shift, p.min_requests) == \
        (cfg.max_error_rate, cfg.p95_slo_ms, cfg.max_share_shift, cfg.min_requests)
    # The canary's p95 limit is the same.
    from components.deploy.release import CanaryPolicy

    assert p.p95_latency_ms == CanaryPolicy().max_p95_ms
    # The rollback limit is above the alert threshold: Prometheus' alert reaches governance,
    # whose hard threshold decides on the value it carries.
    collapse = next(r for r in policy.rules if r.name == "error-rate-collapse")
    assert collapse.match.value_above > p.error_rate


def test_promql_names_only_what_the_predictor_exports():
    exported = _exported()
    assert "pet_classifier_requests_total" in exported  # the guard's counter
    for name, expr in expressions(load_policy()).items():
        assert expr.count("(") == expr.count(")"), name
        selectors = re.findall(r"([a-z_:][a-z0-9_:]*)\{([^}]*)\}", expr)
        assert selectors, name
        for metric, matchers in selectors:
            assert metric in exported, f"{name}: {metric} is not exported by the predictor"
            for label, _op, value in re.findall(r'(\w+)\s*(=~|!=|=)\s*"([^"]*)"', matchers):
                assert label in exported[metric], f"{name}: {metric} has no label {label}"
                if label == "outcome":
                    assert set(value.split("|")) <= {"ok", "bad_request", "error"}
        for grouping in re.findall(r"(?:by|ignoring)\s*\(([^)]*)\)", expr):
            for label in grouping.split(","):
                assert any(label.strip() in labels for labels in exported.values()), label
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert re.fullmatch(r"\d+[smhdw]", window), window
