"""Head statistics computed layer by layer from full attention maps, while a model records.

A generative model's Record keeps only some query rows (adapters/generative.py: the text and
answer queries), so statistics of image queries (image -> text, image -> image) cannot come from
the Record afterwards. ``FullMapHeadStats`` is the adapter's layer observer: it gets each decoder
layer's full (head, token, token) map as the layer runs, computes every statistic of
analysis/head_stats.py on it (the same definitions, so the numbers match a Record that kept every
row) and keeps only the (stat, head) result.

Two statistics only a generative record has, of the generated answer: for each generated token,
the attention of the decoding step that generated it (the row of the token before it) on the image
tokens (``answer_to_image``) and on the question's words (``answer_to_question``), averaged over
the generated tokens.
"""
from __future__ import annotations

import numpy as np

from analysis.head_stats import HEAD_STATS, HeadStats, StatFn, StatInput, nan_where_not_applicable


# The statistics of a generated answer (``answer_stats``), after the built-in ones in a generative record.
ANSWER_STATS = ("answer_to_image", "answer_to_question")


class FullMapHeadStats:
    """A layer observer: ``observer(layer, values (head, N, N), modality (N,), grid (N, 2), role (N,))``."""

    def __init__(self, stats: dict[str, StatFn] | None = None, *, kind: str = "self"):
        self.stats = HEAD_STATS if stats is None else stats
        self.kind = kind  # the attention kind the maps are (generative models: one joint "self")
        self.layers: dict[int, np.ndarray] = {}  # layer -> (stat, head)
        self.names: tuple[str, ...] = tuple(self.stats)

    def __call__(self, layer: int, values: np.ndarray, modality: np.ndarray, grid: np.ndarray,
                 role: np.ndarray | None = None) -> None:
        idx = np.arange(values.shape[-1])
        inp = StatInput(values=np.asarray(values, np.float32)[None], query_modality=np.asarray(modality),
                        key_modality=np.asarray(modality), query_token=idx, key_token=idx,
                        query_grid=np.asarray(grid), key_grid=np.asarray(grid), kind=self.kind)
        rows = [np.asarray(fn(inp), np.float32)[0] for fn in self.stats.values()]
        answer = answer_stats(values, np.asarray(modality), role)
        self.names = tuple(self.stats) + tuple(answer)
        self.layers[layer] = np.stack(rows + list(answer.values()))

    def result(self) -> dict[str, HeadStats]:
        """{kind: HeadStats (stat, layer, head)} over the layers observed, in layer order, with the
        same not-applicable rule as ``compute_head_stats``."""
        if not self.layers:
            raise ValueError("no layer was observed")
        values = np.stack([self.layers[k] for k in sorted(self.layers)], axis=1)
        reasons = nan_where_not_applicable(values, self.kind, self.stats)
        return {self.kind: HeadStats(names=self.names, values=values, not_applicable=reasons)}


def answer_stats(values: np.ndarray, modality: np.ndarray, role: np.ndarray | None) -> dict[str, np.ndarray]:
    """{"answer_to_image", "answer_to_question"} -> (head,) of one layer's full map (head, N, N);
    empty without answer tokens."""
    return answer_stats_of_rows(values, np.arange(np.asarray(values).shape[-2]), modality, role)


def answer_stats_of_rows(rows: np.ndarray, query_index: np.ndarray, modality: np.ndarray,
                         role: np.ndarray | None) -> dict[str, np.ndarray]:
    """``answer_stats`` from recorded rows (..., head, query, key) of the ``query_index`` tokens over
    every token: (..., head) each; empty without answer tokens or when a generating row is missing."""
    if role is None or "answer" not in set(np.asarray(role).tolist()):
        return {}
    role, modality = np.asarray(role), np.asarray(modality)
    position = {int(t): p for p, t in enumerate(np.asarray(query_index))}
    generating = [position.get(int(t) - 1) for t in np.flatnonzero(role == "answer")]  # the row that produced each
    if any(p is None for p in generating):
        return {}
    picked = np.asarray(rows, np.float32)[..., generating, :]  # (..., head, answer, key)
    image = modality == "image"
    question = (modality == "text") & (role == "prompt")
    return {"answer_to_image": picked[..., image].sum(-1).mean(-1),
            "answer_to_question": picked[..., question].sum(-1).mean(-1)}
