"""Tier 2: the packaging component checks parity on the test split read from its shards."""

from __future__ import annotations

import json

import pytest
from kfp.dsl import Artifact, Dataset, Model

from components.ingest.snapshot import read_split
from components.ingest.tests.snapshot_copy import copy_snapshot, remove_photos
from components.package.component import package_model
from components.package.tests.test_core import EVALUATION


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_parity_check_reads_the_test_split_from_shards(dataset_dirs, trained_model_dir,
                                                       tmp_path):
    from components.ingest.shards import build_shards

    root, (_, test_dir) = copy_snapshot(dataset_dirs, tmp_path / "data")
    rows, meta = read_split(test_dir)
    build_shards(root.as_uri(), meta["dataset_version"], 32)
    remove_photos(root)  # packaging must not need them
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps(EVALUATION))
    package = Model(name="package", uri=str(tmp_path / "pkg"), metadata={})
    package_model.python_func(
        model=Model(name="model", uri=trained_model_dir, metadata={}),
        test=Dataset(name="test", uri=test_dir, metadata={}),
        evaluation=Artifact(name="evaluation", uri=str(evaluation), metadata={}),
        package=package, model_name="pets")
    metadata = json.loads((tmp_path / "pkg" / "metadata.json").read_text())
    assert metadata["parity"]["passed"] and metadata["parity"]["images"] == len(rows)
    assert package.metadata["dataset_version"] == meta["dataset_version"]
