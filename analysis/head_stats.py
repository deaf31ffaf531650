"""Per-(layer, head) attention statistics, as in VL-InterpreT's head summary, defined precisely.

Every statistic is a *mean row mass*: for each query token of the source set, the attention
mass (sum of its softmax row) that lands on keys of the target set, averaged over those queries.
So ``text_to_image = 0.3`` means text tokens put 30% of their attention on image tokens.

Special tokens ([CLS], [SEP], padding, the image [CLS]) belong to neither modality: they are
never source queries and never target keys, so mass sent to them is counted in no statistic.
Modality comes from the Record's ``modality`` coordinate, never from position.

Fixes against VL-InterpreT: intra-modal covers both image->image and text->text; z-scoring
(see ``zscore_across_heads``) runs across all heads of the model, not per head.

Cross-modal and intra-modal are the *unweighted* mean of their two directions (cross-modal:
text->image and image->text; intra-modal: image->image and text->text), as VL-InterpreT does: a
direction counts the same however many queries it has (ViLT has 64 image queries against about 7
text queries; weighting by query count gave image->text a weight of 0.9).

Not applicable (NaN, with a reason from ``not_applicable``): a statistic that an attention kind
cannot vary by construction, derived from the streams its queries and keys come from
(core/kinds.py). Either the kind lacks its source queries or target keys (``text_to_image`` of
LXMERT's ``vision_self``: undefined), or every key of the kind is a target key, so each row sends
100% there (``text_to_image`` of ``cross_l2v``, ``image_to_image`` of ``vision_self``: always 1.0).
Such values are NaN, never 0 or 1, so no view shows them as findings and no pooled profile counts
them. A pooled statistic averages only its directions that apply to the kind.

Stores written before these rules hold query-weighted pooled values and 1.0 for the constant
statistics: ``as_defined`` recomputes both from the stored directions when a view reads them.

Custom statistics: add a function to ``HEAD_STATS`` (name -> fn(StatInput) -> (layer, head)).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from core.kinds import STREAM_MODALITIES, streams
from core.runs import index_runs
from store.schema import MODALITIES, AttentionBlock, Record, as_float32, row_sums


@dataclass(frozen=True, kw_only=True)
class StatInput:
    """One attention kind of one record, with query/key coordinates resolved."""

    values: np.ndarray  # (layer, head, query, key), float16 as a Record stores it or float32
    query_modality: np.ndarray  # (query,) str
    key_modality: np.ndarray  # (key,) str
    query_token: np.ndarray  # (query,) token index
    key_token: np.ndarray  # (key,) token index
    query_grid: np.ndarray  # (query, 2) (row, col) or -1
    key_grid: np.ndarray  # (key, 2)
    kind: str = "self"  # the attention kind's name (core/kinds.py): which directions apply to it
    _key_mass: dict = field(default_factory=dict, repr=False, compare=False)

    def key_mass(self, modality: str) -> np.ndarray:
        """(layer, head, query): the attention mass each query puts on the keys of one modality, in
        float32; every key modality at once, cached: the built-in statistics share it (masking the full
        (layer, head, query, key) array once per statistic cost more than the rest of recording for a
        ViLT-B/32-sized model)."""
        if not self._key_mass:
            self._key_mass.update(key_masses(self.values, self.key_modality))
        if modality not in self._key_mass:
            return np.zeros(self.values.shape[:3], np.float32)  # not a modality: no key has it
        return self._key_mass[modality]


# Keys of one modality usually sit in a few runs of adjacent positions (a single-stream record: the
# words, then the image tokens); up to this many runs in all, each run is summed in place.
MAX_KEY_RUNS = 16


def key_masses(values: np.ndarray, key_modality: np.ndarray) -> dict[str, np.ndarray]:
    """modality -> (layer, head, query) sum of ``values`` (layer, head, query, key) over its keys, in float32.

    Sums over each run of adjacent keys read the values once in their stored dtype (``row_sums``); a
    float32 copy for one matrix product cost twice as much (a ViLT-B/32-sized record: 7.9 -> 3.7 ms of
    statistics). Keys interleaved into more than MAX_KEY_RUNS runs take the matrix product.
    """
    L, H, Q, K = values.shape
    runs = {m: index_runs(np.flatnonzero(key_modality == m)) for m in MODALITIES}
    if sum(len(r) for r in runs.values()) > MAX_KEY_RUNS:
        keys = np.stack([key_modality == m for m in MODALITIES], axis=1).astype(np.float32)  # (K, 3)
        mass = as_float32(values).reshape(-1, K) @ keys  # (L * H * Q, 3)
        return {m: np.ascontiguousarray(mass[:, i]).reshape(L, H, Q) for i, m in enumerate(MODALITIES)}
    out = {}
    for m, ranges in runs.items():
        total = np.zeros((L, H, Q), np.float32)
        for a, b in ranges:
            total += row_sums(values[..., a:b])
        out[m] = total
    return out


def _undefined(inp: StatInput) -> np.ndarray:
    """The (layer, head) map of a statistic with no source queries or no target keys: all NaN."""
    return np.full(inp.values.shape[:2], np.nan, dtype=np.float32)


def _modality_mass(inp: StatInput, source: str, target: str) -> np.ndarray:
    """Mean over ``source`` queries of the row mass on ``target`` keys -> (layer, head), from the cached key masses."""
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

    Tokens without grid positions (detector regions) exclude only themselves. Computed as the
    cached image mass minus the few excluded (query, key) entries (at most 9 per query), so no
    masked copy of the (layer, head, query, key) array is made: that copy was half of a
    ViLT-B/32-sized model's head statistics.
    """
    queries = np.flatnonzero(inp.query_modality == "image")
    image_keys = inp.key_modality == "image"
    if not queries.size:
        return _undefined(inp)
    qg, kg = inp.query_grid[queries], inp.key_grid
    both_grid = (qg[:, None, 0] >= 0) & (kg[None, :, 0] >= 0)
    cheb = np.maximum(np.abs(qg[:, None, 0] - kg[None, :, 0]), np.abs(qg[:, None, 1] - kg[None, :, 1]))
    local = (inp.query_token[queries][:, None] == inp.key_token[None, :]) | (both_grid & (cheb <= 1))
    excluded = image_keys[None, :] & local  # (query, key) over the image queries
    if not (image_keys[None, :] & ~local).any():
        return _undefined(inp)
    pq, pk = np.nonzero(excluded)
    total = inp.key_mass("image")[:, :, queries].sum(-1, dtype=np.float64)  # (layer, head)
    near = inp.values[:, :, queries[pq], pk].sum(-1, dtype=np.float64)
    return ((total - near) / len(queries)).astype(np.float32)


