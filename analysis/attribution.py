"""Attribution of an answer to image regions and words, by several methods, model-independent.

Every method is written against the adapter contract (adapters/base.py), never a model's
internals, and has the same entry point::

    spec = adapter.attribution_spec(image, question)
    target = resolve_target(adapter, spec, "red")            # or "red rather than blue", or None (top answer)
    result = attribute(adapter, spec, target, "ig", n_steps=30)   # -> AttributionResult

Methods (``METHODS``):
    ig          Layer Integrated Gradients (Captum) at the adapter's text and image layers; per word the
                attribution summed over the hidden dimension, per region via ``adapter.layer_scores``.
                ``internal_batch_size="auto"`` measures the autograd memory of one step and chooses the
                batch that fits ``memory_budget_mb``.
    rollout     attention rollout (Abnar & Zuidema 2020); dual-stream models are rolled out over the joint
                token set, one matrix per attention sub-layer (see ``attention_schedule``).
    relevance   gradient-weighted attention relevance (Chefer, Gur & Wolf 2021): the single-stream rule,
                and the bi-modal self / cross rules with the residual normalization for dual-stream models.
    occlusion   each region / word replaced by its baseline (``adapter.occlude``), batched; score = drop of
                the target score.
    attention   raw attention of the last layer from the classifier token, mean over heads.

The explained quantity ("target score") is the answer's logit, or for "A rather than B" the
difference of the two logits. ``probability`` is the answer's probability on the input.
"""
from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from core.errors import AdapterError, InputError
from adapters.base import AttributionSpec

METHODS = ("ig", "rollout", "relevance", "occlusion", "attention")
# |delta| / |f(x) - f(baseline)| above this: the IG map is shown with a warning (raise n_steps).
DELTA_WARNING = 0.05


