"""Compile-time settings of the component collection.

Read from the environment when the component modules are imported, so that
``mlops compile --image … --storage-secret …`` (which sets these variables before importing)
produces pipelines for any registry and namespace without code changes.
"""

from __future__ import annotations

import os
import re

__version__ = "0.1.0"

DEFAULT_IMAGE = f"ghcr.io/pet-park-mlops/mlops-workflow:{__version__}"

#: The image every component runs in (see the Dockerfile at the repository root).
COMPONENT_IMAGE = os.environ.get("MLOPS_COMPONENT_IMAGE", DEFAULT_IMAGE)

#: The S3 endpoint of a stock Kubeflow Pipelines 2.16 install (SeaweedFS; KFP before 2.15
#: shipped MinIO at http://minio-service.kubeflow:9000). kubeflow/pipelines 2.16:
#: manifests/kustomize/base/installs/multi-user/pipelines-profile-controller/sync.py.
DEFAULT_S3_ENDPOINT = "http://seaweedfs.kubeflow:8333"

#: The Kubernetes Secret whose keys become the components' S3 credentials in the cluster. The
#: default is the one KFP 2.16 puts in every profile namespace (and in ``kubeflow``
#: standalone) for its own artifact store.
STORAGE_SECRET = os.environ.get("MLOPS_STORAGE_SECRET", "mlpipeline-minio-artifact")

#: Secret key -> environment variable (the names storage.s3_settings_from_env reads), as
#: ``KEY=VAR,KEY=VAR``; KFP's own Secret names its keys ``accesskey`` and ``secretkey``.
STORAGE_SECRET_KEYS = dict(
    item.split("=", 1) for item in os.environ.get(
        "MLOPS_STORAGE_SECRET_KEYS",
        "accesskey=AWS_ACCESS_KEY_ID,secretkey=AWS_SECRET_ACCESS_KEY").split(",") if item)

#: The S3 endpoint the components use in the cluster (``AWS_ENDPOINT_URL`` of every task);
#: empty to take it from the Secret (a key mapped to AWS_ENDPOINT_URL) instead.
S3_ENDPOINT = os.environ.get("MLOPS_S3_ENDPOINT", DEFAULT_S3_ENDPOINT)

#: The predictor image the release deploys by default (``components/serve/Dockerfile``).
PREDICTOR_IMAGE = os.environ.get(
    "MLOPS_PREDICTOR_IMAGE", f"ghcr.io/pet-park-mlops/pet-classifier-predictor:{__version__}")


def _pixels(name: str, default: int) -> int:
    value = os.environ.get(name, "").replace("_", "").replace(",", "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={os.environ[name]!r}: expect a whole number of pixels, for "
                         f"example {default} (width x height of the largest photo).")
    return int(value)


#: The one pixel limit (width x height, read from an image's header before decoding) of
#: ingestion, training and serving: a larger image is quarantined by ingestion and refused by
#: the predictor. 50 MP takes a 48 MP phone photo (8064x6048 is 48.8 MP); cameras send 2-8 MP.
#: Raise it with ``MLOPS_MAX_PIXELS`` (or ``--max-pixels`` of ``mlops run ingest``/``training``,
#: ``mlops ingest …`` and ``mlops serve``).
MAX_IMAGE_PIXELS = _pixels("MLOPS_MAX_PIXELS", 50_000_000)


def code_version() -> str:
    """The code that is running: ``git:<commit>[-dirty]``, else ``MLOPS_CODE_VERSION`` (set in
    the image at build time), else ``package:<version>``."""
    import subprocess
    from pathlib import Path

    if os.environ.get("MLOPS_CODE_VERSION"):
        return os.environ["MLOPS_CODE_VERSION"]
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout
        return f"git:{commit}" + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return f"package:{__version__}"


#: Hyperparameter-search trial slots compiled into the training pipeline (each a task).
HPO_SLOTS = int(os.environ.get("MLOPS_HPO_SLOTS", "4"))

#: The accelerator of the search trials and the final training (``mlops compile
#: --accelerator``): KFP's accelerator type, e.g. ``nvidia.com/gpu``; empty for CPU only.
ACCELERATOR_TYPE = os.environ.get("MLOPS_ACCELERATOR_TYPE", "")
#: Accelerators per training pod (``--accelerator-count``); with a TrainJob, per node.
ACCELERATOR_COUNT = int(os.environ.get("MLOPS_ACCELERATOR_COUNT", "1"))
#: Nodes of the final training (``--trainer-nodes``): 1 trains in the task's own pod, more
#: run a Kubeflow Trainer TrainJob of that many nodes that the task creates and watches.
TRAINER_NODES = int(os.environ.get("MLOPS_TRAINER_NODES", "1"))
#: The search trials also run as TrainJobs of ``TRAINER_NODES`` nodes
#: (``--trials-on-trainer``, only with ``--trainer-nodes`` above 1).
TRIALS_ON_TRAINER = os.environ.get("MLOPS_TRIALS_ON_TRAINER", "").lower() in ("1", "true")
#: Node selector of the training pods, ``key=value,…`` (``--node-selector``).
NODE_SELECTOR = os.environ.get("MLOPS_NODE_SELECTOR", "")
#: Tolerations of the training pods, ``key=value:Effect,…`` or ``key:Effect`` (``--toleration``).
TOLERATIONS = os.environ.get("MLOPS_TOLERATIONS", "")

_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
#: A label key (an optional DNS subdomain prefix and a name) and a label value, as Kubernetes
#: validates them (apimachinery validation.IsQualifiedName, IsValidLabelValue).
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def node_selector() -> dict[str, str]:
    """:data:`NODE_SELECTOR` as labels.

    Raises:
        ValueError: An item is not ``key=value``.
    """
    pairs = {}
    for item in filter(None, (i.strip() for i in NODE_SELECTOR.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise ValueError(f"Invalid --node-selector {item!r}. Expect key=value[,key=value…], "
                             "e.g. cloud.google.com/gke-accelerator=nvidia-l4.")
        pairs[key] = value
    return pairs


def tolerations() -> list[dict]:
    """:data:`TOLERATIONS` as kfp-kubernetes ``add_toleration`` arguments: ``key=value:Effect``
    (operator Equal) or ``key:Effect`` (operator Exists).

    Raises:
        ValueError: An item has no effect, or an unknown one.
    """
    out = []
    for item in filter(None, (i.strip() for i in TOLERATIONS.split(","))):
        head, _, effect = item.rpartition(":")
        key, sep, value = head.partition("=")
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value) or effect not in _EFFECTS:
            raise ValueError(f"Invalid --toleration {item!r}. Expect key=value:Effect or "
                             f"key:Effect with Effect one of {', '.join(_EFFECTS)}, e.g. "
                             "nvidia.com/gpu:NoSchedule.")
        out.append({"key": key, "operator": "Equal" if sep else "Exists",
                    "value": value if sep else None, "effect": effect})
    return out
