"""Image validation and decoding shared by ingestion, training and serving.

One function decides whether bytes are a usable photo, so that the data-ingestion step, the
training data loader and the predictor agree on what is an image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a camera or a photo library produces; anything else Pillow may open (EPS, ICO,
# PSD, ...) is rejected rather than guessed at.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF", "MPO"})
# Pixel modes that convert to RGB without losing meaning. 16-bit, 32-bit int and float images
# (I;16, I, F) and 1-bit masks are not photos a camera sends.
SUPPORTED_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr"})
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: larger than any CCTV or phone photo in use
DEFAULT_MIN_SIDE = 16

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
}


class ImageRejected(ValueError):
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


def _validated(data: bytes, max_pixels: int, min_side: int) -> tuple[Image.Image, str, str]:
    """Opens, checks and fully decodes; returns (upright RGB image, format, original mode)."""
    if not data:
        raise ImageRejected("zero_byte", "0 bytes")
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
                            f"{width}x{height} = {width * height} pixels > limit {max_pixels}")
    if mode not in SUPPORTED_MODES:
        raise ImageRejected("unsupported_mode",
                            f"mode {mode}; expect one of {sorted(SUPPORTED_MODES)}")
    try:
        img.load()
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, str(exc)) from exc
    except EOFError as exc:
        raise ImageRejected("truncated", str(exc) or "unexpected end of file") from exc
    except (SyntaxError, ValueError) as exc:  # Pillow's decoders raise these for bad data
        raise ImageRejected("corrupt", str(exc)) from exc
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError) as exc:  # a broken EXIF block
        raise ImageRejected("corrupt", f"EXIF: {exc}") from exc
    if min(img.size) < min_side:
        raise ImageRejected("too_small", f"{img.size[0]}x{img.size[1]}; minimum side {min_side}")
    if img.mode in ("RGBA", "LA", "PA", "P"):
        # Transparent pixels over white, as a viewer shows them, not over black.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB"), fmt, mode


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int = DEFAULT_MIN_SIDE) -> Image.Image:
    """Decodes encoded image bytes to an upright RGB image, or raises :class:`ImageRejected`.

    The dimensions are checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing. EXIF orientation is applied, as phones and some cameras
    store rotated pixels; transparency is composed over white.
    """
    return _validated(data, max_pixels, min_side)[0]


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  min_side: int = DEFAULT_MIN_SIDE) -> ImageInfo:
    """Validates by fully decoding, and measures what data-integrity checks compare later."""
    rgb, fmt, mode = _validated(data, max_pixels, min_side)
    lum = np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0
    return ImageInfo(format=fmt, mode=mode, width=rgb.width, height=rgb.height,
                     brightness=round(float(lum.mean()), 6), contrast=round(float(lum.std()), 6))
