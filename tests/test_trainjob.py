"""Distributed training on Kubeflow Trainer v2.3.0: the TrainJob objects against Trainer's own
CRDs, and the launcher's create/watch/clean-up against the Kubernetes API stand-in with
Trainer's status rules (``components/deploy/tests/trainjob_standin.py`` cites each).

Trainer's files are read from ``$MLOPS_TRAINER_DIR`` or ``shared/trainer/`` beside the
checkout; the project keeps no copy, and these tests skip without them.
"""

from __future__ import annotations

import pytest

from components.common import trainjob as tj
from components.deploy.tests import trainjob_standin
from components.deploy.tests.kube_standin import KubeStandIn, validate
from components.train.trainjob import TrainJobFailed, run_train_job

NS = "kubeflow-user-example-com"
needs_trainer = pytest.mark.skipif(
    trainjob_standin.trainer_dir() is None,
    reason="Kubeflow Trainer v2.3.0's CRDs are not here (MLOPS_TRAINER_DIR, shared/trainer/ "
           "beside the checkout); the project keeps no copy")
pytestmark = [needs_trainer, pytest.mark.timeout(60)]


def _cfg(name="train-abc", **kw) -> tj.TrainJobConfig:
    base = dict(name=name, namespace=NS, image="ghcr.io/pet-park-mlops/components:1",
                args=("--train", "s3://work/run/train", "--out", "s3://work/run/model"),
                num_nodes=2, num_proc_per_node=1, secret_name="mlops-s3",
                secret_keys={"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                             "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
                env={"AWS_ENDPOINT_URL": "http://seaweedfs.kubeflow:8333"})
    return tj.TrainJobConfig(**{**base, **kw})


@pytest.mark.parametrize("extra", [
    {},
    {"accelerator_resource": "nvidia.com/gpu", "accelerator_count": 4, "num_proc_per_node": 4,
     "cpu": "16", "memory": "64Gi"},
    {"deadline_s": 3600, "labels": {"pipeline-run": "r1"}, "num_nodes": 8},
])
def test_train_jobs_are_valid_against_trainers_crd(extra):
    obj = tj.train_job(_cfg(**extra))
    pruned, errors, unknown = trainjob_standin.validate_train_job(obj)
    assert errors == [] and unknown == []
    trainer = obj["spec"]["trainer"]
    assert obj["spec"]["runtimeRef"] == {"name": "torch-distributed",
                                         "apiGroup": "trainer.kubeflow.org",
                                         "kind": "ClusterTrainingRuntime"}
    assert trainer["command"][:3] == ["torchrun", "-m", "components.train.ddp"]
    assert trainer["numNodes"] == extra.get("num_nodes", 2)
    assert trainer["numProcPerNode"] == extra.get("num_proc_per_node", 1)
    secret_env = [e for e in trainer["env"] if "valueFrom" in e]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in secret_env} == {"mlops-s3"}
    limits = trainer["resourcesPerNode"]["limits"]
    if "accelerator_count" in extra:
        assert limits["nvidia.com/gpu"] == "4"
    else:
        assert "nvidia.com/gpu" not in limits


def test_the_referenced_runtime_is_the_stock_torch_distributed_one():
    runtime = trainjob_standin.torch_runtime()
    _, errors, unknown = validate({k: v for k, v in runtime.items() if k != "metadata"},
                                  trainjob_standin.crd_schema(trainjob_standin.RUNTIMES_CRD))
    assert errors == [] and unknown == []
    assert runtime["metadata"]["name"] == tj.TORCH_RUNTIME
    assert "torch" in runtime["spec"]["mlPolicy"]  # the torch plugin injects PET_* for torchrun


def test_a_wrong_field_is_what_the_crd_refuses():
    obj = tj.train_job(_cfg())
    obj["spec"]["trainer"]["numNodes"] = "two"
    obj["spec"]["activeDeadlineSeconds"] = 0
    _, errors, _ = trainjob_standin.validate_train_job(obj)
    assert any("numNodes" in e for e in errors) and any("activeDeadlineSeconds" in e
                                                        for e in errors)


@pytest.mark.parametrize("kw, match", [
    ({"name": "Train_1"}, "Invalid TrainJob name"),
    ({"num_nodes": 0}, "Invalid num_nodes: 0"),
    ({"accelerator_count": 1}, "Invalid accelerator_count: 1"),
])
def test_bad_configuration_names_the_value(kw, match):
    with pytest.raises(tj.TrainJobSpecError, match=match):
        _cfg(**kw)


@pytest.fixture
def standin():
    server = KubeStandIn(tick_s=0.01)
    url = server.start()
    import kubernetes

    conf = kubernetes.client.Configuration()
    conf.host = url
    server.client = kubernetes.client.ApiClient(conf)
    yield server
    server.stop()


