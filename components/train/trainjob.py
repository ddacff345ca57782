"""Runs a training as a Kubeflow Trainer TrainJob: create, watch, clean up.

The KFP task that trains on several nodes creates a ``TrainJob``
(:func:`components.common.trainjob.train_job`: ``torchrun -m components.train.ddp`` on the
``torch-distributed`` runtime), watches its status until Trainer reports it finished, and
deletes it, whatever happened. The nodes read the shards from object storage and rank 0 writes
the model folder back there (``--out``); the task then copies it to its own output, so
evaluation, packaging and lineage see the same model folder as from one pod.

Rules read from kubeflow/trainer v2.3.0:

* Finished means a ``Complete`` or ``Failed`` condition with status ``True``
  (pkg/util/trainjob/trainjob.go:32-35).
* ``Complete`` and ``Failed`` are copied from the JobSet's ``Completed``/``Failed`` conditions
  with their reason and message (pkg/runtime/framework/plugins/jobset/jobset.go:450-457); a pod
  that fails past its Job's back-off fails its Job and so the JobSet (reason ``FailedJobs``),
  and ``status.jobsStatus[].failed`` counts failed child Jobs (jobset.go:459-469).
* ``activeDeadlineSeconds``: past it the controller sets ``Failed`` with reason
  ``DeadlineExceeded`` and deletes the JobSet (pkg/controller/trainjob_controller.go:155-178).
  The launcher also keeps its own deadline (the job's plus a grace period), for a controller
  that is not running.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from components.common import kubeapi
from components.common import trainjob as tj
from components.common.errors import EXIT_FAILURE
from components.common.service import wait_until
from components.common.storage import LocalStore, open_store
from components.train import core
from components.train.core import TrainError

logger = logging.getLogger(__name__)

#: Added to the TrainJob's own deadline before the launcher gives up on the controller.
GRACE_S = 60.0
#: Seconds between status reads.
POLL_S = 5.0
#: Where a pod's own namespace is mounted (the default namespace of its TrainJobs).
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class TrainJobFailed(TrainError):
    """The TrainJob failed, ran past its deadline, or could not be created: a failure (exit
    code 1, HTTP 500), not a mistake in the training input its base class stands for."""

    exit_code = EXIT_FAILURE
    http_status = 500


@dataclass
class TrainJobRun:
    """How a TrainJob ended."""

    name: str
    outcome: str
    reason: str
    message: str
    seconds: float
    failed_jobs: int
    nodes: int
    processes_per_node: int


def _custom_api(api_client=None):
    import kubernetes

    if api_client is None:
        try:
            api_client = kubeapi.api_client(kubeconfig=False)
        except kubeapi.KubeConfigMissing as exc:
            raise TrainJobFailed("A TrainJob is created from inside the cluster (the KFP task's "
                                 f"service account): no in-cluster configuration ({exc}).") from exc
    return kubernetes.client.CustomObjectsApi(api_client)


def run_train_job(cfg: tj.TrainJobConfig, api_client=None, poll_s: float | None = None,
                  timeout_s: float | None = None, keep: bool = False) -> TrainJobRun:
    """Creates the TrainJob, waits until it has finished, deletes it, returns how it ended.

    Args:
        cfg: The TrainJob (:class:`components.common.trainjob.TrainJobConfig`).
        api_client: A ``kubernetes.client.ApiClient``; by default the in-cluster one.
        poll_s: Seconds between status reads (default :data:`POLL_S`).
        timeout_s: The launcher's own deadline; by default the job's deadline plus
            :data:`GRACE_S`, or none when the job has none.
        keep: Leave the TrainJob in the cluster (for debugging); it is deleted by default.

    Raises:
        TrainJobFailed: Trainer is not installed, the job could not be created, it failed
            (the reason and message of its ``Failed`` condition), or it ran past the deadline.
    """
    from kubernetes.client.exceptions import ApiException

    api = _custom_api(api_client)
    poll_s = POLL_S if poll_s is None else poll_s
    obj = tj.train_job(cfg)
    where = dict(group=tj.GROUP, version=tj.VERSION, namespace=cfg.namespace, plural=tj.PLURAL)
    if timeout_s is None and cfg.deadline_s:
        timeout_s = cfg.deadline_s + GRACE_S
    try:
        api.create_namespaced_custom_object(body=obj, **where)
    except ApiException as exc:
        if exc.status == 404:
            raise TrainJobFailed(
                f"No TrainJob resource in the cluster ({tj.GROUP}/{tj.VERSION}): install "
                "Kubeflow Trainer v2 and its torch-distributed runtime (README, cluster "
                "section).") from exc
        raise TrainJobFailed(f"Cannot create TrainJob {cfg.name} in {cfg.namespace}: "
                             f"{exc.status} {exc.reason}: {exc.body}") from exc
    logger.info("Created TrainJob %s/%s: %d node(s) x %d process(es), image %s", cfg.namespace,
                cfg.name, cfg.num_nodes, cfg.num_proc_per_node, cfg.image)
    start = time.monotonic()
    failed_seen = [0]

    def finished():
        current = api.get_namespaced_custom_object(name=cfg.name, **where)
        failed = tj.failed_pods(current)
        if failed > failed_seen[0]:
            logger.warning("TrainJob %s: %d child job(s) failed (pod failures past their "
                           "back-off)", cfg.name, failed)
            failed_seen[0] = failed
        return tj.outcome(current)

    try:
        ended = wait_until(finished, math.inf if timeout_s is None else timeout_s, poll_s)
        if ended is None:
            raise TrainJobFailed(f"TrainJob {cfg.namespace}/{cfg.name} did not finish within "
                                 f"{timeout_s:.0f} s (deadline {cfg.deadline_s} s plus "
                                 f"{GRACE_S:.0f} s grace); it is deleted.")
        kind, reason, message = ended
        run = TrainJobRun(cfg.name, kind, reason, message, time.monotonic() - start,
                          failed_seen[0], cfg.num_nodes, cfg.num_proc_per_node)
        if kind == tj.FAILED:
            raise TrainJobFailed(f"TrainJob {cfg.namespace}/{cfg.name} failed: {reason}: "
                                 f"{message}")
        logger.info("TrainJob %s completed in %.0f s", cfg.name, run.seconds)
        return run
    finally:
        if not keep:
            try:
                api.delete_namespaced_custom_object(name=cfg.name, **where)
                logger.info("Deleted TrainJob %s/%s", cfg.namespace, cfg.name)
            except ApiException as exc:
                if exc.status != 404:
                    logger.error("Could not delete TrainJob %s/%s: %s %s", cfg.namespace,
                                 cfg.name, exc.status, exc.reason)


@dataclass
class JobNodes:
    """The nodes of a TrainJob as the KFP task's parameters give them."""

    image: str
    nodes: int = 2
    procs_per_node: int = 1
    accelerator_resource: str = ""
    accelerator_count: int = 0
    node_cpu: str = "4"
    node_memory: str = "16Gi"
    storage_secret: str = ""
    storage_secret_keys: str = ""
    deadline_s: int = 21600
    namespace: str = ""