def mean_of_directions(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Unweighted, NaN-aware mean of a pooled statistic's directions; all NaN when none is defined."""
    if not parts:
        return np.full(shape, np.nan, dtype=np.float32)
    stacked = np.stack([np.asarray(p, dtype=np.float32) for p in parts])
    finite = np.isfinite(stacked)
    count = finite.sum(0)
    total = np.where(finite, stacked, 0.0).sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def _pooled(inp: StatInput, stat: str) -> np.ndarray:
    parts = [HEAD_STATS[d](inp) for d in applicable_directions(inp.kind, stat)]
    return mean_of_directions(parts, inp.values.shape[:2])


def cross_modal(inp: StatInput) -> np.ndarray:
    """Unweighted mean of text->image and image->text (those that apply to the kind)."""
    return _pooled(inp, "cross_modal")


def intra_modal(inp: StatInput) -> np.ndarray:
    """Unweighted mean of image->image and text->text (those that apply to the kind)."""
    return _pooled(inp, "intra_modal")


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
    # generative records only (analysis/layer_stats.answer_stats): the decoding steps of the answer
    "answer_to_image": "answer tokens → image",
    "answer_to_question": "answer tokens → question words",
}


# ---- which statistics a kind can vary ----------------------------------------------------------
# Built-in directions: (query modality, key modality, leaves the query token and its neighbours out).
DIRECTIONS: dict[str, tuple[str, str, bool]] = {
    "text_to_image": ("text", "image", False),
    "image_to_text": ("image", "text", False),
    "image_to_image": ("image", "image", False),
    "image_to_image_nonlocal": ("image", "image", True),
    "text_to_text": ("text", "text", False),
}
# Pooled statistics: the unweighted mean of these directions.
POOLED: dict[str, tuple[str, str]] = {
    "cross_modal": ("text_to_image", "image_to_text"),
    "intra_modal": ("image_to_image", "text_to_text"),
}
_MODALITY_WORDS = {"text": "words", "image": "image tokens", "special": "special tokens"}


def _describe(modalities) -> str:
    return " and ".join(_MODALITY_WORDS[m] for m in ("text", "image", "special") if m in modalities)


def _direction_reason(kind: str, stat: str) -> str | None:
    source, target, leaves_self_out = DIRECTIONS[stat]
    query_stream, key_stream = streams(kind)
    queries, keys = STREAM_MODALITIES[query_stream], STREAM_MODALITIES[key_stream]
    if source not in queries:
        return f"its queries are {_describe(queries)} only"
    if target not in keys:
        return f"its keys are {_describe(keys)} only"
    # Leaving the query's own token out only changes anything when queries are among the keys.
    if keys == {target} and not (leaves_self_out and query_stream == key_stream):
        return f"its keys are all {_MODALITY_WORDS[target]}, so every row sends 100% of its attention to them"
    return None


def applicable_directions(kind: str, stat: str) -> tuple[str, ...]:
    """The directions of pooled statistic ``stat`` that kind ``kind`` can vary."""
    return tuple(d for d in POOLED[stat] if _direction_reason(kind, d) is None)


