"""Production release by canary, promoted or rolled back on measured health.

KServe splits traffic between the stable revision and a canary (``canaryTrafficPercent``) but
leaves the decision to promote or roll back to someone watching. Here a policy decides: at
each traffic step the canary and the stable revision get the same labelled probe requests at
the same time, and the canary must

* fail no more requests than ``max_error_rate``,
* keep its p95 latency within ``max_p95_ms`` and within ``max_latency_ratio`` of the stable
  revision's (plus ``latency_slack_ms``, so that two fast revisions are not told apart by
  scheduler noise),
* lose no more than ``max_accuracy_drop`` accuracy against the stable revision on the same
  labelled requests,
* and, over everything it served during the step (real users' requests included, read from
  its Prometheus metrics before and after the step), keep its server error rate within
  ``max_error_rate`` and its p95 latency within ``max_p95_ms``.

One failed step rolls the canary back at once; the stable revision serves throughout. Only
after the last step does the canary take all traffic and the registry's ``production`` alias
move to it. Every decision, with its measurements, is appended to the registry's release log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from components.common.registry import ModelRegistry
from components.common.service import wait_until
from components.deploy.client import LoadResult, run_load
from components.deploy.targets.base import DeploymentError, DeploymentTarget
from components.deploy.telemetry import scrape, served_between

logger = logging.getLogger(__name__)

PRODUCTION = "production"


@dataclass(frozen=True)
class CanaryPolicy:
    """When a canary is promoted, and how it is watched.

    Attributes:
        steps: Canary traffic percentages, in order (each 1 to 99).
        requests_per_step: Probe requests sent to each revision at each step.
        bake_seconds: Least time each step lasts (in a cluster, real traffic meets the canary
            meanwhile).
        concurrency: Probe requests in flight per revision.
        max_error_rate: Largest share of failed canary requests.
        max_p95_ms: Largest canary p95 request latency.
        max_latency_ratio: Largest canary p95 / stable p95 ...
        latency_slack_ms: ... after adding this to the stable p95.
        max_accuracy_drop: Largest accuracy loss against the stable revision on the same
            labelled probes.
        require_approval: Hold the release until a person approves the version
            (``mlops registry approve``).
        approval_timeout_s: How long to wait for that approval.
    """

    steps: tuple[int, ...] = (10, 50)
    requests_per_step: int = 100
    bake_seconds: float = 0.0
    concurrency: int = 2
    max_error_rate: float = 0.01
    max_p95_ms: float = 250.0
    max_latency_ratio: float = 2.0
    latency_slack_ms: float = 20.0
    max_accuracy_drop: float = 0.02
    require_approval: bool = False
    approval_timeout_s: float = 0.0

    def __post_init__(self):
        if not self.steps or any(not 0 < int(p) < 100 for p in self.steps):
            raise ValueError(f"Invalid canary steps {self.steps}: expect percentages from 1 "
                             "to 99, e.g. 10,50.")
        if list(self.steps) != sorted(self.steps):
            raise ValueError(f"Canary steps {self.steps} must increase.")
        if self.requests_per_step < 1:
            raise ValueError(f"Invalid requests_per_step: {self.requests_per_step}. Expect ≥ 1.")

    @classmethod
    def from_steps_text(cls, steps: str, **kwargs) -> CanaryPolicy:
        try:
            parsed = tuple(int(s) for s in steps.replace(" ", "").split(",") if s)
        except ValueError as exc:
            raise ValueError(f"Invalid canary steps {steps!r}: expect e.g. '10,50'.") from exc
        return cls(steps=parsed, **kwargs)


def _accuracy(load: LoadResult, labels: Sequence[str]) -> float | None:
    pairs = [(p[0], t) for p, t in zip(load.predictions, labels, strict=True) if p]
    return sum(p == t for p, t in pairs) / len(pairs) if pairs else None


def judge(canary: LoadResult, stable: LoadResult | None, labels: Sequence[str],
          policy: CanaryPolicy, served: dict | None = None) -> tuple[list[str], dict]:
    """The rules of the policy applied to one step's measurements: (reasons to roll back,
    measurements). No reasons means the step passed. ``served`` holds, per role, what
    :func:`~components.deploy.telemetry.served_between` measured over the step."""
    c = canary.summary()
    c["accuracy"] = _accuracy(canary, labels)
    measured = {"canary": c}
    reasons = []
    served = served or {}
    if "canary" in served:
        c["served"] = cs = served["canary"]
        if cs["available"]:
            answered = cs["requests"] - cs["bad_requests"]  # a client's mistake is no error
            if cs["error_rate"] > policy.max_error_rate:
                reasons.append(f"canary server error rate {cs['error_rate']:.3f} > "
                               f"{policy.max_error_rate} over all it served in the step "
                               f"({cs['errors']} of {answered} requests)")
            above_buckets = cs.get("note", "").startswith("p95 above")
            if above_buckets or (cs["p95_ms"] is not None and cs["p95_ms"] > policy.max_p95_ms):
                reasons.append(f"canary p95 over all it served in the step "
                               f"{cs['p95_ms'] or 'above 5000'} ms > {policy.max_p95_ms} ms")
    if canary.error_rate > policy.max_error_rate:
        first = canary.errors[0][1] if canary.errors else ""
        reasons.append(f"canary error rate {canary.error_rate:.3f} > {policy.max_error_rate} "
                       f"(first error: {first})")
    if c["p95_ms"] > policy.max_p95_ms:
        reasons.append(f"canary p95 {c['p95_ms']:.1f} ms > {policy.max_p95_ms} ms")
    if stable is not None and stable.errors and len(stable.errors) == stable.requests:
        # Nothing to compare with: judge the canary on the absolute rules alone.
        measured["stable"] = {**stable.summary(), "accuracy": None,
                              "note": "the stable revision answered no probe request"}
        logger.warning("The stable revision answered no probe request (%s); the canary is "
                       "judged on the absolute rules only", stable.errors[0][1])
    elif stable is not None:
        s = stable.summary()
        s["accuracy"] = _accuracy(stable, labels)
        if "stable" in served:
            s["served"] = served["stable"]
        measured["stable"] = s
        limit = policy.max_latency_ratio * (s["p95_ms"] + policy.latency_slack_ms)
        if c["p95_ms"] > limit:
            reasons.append(f"canary p95 {c['p95_ms']:.1f} ms > {policy.max_latency_ratio} x "
                           f"(stable p95 {s['p95_ms']:.1f} + {policy.latency_slack_ms}) ms")
        # Rounded: 1.0 - 0.98 is 0.020000000000000018 in floating point, and one miss in 50
        # probes is exactly the default allowed drop, not more.
        if c["accuracy"] is not None and s["accuracy"] is not None and \
                round(s["accuracy"] - c["accuracy"], 9) > policy.max_accuracy_drop:
            reasons.append(f"canary accuracy {c['accuracy']:.3f} is "
                           f"{s['accuracy'] - c['accuracy']:.3f} below stable "
                           f"{s['accuracy']:.3f} (allowed drop {policy.max_accuracy_drop})")
    if c["accuracy"] is None:
        reasons.append("the canary answered no probe request")
    return reasons, measured


def _probe(urls: dict[str, str], name: str, images: Sequence[bytes], labels: Sequence[str],
           step: int, policy: CanaryPolicy, headers: dict[str, dict] | None = None
           ) -> tuple[dict[str, LoadResult], list[str], dict[str, dict]]:
    """Sends the same labelled probes to every revision at the same time (with
    ``headers[role]``), waits out the bake time, and reads what each revision served
    meanwhile from its metrics."""
    before = {role: scrape(url, name) for role, url in urls.items()}
    n = policy.requests_per_step
    idx = [(step * n + i) % len(images) for i in range(n)]
    batches, truth = [[images[i]] for i in idx], [labels[i] for i in idx]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        futures = {role: pool.submit(run_load, url, name, batches, policy.concurrency,
                                     headers=(headers or {}).get(role))
                   for role, url in urls.items()}
        loads = {role: f.result() for role, f in futures.items()}
    remaining = policy.bake_seconds - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    served = {role: served_between(before[role], scrape(url, name))
              for role, url in urls.items()}
    return loads, truth, served


def wait_for_approval(registry: ModelRegistry, model: str, version: int,
                      timeout_s: float, poll_s: float = 5.0) -> dict:
    """Waits until a person approved ``version``; a clear error after ``timeout_s``."""
    asked = False

    def approved() -> dict | None:
        nonlocal asked
        approval = registry.approval(model, version)
        if not approval and asked:
            logger.info("Waiting for approval of %s version %d ...", model, version)
        asked = True
        return approval

    approval = wait_until(approved, timeout_s, poll_s)
    if not approval:
        raise DeploymentError(
            f"Version {version} of {model!r} is waiting for approval. A person approves it "
            f"with `mlops registry approve {model} {version}`; then rerun the release (or "
            "give the release an approval timeout long enough to wait).")
    return approval


def _restore_stable(target: DeploymentTarget, environment: str):
    """The environment's state, with its stable revision running.

    The registry's ``production`` alias says what production serves. When nothing serves it
    (a local machine restarted, servers stopped) or its server is down, that version is
    deployed again first, so that a canary is always compared with the real production model.
    """
    dep = target.status(environment)
    if dep is not None and dep.stable is not None and \
            dep.stable.detail.get("running") is False:
        logger.warning("The stable revision (version %d) in %s is not running; restarting it",
                       dep.stable.version, environment)
        return target.deploy(environment, dep.stable.version)
    if dep is None and environment == PRODUCTION:
        aliases = target.registry.aliases(target.model_name)
        if "production" in aliases:
            logger.info("Nothing serves %s; restoring version %d (the registry's production "
                        "alias) before the release", environment, aliases["production"])
            return target.deploy(environment, aliases["production"])
    return dep


def release(target: DeploymentTarget, version: int, probe_images: Sequence[bytes],
            probe_labels: Sequence[str], policy: CanaryPolicy = CanaryPolicy(),
            environment: str = PRODUCTION, reason: str = "") -> dict:
    """Releases ``version`` to ``environment``; returns the recorded decision.

    Decisions: ``promoted`` (canary passed every step), ``rolled_back`` (a step failed or the
    canary never became ready; the stable revision kept serving), ``deployed`` (first release:
    nothing to canary against, so the version is deployed and health-checked alone; on
    failure it is removed: ``rolled_back``), ``unchanged`` (already the stable revision).
    """
    if len(probe_images) != len(probe_labels) or not probe_images:
        raise ValueError("Expect labelled probe images (as many labels as images, at least one).")
    registry, model = target.registry, target.model_name
    # Probes in a fixed shuffled order: a split is often stored class by class, and every
    # step must see every class.
    order = np.random.default_rng(0).permutation(len(probe_images))
    probe_images = [probe_images[i] for i in order]
    probe_labels = [probe_labels[i] for i in order]
    record = {"model": model, "version": int(version), "environment": environment,
              "policy": asdict(policy), "steps": [], "reasons": [], "reason": reason}
    if policy.require_approval:
        record["approval"] = wait_for_approval(registry, model, version,
                                               policy.approval_timeout_s)
    # A governance hold stops the release unless a person approved this version after the
    # hold was placed, or lifted it.
    record.update(registry.check_release(model, version))
    dep = _restore_stable(target, environment)
    if dep is not None and dep.canary is not None:
        logger.warning("A canary of version %d was left running in %s by an earlier release; "
                       "rolling it back first", dep.canary.version, environment)
        dep = target.rollback(environment)
    name = target.served_name(environment)
    record["previous_version"] = dep.stable.version if dep and dep.stable else None

    if dep is not None and dep.stable is not None and dep.stable.version == version:
        record["decision"] = "unchanged"
    elif dep is None or dep.stable is None:
        new = target.deploy(environment, version)
        loads, truth, served = _probe({"canary": new.stable.url}, name, probe_images,
                                      probe_labels, 0, policy,
                                      {"canary": target.probe_headers(environment, "stable")})
        reasons, measured = judge(loads["canary"], None, truth, policy, served)
        record["steps"].append({"percent": 100, "passed": not reasons, "reasons": reasons,
                                **measured})
        if reasons:
            target.delete(environment)
            record.update(decision="rolled_back", reasons=reasons)
        else:
            record["decision"] = "deployed"
    else:
        record.update(_canary(target, environment, version, probe_images, probe_labels,
                              policy, name))
    if record["decision"] in ("deployed", "promoted"):
        registry.set_alias(model, "production", version,
                           reason=f"{record['decision']} in {environment}"
                                  + (f" ({reason})" if reason else ""))
    record["seq"] = registry.record_release(model, record)
    logger.info("Release of %s version %d: %s%s", model, version, record["decision"],
                (" - " + "; ".join(record["reasons"])) if record["reasons"] else "")
    return record


def misrouted(loads: dict[str, LoadResult], dep) -> list[str]:
    """Reasons to distrust a step whose probes did not reach the revision they were meant for.

    The predictor names its model (``model_version``, a content id) in every answer. When a
    target knows the id each revision serves (KServeTarget does), an answer from another model
    means the tagged URL reached the wrong revision (in Knative, "latest" resolves to the
    latest *ready* revision), and the step would compare the stable model with itself.
    """
    if dep is None or dep.canary is None or dep.stable is None:
        return []
    expected = {"canary": dep.canary.detail.get("model_version"),
                "stable": dep.stable.detail.get("model_version")}
    if not expected["canary"] or expected["canary"] == expected["stable"]:
        return []  # unknown, or the same weights: the answers cannot tell the two apart
    out = []
    for role, load in loads.items():
        seen = [v for v in load.model_versions if v is not None]
        wrong = [v for v in seen if v != expected.get(role)]
        if expected.get(role) and wrong:
            out.append(f"{len(wrong)} of {len(seen)} {role} probes were answered by model "
                       f"{wrong[0]!r}, not the {role} revision's {expected[role]!r}")
    return out


def _canary(target: DeploymentTarget, environment: str, version: int,
            images: Sequence[bytes], labels: Sequence[str], policy: CanaryPolicy,
            name: str) -> dict:
    out: dict = {"steps": [], "reasons": []}
    try:
        target.start_canary(environment, version, policy.steps[0])
    except DeploymentError as exc:
        target.rollback(environment)
        out.update(decision="rolled_back", reasons=[f"the canary did not start: {exc}"])
        return out
    for k, percent in enumerate(policy.steps):
        if k:
            target.set_canary_traffic(environment, percent)
        urls = target.revision_urls(environment)
        live = getattr(target, "traffic", None)  # the local router's per-revision counts
        before = live(environment) if live else None
        # In a cluster the captures name Knative revisions: the step records which revision
        # had which role (KServeTarget.revision_roles; captured_traffic reads them with it).
        roles = getattr(target, "revision_roles", None)
        started = time.time()
        loads, truth, served = _probe(urls, name, images, labels, k, policy,
                                      {r: target.probe_headers(environment, r) for r in urls})
        reasons, measured = judge(loads["canary"], loads.get("stable"), truth, policy, served)
        reasons += misrouted(loads, target.status(environment))
        out["steps"].append({"percent": percent, "passed": not reasons, "reasons": reasons,
                             **measured})
        after = live(environment) if before is not None else None
        if after is not None:  # users' requests through the endpoint during the step
            out["steps"][-1]["live_traffic"] = {r: after.get(r, 0) - before.get(r, 0)
                                                for r in ("stable", "canary")}
        out["steps"][-1]["window"] = [started, time.time()]
        if roles is not None:
            out["steps"][-1]["revisions"] = roles(environment)
        logger.info("Canary step %d%%: %s", percent,
                    "passed" if not reasons else "FAILED: " + "; ".join(reasons))
        if reasons:
            target.rollback(environment)
            out.update(decision="rolled_back", reasons=reasons)
            return out
    target.promote(environment)
    out["decision"] = "promoted"
    return out


def release_markdown(record: dict) -> str:
    """The release decision for people."""
    lines = [f"# Release of {record['model']} version {record['version']} to "
             f"{record['environment']}", "",
             f"**{record['decision'].upper().replace('_', ' ')}** (previous production "
             f"version: {record.get('previous_version')})", ""]
    if record["steps"]:
        lines += ["| traffic | canary probe errors | canary p95 ms | stable p95 ms | "
                  "canary acc | stable acc | canary served (server errors) | result |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in record["steps"]:
            c, st = s["canary"], s.get("stable") or {}

            def f(v, fmt):
                return "–" if v is None else format(v, fmt)
            cs = c.get("served") or {}
            served = (f"{cs['requests']} ({cs['errors']})" if cs.get("available")
                      else cs.get("note", "–"))
            lines.append(f"| {s['percent']}% | {c['errors']}/{c['requests']} | "
                         f"{f(c['p95_ms'], '.1f')} | {f(st.get('p95_ms'), '.1f')} | "
                         f"{f(c['accuracy'], '.3f')} | {f(st.get('accuracy'), '.3f')} | "
                         f"{served} | {'pass' if s['passed'] else 'FAIL'} |")
    live = [(s["percent"], s["live_traffic"]) for s in record["steps"] if s.get("live_traffic")]
    if any(sum(t.values()) for _, t in live):
        lines += ["", "Users' requests through the endpoint during each step: " + "; ".join(
            f"{p}%: canary {t['canary']} of {t['canary'] + t['stable']}" for p, t in live)]
    if record["reasons"]:
        lines += ["", "Why:", ""] + [f"- {r}" for r in record["reasons"]]
    return "\n".join(lines) + "\n"