def train_on_trainer(train_path: str, scratch_uri: str, hp: core.HParams, nodes: JobNodes,
                     run_id: str, model_dir: str | None = None,
                     name_prefix: str = "train") -> dict:
    """Trains ``hp`` on the split at ``train_path`` as a TrainJob; returns its ``result.json``.

    Copies the split to ``<scratch_uri>/train``, runs ``components.train.ddp`` on the nodes
    with ``--out <scratch_uri>/model`` (:func:`run_train_job`), and copies the model folder
    (without ``result.json``) into ``model_dir`` when one is given. The final training and the
    search trials on Trainer both launch through here.

    Raises:
        TrainError: ``scratch_uri`` is a local folder, which the nodes cannot reach.
        TrainJobFailed: The TrainJob failed (see :func:`run_train_job`).
    """
    scratch = open_store(scratch_uri)
    if isinstance(scratch, LocalStore):
        raise core.TrainError(f"work_root {scratch_uri!r} is a local folder: a TrainJob's nodes "
                              "read the split and write the model through object storage. "
                              "Give an s3:// work_root.")
    for name in ("dataset.json", "manifest.csv"):
        scratch.child("train").put(name, Path(train_path, name).read_bytes())
    namespace = nodes.namespace or Path(NAMESPACE_FILE).read_text()
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
           if os.environ.get(k)}
    keys = dict(item.split("=", 1) for item in nodes.storage_secret_keys.split(",") if item)
    cfg = tj.TrainJobConfig(
        name=f"{name_prefix}-{uuid.uuid4().hex[:12]}", namespace=namespace.strip(),
        image=nodes.image,
        args=("--train", scratch.child("train").uri, "--hparams",
              json.dumps(dataclasses.asdict(hp)), "--out", scratch.child("model").uri),
        num_nodes=nodes.nodes, num_proc_per_node=nodes.procs_per_node, cpu=nodes.node_cpu,
        memory=nodes.node_memory, accelerator_resource=nodes.accelerator_resource,
        accelerator_count=nodes.accelerator_count, env=env, secret_name=nodes.storage_secret,
        secret_keys=keys, deadline_s=nodes.deadline_s, labels={"pipeline-run": run_id[:63]})
    run_train_job(cfg)
    result_store = scratch.child("model")
    if model_dir is not None:
        out = Path(model_dir)
        out.mkdir(parents=True, exist_ok=True)
        for obj in result_store.list():
            if obj.key != "result.json":  # the program's summary, not part of the model folder
                (out / obj.key).write_bytes(result_store.get(obj.key))
    return result_store.get_json("result.json")
