"""The feature scaling of a training split: right values, memory independent of the split."""

import tracemalloc

import numpy as np
import pytest

from components.train.core import TrainError, normalization


def _reference(images: np.ndarray):
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def test_normalization_equals_the_float_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (700, 3, 16, 16), dtype=np.uint8)
    images[:, 2] //= 4  # channels with different statistics
    mean, std = normalization(images)
    ref_mean, ref_std = _reference(images)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-6)
    np.testing.assert_allclose(std, ref_std, atol=1e-6)


def test_constant_images_get_the_floor_std_not_zero():
    mean, std = normalization(np.full((5, 3, 8, 8), 51, np.uint8))
    assert mean == [0.2, 0.2, 0.2] and std == [1e-3] * 3


def test_normalization_does_not_copy_the_split_as_floats():
    # 4,000 images of 64 px: 49 MB as uint8, 393 MB as the float64 copy the old code made.
    images = np.random.default_rng(1).integers(0, 256, (4000, 3, 64, 64), dtype=np.uint8)
    tracemalloc.start()
    try:
        normalization(images)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < images.nbytes / 4, (f"peak {peak / 2**20:.0f} MiB for a "
                                      f"{images.nbytes / 2**20:.0f} MiB split")


def test_empty_split_is_a_clear_error():
    with pytest.raises(TrainError, match="No training images"):
        normalization(np.zeros((0, 3, 8, 8), np.uint8))
