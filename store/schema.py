"""The Record: one example through one model, in one schema for every adapter.

Every array carries named dimensions (``DIMS``), so no view guesses what an axis means.
Records are frozen and validated in ``__post_init__``; an invalid record fails at construction
with a ``RecordError`` that names the field and the problem.

Token coordinates (length N, the record's token list):
    tokens[n]       display string
    modality[n]     "text" | "image" | "special"  (explicit, never inferred from position)
    token_boxes[n]  (x0, y0, x1, y1) in 0..1 of the source image for image tokens, NaN otherwise
    token_grid[n]   (row, col) of a grid patch, (-1, -1) when not a grid cell
    token_spans[n]  (start, end) character span in the question for text tokens, (-1, -1) otherwise
    role[n]         "prompt" | "answer": generative models' generated tokens are "answer" tokens of
                    modality "text" (no span: they are not in the question); every other token,
                    and every token of a classifier model, is "prompt"

A generative model's attention is causal: a query row holds zeros on the keys after it, so its
row still sums to 1 over all keys (the same check as for every other model).
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

from core.answers import normalize_answer
from core.errors import RecordError

SCHEMA_VERSION = 4  # store layout version; see store/zarr_store.py (versions 1 to 3 still read)
MODALITIES = ("text", "image", "special")
ROLES = ("prompt", "answer")
# Tolerance on attention row sums: values are stored in float16 (about 3 significant digits).
ROW_SUM_TOLERANCE = 2e-2


def _torch_view(values: np.ndarray):
    """A torch tensor sharing ``values``' memory, or None when torch is not loaded or cannot view it.

    Only when the process has already imported torch (recording has; the store never imports it):
    its float16 kernels use the CPU's F16C instructions and run about ten times faster than
    numpy's, which was a visible part of recording a small model.
    """
    torch = sys.modules.get("torch")
    if torch is None or values.dtype != np.float16 or not values.dtype.isnative:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a read-only array: torch warns about writes; we only read
            return torch.from_numpy(values)
    except (ValueError, RuntimeError, TypeError):  # e.g. negative strides
        return None


def as_float32(values) -> np.ndarray:
    """``values`` as a new float32 array (float16 through torch when loaded: see ``_torch_view``)."""
    v = np.asarray(values)
    t = _torch_view(v)
    if t is not None:
        return t.float().numpy()
    return v.astype(np.float32)


def row_sums(values) -> np.ndarray:
    """Sums over the last axis, accumulated in float32, without a float32 copy of the whole array."""
    v = np.asarray(values)
    t = _torch_view(v)
    if t is not None:
        return t.sum(-1, dtype=sys.modules["torch"].float32).numpy()
    return v.sum(axis=-1, dtype=np.float32)


def _fail(field_name: str, problem: str):
    raise RecordError(f"{field_name}: {problem}")


def _frozen_float16(field_name: str, values, dims: tuple[str, ...]) -> np.ndarray:
    """``values`` as a read-only float16 array with one axis per name in ``dims``."""
    v = np.asarray(values)
    if v.ndim != len(dims):
        _fail(field_name, f"must have dims {dims}, got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.floating):
        _fail(field_name, f"must be floating point, got {v.dtype}")
    v = v.astype(np.float16, copy=False)
    v.setflags(write=False)
    return v


def _as_index(name: str, value, n_tokens: int | None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        _fail(name, f"must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        _fail(name, f"must hold integer token indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int32, copy=False)
    if n_tokens is not None and arr.size and (arr.min() < 0 or arr.max() >= n_tokens):
        _fail(name, f"token indices must lie in [0, {n_tokens}), got [{arr.min()}, {arr.max()}]")
    if len(np.unique(arr)) != len(arr):
        _fail(name, "token indices must be unique")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, kw_only=True)
class AttentionBlock:
    """One kind of attention: values (layer, head, query, key), rows are softmax rows over keys."""

    DIMS = ("layer", "head", "query", "key")
    values: np.ndarray
    query_index: np.ndarray  # (query,) -> Record.tokens
    key_index: np.ndarray  # (key,)  -> Record.tokens

    def __post_init__(self):
        v = _frozen_float16("attention.values", self.values, self.DIMS)
        object.__setattr__(self, "values", v)
        qi = _as_index("attention.query_index", self.query_index, None)
        ki = _as_index("attention.key_index", self.key_index, None)
        if len(qi) != v.shape[2]:
            _fail("attention.query_index", f"has {len(qi)} entries for {v.shape[2]} queries")
        if len(ki) != v.shape[3]:
            _fail("attention.key_index", f"has {len(ki)} entries for {v.shape[3]} keys")
        object.__setattr__(self, "query_index", qi)
        object.__setattr__(self, "key_index", ki)

    @property
    def n_layers(self) -> int:
        return self.values.shape[0]

    @property
    def n_heads(self) -> int:
        return self.values.shape[1]


def _model_positions(name: str, values, size: int) -> tuple[int, ...]:
    """Distinct model layer or head positions in [0, size), sorted."""
    out = tuple(int(v) for v in values)
    if not out:
        _fail(name, "must name at least one")
    if any(v < 0 or v >= size for v in out):
        _fail(name, f"must lie in [0, {size}), got {list(out)}")
    if list(out) != sorted(set(out)):
        _fail(name, f"must be distinct and sorted, got {list(out)}")
    return out


@dataclass(frozen=True, kw_only=True)
class FullAttention:
    """Every query row of chosen layers and heads of one attention kind, kept beside the kind's own
    rows when those are a subset (a generative recording keeps the language rows of every layer;
    ``--full-layers`` / ``--full-heads`` add the image rows of a few).

    ``block.values`` is (layer, head, query, key) over the chosen ``layers`` x ``heads`` only:
    ``block.values[i, j]`` is model layer ``layers[i]``, head ``heads[j]``.
    """

    block: AttentionBlock
    layers: tuple[int, ...]  # model layer of each entry of the block's layer axis, sorted
    heads: tuple[int, ...]  # model head of each entry of the block's head axis, sorted

    def __post_init__(self):
        if not isinstance(self.block, AttentionBlock):
            _fail("full_attention.block", f"must be an AttentionBlock, got {type(self.block).__name__}")
        object.__setattr__(self, "layers", tuple(int(v) for v in self.layers))
        object.__setattr__(self, "heads", tuple(int(v) for v in self.heads))
        if self.block.values.shape[:2] != (len(self.layers), len(self.heads)):
            _fail("full_attention", f"values of shape {self.block.values.shape} for {len(self.layers)} layers "
                                    f"x {len(self.heads)} heads")

    def checked_against(self, kind: str, of: AttentionBlock) -> "FullAttention":
        """Itself, after checking it fits the kind ``of`` it completes (layers, heads, keys)."""
        name = f"full_attention[{kind!r}]"
        _model_positions(f"{name}.layers", self.layers, of.n_layers)
        _model_positions(f"{name}.heads", self.heads, of.n_heads)
        if not np.array_equal(self.block.key_index, of.key_index):
            _fail(f"{name}.key_index", f"must be the keys of attention[{kind!r}]")
        return self


@dataclass(frozen=True, kw_only=True)
class HiddenBlock:
    """Hidden states of one stream: (layer, token, dim); layer 0 is the embeddings output."""

    DIMS = ("layer", "token", "dim")
    values: np.ndarray
    token_index: np.ndarray  # (token,) -> Record.tokens

    def __post_init__(self):
        v = _frozen_float16("hidden.values", self.values, self.DIMS)
        object.__setattr__(self, "values", v)
        ti = _as_index("hidden.token_index", self.token_index, None)
        if len(ti) != v.shape[1]:
            _fail("hidden.token_index", f"has {len(ti)} entries for {v.shape[1]} tokens")
        object.__setattr__(self, "token_index", ti)


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """Top-k answers, best first, with their probabilities.

    A generative model has one answer, the generated text; its probability is the product of
    ``token_probabilities``, the probability of each generated token when it was chosen (in the
    order of the record's answer tokens). Classifier models leave ``token_probabilities`` empty.
    """

    answers: tuple[str, ...]
    probabilities: tuple[float, ...]
    token_probabilities: tuple[float, ...] = ()

    def __post_init__(self):
        answers = tuple(str(a) for a in self.answers)
        probs = tuple(float(p) for p in self.probabilities)
        if not answers:
            _fail("prediction.answers", "must hold at least one answer")
        if len(answers) != len(probs):
            _fail("prediction", f"{len(answers)} answers but {len(probs)} probabilities")
        for p in probs:
            if not (0.0 <= p <= 1.0 + 1e-6) or math.isnan(p):
                _fail("prediction.probabilities", f"must lie in [0, 1], got {p}")
        if any(probs[i] < probs[i + 1] - 1e-9 for i in range(len(probs) - 1)):
            _fail("prediction.probabilities", "must be sorted best first")
        token_probs = tuple(float(p) for p in self.token_probabilities)
        if any(not (0.0 <= p <= 1.0 + 1e-6) for p in token_probs):  # NaN fails both comparisons
            _fail("prediction.token_probabilities", "must lie in [0, 1]")
        object.__setattr__(self, "answers", answers)
        object.__setattr__(self, "probabilities", probs)
        object.__setattr__(self, "token_probabilities", token_probs)

    @property
    def top(self) -> str:
        return self.answers[0]

    @property
    def confidence(self) -> float:
        return self.probabilities[0]


def _freeze_mapping(name: str, value, cls) -> Mapping:
    if not isinstance(value, Mapping):
        _fail(name, f"must be a mapping of name -> {cls.__name__}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or "/" in k:
            _fail(name, f"keys must be non-empty names without '/', got {k!r}")
        if not isinstance(v, cls):
            _fail(f"{name}[{k!r}]", f"must be a {cls.__name__}, got {type(v).__name__}")
        out[k] = v
    return MappingProxyType(out)


def _check_block(name: str, block: AttentionBlock, n: int) -> None:
    """Token indices inside the record's ``n`` tokens and softmax rows."""
    for idx_name in ("query_index", "key_index"):
        idx = getattr(block, idx_name)
        if idx.size and idx.max() >= n:
            _fail(f"{name}.{idx_name}", f"points past the {n} tokens")
    sums = row_sums(block.values)
    if block.values.size and np.abs(sums - 1.0).max() > ROW_SUM_TOLERANCE:
        worst = float(np.abs(sums - 1.0).max())
        _fail(name, f"rows must be softmax rows summing to 1 (worst off by {worst:.3g})")


@dataclass(frozen=True, kw_only=True)
class Record:
    """One example through one model. See the module docstring for the token coordinates."""

    example_id: str
    question: str
    tokens: tuple[str, ...]
    modality: tuple[str, ...]
    token_boxes: np.ndarray  # (token, 4) float32
    token_grid: np.ndarray  # (token, 2) int32
    token_spans: np.ndarray  # (token, 2) int32
    image: np.ndarray  # (y, x, 3) uint8, a display copy of the source image
    attention: Mapping[str, AttentionBlock]
    hidden: Mapping[str, HiddenBlock]
    prediction: Prediction
    label: str | None = None
    source_key: str | None = None
    notices: tuple[str, ...] = ()
    meta: Mapping = field(default_factory=dict)
    role: tuple[str, ...] | None = None  # (token,) "prompt" | "answer"; None: every token "prompt"
    # kind -> every query row of chosen layers / heads of that kind (see FullAttention); usually empty
    full_attention: Mapping[str, FullAttention] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.example_id, str) or not self.example_id or "/" in self.example_id:
            _fail("example_id", f"must be a non-empty string without '/', got {self.example_id!r}")
        if not isinstance(self.question, str):
            _fail("question", f"must be a string, got {type(self.question).__name__}")
        tokens = tuple(self.tokens)
        if not tokens:
            _fail("tokens", "must hold at least one token")
        if not all(isinstance(t, str) for t in tokens):
            _fail("tokens", "must all be strings")
        n = len(tokens)
        modality = tuple(self.modality)
        if len(modality) != n:
            _fail("modality", f"has {len(modality)} entries for {n} tokens")
        bad = sorted({m for m in modality if m not in MODALITIES})
        if bad:
            _fail("modality", f"values must be one of {MODALITIES}, got {bad}")
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "modality", modality)
        object.__setattr__(self, "role", self._checked_role(modality))

        boxes = np.asarray(self.token_boxes, dtype=np.float32)
        if boxes.shape != (n, 4):
            _fail("token_boxes", f"must have shape ({n}, 4), got {boxes.shape}")
        is_image = np.array([m == "image" for m in modality])
        img_boxes = boxes[is_image]
        if np.isnan(img_boxes).any():
            _fail("token_boxes", "every image token needs a box")
        if img_boxes.size:
            if (img_boxes < -1e-6).any() or (img_boxes > 1 + 1e-6).any():
                _fail("token_boxes", "image token boxes must lie inside the image (0..1)")
            if (img_boxes[:, 2] < img_boxes[:, 0]).any() or (img_boxes[:, 3] < img_boxes[:, 1]).any():
                _fail("token_boxes", "boxes must satisfy x0 <= x1 and y0 <= y1")
        grid = np.asarray(self.token_grid)
        if grid.shape != (n, 2):
            _fail("token_grid", f"must have shape ({n}, 2), got {grid.shape}")
        spans = np.asarray(self.token_spans)
        if spans.shape != (n, 2):
            _fail("token_spans", f"must have shape ({n}, 2), got {spans.shape}")
        if spans.size and (spans.max() > len(self.question)):
            _fail("token_spans", "character spans must lie inside the question")
        image = np.asarray(self.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
            _fail("image", f"must be a (y, x, 3) uint8 array, got {image.shape} {image.dtype}")
        for name, arr in (("token_boxes", boxes), ("token_grid", grid.astype(np.int32)),
                          ("token_spans", spans.astype(np.int32)), ("image", image)):
            arr = np.array(arr, copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

        attention = _freeze_mapping("attention", self.attention, AttentionBlock)
        if not attention:
            _fail("attention", "must hold at least one kind")
        for kind, block in attention.items():
            _check_block(f"attention[{kind!r}]", block, n)
        full = _freeze_mapping("full_attention", self.full_attention, FullAttention)
        for kind, extra in full.items():
            if kind not in attention:
                _fail(f"full_attention[{kind!r}]", "completes no attention kind of the record")
            _check_block(f"full_attention[{kind!r}]", extra.checked_against(kind, attention[kind]).block, n)
        object.__setattr__(self, "full_attention", full)
        hidden = _freeze_mapping("hidden", self.hidden, HiddenBlock)
        for stream, block in hidden.items():
            if block.token_index.size and block.token_index.max() >= n:
                _fail(f"hidden[{stream!r}].token_index", f"points past the {n} tokens")
        object.__setattr__(self, "attention", attention)
        object.__setattr__(self, "hidden", hidden)
        if not isinstance(self.prediction, Prediction):
            _fail("prediction", "must be a Prediction")
        n_answer = self.role.count("answer")
        if self.prediction.token_probabilities and len(self.prediction.token_probabilities) != n_answer:
            _fail("prediction.token_probabilities",
                  f"has {len(self.prediction.token_probabilities)} entries for {n_answer} answer tokens")
        if self.label is not None and not isinstance(self.label, str):
            _fail("label", "must be a string or None")
        object.__setattr__(self, "notices", tuple(str(x) for x in self.notices))
        if not isinstance(self.meta, Mapping):
            _fail("meta", "must be a mapping")
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def _checked_role(self, modality: tuple[str, ...]) -> tuple[str, ...]:
        if self.role is None:
            return ("prompt",) * len(modality)
        role = tuple(self.role)
        if len(role) != len(modality):
            _fail("role", f"has {len(role)} entries for {len(modality)} tokens")
        bad = sorted({r for r in role if r not in ROLES})
        if bad:
            _fail("role", f"values must be one of {ROLES}, got {bad}")
        if any(r == "answer" and m == "image" for r, m in zip(role, modality)):
            _fail("role", "an answer token cannot be an image token")
        return role

    # ---- derived, read-only -------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def generative(self) -> bool:
        """True when the model generated its answer (the record has answer tokens)."""
        return "answer" in self.role

    @property
    def correct(self) -> bool | None:
        """Classifiers: the top answer is the label. Generative models: the generated text and the
        label are equal after the VQA answer normalization (lower case, articles and punctuation
        dropped), so "A circle." is correct for "circle"."""
        if self.label is None:
            return None
        if self.generative:
            return normalize_answer(self.prediction.top) == normalize_answer(self.label)
        return self.prediction.top == self.label

    def answer_indices(self) -> np.ndarray:
        """Token indices of the generated answer, in generation order (empty for classifiers)."""
        return np.array([i for i, r in enumerate(self.role) if r == "answer"], dtype=np.int32)

    def indices(self, modality: str) -> np.ndarray:
        return np.array([i for i, m in enumerate(self.modality) if m == modality], dtype=np.int32)

    @property
    def single_stream(self) -> bool:
        return set(self.attention) == {"self"}
