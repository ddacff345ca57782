"""The governance rollback on the cluster target: KServeTarget against the deploy step's
stand-in of the Kubernetes API with KServe and Knative behind it (real kubernetes client over
HTTP on loopback)."""

from __future__ import annotations

import pytest

from components.deploy.tests import test_kserve_target as kt
from components.govern.core import govern
from components.govern.policy import parse_policy
from components.monitor.contract import Check, Verdict

pytestmark = pytest.mark.timeout(120)

# The deploy step's fixtures: the stand-in, an S3 registry with versions 1-3, the target.
standin, registry, target, MODEL = kt.standin, kt.registry, kt.target, kt.MODEL

POLICY = parse_policy({"version": 1, "rules": [{
    "name": "error-rate-collapse",
    "match": {"name": "telemetry.error_rate", "value_above": 0.05, "min_samples": 100},
    "actions": ["rollback", "hold"]}]})


def test_collapse_rolls_the_inference_service_back_to_the_previous_version(target, tmp_path):
    reg = target.registry
    target.deploy("production", 1)
    reg.set_alias(MODEL, "production", 1, reason="first release")
    target.deploy("production", 2)
    reg.set_alias(MODEL, "production", 2, reason="promoted")
    errors = Verdict(MODEL, "2", "2026-11-20T00:00:00+00:00", "2026-11-20T01:00:00+00:00",
                     "w-errors", 800, 0, [Check("telemetry.error_rate", "telemetry", 0.2, 0.01,
                                                "alarm", "20% server errors",
                                                extra={"requests": 800, "errors": 160})])
    acts = govern(errors, POLICY, store_uri=str(tmp_path), registry_uri=reg.uri,
                  target=target)
    by = {a["action"]: a for a in acts}
    assert by["rollback"]["from"] == 2 and by["rollback"]["to"] == 1
    assert by["hold"]
    dep = target.status("production")
    assert dep.stable.version == 1 and dep.canary is None
    assert reg.aliases(MODEL)["production"] == 1
    # Governed again (a catch-up): nothing moves.
    again = govern(errors, POLICY, store_uri=str(tmp_path), registry_uri=reg.uri,
                   target=target)
    assert {a["action"] for a in again} == {"rollback_skipped", "hold_exists"}
    assert target.status("production").stable.version == 1
