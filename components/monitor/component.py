"""KFP component: one monitoring run. A thin wrapper over :mod:`components.monitor.core`."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown, Metrics, Output

from components.settings import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def monitor_window(
    model_name: str,
    registry_uri: str,
    monitoring_uri: str,
    metrics: Output[Metrics],
    verdict: Output[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    start: str = "",
    end: str = "",
    hours: float = 24.0,
    version: str = "",
    backend: str = "alibi",
    settings_json: str = "{}",
    metrics_url: str = "",
    prometheus_url: str = "",
    namespace: str = "",
    explain: bool = True,
) -> NamedTuple("MonitorOutputs", status=str, n_requests=int, run_id=str):
    """Judges one window of captured traffic against the production version's reference.

    Args:
        model_name: Registered model name.
        registry_uri: The model registry (s3://… or a path).
        monitoring_uri: The monitoring store: captured traffic, labels, history, reports.
        metrics: Every check's value, for the Kubeflow UI.
        verdict: The verdict as JSON: each check's status, value, threshold and evidence.
        report: The HTML report with trend plots, slices and the saliency gallery.
        summary: The Markdown summary.
        start: Window start (ISO 8601); empty: ``hours`` before ``end``.
        end: Window end (ISO 8601); empty: now.
        hours: Window length when ``start`` is empty.
        version: Version to judge (number or @alias); empty: @production.
        backend: Drift backend: alibi (Alibi Detect, BSL 1.1) or torch (Apache-2.0).
        settings_json: Check thresholds as a JSON object (MonitorConfig fields).
        metrics_url: The predictor's base URL, scraped for telemetry.
        prometheus_url: A Prometheus server to query for telemetry instead (cluster).
        namespace: The predictor's namespace, for the Prometheus queries.
        explain: Build the saliency gallery and the error analysis by slice.
    """
    import datetime as dt
    import json
    import logging

    from components.monitor import core

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from components.monitor.window import parse_time

    end_dt = parse_time(end) if end else dt.datetime.now(dt.UTC)
    start_value = start or (end_dt - dt.timedelta(hours=hours))
    result = core.run_monitoring(
        model_name, registry_uri, monitoring_uri, start=start_value, end=end_dt,
        backend=backend, version=version or None, config=json.loads(settings_json or "{}"),
        metrics_url=metrics_url, prometheus_url=prometheus_url, namespace=namespace,
        explain=explain, full=True)
    v = result.verdict
    for check in v.checks:
        if isinstance(check.value, (int, float)) and not isinstance(check.value, bool):
            metrics.log_metric(check.key.replace("[", ".").rstrip("]"), float(check.value))
    metrics.log_metric("n_requests", float(v.n_requests))
    metrics.log_metric("n_labelled", float(v.n_labelled))
    with open(verdict.path, "w") as f:
        json.dump(v.to_dict(), f, indent=2, default=str)
    verdict.metadata.update({"status": v.status, "model": v.model,
                             "model_version": v.model_version, "window_start": v.window_start,
                             "window_end": v.window_end, "run_id": v.run_id,
                             "report_uri": v.report_uri,
                             "checks": {c.key: c.status for c in v.checks}})
    with open(report.path, "w") as f:
        f.write(result.report_html)
    with open(summary.path, "w") as f:
        f.write(result.summary_md)
    outputs = NamedTuple("MonitorOutputs", status=str, n_requests=int, run_id=str)
    return outputs(v.status, v.n_requests, v.run_id)
