"""Export of labelled production captures into the lake: provenance, idempotence, lineage."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from components.common.registry import ModelRegistry
from components.common.storage import open_store, sha256_bytes
from components.datagen.core import LakeSpec, render
from components.ingest.core import ingest, is_production_key
from components.ingest.snapshot import read_split
from components.monitor.export import (
    ExportError,
    export_captures,
    list_exports,
    read_export,
)


def write_capture(store, model, request_id, image: bytes | None, *, version="1", index=0,
                  t=1_700_000_000.0, predicted="cats", quality=None):
    """One captured instance in the contract's layout (what the predictor writes)."""
    sha = sha256_bytes(image) if image is not None else None
    if image is not None:
        store.put(f"capture/images/{sha[:2]}/{sha}", image)
    rec = {"request_id": request_id, "index": index, "time": t, "model": model,
           "model_version": version, "revision": "stable", "protocol": "v1",
           "stats": {}, "embedding": [0.0], "label": predicted,
           "probabilities": {"cats": 0.5, "dogs": 0.5}}
    if sha:
        rec["image_sha256"] = sha
    if quality:
        rec["input_quality"] = quality
    key = f"capture/records/model={model}/date=2026-11-23/000000-h-1-{request_id}.jsonl"
    store.put(key, (json.dumps(rec) + "\n").encode())
    return sha


def write_label(store, model, request_id, label, seq=1, index=0, by="reviewer"):
    store.put_json(f"capture/labels/model={model}/{request_id}/{index}/{seq}.json",
                   {"label": label, "by": by, "at": "2026-11-23T20:00:00+00:00"})


@pytest.fixture
def production(tmp_path, package_dir, dataset_dirs):
    """A registry whose production version was trained on ``dataset_dirs``."""
    _, meta = read_split(dataset_dirs[1])
    registry = ModelRegistry(str(tmp_path / "registry"))
    files = {p.name: p.read_bytes() for p in package_dir.iterdir() if p.is_file()}
    mv = registry.register("pets", files, {
        "dataset_version": meta["dataset_version"],
        "dataset_manifest": meta["snapshot_uri"] + "/manifest.csv"})
    registry.set_alias("pets", "production", mv.version)
    return registry.uri, meta


def night(i):
    return render(LakeSpec(n=100, size=32, seed=77, condition="night"), i)


def test_export_copies_new_labelled_captures_with_provenance_and_is_idempotent(
        store_uri, production, dataset_dirs):
    registry_uri, meta = production
    mon = open_store(f"{store_uri}/monitoring")
    lake = open_store(f"{store_uri}/lake")
    lake.put("cats/old.jpg", night(0)[1])  # the lake has other images already
    labelled = {}
    for i in range(1, 7):
        true, data = night(i)
        write_capture(mon, "pets", f"r{i}", data)
        write_label(mon, "pets", f"r{i}", true + "s")
        labelled[sha256_bytes(data)] = true + "s"
    # An image the production model was trained on is not new.
    train_rows, _ = read_split(dataset_dirs[0])
    seen = train_rows.iloc[0]
    write_capture(mon, "pets", "seen", open_store(seen["uri"].rsplit("/", 1)[0]).get(
        seen["uri"].rsplit("/", 1)[1]))
    write_label(mon, "pets", "seen", seen["label"])
    # A correction: the highest sequence number is the label.
    true, data = night(8)
    wrong = "dogs" if true == "cat" else "cats"
    write_capture(mon, "pets", "fixed", data)
    write_label(mon, "pets", "fixed", wrong, seq=1, by="first-look")
    write_label(mon, "pets", "fixed", true + "s", seq=2, by="second-look")
    labelled[sha256_bytes(data)] = true + "s"
    # Not exportable, each for a stated reason.
    write_capture(mon, "pets", "horse", night(9)[1])
    write_label(mon, "pets", "horse", "horses")
    write_capture(mon, "pets", "nosample", None)
    write_label(mon, "pets", "nosample", "cats")
    write_label(mon, "pets", "ghost", "cats")
    mon.put("capture/records/model=pets/date=2026-11-23/broken.jsonl", b"{not json\n")

    result = export_captures(mon.uri, lake.uri, "pets", registry_uri)

    assert result.created and len(result.export_id) == 16
    assert result.counts["exported"] == 7 and result.counts["already_in_dataset"] == 1
    assert result.counts["unreadable_record_lines"] == 1
    reasons = {s["request_id"]: s["reason"] for s in result.skipped}
    assert reasons == {"horse": "unknown_label", "nosample": "image_not_sampled",
                       "ghost": "not_captured"}
    assert result.production_version == 1
    assert result.production_dataset == meta["dataset_version"]
    # In the lake, in its folder layout, content-addressed, the bytes as captured.
    keys = [o.key for o in lake.list() if is_production_key(o.key)]
    assert len(keys) == 7
    for key in keys:
        label, segment, export_id, name = key.split("/")
        assert (segment, export_id) == ("production", result.export_id)
        sha = name.split(".")[0]
        assert labelled[sha] == label and sha256_bytes(lake.get(key)) == sha
    # Provenance: who labelled what, which request and model version it came from.
    info, manifest = read_export(mon.uri, result.export_id)
    fixed = manifest[manifest["request_id"] == "fixed"].iloc[0]
    assert fixed["labelled_by"] == "second-look" and fixed["model_version"] == "1"
    assert info["production_version"] == 1 and info["counts"]["exported"] == 7
    assert sorted(manifest["key"]) == sorted(keys)
    assert list_exports(mon.uri) == [result.export_id]

    # Again, nothing new: nothing written, nothing published.
    before = sorted((o.key, o.size) for o in lake.list())
    again = export_captures(mon.uri, lake.uri, "pets", registry_uri)
    assert again.export_id == "" and not again.created
    assert again.counts["already_in_lake"] == 7
    assert sorted((o.key, o.size) for o in lake.list()) == before
    assert list_exports(mon.uri) == [result.export_id]


