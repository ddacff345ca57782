"""The training pipeline: ingest → search → train best → test → (blessed?) package → register
→ application test → (passed?) canary release."""

import json
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset

from components.deploy.component import application_test, qa_gate, release_model
from components.evaluate.component import evaluate_model, quality_gate
from components.ingest.component import ingest_data
from components.package.component import package_model
from components.register.component import register_model
from components.settings import HPO_SLOTS, PREDICTOR_IMAGE
from components.train.component import hpo_trial, train_best
from components.train.core import DEFAULT_SPACE
from pipelines.common import never_cached, with_resources, with_storage_credentials


@dsl.pipeline(
    name="pet-classifier-training",
    description="Builds a cat/dog classifier from the data lake and releases it: ingestion, "
                "hyperparameter search, training, testing with a quality gate, ONNX packaging, "
                "registering, application testing in a test environment, canary release.",
)
def training_pipeline(
    data_uri: str,
    dataset_root: str,
    registry_uri: str,
    work_root: str,
    model_name: str = "pet-classifier",
    labels_csv: str = "",
    classes: str = "cats,dogs",
    test_fraction: float = 0.2,
    search_space: str = json.dumps(DEFAULT_SPACE),
    search_mode: str = "random",
    seed: int = 0,
    trial_epochs: int = 3,
    epochs: int = 10,
    image_size: int = 64,
    min_accuracy: float = 0.9,
    min_macro_f1: float = 0.9,
    max_recall_gap: float = 0.1,
    champion_tolerance: float = 0.0,
    deploy_target: str = "kserve",
    namespace: str = "kubeflow-user-example-com",
    serving_root: str = "",
    predictor_image: str = PREDICTOR_IMAGE,
    predictor_service_account: str = "pet-classifier-predictor",
    predictor_secret: str = "pet-classifier-s3",
    p95_slo_ms: float = 250.0,
    canary_steps: str = "10,50",
    canary_requests_per_step: int = 100,
    canary_bake_seconds: float = 0.0,
    require_approval: bool = False,
    approval_timeout_s: float = 0.0,
) -> NamedTuple("TrainingOutputs", dataset_version=str, blessed=bool, evaluation=Artifact,
                test_split=Dataset):
    """Trains, tests, packages, registers and releases a model.

    Args:
        data_uri: The data lake, s3://bucket/prefix or a local path.
        dataset_root: Where dataset snapshots are published.
        registry_uri: The model registry root.
        work_root: Scratch storage for the run (trial results).
        model_name: Registered model name.
        labels_csv: Optional URI of a key,label CSV.
        classes: The declared classes, comma-separated; images labelled otherwise are
            quarantined (aliases cat=cats, dog=dogs).
        test_fraction: Share of each class in the test split.
        search_space: JSON: hyperparameter -> candidate values (lr, batch_size, weight_decay,
            arch).
        search_mode: grid or random (random samples one configuration per trial slot).
        seed: Seed of sampling and training.
        trial_epochs: Epochs per search trial.
        epochs: Maximum epochs of the final training (early stopping may end it sooner).
        image_size: Network input side in pixels.
        min_accuracy: Quality gate: lowest test accuracy.
        min_macro_f1: Quality gate: lowest macro F1.
        max_recall_gap: Quality gate: largest gap between per-class recalls.
        champion_tolerance: Quality gate: how much worse than production a candidate may be.
        deploy_target: Where the application test and the release deploy: kserve
            (InferenceServices in ``namespace``) or local (model server processes on the
            machine running the pipeline, state in ``serving_root``; kfp.local only).
        namespace: Kubernetes namespace of the InferenceServices (kserve), where
            manifests/overlays/<install mode> was applied: the profile namespace in
            multi-user Kubeflow (default kubeflow-user-example-com), kubeflow standalone.
        serving_root: State folder of the local target (ignored by kserve).
        predictor_image: The predictor image (components/serve/Dockerfile) the
            InferenceServices run; the default is set at compile time
            (``mlops compile --predictor-image``).
        predictor_service_account: The predictor's ServiceAccount in ``namespace``, which
            lists its S3 Secret (created by manifests/).
        predictor_secret: The S3 Secret KServe's storage initializer reads (created by
            manifests/ from base/s3.env); the release checks both exist before deploying.
        p95_slo_ms: Largest p95 request latency in milliseconds, in the application test and
            for the canary.
        canary_steps: Canary traffic percentages, comma-separated and increasing, e.g. 10,50.
        canary_requests_per_step: Probe requests sent to each revision at each canary step.
        canary_bake_seconds: Least duration of each canary step (real traffic meets the
            canary meanwhile).
        require_approval: Hold the release until a person approves the version
            (``mlops registry approve NAME VERSION``).
        approval_timeout_s: How long the release waits for that approval.
    """
    ingest = ingest_data(data_uri=data_uri, dataset_root=dataset_root, labels_csv=labels_csv,
                         classes=classes,
                         test_fraction=test_fraction)
    ingest.set_display_name("ingest data")
    trials = []
    # Trial slots are unrolled here instead of a dsl.ParallelFor: the cluster runs them in
    # parallel all the same, and kfp.local (2.16) cannot run anything that depends on a loop.
    for slot in range(HPO_SLOTS):
        trial = hpo_trial(train=ingest.outputs["train"], slot=slot, n_slots=HPO_SLOTS,
                          work_root=work_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                          search_space=search_space, search_mode=search_mode, seed=seed,
                          trial_epochs=trial_epochs, image_size=image_size)
        trial.set_display_name(f"hpo trial {slot}")
        trials.append(trial)
    best = train_best(train=ingest.outputs["train"], work_root=work_root,
                      run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, n_slots=HPO_SLOTS,
                      epochs=epochs).after(*trials)
    best.set_display_name("train best")
    test = evaluate_model(model=best.outputs["model"], test=ingest.outputs["test"],
                          registry_uri=registry_uri, model_name=model_name,
                          min_accuracy=min_accuracy, min_macro_f1=min_macro_f1,
                          max_recall_gap=max_recall_gap, champion_tolerance=champion_tolerance)
    test.set_display_name("test model")
    gate = quality_gate(evaluation=test.outputs["evaluation"])
    gate.set_display_name("quality gate")
    with dsl.If(gate.output == True, name="blessed"):  # noqa: E712 (KFP DSL)
        package = package_model(model=best.outputs["model"], test=ingest.outputs["test"],
                                evaluation=test.outputs["evaluation"], model_name=model_name)
        package.set_display_name("package ONNX")
        register = register_model(package=package.outputs["package"],
                                  model=best.outputs["model"],
                                  evaluation=test.outputs["evaluation"],
                                  train=ingest.outputs["train"], registry_uri=registry_uri,
                                  model_name=model_name,
                                  pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        register.set_display_name("register")
        apptest = application_test(test=ingest.outputs["test"],
                                   evaluation=test.outputs["evaluation"],
                                   registry_uri=registry_uri, version=register.outputs["version"],
                                   model_name=model_name, target=deploy_target,
                                   namespace=namespace, serving_root=serving_root,
                                   predictor_image=predictor_image,
                                   predictor_service_account=predictor_service_account,
                                   predictor_secret=predictor_secret, p95_slo_ms=p95_slo_ms)
        apptest.set_display_name("application test")
        qa = qa_gate(qa_report=apptest.outputs["qa_report"])
        qa.set_display_name("QA gate")
        with dsl.If(qa.output == True, name="qa-passed"):  # noqa: E712 (KFP DSL)
            release = release_model(test=ingest.outputs["test"], registry_uri=registry_uri,
                                    version=register.outputs["version"], model_name=model_name,
                                    target=deploy_target, namespace=namespace,
                                    serving_root=serving_root, predictor_image=predictor_image,
                                    predictor_service_account=predictor_service_account,
                                    predictor_secret=predictor_secret, canary_steps=canary_steps,
                                    requests_per_step=canary_requests_per_step,
                                    bake_seconds=canary_bake_seconds, max_p95_ms=p95_slo_ms,
                                    require_approval=require_approval,
                                    approval_timeout_s=approval_timeout_s,
                                    pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
            release.set_display_name("canary release")
    for task in [ingest, *trials, best, test, gate, package, register, apptest, qa, release]:
        with_storage_credentials(task)
    # Resources per task; retries only where running a task twice does no harm (not for
    # register, which would claim a second version, nor for release).
    with_resources(ingest, "1", "2G", "2", "8G", retries=2)
    for task in [*trials, best]:
        with_resources(task, "2", "4G", "4", "8G", retries=1)
    with_resources(test, "1", "2G", "2", "4G", retries=2)
    with_resources(package, "1", "2G", "2", "4G", retries=2)
    with_resources(register, "500m", "512M", "1", "1G")
    with_resources(apptest, "500m", "1G", "2", "2G", retries=1)
    with_resources(release, "500m", "1G", "2", "2G")
    for task in [gate, qa]:
        with_resources(task, "100m", "256M", "500m", "512M", retries=2)
    # Never from KFP's cache: what reads the lake, the registry's production alias, or
    # changes the registry and the cluster (KFP caches by inputs, not by what they point to).
    for task in [ingest, test, register, apptest, release]:
        never_cached(task)
    outputs = NamedTuple("TrainingOutputs", dataset_version=str, blessed=bool,
                         evaluation=Artifact, test_split=Dataset)
    return outputs(ingest.outputs["dataset_version"], gate.output,
                   test.outputs["evaluation"], ingest.outputs["test"])
