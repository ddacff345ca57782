"""Registration publishes each version with its monitoring reference; a version without one
gets it built on demand from the dataset version its lineage names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.common.registry import ModelRegistry
from components.ingest.snapshot import read_split
from components.monitor import reference as R
from components.register.core import register_package

EVALUATION = {"metrics": {"accuracy": 0.9, "macro": {"f1": 0.9}, "roc_auc": 0.95,
                          "per_class": {}},
              "gate": {"blessed": True, "reasons": [], "champion_version": None,
                       "bias": {"recall_gap": 0.0}}}


@pytest.fixture(scope="module")
def evaluation_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "evaluation.json"
    path.write_text(json.dumps(EVALUATION))
    return str(path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_registration_publishes_the_reference_with_the_version(
        tmp_path, package_dir, trained_model_dir, dataset_dirs, evaluation_path):
    from components.monitor.drift import load_detector

    registry_uri = str(tmp_path / "registry")
    mv = register_package(str(package_dir), trained_model_dir, evaluation_path,
                          dataset_dirs[0], registry_uri, "pets", reference_sample=50)
    assert "reference/reference.json" in mv.files and "reference/embeddings.npy" in mv.files
    assert "torch/model.pt" in mv.files  # the PyTorch weights are part of the version
    assert mv.lineage["monitoring_reference"] == "reference/reference.json"
    ref = R.load_reference(registry_uri, "pets", mv.version, cache_dir=tmp_path / "cache")
    train_rows, _ = read_split(dataset_dirs[0])
    held_out, _ = read_split(dataset_dirs[1])
    n = min(50, len(held_out))
    # The test split: never the images the model was fitted on, nor those that chose its
    # epoch (the validation part of the training split).
    doc = json.loads(ModelRegistry(registry_uri).read_file("pets", mv.version,
                                                           "reference/reference.json"))
    assert set(doc["sha256"]) <= set(held_out["sha256"]) and len(doc["sha256"]) == n
    assert not set(doc["sha256"]) & set(train_rows["sha256"])
    assert doc["sample"]["from"].startswith("the dataset's test split")
    assert ref.population == doc["sample"]["from"]
    assert ref.model_version == str(mv.version) and ref.classes == ["cats", "dogs"]
    assert ref.embeddings.shape == (n, 64) and ref.embeddings.dtype == np.float32
    assert ref.probabilities.shape == (n, 2)
    assert np.allclose(ref.probabilities.sum(1), 1, atol=1e-5)
    shares = train_rows["label"].value_counts(normalize=True)
    assert ref.prior == pytest.approx({k: shares[k] for k in ("cats", "dogs")}, abs=1e-5)
    assert sorted(ref.stats) == sorted(["width", "height", "brightness", "contrast",
                                        "sharpness"])
    assert all(len(v) == n for v in ref.stats.values()) and ref.modes == {"RGB": n}
    assert len(ref.labels) == n and set(ref.labels) <= {"cats", "dogs"}
    assert ref.dataset_version == train_rows.attrs.get("dataset_version", ref.dataset_version)

    # The statistics and embeddings are the predictor's: the same functions on the same image.
    from components.common.images import decode_and_measure, preprocess_image
    from components.common.runtime import onnx_embedder
    from components.common.storage import read_uri

    row = held_out.set_index("sha256").loc[doc["sha256"][0]]
    data = read_uri(row["uri"])
    x, stats = decode_and_measure(data, 32)
    assert np.array_equal(x, preprocess_image(data, 32))
    assert stats == {name: ref.stats[name][0] for name in ref.stats} | {
        "mode": "RGB", "colourfulness": stats["colourfulness"], "context": ref.contexts[0]}
    assert ref.contexts == ["day"] * n  # a day lake: every image in the default context
    embed = onnx_embedder((package_dir / "model.onnx").read_bytes())
    assert np.allclose(embed(x[None]), ref.embeddings[:1], atol=1e-6)

    # The fitted detector loads and finds no drift in the reference against itself.
    assert ref.detector_uri
    detector = load_detector(ref.detector_uri)
    assert detector.predict(ref.embeddings)["data"]["is_drift"] == 0
    assert ref.uri.endswith(f"pets/versions/{mv.version}/reference")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_version_without_a_reference_gets_one_on_demand(
        tmp_path, package_dir, trained_model_dir, dataset_dirs, evaluation_path, capsys,
        monkeypatch):
    from components.cli import main

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    registry_uri = str(tmp_path / "registry")
    mv = register_package(str(package_dir), trained_model_dir, evaluation_path,
                          dataset_dirs[0], registry_uri, "pets", reference_sample=0)
    assert not any(name.startswith("reference/") for name in mv.files)
    assert not R.has_reference(registry_uri, "pets", mv.version)
    with pytest.raises(R.ReferenceMissing, match="mlops monitor reference pets 1"):
        R.load_reference(registry_uri, "pets", mv.version, build=False)
    # `mlops monitor reference` builds it from the dataset version the lineage names.
    assert main(["monitor", "reference", "pets", "1", "--registry", registry_uri,
                 "--sample", "40"]) == 0
    out = capsys.readouterr().out
    assert "Built the monitoring reference of pets version 1" in out and "sharpness" in out
    assert "from the dataset's test split" in out
    assert main(["monitor", "reference", "pets", "1", "--registry", registry_uri]) == 0
    assert "Found the monitoring reference" in capsys.readouterr().out
    ref = R.load_reference(registry_uri, "pets", mv.version, cache_dir=tmp_path / "cache")
    assert ref.uri.endswith(f"pets/references/{mv.version}")
    assert ref.embeddings.shape[1] == 64 and len(ref.labels) == ref.embeddings.shape[0]
    assert R.has_reference(registry_uri, "pets", mv.version)
    # Built once: a second load reads the published reference (immutable, checksummed).
    marker = ModelRegistry(registry_uri).store.get_json(f"pets/references/{mv.version}/"
                                                        "_PUBLISHED")
    again = R.load_reference(registry_uri, "pets", mv.version, cache_dir=tmp_path / "cache")
    assert np.array_equal(again.embeddings, ref.embeddings)
    assert ModelRegistry(registry_uri).store.get_json(
        f"pets/references/{mv.version}/_PUBLISHED") == marker


def test_a_reference_cannot_be_built_when_the_dataset_is_gone(tmp_path, package_dir):
    files = {p.relative_to(package_dir).as_posix(): p.read_bytes()
             for p in package_dir.rglob("*") if p.is_file()}
    registry = ModelRegistry(str(tmp_path / "registry"))
    gone = (tmp_path / "moved" / "versions" / "abc").as_uri()
    mv = registry.register("pets", files, {"dataset_version": "abc", "dataset_snapshot": gone})
    with pytest.raises(R.ReferenceMissing, match="dataset version abc cannot be read"):
        R.load_reference(registry.uri, "pets", mv.version)
    old = registry.register("pets", files, {})
    with pytest.raises(R.ReferenceMissing, match="names no dataset version"):
        R.load_reference(registry.uri, "pets", old.version)
