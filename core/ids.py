"""The example content hash: the one join key between records of the same example.

Every path that names an example (recording, importing another tool's database, an upload on the
Ask page) calls ``example_id_of``, so two models' records of one image and question join, whatever
file format the image came in.
"""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image


def image_bytes_of(image: Image.Image | np.ndarray) -> bytes:
    """Canonical bytes of an image for hashing: size + raw RGB pixels (not the file's bytes)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    rgb = image.convert("RGB")
    return f"{rgb.size}".encode() + rgb.tobytes()


def example_id_of(image: Image.Image | np.ndarray, question: str) -> str:
    """Content hash of (image pixels, question with white space folded): 24 hex digits."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(image_bytes_of(image)).digest())
    h.update(" ".join(question.strip().split()).encode("utf-8"))
    return h.hexdigest()[:24]
