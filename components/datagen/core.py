"""A deterministic sample data lake of pet-park camera shots: cats and dogs.

The images stand in for real photos so that the whole workflow runs and is tested without
downloads. Class cues are shapes (pointed ears, whiskers and slit pupils for cats; floppy ears,
a muzzle and a round nose for dogs). Fur colour, background, position, scale, pose, lighting
and noise are drawn from the *same* distributions for both classes, so global pixel statistics
carry almost no class signal while a small CNN can learn the shapes.

Each image is a pure function of ``(seed, index, size, condition)``: the lake is identical
byte for byte on every run and every machine with the pinned Pillow and NumPy.

Camera sizes (``size="1920x1080"``, any ``WxH``) render the same scene as a CCTV frame: the
scene is composed at 270 px high, upscaled to the camera's resolution, and given the texture
of a real frame (low-frequency shading, fine grain, per-pixel luma and chroma sensor noise and
a timestamp overlay), then saved as a JPEG of the camera's quality (85, 4:2:0 chroma
subsampling by default), so file sizes and decoding costs are those of real camera frames.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from components.common.procs import exit_with
from components.common.storage import ObjectStore, join_key

logger = logging.getLogger(__name__)

CONDITIONS = ("day", "night", "blur")
#: Where the camera looks: ``usual`` (the view the training images have) or ``moved`` (the
#: camera was knocked and now looks down a gravel path from further away: smaller animals on
#: another background), in any condition.
VIEWS = ("usual", "moved")
LAYOUTS = ("folders", "kaggle", "csv")
#: The labels file a ``csv`` lake gets at its root (``key,label``; the keys say nothing).
LABELS_CSV = "labels.csv"
CLASSES = ("cat", "dog")
JPEG_QUALITY = 90
CAMERA_JPEG_QUALITY = 85  # a typical CCTV encoder setting
#: Named camera sizes for the command line.
CAMERA_SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "12mp": (4000, 3000)}
_WXH = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
MAX_CAMERA_PIXELS = 40_000_000


def parse_size(text: str | int) -> int | tuple[int, int]:
    """``"64"`` -> 64 (square sample images); ``"1920x1080"`` or ``"1080p"`` -> (1920, 1080).

    Raises:
        ValueError: Neither a side nor WxH; the message says what is expected.
    """
    if isinstance(text, int):
        return text
    raw = str(text).strip().lower()
    if raw in CAMERA_SIZES:
        return CAMERA_SIZES[raw]
    if raw.isdigit():
        return int(raw)
    m = _WXH.match(raw)
    if not m:
        raise ValueError(f"Invalid size: {text!r}. Expect a side in pixels (64) or a camera "
                         f"size WxH (1920x1080) or one of {sorted(CAMERA_SIZES)}.")
    return int(m.group(1)), int(m.group(2))

# Fur colours shared by both classes (RGB): black, white, grey, ginger, brown, cream, tabby.
_FUR = np.array([(30, 30, 32), (235, 235, 228), (128, 128, 130), (205, 120, 45),
                 (110, 70, 40), (225, 200, 150), (150, 120, 90)], dtype=float)


@dataclass(frozen=True)
class LakeSpec:
    """What to generate.

    Attributes:
        n: Number of images.
        size: Side of the square sample images in pixels (16 to 1024), or a camera size
            ``(width, height)`` (or ``"1920x1080"``) for CCTV-like frames.
        seed: Seed; the same spec gives the same bytes.
        condition: ``day`` (default), ``night`` (the infrared night mode: dark,
            low-contrast greyscale, soft from the lens's infrared focus shift, eyes shining in
            the illuminator's light) or ``blur`` (out-of-focus lens).
        cat_fraction: Class prior of cats; 0.5 by default, other values shift the prior.
        layout: ``folders`` (``cats/…``, ``dogs/…``), ``kaggle`` (flat ``cat.12.jpg``) or
            ``csv`` (``photos/000012.jpg``, whose names say nothing, and a ``labels.csv``
            of ``key,label`` at the lake's root: as a camera's export and a labelling tool's
            sheet look).
        quality: JPEG quality; default 90 for square sample images, 85 for camera sizes.
        view: ``usual`` or ``moved`` (see ``VIEWS``; square sample images only).
    """

    n: int
    size: int | tuple[int, int] = 64
    seed: int = 0
    condition: str = "day"
    cat_fraction: float = 0.5
    layout: str = "folders"
    quality: int | None = None
    view: str = "usual"

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"Invalid n: {self.n}. Expect at least 1 image.")
        size = parse_size(self.size) if isinstance(self.size, str) else self.size
        if isinstance(size, (tuple, list)):
            size = (int(size[0]), int(size[1]))
            if min(size) < 64 or size[0] * size[1] > MAX_CAMERA_PIXELS:
                raise ValueError(f"Invalid size: {size[0]}x{size[1]}. Expect a camera size of "
                                 f"at least 64 px a side and at most {MAX_CAMERA_PIXELS:,} "
                                 "pixels, such as 1920x1080.")
        elif not 16 <= size <= 1024:
            raise ValueError(f"Invalid size: {size}. Expect 16 to 1024 pixels, or a camera size "
                             "WxH such as 1920x1080.")
        object.__setattr__(self, "size", size)
        if self.quality is not None and not 1 <= self.quality <= 95:
            raise ValueError(f"Invalid quality: {self.quality}. Expect a JPEG quality 1 to 95.")
        if self.condition not in CONDITIONS:
            raise ValueError(f"Invalid condition: {self.condition!r}. Expect one of {CONDITIONS}.")
        if not 0.0 <= self.cat_fraction <= 1.0:
            raise ValueError(f"Invalid cat_fraction: {self.cat_fraction}. Expect 0.0 to 1.0.")
        if self.view not in VIEWS:
            raise ValueError(f"Invalid view: {self.view!r}. Expect one of {VIEWS}.")
        if self.view != "usual" and self.camera:
            raise ValueError(f"Invalid view: {self.view!r} with a camera size: the moved view "
                             "is drawn for square sample images only.")
        if self.layout not in LAYOUTS:
            raise ValueError(f"Invalid layout: {self.layout!r}. Expect one of {LAYOUTS}.")


    @property
    def camera(self) -> bool:
        """True for a camera size (WxH), False for the square sample images."""
        return isinstance(self.size, tuple)

    @property
    def width(self) -> int:
        return self.size[0] if self.camera else self.size

    @property
    def height(self) -> int:
        return self.size[1] if self.camera else self.size


def _rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def label_of(spec: LakeSpec, index: int) -> str:
    """The class of image ``index``; depends only on seed, index and the class prior."""
    return "cat" if _rng(spec.seed, index, 1).random() < spec.cat_fraction else "dog"


def key_of(spec: LakeSpec, index: int, label: str) -> str:
    if spec.layout == "kaggle":
        return f"{label}.{index}.jpg"
    if spec.layout == "csv":
        return f"photos/{index:06d}.jpg"
    return f"{label}s/{label}_{index:06d}.jpg"


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    base = _FUR[rng.integers(len(_FUR))]
    return tuple(int(v) for v in np.clip(base * rng.uniform(0.8, 1.2) + rng.normal(0, 12, 3),
                                         0, 255))


def _background(rng: np.random.Generator, s: int) -> Image.Image:
    """Grass, sky, paths, benches and bushes: the same scene distribution for both classes."""
    top = rng.uniform(40, 230, 3)
    bottom = rng.uniform(40, 230, 3)
    t = np.linspace(0, 1, s)[:, None, None]
    arr = top * (1 - t) + bottom * t
    arr = np.broadcast_to(arr, (s, s, 3)).copy()
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.6:  # horizon: lawn below, sky or fence above
        y = int(rng.uniform(0.3, 0.8) * s)
        draw.rectangle([0, y, s, s], fill=tuple(int(v) for v in rng.uniform(30, 200, 3)))
    for _ in range(rng.integers(0, 7)):  # clutter: benches, bins, bushes, balls
        c = tuple(int(v) for v in rng.uniform(0, 255, 3))
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * s
        w, h = rng.uniform(0.05, 0.35, 2) * s
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=c)
        else:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=c)
    return img


def _draw_animal(label: str, rng: np.random.Generator, s: int,
                 night: bool = False) -> Image.Image:
    """The animal on a transparent layer, centred, upright; pose is applied by the caller.

    ``night``: under the camera's infrared illuminator both cats' and dogs' eyes shine (the
    tapetum reflects the light straight back), so the eyes are bright discs and the pupils'
    shapes cannot be seen."""
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    fur = _colour(rng)
    dark = tuple(int(v * 0.55) for v in fur)
    light = tuple(int(min(255, v * 0.6 + 110)) for v in fur)
    eye = tuple(int(v) for v in rng.uniform(60, 200, 3))
    cx, cy = s / 2, s / 2
    r = s * 0.20
    rx, ry = r * rng.uniform(0.95, 1.1), r * rng.uniform(0.85, 1.0)
    # Body below the head, same for both classes.
    d.ellipse([cx - r * 1.3, cy + ry * 0.5, cx + r * 1.3, cy + ry * 2.6], fill=fur)
    if label == "cat":
        for side in (-1, 1):  # tall pointed ears standing on top of the head
            base_outer = (cx + side * rx * 0.95, cy - ry * 0.35)
            base_inner = (cx + side * rx * 0.15, cy - ry * 0.85)
            tip = (cx + side * rx * rng.uniform(0.6, 0.85), cy - ry * rng.uniform(1.75, 2.05))
            d.polygon([base_outer, base_inner, tip], fill=fur)
            inner_tip = (tip[0] * 0.8 + cx * 0.2 * 1, tip[1] + ry * 0.35)
            d.polygon([(base_outer[0] * 0.8 + base_inner[0] * 0.2, base_outer[1] - ry * 0.1),
                       (base_inner[0] * 0.8 + base_outer[0] * 0.2, base_inner[1] + ry * 0.05),
                       inner_tip], fill=light)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fur)
    ey = cy - ry * 0.2
    for side in (-1, 1):
        ex = cx + side * rx * 0.42
        if night:  # eyeshine: a glowing disc, whatever the pupil's shape
            d.ellipse([ex - r * 0.18, ey - r * 0.15, ex + r * 0.18, ey + r * 0.15],
                      fill=(250, 250, 250))
        elif label == "cat":  # almond eyes with vertical slit pupils
            d.ellipse([ex - r * 0.22, ey - r * 0.14, ex + r * 0.22, ey + r * 0.14], fill=eye)
            d.rectangle([ex - r * 0.04, ey - r * 0.14, ex + r * 0.04, ey + r * 0.14],
                        fill=(10, 10, 10))
        else:  # round eyes with round pupils
            d.ellipse([ex - r * 0.16, ey - r * 0.16, ex + r * 0.16, ey + r * 0.16],
                      fill=(245, 245, 245))
            d.ellipse([ex - r * 0.09, ey - r * 0.09, ex + r * 0.09, ey + r * 0.09],
                      fill=(15, 10, 5))
    if label == "cat":
        ny = cy + ry * 0.25
        d.polygon([(cx - r * 0.12, ny), (cx + r * 0.12, ny), (cx, ny + r * 0.12)],
                  fill=(230, 140, 150))
        whisker = (235, 235, 235) if sum(fur) < 360 else (40, 40, 40)
        for side in (-1, 1):
            for k in (-1, 0, 1):
                d.line([(cx + side * r * 0.2, ny + r * 0.1),
                        (cx + side * rx * 1.35, ny + r * 0.1 + k * r * 0.25)],
                       fill=whisker, width=max(1, int(s / 110)))
    else:
        for side in (-1, 1):  # long floppy ears hanging down the sides of the head
            top = (cx + side * rx * 0.75, cy - ry * 0.75)
            w = rx * rng.uniform(0.45, 0.6)
            length = ry * rng.uniform(1.5, 1.9)
            ear = [top[0] - w / 2 + side * w * 0.45, top[1], top[0] + w / 2 + side * w * 0.45,
                   top[1] + length]
            d.ellipse(ear, fill=dark)
        my = cy + ry * 0.45  # muzzle and big round nose
        d.ellipse([cx - rx * 0.5, my - ry * 0.35, cx + rx * 0.5, my + ry * 0.45], fill=light)
        d.ellipse([cx - r * 0.2, my - ry * 0.3, cx + r * 0.2, my + ry * 0.02], fill=(20, 15, 15))
        if rng.random() < 0.5:  # tongue
            d.ellipse([cx - r * 0.12, my + ry * 0.25, cx + r * 0.12, my + ry * 0.6],
                      fill=(220, 90, 110))
    return layer


def render(spec: LakeSpec, index: int) -> tuple[str, bytes]:
    """Renders image ``index`` of the lake; returns ``(label, jpeg_bytes)``."""
    if spec.camera:
        return _render_camera(spec, index)
    label = label_of(spec, index)
    rng = _rng(spec.seed, index, 2)
    s = spec.size * 2  # draw at 2x and downsample, for anti-aliased edges
    img = _background(rng, s)
    if spec.view == "moved":  # a gravel path from further away: the same draws, another view
        ImageDraw.Draw(img).polygon([(0, s), (s, s), (s * 0.7, s * 0.25), (s * 0.3, s * 0.25)],
                                    fill=(150, 138, 118))
    animal = _draw_animal(label, rng, s, night=spec.condition == "night")
    scale = rng.uniform(0.75, 1.35) * (0.55 if spec.view == "moved" else 1.0)
    angle = rng.uniform(-25, 25)
    side = max(8, int(s * scale))
    animal = animal.resize((side, side), Image.BILINEAR).rotate(angle, Image.BILINEAR)
    if rng.random() < 0.5:
        animal = animal.transpose(Image.FLIP_LEFT_RIGHT)
    ox = int(rng.uniform(-0.22, 0.22) * s + (s - side) / 2)
    oy = int(rng.uniform(-0.18, 0.22) * s + (s - side) / 2)
    img.paste(animal, (ox, oy), animal)
    img = img.resize((spec.size, spec.size), Image.LANCZOS)

    arr = np.asarray(img, dtype=float)
    gain = rng.uniform(0.65, 1.3)  # lighting
    contrast = rng.uniform(0.7, 1.2)
    arr = (arr - 128) * contrast + 128
    arr = arr * gain
    noise = rng.uniform(0, 10)
    arr = arr + rng.normal(0, noise, arr.shape)
    if spec.condition == "night":
        # IR night mode: greyscale, dark, low contrast, soft (a lens corrected for visible
        # light focuses infrared behind the sensor), sensor noise.
        grey = arr @ np.array([0.299, 0.587, 0.114])
        grey = (grey - grey.mean()) * 0.45 + grey.mean() * 0.35 + 10
        soft = Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8), "L").filter(
            ImageFilter.GaussianBlur(radius=spec.size * NIGHT_FOCUS_SHIFT))
        grey = np.asarray(soft, dtype=float)
        grey = grey + rng.normal(0, 6, grey.shape)
        arr = np.repeat(grey[..., None], 3, axis=2)
    img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")
    if spec.condition == "blur":
        img = img.filter(ImageFilter.GaussianBlur(radius=spec.size / 28))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=spec.quality or JPEG_QUALITY)
    return label, buf.getvalue()


#: Blur radius of night frames, as a share of the image side (the infrared focus shift).
NIGHT_FOCUS_SHIFT = 1 / 64

_NOISE_PAD = 64
_NOISE_SIGMAS = (2.0, 3.0, 4.0, 5.0)
_noise_banks: dict[tuple, np.ndarray] = {}


def _noise_bank(seed: int, w: int, h: int, level: int) -> np.ndarray:
    """Sensor noise for frames of one size: per-pixel luma plus chroma, int8, made once.

    Each frame takes a window at its own random offset, so frames never share a noise pattern
    at the same place while the per-pixel cost is one addition.
    """
    key = (seed, w, h, level)
    bank = _noise_banks.get(key)
    if bank is None:
        rng = np.random.default_rng([seed, w, h, level, 99])
        sigma = _NOISE_SIGMAS[level]
        shape = (h + _NOISE_PAD, w + _NOISE_PAD)
        luma = rng.standard_normal(shape, dtype=np.float32) * sigma
        chroma = rng.standard_normal((*shape, 3), dtype=np.float32) * (sigma / 2)
        bank = np.clip(np.rint(luma[..., None] + chroma), -127, 127).astype(np.int8)
        _noise_banks.clear()  # one size at a time: bounded memory
        _noise_banks[key] = bank
    return bank


def _render_camera(spec: LakeSpec, index: int) -> tuple[str, bytes]:
    """A CCTV frame of ``spec.size``: the sample scene with a real frame's texture and noise."""
    label = label_of(spec, index)
    rng = _rng(spec.seed, index, 2)
    w, h = spec.size
    bh = 270  # the scene is composed at this height, then upscaled like a soft CCTV lens
    bw = max(16, round(w * bh / h))
    scene = _background(rng, max(bw, bh)).resize((bw, bh), Image.BILINEAR)
    side = int(bh * rng.uniform(0.45, 0.85))
    animal = _draw_animal(label, rng, 256, night=spec.condition == "night").resize(
        (side, side), Image.BILINEAR)
    animal = animal.rotate(rng.uniform(-25, 25), Image.BILINEAR)
    if rng.random() < 0.5:
        animal = animal.transpose(Image.FLIP_LEFT_RIGHT)
    ox = int(rng.uniform(0, max(1, bw - side)))
    oy = int(rng.uniform(0.0, max(1.0, bh - side * 0.8)))
    scene.paste(animal, (ox, oy), animal)
    if spec.condition == "blur":
        scene = scene.filter(ImageFilter.GaussianBlur(radius=bh / 56))

    # Everything of low and middle frequency is done at the composing size: lighting,
    # uneven shading, vignetting, grain (foliage, fur, gravel), the night mode.
    arr = np.asarray(scene, dtype=np.float32)
    shade = rng.normal(0, 1, (9, 16)).astype(np.float32)
    shade = np.asarray(Image.fromarray(shade, "F").resize((bw, bh), Image.BICUBIC))
    yy, xx = np.ogrid[-1:1:complex(0, bh), -1:1:complex(0, bw)]
    vignette = (1.0 - 0.25 * (xx * xx + yy * yy)).astype(np.float32)
    gain = rng.uniform(0.65, 1.3) * (1.0 + 0.08 * shade) * vignette
    arr = ((arr - 128) * rng.uniform(0.7, 1.2) + 128) * gain[..., None]
    arr += (rng.normal(0, 1, (bh, bw)).astype(np.float32) * rng.uniform(4, 10))[..., None]
    if spec.condition == "night":
        grey = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        grey = (grey - grey.mean()) * 0.45 + grey.mean() * 0.35 + 10
        soft = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L").filter(
            ImageFilter.GaussianBlur(radius=bh * NIGHT_FOCUS_SHIFT))
        arr = np.repeat(np.asarray(soft, dtype=np.float32)[..., None], 3, axis=2)
    small = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    frame = np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.int16)
    # Per-pixel sensor noise, luma and chroma, from this size's bank at a random offset.
    level = int(rng.integers(len(_NOISE_SIGMAS)))
    if spec.condition == "night":
        level = len(_NOISE_SIGMAS) - 1
    dy, dx = (int(v) for v in rng.integers(0, _NOISE_PAD, 2))
    noise = _noise_bank(spec.seed, w, h, level)[dy:dy + h, dx:dx + w]
    if spec.condition == "night":
        noise = noise[..., :1]  # IR frames are grey: luma noise only
    frame += noise
    img = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), "RGB")
    stamp = (f"CAM{index % 8 + 1:02d}  2026-05-{index % 28 + 1:02d} {index % 24:02d}:"
             f"{index * 7 % 60:02d}:{index * 13 % 60:02d}")
    draw = ImageDraw.Draw(img)
    scale = max(1, h // 360)
    draw.rectangle([8, 8, 8 + 7 * scale * len(stamp), 8 + 14 * scale], fill=(0, 0, 0))
    draw.text((10, 10), stamp, fill=(255, 255, 255), font_size=11 * scale)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=spec.quality or CAMERA_JPEG_QUALITY, subsampling=2)
    return label, buf.getvalue()