def test_exported_images_change_the_dataset_version_and_old_images_keep_their_split(tmp_path):
    from components.datagen.core import generate

    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=60, size=32, seed=5), lake)
    first = ingest(lake.uri, str(tmp_path / "ds"))
    mon = open_store(tmp_path / "mon")
    for i in range(10):
        true, data = night(20 + i)
        write_capture(mon, "pets", f"n{i}", data)
        write_label(mon, "pets", f"n{i}", true + "s")
    result = export_captures(mon.uri, lake.uri, "pets", classes=["cats", "dogs"])
    second = ingest(lake.uri, str(tmp_path / "ds"))

    assert second.version != first.version
    new = second.manifest[second.manifest["key"].map(is_production_key)]
    assert len(new) == 10 and set(new["key"]) == set(result.manifest["key"])
    assert (new["label"] == new["key"].str.split("/").str[0]).all()
    old = first.manifest.set_index("key")["split"]
    assert second.manifest.set_index("key").loc[old.index, "split"].equals(old)


def test_export_refuses_bad_settings_and_nothing_new_is_no_export(tmp_path):
    mon = open_store(tmp_path / "mon")
    with pytest.raises(ExportError, match="No classes"):
        export_captures(mon.uri, str(tmp_path / "lake"), "pets")
    with pytest.raises(ExportError, match="min_images"):
        export_captures(mon.uri, str(tmp_path / "lake"), "pets", classes=["cats"],
                        min_images=-1)
    # min_images 0 (a retraining on the lake anyway): nothing labelled is no export.
    none = export_captures(mon.uri, str(tmp_path / "lake"), "pets", classes=["cats"],
                           min_images=0)
    assert none.export_id == "" and none.manifest.empty
    true, data = night(40)
    write_capture(mon, "pets", "a", data)
    write_label(mon, "pets", "a", true + "s")
    few = export_captures(mon.uri, str(tmp_path / "lake"), "pets", classes=["cats", "dogs"],
                          min_images=2)
    assert few.export_id == "" and list(open_store(tmp_path / "lake").list()) == []
    assert isinstance(few.manifest, pd.DataFrame) and few.manifest.empty


def test_labelled_junk_inputs_are_never_exported(tmp_path):
    """A labelled blank frame or noise is not a photo of a cat or a dog for the next training."""
    mon = open_store(tmp_path / "mon")
    for i, quality in enumerate(["ok", "blank", "noise", None]):
        true, data = night(50 + i)
        write_capture(mon, "pets", f"q{i}", data, quality=quality)
        write_label(mon, "pets", f"q{i}", true + "s")
    result = export_captures(mon.uri, str(tmp_path / "lake"), "pets", classes=["cats", "dogs"])
    assert sorted(result.manifest["request_id"]) == ["q0", "q3"]
    assert result.counts["skipped_junk_input"] == 2
    assert {s["request_id"] for s in result.skipped if s["reason"] == "junk_input"} == {
        "q1", "q2"}
