"""The model registry on both storage backends."""

from __future__ import annotations

import threading

import pytest

from components.common.registry import ModelRegistry, RegistryError
from components.common.storage import AlreadyExistsError, StorageError

LINEAGE = {"dataset_version": "abc123", "code_version": "git:deadbeef",
           "parameters": {"lr": 0.01}, "metrics": {"accuracy": 0.93}}


def test_register_get_and_lineage(store_uri, tmp_path):
    reg = ModelRegistry(store_uri)
    v1 = reg.register("pets", {"model.onnx": b"one", "card.md": b"# card"}, LINEAGE)
    v2 = reg.register("pets", {"model.onnx": b"two"}, {**LINEAGE, "parent_version": 1})
    assert (v1.version, v2.version) == (1, 2)
    assert reg.versions("pets") == [1, 2] and reg.models() == ["pets"]
    got = reg.get("pets", "latest")
    assert got.version == 2 and got.lineage["parent_version"] == 1
    assert got.lineage["dataset_version"] == "abc123" and got.lineage["registered_by"]
    out = reg.download("pets", 1, tmp_path / "dl")
    assert (out / "model.onnx").read_bytes() == b"one"
    assert (out / "lineage.json").exists()


def test_concurrent_registrations_get_distinct_versions(store_uri):
    reg = ModelRegistry(store_uri)
    got, errors = [], []

    def register(i):
        try:
            got.append(reg.register("pets", {"model.onnx": f"m{i}".encode()}, {"i": i}).version)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    payloads = {reg.read_file("pets", v, "model.onnx") for v in got}
    assert len(payloads) == 6  # nobody's model was overwritten


def test_versions_are_immutable(store_uri):
    reg = ModelRegistry(store_uri)
    reg.register("pets", {"model.onnx": b"one"}, LINEAGE)
    with pytest.raises(AlreadyExistsError):
        reg.store.publish("pets/versions/1", {"model.onnx": b"replaced"})
    assert reg.read_file("pets", 1, "model.onnx") == b"one"


def test_tampered_file_fails_download(store_uri, tmp_path):
    reg = ModelRegistry(store_uri)
    reg.register("pets", {"model.onnx": b"weights"}, LINEAGE)
    reg.store.put("pets/versions/1/model.onnx", b"evil weights")
    with pytest.raises(StorageError, match="Checksum mismatch"):
        reg.download("pets", 1, tmp_path / "dl")
    assert not (tmp_path / "dl" / "model.onnx").exists()  # nothing half-downloaded


def test_alias_moves_and_history(store_uri):
    reg = ModelRegistry(store_uri)
    for i in range(3):
        reg.register("pets", {"model.onnx": bytes([i])}, LINEAGE)
    reg.set_alias("pets", "production", 1, reason="first release", actor="ci")
    reg.set_alias("pets", "staging", 3, actor="ci")
    reg.set_alias("pets", "production", 2, reason="canary promoted", actor="release-bot")
    assert reg.resolve("pets", "@production") == 2
    assert reg.aliases("pets") == {"production": 2, "staging": 3}
    history = reg.alias_history("pets", "production")
    assert [(e["version"], e["previous"], e["by"], e["reason"]) for e in history] == [
        (1, None, "ci", "first release"), (2, 1, "release-bot", "canary promoted")]
    assert all(e["at"] for e in history)


def test_bad_references_are_clear_errors(store_uri):
    reg = ModelRegistry(store_uri)
    with pytest.raises(RegistryError, match="has no version"):
        reg.resolve("pets")
    reg.register("pets", {"model.onnx": b"x"}, LINEAGE)
    with pytest.raises(RegistryError, match="no alias 'production'.*mlops registry alias"):
        reg.resolve("pets", "@production")
    with pytest.raises(RegistryError, match="no version 7"):
        reg.get("pets", 7)
    with pytest.raises(RegistryError, match="no version 9 to point"):
        reg.set_alias("pets", "staging", 9)
    with pytest.raises(RegistryError, match="Invalid model name"):
        reg.register("Pets Model", {"a": b"x"}, {})


