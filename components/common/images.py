"""Image validation, decoding and input statistics shared by ingestion, training, serving
and monitoring.

One function decides whether bytes are a usable photo, so that the data-ingestion step, the
training data loader and the predictor agree on what is an image, and one function
(:func:`preprocess_image`) turns a photo into the network's input, so that training and
serving see the same pixels for the same photo. One function (:func:`image_stats`) measures
an input image (size, mode, brightness, contrast, sharpness, colourfulness) and the
operating condition it was taken in (:func:`measure_context`: the park's camera sees ``day``
in colour and ``night`` in infrared), and :func:`decode_and_measure` gives a photo's network
input and its statistics from one decode: the predictor, the monitoring reference and the
training-ready shards all measure with them, so production and training images are measured,
and put in a context, the same way.

Camera-sized JPEGs are decoded in *draft* mode where only a smaller image is needed: libjpeg
scales by 1/2, 1/4 or 1/8 while it decodes (in the DCT domain), which costs a fraction of a
full decode. Draft decoding still reads and entropy-decodes every byte of the file, so a
truncated or corrupt file is caught exactly as by a full decode.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from components.common.errors import UserError
from components.settings import MAX_IMAGE_PIXELS

# Formats a camera or a photo library produces; anything else Pillow may open (EPS, ICO,
# PSD, ...) is rejected rather than guessed at.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF", "MPO"})
# Pixel modes that convert to RGB without losing meaning. 16-bit greyscale (a 16-bit PNG,
# an infrared camera's raw frame) is scaled to 8 bits (SIXTEEN_BIT_MODES); float images (F)
# and 1-bit masks are not photos a camera sends. (Pillow reads a 16-bit RGB PNG as RGB.)
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
SUPPORTED_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr"}
                            | SIXTEEN_BIT_MODES)
#: The one pixel limit of ingestion and serving (components.settings, MLOPS_MAX_PIXELS).
DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS
#: How a quarantine or refusal over the pixel limit says to raise it.
RAISE_PIXELS = "raise it with --max-pixels or MLOPS_MAX_PIXELS"
DEFAULT_MIN_SIDE = 16
_ORIENTATION = 0x0112  # the EXIF tag ImageOps.exif_transpose reads
#: Longest side of the grey image the input statistics are measured on.
STATS_SIDE = 256
#: Longest side of the colour image colourfulness is measured on (colour varies slowly).
COLOUR_SIDE = 64

#: The pet park's operating conditions: the camera films in colour by day and switches to
#: its infrared night mode in the dark. The first is the default context, the one an image
#: is in when no rule of another context recognises it.
DEFAULT_CONTEXTS = ("day", "night")
#: How a context is recognised from an image's statistics: every bound must hold. An
#: infrared frame is greyscale (its colourfulness is that of JPEG noise, under 0.02; a
#: colour photo of the park measures 0.07 to 0.55) and dim (the illuminator lights the
#: near field only; the park's night frames measure brightness 0.12 to 0.31, day frames
#: 0.23 to 0.75). A declared context without a rule here is only known from what the
#: camera client sends.
CONTEXT_RULES = {"night": {"max_colourfulness": 0.02, "max_brightness": 0.45}}
_CONTEXT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

# What makes a served input junk rather than a photo of anything: the predictor records the
# verdict with each captured input, and the monitor counts junk under integrity and leaves it
# out of drift, class shares and performance. Measured on the generator's frames (day, night,
# blur; 16 px to 1920x1080; thousands per condition): luminance std at least 0.010 (night,
# 128 px), Laplacian-to-luminance variance ratio at most 10.5 by day and 17.4 at night, night
# brightness at most 0.33. Junk measured: flat frames 0.000-0.0024 std, uniform noise a ratio
# of 15.6 (16 px) to 20.6 at brightness 0.50.
#: A luminance standard deviation below this is one flat colour.
BLANK_CONTRAST = 0.004
#: Independent pixels give a Laplacian variance of 20 times the luminance variance; a photo's
#: neighbouring pixels are alike, so its ratio is far lower.
NOISE_RATIO = 15.0
#: Uniform noise spreads over the whole range, so its mean luminance is mid-grey.
NOISE_BRIGHTNESS = (0.4, 0.6)
#: Why a served input is junk; the values a capture record's ``input_quality`` takes besides
#: ``ok``.
JUNK_REASONS = {
    "too_small": f"a side shorter than {DEFAULT_MIN_SIDE} px (ingestion quarantines such images "
                 "as too_small)",
    "blank": f"one flat colour (luminance standard deviation below {BLANK_CONTRAST}): a black, "
             "white or covered frame, an all-zero tensor",
    "noise": f"uniform noise: pixels unrelated to their neighbours (Laplacian variance at least "
             f"{NOISE_RATIO:g} times the luminance variance) around mid-grey "
             f"(brightness {NOISE_BRIGHTNESS[0]}-{NOISE_BRIGHTNESS[1]})",
}

# Why an image was refused; the keys of a quarantine report.
QUARANTINE_REASONS = {
    "zero_byte": "the object is empty (0 bytes)",
    "not_an_image": "the bytes are not an image format Pillow recognises",
    "unsupported_format": "an image format that is not a photo format",
    "decompression_bomb": "declared dimensions exceed the pixel limit",
    "unsupported_mode": "a pixel mode that is not a photo (16-bit, float, 1-bit ...)",
    "truncated": "the file ends before the image data does",
    "corrupt": "the image data cannot be decoded",
    "too_small": "smaller than the minimum side",
    "unlabelled": "no label could be derived for the key",
    "unsafe_key": "the key tries to leave the data lake prefix",
    "conflicting_labels": "identical bytes are labelled with different classes",
    "too_large": "the object is larger than the ingestion's byte limit (not read)",
    "unknown_label": "the label is not one of the declared classes or their aliases",
    "invalid_key_encoding": "the object's name is not valid UTF-8; rename the file",
    "vanished": "listed, but gone when read (deleted or renamed during the ingestion)",
    "unreadable": "the object exists but cannot be read (permissions)",
    "not_a_file": "a device, pipe or socket in the lake folder, not a file",
    "link_outside_lake": "a symbolic link to a file or folder outside the lake root (not followed)",
    "broken_link": "a symbolic link whose target does not exist, or a chain of links too long",
    "link_loop": "a symbolic link to a folder that contains it (followed once, not again)",
}


class ImageRejected(UserError, ValueError):
    """Bytes that are not a usable image; ``reason`` is a key of QUARANTINE_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    """What validation learned about one image (after EXIF orientation)."""

    format: str
    mode: str
    width: int
    height: int
    brightness: float  # mean luminance, 0..1
    contrast: float  # standard deviation of luminance, 0..1


