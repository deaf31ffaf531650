"""Where a layer sits in its network, as a relative depth from 0 (the first layer) to 1 (the last).

Models differ in depth, so comparisons put layers on relative depth: a network of T layer
positions puts position p at p / (T - 1) (a single position sits at 1.0: it is also the last, the
one that feeds the answer).

Positions come from the attention kinds' stages (core/kinds.py): a single-stream model's layer l
is position l. A dual-stream model (LXMERT) runs its language and vision encoders side by side
(stage 0), each counted from the input, then its cross-modality encoder (stage 1): cross layer x,
whatever its kind (``cross_l2v``, ``cross_lang_self``, ...), is position S0 + x, with S0 the depth
of the deeper stage-0 encoder. So LXMERT's ``cross_lang_self`` layer 0 comes after every language
layer, not beside ``lang_self`` layer 0. The cross step and the self step of one cross layer share
its position.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from core.kinds import kind_of

_TIE = 1e-9  # two layers this close to the asked depth are a tie, which goes to the deeper one


def relative_depth(n_positions: int) -> np.ndarray:
    """(n_positions,) relative depth of each position: p / (T - 1); a single position sits at 1.0."""
    if n_positions < 1:
        raise ValueError(f"a model needs at least one layer, got {n_positions}")
    if n_positions == 1:
        return np.ones(1)
    return np.arange(n_positions) / (n_positions - 1)


def network_positions(layers_per_kind: Mapping[str, int]) -> tuple[dict[str, np.ndarray], int]:
    """(kind -> position of each of its layers, number of positions in the network)."""
    if not layers_per_kind:
        raise ValueError("no attention kinds to place")
    stage_depth: dict[int, int] = {}
    for kind, n in layers_per_kind.items():
        stage = kind_of(kind).stage
        stage_depth[stage] = max(stage_depth.get(stage, 0), int(n))
    start, offset = {}, 0
    for stage in sorted(stage_depth):
        start[stage] = offset
        offset += stage_depth[stage]
    positions = {k: start[kind_of(k).stage] + np.arange(int(n)) for k, n in layers_per_kind.items()}
    return positions, offset


def kind_depths(kind: str, layers_per_kind: Mapping[str, int]) -> np.ndarray:
    """(layers of ``kind``,) the relative depth in the network of each layer of that kind."""
    positions, total = network_positions(layers_per_kind)
    if kind not in positions:
        raise ValueError(f"kind {kind!r} is not among {', '.join(layers_per_kind)}")
    return relative_depth(total)[positions[kind]]


def network_depth(kind: str, layer: int, layers_per_kind: Mapping[str, int]) -> float:
    """Relative depth in the network (0..1) of ``layer`` of attention kind ``kind``."""
    depths = kind_depths(kind, layers_per_kind)
    if not 0 <= layer < len(depths):
        raise ValueError(f"kind {kind!r} has {len(depths)} layers, no layer {layer}")
    return float(depths[layer])


def depth_bins(kind: str, layers_per_kind: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) on the 0..1 axis of the heatmap cell of each layer of ``kind``.

    Cells are centred on the layer's depth, one position wide and cut at 0 and 1, so two models'
    heatmaps share one axis: the first and last positions get half cells, a single one the whole axis.
    """
    positions, total = network_positions(layers_per_kind)
    d = kind_depths(kind, layers_per_kind)
    if total == 1:
        return np.zeros(len(d)), np.ones(len(d))
    half = 0.5 / (total - 1)
    return np.clip(d - half, 0, 1), np.clip(d + half, 0, 1)


def nearest_layer(rel: float, kind: str, layers_per_kind: Mapping[str, int]) -> int:
    """The layer of ``kind`` nearest to relative depth ``rel`` in the network; ties go deeper."""
    dist = np.abs(kind_depths(kind, layers_per_kind) - float(rel))
    return int(np.flatnonzero(dist <= dist.min() + _TIE)[-1])


def relative_depth_bins(n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """``depth_bins`` of a single-stream model with ``n_layers`` layers."""
    return depth_bins("self", {"self": n_layers})


def layer_at(rel: float, n_layers: int) -> int:
    """The layer of a single-stream ``n_layers``-deep model nearest to ``rel``; ties go deeper."""
    return nearest_layer(rel, "self", {"self": n_layers})
