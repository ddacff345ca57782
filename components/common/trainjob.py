"""Kubeflow Trainer v2 ``TrainJob`` objects as pure functions returning dicts.

A distributed training runs as a ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``) that
references the stock ``torch-distributed`` ClusterTrainingRuntime (installed with Kubeflow
Trainer; ``manifests/base/runtimes/torch_distributed.yaml`` of kubeflow/trainer v2.3.0). The
runtime starts ``numNodes`` pods of the given image and injects torchrun's settings into each
(``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``: pkg/runtime/framework/plugins/torch/torch.go:168-175, the names in
pkg/constants/constants.go:190-203), which ``torchrun`` reads as its defaults: the command
below is ``torchrun -m components.train.ddp …``, the same program that runs locally.

The status the launcher reads (pkg/apis/trainer/v1alpha1/trainjob_types.go:57-82): a
``Complete`` or ``Failed`` condition with status ``True`` ends the job
(pkg/util/trainjob/trainjob.go:32-35, IsTrainJobFinished).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from components.common.errors import UserError

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
#: The ClusterTrainingRuntime a stock Kubeflow Trainer install provides for PyTorch.
TORCH_RUNTIME = "torch-distributed"

#: Condition types (trainjob_types.go:57-64) and the deadline's reason (trainjob_types.go:79-82).
COMPLETE = "Complete"
FAILED = "Failed"
SUSPENDED = "Suspended"
DEADLINE_EXCEEDED = "DeadlineExceeded"

#: The program every node runs; torchrun takes nodes, processes and the rendezvous from the
#: runtime's PET_* variables.
TRAIN_COMMAND = ("torchrun", "-m", "components.train.ddp")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class TrainJobSpecError(UserError, ValueError):
    """A TrainJob that cannot be built; the message names the value and what is expected."""


@dataclass(frozen=True)
class TrainJobConfig:
    """What a distributed training asks of the cluster.

    Attributes:
        name: The TrainJob's name (a DNS-1123 label, at most 63 characters).
        namespace: Where it runs (the pipeline's namespace).
        image: The component image (it holds this project and torch).
        args: Arguments of ``python -m components.train.ddp`` (``--train``, ``--out``…).
        num_nodes: Pods (``spec.trainer.numNodes``).
        num_proc_per_node: Processes per pod (``spec.trainer.numProcPerNode``): one per GPU,
            or one per pod on CPU.
        cpu, memory: Requests per node (the limits are the same).
        accelerator_resource: Extended resource of the accelerator, e.g. ``nvidia.com/gpu``
            (empty: CPU only).
        accelerator_count: Accelerators per node.
        env: Plain environment variables of every node.
        secret_name: Secret whose keys become environment variables (the S3 credentials).
        secret_keys: Secret key -> environment variable.
        deadline_s: ``activeDeadlineSeconds``: the controller fails the job after it (0: none).
        runtime: The ClusterTrainingRuntime to reference.
        labels: Labels of the TrainJob (the pipeline run, the model).
    """

    name: str
    namespace: str
    image: str
    args: tuple[str, ...] = ()
    num_nodes: int = 1
    num_proc_per_node: int = 1
    cpu: str = "2"
    memory: str = "4Gi"
    accelerator_resource: str = ""
    accelerator_count: int = 0
    env: dict[str, str] = field(default_factory=dict)
    secret_name: str = ""
    secret_keys: dict[str, str] = field(default_factory=dict)
    deadline_s: int = 0
    runtime: str = TORCH_RUNTIME
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not _DNS_LABEL.match(self.name) or len(self.name) > 63:
            raise TrainJobSpecError(f"Invalid TrainJob name: {self.name!r}. Expect a DNS-1123 "
                                    "label (lower-case letters, digits, '-'; at most 63).")
        for what in ("num_nodes", "num_proc_per_node"):
            if getattr(self, what) < 1:
                raise TrainJobSpecError(f"Invalid {what}: {getattr(self, what)}. Expect >= 1.")
        if self.accelerator_count < 0 or (self.accelerator_count and
                                          not self.accelerator_resource):
            raise TrainJobSpecError(f"Invalid accelerator_count: {self.accelerator_count} with "
                                    f"resource {self.accelerator_resource!r}. Expect a count "
                                    ">= 0 and a resource name such as nvidia.com/gpu.")
        if self.deadline_s < 0:
            raise TrainJobSpecError(f"Invalid deadline_s: {self.deadline_s}. Expect >= 0.")


def resources_per_node(cfg: TrainJobConfig) -> dict:
    """Requests and limits of one node: CPU and memory, and the accelerators if any."""
    requests = {"cpu": cfg.cpu, "memory": cfg.memory}
    limits = dict(requests)
    if cfg.accelerator_resource and cfg.accelerator_count:
        requests[cfg.accelerator_resource] = str(cfg.accelerator_count)
        limits[cfg.accelerator_resource] = str(cfg.accelerator_count)
    return {"requests": requests, "limits": limits}


def train_job(cfg: TrainJobConfig) -> dict:
    """The TrainJob running ``torchrun -m components.train.ddp`` on ``cfg.num_nodes`` pods."""
    env = [{"name": k, "value": v} for k, v in sorted(cfg.env.items())]
    env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": cfg.secret_name, "key": key,
                                                         "optional": True}}}
            for key, var in sorted(cfg.secret_keys.items())] if cfg.secret_name else []
    trainer = {"image": cfg.image, "command": [*TRAIN_COMMAND, *cfg.args],
               "numNodes": cfg.num_nodes, "numProcPerNode": cfg.num_proc_per_node,
               "resourcesPerNode": resources_per_node(cfg)}
    if env:
        trainer["env"] = env
    spec = {"runtimeRef": {"name": cfg.runtime, "apiGroup": GROUP,
                           "kind": "ClusterTrainingRuntime"},
            "trainer": trainer}
    if cfg.deadline_s:
        spec["activeDeadlineSeconds"] = int(cfg.deadline_s)
    metadata = {"name": cfg.name, "namespace": cfg.namespace}
    if cfg.labels:
        metadata["labels"] = dict(cfg.labels)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata,
            "spec": spec}


def condition(obj: dict, kind: str) -> dict | None:
    """The status condition of type ``kind``, if any."""
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == kind), None)


def outcome(obj: dict) -> tuple[str, str, str] | None:
    """``(Complete|Failed, reason, message)`` once the TrainJob has finished, else None
    (a finished TrainJob has one of the two conditions with status True:
    pkg/util/trainjob/trainjob.go:32-35)."""
    for kind in (FAILED, COMPLETE):
        cond = condition(obj, kind)
        if cond and cond.get("status") == "True":
            return kind, cond.get("reason", ""), cond.get("message", "")
    return None


def failed_pods(obj: dict) -> int:
    """Failed child Jobs the controller reports (``status.jobsStatus[].failed``)."""
    return sum(int(j.get("failed") or 0) for j in (obj.get("status") or {}).get("jobsStatus")
               or [])
