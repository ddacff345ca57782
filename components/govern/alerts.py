"""Alerts: kept in the store first, then pushed to webhooks with retries; never lost.

An alert is written to ``governance/<model>/alerts/<seq>.json`` before any delivery is
tried, so a receiver that is down, slow or flapping can delay an alert but never lose it.
Each delivery round (``deliveries/<seq>/<recipient>/<n>.json``) records the attempts, the
time they took and the last error; an alert without a successful round for a recipient is
*undelivered*, is listed as such by ``mlops govern alerts``, and is tried again by the next
govern run. Delivery is at least once: a receiver may see an alert twice if the store went
down between a delivery and its record (Alertmanager's payload carries a fingerprint to
deduplicate on).

Sinks speak two formats: Slack-compatible incoming-webhook JSON (``text`` plus Block Kit
``blocks``; Mattermost and Rocket.Chat accept it too) and Alertmanager's webhook payload
(version 4), so anything that consumes Alertmanager notifications can take these alerts.
"""

from __future__ import annotations

import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from components.common.records import now_iso
from components.common.service import backoff
from components.govern.policy import Delivery, Recipient
from components.govern.records import GovernanceStore

logger = logging.getLogger(__name__)

ALERTS = "alerts"
DELIVERIES = "deliveries"


class DeliveryError(RuntimeError):
    """One delivery attempt failed. ``retry`` says whether trying again can help."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


def fingerprint(model: str, rule: str, check: str) -> str:
    """The condition an alert is about (model, rule, check): the key of deduplication."""
    return hashlib.sha256(f"{model}\x00{rule}\x00{check}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Sinks
# ------------------------------------------------------------------------------------------


class AlertSink(ABC):
    """Somewhere an alert goes. ``send`` raises :class:`DeliveryError` when it did not."""

    name: str = "sink"

    @abstractmethod
    def send(self, alert: dict, timeout_s: float) -> None:
        """Delivers one alert record (as stored) within ``timeout_s`` per request."""


class WebhookSink(AlertSink):
    """POSTs a JSON payload to a URL; 2xx is delivered.

    Connection errors, timeouts, 408, 429 and 5xx are worth retrying; any other answer is a
    configuration mistake (wrong URL, revoked token) that retrying will not fix.
    """

    def __init__(self, name: str, url: str):
        self.name = name
        self.url = url

    @abstractmethod
    def payload(self, alert: dict) -> dict:
        """The request body for one alert."""

    def send(self, alert: dict, timeout_s: float) -> None:
        import requests

        try:
            response = requests.post(self.url, json=self.payload(alert), timeout=timeout_s)
        except requests.Timeout as exc:
            raise DeliveryError(f"no answer from {self.url} within {timeout_s:g} s") from exc
        except requests.RequestException as exc:
            raise DeliveryError(f"cannot reach {self.url}: {type(exc).__name__}: "
                                f"{exc}") from exc
        if 200 <= response.status_code < 300:
            return
        retry = response.status_code in (408, 429) or response.status_code >= 500
        raise DeliveryError(f"{self.url} answered HTTP {response.status_code}: "
                            f"{response.text[:200]}", retry=retry)


class SlackSink(WebhookSink):
    """Slack's incoming-webhook JSON: a ``text`` fallback and Block Kit sections."""

    def payload(self, alert: dict) -> dict:
        icon = {"critical": ":rotating_light:", "warning": ":warning:",
                "info": ":information_source:"}.get(alert["severity"], "")
        if alert["status"] == "resolved":
            icon = ":white_check_mark:"
        title = (f"{icon} [{alert['status'].upper()}] {alert['model']} v{alert['model_version']}"
                 f": {alert['summary']}")
        fields = [f"*Rule:* {alert['rule']}", f"*Check:* {alert['check']}",
                  f"*Value:* {_fmt(alert.get('value'))} (threshold {_fmt(alert.get('threshold'))})",
                  f"*Window:* {alert.get('window_start', '')} – {alert.get('window_end', '')}"]
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": title}},
                  {"type": "section", "fields": [{"type": "mrkdwn", "text": f}
                                                 for f in fields]}]
        if alert.get("detail"):
            blocks.append({"type": "section",
                           "text": {"type": "mrkdwn", "text": alert["detail"][:2900]}})
        if alert.get("evidence"):
            blocks.append({"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"Evidence: {alert['evidence']}"}]})
        return {"text": title, "blocks": blocks}


class AlertmanagerSink(WebhookSink):
    """Alertmanager's webhook payload (``version: "4"``), one alert per notification."""

    def payload(self, alert: dict) -> dict:
        labels = {"alertname": _camel(alert["rule"]), "model": alert["model"],
                  "model_version": str(alert["model_version"]), "check": alert["check"],
                  "severity": alert["severity"], "source": "mlops-govern"}
        annotations = {"summary": alert["summary"], "description": alert.get("detail", ""),
                       "value": _fmt(alert.get("value")),
                       "threshold": _fmt(alert.get("threshold"))}
        if alert.get("evidence"):
            annotations["evidence"] = alert["evidence"]
        item = {"status": alert["status"], "labels": labels, "annotations": annotations,
                "startsAt": alert.get("starts_at") or alert["created"],
                "endsAt": alert["created"] if alert["status"] == "resolved"
                else "0001-01-01T00:00:00Z",
                "generatorURL": alert.get("evidence", ""),
                "fingerprint": alert["fingerprint"]}
        group = {"alertname": labels["alertname"], "model": alert["model"]}
        return {"version": "4", "receiver": self.name, "status": alert["status"],
                "groupKey": "{}:" + "{" + ",".join(f'{k}="{v}"' for k, v in group.items()) + "}",
                "truncatedAlerts": 0, "groupLabels": group, "commonLabels": labels,
                "commonAnnotations": annotations, "externalURL": "", "alerts": [item]}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


SINKS: dict[str, type[WebhookSink]] = {"slack": SlackSink, "alertmanager": AlertmanagerSink}


def sink_for(recipient: Recipient) -> AlertSink | None:
    """The sink of a recipient, or None when its URL is not configured."""
    url = recipient.resolved_url()
    return SINKS[recipient.format](recipient.name, url) if url else None


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
