"""Camera-sized lakes: draft decoding and worker processes change the cost, never the result."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from components.common.images import ImageRejected, inspect_image, preprocess_image
from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate, render
from components.ingest import core
from components.ingest.core import IngestConfig, ingest


@pytest.fixture(scope="module")
def camera_lake(tmp_path_factory):
    """Twelve 720p frames, two 1080p frames, and the bad files a camera upload produces."""
    base = tmp_path_factory.mktemp("camlake")
    lake = open_store(base / "lake")
    generate(LakeSpec(n=12, size="1280x720", seed=41), lake)
    _, full = render(LakeSpec(n=1, size="1920x1080", seed=42), 0)
    lake.put("cats/hd_ok.jpg", full)
    lake.put("cats/hd_truncated.jpg", full[: len(full) * 9 // 10])  # upload cut short
    lake.put("dogs/hd_half.jpg", full[: len(full) // 2])
    lake.put("dogs/hd_header_only.jpg", full[:2000])
    return lake


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_draft_and_processes_give_the_same_version_and_catch_every_truncation(
        tmp_path, camera_lake, monkeypatch):
    monkeypatch.setattr(core, "PROCESS_MIN_OBJECTS", 4)  # use worker processes on a small lake
    plain = ingest(camera_lake.uri, str(tmp_path / "a"),
                   IngestConfig(workers=1, draft=False))
    fast = ingest(camera_lake.uri, str(tmp_path / "b"), IngestConfig(workers=2, draft=True))
    assert fast.version == plain.version
    for result in (plain, fast):
        q = result.quarantine.set_index("key")["reason"].to_dict()
        assert q == {"cats/hd_truncated.jpg": "truncated", "dogs/hd_half.jpg": "truncated",
                     "dogs/hd_header_only.jpg": "truncated"}
        sizes = result.manifest.set_index("key")[["width", "height"]]
        assert tuple(sizes.loc["cats/hd_ok.jpg"]) == (1920, 1080)  # full size, not the draft's
        assert result.report["ingested"] == 13
    # Statistics measured on the reduced image stay close to the full decode's.
    for split in ("train", "test"):
        a, b = plain.stats[split]["brightness"], fast.stats[split]["brightness"]
        assert abs(a["mean"] - b["mean"]) < 0.01


def test_draft_decoding_validates_every_byte():
    _, full = render(LakeSpec(n=1, size="1920x1080", seed=43), 0)
    info = inspect_image(full, draft_side=256)
    assert (info.width, info.height) == (1920, 1080)
    for cut in (0.3, 0.6, 0.95):
        with pytest.raises(ImageRejected) as err:
            inspect_image(full[: int(len(full) * cut)], draft_side=256)
        assert err.value.reason == "truncated"


def test_preprocess_respects_exif_orientation_and_size():
    _, full = render(LakeSpec(n=1, size="1280x720", seed=44), 0)
    img = Image.open(io.BytesIO(full))
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: to be rotated 90 degrees clockwise
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    upright = preprocess_image(buf.getvalue(), 64)
    assert upright.shape == (3, 64, 64) and upright.dtype == np.uint8
    info = inspect_image(buf.getvalue(), draft_side=256)
    assert (info.width, info.height) == (720, 1280)


@pytest.mark.timeout(180)
def test_worker_processes_read_an_s3_lake(tmp_path, s3_uri, monkeypatch):
    """Worker processes open their own S3 clients with the parent's settings; an object
    deleted after listing is quarantined, not fatal."""
    monkeypatch.setattr(core, "PROCESS_MIN_OBJECTS", 4)
    lake = open_store(s3_uri + "/lake")
    generate(LakeSpec(n=20, size=32, seed=45), lake)
    lake.put("cats/truncated.jpg", render(LakeSpec(n=1, size=64, seed=46), 0)[1][:400])
    one = ingest(lake.uri, s3_uri + "/ds1", IngestConfig(workers=1))
    many = ingest(lake.uri, s3_uri + "/ds2", IngestConfig(workers=2))  # worker processes
    assert many.version == one.version and many.report["decoded"] == 21
    for result in (one, many):
        assert result.quarantine.set_index("key")["reason"].to_dict() == {
            "cats/truncated.jpg": "truncated"}
    keys = [o.key for o in lake.list()]

    def delete_last(done, total):
        if done == 1:
            lake.delete(keys[-1])  # listed, then deleted before it is read

    gone = ingest(lake.uri, s3_uri + "/ds3", IngestConfig(workers=1), progress=delete_last)
    assert gone.quarantine.set_index("key")["reason"].to_dict() == {
        "cats/truncated.jpg": "truncated", keys[-1]: "vanished"}
