"""Input statistics of a decoded image, and one decode giving the network input and them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from components.common.images import decode_and_measure, image_stats, preprocess_image


def test_image_stats_measure_size_mode_brightness_contrast_and_blur():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    s = image_stats(noise, "P")
    assert (s["width"], s["height"], s["mode"]) == (160, 120, "P")
    assert 0.45 < s["brightness"] < 0.55 and s["contrast"] > 0.1
    blurred = image_stats(noise.filter(ImageFilter.GaussianBlur(3)))
    assert blurred["sharpness"] < s["sharpness"] / 10  # blur is measured
    dark = image_stats(Image.fromarray((np.asarray(noise) * 0.2).astype(np.uint8)))
    assert dark["brightness"] < 0.15  # a night frame
    big = image_stats(noise.resize((4000, 3000)))
    assert (big["width"], big["height"]) == (4000, 3000)  # measured on a reduced copy


def test_decode_and_measure_gives_the_training_pixels():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
                    ).save(buf, "JPEG")
    x, stats = decode_and_measure(buf.getvalue(), 64)
    assert np.array_equal(x, preprocess_image(buf.getvalue(), 64))
    assert (stats["width"], stats["height"], stats["mode"]) == (640, 480, "RGB")
