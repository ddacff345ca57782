"""Compile-time settings of the component collection.

Read from the environment when the component modules are imported, so that
``mlops compile --image … --storage-secret …`` (which sets these variables before importing)
produces pipelines for any registry and namespace without code changes.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

DEFAULT_IMAGE = f"ghcr.io/pet-park-mlops/mlops-workflow:{__version__}"

#: The image every component runs in (see the Dockerfile at the repository root).
COMPONENT_IMAGE = os.environ.get("MLOPS_COMPONENT_IMAGE", DEFAULT_IMAGE)

#: The Kubernetes Secret whose keys become the components' S3 variables in the cluster.
STORAGE_SECRET = os.environ.get("MLOPS_STORAGE_SECRET", "mlops-s3-credentials")

#: Secret key -> environment variable; the names storage.s3_settings_from_env reads.
STORAGE_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
}


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
