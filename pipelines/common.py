"""Helpers shared by the pipelines."""

from kfp import kubernetes

from components.settings import S3_ENDPOINT, STORAGE_SECRET, STORAGE_SECRET_KEYS


def with_storage_credentials(task):
    """Gives a task the S3 endpoint and credentials from the storage Secret (cluster only).

    The Secret is optional, so the same pipeline runs against a local store where there is
    no Secret; secrets never travel as pipeline parameters. The endpoint is a compile-time
    setting (``mlops compile --s3-endpoint``, default KFP 2.16's SeaweedFS), set on the
    task's container; kfp.local does not apply it, so local runs keep their own environment.
    """
    kubernetes.use_secret_as_env(task, secret_name=STORAGE_SECRET,
                                 secret_key_to_env=STORAGE_SECRET_KEYS, optional=True)
    if S3_ENDPOINT and "AWS_ENDPOINT_URL" not in STORAGE_SECRET_KEYS.values():
        task.set_env_variable("AWS_ENDPOINT_URL", S3_ENDPOINT)
    return task


def never_cached(task):
    """Turns KFP's cache off for a task that reads something mutable.

    KFP 2.16 caches a task by its component and input values only: a task that reads a data
    lake at an unchanged URI, or a registry alias, would be served the old result.
    """
    task.set_caching_options(False)
    return task


def with_resources(task, cpu: str = "1", memory: str = "2G", cpu_limit: str = "2",
                   memory_limit: str = "8G", retries: int = 0):
    """Requests and limits of CPU and memory, and retries where repeating the task is safe."""
    task.set_cpu_request(cpu).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory).set_memory_limit(memory_limit)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
    return task
