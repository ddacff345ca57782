"""Ingestion core on small generated lakes and real bad files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate, render
from components.ingest.core import IngestConfig, IngestError, ingest, split_of
from components.ingest.snapshot import list_versions, load_snapshot


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(index: int = 0) -> bytes:
    return render(LakeSpec(n=1, seed=123), index)[1]


def _tiff(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "TIFF")
    return buf.getvalue()


def _bad_files() -> dict[str, tuple[str, bytes]]:
    """Real bad files, one per quarantine reason decided by decoding (key -> reason, bytes)."""
    good = _jpeg(1)
    png = _png(Image.new("RGB", (64, 64), (200, 30, 30)))
    # PNG whose IDAT data is garbage but whose header is valid: decodes to an error.
    ihdr_end = 8 + 25
    idat = b"\x00" * 50
    chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat
    chunk += struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    corrupt_png = png[:ihdr_end] + chunk + iend
    # A PNG header declaring 100000 x 100000 pixels (a classic decompression bomb).
    bomb = bytearray(_png(Image.new("L", (64, 64))))
    bomb[16:24] = struct.pack(">II", 100_000, 100_000)
    bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))
    ico = io.BytesIO()
    Image.new("RGB", (64, 64)).save(ico, format="ICO")
    return {
        "cats/empty.jpg": ("zero_byte", b""),
        "cats/notes.jpg": ("not_an_image", b"this is a text file, not a photo\n"),
        "cats/truncated.jpg": ("truncated", good[: len(good) // 2]),
        "dogs/corrupt.png": ("corrupt", corrupt_png),
        "dogs/bomb.png": ("decompression_bomb", bytes(bomb)),
        "dogs/float.tif": ("unsupported_mode", _tiff(Image.fromarray(
            np.full((32, 32), 0.5, np.float32)))),
        "dogs/icon.ico": ("unsupported_format", ico.getvalue()),
        "cats/tiny.png": ("too_small", _png(Image.new("RGB", (8, 8)))),
        "stray.jpg": ("unlabelled", good),
    }


@pytest.fixture
def lake(tmp_path):
    store = open_store(tmp_path / "lake")
    generate(LakeSpec(n=60, size=32, seed=1), store)
    return store


def test_every_quarantine_reason_is_reported_and_nothing_is_lost(tmp_path, lake):
    bad = _bad_files()
    for key, (_, data) in bad.items():
        lake.put(key, data)
    result = ingest(lake.uri, str(tmp_path / "ds"))
    q = dict(zip(result.quarantine["key"], result.quarantine["reason"], strict=False))
    assert q == {key: reason for key, (reason, _) in bad.items()}
    r = result.report
    assert r["listed"] == 60 + len(bad)
    assert r["ingested"] + r["quarantined"] + r["duplicates"] == r["listed"]
    assert r["ingested"] == 60 and r["quarantined"] == len(bad)
    assert "== 69 listed" in r["accounting"]
    # The published quarantine list is complete too.
    root = open_store(tmp_path / "ds")
    published = pd.read_csv(io.BytesIO(root.read_published(
        f"versions/{result.version}", "quarantine.csv")), keep_default_na=False)
    assert set(published["key"]) == set(bad)
    assert all(published["detail"])  # each refusal says why


def test_a_larger_than_limit_image_is_a_bomb_without_decoding(tmp_path, lake):
    lake.put("cats/huge.png", _png(Image.new("L", (3000, 3000))))
    result = ingest(lake.uri, str(tmp_path / "ds"), IngestConfig(max_pixels=4_000_000))
    row = result.quarantine.set_index("key").loc["cats/huge.png"]
    assert row["reason"] == "decompression_bomb" and "9000000" in row["detail"]
    assert "--max-pixels" in row["detail"]  # the quarantine says how to raise the limit


def test_a_16_bit_png_is_ingested_as_8_bit(tmp_path, lake):
    """Finding 8 of issue 23: 16-bit PNGs were quarantined as unsupported_mode."""
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    lake.put("dogs/depth16.png", _png(Image.fromarray(ramp)))
    result = ingest(lake.uri, str(tmp_path / "ds"))
    assert "dogs/depth16.png" in set(result.manifest["key"])
    assert "dogs/depth16.png" not in set(result.quarantine["key"])


def test_exact_duplicates_are_removed_reported_and_never_split(tmp_path, lake):
    original = lake.get("cats/cat_000003.jpg")
    lake.put("cats/copy_of_3.jpg", original)
    lake.put("cats/zz_another_copy.jpg", original)
    result = ingest(lake.uri, str(tmp_path / "ds"))
    dups = result.duplicates.set_index("key")["duplicate_of"].to_dict()
    assert dups == {"cats/copy_of_3.jpg": "cats/cat_000003.jpg",
                    "cats/zz_another_copy.jpg": "cats/cat_000003.jpg"}
    assert result.manifest["sha256"].is_unique
    assert result.report["ingested"] + result.report["duplicates"] == result.report["listed"]


def test_identical_bytes_with_different_labels_are_quarantined(tmp_path, lake):
    lake.put("dogs/actually_a_cat.jpg", lake.get("cats/cat_000003.jpg"))
    result = ingest(lake.uri, str(tmp_path / "ds"))
    q = result.quarantine.set_index("key")["reason"].to_dict()
    assert q == {"cats/cat_000003.jpg": "conflicting_labels",
                 "dogs/actually_a_cat.jpg": "conflicting_labels"}


def test_split_is_stable_when_images_are_added(tmp_path):
    store = open_store(tmp_path / "lake")
    generate(LakeSpec(n=80, size=32, seed=2), store)
    first = ingest(store.uri, str(tmp_path / "ds")).manifest.set_index("key")["split"]
    extra = open_store(tmp_path / "extra")
    generate(LakeSpec(n=80, size=32, seed=3), extra)
    for obj in extra.list():  # a second batch into the class folders: cats/batch2_cat_….jpg
        store.put(obj.key.replace("/", "/batch2_"), extra.get(obj.key))
    generate(LakeSpec(n=80, size=32, seed=2), store)  # rewrite the same images
    second = ingest(store.uri, str(tmp_path / "ds"), IngestConfig(layout="auto"))
    later = second.manifest.set_index("key")["split"]
    assert later.loc[first.index].equals(first)
    assert len(later) > len(first)


def test_split_is_stratified_and_near_the_fraction(tmp_path):
    store = open_store(tmp_path / "lake")
    generate(LakeSpec(n=600, size=32, seed=4), store)
    result = ingest(store.uri, str(tmp_path / "ds"), IngestConfig(test_fraction=0.2))
    for cls, share in result.report["test_share_per_class"].items():
        assert 0.14 < share < 0.26, (cls, share)
    assert split_of("0" * 64, 0.2) == "test" and split_of("f" * 64, 0.2) == "train"


def test_version_changes_iff_content_changes(tmp_path, lake):
    root = str(tmp_path / "ds")
    v1 = ingest(lake.uri, root).version
    # Same bytes rewritten (new mtime): same version.
    lake.put("cats/cat_000003.jpg", lake.get("cats/cat_000003.jpg"))
    assert ingest(lake.uri, root).version == v1
    # One image's content changes: new version.
    lake.put("cats/cat_000003.jpg", _jpeg(7))
    v2 = ingest(lake.uri, root).version
    assert v2 != v1
    assert list_versions(root) == sorted([v1, v2])


def test_snapshot_is_immutable_when_the_lake_changes(tmp_path, lake):
    root = str(tmp_path / "ds")
    result = ingest(lake.uri, root)
    before = load_snapshot(root, result.version)
    old_bytes = lake.get("cats/cat_000003.jpg")
    lake.put("cats/cat_000003.jpg", _jpeg(9))
    lake.delete(lake.list().__next__().key)
    ingest(lake.uri, root)
    after = load_snapshot(root, result.version)
    pd.testing.assert_frame_equal(before, after)
    row = result.split_manifest("train")
    row = pd.concat([row, result.split_manifest("test")]).set_index("key").loc[
        "cats/cat_000003.jpg"]
    assert open_store(row["uri"].rsplit("/", 1)[0]).get(row["sha256"]) == old_bytes


def test_reingesting_an_unchanged_lake_decodes_nothing(tmp_path, lake):
    root = str(tmp_path / "ds")
    first = ingest(lake.uri, root)
    assert first.report["decoded"] == 60 and first.created
    second = ingest(lake.uri, root)
    assert second.report["decoded"] == 0 and second.report["cache_hits"] == 60
    assert second.version == first.version and not second.created
    lake.put("dogs/new.jpg", _jpeg(11))
    third = ingest(lake.uri, root)
    assert third.report["decoded"] == 1
    no_cache = ingest(lake.uri, root, IngestConfig(use_cache=False))
    assert no_cache.report["decoded"] == 61 and no_cache.version == third.version


def test_kaggle_flat_layout(tmp_path):
    store = open_store(tmp_path / "kaggle")
    generate(LakeSpec(n=40, size=32, seed=5, layout="kaggle"), store)
    store.put("readme.txt", b"Dogs vs. Cats")
    result = ingest(store.uri, str(tmp_path / "ds"))
    assert result.report["classes"] == ["cats", "dogs"]  # cat.12.jpg: alias cat -> cats
    assert result.report["ingested"] == 40
    assert result.quarantine.set_index("key")["reason"].to_dict() == {"readme.txt": "unlabelled"}


def test_labels_csv_layout(tmp_path):
    store = open_store(tmp_path / "flat")
    keys = []
    for i in range(12):
        label, data = render(LakeSpec(n=12, size=32, seed=6), i)
        keys.append((f"img_{i:03d}.jpg", label))
        store.put(keys[-1][0], data)
    rows = [f"{k},{lab}" for k, lab in keys[:10]]
    rows += ["missing.jpg,cat", "../outside.jpg,dog", f"{keys[0][0]},{keys[0][1]}"]
    store.put("labels.csv", ("filename,label\n" + "\n".join(rows) + "\n").encode())
    # Given as a plain path while the lake is a file:// URI: still recognised as inside it.
    result = ingest(store.uri, str(tmp_path / "ds"),
                    IngestConfig(labels_csv=str(tmp_path / "flat" / "labels.csv")))
    r = result.report
    assert r["excluded_from_listing"] == ["labels.csv"]
    assert r["ingested"] == 10 and r["listed"] == 12
    assert set(result.quarantine["key"]) == {keys[10][0], keys[11][0]}
    assert set(result.quarantine["reason"]) == {"unlabelled"}
    assert r["labels_missing_from_lake"] == ["missing.jpg"]
    assert [row["key"] for row in r["label_rows_rejected"]] == ["../outside.jpg"]
    assert r["label_rows_rejected"][0]["reason"] == "unsafe_key"


def test_labels_csv_without_label_column_is_a_clear_error(tmp_path, lake):
    lake.put("meta/labels.csv", b"name,kind\na.jpg,cat\n")
    with pytest.raises(IngestError, match="Expect a key column"):
        ingest(lake.uri, str(tmp_path / "ds"),
               IngestConfig(labels_csv=lake.uri + "/meta/labels.csv"))


def test_empty_lake_and_all_bad_lake_are_clear_errors(tmp_path):
    empty = open_store(tmp_path / "empty")
    with pytest.raises(IngestError, match="No objects found"):
        ingest(empty.uri, str(tmp_path / "ds"))
    bad = open_store(tmp_path / "bad")
    bad.put("cats/a.jpg", b"")
    with pytest.raises(IngestError, match="zero_byte"):
        ingest(bad.uri, str(tmp_path / "ds"))
    assert list_versions(str(tmp_path / "ds")) == []  # nothing half-published


@pytest.mark.parametrize("kwargs, match", [
    ({"test_fraction": 1.5}, "test_fraction"),
    ({"layout": "zip"}, "layout"),
    ({"layout": "csv"}, "labels_csv"),
    ({"workers": -1}, "workers"),
    ({"classes": ()}, "classes"),
    ({"classes": ("cats", "Cats")}, "classes"),
    ({"aliases": {"kitty": "tigers"}}, "tigers"),
])
def test_bad_config_names_the_value(kwargs, match):
    with pytest.raises(IngestError, match=match):
        IngestConfig(**kwargs)


def test_ingest_from_s3_over_http(tmp_path, s3_uri, s3_env):
    lake = open_store(s3_uri + "/lake")
    generate(LakeSpec(n=30, size=32, seed=8), lake)
    lake.put("cats/broken.jpg", _jpeg(1)[:300])
    # An object key that climbs out of the prefix. S3 allows such keys; the minio client
    # refuses to write them, so another client (boto3) plants it, as a hostile writer would.
    import boto3

    s3 = open_store(s3_uri)
    boto3.client("s3", endpoint_url=s3_env).put_object(
        Bucket=s3.bucket, Key=f"{s3.prefix}/lake/../escaped.jpg", Body=b"x")
    result = ingest(lake.uri, s3_uri + "/datasets")
    q = result.quarantine.set_index("key")["reason"].to_dict()
    assert q.get("cats/broken.jpg") == "truncated"
    assert q.get("../escaped.jpg") == "unsafe_key"
    assert result.report["ingested"] == 30
    assert open_store(s3_uri + "/datasets").is_published(f"versions/{result.version}")
    again = ingest(lake.uri, s3_uri + "/datasets")
    assert again.report["decoded"] == 0 and again.version == result.version
