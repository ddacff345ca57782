"""Kubeflow Trainer v2.3.0 in the Kubernetes API stand-in (:mod:`kube_standin`): the
``trainjobs`` resource, validated against Trainer's own CRD, and the status rules of its
TrainJob controller.

Trainer's files come from ``$MLOPS_TRAINER_DIR``, else the steering repository's
``shared/trainer/`` beside this checkout (the CRDs gzip-compressed and the ``torch-distributed``
runtime, copied unchanged from kubeflow/trainer v2.3.0; the project keeps no copy). Without
them the stand-in has no ``trainjobs`` resource, as a cluster without Trainer installed answers
404, and the tests that need it skip.

Rules modelled, each from kubeflow/trainer at tag v2.3.0:

* Admission: the TrainJob is validated and pruned against the CRD's ``openAPIV3Schema``
  (manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml), as any custom resource; the
  stand-in's own ``validate`` does it. A ``runtimeRef`` whose kind is neither
  ``ClusterTrainingRuntime`` nor ``TrainingRuntime`` is not refused but marked
  ``Failed``/``TrainingRuntimeNotSupported`` (pkg/controller/trainjob_controller.go:101-106).
* A finished TrainJob (``Complete`` or ``Failed`` True; pkg/util/trainjob/trainjob.go:32-35)
  is not reconciled again (trainjob_controller.go:107).
* While it runs, ``status.jobsStatus`` mirrors the JobSet's replicated job ``node`` (the
  runtime's only one: manifests/base/runtimes/torch_distributed.yaml) with ``active``,
  ``ready``, ``succeeded``, ``failed``, ``suspended`` (jobset.go:459-469).
* ``Complete`` is the JobSet's ``Completed`` condition and ``Failed`` its ``Failed`` one, with
  their reason and message (pkg/runtime/framework/plugins/jobset/jobset.go:450-457): JobSet's
  reasons are ``AllJobsCompleted`` and ``FailedJobs`` (a pod that fails past its Job's
  back-off fails the Job; the runtime sets no JobSet failure policy, so the JobSet fails).
* ``activeDeadlineSeconds``, counted from the creation time, ends an unfinished job with
  ``Failed``/``DeadlineExceeded`` and the message "TrainJob exceeded its active deadline",
  and deletes its JobSet (trainjob_controller.go:155-178; pkg/constants/constants.go:88).
* ``DELETE`` removes the TrainJob (its JobSet and pods go with it by owner reference).

How each job ends is the test's choice (:meth:`TrainJobRules.plan`): complete or fail after a
delay, never finish, or ``run``: its nodes run for real, as local processes. Each node is the
TrainJob's command with the environment the ``torch`` plugin gives the trainer container
(``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``: pkg/runtime/framework/plugins/torch/torch.go:140-175) plus the job's
plain ``env``; the master is 127.0.0.1 instead of the first node's pod. The job is
``Complete`` when every node exits 0 and ``Failed`` (``FailedJobs``) when one exits otherwise
(the Job's pod back-off is not modelled: a failed node is a failed Job). Deleting the job, or
its deadline, stops the processes.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from components.deploy.tests import kube_standin as ks
from tests.support import free_port

TRAINJOBS_CRD = "trainer.kubeflow.org_trainjobs.yaml.gz"
RUNTIMES_CRD = "trainer.kubeflow.org_clustertrainingruntimes.yaml.gz"
TORCH_RUNTIME = "torch_distributed.yaml"
SHARED_TRAINER = Path(__file__).resolve().parents[3].parent / "shared" / "trainer"

DEADLINE_MESSAGE = "TrainJob exceeded its active deadline"  # constants.go:88


def trainer_dir() -> Path | None:
    """The folder with Trainer v2.3.0's CRDs and runtime: ``$MLOPS_TRAINER_DIR``, else
    ``shared/trainer/`` beside this checkout; None when neither has them."""
    named = os.environ.get("MLOPS_TRAINER_DIR", "")
    path = Path(named) if named else SHARED_TRAINER
    return path if (path / TRAINJOBS_CRD).is_file() else None


def crd_schema(name: str = TRAINJOBS_CRD) -> dict:
    """The ``openAPIV3Schema`` of one of Trainer's CRD files (the served version)."""
    folder = trainer_dir()
    if folder is None:
        raise FileNotFoundError(f"No Kubeflow Trainer CRDs: set MLOPS_TRAINER_DIR or put "
                                f"{TRAINJOBS_CRD} in {SHARED_TRAINER}")
    return ks._parse_crd(folder / name)


