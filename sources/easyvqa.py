"""easy-VQA (PyPI ``easy-vqa``): 64 x 64 images of one colored shape, 13 answers.

Each image holds a single solid shape on a plain background, so the shape's pixel mask is
known exactly (``shape_mask``); attribution tests use it as ground truth.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from sources.base import DataSource, Example
from core.errors import SourceError


def _lib():
    try:
        import easy_vqa
    except ImportError as e:  # pragma: no cover - requirements install it
        raise SourceError("easy-VQA needs the 'easy-vqa' package: pip install easy-vqa") from e
    return easy_vqa


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


@lru_cache(maxsize=4)
def _split(split: str):
    lib = _lib()
    if split == "train":
        qs, ans, ids = lib.get_train_questions()
        paths = lib.get_train_image_paths()
    elif split == "test":
        qs, ans, ids = lib.get_test_questions()
        paths = lib.get_test_image_paths()
    else:
        raise SourceError(f"easy-VQA has splits 'train' and 'test', not {split!r}")
    return qs, ans, ids, paths


class EasyVQA(DataSource):
    name = "easyvqa"

    def __init__(self, split: str = "test"):
        self.split = split
        self._qs, self._ans, self._ids, self._paths = _split(split)

    def __len__(self) -> int:
        return len(self._qs)

    def __getitem__(self, i: int) -> Example:
        q, a, img_id = self._qs[i], self._ans[i], self._ids[i]
        path = self._paths[img_id]
        return Example(
            source_key=f"easyvqa/{self.split}/{i}",
            question=q,
            load_image_bytes=lambda p=path: _read(p),
            label=a,
            answers={a: 1.0},
            meta={"image_id": int(img_id), "image_path": str(path)},
        )

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self[i]

    def answers(self) -> list[str]:
        return list(_lib().get_answers())


SHAPES = ("circle", "rectangle", "triangle")


def question_kind(example) -> str:
    """"yes/no", "shape" or "color": what an easy-VQA question asks, read from its answer."""
    a = example.label
    return "yes/no" if a in ("yes", "no") else "shape" if a in SHAPES else "color"


def shape_mask(image: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of the shape: pixels that differ from the background color.

    The background is the most common color on the image border (easy-VQA draws the shape
    away from the corners), so this is exact for the data set's solid-color images.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = arr[..., :3].astype(np.int16)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    colors, counts = np.unique(border.reshape(-1, arr.shape[-1]), axis=0, return_counts=True)
    bg = colors[np.argmax(counts)]
    # A small tolerance absorbs the anti-aliased edge pixels.
    return np.abs(arr - bg).sum(axis=-1) > 24