def _validated(data: bytes, max_pixels: int, min_side: int, draft_side: int | None = None
               ) -> tuple[Image.Image, str, str, tuple[int, int]]:
    """Opens, checks and decodes every byte.

    Args:
        draft_side: If set, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, as long as both
            sides stay at least this long. Every byte is still decoded.

    Returns:
        (upright RGB image, format, original mode, upright full-resolution (width, height)).
    """
    if not data:
        raise ImageRejected("zero_byte", "0 bytes")
    if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):  # Pillow's own check must not be lower
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_an_image", f"{len(data)} bytes, no known image header") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, f"header: {exc}") from exc
    fmt, mode = img.format or "", img.mode
    if fmt not in SUPPORTED_FORMATS:
        raise ImageRejected("unsupported_format",
                            f"{fmt}; expect one of {sorted(SUPPORTED_FORMATS)}")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected("decompression_bomb",
                            f"{width}x{height} = {width * height} pixels > limit {max_pixels} "
                            f"({RAISE_PIXELS})")
    if mode not in SUPPORTED_MODES:
        raise ImageRejected("unsupported_mode",
                            f"mode {mode}; expect one of {sorted(SUPPORTED_MODES)}")
    if draft_side and fmt in ("JPEG", "MPO"):
        img.draft(None, (draft_side, draft_side))  # keeps the mode; scales while decoding
    try:
        img.load()
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, str(exc)) from exc
    except EOFError as exc:
        raise ImageRejected("truncated", str(exc) or "unexpected end of file") from exc
    except (SyntaxError, ValueError) as exc:  # Pillow's decoders raise these for bad data
        raise ImageRejected("corrupt", str(exc)) from exc
    if img.mode in SIXTEEN_BIT_MODES:
        img = _to_8_bit(img)
    try:
        orientation = img.getexif().get(_ORIENTATION, 1)
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, TypeError) as exc:  # a broken EXIF block
        raise ImageRejected("corrupt", f"EXIF: {exc}") from exc
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        width, height = height, width
    if min(width, height) < min_side:
        raise ImageRejected("too_small", f"{width}x{height}; minimum side {min_side}")
    if img.mode in ("RGBA", "LA", "PA", "P"):
        # Transparent pixels over white, as a viewer shows them, not over black.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB"), fmt, mode, (width, height)


