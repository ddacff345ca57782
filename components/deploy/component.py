"""KFP components: application testing in a test environment, its gate, and the canary
release to production."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from components.settings import COMPONENT_IMAGE

# KFP runs a component's own source text: defaults are literals, helpers are imported inside.


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def application_test(
    test: Input[Dataset],
    evaluation: Input[Artifact],
    registry_uri: str,
    version: int,
    qa_report: Output[Artifact],
    qa_summary: Output[Markdown],
    qa_metrics: Output[Metrics],
    model_name: str = "pet-classifier",
    target: str = "kserve",
    namespace: str = "kubeflow-user-example-com",
    serving_root: str = "",
    predictor_image: str = "",
    predictor_service_account: str = "pet-classifier-predictor",
    predictor_secret: str = "pet-classifier-s3",
    accuracy_tolerance: float = 0.01,
    max_error_rate: float = 0.0,
    p95_slo_ms: float = 250.0,
    concurrency: int = 4,
    max_images: int = 0,
    keep_test_environment: bool = False,
) -> None:
    """Deploys the version to the test environment and sends the test split through it.

    The decision is in ``qa_report`` (``passed``); the ``qa_gate`` step turns it into the
    pipeline's branch.

    Args:
        test: The held-out test split.
        evaluation: The offline evaluation, whose accuracy the live one must match.
        registry_uri: The model registry.
        version: The registered version to test.
        qa_report: The report (JSON) with every measurement.
        qa_summary: The same for people (Markdown, shown in the Kubeflow UI).
        qa_metrics: Live accuracy, error rate and latency percentiles.
        model_name: Registered model name.
        target: A deployment target named in :data:`components.deploy.targets.TARGETS`:
            kserve (an InferenceService in ``namespace``) or local (model server processes;
            state in ``serving_root``).
        namespace: Kubernetes namespace for the kserve target (where manifests/ was applied).
        serving_root: State folder of the local target.
        predictor_image: The predictor image the InferenceService runs (kserve target;
            empty: the predictor image of this release of the project).
        predictor_service_account: The predictor's ServiceAccount, which lists its S3 Secret
            (kserve target; created by manifests/).
        predictor_secret: The S3 Secret KServe's storage initializer reads (kserve target).
        accuracy_tolerance: Largest allowed difference between live and offline accuracy.
        max_error_rate: Largest share of failed requests.
        p95_slo_ms: Largest allowed p95 request latency in milliseconds.
        concurrency: Requests in flight.
        max_images: Send at most this many test images (0: all).
        keep_test_environment: Leave the test deployment running afterwards.
    """
    import json
    import logging

    from components.common import k8s
    from components.deploy import apptest
    from components.deploy.targets import open_target

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = apptest.AppTestConfig(accuracy_tolerance=accuracy_tolerance,
                                   max_error_rate=max_error_rate, p95_slo_ms=p95_slo_ms,
                                   concurrency=concurrency, max_images=max_images)
    with open(evaluation.path) as f:
        offline = json.load(f)["metrics"]
    images, labels = apptest.load_labelled_split(test.path, max_images)
    deployer = open_target(target, registry_uri, model_name, namespace=namespace,
                           state_dir=serving_root,
                           config=k8s.ServingConfig(
                               image=predictor_image or k8s.DEFAULT_PREDICTOR_IMAGE,
                               service_account=predictor_service_account,
                               s3_secret=predictor_secret))
    deployment = deployer.deploy("test", version)
    try:
        report = apptest.application_test(deployment.url, deployment.name, images, labels,
                                          offline["accuracy"], test.metadata.get(
                                              "count", len(images)) or len(images), config)
    finally:
        if not keep_test_environment:
            deployer.delete("test")
    report.update(model_name=model_name, version=version)
    with open(qa_report.path, "w") as f:
        json.dump(report, f, indent=2)
    # Kept with the version too, for its compliance report (components/govern/report.py).
    from components.common.registry import ModelRegistry

    ModelRegistry(registry_uri).record_apptest(model_name, version, report)
    with open(qa_summary.path, "w") as f:
        f.write(apptest.report_markdown(report, model_name, version))
    load = report["load"]
    for key, value in (("live_accuracy", report["live_accuracy"]),
                       ("offline_accuracy", report["offline_accuracy"]),
                       ("error_rate", load["error_rate"]), ("p50_ms", load["p50_ms"]),
                       ("p95_ms", load["p95_ms"]), ("p99_ms", load["p99_ms"])):
        qa_metrics.log_metric(key, value)
    qa_report.metadata.update({"passed": report["passed"], "version": version,
                               "reasons": report["reasons"]})


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def qa_gate(qa_report: Input[Artifact]) -> bool:
    """True when the application test passed; logs why not otherwise."""
    import json
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with open(qa_report.path) as f:
        report = json.load(f)
    if not report["passed"]:
        logging.warning("Application test failed; not releasing: %s",
                        "; ".join(report["reasons"]))
    return bool(report["passed"])


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def release_model(
    test: Input[Dataset],
    registry_uri: str,
    version: int,
    release_report: Output[Artifact],
    release_summary: Output[Markdown],
    release_metrics: Output[Metrics],
    model_name: str = "pet-classifier",
    target: str = "kserve",
    namespace: str = "kubeflow-user-example-com",
    serving_root: str = "",
    predictor_image: str = "",
    predictor_service_account: str = "pet-classifier-predictor",
    predictor_secret: str = "pet-classifier-s3",
    canary_steps: str = "10,50",
    requests_per_step: int = 100,
    bake_seconds: float = 0.0,
    max_error_rate: float = 0.01,
    max_p95_ms: float = 250.0,
    max_latency_ratio: float = 2.0,
    max_accuracy_drop: float = 0.02,
    require_approval: bool = False,
    approval_timeout_s: float = 0.0,
    fail_on_rollback: bool = False,
    pipeline_run: str = "",
) -> str:
    """Releases the version to production by canary; promotes it or rolls it back.

    Probes are labelled images of the test split, sent to the canary and the stable revision
    alike at every traffic step. The registry's ``production`` alias moves only after a
    promotion; every decision is appended to the registry's release log.

    A rollback is a decision, not an error: the step succeeds, its summary starts with
    "ROLLED BACK", its metrics say ``rolled_back = 1``, and it returns ``rolled_back``, so the
    run keeps every measurement in the UI. A release that could not be carried out (the API
    refused a change, the stable revision is gone, production could not be restored) fails
    the step.

    Args:
        test: Labelled probe images (the held-out test split).
        registry_uri: The model registry.
        version: The registered version to release.
        release_report: Every step's measurements and the decision (JSON).
        release_summary: The same for people (Markdown).
        release_metrics: The decision and each step's canary and stable measurements.
        model_name: Registered model name.
        target: A deployment target named in :data:`components.deploy.targets.TARGETS` (see
            application_test).
        namespace: Kubernetes namespace for the kserve target.
        serving_root: State folder of the local target.
        predictor_image: The predictor image (kserve target; see application_test).
        predictor_service_account: The predictor's ServiceAccount (kserve target).
        predictor_secret: The predictor's S3 Secret (kserve target).
        canary_steps: Canary traffic percentages, comma-separated, increasing.
        requests_per_step: Probe requests per revision per step.
        bake_seconds: Least duration of each step.
        max_error_rate: Largest share of failed canary requests.
        max_p95_ms: Largest canary p95 latency.
        max_latency_ratio: Largest canary p95 relative to the stable one.
        max_accuracy_drop: Largest accuracy loss against the stable revision.
        require_approval: Hold the release until a person approves the version in the
            registry (``mlops registry approve NAME VERSION``).
        approval_timeout_s: How long to wait for the approval.
        fail_on_rollback: Also fail the step when the canary is rolled back (off by default:
            a rollback is the release doing its job, and a failed step loses its outputs).
        pipeline_run: The run, recorded with the decision.

    Returns:
        The decision: promoted, deployed (first release), unchanged or rolled_back.
    """
    import json
    import logging
    import math

    from components.common import k8s
    from components.deploy import apptest, release
    from components.deploy.targets import open_target

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    policy = release.CanaryPolicy.from_steps_text(
        canary_steps, requests_per_step=requests_per_step, bake_seconds=bake_seconds,
        max_error_rate=max_error_rate, max_p95_ms=max_p95_ms,
        max_latency_ratio=max_latency_ratio, max_accuracy_drop=max_accuracy_drop,
        require_approval=require_approval, approval_timeout_s=approval_timeout_s)
    images, labels = apptest.load_labelled_split(test.path)
    deployer = open_target(target, registry_uri, model_name, namespace=namespace,
                           state_dir=serving_root,
                           config=k8s.ServingConfig(
                               image=predictor_image or k8s.DEFAULT_PREDICTOR_IMAGE,
                               service_account=predictor_service_account,
                               s3_secret=predictor_secret))
    from components.register.core import run_name

    record = release.release(deployer, version, images, labels, policy,
                             reason=f"pipeline run {run_name(pipeline_run)}"
                             if pipeline_run else "")
    with open(release_report.path, "w") as f:
        json.dump(record, f, indent=2)
    with open(release_summary.path, "w") as f:
        f.write(release.release_markdown(record))
    release_report.metadata.update({"decision": record["decision"], "version": version,
                                    "previous_version": record["previous_version"],
                                    "reasons": record["reasons"]})
    release_metrics.log_metric("rolled_back", int(record["decision"] == "rolled_back"))
    release_metrics.log_metric("promoted", int(record["decision"] in ("promoted", "deployed")))
    for step in record["steps"]:
        for role in ("canary", "stable"):
            measured = step.get(role) or {}
            for key in ("error_rate", "p95_ms", "accuracy"):
                if isinstance(measured.get(key), (int, float)) and math.isfinite(measured[key]):
                    release_metrics.log_metric(f"{role}_{key}_at_{step['percent']}pct",
                                               float(measured[key]))
    if record["decision"] == "rolled_back":
        logging.warning("Version %d was rolled back: %s. Production still serves version %s.",
                        version, "; ".join(record["reasons"]), record["previous_version"])
    if record["decision"] == "rolled_back" and fail_on_rollback:
        raise RuntimeError(f"Version {version} was rolled back: {'; '.join(record['reasons'])}. "
                           f"Production still serves version {record['previous_version']}.")
    return record["decision"]
