"""The monitoring pipeline: judge one window of production traffic (run it on a schedule)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown, Metrics

from components.monitor.component import monitor_window
from pipelines.common import with_resources, with_storage_credentials
from pipelines.steps import govern_verdict


@dsl.pipeline(
    name="pet-classifier-monitoring",
    description="Data integrity, drift, prediction drift, performance and telemetry of the "
                "production model over one window of captured traffic, with explanations.",
)
def monitoring_pipeline(
    registry_uri: str,
    monitoring_uri: str,
    model_name: str = "pet-classifier",
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
    policy: str = "",
    deploy_target: str = "none",
    serving_root: str = "",
    govern_launcher: str = "none",
    kfp_host: str = "",
    retrain_arguments: str = "{}",
) -> NamedTuple("MonitoringPipelineOutputs", status=str, verdict=Artifact, metrics=Metrics,
                report=HTML, summary=Markdown):
    """Monitors one window of the production model.

    Args:
        registry_uri: The model registry (s3://bucket/prefix or a path).
        monitoring_uri: The monitoring store the predictor captures into.
        model_name: Registered model name.
        start: Window start, ISO 8601; empty: ``hours`` before ``end``.
        end: Window end, ISO 8601; empty: now.
        hours: Window length when ``start`` is empty.
        version: Version to judge (number or @alias); empty: @production.
        backend: Drift backend: alibi (Alibi Detect, BSL 1.1, non-production) or torch
            (this project's, Apache-2.0).
        settings_json: Check thresholds as JSON (MonitorConfig fields).
        metrics_url: Predictor base URL to scrape /metrics from (local).
        prometheus_url: Prometheus server to query for telemetry (cluster).
        namespace: Namespace of the predictor pods, for the Prometheus queries.
        explain: Build the saliency gallery and error analysis by slice.
        policy: Governance policy (empty: the default; a YAML URI; or the YAML itself).
        deploy_target: Where production runs, for governance rollbacks: kserve, local, none.
        serving_root: State folder of the local target (kfp.local only; ignored by kserve).
        govern_launcher: How governance starts retraining: kfp (to kfp_host), local or none.
        kfp_host: The KFP API for retraining runs, e.g. http://ml-pipeline.kubeflow:8888.
        retrain_arguments: JSON arguments of the continuous-training run (data_uri,
            dataset_root, work_root, ...; the registry and monitoring store are passed on).
    """
    task = monitor_window(model_name=model_name, registry_uri=registry_uri,
                          monitoring_uri=monitoring_uri, start=start, end=end, hours=hours,
                          version=version, backend=backend, settings_json=settings_json,
                          metrics_url=metrics_url, prometheus_url=prometheus_url,
                          namespace=namespace, explain=explain)
    task.set_display_name("monitor window")
    # A retry judges the same window again (reads only, then one new verdict): safe to
    # repeat, like the training pipeline's tasks that have retries.
    with_resources(task, "1", "2G", "2", "6G", retries=2)
    task.set_caching_options(False)  # every run judges the traffic as it is now
    with_storage_credentials(task)
    gov = govern_verdict(verdict=task.outputs["verdict"], monitoring_uri=monitoring_uri,
                         registry_uri=registry_uri, model_name=model_name, policy=policy,
                         deploy_target=deploy_target, namespace=namespace,
                         serving_root=serving_root, launcher=govern_launcher, kfp_host=kfp_host,
                         retrain_arguments=retrain_arguments)
    gov.set_display_name("govern")
    # Governance is idempotent per verdict (components/govern/actions.py): a retry after a
    # lost pod never rolls back or holds twice.
    with_resources(gov, "250m", "512M", "1", "1G", retries=2)
    gov.set_caching_options(False)
    with_storage_credentials(gov)
    outputs = NamedTuple("MonitoringPipelineOutputs", status=str, verdict=Artifact,
                         metrics=Metrics, report=HTML, summary=Markdown)
    return outputs(task.outputs["status"], task.outputs["verdict"], task.outputs["metrics"],
                   task.outputs["report"], task.outputs["summary"])
