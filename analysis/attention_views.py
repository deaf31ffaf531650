"""View data for the head summary and attention pages: pure numpy, no Streamlit.

Attention of one kind is a (query, key) matrix whose rows and columns are *positions* in that
kind's ``query_index`` / ``key_index`` (indices into the record's tokens). Nothing here assumes
a square matrix, a single kind, or that text comes before image: dual-stream kinds such as
LXMERT's ``cross_l2v`` have text queries and image keys only.

Directions for one token t of a kind:
    "attends to"   the row of t as a query: where t puts its attention (sums to 1 over keys)
    "attended by"  the column of t as a key: how much each query puts on t
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from analysis.head_stats import zscore_across_heads

DIRECTIONS = ("attends to", "attended by")
SCOPES = ("one example", "all", "correct", "incorrect")


# ---- head summary ----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class HeadSummary:
    """A (layer, head) map of one statistic, optionally aggregated over examples and z-scored."""

    stat: str
    grid: np.ndarray  # (layer, head) float64; NaN where the stat is undefined for the kind
    layer_mean: np.ndarray  # (layer,) mean over heads of ``grid``
    n_examples: int
    zscored: bool

    def best_cell(self) -> tuple[int, int] | None:
        """(layer, head) of the largest finite value, or None when the map is all NaN."""
        if not np.isfinite(self.grid).any():
            return None
        flat = np.nanargmax(np.where(np.isfinite(self.grid), self.grid, -np.inf))
        return tuple(int(x) for x in np.unravel_index(flat, self.grid.shape))


def select_examples(rows: Iterable, *, correctness: str = "all", answer: str | None = None,
                    text: str | None = None) -> list[str]:
    """Example ids of summary rows (ExampleSummary or dicts) passing the filters.

    correctness: "all" | "correct" | "incorrect" (unlabelled examples pass only "all");
    answer: keeps rows whose true or predicted answer equals it; text: case-insensitive substring
    of the question.
    """
    if correctness not in ("all", "correct", "incorrect"):
        raise ValueError(f"correctness must be all, correct or incorrect, got {correctness!r}")
    out = []
    needle = (text or "").strip().lower()
    for r in rows:
        get = r.get if isinstance(r, dict) else (lambda k, r=r: getattr(r, k, None))
        if correctness != "all" and get("correct") is not (correctness == "correct"):
            continue
        if answer and answer not in (get("label"), get("answer")):
            continue
        if needle and needle not in str(get("question") or "").lower():
            continue
        out.append(get("example_id"))
    return out


def head_summary(values: np.ndarray, names: Sequence[str], stat: str, *, zscore: bool = False) -> HeadSummary:
    """Head summary of ``stat`` from stored statistics.

    values: (stat, layer, head) for one example, or (example, stat, layer, head) for a set, which is
    averaged over examples (NaN-aware). zscore: standardize across all heads of the model together.
    """
    names = list(names)
    if stat not in names:
        raise ValueError(f"unknown statistic {stat!r}; stored: {', '.join(names)}")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 3:
        v = v[None]
    if v.ndim != 4:
        raise ValueError(f"head statistics must be (stat, layer, head) or (example, stat, layer, head), got {v.shape}")
    n = v.shape[0]
    per_example = v[:, names.index(stat)]  # (example, layer, head)
    if n == 0:
        raise ValueError("no examples to summarize")
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(per_example)
        counts = finite.sum(0)
        sums = np.where(finite, per_example, 0.0).sum(0)
        grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    if zscore:
        grid = np.where(np.isfinite(grid), zscore_across_heads(grid), np.nan)
    with warnings.catch_warnings():  # an all-NaN layer gives NaN, as wanted, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        layer_mean = np.nanmean(grid, axis=1) if grid.size else np.zeros(0)
    return HeadSummary(stat=stat, grid=grid, layer_mean=layer_mean, n_examples=n, zscored=zscore)


MEAN_COLUMN = "mean"


def head_summary_rows(summary: HeadSummary) -> list[dict]:
    """Long-form rows for a heatmap: one per (layer, head) plus a ``mean`` column per layer.

    ``head`` is a string ("0", "1", ..., "mean") so the mean column sorts last on an ordinal axis;
    ``head_index`` is the integer head, or -1 for the mean column. NaN values become None.
    """
    rows = []
    L, H = summary.grid.shape
    for layer in range(L):
        for head in range(H):
            val = summary.grid[layer, head]
            rows.append({"layer": layer, "head": str(head), "head_index": head,
                         "value": float(val) if np.isfinite(val) else None})
        m = summary.layer_mean[layer]
        rows.append({"layer": layer, "head": MEAN_COLUMN, "head_index": -1,
                     "value": float(m) if np.isfinite(m) else None})
    return rows


# ---- attention matrices ----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Block:
    """A run of consecutive positions of one modality along a query or key axis."""

    modality: str
    start: int  # first position
    stop: int  # one past the last position


def modality_blocks(modality_of_positions: Sequence[str]) -> list[Block]:
    """Consecutive runs of the same modality (blocks to mark on a matrix axis)."""
    blocks: list[Block] = []
    for pos, m in enumerate(modality_of_positions):
        if blocks and blocks[-1].modality == m and blocks[-1].stop == pos:
            blocks[-1] = Block(modality=m, start=blocks[-1].start, stop=pos + 1)
        else:
            blocks.append(Block(modality=m, start=pos, stop=pos + 1))
    return blocks


def mean_over_heads(layer_values: np.ndarray) -> np.ndarray:
    """(head, query, key) -> (query, key); rows still sum to 1."""
    v = np.asarray(layer_values, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected (head, query, key), got {v.shape}")
    return v.mean(axis=0)


def axis_labels(index: np.ndarray, tokens: Sequence[str]) -> list[str]:
    """Unique, position-sortable labels ("007 what") for the tokens along one axis."""
    width = len(str(max(len(index) - 1, 0)))
    return [f"{p:0{width}d} {tokens[t]}" for p, t in enumerate(index)]


def matrix_rows(matrix: np.ndarray, query_index: np.ndarray, key_index: np.ndarray, tokens: Sequence[str],
                modality: Sequence[str], *, query_keep: np.ndarray | None = None,
                key_keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Long-form columns of a (query, key) matrix for a heatmap (optionally only some positions)."""
    m = np.asarray(matrix, dtype=np.float32)
    qi, ki = np.asarray(query_index), np.asarray(key_index)
    if m.shape != (len(qi), len(ki)):
        raise ValueError(f"matrix {m.shape} does not match {len(qi)} queries x {len(ki)} keys")
    qpos = np.arange(len(qi)) if query_keep is None else np.flatnonzero(query_keep)
    kpos = np.arange(len(ki)) if key_keep is None else np.flatnonzero(key_keep)
    qlab, klab = np.asarray(axis_labels(qi, tokens)), np.asarray(axis_labels(ki, tokens))
    mod = np.asarray(modality)
    Q, K = np.meshgrid(qpos, kpos, indexing="ij")
    Q, K = Q.ravel(), K.ravel()
    return {
        "query_pos": Q, "key_pos": K, "query": qlab[Q], "key": klab[K],
        "query_token": qi[Q], "key_token": ki[K],
        "query_modality": mod[qi[Q]], "key_modality": mod[ki[K]],
        "weight": m[Q, K],
    }


