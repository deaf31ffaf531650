"""2-D projections of one example's hidden states, comparable across layers.

All layers are fit ONCE: the (layer, token, dim) states are stacked into (layer * token, dim)
points, projected together, and split back per layer, so a token's move between two layers is a
move in one coordinate system (VL-InterpreT fits each layer on its own, so its layers are not
comparable). Optionally each layer is centered first (its mean token removed), which takes out
the per-layer drift that would otherwise dominate the joint fit; the axes stay shared.

One module for every page: the Hidden states page projects all layers of one example; the Compare
page projects one layer of each model (``project_layers`` on a single layer, PCA, with the variance
each axis explains).

Methods: PCA (exact), t-SNE (``fast_tsne`` below: PCA to 50 dims, sparse perplexity affinities
over nearest neighbours, repulsion estimated from random negative samples), UMAP (umap-learn, on
the same PCA-50 input).

t-SNE cost, measured in CPU seconds of one thread (median of 3; scikit-learn 1.9.1, numpy 2.4) on
13 x 185 = 2,405 points (a ViLT-B/32-sized example: random hidden states of width 768 with per-token
structure across layers, each layer centered): ``fast_tsne`` on the PCA-50 points 0.91 s (250
iterations, perplexity 10) and the whole ``project_layers(..., "tsne")`` 1.25 s, against 8.85 s
for scikit-learn's ``TSNE()`` with its defaults (Barnes-Hut, perplexity 30, 1,000 iterations) on the
same PCA-50 points, 9.11 s on the raw 768-dim points and 6.70 s at perplexity 10. So about 10x
(fit against fit) or 7x (the whole projection against scikit-learn on the raw points); most of it
is the 4x fewer iterations, each of ours about 2.4x cheaper (3.6 against 8.9 ms).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

METHODS = ("pca", "tsne", "umap")
METHOD_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
METHOD_NOTES = {"pca": "exact, instant", "tsne": "about 1 s of CPU for 13 layers x 185 tokens",
                "umap": "umap-learn; its first use in a process compiles numba code (can take a minute)"}


# t-SNE and UMAP fit at most this many points (layers x tokens): 8,000 take about 15 s of t-SNE on
# this project's 2-core machine under load (33 layers x 240 tokens; 33 x 600 = 19,800 took 58 s,
# PCA 2.4 s). A longer sequence (LLaVA-1.5: about 600 tokens) fits a sample of its image tokens.
MAX_FIT_POINTS = 8000
SAMPLED_METHODS = ("tsne", "umap")  # PCA fits every point


@dataclass(frozen=True, kw_only=True)
class FitSample:
    """Which tokens a fit uses: every non-image token, and every ``step``-th image token."""

    keep: np.ndarray  # (kept,) positions along the token axis, in order
    n_image: int  # image tokens in the sequence
    n_image_kept: int
    step: int  # 1: every image token

    @property
    def sampled(self) -> bool:
        return self.n_image_kept < self.n_image


def fit_sample(modality: Sequence[str], n_layers: int, method: str, *, max_points: int = MAX_FIT_POINTS) -> FitSample:
    """Tokens to fit (``modality``: one entry per token position): all of them while ``n_layers`` x
    tokens fits in ``max_points`` or the method is PCA; else every non-image token and image tokens at an
    even stride (deterministic), so layers x kept tokens <= max_points where the words alone allow it."""
    mod = np.asarray(modality)
    image = np.flatnonzero(mod == "image")
    everything = np.arange(len(mod))
    if method not in SAMPLED_METHODS or n_layers * len(mod) <= max_points or not len(image):
        return FitSample(keep=everything, n_image=len(image), n_image_kept=len(image), step=1)
    budget = max(max_points // max(n_layers, 1) - (len(mod) - len(image)), 1)  # image tokens per layer
    step = int(np.ceil(len(image) / budget))
    kept_image = image[::step]
    keep = np.sort(np.concatenate([np.flatnonzero(mod != "image"), kept_image]))
    return FitSample(keep=keep, n_image=len(image), n_image_kept=len(kept_image), step=step)


@dataclass(frozen=True, kw_only=True)
class Projection:
    """2-D coordinates of every token at every layer, in one coordinate system."""

    method: str
    coords: np.ndarray  # (layer, token, 2) float32
    token_index: np.ndarray  # (token,) -> record tokens
    centered: bool
    seconds: float
    fit: str = "one joint fit over all layers"
    explained: tuple[float, float] | None = None  # PCA: fraction of the variance on each axis; else None

    @property
    def n_layers(self) -> int:
        return self.coords.shape[0]


def stack_streams(streams: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Join hidden streams that share depth and width into one (layer, token, dim) block.

    streams: name -> (values (layer, token, dim), token_index). Returns (values, token_index,
    stream name per token). Raises ValueError when the streams differ in layers or dims (then a
    view projects one stream at a time).
    """
    if not streams:
        raise ValueError("no hidden states to project")
    names = sorted(streams)
    shapes = {(np.asarray(streams[n][0]).shape[0], np.asarray(streams[n][0]).shape[2]) for n in names}
    if len(shapes) != 1:
        desc = ", ".join(f"{n}: {np.asarray(streams[n][0]).shape}" for n in names)
        raise ValueError(f"streams differ in layers or width ({desc}); project one stream at a time")
    values = np.concatenate([np.asarray(streams[n][0], np.float32) for n in names], axis=1)
    index = np.concatenate([np.asarray(streams[n][1], np.int32) for n in names])
    owner = [n for n in names for _ in range(len(streams[n][1]))]
    return values, index, owner


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Scores on the first ``dims`` principal components (exact; sign fixed for determinism)."""
    return _pca_fit(x, dims)[0]


def _pca_fit(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (n, dims), fraction of the total variance on each component (dims,)).

    Signs are fixed so each component's largest loading is positive.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    dims = min(dims, *x.shape)
    if x.shape[1] <= x.shape[0]:
        # Eigen-decomposition of the (dim, dim) covariance: ~4x faster than a thin SVD here.
        vals, vecs = np.linalg.eigh(x.T @ x)
        comps = vecs[:, ::-1][:, :dims].T
        var = np.clip(vals[::-1], 0, None)
    else:
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        comps, var = vt[:dims], s ** 2
    signs = np.sign(comps[np.arange(dims), np.abs(comps).argmax(axis=1)])
    signs[signs == 0] = 1
    total = float(var.sum())
    explained = var[:dims] / total if total > 0 else np.zeros(dims)
    return (x @ comps.T) * signs, explained


def project_layers(hidden: np.ndarray, token_index: np.ndarray, method: str = "pca", *, center: bool = True,
                   seed: int = 0, pca_dims: int = 50) -> Projection:
    """Project (layer, token, dim) hidden states to (layer, token, 2) with one fit over all layers."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    h = np.asarray(hidden, dtype=np.float32)
    if h.ndim != 3:
        raise ValueError(f"hidden states must be (layer, token, dim), got {h.shape}")
    L, T, D = h.shape
    if len(token_index) != T:
        raise ValueError(f"{len(token_index)} token indices for {T} tokens")
    start = time.perf_counter()
    if center:
        h = h - h.mean(axis=1, keepdims=True)
    x = h.reshape(L * T, D).astype(np.float64)
    x = np.nan_to_num(x)
    explained = None
    if method == "pca":
        y, ev = _pca_fit(x, 2)
        if y.shape[1] < 2:
            y = np.pad(y, ((0, 0), (0, 2 - y.shape[1])))
        ev = np.pad(ev, (0, 2 - len(ev)))
        explained = (float(ev[0]), float(ev[1]))
    else:
        reduced = _pca(x, pca_dims) if D > pca_dims else x - x.mean(axis=0)
        if len(reduced) < 5:
            y = np.pad(reduced[:, :2], ((0, 0), (0, max(0, 2 - reduced.shape[1]))))
        elif method == "tsne":
            y = fast_tsne(reduced, seed=seed)
        else:
            y = _umap(reduced, seed)
    coords = y.reshape(L, T, 2).astype(np.float32)
    return Projection(method=method, coords=coords, token_index=np.asarray(token_index, np.int32), centered=center,
                      seconds=time.perf_counter() - start, explained=explained)


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import warnings

    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed, n_epochs=200,
                          init="pca" if len(x) > 10 else "random")
        return np.asarray(model.fit_transform(x), dtype=np.float64)