def _to_8_bit(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale image as 8-bit greyscale (the top 8 bits of each 0..65535 value),
    its EXIF kept for the orientation."""
    values = np.asarray(img).astype(np.int64)
    grey = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")
    grey.info.update(img.info)
    exif = img.getexif()
    if exif:
        grey.getexif().update(exif)
    return grey


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int = DEFAULT_MIN_SIDE) -> Image.Image:
    """Decodes encoded image bytes to an upright RGB image, or raises :class:`ImageRejected`.

    The dimensions are checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing. EXIF orientation is applied, as phones and some cameras
    store rotated pixels; transparency is composed over white.
    """
    return _validated(data, max_pixels, min_side)[0]


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  min_side: int = DEFAULT_MIN_SIDE, draft_side: int | None = None
                  ) -> ImageInfo:
    """Validates by decoding every byte, and measures what data-integrity checks compare later.

    Args:
        draft_side: If set, a JPEG larger than twice this side is decoded at a reduced scale
            (see the module docstring) and brightness and contrast are measured on the reduced
            image; width and height are always the full, upright size.
    """
    rgb, fmt, mode, (width, height) = _validated(data, max_pixels, min_side, draft_side)
    lum = np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0
    return ImageInfo(format=fmt, mode=mode, width=width, height=height,
                     brightness=round(float(lum.mean()), 6), contrast=round(float(lum.std()), 6))


def preprocess_image(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     min_side: int = 1) -> np.ndarray:
    """The network input of one photo: the single preprocessing of training and serving.

    Decodes (a JPEG in draft mode down to the smallest scale that keeps both sides at least
    ``size``), applies the EXIF orientation, composes transparency over white, converts to RGB
    and resizes to ``size`` x ``size`` with Pillow's antialiased bilinear filter.

    Returns:
        ``uint8`` array of shape ``(3, size, size)`` (channels first, 0..255).

    Raises:
        ImageRejected: The bytes are not a usable image.
    """
    return model_input(_validated(data, max_pixels, min_side, draft_side=size)[0], size)


def model_input(img: Image.Image, size: int) -> np.ndarray:
    """The last step of :func:`preprocess_image`, for a caller that decoded the image itself
    with ``draft_side=size`` (the predictor, which also describes the decoded image): resize
    to ``size`` x ``size`` (antialiased bilinear) and lay out as ``uint8 (3, size, size)``."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def decode_image_and_mode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                          min_side: int = DEFAULT_MIN_SIDE, draft_side: int | None = None
                          ) -> tuple[Image.Image, str, tuple[int, int]]:
    """Like :func:`decode_image` (with ``draft_side`` as in :func:`preprocess_image`), and
    also returns what input statistics record and decoding loses: the pixel mode the image was
    stored in (``RGB``, ``L``, ``P`` …) and its full upright (width, height)."""
    img, _, mode, full_size = _validated(data, max_pixels, min_side, draft_side)
    return img, mode, full_size