@dataclass(frozen=True, kw_only=True)
class TokenAttention:
    """Attention of one token in one direction: weights over the other axis' tokens."""

    token: int  # record token index
    direction: str
    tokens: np.ndarray  # (n,) record token indices on the other axis
    weights: np.ndarray  # (n,) float32


def token_attention(matrix: np.ndarray, query_index: np.ndarray, key_index: np.ndarray, token: int,
                    direction: str = "attends to") -> TokenAttention | None:
    """Row (attends to) or column (attended by) of ``token``; None if it is not on that axis."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    m = np.asarray(matrix, dtype=np.float32)
    qi, ki = np.asarray(query_index), np.asarray(key_index)
    own, other = (qi, ki) if direction == "attends to" else (ki, qi)
    hit = np.flatnonzero(own == token)
    if not hit.size:
        return None
    weights = m[hit[0]] if direction == "attends to" else m[:, hit[0]]
    return TokenAttention(token=int(token), direction=direction, tokens=other.copy(), weights=weights.copy())


def restrict(att: TokenAttention, modality: Sequence[str], keep: str) -> TokenAttention:
    """Only the entries whose token has modality ``keep``."""
    mod = np.asarray(modality)[att.tokens]
    sel = mod == keep
    return TokenAttention(token=att.token, direction=att.direction, tokens=att.tokens[sel], weights=att.weights[sel])


def top_k(att: TokenAttention, k: int) -> list[tuple[int, float]]:
    """(token, weight) of the k largest weights, largest first."""
    order = np.argsort(-att.weights, kind="stable")[:k]
    return [(int(att.tokens[i]), float(att.weights[i])) for i in order]


# ---- overlays on the image -------------------------------------------------------------------
def overlay_boxes(att: TokenAttention, token_boxes: np.ndarray, modality: Sequence[str]) -> dict[str, np.ndarray]:
    """One row per image token of ``att``: its box (x0, y0, x1, y1 in 0..1) and weight.

    ``share`` is the weight divided by the largest image weight (1 = the brightest patch), so an
    opacity scale does not depend on how much mass went to text or special tokens.
    """
    img = restrict(att, modality, "image")
    boxes = np.asarray(token_boxes, dtype=np.float32)[img.tokens]
    peak = float(img.weights.max()) if img.weights.size else 0.0
    share = img.weights / peak if peak > 0 else np.zeros_like(img.weights)
    return {"token": img.tokens, "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
            "weight": img.weights, "share": share.astype(np.float32)}


def overlay_heat(boxes: dict[str, np.ndarray], height: int, width: int, *, smooth: bool = False) -> np.ndarray:
    """A (height, width) map in 0..1: each pixel holds the largest share of the boxes covering it.

    smooth: a Gaussian blur with sigma half the median box size (the "smoothed" overlay). Boxes
    are fractions of the image, so the map fits any display resolution.
    """
    heat = np.zeros((height, width), np.float32)
    for x0, y0, x1, y1, s in zip(boxes["x0"], boxes["y0"], boxes["x1"], boxes["y1"], boxes["share"]):
        c0, c1 = int(np.floor(x0 * width)), int(np.ceil(x1 * width))
        r0, r1 = int(np.floor(y0 * height)), int(np.ceil(y1 * height))
        # A box that rounds to zero pixels still covers its nearest pixel.
        c1, r1 = max(c1, c0 + 1), max(r1, r0 + 1)
        region = heat[r0:r1, c0:c1]
        np.maximum(region, s, out=region)
    if smooth and len(boxes["x0"]):
        bw = np.median(boxes["x1"] - boxes["x0"]) * width
        bh = np.median(boxes["y1"] - boxes["y0"]) * height
        heat = _gaussian_blur(heat, max(bh / 2, 0.5), max(bw / 2, 0.5))
        peak = heat.max()
        if peak > 0:
            heat /= peak
    return heat


def _gaussian_blur(a: np.ndarray, sigma_y: float, sigma_x: float) -> np.ndarray:
    def kernel(sigma):
        r = max(int(3 * sigma), 1)
        x = np.arange(-r, r + 1, dtype=np.float32)
        k = np.exp(-0.5 * (x / sigma) ** 2)
        return k / k.sum()

    ky, kx = kernel(sigma_y), kernel(sigma_x)
    # Reflect padding keeps the edges from darkening.
    py, px = len(ky) // 2, len(kx) // 2
    p = np.pad(a, ((py, py), (px, px)), mode="reflect" if min(a.shape) > max(py, px) else "edge")
    p = np.apply_along_axis(lambda r: np.convolve(r, kx, mode="valid"), 1, p)
    p = np.apply_along_axis(lambda c: np.convolve(c, ky, mode="valid"), 0, p)
    return p.astype(np.float32)


def grid_shape(token_grid: np.ndarray, modality: Sequence[str]) -> tuple[int, int] | None:
    """(rows, cols) of the image patch grid, or None when image tokens are not grid cells."""
    g = np.asarray(token_grid)[np.asarray(modality) == "image"]
    if not len(g) or (g < 0).any():
        return None
    return int(g[:, 0].max()) + 1, int(g[:, 1].max()) + 1


def patch_at(token_grid: np.ndarray, modality: Sequence[str], row: int, col: int) -> int | None:
    """Record token index of the image patch at grid (row, col), or None."""
    g = np.asarray(token_grid)
    mod = np.asarray(modality)
    hit = np.flatnonzero((mod == "image") & (g[:, 0] == row) & (g[:, 1] == col))
    return int(hit[0]) if hit.size else None


# ---- generated answers ---------------------------------------------------------------------------
def generating_row(token: int, role: Sequence[str]) -> int | None:
    """The token whose query row chose generated token ``token``: the one before it (a causal model's
    row at position i predicts token i + 1). None for a prompt token (no step generated it)."""
    if role[token] != "answer" or token == 0:
        return None
    return token - 1


def prompt_part(att: TokenAttention, modality: Sequence[str], row_token: int) -> TokenAttention:
    """The non-image keys of a causal row that its query can see (key <= ``row_token``): the prompt's
    words and special tokens, and the answer's tokens generated before it."""
    mod = np.asarray(modality)[att.tokens]
    sel = (mod != "image") & (att.tokens <= row_token)
    return TokenAttention(token=att.token, direction=att.direction, tokens=att.tokens[sel], weights=att.weights[sel])


# ---- tiled images (SmolVLM / Idefics3) -----------------------------------------------------------
IMAGE_PARTS = ("tiles", "global image", "both")


def image_parts(token_grid: np.ndarray, modality: Sequence[str]) -> dict[str, np.ndarray] | None:
    """A tiled image's image tokens by part: {"tiles": tokens on the tiled grid, "global image": tokens
    with no grid cell, "both": all}; None unless the record has both (adapters/idefics3.py gives a tiled
    image's global tokens no grid cell: their boxes overlap the tiles')."""
    mod = np.asarray(modality)
    g = np.asarray(token_grid)
    image = np.flatnonzero(mod == "image")
    on_grid = image[(g[image] >= 0).all(axis=1)]
    off_grid = image[(g[image] < 0).any(axis=1)]
    if not len(on_grid) or not len(off_grid):
        return None
    return {"tiles": on_grid, "global image": off_grid, "both": image}


def only_tokens(att: TokenAttention, tokens: np.ndarray) -> TokenAttention:
    """Only the entries of ``att`` whose token is in ``tokens``."""
    sel = np.isin(att.tokens, tokens)
    return TokenAttention(token=att.token, direction=att.direction, tokens=att.tokens[sel], weights=att.weights[sel])
