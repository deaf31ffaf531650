"""Side-by-side comparison of two recorded runs: pure functions, no Streamlit.

Two runs join on the content-hash ``example_id`` (image pixels + question), so two models'
records of the same example meet whatever order or subset each run recorded.

Depth: models differ in depth, so layers are compared on *relative depth* in the network
(analysis/depth.py): position / (positions - 1), 0 for the first layer, 1 for the last, so a
6-layer and a 12-layer model line up. A dual-stream model's positions follow its stages: the
language and vision encoders side by side from 0, then the cross-modality layers.

Several attention kinds (dual-stream models): a model with several kinds (LXMERT:
``lang_self``, ``vision_self``, ``cross_l2v``, ...) is summarised per statistic over *its kinds
where that statistic applies* (analysis/head_stats.not_applicable: a kind that lacks the tokens a
statistic needs, or whose keys are all target keys so the statistic is constant, is left out; so
is a kind whose values are all NaN). At each network position the mean and spread are taken over
every head of every such kind with a layer there. A statistic that applies to no kind of a model
"does not exist" for that model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from analysis.depth import layer_at, network_positions, relative_depth, relative_depth_bins  # noqa: F401 (API)
from analysis.head_stats import not_applicable
from analysis.layer_stats import ANSWER_STATS
from core.answers import normalize_answer

# The attention kind whose rows go from text tokens to image tokens, by architecture.
OVERLAY_KINDS = ("cross_l2v", "self")


# ---- joining runs --------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ExampleJoin:
    """Examples of run A and run B joined on example_id."""

    shared_ids: tuple[str, ...]  # in run A's order
    only_a: int  # recorded by A only
    only_b: int  # recorded by B only

    def statement(self) -> str:
        rest = []
        if self.only_a:
            rest.append(f"{self.only_a} only in A")
        if self.only_b:
            rest.append(f"{self.only_b} only in B")
        tail = f" ({', '.join(rest)}, not shown)" if rest else ""
        return f"{len(self.shared_ids)} examples recorded by both runs{tail}"


def join_examples(a: Iterable, b: Iterable) -> ExampleJoin:
    """Join two runs' example summaries (anything with ``example_id``) on example_id."""
    ids_a = [s.example_id for s in a]
    ids_b = {s.example_id for s in b}
    seen_a = set(ids_a)
    shared = tuple(dict.fromkeys(i for i in ids_a if i in ids_b))
    return ExampleJoin(shared_ids=shared, only_a=len(seen_a - ids_b), only_b=len(ids_b - seen_a))


# ---- accuracy and disagreement -------------------------------------------------------------------
def is_correct(summary) -> bool:
    """A labelled summary's verdict: its stored ``correct`` (the Record's rule: a classifier's top answer
    is the label, a generated answer normalizes to it), else VQA-normalized answer == label."""
    stored = getattr(summary, "correct", None)
    if stored is not None:
        return bool(stored)
    return same_answer(summary.answer, summary.label)


def same_answer(a: str | None, b: str | None) -> bool:
    """Two answers are the same after the VQA answer normalization ("Red." and "red" are)."""
    if a is None or b is None:
        return a is b
    return normalize_answer(a) == normalize_answer(b)


@dataclass(frozen=True, kw_only=True)
class Accuracy:
    """Accuracy over labelled examples: overall, and per true answer (label)."""

    n_labelled: int
    n_correct: int
    per_answer: Mapping[str, tuple[int, int]]  # label -> (n_correct, n)

    @property
    def overall(self) -> float:
        return self.n_correct / self.n_labelled if self.n_labelled else float("nan")

    def of(self, answer: str) -> float:
        c, n = self.per_answer.get(answer, (0, 0))
        return c / n if n else float("nan")


def accuracy(summaries: Iterable) -> Accuracy:
    """Accuracy of one run over the given summaries (``label``, ``answer``); unlabelled ones are left out.

    Correct is ``is_correct``: the store's ``correct`` field where a summary carries it, else the
    VQA-normalized answer equal to the label's.
    """
    per: dict[str, list[int]] = {}
    n = c = 0
    for s in summaries:
        if s.label is None:
            continue
        ok = int(is_correct(s))
        n += 1
        c += ok
        cell = per.setdefault(s.label, [0, 0])
        cell[0] += ok
        cell[1] += 1
    return Accuracy(n_labelled=n, n_correct=c, per_answer={k: (v[0], v[1]) for k, v in sorted(per.items())})


@dataclass(frozen=True, kw_only=True)
class Disagreement:
    example_id: str
    question: str
    label: str | None
    answer_a: str
    confidence_a: float
    answer_b: str
    confidence_b: float

    @property
    def gap(self) -> float:
        """Absolute difference of the two models' top-answer confidences."""
        return abs(self.confidence_a - self.confidence_b)


