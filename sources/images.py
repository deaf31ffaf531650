"""Safe decoding of user images: every format and mode to an RGB PIL image, with clear errors.

Never trusts the file:
- the header's declared size is checked before any pixel is decoded (decompression bombs);
- truncated or damaged files fail with a message instead of a half-grey image;
- memory stays bounded: JPEGs are decoded at a reduced scale (``draft``), other formats are
  reduced by an integer factor right after decoding, before any mode conversion makes a
  full-size copy, and the result is at most ``WORK_SIDE`` pixels a side;
- every mode becomes RGB with its meaning kept: alpha is composited on white, palettes are
  expanded, 16-bit samples are scaled by their bit depth (65535 -> 255, not stretched to the
  image's own range), CMYK is converted, and the EXIF orientation of phone photos is applied.

Only ``InputError`` leaves ``decode_image`` (the property-based tests check that random bytes
never raise anything else).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.errors import InputError

MAX_PIXELS = 120_000_000  # declared width x height beyond this is refused (a 100 MP photo still opens)
MAX_BYTES = 200 * 1024 * 1024
WORK_SIDE = 2048  # decoded images are reduced to at most this side before anything else
ACCEPTED = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "MPO")
FORMATS_TEXT = "PNG, JPEG, WebP, GIF, BMP, TIFF"
# Modes Image.reduce averages correctly (box filter on the samples themselves).
_REDUCIBLE = frozenset({"L", "LA", "I", "F", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def decode_image(data: bytes, *, name: str = "the upload", max_side: int = WORK_SIDE) -> Image.Image:
    """bytes -> RGB image of at most ``max_side`` pixels a side; raises InputError with a clear message."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"{name} must be the bytes of an image file")
    data = bytes(data)
    if not data:
        raise InputError(f"{name} is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise InputError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # The declared size is checked below against our own limit; PIL's warning would
            # otherwise refuse a legitimate 100 MP photo (its threshold is 89 MP).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format
            w, h = im.size
            if w < 1 or h < 1:
                raise InputError(f"{name} declares an empty image ({w} x {h} pixels)")
            if w * h > MAX_PIXELS:
                raise InputError(f"{name} declares {w} x {h} pixels ({w * h / 1e6:.0f} MP); the limit is "
                                 f"{MAX_PIXELS / 1e6:.0f} MP")
            if fmt not in ACCEPTED:
                raise InputError(f"{name} is a {fmt} image; accepted: {FORMATS_TEXT}")
            # Animated GIF / multi-page TIFF: the first frame, which open() already points at.
            if fmt in ("JPEG", "MPO"):
                im.draft(im.mode if im.mode == "CMYK" else "RGB", (max_side, max_side))  # decode at reduced scale
            im.load()
            im = _reduce(im, max_side)
            rgb = to_rgb(im)
            rgb = ImageOps.exif_transpose(rgb)
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"{name} declares too many pixels to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise InputError(f"{name} is not an image (or not a format VL-Lens reads: {FORMATS_TEXT})") from None
    except MemoryError:
        raise InputError(f"{name} is too large to decode in the memory available") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure on untrusted bytes is the file's fault
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{name} is damaged or truncated and cannot be decoded ({detail})") from None
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return rgb


def _reduce(im: Image.Image, max_side: int) -> Image.Image:
    """Shrink by an integer factor so the longer side stays >= max_side (thumbnail finishes the job).

    Runs before any mode conversion, so a 100 MP grayscale or palette image is never expanded
    to a full-size RGB(A) copy.
    """
    factor = max(im.size) // max_side
    if factor < 2:
        return im
    if im.mode in _REDUCIBLE:
        # RGBA is averaged unpremultiplied: colors of fully transparent pixels bleed only at
        # shape edges, and only in an image that is being shrunk anyway.
        return im.reduce(factor)
    size = (max(1, im.width // factor), max(1, im.height // factor))
    return im.resize(size, Image.Resampling.NEAREST)  # palette indices / 16-bit / 1-bit: no averaging


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: alpha composited on white, 16-bit scaled by bit depth, CMYK converted."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT:
        arr = np.asarray(im).astype(np.float32) / 257.0  # 65535 -> 255
        return Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            arr = arr * 255.0  # float images in 0..1
        elif lo >= 0.0 and hi <= 255.0:
            pass  # already 8-bit values
        elif lo >= 0.0 and hi <= 65535.0:
            arr = arr / 257.0  # 16-bit samples stored as 32-bit ints
        else:  # an arbitrary range: stretch it
            arr = (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")
