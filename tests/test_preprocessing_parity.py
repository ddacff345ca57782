"""Training and serving see the same pixels for the same camera photo (issue 14).

The training data loader (``components.train.core.load_images``) and the predictor
(``PetClassifier._images_to_batch``) both go through ``components.common.images``'
preprocessing; this feeds the same camera JPEGs through both and compares the tensors.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.common.storage import open_store, sha256_bytes
from components.datagen.core import LakeSpec, render


def _camera_jpegs() -> list[bytes]:
    frames = [render(LakeSpec(n=1, size="1280x720", seed=51), i)[1] for i in range(2)]
    frames.append(render(LakeSpec(n=1, size="1920x1080", seed=52), 0)[1])
    # A phone photo stored sideways with an EXIF orientation, and a PNG with transparency.
    img = Image.open(io.BytesIO(frames[0]))
    exif = img.getexif()
    exif[0x0112] = 8
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88, exif=exif.tobytes())
    frames.append(buf.getvalue())
    rgba = Image.open(io.BytesIO(frames[1])).convert("RGBA").resize((640, 360))
    rgba.putalpha(128)
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    frames.append(buf.getvalue())
    return frames


@pytest.mark.timeout(300)
def test_training_and_serving_preprocess_camera_photos_identically(package_dir, tmp_path):
    from components.serve.predictor import PetClassifier
    from components.train.core import load_images

    model = PetClassifier("pets", str(package_dir))
    model.load()
    frames = _camera_jpegs()
    store = open_store(tmp_path / "objects")
    rows = []
    for data in frames:
        sha = sha256_bytes(data)
        store.put(sha, data)
        rows.append({"key": f"cam/{sha[:8]}.jpg", "sha256": sha, "uri": store.uri_of(sha)})
    trained = load_images(pd.DataFrame(rows), model.size)  # what training reads
    served = model._images_to_batch(frames)  # what the predictor feeds ONNX Runtime
    expected = (trained.astype(np.float32) / np.float32(255.0) - model.mean) / model.std
    assert served.shape == expected.shape == (len(frames), 3, model.size, model.size)
    np.testing.assert_array_equal(served, expected)
    # Not a trivial pass: the photos differ from each other, and the sideways photo was turned.
    assert len({t.tobytes() for t in trained}) == len(frames)
    assert not np.array_equal(trained[0], trained[3])
