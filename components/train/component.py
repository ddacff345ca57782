"""KFP components: hyperparameter-search trials and training of the best configuration."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.settings import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def hpo_trial(
    train: Input[Dataset],
    trial: Output[Metrics],
    slot: int,
    n_slots: int,
    work_root: str,
    run_id: str,
    search_space: str = '{"lr": [0.003, 0.001], "batch_size": [32, 64], '
                        '"weight_decay": [0.0001, 0.01], "arch": ["small_cnn"]}',
    search_mode: str = "random",
    seed: int = 0,
    trial_epochs: int = 3,
    image_size: int = 64,
) -> float:
    """Trains one trial of the search and scores it on a validation split of the training data.

    Trials are separate tasks (parallel in the cluster). Each computes its own configuration
    from the search spec and its slot, and writes its result under ``work_root`` for the
    selection step.

    Args:
        train: The training split.
        trial: The trial's hyperparameters and validation scores.
        slot: This trial's index, 0 to n_slots - 1.
        n_slots: Trial slots compiled into the pipeline (random search samples this many).
        work_root: Scratch storage of the pipeline (s3://… or a path).
        run_id: The pipeline run; trial results go to ``<work_root>/hpo/<run_id>/``.
        search_space: JSON: parameter -> candidate values (lr, batch_size, weight_decay, arch…).
        search_mode: grid or random.
        seed: Seed of the sampling and of every trial's training.
        trial_epochs: Epochs per trial.
        image_size: Network input side in pixels.

    Returns:
        Validation accuracy, or -1.0 for an unused slot (grid smaller than the slots).
    """
    import logging

    from components.ingest.snapshot import read_split
    from components.train import core
    from components.train import trials as search

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hparams = search.trial_for_slot(search_space, search_mode, n_slots, seed, trial_epochs,
                                    image_size, slot)
    if hparams is None:
        trial.log_metric("unused", 1)
        return -1.0
    hp = core.HParams.from_dict(hparams)
    rows, meta = read_split(train.path)
    data = core.prepare(rows, meta["dataset_version"], hp.image_size)
    result, _ = core.train(data, hp)
    record = search.write_trial(work_root, run_id, slot, hparams, {
        "val_accuracy": result.val_accuracy, "val_loss": result.val_loss,
        "best_epoch": result.best_epoch, "dataset_version": meta["dataset_version"]})
    for key in ("val_accuracy", "val_loss", "best_epoch"):
        trial.log_metric(key, record[key])
    trial.metadata.update({"hparams": hparams})
    return float(result.val_accuracy)


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train_best(
    train: Input[Dataset],
    model: Output[Model],
    curve: Output[HTML],
    work_root: str,
    run_id: str,
    n_slots: int,
    epochs: int = 10,
    patience: int = 3,
) -> NamedTuple("TrainOutputs", hparams=str, val_accuracy=float):
    """Picks the best trial on validation accuracy and trains it for the full epochs.

    Args:
        train: The training split.
        model: The trained model folder (model.pt, model.json, curve.png).
        curve: The training curve.
        work_root: Scratch storage of the pipeline, where the trials wrote their results.
        run_id: The pipeline run.
        n_slots: Trial slots compiled into the pipeline.
        epochs: Maximum epochs of the final training.
        patience: Early-stopping patience.
    """
    import json
    import logging

    from components.ingest.snapshot import read_split
    from components.train import best as selection
    from components.train import core

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = selection.trial_results(work_root, run_id, n_slots)
    best, hp = selection.pick_best(results, epochs, patience)
    rows, meta = read_split(train.path)
    data = core.prepare(rows, meta["dataset_version"], hp.image_size)
    _, info = core.train(data, hp, model.path)
    model.metadata.update(selection.write_outputs(model.path, curve.path, hp, info, results,
                                                  best))
    outputs = NamedTuple("TrainOutputs", hparams=str, val_accuracy=float)
    return outputs(json.dumps(best["hparams"]), float(info["val_accuracy"]))


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train_best_trainjob(
    train: Input[Dataset],
    model: Output[Model],
    curve: Output[HTML],
    work_root: str,
    run_id: str,
    n_slots: int,
    image: str,
    epochs: int = 10,
    patience: int = 3,
    nodes: int = 2,
    procs_per_node: int = 1,
    accelerator_resource: str = "",
    accelerator_count: int = 0,
    node_cpu: str = "4",
    node_memory: str = "16Gi",
    storage_secret: str = "",
    storage_secret_keys: str = "",
    deadline_s: int = 21600,
    namespace: str = "",
) -> NamedTuple("TrainOutputs", hparams=str, val_accuracy=float):
    """Picks the best trial and trains it on Kubeflow Trainer: a TrainJob of several nodes.

    The same selection and outputs as ``train_best``; the training runs as a TrainJob
    (``torch-distributed`` runtime, ``torchrun -m components.train.ddp`` on every node) that
    this task creates, watches and deletes. The nodes read the split and its shards from
    ``work_root`` (object storage) and rank 0 writes the model folder back there, which this
    task copies to its output.

    Args:
        train: The training split.
        model: The trained model folder (model.pt, model.json, curve.png, trials.json).
        curve: The training curve.
        work_root: Scratch storage of the pipeline (s3://…, which the nodes can read).
        run_id: The pipeline run.
        n_slots: Trial slots compiled into the pipeline.
        image: The image of the TrainJob's nodes (the component image).
        epochs: Maximum epochs of the final training.
        patience: Early-stopping patience.
        nodes: Nodes (pods) of the TrainJob.
        procs_per_node: Training processes per node (one per GPU).
        accelerator_resource: The nodes' accelerator resource (nvidia.com/gpu); empty: CPU.
        accelerator_count: Accelerators per node.
        node_cpu: CPU request and limit per node.
        node_memory: Memory request and limit per node.
        storage_secret: Secret with the S3 credentials, given to the nodes as environment.
        storage_secret_keys: Its keys as KEY=ENV,…
        deadline_s: The TrainJob's activeDeadlineSeconds.
        namespace: Where the TrainJob runs (default: this task's namespace).
    """
    import json
    import logging
    from pathlib import Path

    from components.train import best as selection
    from components.train import trainjob as launcher

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = selection.trial_results(work_root, run_id, n_slots)
    best, hp = selection.pick_best(results, epochs, patience)
    launcher.train_on_trainer(
        train.path, f"{work_root.rstrip('/')}/trainjob/{run_id}", hp,
        launcher.JobNodes(image, nodes, procs_per_node, accelerator_resource, accelerator_count,
                          node_cpu, node_memory, storage_secret, storage_secret_keys,
                          deadline_s, namespace),
        run_id, model_dir=model.path)
    info = json.loads((Path(model.path) / "model.json").read_text())
    model.metadata.update(selection.write_outputs(model.path, curve.path, hp, info, results,
                                                  best))
    outputs = NamedTuple("TrainOutputs", hparams=str, val_accuracy=float)
    return outputs(json.dumps(best["hparams"]), float(info["val_accuracy"]))


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def hpo_trial_trainjob(
    train: Input[Dataset],
    trial: Output[Metrics],
    slot: int,
    n_slots: int,
    work_root: str,
    run_id: str,
    image: str,
    search_space: str = '{"lr": [0.003, 0.001], "batch_size": [32, 64], '
                        '"weight_decay": [0.0001, 0.01], "arch": ["small_cnn"]}',
    search_mode: str = "random",
    seed: int = 0,
    trial_epochs: int = 3,
    image_size: int = 64,
    nodes: int = 2,
    procs_per_node: int = 1,
    accelerator_resource: str = "",
    accelerator_count: int = 0,
    node_cpu: str = "4",
    node_memory: str = "16Gi",
    storage_secret: str = "",
    storage_secret_keys: str = "",
    deadline_s: int = 21600,
    namespace: str = "",
) -> float:
    """One trial of the search, trained on Kubeflow Trainer: a TrainJob of several nodes.

    The same configuration and outputs as ``hpo_trial`` (its ``slot-N.json`` under
    ``<work_root>/hpo/<run_id>/`` and its metrics); the training runs as a TrainJob that this
    task creates, watches and deletes, as ``train_best_trainjob``'s does.

    Args:
        train: The training split.
        trial: The trial's hyperparameters and validation scores.
        slot: This trial's index, 0 to n_slots - 1.
        n_slots: Trial slots compiled into the pipeline (random search samples this many).
        work_root: Scratch storage of the pipeline (s3://…, which the nodes can read).
        run_id: The pipeline run; trial results go to ``<work_root>/hpo/<run_id>/``.
        image: The image of the TrainJob's nodes (the component image).
        search_space: JSON: parameter -> candidate values (lr, batch_size, weight_decay, arch…).
        search_mode: grid or random.
        seed: Seed of the sampling and of every trial's training.
        trial_epochs: Epochs per trial.
        image_size: Network input side in pixels.
        nodes: Nodes (pods) of the TrainJob.
        procs_per_node: Training processes per node (one per GPU).
        accelerator_resource: The nodes' accelerator resource (nvidia.com/gpu); empty: CPU.
        accelerator_count: Accelerators per node.
        node_cpu: CPU request and limit per node.
        node_memory: Memory request and limit per node.
        storage_secret: Secret with the S3 credentials, given to the nodes as environment.
        storage_secret_keys: Its keys as KEY=ENV,…
        deadline_s: The TrainJob's activeDeadlineSeconds.
        namespace: Where the TrainJob runs (default: this task's namespace).

    Returns:
        Validation accuracy, or -1.0 for an unused slot (grid smaller than the slots).
    """
    import logging

    from components.train import core
    from components.train import trainjob as launcher
    from components.train import trials as search

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hparams = search.trial_for_slot(search_space, search_mode, n_slots, seed, trial_epochs,
                                    image_size, slot)
    if hparams is None:
        trial.log_metric("unused", 1)
        return -1.0
    scores = launcher.train_on_trainer(
        train.path, f"{work_root.rstrip('/')}/trainjob/{run_id}/slot-{slot}",
        core.HParams.from_dict(hparams),
        launcher.JobNodes(image, nodes, procs_per_node, accelerator_resource, accelerator_count,
                          node_cpu, node_memory, storage_secret, storage_secret_keys,
                          deadline_s, namespace),
        run_id, name_prefix="trial")
    record = search.write_trial(work_root, run_id, slot, hparams, scores)
    for key in ("val_accuracy", "val_loss", "best_epoch"):
        trial.log_metric(key, record[key])
    trial.metadata.update({"hparams": hparams})
    return float(record["val_accuracy"])
