"""The PrometheusRule for what Prometheus can see by itself, built from the policy.

Prometheus (through KServe's ``serving.kserve.io/enable-prometheus-scraping`` annotation)
scrapes the predictor's ``/metrics`` (``components/serve/predictor.py`` and ``guard.py``), so
three conditions need no monitoring run at all: the server error rate, the p95 latency, and
the share of one predicted class. Their thresholds are the policy's ``prometheus`` section —
the default policy's are the same as its ``error-rate-collapse`` rule and the canary's p95
limit — and each alert carries the labels of the monitor's check (``check``, ``kind``,
``model``), so Alertmanager can route it to ``mlops govern receiver``, which governs it with
the same policy as a monitoring verdict.

``manifests/base/prometheus-rule.yaml`` is this function's output for the default policy,
written by ``mlops manifests`` with the rest of ``manifests/`` (a test fails when it is stale);
``mlops govern rules`` prints it for another policy.
"""

from __future__ import annotations

from components.govern.policy import Policy

API_VERSION = "monitoring.coreos.com/v1"
LABELS = {"app.kubernetes.io/name": "pet-classifier",
          "app.kubernetes.io/part-of": "mlops-workflow",
          "app.kubernetes.io/component": "governance"}


def _sel(model: str, **matchers: str) -> str:
    parts = [f'model="{model}"'] + [f'{k}=~"{v}"' if "|" in v else f'{k}="{v}"'
                                     for k, v in matchers.items()]
    return "{" + ",".join(parts) + "}"


def expressions(policy: Policy, model: str = "pet-classifier") -> dict[str, str]:
    """The PromQL of each alert, by alert name."""
    p = policy.prometheus
    req = "pet_classifier_requests_total"
    rw, sw = p.rate_window, p.share_window
    answered = f"sum(rate({req}{_sel(model, outcome='ok|error')}[{rw}]))"
    errors = f"sum(rate({req}{_sel(model, outcome='error')}[{rw}]))"
    enough = f"sum(increase({req}{_sel(model)}[{rw}])) >= 100"
    share = (f"sum by (label) (rate(pet_classifier_predicted_class_total{_sel(model)}[{sw}]))"
             f"\n  / ignoring(label) group_left\n"
             f"sum(rate(pet_classifier_predicted_class_total{_sel(model)}[{sw}]))")
    images = f"sum(increase(pet_classifier_images_total{_sel(model)}[{sw}])) >= 100"
    return {
        "PetClassifierErrorRate": f"(\n  {errors}\n  /\n  {answered}\n) > {p.error_rate}\n"
                                  f"and on() ({enough})",
        "PetClassifierLatencyP95": (
            "histogram_quantile(0.95,\n  sum by (le) (rate(pet_classifier_request_seconds_bucket"
            f"{_sel(model)}[{rw}]))\n) > {p.p95_latency_s}"),
        "PetClassifierPredictedClassShare": f"(\n{share}\n) > {p.max_class_share}\n"
                                            f"and on() ({images})",
    }


def prometheus_rule(policy: Policy, model: str = "pet-classifier",
                    namespace: str | None = None) -> dict:
    """The PrometheusRule object (a dict) for ``model``'s production predictor.

    Args:
        policy: Its ``prometheus`` section gives the thresholds and windows.
        model: The served model name (the ``model`` label of the predictor's metrics).
        namespace: Left out by default: the kustomize overlay sets it.
    """
    p = policy.prometheus
    exprs = expressions(policy, model)
    req = "pet_classifier_requests_total"
    samples = ('{{ with query "sum(increase(' + req + '{model=\\"' + model + '\\"}['
               + p.rate_window + ']))" }}{{ . | first | value | printf \\"%.0f\\" }}{{ end }}')
    samples = samples.replace('\\"%.0f\\"', '"%.0f"')
    rules = [
        {"alert": "PetClassifierErrorRate", "expr": exprs["PetClassifierErrorRate"],
         "for": p.for_,
         "labels": {"severity": "critical", "model": model, "check": "telemetry.error_rate",
                    "kind": "telemetry"},
         "annotations": {
             "summary": f"More than {p.error_rate:.0%} of {model}'s requests fail on the "
                        f"server (over {p.rate_window})",
             "description": "Server error share {{ $value | humanizePercentage }} of the "
                            "answered requests. The governance policy rolls production back "
                            "and holds releases at this level.",
             "value": "{{ $value }}", "threshold": str(p.error_rate), "samples": samples}},
        {"alert": "PetClassifierLatencyP95", "expr": exprs["PetClassifierLatencyP95"],
         "for": p.for_,
         "labels": {"severity": "warning", "model": model, "check": "telemetry.p95_latency",
                    "kind": "telemetry"},
         "annotations": {
             "summary": f"{model}'s p95 latency is above {p.p95_latency_s * 1000:.0f} ms",
             "description": "p95 request latency {{ $value | humanizeDuration }} over "
                            f"{p.rate_window}.",
             "value": "{{ $value }}", "threshold": str(p.p95_latency_s)}},
        {"alert": "PetClassifierPredictedClassShare",
         "expr": exprs["PetClassifierPredictedClassShare"], "for": p.for_,
         "labels": {"severity": "warning", "model": model,
                    "check": "prediction_drift.class_shares", "kind": "prediction_drift"},
         "annotations": {
             "summary": f"One class takes more than {p.max_class_share:.0%} of {model}'s "
                        f"predictions (over {p.share_window})",
             "description": "Predicted class {{ $labels.label }} has a share of "
                            "{{ $value | humanizePercentage }}; the pet park's prior is about "
                            "50/50. The camera's view or the animals changed, or the model "
                            "is biased.",
             "value": "{{ $value }}", "threshold": str(p.max_class_share)}},
    ]
    metadata = {"name": f"{model}-governance", "labels": dict(LABELS)}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": "PrometheusRule", "metadata": metadata,
            "spec": {"groups": [{"name": f"{model}.serving", "rules": rules}]}}


HEADER = "# A PrometheusRule built by `mlops govern rules` (components/govern/rules.py).\n"


def to_yaml(obj: dict) -> str:
    """The rule as YAML with a header saying where it comes from."""
    return HEADER + rule_yaml(obj)


def rule_yaml(obj: dict) -> str:
    """The rule as YAML, PromQL as literal blocks (``mlops manifests`` adds its header)."""
    import yaml

    class _Literal(str):
        pass

    def literal(dumper, data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")

    yaml.SafeDumper.add_representer(_Literal, literal)

    def convert(x):
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        if isinstance(x, list):
            return [convert(v) for v in x]
        return _Literal(x) if isinstance(x, str) and "\n" in x else x

    return yaml.safe_dump(convert(obj), sort_keys=False, width=100)