def disagreements(a: Iterable, b: Iterable, shared_ids: Sequence[str] | None = None) -> list[Disagreement]:
    """Shared examples whose top answers differ after the VQA answer normalization (a generated "Red."
    agrees with a classifier's "red"), largest confidence gap first (ties: example_id)."""
    by_a = {s.example_id: s for s in a}
    by_b = {s.example_id: s for s in b}
    ids = shared_ids if shared_ids is not None else [i for i in by_a if i in by_b]
    out = []
    for eid in ids:
        sa, sb = by_a[eid], by_b[eid]
        if not same_answer(sa.answer, sb.answer):
            out.append(Disagreement(example_id=eid, question=sa.question, label=sa.label if sa.label is not None
                                    else sb.label, answer_a=sa.answer, confidence_a=float(sa.confidence),
                                    answer_b=sb.answer, confidence_b=float(sb.confidence)))
    out.sort(key=lambda d: (-d.gap, d.example_id))
    return out


# ---- head statistics per relative depth ----------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DepthProfile:
    """One model's head statistics per network position: mean and spread (std) over heads.

    ``kinds[s]`` lists the attention kinds where statistic s applies (empty: it does not exist for
    this model, and its row of ``mean`` / ``spread`` is NaN).
    """

    DIMS = ("stat", "depth")
    stat_names: tuple[str, ...]
    relative_depth: np.ndarray  # (depth,) of each position in the network
    layer: np.ndarray  # (depth,) the position in the network, 0 = first layer (a single-stream model's layer)
    mean: np.ndarray  # (stat, depth)
    spread: np.ndarray  # (stat, depth) std over heads (and kinds)
    n_heads: np.ndarray  # (stat, depth) heads that entered the mean
    kinds: Mapping[str, tuple[str, ...]]

    def exists(self, stat: str) -> bool:
        return bool(self.kinds.get(stat))