def not_applicable(kind: str, stat: str) -> str | None:
    """Why attention kind ``kind`` cannot vary statistic ``stat`` (one line), or None when it can.

    Derived from the streams of the kind's queries and keys (core/kinds.py); custom statistics
    and kinds from other tools' databases (joint streams) always apply.
    """
    if stat in DIRECTIONS:
        return _direction_reason(kind, stat)
    if stat in POOLED:
        if applicable_directions(kind, stat):
            return None
        first, second = (STAT_LABELS[d] for d in POOLED[stat])
        return f"neither of its directions ({first}, {second}) applies to this kind"
    return None


def not_applicable_message(kind: str, stat: str) -> str | None:
    """The one line a view shows for a statistic kind ``kind`` cannot vary, or None."""
    reason = not_applicable(kind, stat)
    return None if reason is None else f"{STAT_LABELS.get(stat, stat)} is not applicable for kind {kind}: {reason}."


def as_defined(kind: str, names, values: np.ndarray) -> np.ndarray:
    """Stored statistics (..., stat, layer, head) of one kind, as defined by this module.

    NaN where ``kind`` cannot vary a statistic; pooled statistics recomputed as the unweighted
    mean of their stored directions. Stores written before these rules (query-weighted pooling,
    1.0 for constant statistics) read the same as new ones; on new ones this changes nothing.
    """
    names = list(names)
    out = np.array(values, dtype=np.float32, copy=True)
    for i, stat in enumerate(names):
        if not_applicable(kind, stat) is not None:
            out[..., i, :, :] = np.nan
    for stat, dirs in POOLED.items():
        if stat in names and all(d in names for d in dirs) and not_applicable(kind, stat) is None:
            parts = [out[..., names.index(d), :, :] for d in applicable_directions(kind, stat)]
            out[..., names.index(stat), :, :] = mean_of_directions(parts, out.shape[:-3] + out.shape[-2:])
    return out


def stat_input(record: Record, kind: str) -> StatInput:
    block: AttentionBlock = record.attention[kind]
    modality = np.asarray(record.modality)
    return StatInput(
        values=block.values,  # float16: key_masses sums it without a float32 copy
        query_modality=modality[block.query_index],
        key_modality=modality[block.key_index],
        query_token=block.query_index,
        key_token=block.key_index,
        query_grid=record.token_grid[block.query_index],
        key_grid=record.token_grid[block.key_index],
        kind=kind,
    )


@dataclass(frozen=True, kw_only=True)
class HeadStats:
    """Statistics of one attention kind: values (stat, layer, head).

    ``not_applicable``: statistic -> why this kind cannot vary it (its values are NaN).
    """

    DIMS = ("stat", "layer", "head")
    names: tuple[str, ...]
    values: np.ndarray
    not_applicable: Mapping[str, str] = field(default_factory=dict)


def not_applicable_reasons(kind: str, stats) -> dict[str, str]:
    """statistic -> why ``kind`` cannot vary it, for those of ``stats`` it cannot."""
    return {s: r for s in stats if (r := not_applicable(kind, s)) is not None}


def nan_where_not_applicable(values: np.ndarray, kind: str, stats) -> dict[str, str]:
    """Set to NaN, in place, the rows of ``values`` (stat, ...) (in ``stats`` order) of the statistics
    ``kind`` cannot vary; returns statistic -> why for those."""
    reasons = not_applicable_reasons(kind, stats)
    for stat in reasons:
        values[list(stats).index(stat)] = np.nan
    return reasons


def stat_values(inp: StatInput, stats: dict[str, StatFn] | None = None) -> tuple[np.ndarray, dict[str, str]]:
    """((stat, ...) values of every statistic of ``stats`` on ``inp``, NaN where ``inp.kind`` cannot vary
    it; statistic -> why for those)."""
    stats = HEAD_STATS if stats is None else stats
    vals = np.stack([np.asarray(fn(inp), dtype=np.float32) for fn in stats.values()])
    return vals, nan_where_not_applicable(vals, inp.kind, stats)


def compute_head_stats(record: Record, stats: dict[str, StatFn] | None = None) -> dict[str, HeadStats]:
    """kind -> HeadStats for every attention kind of the record."""
    stats = HEAD_STATS if stats is None else stats
    out = {}
    for kind in record.attention:
        vals, reasons = stat_values(stat_input(record, kind), stats)
        out[kind] = HeadStats(names=tuple(stats), values=vals, not_applicable=reasons)
    return out


def zscore_across_heads(values: np.ndarray) -> np.ndarray:
    """z-score a (layer, head) map over all heads of the model together (NaN-aware)."""
    v = np.asarray(values, dtype=np.float64)
    mu, sd = np.nanmean(v), np.nanstd(v)
    if not np.isfinite(sd) or sd == 0:
        return np.zeros_like(v)
    return (v - mu) / sd
