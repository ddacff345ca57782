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