# ---- t-SNE -----------------------------------------------------------------------------------
def _knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances and indices of each point's k nearest other points (numpy only, in row blocks).

    Plain numpy on purpose: importing scikit-learn's neighbours module costs seconds on a busy machine.
    """
    x = np.asarray(x, dtype=np.float32)
    sq = (x * x).sum(axis=1)
    n = len(x)
    d2 = np.empty((n, k), np.float32)
    ind = np.empty((n, k), np.int64)
    for s in range(0, n, 1024):
        blk = sq[s:s + 1024, None] + sq[None, :] - 2.0 * (x[s:s + 1024] @ x.T)
        blk[np.arange(len(blk)), np.arange(s, s + len(blk))] = np.inf  # never a point itself
        part = np.argpartition(blk, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(blk, part, axis=1)
        order = np.argsort(vals, axis=1)
        ind[s:s + 1024] = np.take_along_axis(part, order, axis=1)
        d2[s:s + 1024] = np.maximum(np.take_along_axis(vals, order, axis=1), 0.0)
    return d2.astype(np.float64), ind


def _affinities(x: np.ndarray, perplexity: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric t-SNE input affinities over k nearest neighbours: (rows, cols, p), sorted by row, summing to 1."""
    n = len(x)
    k = int(min(n - 1, max(3, 3 * perplexity)))
    d2, ind = _knn(x, k)
    d2 = d2 - d2[:, :1]  # shift per row: same conditional distribution, no underflow
    target = np.log(min(perplexity, k))
    beta = np.ones(n)
    lo, hi = np.zeros(n), np.full(n, np.inf)
    for _ in range(64):  # bisection on the precision of every row at once
        p = np.exp(-d2 * beta[:, None])
        sp = p.sum(axis=1)
        entropy = np.log(sp) + beta * (d2 * p).sum(axis=1) / sp
        high = entropy > target
        lo = np.where(high, beta, lo)
        hi = np.where(high, hi, beta)
        beta = np.where(high, np.where(np.isinf(hi), beta * 2, (beta + hi) / 2), (beta + lo) / 2)
    p = np.exp(-d2 * beta[:, None])
    p /= p.sum(axis=1, keepdims=True)
    # P + P^T over the union of both edge directions, summing duplicates.
    r = np.repeat(np.arange(n), k)
    c = ind.ravel()
    keys = np.concatenate([r * n + c, c * n + r])
    uniq, inverse = np.unique(keys, return_inverse=True)
    vals = np.bincount(inverse, weights=np.concatenate([p.ravel(), p.ravel()]))
    return uniq // n, uniq % n, vals / vals.sum()


