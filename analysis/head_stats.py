"""Per-(layer, head) attention statistics, as in VL-InterpreT's head summary, defined precisely.

Every statistic is a *mean row mass*: for each query token of the source set, the attention
mass (sum of its softmax row) that lands on keys of the target set, averaged over those queries.
So ``text_to_image = 0.3`` means text tokens put 30% of their attention on image tokens.

Special tokens ([CLS], [SEP], padding, the image [CLS]) belong to neither modality: they are
never source queries and never target keys, so mass sent to them is counted in no statistic.
Modality comes from the Record's ``modality`` coordinate, never from position.

Fixes against VL-InterpreT: intra-modal covers both image->image and text->text; z-scoring
(see ``zscore_across_heads``) runs across all heads of the model, not per head.

A statistic is NaN when it has no source queries or no target keys in that attention kind
(e.g. ``text_to_image`` of LXMERT's vision self-attention).

Custom statistics: add a function to ``HEAD_STATS`` (name -> fn(StatInput) -> (layer, head)).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from store.schema import AttentionBlock, Record, as_float32


@dataclass(frozen=True, kw_only=True)
class StatInput:
    """One attention kind of one record, with query/key coordinates resolved."""

    values: np.ndarray  # (layer, head, query, key) float32
    query_modality: np.ndarray  # (query,) str
    key_modality: np.ndarray  # (key,) str
    query_token: np.ndarray  # (query,) token index
    key_token: np.ndarray  # (key,) token index
    query_grid: np.ndarray  # (query, 2) (row, col) or -1
    key_grid: np.ndarray  # (key, 2)
    _key_mass: dict = field(default_factory=dict, repr=False, compare=False)

    def key_mass(self, modality: str) -> np.ndarray:
        """(layer, head, query): the attention mass each query puts on the keys of one modality.

        One matrix-vector product over all layers and heads, cached: the built-in statistics
        share it (masking the full (layer, head, query, key) array once per statistic cost
        more than the rest of recording for a ViLT-B/32-sized model).
        """
        if modality not in self._key_mass:
            L, H, Q, K = self.values.shape
            keys = (self.key_modality == modality).astype(np.float32)
            self._key_mass[modality] = (self.values.reshape(-1, K) @ keys).reshape(L, H, Q)
        return self._key_mass[modality]


def _undefined(inp: StatInput) -> np.ndarray:
    """The (layer, head) map of a statistic with no source queries or no target keys: all NaN."""
    return np.full(inp.values.shape[:2], np.nan, dtype=np.float32)


def _mass(inp: StatInput, qmask: np.ndarray, kmask2d: np.ndarray) -> np.ndarray:
    """Mean over selected queries of the row mass on the keys selected per query -> (layer, head)."""
    if not qmask.any() or not kmask2d[qmask].any():
        return _undefined(inp)
    v = inp.values[:, :, qmask, :]  # (L, H, q, K)
    m = kmask2d[qmask]  # (q, K)
    return (v * m[None, None]).sum(-1).mean(-1).astype(np.float32)


def _key_mask(inp: StatInput, modality: str) -> np.ndarray:
    return np.broadcast_to(inp.key_modality == modality, (len(inp.query_modality), len(inp.key_modality)))


def _modality_mass(inp: StatInput, source: str, target: str) -> np.ndarray:
    """``_mass`` for all ``source`` queries on all ``target`` keys, from the cached key masses."""
    q = inp.query_modality == source
    if not q.any() or not (inp.key_modality == target).any():
        return _undefined(inp)
    return inp.key_mass(target)[:, :, q].mean(-1).astype(np.float32)


def text_to_image(inp: StatInput) -> np.ndarray:
    return _modality_mass(inp, "text", "image")


def image_to_text(inp: StatInput) -> np.ndarray:
    return _modality_mass(inp, "image", "text")


def image_to_image(inp: StatInput) -> np.ndarray:
    return _modality_mass(inp, "image", "image")


def text_to_text(inp: StatInput) -> np.ndarray:
    return _modality_mass(inp, "text", "text")


def image_to_image_nonlocal(inp: StatInput) -> np.ndarray:
    """Image->image mass excluding the token itself and its 8 grid neighbours.

    Tokens without grid positions (detector regions) exclude only themselves.
    """
    km = _key_mask(inp, "image").copy()
    km &= inp.query_token[:, None] != inp.key_token[None, :]
    qg, kg = inp.query_grid, inp.key_grid
    both_grid = (qg[:, None, 0] >= 0) & (kg[None, :, 0] >= 0)
    cheb = np.maximum(np.abs(qg[:, None, 0] - kg[None, :, 0]), np.abs(qg[:, None, 1] - kg[None, :, 1]))
    km &= ~(both_grid & (cheb <= 1))
    return _mass(inp, inp.query_modality == "image", km)


def _pooled(inp: StatInput, same: bool) -> np.ndarray:
    """Mass on the other (same=False) or own (same=True) modality, over text and image queries."""
    parts, weights = [], []
    for src, other in (("text", "image"), ("image", "text")):
        q = inp.query_modality == src
        if not q.any():
            continue
        target = src if same else other
        if not (inp.key_modality == target).any():
            continue
        parts.append(_modality_mass(inp, src, target))
        weights.append(q.sum())
    if not parts:
        return _undefined(inp)
    w = np.asarray(weights, dtype=np.float32)
    return (np.stack(parts) * w[:, None, None]).sum(0) / w.sum()


def cross_modal(inp: StatInput) -> np.ndarray:
    return _pooled(inp, same=False)


def intra_modal(inp: StatInput) -> np.ndarray:
    return _pooled(inp, same=True)


StatFn = Callable[[StatInput], np.ndarray]

# The one registry of head statistics; order is the storage order.
HEAD_STATS: dict[str, StatFn] = {
    "text_to_image": text_to_image,
    "image_to_text": image_to_text,
    "image_to_image": image_to_image,
    "image_to_image_nonlocal": image_to_image_nonlocal,
    "text_to_text": text_to_text,
    "cross_modal": cross_modal,
    "intra_modal": intra_modal,
}

STAT_LABELS = {
    "text_to_image": "text → image",
    "image_to_text": "image → text",
    "image_to_image": "image → image",
    "image_to_image_nonlocal": "image → image (no self / neighbours)",
    "text_to_text": "text → text",
    "cross_modal": "cross-modal",
    "intra_modal": "intra-modal",
}


def stat_input(record: Record, kind: str) -> StatInput:
    block: AttentionBlock = record.attention[kind]
    modality = np.asarray(record.modality)
    return StatInput(
        values=as_float32(block.values),
        query_modality=modality[block.query_index],
        key_modality=modality[block.key_index],
        query_token=block.query_index,
        key_token=block.key_index,
        query_grid=record.token_grid[block.query_index],
        key_grid=record.token_grid[block.key_index],
    )


@dataclass(frozen=True, kw_only=True)
class HeadStats:
    """Statistics of one attention kind: values (stat, layer, head)."""

    DIMS = ("stat", "layer", "head")
    names: tuple[str, ...]
    values: np.ndarray


def compute_head_stats(record: Record, stats: dict[str, StatFn] | None = None) -> dict[str, HeadStats]:
    """kind -> HeadStats for every attention kind of the record."""
    stats = HEAD_STATS if stats is None else stats
    out = {}
    for kind in record.attention:
        inp = stat_input(record, kind)
        vals = np.stack([np.asarray(fn(inp), dtype=np.float32) for fn in stats.values()])
        out[kind] = HeadStats(names=tuple(stats), values=vals)
    return out


def zscore_across_heads(values: np.ndarray) -> np.ndarray:
    """z-score a (layer, head) map over all heads of the model together (NaN-aware)."""
    v = np.asarray(values, dtype=np.float64)
    mu, sd = np.nanmean(v), np.nanstd(v)
    if not np.isfinite(sd) or sd == 0:
        return np.zeros_like(v)
    return (v - mu) / sd
