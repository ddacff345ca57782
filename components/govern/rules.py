"""The PrometheusRule for what Prometheus can see by itself, built from the policy.

Prometheus (through KServe's ``serving.kserve.io/enable-prometheus-scraping`` annotation)
scrapes the predictor's ``/metrics`` (``components/serve/predictor.py`` and ``guard.py``), so
three conditions need no monitoring run at all: the server error rate, the p95 latency, and
the share of one predicted class. Their thresholds are the policy's ``prometheus`` section —
the default policy's are the monitor's alarm thresholds, in the monitor's units — and each
alert carries the labels of the monitor's check (``check``, ``kind``, ``model``) and its value,
so Alertmanager can route it to ``mlops govern receiver``, which governs it with the same
policy as a monitoring verdict (the error-rate alert fires at the monitor's 1 %; the policy's
``error-rate-collapse`` rule rolls back at 5 %).

``manifests/base/prometheus-rule.yaml`` is this function's output for the default policy,
written by ``mlops manifests`` with the rest of ``manifests/`` (a test fails when it is stale);
``mlops govern rules`` prints it for another policy.
"""

from __future__ import annotations

from components.common import prom
from components.govern.policy import Policy

API_VERSION = "monitoring.coreos.com/v1"
LABELS = {"app.kubernetes.io/name": "pet-classifier",
          "app.kubernetes.io/part-of": "mlops-workflow",
          "app.kubernetes.io/component": "governance"}


def expressions(policy: Policy, model: str = "pet-classifier") -> dict[str, str]:
    """The PromQL of each alert, by alert name; each one's value is in the unit of the
    monitor's check of the same name (a share, milliseconds, a share shift).

    Each alert is one condition, so each expression yields at most one series: the class
    shares are reduced to the largest shift with ``max`` (a ``label`` per class would make
    one alert per class, and the receiver one check per class, for one condition). Each
    is judged only over at least ``min_requests`` observations, as the monitor judges a
    window: requests for the error rate, timed requests for the latency, images for the
    class shares.
    """
    p = policy.prometheus
    rw, sw = p.rate_window, p.share_window
    sel = prom.selector(model)
    answered = (f"sum(rate({prom.REQUESTS}{prom.selector(model, outcome=f'{prom.OK}|{prom.ERROR}')}"
                f"[{rw}]))")
    errors = f"sum(rate({prom.REQUESTS}{prom.selector(model, outcome=prom.ERROR)}[{rw}]))"
    shifts = [f"abs(\n  sum by (label) (rate({prom.PREDICTED_CLASS}"
              f"{prom.selector(model, label=cls)}[{sw}]))\n  / ignoring(label) group_left\n"
              f"  sum(rate({prom.PREDICTED_CLASS}{sel}[{sw}]))\n  - {prior:g}\n)"
              for cls, prior in p.class_prior]
    enough = {name: f"{query} >= {p.min_requests}" for name, query in _samples(policy, model)
              .items()}
    return {
        "PetClassifierErrorRate": f"(\n  {errors}\n  /\n  {answered}\n) > {p.error_rate:g}\n"
                                  f"and on() ({enough['PetClassifierErrorRate']})",
        "PetClassifierLatencyP95": (
            "1000 * histogram_quantile(0.95,\n  sum by (le) "
            f"(rate({prom.REQUEST_SECONDS}_bucket{sel}[{rw}]))\n) > {p.p95_latency_ms:g}\n"
            f"and on() ({enough['PetClassifierLatencyP95']})"),
        "PetClassifierPredictedClassShare": (
            "max(\n" + "\nor\n".join(shifts) + f"\n) > {p.max_share_shift:g}\n"
            f"and on() ({enough['PetClassifierPredictedClassShare']})"),
    }


def _samples(policy: Policy, model: str) -> dict[str, str]:
    """The PromQL of the observations behind each alert's value, by alert name."""
    p, sel = policy.prometheus, prom.selector(model)
    return {
        "PetClassifierErrorRate": f"sum(increase({prom.REQUESTS}{sel}[{p.rate_window}]))",
        "PetClassifierLatencyP95":
            f"sum(increase({prom.REQUEST_SECONDS}_count{sel}[{p.rate_window}]))",
        "PetClassifierPredictedClassShare":
            f"sum(increase({prom.IMAGES}{sel}[{p.share_window}]))",
    }


def _query_template(query: str, each: str) -> str:
    """A Go template that runs ``query`` when the alert fires (Prometheus' ``query``
    template function) and prints ``each`` for its first result."""
    return '{{ with query "' + query.replace('"', '\\"') + '" }}' + each + "{{ end }}"


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
    samples = {name: _query_template(q, '{{ . | first | value | printf "%.0f" }}')
               for name, q in _samples(policy, model).items()}
    sel = prom.selector(model)
    shares_query = (f"sum by (label) (rate({prom.PREDICTED_CLASS}{sel}[{p.share_window}])) "
                    f"/ ignoring(label) group_left sum(rate({prom.PREDICTED_CLASS}{sel}"
                    f"[{p.share_window}]))")
    shares = ('{{ range query "' + shares_query.replace('"', '\\"') + '" }}'
              '{{ .Labels.label }} {{ .Value | humanizePercentage }}, {{ end }}')
    prior = ", ".join(f"{c} {v:.0%}" for c, v in p.class_prior)
    rules = [
        {"alert": "PetClassifierErrorRate", "expr": exprs["PetClassifierErrorRate"],
         "for": p.for_,
         "labels": {"severity": "warning", "model": model, "check": "telemetry.error_rate",
                    "kind": "telemetry"},
         "annotations": {
             "summary": f"More than {p.error_rate:.0%} of {model}'s answered requests fail on "
                        f"the server (over {p.rate_window})",
             "description": "Server error share {{ $value | humanizePercentage }}. The "
                            "governance policy alerts the QA expert, and rolls production "
                            "back and holds releases when it passes its hard limit.",
             "value": "{{ $value }}", "threshold": f"{p.error_rate:g}",
             "samples": samples["PetClassifierErrorRate"]}},
        {"alert": "PetClassifierLatencyP95", "expr": exprs["PetClassifierLatencyP95"],
         "for": p.for_,
         "labels": {"severity": "warning", "model": model, "check": "telemetry.p95_latency",
                    "kind": "telemetry"},
         "annotations": {
             "summary": f"{model}'s p95 latency is above {p.p95_latency_ms:g} ms "
                        f"(over {p.rate_window})",
             "description": "p95 request latency {{ $value | printf \"%.0f\" }} ms.",
             "value": "{{ $value }}", "threshold": f"{p.p95_latency_ms:g}",
             "samples": samples["PetClassifierLatencyP95"]}},
        {"alert": "PetClassifierPredictedClassShare",
         "expr": exprs["PetClassifierPredictedClassShare"], "for": p.for_,
         "labels": {"severity": "warning", "model": model,
                    "check": "prediction_drift.class_shares", "kind": "prediction_drift"},
         "annotations": {
             "summary": f"The share of a predicted class moved more than "
                        f"{p.max_share_shift:.0%} from the training prior ({prior}) over "
                        f"{p.share_window}",
             "description": "The largest shift of a predicted class share from its prior is "
                            "{{ $value | humanizePercentage }} (predicted: " + shares
                            + "prior: " + prior + "): the camera's view or the animals "
                            "changed, or the model is biased.",
             "value": "{{ $value }}", "threshold": f"{p.max_share_shift:g}",
             "samples": samples["PetClassifierPredictedClassShare"]}},
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
