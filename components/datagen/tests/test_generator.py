"""The sample data lake: deterministic, shape-cued, with documented drift variants."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate, label_of, render


def _pixels(spec: LakeSpec, i: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(render(spec, i)[1])), dtype=np.float32) / 255


def test_same_spec_gives_identical_bytes(tmp_path):
    spec = LakeSpec(n=25, size=48, seed=7)
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    generate(spec, a)
    generate(spec, b)
    keys = [o.key for o in a.list()]
    assert keys == [o.key for o in b.list()] and len(keys) == 25
    assert all(a.get(k) == b.get(k) for k in keys)


def test_another_seed_gives_other_images():
    assert render(LakeSpec(n=1, seed=1), 0)[1] != render(LakeSpec(n=1, seed=2), 0)[1]


def test_layouts_and_sizes(tmp_path):
    store = open_store(tmp_path / "k")
    generate(LakeSpec(n=6, size=40, seed=0, layout="kaggle"), store)
    keys = [o.key for o in store.list()]
    assert all(k.split(".")[0] in ("cat", "dog") and "/" not in k for k in keys)
    assert Image.open(io.BytesIO(store.get(keys[0]))).size == (40, 40)
    folders = open_store(tmp_path / "f")
    generate(LakeSpec(n=6, size=40, seed=0), folders)
    assert {o.key.split("/")[0] for o in folders.list()} <= {"cats", "dogs"}


def test_class_prior_shift():
    spec = LakeSpec(n=2000, seed=3, cat_fraction=0.8)
    cats = sum(label_of(spec, i) == "cat" for i in range(spec.n))
    assert 0.76 < cats / spec.n < 0.84


def test_night_is_dark_low_contrast_greyscale_and_blur_is_soft():
    day = [_pixels(LakeSpec(n=1, seed=4), i) for i in range(40)]
    night = [_pixels(LakeSpec(n=1, seed=4, condition="night"), i) for i in range(40)]
    blur = [_pixels(LakeSpec(n=1, seed=4, condition="blur"), i) for i in range(40)]
    assert np.mean([x.mean() for x in night]) < 0.6 * np.mean([x.mean() for x in day])
    assert np.mean([x.std() for x in night]) < 0.6 * np.mean([x.std() for x in day])
    assert max(np.abs(x[..., 0] - x[..., 1]).max() for x in night) < 0.1  # greyscale

    def sharpness(x):
        g = x.mean(axis=2)
        return np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()

    assert np.mean([sharpness(x) for x in blur]) < 0.6 * np.mean([sharpness(x) for x in day])


def test_night_eyes_shine_without_pupils():
    """In IR night mode both classes' eyes are the same glowing discs: the pupils' shapes, a
    cue a day model reads, are gone."""
    from components.datagen.core import _draw_animal, _rng

    pupils = {(10, 10, 10), (15, 10, 5)}
    for label in ("cat", "dog"):
        for night_mode in (False, True):
            layer = np.asarray(_draw_animal(label, _rng(0, 3, 2), 256, night=night_mode))
            colours = {tuple(int(v) for v in p[:3]) for p in layer.reshape(-1, 4) if p[3]}
            assert bool(colours & pupils) is not night_mode, (label, night_mode)
            assert ((250, 250, 250) in colours) is night_mode, (label, night_mode)


def test_pixel_statistics_do_not_separate_the_classes():
    """A linear model on colour and brightness statistics stays far from a usable classifier.

    (A small CNN reaches >= 0.9 on the same images: the training tests show it.)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec = LakeSpec(n=800, size=64, seed=5)
    features, labels = [], []
    for i in range(spec.n):
        x = _pixels(spec, i)
        lum = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        hist = np.histogram(lum, bins=16, range=(0, 1))[0] / lum.size
        features.append(np.concatenate([x.mean((0, 1)), x.std((0, 1)), hist]))
        labels.append(label_of(spec, i) == "cat")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(model, np.array(features), np.array(labels), cv=5).mean()
    assert accuracy < 0.72, accuracy


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 1, "size": 8}, {"n": 1, "condition": "fog"},
                                    {"n": 1, "cat_fraction": 2.0}, {"n": 1, "layout": "zip"}])
def test_bad_specs_are_refused(kwargs):
    with pytest.raises(ValueError, match="Invalid"):
        LakeSpec(**kwargs)


def test_camera_sizes_render_cctv_like_jpeg_frames(tmp_path):
    from components.datagen.core import parse_size

    assert parse_size("1920x1080") == (1920, 1080) and parse_size("12MP") == (4000, 3000)
    assert parse_size("64") == 64
    spec = LakeSpec(n=3, size="1280x720", seed=12)
    store = open_store(tmp_path / "cam")
    assert sum(generate(spec, store, workers=2).values()) == 3
    keys = [o.key for o in store.list()]
    again = open_store(tmp_path / "again")
    generate(spec, again)  # one process or two: the same bytes
    assert all(store.get(k) == again.get(k) for k in keys)
    for key in keys:
        data = store.get(key)
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.size == (1280, 720)
        # A real frame's entropy: sensor noise and texture make 720p frames 60-400 KB (a flat
        # synthetic picture would be a few KB).
        assert 60_000 < len(data) < 400_000, len(data)
        assert render(LakeSpec(n=1, size=(1280, 720), seed=12, quality=85),
                      int(key[-10:-4]))[1] == data  # default camera quality is 85
    # The lake's class cue survives at camera size: the frame's label matches its folder.
    assert {k.split("/")[0] for k in keys} <= {"cats", "dogs"}


@pytest.mark.parametrize("size", ["12x", "10x10", "9000x9000", "0"])
def test_bad_camera_sizes_are_refused(size):
    with pytest.raises(ValueError, match="Invalid size"):
        LakeSpec(n=1, size=size)


def test_a_csv_lake_has_uninformative_names_and_a_labels_file(tmp_path):
    from components.datagen.core import LABELS_CSV
    from components.ingest.core import read_labels_csv

    store = open_store(tmp_path / "lake")
    counts = generate(LakeSpec(n=12, size=32, seed=3, layout="csv"), store)
    keys = sorted(o.key for o in store.list())
    assert LABELS_CSV in keys and all(k.startswith("photos/") for k in keys if k != LABELS_CSV)
    labels, rejected = read_labels_csv(store.uri_of(LABELS_CSV))
    assert not rejected and len(labels) == 12 == len(keys) - 1
    assert sorted(labels.values()).count("cat") == counts["cat"]