# ---- targets -----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Target:
    """What is explained: answer ``answer`` (logit index), optionally "rather than" ``contrast``."""

    answer: int
    answer_name: str
    contrast: int | None = None
    contrast_name: str | None = None

    def __post_init__(self):
        if self.contrast is not None and self.contrast == self.answer:
            raise InputError(f"'{self.answer_name} rather than {self.contrast_name}': pick two different answers")

    @property
    def label(self) -> str:
        if self.contrast is None:
            return self.answer_name
        return f"{self.answer_name} rather than {self.contrast_name}"

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, answers) logits -> (batch,) target score."""
        s = logits[:, self.answer]
        if self.contrast is not None:
            s = s - logits[:, self.contrast]
        return s


_CONTRAST = re.compile(r"\s+(?:rather than|instead of|vs\.?|versus)\s+", re.IGNORECASE)


def _answer_index(answers: list[str], name: str) -> int:
    key = name.strip()
    if key in answers:
        return answers.index(key)
    lowered = [a.lower() for a in answers]
    if key.lower() in lowered:
        return lowered.index(key.lower())
    shown = ", ".join(answers[:20]) + (" ..." if len(answers) > 20 else "")
    raise InputError(f"unknown answer {name!r}; this model's answers: {shown}")


def probabilities(adapter, logits: torch.Tensor) -> torch.Tensor:
    """Answer probabilities from logits: the adapter's own rule when it has one, else sigmoid (VQA heads
    are trained with binary cross-entropy)."""
    fn = getattr(adapter, "probabilities_from_logits", None)
    if fn is not None:
        return fn(logits)
    return torch.sigmoid(logits.float())


def resolve_target(adapter, spec: AttributionSpec, target=None) -> Target:
    """None -> the top answer; an int -> that logit; "A" or "A rather than B" -> names in the vocabulary."""
    answers = adapter.answers()
    if isinstance(target, Target):
        return target
    if target is None or (isinstance(target, str) and not target.strip()):
        with torch.no_grad():
            logits = adapter.forward_logits(**spec.inputs)
        i = int(logits[0].argmax())
        return Target(answer=i, answer_name=answers[i])
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < len(answers):
            raise InputError(f"answer index {target} out of range (0..{len(answers) - 1})")
        return Target(answer=int(target), answer_name=answers[int(target)])
    if isinstance(target, (tuple, list)) and len(target) == 2:
        a, b = (_answer_index(answers, str(t)) for t in target)
        return Target(answer=a, answer_name=answers[a], contrast=b, contrast_name=answers[b])
    if isinstance(target, str):
        parts = _CONTRAST.split(target.strip())
        if len(parts) == 1:
            a = _answer_index(answers, parts[0])
            return Target(answer=a, answer_name=answers[a])
        if len(parts) == 2:
            a, b = (_answer_index(answers, p) for p in parts)
            return Target(answer=a, answer_name=answers[a], contrast=b, contrast_name=answers[b])
    raise InputError(f"cannot read the target {target!r}: give an answer, or 'A rather than B'")


# ---- the result --------------------------------------------------------------------------------
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


# ---- helpers shared by methods -----------------------------------------------------------------
def _tensor_keys(inputs: dict) -> list[str]:
    return [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]


def concat_inputs(batch: list[dict]) -> dict:
    """Stack several batch-of-1 input dicts along the batch dimension (non-tensors from the first)."""
    first = batch[0]
    out = dict(first)
    for k in _tensor_keys(first):
        out[k] = torch.cat([b[k] for b in batch], dim=0)
    return out


def target_scores(adapter, target: Target, inputs_list: list[dict], batch_size: int = 16) -> np.ndarray:
    """Target score of each input dict (batch-of-1 dicts), evaluated in batches, no gradients."""
    scores = []
    with torch.no_grad():
        for i in range(0, len(inputs_list), batch_size):
            logits = adapter.forward_logits(**concat_inputs(inputs_list[i:i + batch_size]))
            scores.append(target.score(logits).float().cpu().numpy())
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def target_probabilities(adapter, target: Target, inputs_list: list[dict], batch_size: int = 16) -> np.ndarray:
    """Probability of the answer (minus the contrast's, for "A rather than B") for each input dict."""
    out = []
    with torch.no_grad():
        for i in range(0, len(inputs_list), batch_size):
            p = probabilities(adapter, adapter.forward_logits(**concat_inputs(inputs_list[i:i + batch_size])))
            v = p[:, target.answer]
            if target.contrast is not None:
                v = v - p[:, target.contrast]
            out.append(v.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _answer_probability(adapter, spec, target: Target) -> float:
    with torch.no_grad():
        p = probabilities(adapter, adapter.forward_logits(**spec.inputs))
    return float(p[0, target.answer])


def _result(adapter, spec, target, method, region_scores, token_scores, *, params, t0, notes=(), **kw):
    return AttributionResult(
        method=method, target=target.label, probability=_answer_probability(adapter, spec, target),
        region_boxes=spec.region_boxes, region_scores=np.asarray(region_scores, np.float32),
        tokens=tuple(spec.words), token_scores=np.asarray(token_scores, np.float32),
        token_is_special=np.asarray(spec.word_is_special, bool), params=params,
        seconds=time.perf_counter() - t0, notes=tuple(spec.notices) + tuple(notes), **kw)


# ---- attention schedule (single- and dual-stream) ----------------------------------------------
DUAL_STREAM_GROUPS = (("lang_self",), ("vision_self",), ("cross_l2v", "cross_v2l"),
                      ("cross_lang_self", "cross_vision_self"))
DUAL_STREAM_KINDS = tuple(k for g in DUAL_STREAM_GROUPS for k in g)


@dataclass(frozen=True)
class AttentionStep:
    """One attention map in record-token space: (query tokens, key tokens, head-reduced matrix)."""

    kind: str
    layer: int
    query: np.ndarray  # (q,) record token indices
    key: np.ndarray  # (k,) record token indices
    matrix: np.ndarray  # (q, k)

    @property
    def is_self(self) -> bool:
        return set(self.query.tolist()) == set(self.key.tolist())


def attention_schedule(attentions: dict) -> list[list[tuple[str, int]]]:
    """The order in which attention sub-layers act, as groups of (kind, layer) that act at once.

    Single-stream ("self"): one group per layer. Dual-stream (LXMERT-style): the language layers,
    the vision layers (independent encoders), then per cross layer the two cross-attentions (which
    read the same inputs, so act at once) and then the two self-attentions.
    """
    kinds = set(attentions)
    if kinds == {"self"}:
        return [[("self", l)] for l in range(len(attentions["self"]))]
    unknown = kinds - set(DUAL_STREAM_KINDS)
    if unknown or "self" in kinds:
        raise AdapterError(f"attention kinds {sorted(kinds)} are not a known layout: expected 'self' "
                           f"(single-stream) or a subset of {', '.join(DUAL_STREAM_KINDS)}")
    groups = []
    for k in ("lang_self", "vision_self"):
        groups += [[(k, l)] for l in range(len(attentions.get(k, [])))]
    n_cross = max([len(attentions.get(k, [])) for k in DUAL_STREAM_KINDS[2:]] + [0])
    for l in range(n_cross):
        for g in DUAL_STREAM_GROUPS[2:]:
            grp = [(k, l) for k in g if l < len(attentions.get(k, []))]
            if grp:
                groups.append(grp)
    return groups


def reduce_heads(attn: torch.Tensor, grad: torch.Tensor | None = None) -> np.ndarray:
    """(batch=1, head, q, k) -> (q, k): mean over heads, of clamp(grad * attn, 0) when grad is given."""
    a = attn.detach().float()[0]
    if grad is not None:
        a = (grad.detach().float()[0] * a).clamp(min=0)
    return a.mean(0).cpu().numpy().astype(np.float64)


def rollout_matrix(groups: list[list[AttentionStep]], n_tokens: int) -> np.ndarray:
    """Attention rollout over record tokens: R = Â_G ... Â_1 with Â = 0.5 A + 0.5 I per sub-layer,
    rows renormalized. Tokens no map of a group touches carry over unchanged (identity rows)."""
    R = np.eye(n_tokens)
    for group in groups:
        M = np.eye(n_tokens)
        touched = np.zeros(n_tokens, bool)
        for st in group:
            if touched[st.query].any():
                raise AdapterError(f"attention {st.kind} layer {st.layer}: two maps of one group share queries")
            M[st.query] = 0.0
            M[st.query, st.query] = 0.5
            M[np.ix_(st.query, st.key)] += 0.5 * st.matrix
            touched[st.query] = True
        sums = M.sum(1, keepdims=True)
        M = np.divide(M, sums, out=np.eye(n_tokens), where=sums > 0)
        R = M @ R
    return R


def _residual_normalized(R_ss: np.ndarray) -> np.ndarray:
    """Chefer et al. eqs. 8-9: R̂ = R - I, each row renormalized to sum to 1 (zero rows stay zero), + I."""
    eye = np.eye(len(R_ss))
    hat = R_ss - eye
    sums = hat.sum(1, keepdims=True)
    hat = np.divide(hat, sums, out=np.zeros_like(hat), where=np.abs(sums) > 1e-12)
    return hat + eye


def relevance_matrix(steps: list[AttentionStep], n_tokens: int) -> np.ndarray:
    """Gradient-weighted relevance (Chefer, Gur & Wolf 2021) over record tokens, maps applied in order.

    R starts as I (self relevance R^tt = R^ii = I, cross R^ti = R^it = 0). Each step's matrix is
    Ā = E_h[(∇A ⊙ A)^+] of one attention map with queries s and keys:
      self (keys = s):      R[s, :] += Ā · R[s, :]         (eqs. 6-7: R^ss and R^sq at once)
      cross (keys = q ≠ s): R[s, q] += R̄[s, s]ᵀ · Ā · R̄[q, q]  and  R[s, s] += Ā · R[q, s]  (eqs. 10-11)
    For single-stream models only the self rule occurs (R ← R + Ā R, layer by layer).
    """
    R = np.eye(n_tokens)
    for st in steps:
        s, k, A = st.query, st.key, st.matrix
        if st.is_self:
            R[s, :] = R[s, :] + A @ R[k, :]
            continue
        if set(s.tolist()) & set(k.tolist()):
            raise AdapterError(f"attention {st.kind}: queries and keys overlap but differ; neither self nor cross")
        add_sq = _residual_normalized(R[np.ix_(s, s)]).T @ A @ _residual_normalized(R[np.ix_(k, k)])
        add_ss = A @ R[np.ix_(k, s)]
        R[np.ix_(s, k)] += add_sq
        R[np.ix_(s, s)] += add_ss
    return R


def _steps(attentions: dict, index: dict, grads: dict | None = None) -> list[list[AttentionStep]]:
    groups = []
    for group in attention_schedule(attentions):
        steps = []
        for kind, layer in group:
            q, k = (np.asarray(i, np.int64) for i in index[kind])
            g = grads[kind][layer] if grads is not None else None
            if grads is not None and g is None:
                raise AdapterError(f"attention {kind} layer {layer} received no gradient: is it in the graph?")
            steps.append(AttentionStep(kind, layer, q, k, reduce_heads(attentions[kind][layer], g)))
        groups.append(steps)
    return groups


def _row_scores(row: np.ndarray, spec: AttributionSpec) -> tuple[np.ndarray, np.ndarray, float]:
    """A row over record tokens -> (region scores, word scores with the classifier token's self entry
    zeroed, that self entry)."""
    self_entry = float(row[spec.cls_token_index])
    words = row[np.asarray(spec.word_token_index)].copy()
    words[np.asarray(spec.word_token_index) == spec.cls_token_index] = 0.0
    return row[np.asarray(spec.region_token_index)], words, self_entry


# ---- methods ------------------------------------------------------------------------------------
class Method:
    name: str = ""
    defaults: dict = {}

    def attribute(self, adapter, spec: AttributionSpec, target: Target, **params) -> AttributionResult:
        raise NotImplementedError

    def forward_equivalents(self, spec: AttributionSpec, **params) -> float:
        """Cost in units of one forward pass (a backward counts about 2)."""
        return 1.0

    def params(self, **params) -> dict:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise InputError(f"{self.name}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(self.defaults)) or 'none'}")
        return {**self.defaults, **{k: v for k, v in params.items() if v is not None}}


def _saved_bytes(adapter, inputs: dict, layers: dict) -> int:
    """Bytes of the storages autograd saves in one forward (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    def make_leaf(module, inp, out):
        if isinstance(out, torch.Tensor) and not out.requires_grad:
            return out.detach().requires_grad_(True)
        return out

    handles = [m.register_forward_hook(make_leaf) for m in layers.values()]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = adapter.forward_logits(**inputs)
    finally:
        for h in handles:
            h.remove()
    del logits
    return int(sum(seen.values()))


def saved_bytes_per_step(adapter, spec: AttributionSpec, layers: dict) -> int:
    """Bytes autograd keeps per IG step (one interpolated input), measured: the saved storages of a forward on
    two copies of the input minus those on one, so weights (saved once, whatever the batch) cancel out."""
    one = _saved_bytes(adapter, spec.inputs, layers)
    two = _saved_bytes(adapter, concat_inputs([spec.inputs, spec.inputs]), layers)
    return max(two - one, 1)


def choose_internal_batch(n_steps: int, bytes_per_step: int, memory_budget_mb: float) -> int:
    """Largest number of steps per chunk within the budget, then evened out so chunks are equal."""
    fit = max(1, int(memory_budget_mb * 2**20 // max(bytes_per_step, 1)))
    fit = min(fit, n_steps)
    chunks = math.ceil(n_steps / fit)
    return math.ceil(n_steps / chunks)


class IntegratedGradients(Method):
    name = "ig"
    defaults = {"n_steps": 30, "internal_batch_size": "auto", "memory_budget_mb": 1024.0,
                "integration": "gausslegendre"}

    def forward_equivalents(self, spec, **params) -> float:
        p = self.params(**params)
        return 3.0 * int(p["n_steps"]) + 6.0

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        from captum.attr import LayerIntegratedGradients

        t0 = time.perf_counter()
        p = self.params(**params)
        n_steps = int(p["n_steps"])
        if n_steps < 1:
            raise InputError("ig: n_steps must be at least 1")
        layers = adapter.attribution_layers()
        names = [n for n in ("text", "image") if n in layers]
        keys = _tensor_keys(spec.inputs)
        others = {k: v for k, v in spec.inputs.items() if k not in keys}
        ibs = p["internal_batch_size"]
        per_step = None
        if ibs == "auto":
            per_step = saved_bytes_per_step(adapter, spec, layers)
            ibs = choose_internal_batch(n_steps, per_step, float(p["memory_budget_mb"]))
        elif ibs is not None:
            ibs = max(1, int(ibs))

        def forward(*tensors):
            return target.score(adapter.forward_logits(**dict(zip(keys, tensors)), **others))

        with warnings.catch_warnings():  # the text and image layers are parallel, not one after the other
            warnings.filterwarnings("ignore", message="Multiple layers provided")
            lig = LayerIntegratedGradients(forward, [layers[n] for n in names])
        inputs = tuple(spec.inputs[k] for k in keys)
        baselines = tuple(spec.baselines.get(k, spec.inputs[k]) for k in keys)
        with torch.enable_grad():
            attributions, delta = lig.attribute(inputs, baselines=baselines, n_steps=n_steps,
                                                method=p["integration"], internal_batch_size=ibs,
                                                return_convergence_delta=True)
        attributions = dict(zip(names, attributions))
        tok = adapter.layer_scores("text", attributions["text"], spec) if "text" in attributions else \
            np.zeros(len(spec.word_token_index))
        reg = adapter.layer_scores("image", attributions["image"], spec) if "image" in attributions else \
            np.zeros(len(spec.region_boxes))
        with torch.no_grad():
            fx = float(target.score(adapter.forward_logits(**spec.inputs))[0])
            fb = float(target.score(adapter.forward_logits(**spec.baselines))[0])
        delta = float(delta.reshape(-1)[0])
        notes = []
        rel = abs(delta) / max(abs(fx - fb), 1e-8)
        if rel > DELTA_WARNING:
            notes.append(f"IG convergence delta is {rel:.0%} of f(x) - f(baseline): raise the number of steps "
                         f"(now {n_steps}) before trusting this map")
        params_out = dict(p, internal_batch_size=ibs)
        if per_step is not None:
            params_out["measured_mb_per_step"] = round(per_step / 2**20, 2)
        return _result(adapter, spec, target, self.name, reg, tok, params=params_out, t0=t0, notes=notes,
                       delta=delta, score_difference=fx - fb)


class AttentionRollout(Method):
    name = "rollout"
    defaults = {}

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        with torch.no_grad():
            _, attentions, index = adapter.attention_probs(spec.inputs)
        groups = _steps(attentions, index)
        R = rollout_matrix(groups, len(spec.record_tokens))
        reg, words, self_entry = _row_scores(R[spec.cls_token_index], spec)
        notes = [f"rollout does not depend on the target; the classifier token keeps {self_entry:.2f} of itself"]
        if len(attentions) > 1:
            notes.append("dual-stream: rolled out over the joint token set, one matrix per attention sub-layer")
        return _result(adapter, spec, target, self.name, reg, words, params=p, t0=t0, notes=notes)


class GradientWeightedRelevance(Method):
    name = "relevance"
    defaults = {}

    def forward_equivalents(self, spec, **params) -> float:
        return 3.0

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        with torch.enable_grad():
            logits, attentions, index = adapter.attention_probs(spec.inputs)
            for maps in attentions.values():
                for a in maps:
                    if not a.requires_grad:
                        raise AdapterError("attention maps are not in the autograd graph; relevance needs them")
                    a.retain_grad()
            target.score(logits).sum().backward()
        grads = {k: [a.grad for a in maps] for k, maps in attentions.items()}
        steps = [s for g in _steps(attentions, index, grads) for s in g]
        R = relevance_matrix(steps, len(spec.record_tokens))
        reg, words, self_entry = _row_scores(R[spec.cls_token_index], spec)
        notes = [f"the classifier token's self relevance ({self_entry:.3g}) is left out"]
        if len(attentions) > 1:
            notes.append("dual-stream: bi-modal rules; of each layer's two cross-attentions the language side is "
                         "applied first, as in the authors' code")
        return _result(adapter, spec, target, self.name, reg, words, params=p, t0=t0, notes=notes)


class RawAttention(Method):
    name = "attention"
    defaults = {}

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        with torch.no_grad():
            _, attentions, index = adapter.attention_probs(spec.inputs)
        row = np.zeros(len(spec.record_tokens))
        used: dict[str, int] = {}
        for group in attention_schedule(attentions):
            for kind, layer in group:
                q, k = (np.asarray(i, np.int64) for i in index[kind])
                hit = np.nonzero(q == spec.cls_token_index)[0]
                if len(hit):  # later maps overwrite earlier ones: the last layer that reads each key wins
                    row[k] = reduce_heads(attentions[kind][layer])[hit[0]]
                    used[kind] = layer
        if not used:
            raise AdapterError("no attention map has the classifier token as a query")
        reg, words, self_entry = _row_scores(row, spec)
        last = [f"{kind} layer {layer}" for kind, layer in used.items()]
        notes = [f"last-layer attention of the classifier token ({', '.join(last)}), mean over heads; "
                 "it does not depend on the target"]
        return _result(adapter, spec, target, self.name, reg, words, params=p, t0=t0, notes=notes)


class Occlusion(Method):
    name = "occlusion"
    defaults = {"batch_size": 16}

    def forward_equivalents(self, spec, **params) -> float:
        return 1.0 + len(spec.region_boxes) + int((~np.asarray(spec.word_is_special, bool)).sum())

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        bs = max(1, int(p["batch_size"]))
        n_r = len(spec.region_boxes)
        special = np.asarray(spec.word_is_special, bool)
        n_w = len(special)
        variants = [spec.inputs]
        for r in range(n_r):
            m = np.zeros(n_r, bool)
            m[r] = True
            variants.append(adapter.occlude(spec.inputs, spec, region_mask=m))
        word_pos = np.nonzero(~special)[0]
        for w in word_pos:
            m = np.zeros(n_w, bool)
            m[w] = True
            variants.append(adapter.occlude(spec.inputs, spec, word_mask=m))
        s = target_scores(adapter, target, variants, batch_size=bs)
        reg = s[0] - s[1:1 + n_r]
        words = np.zeros(n_w, np.float32)
        words[word_pos] = s[0] - s[1 + n_r:]
        return _result(adapter, spec, target, self.name, reg, words, params=p, t0=t0,
                       notes=["score = drop of the target score when that region / word alone is replaced by "
                              "its baseline"])


METHOD_CLASSES: dict[str, Method] = {m.name: m for m in (IntegratedGradients(), AttentionRollout(),
                                                          GradientWeightedRelevance(), Occlusion(), RawAttention())}


def get_method(name: str) -> Method:
    if name not in METHOD_CLASSES:
        raise InputError(f"unknown attribution method {name!r}; known: {', '.join(METHODS)}")
    return METHOD_CLASSES[name]


def attribute(adapter, spec: AttributionSpec, target, method: str, **params) -> AttributionResult:
    """Run one method. ``target`` is a Target, or anything ``resolve_target`` reads."""
    m = get_method(method)
    if not isinstance(target, Target):
        target = resolve_target(adapter, spec, target)
    return m.attribute(adapter, spec, target, **params)


def time_one_forward(adapter, spec: AttributionSpec) -> float:
    """Seconds for one forward pass on this input (the unit of cost estimates)."""
    with torch.no_grad():
        adapter.forward_logits(**spec.inputs)  # warm-up
        t0 = time.perf_counter()
        adapter.forward_logits(**spec.inputs)
    return time.perf_counter() - t0


def estimate_seconds(spec: AttributionSpec, method: str, forward_seconds: float, **params) -> float:
    """A cost estimate shown before long methods run: forward equivalents x measured forward time."""
    return get_method(method).forward_equivalents(spec, **params) * forward_seconds