def torch_runtime() -> dict:
    """The stock ``torch-distributed`` ClusterTrainingRuntime (the file in the Trainer folder)."""
    folder = trainer_dir()
    if folder is None:
        raise FileNotFoundError(f"No {TORCH_RUNTIME}: set MLOPS_TRAINER_DIR")
    return yaml.safe_load((folder / TORCH_RUNTIME).read_text())


def validate_train_job(obj: dict) -> tuple[dict, list[str], list[str]]:
    """(pruned object, errors, unknown fields) of a TrainJob against Trainer's CRD."""
    body = {k: v for k, v in obj.items() if k != "metadata"}
    return ks.validate(body, crd_schema())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class TrainJobRules:
    """The ``trainjobs`` resource and Trainer's TrainJob controller, inside a KubeStandIn."""

    def __init__(self, server: ks.KubeStandIn):
        self.server = server
        self.jobs: dict[tuple[str, str], dict] = {}
        self.created_at: dict[tuple[str, str], float] = {}
        self.plans: dict[str, tuple[str, float]] = {}
        self.default_plan = ("complete", 0.1)
        self.deleted: list[str] = []
        #: Every status each job took, in order: (name, status)
        self.history: list[tuple[str, dict]] = []
        #: ``run`` jobs: name -> the node processes, and their log files
        self.nodes: dict[str, list[subprocess.Popen]] = {}
        self.logs: dict[str, list[Path]] = {}

    def plan(self, name: str, outcome: str = "complete", after_s: float = 0.1) -> None:
        """How the TrainJob ``name`` ends: ``complete``, ``fail`` (a pod fails past its
        back-off) after ``after_s`` seconds of running, or ``never``."""
        if outcome not in ("complete", "fail", "never", "run"):
            raise ValueError(f"Unknown outcome {outcome!r}: use complete, fail, never or run")
        self.plans[name] = (outcome, after_s)

    # -- REST ------------------------------------------------------------------------------

    def handle(self, method: str, ns: str, name: str | None, status: str | None, body: bytes,
               strict: bool):
        if trainer_dir() is None:
            raise ks.ApiError(404, "NotFound", "the server could not find the requested "
                                               "resource (Kubeflow Trainer is not installed)")
        if method == "POST" and not name:
            return 201, self._create(ns, json.loads(body), strict)
        if name and (ns, name) not in self.jobs:
            raise ks.ApiError(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not '
                                               "found")
        if method == "GET" and name:
            return 200, copy.deepcopy(self.jobs[(ns, name)])
        if method == "GET":
            return 200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList",
                         "items": [copy.deepcopy(o) for (n, _), o in sorted(self.jobs.items())
                                   if n == ns]}
        if method == "DELETE" and name and not status:
            obj = self.jobs.pop((ns, name))
            self.created_at.pop((ns, name), None)
            self._stop_nodes(name)
            self.deleted.append(name)
            return 200, obj
        raise ks.ApiError(405, "MethodNotAllowed", f"{method} trainjobs (not modelled)")

    def _create(self, ns: str, obj: dict, strict: bool) -> dict:
        if obj.get("apiVersion") != "trainer.kubeflow.org/v1alpha1" or \
                obj.get("kind") != "TrainJob":
            raise ks.ApiError(400, "BadRequest", "expected trainer.kubeflow.org/v1alpha1 "
                                                 f"TrainJob, got {obj.get('apiVersion')} "
                                                 f"{obj.get('kind')}")
        meta = dict(obj.get("metadata") or {})
        name = meta.get("name", "")
        if not ks._DNS_LABEL.match(name or "") or len(name) > 63:
            raise ks.ApiError(422, "Invalid", f"metadata.name: Invalid value: {name!r}")
        pruned, errors, unknown = validate_train_job(obj)
        if errors:
            raise ks.ApiError(422, "Invalid", f'TrainJob.trainer.kubeflow.org "{name}" is '
                                              f"invalid: {'; '.join(errors)}")
        if unknown and strict:
            raise ks.ApiError(400, "BadRequest", "strict decoding error: unknown field "
                              + ", ".join(f'"{u.removeprefix("<root>.")}"' for u in unknown))
        meta.setdefault("namespace", ns)
        if (ns, name) in self.jobs:
            raise ks.ApiError(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{name}" '
                                                    "already exists")
        meta.update(generation=1, uid=str(uuid.uuid4()), creationTimestamp=_now(),
                    resourceVersion=self.server._next_rv())
        pruned.pop("status", None)
        pruned["metadata"] = meta
        self.jobs[(ns, name)] = pruned
        self.created_at[(ns, name)] = time.monotonic()
        return copy.deepcopy(pruned)

    # -- the controller --------------------------------------------------------------------

    def reconcile_all(self) -> None:
        for key in list(self.jobs):
            self.reconcile(*key)

    def reconcile(self, ns: str, name: str) -> None:
        job = self.jobs[(ns, name)]
        before = copy.deepcopy(job.get("status"))
        self._reconcile(ns, name, job)
        if job.get("status") != before:
            self.history.append((name, copy.deepcopy(job["status"])))

    def _reconcile(self, ns: str, name: str, job: dict) -> None:
        if self._finished(job):  # trainjob_controller.go:107
            return
        status = job.setdefault("status", {})
        kind = job["spec"]["runtimeRef"].get("kind", "ClusterTrainingRuntime")
        if kind not in ("ClusterTrainingRuntime", "TrainingRuntime"):  # controller.go:101-106
            self._set(status, "Failed", "TrainingRuntimeNotSupported",
                      f"unsupported runtime: {kind}")
            return
        elapsed = time.monotonic() - self.created_at[(ns, name)]
        deadline = job["spec"].get("activeDeadlineSeconds")
        if deadline and elapsed > deadline:  # controller.go:155-178
            self._set(status, "Failed", "DeadlineExceeded", DEADLINE_MESSAGE)
            self._stop_nodes(name)  # the JobSet is deleted, and its pods with it
            return
        outcome, after_s = self.plans.get(name, self.default_plan)
        if outcome == "run":
            self._run(name, job, status)
            return
        jobs = {"name": "node", "ready": 1, "succeeded": 0, "failed": 0, "active": 1,
                "suspended": 0}  # jobset.go:459-469
        if outcome != "never" and elapsed >= after_s:
            if outcome == "complete":  # jobset.go:450-453
                jobs.update(ready=0, active=0, succeeded=1)
                self._set(status, "Complete", "AllJobsCompleted",
                          "jobset completed successfully")
            else:  # jobset.go:454-457
                jobs.update(ready=0, active=0, failed=1)
                self._set(status, "Failed", "FailedJobs",
                          "jobset failed due to one or more job failures")
        status["jobsStatus"] = [jobs]

    @staticmethod
    def _finished(job: dict) -> bool:
        return any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                   for c in (job.get("status") or {}).get("conditions") or [])

    @staticmethod
    def _set(status: dict, kind: str, reason: str, message: str) -> None:
        conds = [c for c in status.get("conditions") or [] if c["type"] != kind]
        conds.append({"type": kind, "status": "True", "reason": reason, "message": message,
                      "lastTransitionTime": _now()})
        status["conditions"] = conds


    # -- nodes as local processes ------------------------------------------------------------

    def _run(self, name: str, job: dict, status: dict) -> None:
        trainer = job["spec"].get("trainer") or {}
        n = int(trainer.get("numNodes") or 1)
        if name not in self.nodes:
            self.nodes[name] = self._start_nodes(name, trainer, n)
        codes = [p.poll() for p in self.nodes[name]]
        running = sum(c is None for c in codes)
        failed = sum(c not in (None, 0) for c in codes)
        jobs = {"name": "node", "ready": int(running > 0), "succeeded": 0,
                "failed": int(failed > 0), "active": int(running > 0 and not failed),
                "suspended": 0}
        if failed:
            self._stop_nodes(name)
            jobs.update(active=0, ready=0)
            self._set(status, "Failed", "FailedJobs",
                      "jobset failed due to one or more job failures")
        elif not running:
            jobs.update(succeeded=1)
            self._set(status, "Complete", "AllJobsCompleted", "jobset completed successfully")
        status["jobsStatus"] = [jobs]

    def _start_nodes(self, name: str, trainer: dict, n: int) -> list[subprocess.Popen]:
        command = list(trainer.get("command") or []) + list(trainer.get("args") or [])
        if command[:1] == ["torchrun"]:
            command = [sys.executable, "-m", "torch.distributed.run", *command[1:]]
        port = free_port()
        root = Path(__file__).resolve().parents[3]
        env = {**os.environ, **{e["name"]: e["value"] for e in trainer.get("env") or []
                                if "value" in e},
               "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [
                   os.environ.get("PYTHONPATH")])]),
               "PET_NNODES": str(n), "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode")
                                                               or 1),
               "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
        procs, logs = [], []
        for rank in range(n):
            log = Path(tempfile.mkstemp(prefix=f"{name}-node{rank}-", suffix=".log")[1])
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(command, env={**env, "PET_NODE_RANK": str(rank)},
                                              cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            logs.append(log)
        self.logs[name] = logs
        return procs

    def _stop_nodes(self, name: str) -> None:
        for proc in self.nodes.get(name, []):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    def stop_all(self) -> None:
        """Stops every node process (the stand-in is stopping)."""
        for name in list(self.nodes):
            self._stop_nodes(name)
