"""Helpers shared by the pipelines."""

from kfp import kubernetes

from components.settings import STORAGE_SECRET, STORAGE_SECRET_KEYS


def with_storage_credentials(task):
    """Gives a task the S3 endpoint and credentials from the storage Secret (cluster only).

    The Secret is optional, so the same pipeline runs against a local store where there is
    no Secret; secrets never travel as pipeline parameters.
    """
    kubernetes.use_secret_as_env(task, secret_name=STORAGE_SECRET,
                                 secret_key_to_env=STORAGE_SECRET_KEYS, optional=True)
    return task
