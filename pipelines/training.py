"""The training pipeline: ingest → search → train best → test → (blessed?) package → register
→ application test → (passed?) canary release."""

import json
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset

from components.evaluate.component import evaluate_model, quality_gate
from components.ingest.component import ingest_data
from components.settings import PREDICTOR_IMAGE
from components.train.core import DEFAULT_SPACE
from pipelines.common import (
    never_cached,
    package_register_release,
    search_and_train,
    with_resources,
    with_storage_credentials,
    with_training_resources,
)


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
    layout: str = "auto",
    classes: str = "cats,dogs",
    label_aliases: str = "",
    test_fraction: float = 0.2,
    workers: int = 0,
    dataset_version: str = "",
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
        layout: How labels are read: auto, folders, kaggle or csv.
        classes: The declared classes, comma-separated; images labelled otherwise are
            quarantined (aliases cat=cats, dog=dogs).
        label_aliases: Other names of the classes, as alias=class pairs; empty means the
            defaults cat=cats and dog=dogs.
        test_fraction: Share of each class in the test split.
        workers: Parallel reads and decodes of the ingestion; 0 is one per CPU core.
        dataset_version: Train on this version, already published under dataset_root,
            instead of ingesting the lake (data_uri and the ingestion options are unused).
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
                         layout=layout, classes=classes, label_aliases=label_aliases,
                         test_fraction=test_fraction, workers=workers,
                         dataset_version=dataset_version)
    ingest.set_display_name("ingest data")
    trials, best = search_and_train(ingest.outputs["train"], work_root, search_space,
                                    search_mode, seed, trial_epochs, image_size, epochs)
    test = evaluate_model(model=best.outputs["model"], test=ingest.outputs["test"],
                          registry_uri=registry_uri, model_name=model_name,
                          min_accuracy=min_accuracy, min_macro_f1=min_macro_f1,
                          max_recall_gap=max_recall_gap, champion_tolerance=champion_tolerance)
    test.set_display_name("test model")
    gate = quality_gate(evaluation=test.outputs["evaluation"])
    gate.set_display_name("quality gate")
    with dsl.If(gate.output == True, name="blessed"):  # noqa: E712 (KFP DSL)
        tasks = package_register_release(
            model=best.outputs["model"], train=ingest.outputs["train"],
            test=ingest.outputs["test"], evaluation=test.outputs["evaluation"],
            registry_uri=registry_uri, model_name=model_name, deploy_target=deploy_target,
            namespace=namespace, serving_root=serving_root, p95_slo_ms=p95_slo_ms,
            canary_steps=canary_steps, canary_requests_per_step=canary_requests_per_step,
            canary_bake_seconds=canary_bake_seconds, require_approval=require_approval,
            approval_timeout_s=approval_timeout_s,
            cluster={"predictor_image": predictor_image,
                     "predictor_service_account": predictor_service_account,
                     "predictor_secret": predictor_secret})
    package, register, apptest, qa, release = (tasks[k] for k in ("package", "register",
                                                                  "apptest", "qa", "release"))
    for task in [ingest, *trials, best, test, gate, package, register, apptest, qa, release]:
        with_storage_credentials(task)
    # Resources per task; retries only where running a task twice does no harm (not for
    # register, which would claim a second version, nor for release).
    with_resources(ingest, "1", "2G", "2", "8G", retries=2)
    with_training_resources(trials, best)  # CPU, or the accelerators compiled in
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
