"""The result of one attribution method on one input: scores per image region and per word."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The method names a result may carry (each has one module in this package).
METHODS = ("ig", "rollout", "relevance", "occlusion", "attention")
# |delta| / |f(x) - f(baseline)| above this: the IG map is shown with a warning (raise n_steps).
DELTA_WARNING = 0.05


def _frozen(a, dtype=np.float32) -> np.ndarray:
    arr = np.array(a, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, kw_only=True)
class AttributionResult:
    """One map: scores per image region and per word for one target, with the method's metadata.

    region_boxes (R, 4) are x0, y0, x1, y1 in 0..1 of the source image. tokens are the words of
    the adapter's text positions (special tokens included, flagged in ``token_is_special``).
    For ig, ``delta`` is Captum's convergence delta and ``score_difference`` f(x) - f(baseline).
    """

    method: str
    target: str
    probability: float
    region_boxes: np.ndarray  # (R, 4)
    region_scores: np.ndarray  # (R,)
    tokens: tuple[str, ...]  # (T,)
    token_scores: np.ndarray  # (T,)
    token_is_special: np.ndarray | None = None  # (T,) bool
    params: dict = field(default_factory=dict)
    delta: float | None = None
    score_difference: float | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method: unknown {self.method!r}")
        boxes = _frozen(self.region_boxes)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"region_boxes: must be (R, 4), got {boxes.shape}")
        rs = _frozen(self.region_scores).reshape(-1)
        if len(rs) != len(boxes):
            raise ValueError(f"region_scores: {len(rs)} scores for {len(boxes)} regions")
        ts = _frozen(self.token_scores).reshape(-1)
        tokens = tuple(str(t) for t in self.tokens)
        if len(ts) != len(tokens):
            raise ValueError(f"token_scores: {len(ts)} scores for {len(tokens)} tokens")
        if not (np.isfinite(rs).all() and np.isfinite(ts).all()):
            raise ValueError("scores must be finite")
        special = (np.zeros(len(tokens), bool) if self.token_is_special is None
                   else _frozen(self.token_is_special, bool).reshape(-1))
        if len(special) != len(tokens):
            raise ValueError("token_is_special: one flag per token")
        object.__setattr__(self, "region_boxes", boxes)
        object.__setattr__(self, "region_scores", rs)
        object.__setattr__(self, "token_scores", ts)
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "token_is_special", special)
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def relative_delta(self) -> float | None:
        """|delta| / |f(x) - f(baseline)| (IG only): how far the map's total is from what it explains."""
        if self.delta is None or self.score_difference is None:
            return None
        return abs(self.delta) / max(abs(self.score_difference), 1e-8)

    @property
    def delta_is_large(self) -> bool:
        r = self.relative_delta
        return r is not None and r > DELTA_WARNING

    @property
    def image_share(self) -> float:
        """Share of the positive attribution that falls on image regions (the rest on words)."""
        img = float(np.clip(self.region_scores, 0, None).sum())
        txt = float(np.clip(self.token_scores[~self.token_is_special], 0, None).sum())
        return img / (img + txt) if img + txt > 0 else float("nan")

    def as_arrays(self) -> dict:
        """Plain numeric / string arrays, e.g. for ``np.savez`` (no pickled objects)."""
        out = {
            "method": np.array(self.method), "target": np.array(self.target),
            "probability": np.array(self.probability, np.float64),
            "region_boxes": self.region_boxes, "region_scores": self.region_scores,
            "tokens": np.array(self.tokens, dtype=str), "token_scores": self.token_scores,
            "token_is_special": self.token_is_special, "seconds": np.array(self.seconds, np.float64),
            "image_share": np.array(self.image_share, np.float64),
            "params": np.array(repr(sorted(self.params.items()))), "notes": np.array(self.notes, dtype=str),
        }
        if self.delta is not None:
            out["delta"] = np.array(self.delta, np.float64)
            out["score_difference"] = np.array(self.score_difference, np.float64)
        return out