def test_registry_cli_for_people(tmp_path):
    import os
    import subprocess
    import sys

    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.register("pets", {"model.onnx": b"one"}, LINEAGE)
    reg.register("pets", {"model.onnx": b"two"}, {**LINEAGE, "dataset_version": "def456"})
    reg.set_alias("pets", "staging", 2, reason="test", actor="ci")

    def mlops(*args):
        return subprocess.run([sys.executable, "-m", "components.cli", "registry", "--registry",
                               str(tmp_path / "reg"), *args], capture_output=True, text=True,
                              timeout=120, env=os.environ.copy())

    listing = mlops("list")
    assert listing.returncode == 0, listing.stderr
    assert "pets\tv1\tdataset abc123" in listing.stdout
    assert "pets\tv2\tdataset def456" in listing.stdout and "staging" in listing.stdout
    lineage = mlops("lineage", "pets", "@staging")
    assert '"dataset_version": "def456"' in lineage.stdout
    download = mlops("download", "pets", "1", "--dest", str(tmp_path / "dl"))
    assert download.returncode == 0 and (tmp_path / "dl" / "model.onnx").read_bytes() == b"one"
    missing = mlops("show", "pets", "@production")
    assert missing.returncode == 2 and "no alias 'production'" in missing.stderr
    history = mlops("history", "pets", "staging")
    assert "vNone -> v2  by ci  test" in history.stdout


@pytest.mark.timeout(120)
def test_alias_history_previous_is_the_move_before_under_concurrency(store_uri):
    """8 registrations at once, each moving the alias: the history is an unbroken chain."""
    reg = ModelRegistry(store_uri)
    errors = []

    def register_and_promote(i):
        try:
            mv = reg.register("pets", {"model.onnx": f"m{i}".encode()}, {"i": i})
            reg.set_alias("pets", "production", mv.version, reason=f"run {i}", actor=f"run-{i}")
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=register_and_promote, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    history = reg.alias_history("pets", "production")
    assert [e["seq"] for e in history] == list(range(1, 9))
    assert sorted(e["version"] for e in history) == list(range(1, 9))
    assert history[0]["previous"] is None
    for before, event in zip(history, history[1:], strict=False):
        assert event["previous"] == before["version"], (before, event)
    assert reg.resolve("pets", "@production") == history[-1]["version"]


def _via_proxy(s3_uri, proxy, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    return ModelRegistry(s3_uri)


def _direct(s3_uri, proxy, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.upstream.geturl())
    return ModelRegistry(s3_uri)


def _conditional_put(fragment):
    return lambda method, path, headers: (method == "PUT" and fragment in path
                                          and headers.get("if-none-match") == "*")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lost", ["/claims/1", "/versions/1/_PUBLISHED"])
def test_register_survives_a_lost_reply_without_a_duplicate_version(s3_uri, monkeypatch, lost):
    import os

    from faultproxy import FaultProxy

    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], drop_reply=_conditional_put(lost)) as proxy:
        reg = _via_proxy(s3_uri, proxy, monkeypatch)
        mv = reg.register("pets", {"model.onnx": b"weights"}, LINEAGE)
        assert proxy.dropped and mv.version == 1
        reg.set_alias("pets", "staging", mv.version, actor="ci")
    reg = _direct(s3_uri, proxy, monkeypatch)
    assert reg.versions("pets") == [1]
    assert [o.key for o in reg.store.list("pets/claims")] == ["pets/claims/1"]
    assert reg.resolve("pets", "@staging") == 1


@pytest.mark.timeout(60)
def test_alias_move_with_a_lost_reply_is_recorded_once(s3_uri, monkeypatch):
    import os

    from faultproxy import FaultProxy

    ModelRegistry(s3_uri).register("pets", {"model.onnx": b"weights"}, LINEAGE)
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"],
                    drop_reply=_conditional_put("/aliases/production/")) as proxy:
        reg = _via_proxy(s3_uri, proxy, monkeypatch)
        event = reg.set_alias("pets", "production", 1, reason="release", actor="ci")
        assert proxy.dropped and event["seq"] == 1
    history = _direct(s3_uri, proxy, monkeypatch).alias_history("pets", "production")
    assert [(e["seq"], e["version"], e["previous"]) for e in history] == [(1, 1, None)]
