"""The monitoring reference reads the dataset version's shards and their statistics table:
the same reference as decoding every held-out photo, with no photo read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.ingest.snapshot import read_split
from components.ingest.tests.snapshot_copy import copy_snapshot, remove_photos
from components.monitor import reference as R


def _reference(files: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    import io

    return (json.loads(files["reference.json"]),
            np.load(io.BytesIO(files["embeddings.npy"])),
            np.load(io.BytesIO(files["probabilities.npy"])))


@pytest.mark.timeout(300)
def test_reference_from_shards_equals_the_reference_from_the_photos(
        dataset_dirs, package_dir, tmp_path):
    root, (train_dir, test_dir) = copy_snapshot(dataset_dirs, tmp_path)
    rows, meta = read_split(train_dir)
    test, _ = read_split(test_dir)
    version = meta["dataset_version"]
    onnx = (package_dir / "model.onnx").read_bytes()

    def build(**kw):
        return R.build_reference_files(onnx, rows, version, 60, detector=False, test_rows=test,
                                       **kw)

    decoded = _reference(build(use_shards=False))
    assert not (root / "shards").exists()
    from_shards = _reference(build())
    assert (root / "shards" / version / "32" / "stats.csv").is_file()  # built with the stats
    doc, embeddings, probabilities = from_shards
    assert doc["sha256"] == decoded[0]["sha256"] and len(doc["sha256"]) == 60
    assert doc["stats"] == decoded[0]["stats"]  # exactly: stored, not recomputed
    # The accuracy exactly: one ONNX model on the same pixels in the same batches.
    assert doc["modes"] == decoded[0]["modes"] and doc["accuracy"] == decoded[0]["accuracy"]
    np.testing.assert_allclose(embeddings, decoded[1], atol=1e-6)
    np.testing.assert_allclose(probabilities, decoded[2], atol=1e-6)

    remove_photos(root)  # from now on a decode would fail
    with pytest.raises(R.ReferenceDataError, match="Cannot read the reference images"):
        build(use_shards=False)
    again = _reference(build())
    assert again[0] == doc and np.array_equal(again[1], embeddings)


def test_reference_statistics_are_the_predictors_on_camera_photos(tmp_path):
    """On camera-sized JPEGs (decoded in draft mode, measured on that decode, not on the
    network input) the statistics stored with the shards equal what the predictor's
    ``decode_and_measure`` gives for the same bytes."""
    from components.common.images import decode_and_measure
    from components.common.storage import open_store
    from components.datagen.core import LakeSpec, generate
    from components.ingest import shards
    from components.ingest.core import ingest

    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=6, size="1280x720", seed=5), lake)
    result = ingest(lake.uri, str(tmp_path / "ds"))
    rows = result.split_manifest("train")
    images, stats = shards.split_images_and_stats(rows, 64, result.version)
    assert (tmp_path / "ds" / "shards" / result.version / "64" / "stats.csv").is_file()
    for i, uri in enumerate(rows["uri"]):
        parent, name = uri.rsplit("/", 1)
        x, expected = decode_and_measure(open_store(parent).get(name), 64)
        assert np.array_equal(images[i], x)
        assert stats[i] == expected
        assert (stats[i]["width"], stats[i]["height"]) == (1280, 720)