def fast_tsne(x: np.ndarray, *, perplexity: float = 10.0, n_iter: int = 250, early: int = 80,
              exaggeration: float = 12.0, negatives: int = 64, seed: int = 0) -> np.ndarray:
    """t-SNE of (n, d) points to (n, 2).

    The attractive forces are exact over the sparse neighbour affinities; the repulsive forces and
    the normalization Z are estimated each iteration from ``negatives`` random points per point
    (an unbiased estimate of the full O(n^2) sums), so an iteration costs O(n (k + negatives)).
    Optimizer as in van der Maaten (2014): PCA initialization, early exaggeration with momentum
    0.5, then momentum 0.8, per-coordinate gains, and a learning rate annealed linearly to 10% after
    the exaggeration phase (without it the sampling noise keeps shaking fine structure: exact
    duplicates stay each other's 2-D neighbours 99% of the time with it, 18% without). Deterministic
    for a given seed. Points are kept
    as complex numbers (x + iy) because 1-D gathers are about 10x faster than row gathers.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    rng = np.random.default_rng(seed)
    rows, cols, p = _affinities(x, perplexity)
    p = p.astype(np.float32)
    init = _pca(x, 2)
    init = init / (np.std(init[:, 0]) or 1.0) * 1e-4
    y = (init[:, 0] + 1j * init[:, 1]).astype(np.complex64)
    lr = np.float32(max(n / exaggeration / 4.0, 50.0))
    update = np.zeros(n, np.complex64)
    gains = np.ones((n, 2), np.float32)
    m = int(min(negatives, n - 1))
    self_skip = np.arange(n)[:, None]
    for it in range(n_iter):
        exag = np.float32(exaggeration if it < early else 1.0)
        momentum = np.float32(0.5 if it < early else 0.8)
        diff = np.take(y, rows) - np.take(y, cols)
        q = 1.0 / (1.0 + diff.real * diff.real + diff.imag * diff.imag)
        wd = (p * q) * diff
        attract = np.bincount(rows, wd.real, n) + 1j * np.bincount(rows, wd.imag, n)
        neg = rng.integers(0, n - 1, size=(n, m))
        neg += neg >= self_skip  # never a point itself
        ndiff = y[:, None] - np.take(y, neg)
        nq = 1.0 / (1.0 + ndiff.real * ndiff.real + ndiff.imag * ndiff.imag)
        z = n * (n - 1) * nq.mean()
        repel = (nq * nq * ndiff).sum(axis=1) * np.float32((n - 1) / m / z)
        grad = 4.0 * (exag * attract - repel)
        g = np.stack([grad.real, grad.imag], axis=1)
        u = np.stack([update.real, update.imag], axis=1)
        gains = np.maximum(np.where((g > 0) == (u > 0), gains * 0.8, gains + 0.2), 0.01).astype(np.float32)
        step = gains * g
        # Annealing to 10% of the rate averages out the noise of the sampled repulsion.
        rate = lr * (1.0 - 0.9 * max(0, it - early) / max(1, n_iter - early))
        update = (momentum * update - rate * (step[:, 0] + 1j * step[:, 1])).astype(np.complex64)
        y = y + update
    out = np.stack([y.real, y.imag], axis=1).astype(np.float64)
    return out - out.mean(axis=0)


# ---- neighbours ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Neighbour:
    token: int  # record token index
    similarity: float  # cosine similarity of the hidden states at that layer


def nearest_other_modality(vectors: np.ndarray, token_index: np.ndarray, modality: Sequence[str], token: int,
                           *, k: int = 5) -> list[Neighbour]:
    """The k tokens of the other modality (text <-> image) nearest to ``token`` by cosine similarity.

    vectors: (token, dim) hidden states of one layer (measured in the full hidden space, not in
    the 2-D projection, which distorts distances). Special tokens are never neighbours. Empty when
    ``token`` is special or absent.
    """
    idx = np.asarray(token_index)
    mod = np.asarray(modality)
    pos = np.flatnonzero(idx == token)
    if not pos.size or mod[token] not in ("text", "image"):
        return []
    other = "image" if mod[token] == "text" else "text"
    cand = np.flatnonzero(mod[idx] == other)
    if not cand.size:
        return []
    v = np.asarray(vectors, dtype=np.float64)
    a = v[pos[0]]
    b = v[cand]
    sims = b @ a / (np.linalg.norm(b, axis=1) * np.linalg.norm(a) + 1e-12)
    order = np.argsort(-sims, kind="stable")[:k]
    return [Neighbour(token=int(idx[cand[i]]), similarity=float(sims[i])) for i in order]


def projection_rows(proj: Projection, layer: int, tokens: Sequence[str], modality: Sequence[str],
                    owner: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Long-form columns of one layer's points for a scatter chart."""
    xy = proj.coords[layer]
    idx = proj.token_index
    out = {"x": xy[:, 0], "y": xy[:, 1], "token_index": idx, "token": np.asarray(tokens, dtype=object)[idx],
           "modality": np.asarray(modality, dtype=object)[idx], "layer": np.full(len(idx), layer)}
    if owner is not None:
        out["stream"] = np.asarray(owner, dtype=object)
    return out