def _per_head(values: np.ndarray) -> np.ndarray:
    """(example, stat, layer, head) -> (stat, layer, head): NaN-aware mean over examples."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 4:
        raise ValueError(f"head statistics must have dims (example, stat, layer, head), got shape {v.shape}")
    if v.shape[0] == 0:
        return np.full(v.shape[1:], np.nan)
    with np.errstate(invalid="ignore"), _quiet():
        return np.nanmean(v, axis=0)


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings: an all-NaN slice is a defined NaN here."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def depth_profile(stats_by_kind: Mapping[str, tuple[Sequence[str], np.ndarray]],
                  stat_names: Sequence[str] | None = None,
                  layers_per_kind: Mapping[str, int] | None = None) -> DepthProfile:
    """Per-statistic, per-network-position mean and spread over heads of one model.

    ``stats_by_kind``: kind -> (stat names, values (example, stat, layer, head)), as read by
    ``RunReader.head_stats_all``. Pass one kind to profile that kind; pass all kinds to get the
    model-level profile (see the module docstring). ``layers_per_kind``: the layers of every kind
    of the model, which place the given kinds in the network (default: the given kinds only; a
    profile of ``cross_l2v`` alone needs the model's other kinds to sit after its encoders).
    """
    if not stats_by_kind:
        raise ValueError("no head statistics to profile")
    per_kind = {k: (list(n), _per_head(v)) for k, (n, v) in stats_by_kind.items()}
    if stat_names is None:
        stat_names = list(dict.fromkeys(s for names, _ in per_kind.values() for s in names))
    layers = {k: ph.shape[1] for k, (_, ph) in per_kind.items()}
    positions, total = network_positions({**(layers_per_kind or {}), **layers})  # the data wins
    S = len(stat_names)
    mean = np.full((S, total), np.nan)
    spread = np.full((S, total), np.nan)
    count = np.zeros((S, total), dtype=np.int64)
    kinds: dict[str, tuple[str, ...]] = {}
    for si, stat in enumerate(stat_names):
        at_position: list[list[np.ndarray]] = [[] for _ in range(total)]
        used = []
        for kind in sorted(per_kind):
            names, ph = per_kind[kind]
            if stat not in names or not_applicable(kind, stat) is not None:
                continue
            vals = ph[names.index(stat)]  # (layer, head)
            if np.isnan(vals).all():
                continue  # no value in these examples
            for layer, pos in enumerate(positions[kind]):
                at_position[pos].append(vals[layer])
            used.append(kind)
        kinds[stat] = tuple(used)
        for pos, heads in enumerate(at_position):
            if not heads:
                continue
            allh = np.concatenate(heads)  # heads over kinds at this position
            with _quiet():
                mean[si, pos] = np.nanmean(allh)
                spread[si, pos] = np.nanstd(allh)
            count[si, pos] = np.isfinite(allh).sum()
    return DepthProfile(stat_names=tuple(stat_names), relative_depth=relative_depth(total), layer=np.arange(total),
                        mean=mean, spread=spread, n_heads=count, kinds=kinds)


def profile_rows(profile: DepthProfile, model: str, kind: str) -> list[dict]:
    """Long-form rows (one per stat and depth) for a chart or table."""
    rows = []
    for si, stat in enumerate(profile.stat_names):
        if not profile.exists(stat):
            continue
        for j, d in enumerate(profile.relative_depth):
            m, s = profile.mean[si, j], profile.spread[si, j]
            if not np.isfinite(m):
                continue
            rows.append({"model": model, "kind": kind, "stat": stat, "layer": int(profile.layer[j]),
                         "relative_depth": float(d), "mean": float(m), "spread": float(s),
                         "low": float(m - s), "high": float(m + s), "heads": int(profile.n_heads[si, j])})
    return rows


# ---- what exists in both models ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class KindComparison:
    shared: tuple[str, ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]

    def statement(self, name_a: str = "A", name_b: str = "B") -> str:
        if self.shared and not self.only_a and not self.only_b:
            return f"Both models have the attention kinds {', '.join(self.shared)}."
        parts = []
        if self.shared:
            parts.append(f"Attention kinds in both models: {', '.join(self.shared)}.")
        else:
            parts.append("The two models share no attention kind; statistics are compared as the mean over "
                         "each model's kinds where they are defined.")
        if self.only_a:
            parts.append(f"Only in {name_a}: {', '.join(self.only_a)}.")
        if self.only_b:
            parts.append(f"Only in {name_b}: {', '.join(self.only_b)}.")
        return " ".join(parts)


def compare_kinds(kinds_a: Iterable[str], kinds_b: Iterable[str]) -> KindComparison:
    a, b = list(dict.fromkeys(kinds_a)), list(dict.fromkeys(kinds_b))
    return KindComparison(shared=tuple(k for k in a if k in b), only_a=tuple(k for k in a if k not in b),
                          only_b=tuple(k for k in b if k not in a))


def missing_statistics(profile_a: DepthProfile, profile_b: DepthProfile, name_a: str = "A",
                       name_b: str = "B") -> list[str]:
    """Plain statements, one per statistic that exists for one model and not the other (or neither)."""
    out = []
    for stat in dict.fromkeys(profile_a.stat_names + profile_b.stat_names):
        in_a, in_b = profile_a.exists(stat), profile_b.exists(stat)
        if in_a and in_b:
            continue
        if not in_a and not in_b:
            out.append(f"{stat} does not exist for either model.")
        else:
            missing, has = (name_b, name_a) if in_a else (name_a, name_b)
            why = ("it is a statistic of generated answer tokens, and this model classifies" if stat in ANSWER_STATS
                   else "it applies to none of its attention kinds: they lack the tokens it needs, or their keys are "
                        "all target tokens so it is constant")
            out.append(f"{stat} does not exist for {missing} ({why}); only {has} is shown.")
    return out


# ---- per-example helpers -------------------------------------------------------------------------
def overlay_kind(kinds: Iterable[str]) -> str | None:
    """The kind whose rows go from text to image: cross_l2v (dual-stream) or self (single-stream)."""
    kinds = list(kinds)
    for k in OVERLAY_KINDS:
        if k in kinds:
            return k
    return None


def _word(token: str) -> str:
    """A text token as a word to match across tokenizers: without a SentencePiece ("\u2581") or byte-BPE
    ("\u0120") word-start marker, stripped before lower-casing (which would turn "\u0120" into "\u0121"),
    then lower case; WordPiece's "##" is kept."""
    return token.lstrip("\u2581\u0120").lower()


def common_words(tokens_a: Sequence[str], modality_a: Sequence[str], tokens_b: Sequence[str],
                 modality_b: Sequence[str]) -> list[str]:
    """Text tokens present in both token lists, in A's order (matched by ``_word``)."""
    in_b = {_word(t) for t, m in zip(tokens_b, modality_b) if m == "text"}
    return list(dict.fromkeys(_word(t) for t, m in zip(tokens_a, modality_a) if m == "text" and _word(t) in in_b))


def word_token(tokens: Sequence[str], modality: Sequence[str], word: str) -> int | None:
    """Index of the first text token that is ``word`` (matched by ``_word``)."""
    for i, (t, m) in enumerate(zip(tokens, modality)):
        if m == "text" and _word(t) == _word(word):
            return i
    return None


def word_to_image_row(attention: np.ndarray, query_index: np.ndarray, key_index: np.ndarray,
                      modality: Sequence[str], token: int) -> tuple[np.ndarray, np.ndarray]:
    """One token's attention over the image tokens, mean over heads.

    attention: (head, query, key) of one layer. Returns (image token indices, weights). The
    weights are the raw softmax mass on each image key (not renormalised), so two models'
    overlays show how much each actually sends to the image.
    """
    att = np.asarray(attention, dtype=np.float64)
    q = np.flatnonzero(np.asarray(query_index) == token)
    if len(q) == 0:
        raise ValueError(f"token {token} is not a query of this attention kind")
    row = att[:, q[0], :].mean(axis=0)
    mod = np.asarray(modality)[np.asarray(key_index)]
    keep = mod == "image"
    return np.asarray(key_index)[keep], row[keep]
