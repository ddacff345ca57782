"""The Kubernetes API client of the steps that talk to a cluster (the deploy step's KServe
target, the train step's TrainJob launcher): the in-cluster configuration of a pipeline task's
pod (its service account), else ``~/.kube/config``.

``kubernetes`` is imported on first use: compiling a pipeline or starting the CLI does not
pay for it.
"""

from __future__ import annotations

from components.common.errors import MlopsError


class KubeConfigMissing(MlopsError, RuntimeError):
    """No Kubernetes configuration to reach the cluster with; the message is the client's
    reason. Callers say what needed the cluster."""


def api_client(kubeconfig: bool = True):
    """A ``kubernetes.client.ApiClient`` for the cluster this runs in, or the one of
    ``~/.kube/config`` (``$KUBECONFIG``).

    Args:
        kubeconfig: Fall back to ``~/.kube/config`` outside a cluster; off for what only
            runs in a pipeline task's pod (as its service account).

    Raises:
        KubeConfigMissing: Neither configuration is there.
    """
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException as exc:
        if not kubeconfig:
            raise KubeConfigMissing(str(exc)) from exc
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError) as exc2:
            raise KubeConfigMissing(str(exc2)) from exc2
    return kubernetes.client.ApiClient()
