"""The Kubernetes API client of the deploy and train steps: in-cluster, else ~/.kube/config,
else one error that says why (no cluster here: this machine is not a pod)."""

from __future__ import annotations

import pytest
import yaml

from components.common.kubeapi import KubeConfigMissing, api_client

kubernetes = pytest.importorskip("kubernetes")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home folder without ~/.kube/config, outside any pod; the client's default
    configuration is restored afterwards."""
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION",
                        "~/.kube/config")
    monkeypatch.setattr(kubernetes.client.Configuration, "_default", None)
    return tmp_path


def _write_kubeconfig(home, server: str):
    (home / ".kube").mkdir()
    (home / ".kube" / "config").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "dev", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "me"}}]}))


def test_outside_a_cluster_the_kubeconfig_is_used(home):
    _write_kubeconfig(home, "https://127.0.0.1:6443")
    client = api_client()
    assert client.configuration.host == "https://127.0.0.1:6443"


def test_without_any_configuration_the_error_says_why(home):
    with pytest.raises(KubeConfigMissing, match="config"):
        api_client()


def test_what_runs_only_in_a_pod_does_not_read_the_kubeconfig(home):
    _write_kubeconfig(home, "https://127.0.0.1:6443")
    with pytest.raises(KubeConfigMissing, match="[Ss]ervice"):
        api_client(kubeconfig=False)
