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


def _encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def test_input_quality_flags_junk_and_no_camera_frame_by_day_or_night():
    """Junk is judged on the predictor's decode (draft JPEG decoding to the input size); the
    generator's frames, day, night (dark, grey, noisy, soft) and out of focus, at square
    sample sizes and CCTV sizes, are never junk."""
    from components.common.images import JUNK_REASONS, input_quality, tensor_stats
    from components.datagen.core import LakeSpec, render

    frames = [(cond, size, i) for cond in ("day", "night", "blur")
              for size, count in ((16, 40), (32, 60), (64, 60), (128, 30), ("640x360", 3))
              for i in range(count)]
    flagged = {}
    for cond, size, i in frames:
        data = render(LakeSpec(n=100, size=size, seed=71, condition=cond), i)[1]
        for input_size in (32, 64):
            verdict = input_quality(decode_and_measure(data, input_size)[1])
            if verdict != "ok":
                flagged[(cond, size, i, input_size)] = verdict
    assert flagged == {}

    rng = np.random.default_rng(72)
    junk = {
        "too_small": [_encoded(np.zeros((1, 1, 3), np.uint8)),  # a 1x1 black PNG
                      _encoded(rng.integers(0, 256, (8, 200, 3), dtype=np.uint8))],
        "blank": [_encoded(np.full((2160, 3840, 3), 255, np.uint8), "JPEG"),  # 4K all-white
                  _encoded(np.zeros((360, 640, 3), np.uint8), "JPEG"),
                  _encoded(np.clip(20 + rng.normal(0, 3, (360, 640, 3)), 0, 255)
                           .astype(np.uint8), "JPEG")],  # a covered lens: sensor noise only
        "noise": [_encoded(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
                  _encoded(rng.integers(0, 256, (360, 640, 3), dtype=np.uint8), "JPEG"),
                  _encoded(np.repeat(rng.integers(0, 256, (256, 256, 1), dtype=np.uint8), 3,
                                     axis=2))],
    }
    for reason, inputs in junk.items():
        assert reason in JUNK_REASONS
        for data in inputs:
            assert input_quality(decode_and_measure(data, 64)[1]) == reason
    # Tensors a client preprocessed itself are judged on their pixels.
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    zeros = np.zeros((2, 3, 32, 32), np.float32)
    noise = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert [input_quality(s) for s in tensor_stats(zeros, mean, std)] == ["blank", "blank"]
    assert [input_quality(s) for s in tensor_stats(noise, mean, std)] == ["noise"]
    assert input_quality({}) is None  # nothing measured: no verdict
def test_context_is_measured_from_the_decoded_image_infrared_is_grey_and_dim():
    from components.common.images import measure_context
    from components.datagen.core import LakeSpec, render

    for condition, expected in (("day", "day"), ("night", "night"), ("blur", "day")):
        for size in (32, (320, 180)):
            spec = LakeSpec(n=20, size=size, seed=4, condition=condition)
            got = {decode_and_measure(render(spec, i)[1], 32)[1]["context"] for i in range(8)}
            assert got == {expected}, (condition, size, got)
    grey_bright = {"colourfulness": 0.0, "brightness": 0.7}  # a greyscale photo by day
    assert measure_context(grey_bright) == "day"
    assert measure_context({"colourfulness": 0.0, "brightness": 0.2}) == "night"
    assert measure_context({"colourfulness": 0.0, "brightness": 0.2}, ("day",)) == "day"


def test_a_sent_context_is_validated_and_never_overrides_a_measured_one():
    import pytest

    from components.common.images import ContextRejected, parse_contexts, request_context

    ir = {"colourfulness": 0.0, "brightness": 0.2}
    colour = {"colourfulness": 0.3, "brightness": 0.5}
    park = ("day", "night", "rain")
    assert request_context(ir, None, park) == "night"
    assert request_context(colour, "night", park) == "day"  # measured: colour is not IR
    assert request_context(ir, "day", park) == "night"
    assert request_context(colour, "rain", park) == "rain"  # only the camera can tell rain
    with pytest.raises(ContextRejected, match="declares day, night, rain"):
        request_context(colour, "fog", park)
    assert parse_contexts("day, night") == ("day", "night")
    for bad in ("", "day,day", "Day", ["day", "no spaces"]):
        with pytest.raises(ContextRejected, match="e.g. 'day,night'"):
            parse_contexts(bad)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_a_16_bit_png_is_converted_to_8_bit_not_refused():
    """Finding 8 of issue 23: 16-bit PNGs were quarantined (ingest) and refused (serve)."""
    from components.common.images import decode_image, inspect_image

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    data = _png(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16-bit on disk
    rgb = np.asarray(decode_image(data))
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, -1].tolist() == [255, 255, 255]
    assert abs(int(rgb[0, 32, 0]) - (int(ramp[0, 32]) >> 8)) <= 1  # the top 8 bits
    info = inspect_image(data)
    assert (info.width, info.height) == (64, 48)


def test_one_pixel_limit_names_how_to_raise_it():
    """Ingestion and serving share components.settings.MAX_IMAGE_PIXELS (MLOPS_MAX_PIXELS),
    50 MP by default: a 48 MP phone photo passes; over the limit, the reason names the fix."""
    import pytest

    from components.common.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_image

    assert DEFAULT_MAX_PIXELS == 50_000_000
    data = _png(Image.new("L", (400, 300)))
    assert decode_image(data, max_pixels=120_000).size == (400, 300)
    with pytest.raises(ImageRejected) as exc:
        decode_image(data, max_pixels=119_999)
    assert exc.value.reason == "decompression_bomb"
    assert "400x300 = 120000 pixels > limit 119999" in str(exc.value)
    assert "--max-pixels" in str(exc.value) and "MLOPS_MAX_PIXELS" in str(exc.value)


def test_the_pixel_limit_is_read_from_the_environment():
    import subprocess
    import sys

    code = ("from components.common.images import DEFAULT_MAX_PIXELS as a;"
            "from components.ingest.core import IngestConfig;"
            "print(a, IngestConfig().max_pixels)")
    env = {**__import__("os").environ, "MLOPS_MAX_PIXELS": "60_000_000"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.stdout.split() == ["60000000", "60000000"], out.stderr
    env["MLOPS_MAX_PIXELS"] = "lots"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode != 0 and "MLOPS_MAX_PIXELS='lots': expect a whole number" in out.stderr
