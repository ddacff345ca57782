"""The continuous-training pipeline: export labelled production data → ingest the updated lake
→ warm-started short search → train → champion vs challenger on the same test data (recent
production slice apart) → (blessed?) package → register with the trigger in the lineage →
application test → (passed?) canary release → the new version's monitoring reference active.

Governance starts it (``pipelines.launchers``: under kfp.local on this machine, through
``kfp.Client`` in a cluster) with the episode and verdict as ``trigger``; a person can start it
by hand (``mlops run`` through ``pipelines.local.run_local``, or ``mlops submit``).
"""

import json
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset

from components.evaluate.component import evaluate_challenger, quality_gate
from components.ingest.component import ingest_data
from components.retrain.component import (
    activate_reference,
    export_production_data,
    record_rejection,
    warm_start,
)
from components.settings import PREDICTOR_IMAGE
from pipelines.common import (
    never_cached,
    package_register_release,
    search_and_train,
    with_resources,
    with_storage_credentials,
    with_training_resources,
)

#: A short search around the production model's settings: the trials start from its weights.
CT_SPACE = {"lr": [1e-3, 3e-4], "batch_size": [32, 64], "weight_decay": [1e-4],
            "arch": ["small_cnn"]}


@dsl.pipeline(
    name="pet-classifier-continuous-training",
    description="Retrains the cat/dog classifier on the lake plus labelled production "
                "captures, and releases the new model only if it beats production on recent "
                "production data without losing on the rest: export, ingestion, warm-started "
                "search, champion/challenger test by slice, packaging, registering with the "
                "trigger, application test, canary release, monitoring reference.",
)
def continuous_training_pipeline(
    data_uri: str,
    dataset_root: str,
    registry_uri: str,
    work_root: str,
    monitoring_uri: str,
    model_name: str = "pet-classifier",
    trigger: str = "",
    since: float = 0.0,
    min_new_images: int = 1,
    export_since_episode: bool = True,
    labels_csv: str = "",
    layout: str = "auto",
    classes: str = "cats,dogs",
    label_aliases: str = "",
    test_fraction: float = 0.2,
    workers: int = 0,
    search_space: str = json.dumps(CT_SPACE),
    search_mode: str = "random",
    seed: int = 0,
    trial_epochs: int = 2,
    epochs: int = 6,
    image_size: int = 0,
    warm_start_from_production: bool = True,
    min_accuracy: float = 0.9,
    min_macro_f1: float = 0.9,
    max_recall_gap: float = 0.1,
    champion_tolerance: float = 0.0,
    min_recent_gain: float = 0.0,
    max_reference_drop: float = 0.02,
    min_recent_images: int = 10,
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
) -> NamedTuple("ContinuousTrainingOutputs", dataset_version=str, export_id=str, blessed=bool,
                evaluation=Artifact, test_split=Dataset):
    """Retrains on the latest data and releases the challenger only if it is better.

    Args:
        data_uri: The data lake, s3://bucket/prefix or a local path; the export adds
            ``<label>/production/<export_id>/`` prefixes to it (labelled by their folder,
            also in a lake read through a labels CSV). Retraining production: the lake it
            was trained from (its lineage's ``dataset_source``), read with the same
            ingestion options (``pipelines.launchers`` passes them).
        dataset_root: Where dataset snapshots are published.
        registry_uri: The model registry; its ``production`` alias is the champion.
        work_root: Scratch storage for the run (trial results, warm-start weights).
        monitoring_uri: The monitoring store: captured images and labels are read from it,
            the export's provenance and the governance audit records are written to it.
        model_name: Registered model name.
        trigger: What started the run: governance's trigger JSON (episode, verdict, checks)
            or a reason; recorded in the new version's lineage and the audit log.
        since: Export only captures from this unix time on (0: every capture not yet in the
            production model's dataset or the lake).
        min_new_images: Fewer new labelled production images than this exports nothing and
            ends the run at the export, before anything is ingested or trained, with an
            error that says why ("Nothing new to train on": e.g. the labelled requests'
            images were not kept by the capture) and what to do; 0 retrains on the lake
            even with nothing new.
        export_since_episode: With ``since`` 0, a run started by governance exports the
            captures since production was last judged normal (the end of the last window
            whose checks of the episode's kinds were measured and none alarmed, else the
            start of the window that opened the episode): the changed data. False exports
            every capture not yet in the lake. The retrained version's monitoring reference
            is built from the exported images it was not trained on (when there are at
            least 40), so it is judged against production as it is now.
        labels_csv: Optional URI of a key,label CSV (a lake without class folders), as
            production's dataset was ingested with.
        layout: How labels are read: auto, folders, kaggle or csv.
        classes: The declared classes, comma-separated; images labelled otherwise are
            quarantined by the ingest step.
        label_aliases: Other names of the classes, as alias=class pairs; empty means the
            defaults cat=cats and dog=dogs.
        test_fraction: Share of each class in the test split (hash-stable: images already
            ingested keep their split).
        workers: Parallel reads and decodes of the ingestion; 0 is one per CPU core.
        search_space: JSON: hyperparameter -> candidate values (lr, batch_size, weight_decay,
            arch); with warm start, ``pretrained`` and ``arch`` come from production.
        search_mode: grid or random.
        seed: Seed of sampling and training.
        trial_epochs: Epochs per search trial.
        epochs: Maximum epochs of the final training (early stopping may end it sooner).
        image_size: Network input side in pixels; 0 is production's (its lineage's
            hyperparameters; 64 without a production version).
        warm_start_from_production: Start every trial from the production model's PyTorch
            weights (registered with its package); from scratch if there are none.
        min_accuracy: Quality gate: lowest overall test accuracy.
        min_macro_f1: Quality gate: lowest macro F1.
        max_recall_gap: Quality gate: largest gap between per-class recalls.
        champion_tolerance: How much worse than production overall the challenger may be
            (accuracy and macro F1).
        min_recent_gain: By how much the challenger's accuracy on the recent-production test
            slice must exceed production's (0: strictly better).
        max_reference_drop: How much worse than production on the earlier (non-production)
            test images the challenger may be.
        min_recent_images: Fewest recent-production test images a gain is judged on.
        deploy_target: kserve (InferenceServices in namespace) or local (model servers).
        namespace: Kubernetes namespace for the kserve target.
        serving_root: State folder of the local target.
        predictor_image: The predictor image the InferenceServices run (kserve; default set
            at compile time, ``mlops compile --predictor-image``).
        predictor_service_account: The predictor's ServiceAccount in ``namespace`` (kserve;
            created by manifests/).
        predictor_secret: The predictor's S3 Secret in ``namespace`` (kserve; created by
            manifests/).
        p95_slo_ms: Application test and canary: largest p95 latency in milliseconds.
        canary_steps: Canary traffic percentages, comma-separated, increasing.
        canary_requests_per_step: Probe requests per revision per canary step.
        canary_bake_seconds: Least duration of each canary step.
        require_approval: Hold the release until a person approves the version.
        approval_timeout_s: How long to wait for the approval.
    """
    export = export_production_data(monitoring_uri=monitoring_uri, data_uri=data_uri,
                                    registry_uri=registry_uri, model_name=model_name,
                                    trigger=trigger, since=since, min_images=min_new_images,
                                    since_episode=export_since_episode)
    export.set_display_name("export production data")
    ingest = ingest_data(data_uri=data_uri, dataset_root=dataset_root, labels_csv=labels_csv,
                         layout=layout, classes=classes, label_aliases=label_aliases,
                         test_fraction=test_fraction, workers=workers).after(export)
    ingest.set_display_name("ingest data")
    space = warm_start(registry_uri=registry_uri, work_root=work_root,
                       run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, search_space=search_space,
                       model_name=model_name, enabled=warm_start_from_production,
                       image_size=image_size)
    space.set_display_name("warm start")
    trials, best = search_and_train(ingest.outputs["train"], work_root,
                                    space.outputs["search_space"], search_mode, seed,
                                    trial_epochs, space.outputs["image_size"], epochs)
    test = evaluate_challenger(model=best.outputs["model"], test=ingest.outputs["test"],
                               registry_uri=registry_uri, model_name=model_name,
                               min_accuracy=min_accuracy, min_macro_f1=min_macro_f1,
                               max_recall_gap=max_recall_gap,
                               champion_tolerance=champion_tolerance,
                               min_recent_gain=min_recent_gain,
                               max_reference_drop=max_reference_drop,
                               min_recent_images=min_recent_images)
    test.set_display_name("champion vs challenger")
    gate = quality_gate(evaluation=test.outputs["evaluation"])
    gate.set_display_name("retraining gate")
    with dsl.If(gate.output == False, name="not-blessed"):  # noqa: E712 (KFP DSL)
        rejected = record_rejection(evaluation=test.outputs["evaluation"],
                                    monitoring_uri=monitoring_uri, model_name=model_name,
                                    trigger=trigger)
        rejected.set_display_name("record rejection")

    def activate(tasks):
        task = activate_reference(registry_uri=registry_uri,
                                  version=tasks["register"].outputs["version"],
                                  decision=tasks["release"].outputs["Output"],
                                  monitoring_uri=monitoring_uri,
                                  model_name=model_name, trigger=trigger)
        task.set_display_name("activate monitoring reference")
        return {"activate": task}

    with dsl.If(gate.output == True, name="blessed"):  # noqa: E712 (KFP DSL)
        tasks = package_register_release(
            model=best.outputs["model"], train=ingest.outputs["train"],
            test=ingest.outputs["test"], evaluation=test.outputs["evaluation"],
            registry_uri=registry_uri, model_name=model_name, deploy_target=deploy_target,
            namespace=namespace, serving_root=serving_root, p95_slo_ms=p95_slo_ms,
            canary_steps=canary_steps, canary_requests_per_step=canary_requests_per_step,
            canary_bake_seconds=canary_bake_seconds, require_approval=require_approval,
            approval_timeout_s=approval_timeout_s, lineage_extra=export.outputs["lineage"],
            after_release=activate,
            cluster={"predictor_image": predictor_image,
                     "predictor_service_account": predictor_service_account,
                     "predictor_secret": predictor_secret})
    for task in [export, ingest, space, *trials, best, test, gate, rejected, *tasks.values()]:
        with_storage_credentials(task)
    # Resources as the training pipeline's; retries only where a second run does no harm
    # (the export is idempotent; register and release are not).
    with_resources(export, "500m", "1G", "1", "2G", retries=2)
    with_resources(ingest, "1", "2G", "2", "8G", retries=2)
    with_training_resources(trials, best)  # CPU, or the accelerators compiled in
    with_resources(test, "1", "2G", "2", "4G", retries=2)
    with_resources(tasks["package"], "1", "2G", "2", "4G", retries=2)
    with_resources(tasks["register"], "500m", "512M", "1", "1G")
    with_resources(tasks["apptest"], "500m", "1G", "2", "2G", retries=1)
    with_resources(tasks["release"], "500m", "1G", "2", "2G")
    with_resources(tasks["activate"], "500m", "1G", "1", "2G", retries=2)
    for task in [space, gate, rejected, tasks["qa"]]:
        with_resources(task, "100m", "256M", "500m", "512M", retries=2)
    # Never from KFP's cache: these read the capture store, the lake or the registry's
    # production alias, or change the registry and the cluster.
    for task in [export, ingest, space, test, rejected, tasks["register"], tasks["apptest"],
                 tasks["release"], tasks["activate"]]:
        never_cached(task)
    outputs = NamedTuple("ContinuousTrainingOutputs", dataset_version=str, export_id=str,
                         blessed=bool, evaluation=Artifact, test_split=Dataset)
    return outputs(ingest.outputs["dataset_version"], export.outputs["export_id"], gate.output,
                   test.outputs["evaluation"], ingest.outputs["test"])