def image_stats(img: Image.Image, mode: str | None = None,
                size: tuple[int, int] | None = None) -> dict:
    """Measures one decoded image the way both serving and the monitoring reference do.

    Brightness and contrast are the mean and standard deviation of the luminance (0..1);
    sharpness is the variance of a 4-neighbour Laplacian of the luminance (0..1 scale), a
    standard blur measure: a blurred or defocused frame has little high-frequency energy.
    All three are measured on the grey image reduced (by box averaging) to at most
    ``STATS_SIDE`` pixels on its longest side, so that a 4K frame costs about what a
    thumbnail does; width and height are the decoded image's own.

    Args:
        img: A PIL image, upright (EXIF orientation applied), as ``decode_image`` returns it.
        mode: The pixel mode the image was sent in (``RGB``, ``L``, ``P`` …), which decoding
            to RGB loses; ``img.mode`` when not given.
        size: The image's full (width, height) when ``img`` was decoded at a reduced scale
            (a JPEG in draft mode); ``img.size`` when not given.

    Colourfulness is Hasler and Süsstrunk's measure (2003: the spread and mean distance of
    the red-green and yellow-blue opponent channels, 0..1 scale here) on the colour image
    reduced to at most ``COLOUR_SIDE`` pixels: 0 for a greyscale (infrared) frame. The
    context is :func:`measure_context` of these statistics, with the park's contexts.

    Returns:
        ``{"width", "height", "mode", "brightness", "contrast", "sharpness",
        "colourfulness", "context"}``.
    """
    width, height = size or img.size
    grey = img.convert("L")
    factor = max(1, -(-max(grey.size) // STATS_SIDE))  # ceil division
    if factor > 1:
        grey = grey.reduce(factor)
    # One float64 copy of the luminance; sums and dot products rather than mean()/std()/var(),
    # which cost more in call overhead than in arithmetic on images this small.
    lum = np.asarray(grey, dtype=np.float64)
    flat = lum.reshape(-1)
    mean = float(flat.sum()) / flat.size
    std = max(0.0, float(flat @ flat) / flat.size - mean * mean) ** 0.5
    if lum.shape[0] >= 3 and lum.shape[1] >= 3:
        lap = (lum[:-2, 1:-1] + lum[2:, 1:-1] + lum[1:-1, :-2] + lum[1:-1, 2:]
               - 4.0 * lum[1:-1, 1:-1]).reshape(-1)
        lap_mean = float(lap.sum()) / lap.size
        sharpness = max(0.0, float(lap @ lap) / lap.size - lap_mean * lap_mean) / 255.0 ** 2
    else:
        sharpness = 0.0
    stats = {"width": int(width), "height": int(height), "mode": mode or img.mode,
             "brightness": round(mean / 255.0, 6), "contrast": round(std / 255.0, 6),
             "sharpness": round(sharpness, 8), "colourfulness": colourfulness(img)}
    stats["context"] = measure_context(stats)
    return stats


def colourfulness(img: Image.Image) -> float:
    """Hasler and Süsstrunk's colourfulness of an image (0 for grey, about 0.1 to 0.5 for
    colour photos; 0..1 scale), measured on the image reduced to ``COLOUR_SIDE``."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    factor = max(1, -(-max(img.size) // COLOUR_SIDE))
    if factor > 1:
        img = img.reduce(factor)
    a = np.asarray(img, dtype=np.float64).reshape(-1, 3)
    rg = a[:, 0] - a[:, 1]
    yb = 0.5 * (a[:, 0] + a[:, 1]) - a[:, 2]
    value = (math.sqrt(rg.var() + yb.var())
             + 0.3 * math.sqrt(rg.mean() ** 2 + yb.mean() ** 2)) / 255.0
    return round(value, 6)


class ContextRejected(UserError, ValueError):
    """A context that is not one of the deployment's declared contexts."""


def parse_contexts(value) -> tuple[str, ...]:
    """Declared contexts from ``"day,night"`` or a list; the first is the default.

    Raises:
        ContextRejected: Empty, repeated or badly formed names; the message says what to fix.
    """
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value or [])]
    names = [n for n in names if n]
    bad = [n for n in names if not _CONTEXT_NAME.match(n)]
    if not names or bad or len(set(names)) != len(names):
        raise ContextRejected(f"Invalid contexts: {value!r}. Expect distinct lowercase names "
                              "separated by commas, the default first, e.g. 'day,night'.")
    return tuple(names)


