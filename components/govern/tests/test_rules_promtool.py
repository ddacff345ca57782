"""The PrometheusRule evaluated by Prometheus' own rule engine: ``promtool test rules`` on
series generated from the policy (its windows, thresholds and ``min_requests``) and the
predictor's metric names and latency buckets, asserting which alerts fire and with which
labels. Skipped, saying why, where promtool is not installed (Debian: ``apt-get install
prometheus``; ``.ci/run`` installs it)."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest
import yaml

from components.common import prom
from components.govern.policy import load_policy
from components.govern.rules import prometheus_rule

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian/Ubuntu: apt-get install "
                             "prometheus; .ci/run installs it): the rule's unit tests did not run")

MODEL = "pet-classifier"
POLICY = load_policy()
P = POLICY.prometheus
ALERTS = ("PetClassifierErrorRate", "PetClassifierLatencyP95", "PetClassifierPredictedClassShare")


def minutes(duration: str) -> int:
    """A Prometheus duration (``10m``, ``1h``) in whole minutes (at least 1)."""
    n, unit = re.fullmatch(r"(\d+)([smhdw])", duration).groups()
    seconds = int(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    return max(1, math.ceil(seconds / 60))


RATE, SHARE, FOR = minutes(P.rate_window), minutes(P.share_window), minutes(P.for_)
#: When the alerts are judged: every window is full of data and ``for`` has passed.
END = SHARE + FOR + 2


def _buckets() -> list[float]:
    from components.serve.predictor import LATENCY

    return [b for b in LATENCY._upper_bounds if not math.isinf(b)]


@dataclass
class Traffic:
    """A steady load, per minute: requests by outcome, how long each took, and the share of
    each predicted class."""

    ok: float
    error: float = 0.0
    bad_request: float = 0.0
    seconds: float = 0.01
    shares: dict | None = None  # class -> share of the images; None: the policy's prior

    def series(self) -> list[dict]:
        steps = END + 1

        def c(name, per_minute, **labels):
            text = ",".join(f'{k}="{v}"' for k, v in {"model": MODEL, **labels}.items())
            return {"series": f"{name}{{{text}}}", "values": f"0+{per_minute:g}x{steps}"}

        answered = self.ok + self.error + self.bad_request
        out = [c(prom.REQUESTS, self.ok, protocol="v1", outcome=prom.OK),
               c(prom.REQUESTS, self.error, protocol="v1", outcome=prom.ERROR),
               c(prom.REQUESTS, self.bad_request, protocol="v1", outcome=prom.BAD_REQUEST)]
        for le in _buckets():
            out.append(c(prom.REQUEST_SECONDS + "_bucket",
                         answered if self.seconds <= le else 0, protocol="v1", le=f"{le:g}"))
        out += [c(prom.REQUEST_SECONDS + "_bucket", answered, protocol="v1", le="+Inf"),
                c(prom.REQUEST_SECONDS + "_count", answered, protocol="v1"),
                c(prom.REQUEST_SECONDS + "_sum", answered * self.seconds, protocol="v1")]
        images = self.ok
        shares = self.shares or dict(P.class_prior)
        out.append(c(prom.IMAGES, images))
        out += [c(prom.PREDICTED_CLASS, images * share, label=cls)
                for cls, share in shares.items()]
        return out


def _labels(alert: str) -> dict:
    (rule,) = [r for r in prometheus_rule(POLICY)["spec"]["groups"][0]["rules"]
               if r["alert"] == alert]
    return dict(rule["labels"])


def _promtool_test(tmp_path, traffic: Traffic, expected: dict[str, int], at: int = END):
    """``promtool test rules`` for ``traffic``: at minute ``at`` each alert fires
    ``expected[alert]`` times (0 or 1), with the rule's labels and no others."""
    rule = prometheus_rule(POLICY)
    # The annotations are Go templates whose output is text for people (and the values the
    # receiver parses, tested with a real Prometheus in test_alerting_stack.py); promtool
    # would need their exact rendering. Its check below parses them.
    groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"}
                              for r in g["rules"]]} for g in rule["spec"]["groups"]]
    full = tmp_path / "rule-full.yaml"
    full.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    check = subprocess.run([PROMTOOL, "check", "rules", str(full)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    tests = {"rule_files": [rules.name], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": traffic.series(),
                        "alert_rule_test": [
                            {"eval_time": f"{at}m", "alertname": name,
                             "exp_alerts": [{"exp_labels": _labels(name)}] * expected[name]}
                            for name in ALERTS]}]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run([PROMTOOL, "test", "rules", "tests.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


NONE = dict.fromkeys(ALERTS, 0)
BUSY = 10 * P.min_requests / RATE  # requests per minute: ten times the minimum per window
SLOW = 2 * P.p95_latency_ms / 1000  # seconds: twice the latency threshold
SHIFTED = {cls: min(1.0, max(0.0, share + (2 * P.max_share_shift if i == 0 else
                                           -2 * P.max_share_shift / max(1, len(P.class_prior)
                                                                         - 1))))
           for i, (cls, share) in enumerate(P.class_prior)}


@needs_promtool
@pytest.mark.parametrize("traffic, expected", [pytest.param(t, e, id=n) for n, t, e in [
    ("healthy", Traffic(ok=BUSY), NONE),
    ("server errors at twice the threshold, with client errors beside them",
     Traffic(ok=BUSY, error=2 * P.error_rate * BUSY, bad_request=BUSY / 2),
     NONE | {"PetClassifierErrorRate": 1}),
    ("server errors at half the threshold",
     Traffic(ok=BUSY, error=P.error_rate / 2 * BUSY), NONE),
    ("every request fails, but fewer than min_requests in the window",
     Traffic(ok=0, error=P.min_requests / 2 / RATE), NONE),
    ("slow requests, many", Traffic(ok=BUSY, seconds=SLOW),
     NONE | {"PetClassifierLatencyP95": 1}),
    # The case: 10 slow requests fired the latency alert (no min_requests guard).
    ("10 slow requests in the window", Traffic(ok=10 / RATE, seconds=SLOW), NONE),
    ("slow requests, one fewer than min_requests in the window",
     Traffic(ok=(P.min_requests - 1) / RATE, seconds=SLOW), NONE),
    # One condition, one alert: a shifted share moves every class (two with cats and dogs).
    ("predicted classes shifted", Traffic(ok=BUSY, shares=SHIFTED),
     NONE | {"PetClassifierPredictedClassShare": 1}),
    ("predicted classes shifted, fewer than min_requests images in the window",
     Traffic(ok=P.min_requests / 2 / SHARE, shares=SHIFTED), NONE),
]])
def test_alerts_fire_on_their_condition_only(tmp_path, traffic, expected):
    _promtool_test(tmp_path, traffic, expected)


@needs_promtool
def test_a_condition_fires_only_after_it_held_for_the_policys_for(tmp_path):
    traffic = Traffic(ok=BUSY, error=2 * P.error_rate * BUSY, seconds=SLOW, shares=SHIFTED)
    # Every condition holds from the first minutes on; before `for` has passed, none fires.
    _promtool_test(tmp_path, traffic, NONE, at=max(1, FOR - 1))
    _promtool_test(tmp_path, traffic, dict.fromkeys(ALERTS, 1), at=END)


def test_the_generated_cases_are_what_they_say():
    """The cases above sit on the side of each threshold they claim to (for any policy
    values the test is generated from)."""
    assert BUSY * RATE >= P.min_requests and 10 < P.min_requests
    assert max(abs(SHIFTED[c] - s) for c, s in P.class_prior) > P.max_share_shift
    assert SLOW * 1000 > P.p95_latency_ms and any(SLOW <= b for b in _buckets())
    assert sum(SHIFTED.values()) == pytest.approx(1.0)
