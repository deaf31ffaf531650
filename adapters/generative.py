"""What generative (decoder) vision-language adapters share: greedy answers, layer-by-layer capture
of the language model's attention, and the Record of a prompt followed by its generated answer.

How a generated answer is recorded (adapters/llava.py and later families):

1. ``greedy_answer``: greedy decoding with the model's KV cache, up to a token limit, stopping at
   an end-of-sequence token; each generated token keeps the probability it had when chosen.
2. ``LayerCapture``: one causal forward over prompt + generated tokens with a hook on every
   decoder layer's attention. A causal forward gives every position the same row over the
   earlier tokens as the decoding step that computed it (tests/test_llava.py checks this against
   ``generate(output_attentions=True)``), so the rows of the generated tokens are the rows they had
   as they were generated; the row of position ``i`` produced token ``i + 1``. Each hook reduces its
   layer's full (head, query, key) map at once (keeps the chosen query rows, hands the full map to
   an observer, e.g. head statistics) and drops it: peak memory holds one layer's maps, not all.
3. ``generative_record``: the Record with a ``role`` coordinate ("prompt" / "answer"), one ``self``
   attention kind whose rows are the kept queries over every key (causal: zeros after the query),
   and the language model's hidden states of every token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from adapters.base import display_copy, stack_layers
from core.errors import AdapterError
from core.ids import example_id_of
from store.schema import AttentionBlock, HiddenBlock, Prediction, Record

# Which query rows a recording keeps: every non-image token (question words, template and special
# tokens, the generated answer) by default; "all" keeps the image rows too (the full maps).
ATTENTION_ROWS = ("language", "all")

# observer(layer, values, modality, grid, role): one decoder layer's full map (head, token, token)
# float32 over every token of the record, with the tokens' modality (token,), grid (token, 2) and
# role (token,) ("prompt" / "answer").
LayerObserver = Callable[[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


@dataclass(frozen=True, kw_only=True)
class GeneratedAnswer:
    """Greedy decoding's output: the generated token ids, each with its probability when chosen."""

    token_ids: tuple[int, ...]
    token_probabilities: tuple[float, ...]
    stopped: bool  # True when it ended on an end-of-sequence token, False at the token limit

    @property
    def probability(self) -> float:
        return float(np.prod(self.token_probabilities)) if self.token_probabilities else 1.0


def greedy_answer(model, inputs: dict, *, max_new_tokens: int, eos_ids: Sequence[int], pad_id: int | None) -> GeneratedAnswer:
    """Greedy decoding of a batch of one (``inputs``: the model's keyword tensors for the prompt)."""
    import torch

    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             eos_token_id=list(eos_ids), pad_token_id=pad_id, output_logits=True,
                             return_dict_in_generate=True, temperature=None, top_p=None, top_k=None)
    n_prompt = inputs["input_ids"].shape[1]
    ids = out.sequences[0, n_prompt:].tolist()
    probs = [float(torch.softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, ids)]
    stopped = bool(ids) and ids[-1] in set(eos_ids)
    return GeneratedAnswer(token_ids=tuple(ids), token_probabilities=tuple(probs), stopped=stopped)


class LayerCapture:
    """Forward hooks on decoder attention modules (eager: they return their weights), as a context.

    For each layer, as soon as it has run: keeps ``values[:, query_index, :]`` (float16) and calls
    ``observer`` with the full map; the full map itself is not kept.
    """

    def __init__(self, attention_modules: Sequence, *, query_index: np.ndarray, modality: np.ndarray,
                 grid: np.ndarray, role: np.ndarray, observer: LayerObserver | None = None):
        self.modules = list(attention_modules)
        self.query_index = np.asarray(query_index)
        self.modality, self.grid, self.role = modality, grid, role
        self.observer = observer
        self.rows: list = [None] * len(self.modules)  # per layer (head, query, key) float16 tensors
        self._handles: list = []

    def __enter__(self) -> "LayerCapture":
        for i, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, layer: int):
        import torch

        q = torch.as_tensor(self.query_index, dtype=torch.long)

        def hook(_module, _args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise AdapterError("the attention layer returned no weights: load the model with "
                                   "attn_implementation='eager' (SDPA / flash attention return none)")
            full = weights[0].detach()  # (head, token, token)
            self.rows[layer] = full[:, q.to(full.device), :].to(torch.float16).cpu()
            if self.observer is not None:
                self.observer(layer, full.float().cpu().numpy(), self.modality, self.grid, self.role)

        return hook

    def attention(self) -> np.ndarray:
        """(layer, head, query, key) float16 of the kept rows."""
        import torch

        if any(r is None for r in self.rows):
            raise AdapterError("internal: a decoder layer's attention was not captured")
        return torch.stack(self.rows).numpy()


def query_rows(modality: Sequence[str], rows: str) -> np.ndarray:
    """Token indices whose attention rows a recording keeps (see ``ATTENTION_ROWS``)."""
    if rows not in ATTENTION_ROWS:
        raise AdapterError(f"attention rows must be one of {', '.join(ATTENTION_ROWS)}, not {rows!r}")
    keep = [i for i, m in enumerate(modality) if rows == "all" or m != "image"]
    return np.asarray(keep, dtype=np.int64)


def generative_record(*, image: Image.Image, question: str, tokens: list[str], modality: list[str],
                      role: list[str], token_boxes: np.ndarray, token_grid: np.ndarray, token_spans: np.ndarray,
                      attention: np.ndarray, query_index: np.ndarray, hidden_states, answer_text: str,
                      answer: GeneratedAnswer, label: str | None, source_key: str | None, notices, meta: dict) -> Record:
    """The Record of a prompt and its generated answer (see the module docstring).

    ``attention``: (layer, head, query, key) rows of the ``query_index`` tokens over all N tokens;
    ``hidden_states``: the language model's per-layer outputs, each (1, N, dim).
    """
    n = len(tokens)
    if attention.shape[-1] != n:
        raise AdapterError(f"internal: {attention.shape[-1]} attention positions for {n} tokens")
    idx = np.arange(n)
    return Record(
        example_id=example_id_of(image, question), question=question, tokens=tuple(tokens),
        modality=tuple(modality), role=tuple(role), token_boxes=token_boxes, token_grid=token_grid,
        token_spans=token_spans, image=display_copy(image),
        attention={"self": AttentionBlock(values=attention, query_index=query_index, key_index=idx)},
        hidden={"joint": HiddenBlock(values=stack_layers(hidden_states), token_index=idx)},
        prediction=Prediction(answers=(answer_text,), probabilities=(min(1.0, answer.probability),),
                              token_probabilities=answer.token_probabilities),
        label=label, source_key=source_key, notices=tuple(notices), meta=meta,
    )