def _render_indexed(args: tuple[LakeSpec, int]) -> tuple[int, str, bytes]:
    spec, index = args
    label, data = render(spec, index)
    return index, label, data


def generate(spec: LakeSpec, store: ObjectStore, *, prefix: str = "",
             progress: Callable[[int, int], None] | None = None,
             workers: int = 1) -> dict[str, int]:
    """Writes the lake into ``store`` under ``prefix``.

    Args:
        workers: Processes that render images (camera sizes are CPU-bound); the bytes do not
            depend on it.

    Returns:
        Image counts per class.
    """
    counts = {c: 0 for c in CLASSES}
    tasks = ((spec, i) for i in range(spec.n))
    pool = ProcessPoolExecutor(max_workers=workers, initializer=exit_with,
                               initargs=(os.getpid(),)) if workers > 1 else None
    results = pool.map(_render_indexed, tasks, chunksize=8) if pool else map(_render_indexed,
                                                                               tasks)
    labels = []
    try:
        for done, (i, label, data) in enumerate(results, start=1):
            key = key_of(spec, i, label)
            store.put(join_key(prefix, key), data)
            labels.append(f"{key},{label}\n")
            counts[label] += 1
            if progress:
                progress(done, spec.n)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if spec.layout == "csv":
        store.put(join_key(prefix, LABELS_CSV), ("key,label\n" + "".join(labels)).encode())
    logger.info("Generated %d images (%s) at %s", spec.n, counts, store.uri_of(prefix))
    return counts


def render_grid(spec: LakeSpec, indices: list[int]) -> Image.Image:
    """A contact sheet of some images, for docs and notebooks."""
    cols = min(8, len(indices))
    rows = math.ceil(len(indices) / cols)
    tw, th = (spec.width, spec.height) if not spec.camera else (240, round(240 * spec.height
                                                                         / spec.width))
    sheet = Image.new("RGB", (cols * tw, rows * th), "white")
    for n, i in enumerate(indices):
        _, data = render(spec, i)
        tile = Image.open(io.BytesIO(data)).convert("RGB").resize((tw, th), Image.BILINEAR)
        sheet.paste(tile, ((n % cols) * tw, (n // cols) * th))
    return sheet
