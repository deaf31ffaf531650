"""Image regions for LXMERT-style models: detector features read from an .npz, or a small grid CNN.

A dual-stream model reads a set of regions: features (R, D) and boxes (R, 4) in 0..1 (x0, y0,
x1, y1). They come from a detector the user ran (``RegionFeatures``, ``load_regions_npz``; see
docs/lxmert.md), or from ``GridRegionExtractor``, a CNN saved beside a checkpoint
(``region_extractor.safetensors`` + ``region_extractor.json``) that makes grid x grid cells of
an image, each cell one region with its box (the easy-VQA demo). JSON and safetensors only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from adapters.pixels import normalize, stack_resized
from core.errors import AdapterError, InputError

EXTRACTOR_WEIGHTS = "region_extractor.safetensors"
EXTRACTOR_CONFIG = "region_extractor.json"
EXTRACTOR_FORMAT = "vl-lens-grid-extractor"


@dataclass(frozen=True, kw_only=True)
class RegionFeatures:
    """Regions of one image: features (R, D) float32 and boxes (R, 4) x0, y0, x1, y1 in 0..1."""

    features: np.ndarray
    boxes: np.ndarray
    source: str = "detector"

    def __post_init__(self):
        f = np.asarray(self.features)
        b = np.asarray(self.boxes)
        if f.ndim != 2 or f.shape[0] < 1:
            raise InputError(f"region features must be a (regions, dim) array, got shape {f.shape}")
        if not np.issubdtype(f.dtype, np.number) or not np.isfinite(f.astype(np.float64)).all():
            raise InputError("region features must be finite numbers")
        if b.shape != (f.shape[0], 4):
            raise InputError(f"boxes must be ({f.shape[0]}, 4) for {f.shape[0]} regions, got shape {b.shape}")
        if not np.issubdtype(b.dtype, np.number) or not np.isfinite(b.astype(np.float64)).all():
            raise InputError("boxes must be finite numbers")
        b = b.astype(np.float32)
        if (b < -0.01).any() or (b > 1.01).any():
            raise InputError("region boxes lie outside the image: give boxes in pixels of this image "
                             "(x0, y0, x1, y1), or the image size they refer to as 'image_size' (width, height)")
        b = np.clip(b, 0.0, 1.0)
        if (b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any():
            raise InputError("every region box needs x1 > x0 and y1 > y0 (x0, y0, x1, y1 order)")
        f = f.astype(np.float32)
        for arr in (f, b):
            arr.setflags(write=False)
        object.__setattr__(self, "features", f)
        object.__setattr__(self, "boxes", b)

    @classmethod
    def from_pixel_boxes(cls, features, boxes, image_size: tuple[int, int], source: str = "detector"):
        """Boxes in pixels (x0, y0, x1, y1) of an image of ``image_size`` = (width, height)."""
        w, h = (float(s) for s in image_size)
        if w <= 0 or h <= 0:
            raise InputError(f"image size must be positive, got {image_size}")
        b = np.asarray(boxes, dtype=np.float64)
        if b.ndim != 2 or b.shape[-1] != 4:
            raise InputError(f"boxes must be a (regions, 4) array, got shape {b.shape}")
        return cls(features=features, boxes=b / np.array([w, h, w, h]), source=source)

    @property
    def n_regions(self) -> int:
        return self.features.shape[0]


def load_regions_npz(file, image_size: tuple[int, int]) -> RegionFeatures:
    """Read detector regions from an .npz (path, bytes or file object); never unpickles.

    Keys: ``features`` (R, D) float, ``boxes`` (R, 4) pixels x0, y0, x1, y1; optional
    ``image_size`` (width, height) the boxes refer to, when it differs from ``image_size``.
    """
    import io

    if isinstance(file, (bytes, bytearray)):
        file = io.BytesIO(bytes(file))
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read the region file as .npz: {str(e).splitlines()[0] if str(e) else e}") from e
    missing = [k for k in ("features", "boxes") if k not in arrays]
    if missing:
        raise InputError(f"the .npz lacks {', '.join(missing)}: it needs 'features' (R, D) and 'boxes' (R, 4); "
                         f"found {', '.join(sorted(arrays)) or 'nothing'}")
    size = image_size
    if "image_size" in arrays:
        s = np.asarray(arrays["image_size"]).reshape(-1)
        if s.size != 2:
            raise InputError(f"'image_size' must be (width, height), got {s.tolist()}")
        size = (float(s[0]), float(s[1]))
    return RegionFeatures.from_pixel_boxes(arrays["features"], arrays["boxes"], size, source="detector")


class GridRegionExtractor(nn.Module):
    """A small CNN: RGB image -> grid x grid cells, each a region feature (feat_dim).

    Stride-2 convolutions bring the image down, adaptive pooling to ``grid`` x ``grid``, one more
    3 x 3 convolution widens the receptive field to the whole image, a 1 x 1 projects to
    ``feat_dim``. Output (batch, grid * grid, feat_dim), cells in row-major (row, col) order.

    ``norm="batch"`` puts a BatchNorm after every stride-2 convolution (the easy-VQA demo uses it).
    An untrained GELU stack without it is close to positively homogeneous: two images give
    features that differ mostly by a scale factor, which LXMERT's LayerNorm on the visual input
    erases; batch statistics centre each channel across images and keep them apart.
    """

    def __init__(self, *, image_size: int = 64, grid: int = 4, channels=(16, 32, 64, 128), feat_dim: int = 128,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), norm: str = "none"):
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', not {norm!r}")
        self.norm = norm
        self.image_size, self.grid, self.feat_dim = int(image_size), int(grid), int(feat_dim)
        self.channels = tuple(int(c) for c in channels)
        self.mean_values, self.std_values = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        layers, c_in = [], 3
        for c in self.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1)]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.GELU())
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(self.grid), nn.Conv2d(c_in, c_in, 3, padding=1), nn.GELU(),
                   nn.Conv2d(c_in, self.feat_dim, 1)]
        self.net = nn.Sequential(*layers)

    def config(self) -> dict:
        return {"format": EXTRACTOR_FORMAT, "version": 1, "image_size": self.image_size, "grid": self.grid,
                "channels": list(self.channels), "feat_dim": self.feat_dim, "mean": list(self.mean_values),
                "std": list(self.std_values), "norm": self.norm}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, G*G, D)
        return self.net(pixel_values).flatten(2).transpose(1, 2)

    def preprocess(self, images) -> torch.Tensor:
        """PIL image(s) -> normalized (B, 3, S, S) float tensor; the image is stretched to a square."""
        if isinstance(images, Image.Image):
            images = [images]
        # Channels-last, the layout of decoded (H, W, 3) images that recorded Records were made with:
        # the convolution's float rounding depends on the memory layout.
        pixels = stack_resized(images, self.image_size).contiguous(memory_format=torch.channels_last)
        return self.normalize(pixels)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 pixels (or floats in 0..1) -> the CNN's normalized input."""
        return normalize(pixels, self.mean_values, self.std_values)

    def grid_index(self) -> np.ndarray:  # (G*G, 2) row, col
        g = self.grid
        return np.stack(np.divmod(np.arange(g * g), g), axis=1).astype(np.int32)

    def boxes(self) -> np.ndarray:  # (G*G, 4) x0, y0, x1, y1 in 0..1
        g = self.grid
        rc = self.grid_index().astype(np.float32)
        return np.stack([rc[:, 1] / g, rc[:, 0] / g, (rc[:, 1] + 1) / g, (rc[:, 0] + 1) / g], axis=1)

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(d / EXTRACTOR_WEIGHTS))
        (d / EXTRACTOR_CONFIG).write_text(json.dumps(self.config(), indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "GridRegionExtractor | None":
        """The extractor saved in ``directory``, or None when there is none. JSON + safetensors only."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / EXTRACTOR_CONFIG).exists():
            return None
        try:
            cfg = json.loads((d / EXTRACTOR_CONFIG).read_text())
            if cfg.get("format") != EXTRACTOR_FORMAT:
                raise ValueError(f"unknown format {cfg.get('format')!r}")
            ext = cls(image_size=cfg["image_size"], grid=cfg["grid"], channels=cfg["channels"],
                      feat_dim=cfg["feat_dim"], mean=cfg["mean"], std=cfg["std"],
                      norm=cfg.get("norm", "none"))
            ext.load_state_dict(load_file(str(d / EXTRACTOR_WEIGHTS)))
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
            raise AdapterError(f"cannot load the region extractor in {d}: {str(e).splitlines()[0]}") from e
        return ext.eval()
