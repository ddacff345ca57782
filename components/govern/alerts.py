"""Alerts: kept in the store first, then pushed to webhooks with retries; never lost.

An alert is written to ``governance/<model>/alerts/<seq>.json`` before any delivery is
tried, so a receiver that is down, slow or flapping can delay an alert but never lose it.
Each delivery round (``deliveries/<seq>/<recipient>/<n>.json``) records the attempts, the
time they took and the last error; an alert without a successful round for a recipient is
*undelivered*, is listed as such by ``mlops govern alerts``, and is tried again by the next
govern run. Delivery is at least once: a receiver may see an alert twice if the store went
down between a delivery and its record (Alertmanager's payload carries a fingerprint to
deduplicate on).

The sinks and their formats are in :mod:`components.govern.sinks`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from components.common.governance import GovernanceStore
from components.common.records import now_iso
from components.common.service import backoff
from components.govern.policy import Delivery, Recipient
from components.govern.sinks import SINKS, AlertSink, DeliveryError

logger = logging.getLogger(__name__)

ALERTS = "alerts"
DELIVERIES = "deliveries"


def fingerprint(model: str, rule: str, check: str) -> str:
    """The condition an alert is about (model, rule, check): the key of deduplication."""
    return hashlib.sha256(f"{model}\x00{rule}\x00{check}".encode()).hexdigest()[:16]


def sink_for(recipient: Recipient) -> AlertSink | None:
    """The sink of a recipient, or None when its URL is not configured."""
    url = recipient.resolved_url()
    return SINKS[recipient.format](recipient.name, url) if url else None


# ------------------------------------------------------------------------------------------
# The words a person reads
# ------------------------------------------------------------------------------------------

#: What a check kind means to the person who gets the alert.
WHAT_CHANGED = {
    "drift": "the images production receives have changed",
    "prediction_drift": "the share of answers per class has changed",
    "performance": "the model's accuracy has dropped",
    "integrity": "production receives images it cannot read",
    "telemetry": "production answers slowly or with errors",
    "slices": "the model does worse on part of the traffic",
}
#: What an integrity check means, where it is not that production cannot read its images.
WHAT_CHANGED_BY_CHECK = {
    "integrity.out_of_range": "production receives images unlike those the model was trained "
                              "on (brightness, contrast, sharpness or size outside their range)",
    "integrity.image_modes": "production receives images in a colour mode the model was not "
                             "trained on",
    "integrity.junk_inputs": "production receives blank, noise or too small frames",
    "integrity.bad_records": "the records of what production served are damaged or incomplete",
    "integrity.foreign": "the capture store holds records of something else",
}
#: What each policy action does, in a person's words.
NEXT_STEP = {
    "retrain": "a retraining starts (`mlops govern episodes` follows it); the new model "
               "replaces production only if it does better, through the quality gate and a "
               "canary",
    "rollback": "production goes back to the version it served before",
    "hold": "new releases wait until a person approves one (`mlops registry approve`)",
}
NOTHING_AUTOMATIC = ("nothing happens by itself: to retrain, `mlops govern retrain --reason "
                     "WHY`; to go back to the previous version, `mlops govern rollback "
                     "--reason WHY`")


def _when(text: str) -> str:
    return (text or "")[:16].replace("T", " ") + (" UTC" if text else "")


def how_sure(check) -> str:
    """The evidence behind a check, in words: a p-value, a sample size or the measurement."""
    extra = check.extra or {}
    p = extra.get("p_val")
    if p is None and check.kind == "drift" and isinstance(check.value, float) and \
            check.threshold is not None and check.threshold <= 0.1:
        p = check.value  # drift checks report their p-value as the value
    if isinstance(p, int | float):
        return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    if extra.get("n"):
        return f"measured on {extra['n']} requests"
    return "measured" if check.value is not None else "not measurable"


def measured_accuracy(verdict, context: str = "") -> str:
    """The model's accuracy in the window as a sentence (measured on labels, else estimated,
    else unknown), with the reference's: in ``context``'s part of the window when given."""
    for name, how in (("performance.accuracy", "on {n} labelled requests"),
                      ("performance.estimated_accuracy", "estimated without labels")):
        c = verdict.check(name, context or None)
        if c is None or c.value is None:
            continue
        ref = (c.extra or {}).get("reference_accuracy")
        was = f" (was {ref:.2f} when released)" if isinstance(ref, int | float) else ""
        return f"accuracy {c.value:.2f} {how.format(n=(c.extra or {}).get('n', '?'))}{was}"
    return "accuracy not measured in this window (no labels yet)"


def people_text(verdict, check, actions: list[str], status: str = "firing") -> tuple[str, str]:
    """(summary, text) of an alert for the person who receives it: what changed, since when,
    how sure, the model's measured accuracy, what happens next and the report's link."""
    what = WHAT_CHANGED_BY_CHECK.get(check.name) or \
        WHAT_CHANGED.get(check.kind, check.detail or check.name)
    context = getattr(check, "context", "")
    if context:  # one operating context's part of the window
        what = f"{what} in the {context} images"
    model = f"{verdict.model} version {verdict.model_version}"
    if status == "resolved":
        summary = f"back to normal after: {what}"
        return summary, (f"{model} is {summary} in the window {_when(verdict.window_start)} to "
                         f"{_when(verdict.window_end)}; {measured_accuracy(verdict, context)}.")
    summary = f"{what} ({how_sure(check)})"
    steps = [NEXT_STEP[a] for a in actions if a in NEXT_STEP]
    lines = [f"{what[0].upper()}{what[1:]}{',' if context else ''} in the window "
             f"{_when(verdict.window_start)} to {_when(verdict.window_end)} "
             f"({how_sure(check)}; {verdict.n_requests} requests).",
             f"Model: {model}, {measured_accuracy(verdict, context)}.",
             "Next: " + ("; ".join(steps) if steps else NOTHING_AUTOMATIC) + "."]
    report = verdict.report_uri or check.evidence
    if report:
        lines.append(f"Report: {report}")
    return summary, "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Delivery with retries
# ------------------------------------------------------------------------------------------


@dataclass
class DeliveryResult:
    recipient: str
    delivered: bool
    attempts: int
    seconds: float
    error: str = ""


def deliver(sink: AlertSink, alert: dict, delivery: Delivery,
            sleep: Callable[[float], None] = time.sleep) -> DeliveryResult:
    """Tries to deliver ``alert`` up to ``delivery.attempts`` times with exponential backoff.

    Every attempt is bounded by ``delivery.timeout_s``; a mistake retrying cannot fix (HTTP
    4xx other than 408/429) stops at once. Never raises for a failed delivery: the result says
    what happened.
    """
    started = time.monotonic()
    error = ""
    for attempt in range(1, delivery.attempts + 1):
        try:
            sink.send(alert, delivery.timeout_s)
            logger.info("Alert %s delivered to %s (attempt %d)", alert["seq"], sink.name, attempt)
            return DeliveryResult(sink.name, True, attempt, time.monotonic() - started)
        except DeliveryError as exc:
            error = str(exc)
            logger.warning("Alert %s to %s, attempt %d of %d: %s", alert["seq"], sink.name,
                           attempt, delivery.attempts, error)
            if not exc.retry:
                return DeliveryResult(sink.name, False, attempt, time.monotonic() - started,
                                      error)
        if attempt < delivery.attempts:
            sleep(backoff(attempt, delivery.backoff_s, delivery.max_backoff_s))
    return DeliveryResult(sink.name, False, delivery.attempts, time.monotonic() - started, error)


# ------------------------------------------------------------------------------------------
# The alert store
# ------------------------------------------------------------------------------------------


class AlertBook:
    """Alerts and their delivery rounds under ``governance/<model>/``."""

    def __init__(self, gov: GovernanceStore):
        self.gov = gov

    def create(self, alert: dict) -> dict:
        """Stores a new alert (create-only) and returns it with its ``seq``."""
        return self.gov.append(ALERTS, {**alert, "created": alert.get("created") or now_iso()})

    def alerts(self) -> list[dict]:
        return self.gov.records(ALERTS)

    def rounds(self, seq: int) -> dict[str, list[dict]]:
        """Delivery rounds of alert ``seq`` by recipient, oldest first."""
        prefix = f"{DELIVERIES}/{seq:08d}"
        recipients = {o.key.split("/")[2] for o in self.gov.store.list(prefix)
                      if o.key.count("/") == 3}
        return {r: self.gov.records(f"{prefix}/{r}") for r in sorted(recipients)}

    def record_round(self, seq: int, result: DeliveryResult) -> dict:
        record = {"alert": seq, "recipient": result.recipient, "delivered": result.delivered,
                  "attempts": result.attempts, "seconds": round(result.seconds, 3),
                  "error": result.error, "at": now_iso()}
        return self.gov.append(f"{DELIVERIES}/{seq:08d}/{result.recipient}",
                               lambda n: {**record, "round": n})

    def state(self, alert: dict) -> dict[str, str]:
        """recipient -> ``delivered`` | ``undelivered`` | ``pending`` (never tried)."""
        rounds = self.rounds(alert["seq"])
        out = {}
        for r in alert.get("recipients", []):
            tried = rounds.get(r, [])
            out[r] = ("delivered" if any(x["delivered"] for x in tried)
                      else "undelivered" if tried else "pending")
        return out

    def undelivered(self) -> list[tuple[dict, list[str]]]:
        """Alerts with recipients that have not got them, and those recipients."""
        out = []
        for alert in self.alerts():
            missing = [r for r, s in self.state(alert).items() if s != "delivered"]
            if missing:
                out.append((alert, missing))
        return out

    def last_by_condition(self) -> dict[str, dict]:
        """The latest alert of every condition (fingerprint)."""
        last: dict[str, dict] = {}
        for alert in self.alerts():
            last[alert["fingerprint"]] = alert
        return last


def send_to(book: AlertBook, alert: dict, recipients: list[str],
            policy_recipients: dict[str, Recipient], delivery: Delivery,
            sinks: dict[str, AlertSink] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> list[DeliveryResult]:
    """One delivery round of a stored alert to each recipient, each round recorded.

    ``sinks`` overrides the recipients' webhooks (tests, notebooks). A recipient with no
    webhook configured gets a failed round that says so, so the alert stays undelivered and
    visible until the webhook is set.
    """
    results = []
    for name in recipients:
        sink = (sinks or {}).get(name)
        if sink is None and name in policy_recipients:
            sink = sink_for(policy_recipients[name])
        if sink is None:
            rec = policy_recipients.get(name)
            why = (f"recipient {name!r} has no webhook: set {rec.url_env}" if rec and rec.url_env
                   else f"recipient {name!r} is not in the policy")
            result = DeliveryResult(name, False, 0, 0.0, why)
            logger.warning("Alert %s kept undelivered: %s", alert["seq"], why)
        else:
            result = deliver(sink, alert, delivery, sleep)
        book.record_round(alert["seq"], result)
        results.append(result)
    return results