def measure_context(stats: dict, contexts=DEFAULT_CONTEXTS) -> str:
    """The context an image was taken in, from its statistics (:func:`image_stats`): the
    first declared context after the default whose rule in ``CONTEXT_RULES`` holds, else
    the default (the first). Training, serving and monitoring all decide with this."""
    for name in contexts[1:]:
        rule = CONTEXT_RULES.get(name)
        if not rule:
            continue
        values = [(stats.get(key.removeprefix("max_")), bound) for key, bound in rule.items()]
        if all(isinstance(v, int | float) and v <= bound for v, bound in values):
            return name
    return contexts[0]


def request_context(stats: dict, sent: str | None = None, contexts=DEFAULT_CONTEXTS) -> str:
    """The context one served image is judged in: the measured one (:func:`measure_context`
    with the deployment's ``contexts``), or the one the camera client ``sent`` where
    measurement cannot tell (a declared context with no rule in ``CONTEXT_RULES``, sent for
    an image measured as the default). A client never moves an image out of a context its
    statistics recognise.

    Raises:
        ContextRejected: ``sent`` is not a declared context.
    """
    measured = measure_context(stats, contexts)
    if not sent:
        return measured
    if sent not in contexts:
        raise ContextRejected(f"Unknown context {sent!r}: this deployment declares "
                              f"{', '.join(contexts)}.")
    if measured == contexts[0] and sent not in CONTEXT_RULES:
        return sent
    return measured


def input_quality(stats: dict) -> str | None:
    """The verdict on one input from its :func:`image_stats`: ``ok``, or a key of
    :data:`JUNK_REASONS`; None when the statistics are missing (nothing was measured)."""
    try:
        width, height = int(stats["width"]), int(stats["height"])
        brightness, contrast = float(stats["brightness"]), float(stats["contrast"])
        sharpness = float(stats["sharpness"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(np.isfinite((brightness, contrast, sharpness))):
        return None
    if min(width, height) < DEFAULT_MIN_SIDE:
        return "too_small"
    if contrast < BLANK_CONTRAST:
        return "blank"
    low, high = NOISE_BRIGHTNESS
    if sharpness >= NOISE_RATIO * contrast * contrast and low <= brightness <= high:
        return "noise"
    return "ok"


def tensor_stats(x: np.ndarray, mean, std) -> list[dict]:
    """:func:`image_stats` of preprocessed inputs (``N x 3 x S x S`` float, normalised as
    training does with ``mean`` and ``std``), measured on their pixels: the input quality
    of a client that sends tensors instead of photos (an all-zero tensor is one flat
    colour)."""
    mean = np.asarray(mean, np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(std, np.float64).reshape(1, 3, 1, 1)
    pixels = np.clip(np.rint((np.asarray(x, np.float64) * std + mean) * 255.0), 0, 255)
    pixels = pixels.astype(np.uint8).transpose(0, 2, 3, 1)
    return [image_stats(Image.fromarray(np.ascontiguousarray(p), "RGB")) for p in pixels]


def decode_and_measure(data: bytes, size: int, *, max_pixels: int | None = None,
                       min_side: int = 1) -> tuple[np.ndarray, dict]:
    """One photo -> (network input, input statistics), decoding once.

    The network input is exactly :func:`preprocess_image` ``(data, size)``
    (a JPEG decoded in draft mode down to the smallest scale that keeps ``size``, then
    resized with Pillow's bilinear filter); the statistics are :func:`image_stats` of that
    decoded image. The shards and the monitoring reference use this function, and the
    predictor takes the same steps on its own decode, so production and training images are
    measured the same way.

    Returns:
        ``uint8`` ``(3, size, size)`` array and the statistics dict.

    Raises:
        ImageRejected: The bytes are not a usable image.
    """
    img, mode, full = decode_image_and_mode(data, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                                            min_side=min_side, draft_side=size)
    return model_input(img, size), image_stats(img, mode, full)