def _statuses(standin, name):
    return [s for n, s in standin.trainjobs.history if n == name]


def _valid_status(status: dict) -> None:
    schema = trainjob_standin.crd_schema()["properties"]["status"]
    _, errors, unknown = validate(status, schema)
    assert errors == [] and unknown == [], (errors, unknown)


def test_created_running_complete_then_deleted(standin):
    standin.trainjobs.plan("train-ok", "complete", after_s=0.3)
    run = run_train_job(_cfg("train-ok"), standin.client, poll_s=0.02)
    assert (run.outcome, run.reason, run.nodes) == ("Complete", "AllJobsCompleted", 2)
    states = _statuses(standin, "train-ok")
    assert states[0]["jobsStatus"][0]["active"] == 1 and "conditions" not in states[0]
    assert states[-1]["conditions"][0]["type"] == "Complete"
    for status in states:
        _valid_status(status)
    assert standin.trainjobs.deleted == ["train-ok"] and not standin.trainjobs.jobs


def test_a_failed_pod_fails_the_job_which_is_deleted(standin):
    standin.trainjobs.plan("train-bad", "fail", after_s=0.1)
    with pytest.raises(TrainJobFailed, match="train-bad failed: FailedJobs"):
        run_train_job(_cfg("train-bad"), standin.client, poll_s=0.02)
    assert _statuses(standin, "train-bad")[-1]["jobsStatus"][0]["failed"] == 1
    assert standin.trainjobs.deleted == ["train-bad"]


def test_never_completes_the_deadline_fails_it_and_it_is_deleted(standin):
    standin.trainjobs.plan("train-stuck", "never")
    with pytest.raises(TrainJobFailed, match="DeadlineExceeded: TrainJob exceeded its active "
                                             "deadline"):
        run_train_job(_cfg("train-stuck", deadline_s=1), standin.client, poll_s=0.05)
    assert standin.trainjobs.deleted == ["train-stuck"] and not standin.trainjobs.jobs


def test_without_a_controller_the_launchers_own_deadline_ends_and_cleans_up(standin):
    standin.trainjobs.plan("train-orphan", "never")
    with pytest.raises(TrainJobFailed, match="did not finish within 0 s"):
        run_train_job(_cfg("train-orphan"), standin.client, poll_s=0.05, timeout_s=0.3)
    assert standin.trainjobs.deleted == ["train-orphan"]


