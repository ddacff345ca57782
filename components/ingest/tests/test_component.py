"""Tier 2: the KFP component's function with real artifacts in tmp_path."""

from __future__ import annotations

import os

from kfp.dsl import HTML, Dataset, Markdown, Metrics

from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate
from components.ingest.component import ingest_data
from components.ingest.snapshot import read_split


def _artifacts(tmp_path, name):
    arts = {a: cls(name=a, uri=str(tmp_path / name / a), metadata={})
            for a, cls in [("train", Dataset), ("test", Dataset), ("report", Markdown), ("report_page", HTML),
                           ("metrics", Metrics)]}
    for a in arts.values():
        os.makedirs(os.path.dirname(a.path), exist_ok=True)
    return arts


def test_component_writes_typed_artifacts_with_metadata(tmp_path):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=50, size=32, seed=9), lake)
    lake.put("cats/empty.jpg", b"")
    arts = _artifacts(tmp_path, "out")
    out = ingest_data.python_func(data_uri=lake.uri, dataset_root=str(tmp_path / "ds"),
                                  **arts)
    train, test = arts["train"], arts["test"]
    assert out.num_train + out.num_test == 50
    assert train.metadata["dataset_version"] == out.dataset_version == test.metadata[
        "dataset_version"]
    assert train.metadata["count"] == out.num_train and train.metadata["split"] == "train"
    assert train.metadata["source_uri"] == lake.uri
    rows, meta = read_split(train.path)
    assert len(rows) == out.num_train and set(rows["split"]) == {"train"}
    # Every row points at readable image bytes in the snapshot's object store.
    uri = rows["uri"].iloc[0]
    assert open_store(uri.rsplit("/", 1)[0]).get(uri.rsplit("/", 1)[1])[:2] == b"\xff\xd8"
    report = open(arts["report"].path).read()
    assert out.dataset_version in report and "zero_byte" in report
    assert "50 ingested + 1 quarantined + 0 duplicates == 51 listed" in report
    # The same report as a page a browser shows: tables and text, not Markdown source.
    page = open(arts["report_page"].path).read()
    assert page.startswith("<!doctype html>") and "<th>split</th>" in page
    assert "<strong>50 ingested + 1 quarantined + 0 duplicates == 51 listed</strong>" in page
    assert "<td>zero_byte</td>" in page and "|---|" not in page
    assert arts["metrics"].metadata["quarantined"] == 1


def test_component_takes_declared_classes_and_aliases(tmp_path):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=20, size=32, seed=10), lake)
    generate(LakeSpec(n=6, size=32, seed=11, layout="kaggle"), lake, prefix="Horses")
    arts = _artifacts(tmp_path, "out")
    out = ingest_data.python_func(data_uri=lake.uri, dataset_root=str(tmp_path / "ds"),
                                  classes="cats,dogs,horses", label_aliases="horse=horses",
                                  **arts)
    assert sorted(arts["train"].metadata["classes"]) == ["cats", "dogs", "horses"]
    assert out.num_train + out.num_test == 26
    default = ingest_data.python_func(data_uri=lake.uri, dataset_root=str(tmp_path / "ds"),
                                      **arts)
    assert default.num_train + default.num_test == 20
    assert "unknown_label" in open(arts["report"].path).read()


def test_a_published_version_is_passed_on_without_reading_the_lake(tmp_path):
    """`mlops run training --dataset-version V`: the same splits as the ingestion that
    published V, even once the lake is gone."""
    import shutil

    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=40, size=32, seed=12, layout="csv"), lake)
    first = _artifacts(tmp_path, "first")
    out = ingest_data.python_func(data_uri=lake.uri, dataset_root=str(tmp_path / "ds"),
                                  labels_csv=lake.uri_of("labels.csv"), **first)
    shutil.rmtree(tmp_path / "lake")
    again = _artifacts(tmp_path, "again")
    same = ingest_data.python_func(data_uri="", dataset_root=str(tmp_path / "ds"),
                                   dataset_version=out.dataset_version, **again)
    assert (same.dataset_version, same.num_train, same.num_test) == (
        out.dataset_version, out.num_train, out.num_test)
    for split in ("train", "test"):
        rows, meta = read_split(again[split].path)
        assert rows.equals(read_split(first[split].path)[0])
        assert meta["source_uri"] == lake.uri  # the lineage still names the lake
    assert out.dataset_version in open(again["report"].path).read()
