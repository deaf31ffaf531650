"""Safe decoding of user images: every format and mode to an RGB PIL image, with clear errors.

Never trusts the file: the header's declared size is checked before any pixel is decoded
(decompression bombs), truncated files fail with a message instead of a half-grey image,
and the result is downscaled so that memory stays bounded.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from adapters.base import InputError

MAX_PIXELS = 120_000_000  # declared width x height beyond this is refused (a 100 MP photo still opens)
MAX_BYTES = 200 * 1024 * 1024
WORK_SIDE = 2048  # decoded images are reduced to at most this side before anything else
ACCEPTED = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "MPO")


def decode_image(data: bytes, *, name: str = "the upload", max_side: int = WORK_SIDE) -> Image.Image:
    """bytes -> RGB image of at most ``max_side`` pixels a side; raises InputError with a clear message."""
    if not data:
        raise InputError(f"{name} is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise InputError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputError(f"{name} declares {w} x {h} pixels ({w * h / 1e6:.0f} MP); the limit is "
                                 f"{MAX_PIXELS / 1e6:.0f} MP")
            if fmt not in ACCEPTED:
                raise InputError(f"{name} is a {fmt} image; accepted: PNG, JPEG, WebP, GIF, BMP, TIFF")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated GIF / multi-page TIFF: the first frame
            if fmt == "JPEG":
                im.draft("RGB", (max_side, max_side))  # decode at reduced scale: bounded memory
            im.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{name} declares too many pixels to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise InputError(f"{name} is not an image (or not a format VL-Lens reads: PNG, JPEG, WebP, GIF, BMP, "
                         f"TIFF)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{name} is damaged or truncated and cannot be decoded ({e})") from None
    rgb = to_rgb(im)
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return rgb


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: alpha composited on white, 16-bit / float scaled to 8 bits, CMYK converted."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = ((arr - lo) * scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA") or (mode == "RGBa"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")