def test_a_cluster_without_trainer_says_what_to_install(standin, monkeypatch, tmp_path):
    monkeypatch.setenv("MLOPS_TRAINER_DIR", str(tmp_path))
    with pytest.raises(TrainJobFailed, match="install Kubeflow Trainer v2"):
        run_train_job(_cfg("train-none"), standin.client, poll_s=0.02)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_trainjob_task_trains_on_two_nodes_and_leaves_the_one_pod_outputs(
        standin, dataset_dirs, s3_uri, tmp_path, monkeypatch):
    """The KFP task end to end: it copies the split to S3, creates the TrainJob, whose two
    nodes run ``torchrun -m components.train.ddp`` for real (the stand-in starts them with
    the runtime's PET_* environment), waits, deletes it and leaves what ``train_best`` leaves.

    The two nodes share this machine's cores: each trains on one torch thread
    (``MLOPS_TORCH_THREADS=1``, as a pod limited to one CPU), and so does the one-pod run;
    with two threads each the test took 164 s on a busy 2-core box, 33 s so (run one after
    the other, load average 10-14)."""
    import dataclasses
    import os

    import kubernetes
    from kfp.dsl import HTML, Dataset, Model

    from components.common.storage import open_store
    from components.train import core
    from components.train import trainjob as launcher
    from components.train.component import train_best, train_best_trainjob

    hp = dataclasses.asdict(core.HParams(image_size=32, lr=0.003, seed=0))
    trial = {"slot": 0, "hparams": hp, "val_accuracy": 0.9, "val_loss": 0.3, "best_epoch": 1}
    for root in (s3_uri, str(tmp_path / "work")):
        open_store(root).child("hpo/run-1").put_json("slot-0.json", trial)
    monkeypatch.setattr(launcher, "_custom_api",
                        lambda client=None: kubernetes.client.CustomObjectsApi(standin.client))
    monkeypatch.setattr(launcher, "POLL_S", 0.2)
    monkeypatch.setenv("MLOPS_TORCH_THREADS", "1")  # the nodes inherit the environment
    standin.trainjobs.default_plan = ("run", 0.0)
    train = Dataset(name="train", uri=dataset_dirs[0], metadata={})
    outputs = {}
    for how in ("trainjob", "pod"):
        model = Model(name="model", uri=str(tmp_path / how / "model"), metadata={})
        curve = HTML(name="curve", uri=str(tmp_path / how / "curve.html"), metadata={})
        if how == "trainjob":
            out = train_best_trainjob.python_func(
                train=train, model=model, curve=curve, work_root=s3_uri, run_id="run-1",
                n_slots=1, image="registry.example/pets/mlops:1", epochs=6, nodes=2,
                procs_per_node=1, storage_secret="mlops-s3",
                storage_secret_keys="accesskey=AWS_ACCESS_KEY_ID", namespace=NS,
                deadline_s=600)
        else:
            # The one-pod run gives the outputs to compare with, not a quality: one epoch
            # (test_ddp.py compares one process with two at the same global batch).
            out = train_best.python_func(train=train, model=model, curve=curve,
                                         work_root=str(tmp_path / "work"), run_id="run-1",
                                         n_slots=1, epochs=1)
        outputs[how] = (out, model, sorted(os.listdir(model.path)))
    (job_out, job_model, job_files), (pod_out, pod_model, pod_files) = (outputs["trainjob"],
                                                                        outputs["pod"])
    assert job_files == pod_files == ["curve.png", "model.json", "model.pt", "trials.json"]
    assert set(job_model.metadata) == set(pod_model.metadata)
    assert job_model.metadata["distributed"] == {"nodes": 2, "processes": 2, "backend": "gloo"}
    assert pod_model.metadata["distributed"] == {"nodes": 1, "processes": 1, "backend": ""}
    assert job_out.hparams == pod_out.hparams
    assert job_out.val_accuracy >= 0.8, job_out  # the two nodes trained one model together
    assert job_model.metadata["hparams"]["epochs"] == 6
    core.load_model(job_model.path)  # a loadable model folder, as evaluation reads it
    (name,) = standin.trainjobs.deleted  # created, finished and deleted
    assert standin.trainjobs.history[0][0] == name
    assert (tmp_path / "trainjob" / "curve.html").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_search_trial_runs_as_a_trainjob_and_writes_the_one_pod_trials_record(
        standin, dataset_dirs, s3_uri, tmp_path, monkeypatch):
    """``hpo_trial_trainjob`` end to end on two stand-in nodes (``torchrun`` for real, one
    epoch): the slot's configuration as ``hpo_trial`` picks it, a ``slot-N.json`` that the
    selection step reads like ``hpo_trial``'s, the TrainJob deleted; a slot the grid leaves
    unused creates no TrainJob."""
    import json

    import kubernetes
    from kfp.dsl import Dataset, Metrics

    from components.common.storage import open_store
    from components.train import best as selection
    from components.train import core
    from components.train import trainjob as launcher
    from components.train.component import hpo_trial_trainjob

    monkeypatch.setattr(launcher, "_custom_api",
                        lambda client=None: kubernetes.client.CustomObjectsApi(standin.client))
    monkeypatch.setattr(launcher, "POLL_S", 0.2)
    monkeypatch.setenv("MLOPS_TORCH_THREADS", "1")  # the nodes inherit the environment
    standin.trainjobs.default_plan = ("run", 0.0)
    space = json.dumps({"lr": [0.003], "batch_size": [32]})
    train = Dataset(name="train", uri=dataset_dirs[0], metadata={})
    accuracies = []
    for slot in (0, 1):
        trial = Metrics(name="trial", uri=str(tmp_path / f"trial-{slot}"), metadata={})
        accuracies.append(hpo_trial_trainjob.python_func(
            train=train, trial=trial, slot=slot, n_slots=2, work_root=s3_uri, run_id="run-t",
            image="registry.example/pets/mlops:1", search_space=space, search_mode="grid",
            trial_epochs=1, image_size=32, nodes=2, storage_secret="mlops-s3",
            storage_secret_keys="accesskey=AWS_ACCESS_KEY_ID", namespace=NS, deadline_s=600))
    assert accuracies[1] == -1.0
    (record,) = selection.trial_results(s3_uri, "run-t", 2)
    expected = core.search_space_trials(json.loads(space), "grid", 2, 0,
                                        core.HParams(image_size=32, epochs=1))[0]
    assert record["slot"] == 0 and record["hparams"] == expected
    assert set(record) == {"slot", "hparams", "val_accuracy", "val_loss", "best_epoch",
                           "dataset_version"}
    assert 0.0 <= record["val_accuracy"] <= 1.0 and record["val_accuracy"] == accuracies[0]
    assert record["dataset_version"] == json.loads(
        open_store(dataset_dirs[0]).get("dataset.json"))["dataset_version"]
    (name,) = standin.trainjobs.deleted  # one TrainJob, for the used slot only
    assert name.startswith("trial-")
