"""Where alerts go: one class per webhook format, and the one table of formats.

Sinks speak two formats: Slack-compatible incoming-webhook JSON (``text`` plus Block Kit
``blocks``; Mattermost and Rocket.Chat accept it too) and Alertmanager's webhook payload
(version 4), so anything that consumes Alertmanager notifications can take these alerts.
A new format is a :class:`WebhookSink` subclass here and one entry in :data:`SINKS`, which
the policy's ``recipients.<name>.format`` is validated against.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from components.common.errors import MlopsError


class DeliveryError(MlopsError, RuntimeError):
    """One delivery attempt failed. ``retry`` says whether trying again can help."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


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
        # For the person first (what changed, since when, how sure, accuracy, what next,
        # the report); the engineer's check names and numbers in the details below.
        check = (f"{alert['check']} ({alert['context']})" if alert.get("context")
                 else alert["check"])
        fields = [f"*Rule:* {alert['rule']}", f"*Check:* {check}",
                  f"*Value:* {_fmt(alert.get('value'))} (threshold {_fmt(alert.get('threshold'))})",
                  f"*Window:* {alert.get('window_start', '')} – {alert.get('window_end', '')}"]
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": title}}]
        if alert.get("text"):
            blocks.append({"type": "section",
                           "text": {"type": "mrkdwn", "text": alert["text"][:2900]}})
        blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f}
                                                     for f in fields]})
        details = " ".join(x for x in (alert.get("technical", ""), alert.get("detail", ""))
                           if x)
        if details:
            blocks.append({"type": "section",
                           "text": {"type": "mrkdwn", "text": f"*Details:* {details}"[:2900]}})
        if alert.get("evidence"):
            blocks.append({"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"Evidence: {alert['evidence']}"}]})
        return {"text": "\n".join(x for x in (title, alert.get("text", "")) if x),
                "blocks": blocks, "details": details}


class AlertmanagerSink(WebhookSink):
    """Alertmanager's webhook payload (``version: "4"``), one alert per notification."""

    def payload(self, alert: dict) -> dict:
        labels = {"alertname": _camel(alert["rule"]), "model": alert["model"],
                  "model_version": str(alert["model_version"]), "check": alert["check"],
                  "severity": alert["severity"], "source": "mlops-govern"}
        if alert.get("context"):  # the operating condition judged (day, night ...)
            labels["context"] = alert["context"]
        annotations = {"summary": alert["summary"],
                       "description": alert.get("text") or alert.get("detail", ""),
                       "details": " ".join(x for x in (alert.get("technical", ""),
                                                       alert.get("detail", "")) if x),
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


