"""Attention maps as matrices over record tokens, the order they act in, and the rollout / relevance rules.

Each method that reads attention (rollout, relevance, raw attention) works on ``AttentionStep``s: one map,
head-reduced, with the record tokens of its queries and keys. Single-stream models have one kind, ``self``;
dual-stream (LXMERT-style) kinds, their streams and network stage come from core/kinds.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adapters.base import AttributionSpec
from core.errors import AdapterError
from core.kinds import DUAL_STREAM_KINDS, KINDS, SINGLE_STREAM_KINDS

# Dual-stream kinds by when they act: the single-modality encoders (stage 0, each its own group per layer),
# then per cross layer the cross steps (they read the same inputs, so act at once) and then the self steps.
_ENCODER_KINDS = tuple(k for k in DUAL_STREAM_KINDS if KINDS[k].stage == 0)
_CROSS_GROUPS = (tuple(k for k in DUAL_STREAM_KINDS if KINDS[k].stage == 1 and KINDS[k].is_cross),
                 tuple(k for k in DUAL_STREAM_KINDS if KINDS[k].stage == 1 and not KINDS[k].is_cross))


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
    if kinds == set(SINGLE_STREAM_KINDS):
        (kind,) = SINGLE_STREAM_KINDS
        return [[(kind, l)] for l in range(len(attentions[kind]))]
    unknown = kinds - set(DUAL_STREAM_KINDS)
    if unknown or kinds & set(SINGLE_STREAM_KINDS):
        raise AdapterError(f"attention kinds {sorted(kinds)} are not a known layout: expected "
                           f"{', '.join(SINGLE_STREAM_KINDS)} (single-stream) or a subset of "
                           f"{', '.join(DUAL_STREAM_KINDS)}")
    groups = []
    for k in _ENCODER_KINDS:
        groups += [[(k, l)] for l in range(len(attentions.get(k, [])))]
    n_cross = max([len(attentions.get(k, [])) for g in _CROSS_GROUPS for k in g] + [0])
    for l in range(n_cross):
        for g in _CROSS_GROUPS:
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


def residual_normalized(R_ss: np.ndarray) -> np.ndarray:
    """Chefer et al. eqs. 8-9: R̂ = R - I, each row renormalized to sum to 1 (zero rows stay zero), + I."""
    eye = np.eye(len(R_ss))
    hat = R_ss - eye
    sums = hat.sum(1, keepdims=True)
    hat = np.divide(hat, sums, out=np.zeros_like(hat), where=np.abs(sums) > 1e-12)
    return hat + eye


def relevance_matrix(groups: list[list[AttentionStep]], n_tokens: int) -> np.ndarray:
    """Gradient-weighted relevance (Chefer, Gur & Wolf, ICCV 2021, eqs. 6-11) over record tokens.

    R starts as I (self relevance R^tt = R^ii = I, cross R^ti = R^it = 0). Each step's matrix is
    Ā = E_h[(∇A ⊙ A)^+] of one attention map with queries s and keys:
      self (keys = s):      R[s, :] += Ā · R[s, :]         (eqs. 6-7: R^ss and R^sq at once)
      cross (keys = q ≠ s): R[s, q] += R̄[s, s]ᵀ · Ā · R̄[q, q]  and  R[s, s] += Ā · R[q, s]  (eqs. 10-11)
    The steps of one group (``attention_schedule``: a cross layer's two co-attentions) are all computed
    from R as it was before the group, then added: the language-side update does not see the vision
    side's, nor the reverse, as in the paper and the authors' generator (each ``handle_co_attn_query``
    addition is computed first, then all four are added). For single-stream models only the self rule
    occurs (R ← R + Ā R, layer by layer).
    """
    R = np.eye(n_tokens)
    for group in groups:
        additions = [a for st in group for a in _relevance_additions(R, st)]
        for rows, cols, add in additions:
            R[np.ix_(rows, cols)] += add
    return R


def _relevance_additions(R: np.ndarray, st: AttentionStep) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, cols, addition) of one step's rule, read from R (not applied)."""
    s, k, A = st.query, st.key, st.matrix
    if st.is_self:
        return [(s, np.arange(len(R)), A @ R[k, :])]
    if set(s.tolist()) & set(k.tolist()):
        raise AdapterError(f"attention {st.kind}: queries and keys overlap but differ; neither self nor cross")
    add_sq = residual_normalized(R[np.ix_(s, s)]).T @ A @ residual_normalized(R[np.ix_(k, k)])
    add_ss = A @ R[np.ix_(k, s)]
    return [(s, k, add_sq), (s, s, add_ss)]


def attention_maps(adapter, spec: AttributionSpec) -> tuple[dict, dict]:
    """The adapter's attention maps on the spec's input, without gradients: ({kind: [map]}, {kind: index})."""
    with torch.no_grad():
        _, attentions, index = adapter.attention_probs(spec.inputs)
    return attentions, index


def attention_steps(attentions: dict, index: dict, grads: dict | None = None) -> list[list[AttentionStep]]:
    """The schedule's groups as AttentionSteps: head means, or gradient-weighted head means with ``grads``.

    A map whose gradient is None (the target does not depend on it, e.g. LXMERT's last vision-side maps,
    since the answer head reads only the language [CLS]) gets Ā = 0: it contributes nothing, as in the
    authors' code."""
    groups = []
    for group in attention_schedule(attentions):
        steps = []
        for kind, layer in group:
            q, k = (np.asarray(i, np.int64) for i in index[kind])
            if grads is None:
                matrix = reduce_heads(attentions[kind][layer])
            elif grads[kind][layer] is None:  # the target does not depend on this map: it adds nothing
                matrix = np.zeros((len(q), len(k)))
            else:
                matrix = reduce_heads(attentions[kind][layer], grads[kind][layer])
            steps.append(AttentionStep(kind, layer, q, k, matrix))
        groups.append(steps)
    return groups


def last_attention_matrix(groups: list[list[AttentionStep]], n_tokens: int) -> np.ndarray:
    """Raw attention over record tokens: each query's row of the last map that has it as a query (later
    maps overwrite earlier ones, so every key is read from the last layer that attends to it); zero rows
    for tokens no map queries."""
    M = np.zeros((n_tokens, n_tokens))
    for group in groups:
        for st in group:
            M[np.ix_(st.query, st.key)] = st.matrix
    return M


def _sequence(maps: dict, seq: int) -> dict:
    """Batch element ``seq`` of every map (kept as a batch of 1); None stays None."""
    return {k: [None if a is None else a[seq:seq + 1] for a in v] for k, v in maps.items()}


def target_row(attentions: dict, index: dict, spec: AttributionSpec, target, matrix_of,
               grads: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The row explained: the weighted sum of the target's rows (``target.rows(spec)``: (sequence, token,
    weight)) of ``matrix_of(attention_steps(...), n)`` per sequence (batch element of the maps).

    A classifier has one row (its classifier token's). A generated token's row is the position that produced
    it; a whole answer sums its tokens' rows; "A rather than B" subtracts B's rows (its own teacher-forced
    sequence, whose prompt positions are the same tokens). ``grads``: each map's gradient of the target score;
    a sequence of weight w gets its gradients divided by sign(w), so B's relevance is that of its own score.
    Returns (row over the record tokens (N,), the explained rows' token indices).
    """
    n = max([len(spec.record_tokens)] + [int(np.max(i)) + 1 for q_k in index.values() for i in q_k if len(i)])
    row = np.zeros(n)
    by_seq: dict[int, list[tuple[int, float]]] = {}
    for seq, r, w in target.rows(spec):
        by_seq.setdefault(int(seq), []).append((int(r), float(w)))
    for seq, rows in by_seq.items():
        g = None
        if grads is not None:
            sign = np.sign(rows[0][1]) or 1.0
            g = {k: [None if a is None else a / sign for a in v] for k, v in _sequence(grads, seq).items()}
        M = matrix_of(attention_steps(_sequence(attentions, seq), index, g), n)
        for r, w in rows:
            row += w * M[r]
    explained = np.array(sorted({r for rows in by_seq.values() for r, _ in rows}), np.int64)
    return row[:len(spec.record_tokens)] if n > len(spec.record_tokens) else row, explained


def row_scores(row: np.ndarray, spec: AttributionSpec, explained=None) -> tuple[np.ndarray, np.ndarray, float]:
    """A row over record tokens -> (region scores, word scores with the explained rows' self entries
    zeroed, the sum of those self entries). ``explained``: token indices of the rows read (default the
    classifier token)."""
    explained = np.asarray([spec.cls_token_index] if explained is None else explained, np.int64)
    explained = explained[explained < len(row)]
    self_entry = float(row[explained].sum())
    words = row[np.asarray(spec.word_token_index)].copy()
    words[np.isin(np.asarray(spec.word_token_index), explained)] = 0.0
    return row[np.asarray(spec.region_token_index)], words, self_entry
