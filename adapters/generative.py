"""What generative (decoder) vision-language adapters share: greedy answers, layer-by-layer capture
of the language model's attention, and the Record of a prompt followed by its generated answer.

``GenerativeAdapter`` is the base of every generative family (adapters/llava.py, adapters/idefics3.py,
...): a family supplies its geometry and a few named hooks (see the class docstring).

How a generated answer is recorded:

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
   and the language model's hidden states of every token. Chosen layers and heads
   (``set_full_attention``, ``cli.py record --full-layers / --full-heads``) also keep every query
   row, image tokens' too, as the Record's ``full_attention`` (store/schema.py: FullAttention).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
from PIL import Image

from adapters.base import Adapter, display_copy, probabilities_by_rule, stack_layers
from adapters.generative_attribution import GenerativeAttribution
from adapters.inputs import check_image, check_question
from adapters.loading import checkpoint_info, load_error, resolve_device, resolve_source
from core.errors import AdapterError
from core.ids import example_id_of
from store.schema import AttentionBlock, FullAttention, HiddenBlock, Prediction, Record

# Which query rows a recording keeps: every non-image token (question words, template and special
# tokens, the generated answer) by default; "all" keeps the image rows too (the full maps).
ATTENTION_ROWS = ("language", "all")
DEFAULT_MAX_NEW_TOKENS = 16

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
                 grid: np.ndarray, role: np.ndarray, observer: LayerObserver | None = None,
                 full_layers: Sequence[int] = (), full_heads: Sequence[int] = ()):
        self.modules = list(attention_modules)
        self.query_index = np.asarray(query_index)
        self.modality, self.grid, self.role = modality, grid, role
        self.observer = observer
        self.rows: list = [None] * len(self.modules)  # per layer (head, query, key) float16 tensors
        # every query row of these layers x heads too (head, token, token) float16, by layer
        self.full_layers, self.full_heads = tuple(full_layers), tuple(full_heads)
        self.full: dict = {}
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
            if layer in self.full_layers:
                self.full[layer] = full[list(self.full_heads)].to(torch.float16).cpu()
            if self.observer is not None:
                self.observer(layer, full.float().cpu().numpy(), self.modality, self.grid, self.role)

        return hook

    def attention(self) -> np.ndarray:
        """(layer, head, query, key) float16 of the kept rows."""
        import torch

        if any(r is None for r in self.rows):
            raise AdapterError("internal: a decoder layer's attention was not captured")
        return torch.stack(self.rows).numpy()

    def full_attention(self) -> FullAttention | None:
        """Every query row of the full layers x heads (None when there are none)."""
        import torch

        if not self.full_layers:
            return None
        if set(self.full) != set(self.full_layers):
            raise AdapterError("internal: a full layer's attention was not captured")
        values = torch.stack([self.full[layer] for layer in self.full_layers]).numpy()
        every = np.arange(values.shape[-1])
        return FullAttention(block=AttentionBlock(values=values, query_index=every, key_index=every),
                             layers=self.full_layers, heads=self.full_heads)


def resolved_positions(name: str, positions: Sequence[int], size: int) -> tuple[int, ...]:
    """``positions`` in [0, size), negative ones counted from the end (-1: the last), sorted and
    distinct; one outside is a one-line AdapterError."""
    out = set()
    for p in positions:
        if not -size <= int(p) < size:
            raise AdapterError(f"{name}: {p} is outside the model's {size} (0..{size - 1}, or -{size}..-1 from the end)")
        out.add(int(p) % size)
    return tuple(sorted(out))


def query_rows(modality: Sequence[str], rows: str) -> np.ndarray:
    """Token indices whose attention rows a recording keeps (see ``ATTENTION_ROWS``)."""
    if rows not in ATTENTION_ROWS:
        raise AdapterError(f"attention rows must be one of {', '.join(ATTENTION_ROWS)}, not {rows!r}")
    keep = [i for i, m in enumerate(modality) if rows == "all" or m != "image"]
    return np.asarray(keep, dtype=np.int64)


def generative_record(*, image: Image.Image, question: str, tokens: list[str], modality: list[str],
                      role: list[str], token_boxes: np.ndarray, token_grid: np.ndarray, token_spans: np.ndarray,
                      attention: np.ndarray, query_index: np.ndarray, hidden_states, answer_text: str,
                      answer: GeneratedAnswer, label: str | None, source_key: str | None, notices, meta: dict,
                      full_attention: FullAttention | None = None) -> Record:
    """The Record of a prompt and its generated answer (see the module docstring).

    ``attention``: (layer, head, query, key) rows of the ``query_index`` tokens over all N tokens;
    ``hidden_states``: the language model's per-layer outputs, each (1, N, dim); ``full_attention``:
    every row of chosen layers x heads of the ``self`` kind.
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
        full_attention={"self": full_attention} if full_attention is not None else {},
    )


def _as_ids(value) -> tuple[int, ...]:
    """A config's token id field (None, one id or a list of them) as a tuple."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


@dataclass(frozen=True, kw_only=True)
class GenerativePrompt:
    """An encoded prompt: model inputs and the record coordinates of its N tokens."""

    inputs: dict  # input_ids, attention_mask (1, N) and the family's image inputs (``image_input_names``)
    tokens: list
    modality: list
    boxes: np.ndarray  # (N, 4)
    grid: np.ndarray  # (N, 2)
    spans: np.ndarray  # (N, 2)
    notices: list

    def image_inputs(self, names: Sequence[str]) -> dict:
        return {k: self.inputs[k] for k in names}


@dataclass(frozen=True, kw_only=True)
class PromptCoordinates:
    """Per-token record coordinates of a prompt of N tokens, filled by the text pass and then by
    the family's image hook (``GenerativeAdapter._place_image_tokens``), which writes its tokens in place."""

    tokens: list  # (N,) token strings
    modality: list  # (N,) "text" / "image" / "special"
    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1 in 0..1 of the source image; NaN off the image
    grid: np.ndarray  # (N, 2) row, col; -1 off the image
    spans: np.ndarray  # (N, 2) character span in the question; -1 off it


class GenerativeAdapter(GenerativeAttribution, Adapter):
    """What every generative (decoder) family shares: the prompt, question truncation, greedy answers,
    the recording (module docstring), batches for training and batched answers, saving.

    A family sets the class attributes and implements the hooks marked "family hook" below:
    ``_read_config`` (its config fields), ``_place_image_tokens`` (image token geometry),
    ``_n_image_tokens`` / ``_max_image_tokens``, ``decoder_layers``, ``projector``,
    ``_image_features``; and overrides ``_expanded_prompt_text`` when the processor expands its image
    placeholder into more than ``n`` copies of ``image_token`` (tile markers and the like).
    Attribution methods (a mixin, adapters/generative_attribution.py) reach the model through
    ``input_embeddings``, ``patch_embedding`` and the record's token boxes.
    """

    architecture = "generative"
    probability_rule = "softmax"  # over the vocabulary: the next token's probabilities
    # transformers classes ``load`` uses (names in transformers' top-level namespace)
    model_class: ClassVar[str]
    processor_class: ClassVar[str]
    # keys of the processor's output that carry the image to the model (besides input_ids / attention_mask)
    image_input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    # the prompt for checkpoints that ship no chat template ("<image>" stands for the image placeholder)
    fallback_template: ClassVar[str] = "USER: <image>\n{question} ASSISTANT:"

    def __init__(self, model, processor, model_id: str, device: str = "cpu", *,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, attention_rows: str = "language"):
        if attention_rows not in ATTENTION_ROWS:
            raise AdapterError(f"attention rows must be one of {', '.join(ATTENTION_ROWS)}")
        device = resolve_device(device)  # "auto" -> a GPU when one is visible
        self.model = model.eval().to(device)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.model_id = model_id
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.attention_rows = attention_rows
        self.full_layers: tuple[int, ...] = ()  # layers x heads recorded with every query row (set_full_attention)
        self.full_heads: tuple[int, ...] = ()
        cfg = model.config
        self.image_token_id = int(cfg.image_token_id)
        self.context = int(getattr(cfg.text_config, "max_position_embeddings", 0) or 2048)
        eos = cfg.text_config.eos_token_id if cfg.text_config.eos_token_id is not None else self.tokenizer.eos_token_id
        # The config's end token first (what training appends), then any other the checkpoint's generation
        # config stops at (Qwen2-VL: <|im_end|>, then <|endoftext|>).
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos_ids = tuple(dict.fromkeys(int(i) for i in (*_as_ids(eos), *_as_ids(gen_eos))))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._read_config(cfg)
        self._fixed_tokens = self._count_fixed_tokens()
        # Text and answer tokens one example may hold: the context minus image and template tokens.
        self.max_text_tokens = max(1, self.context - self._fixed_tokens)

    # ---- family hooks ------------------------------------------------------------------------------
    def _read_config(self, cfg) -> None:
        """Family hook: read the config fields the geometry needs (patch size, ...)."""

    def _place_image_tokens(self, image: Image.Image, ids: list[int], coords: PromptCoordinates, enc) -> None:
        """Family hook: name the image-placeholder tokens of ``ids`` and write their modality, box and
        grid into ``coords`` (in place); ``enc``: the processor's output for this prompt."""
        raise NotImplementedError

    def _n_image_tokens(self, image: Image.Image) -> int:
        """Family hook: how many ``image_token`` placeholders the processor puts in for ``image``."""
        raise NotImplementedError

    def _max_image_tokens(self) -> int:
        """Family hook: the most image-related prompt tokens one image takes (for the context budget)."""
        raise NotImplementedError

    def decoder_layers(self) -> list:
        """Family hook: the language model's decoder layers, in order (each has ``self_attn``)."""
        raise NotImplementedError

    def projector(self):
        """Family hook: the module that maps vision features into the language model (trained by default)."""
        raise NotImplementedError

    def _image_features(self, image_inputs: dict) -> list:
        """Family hook: per distinct image of ``image_inputs`` (the image processor's tensors), its
        (image tokens, dim) features in the order of its placeholders."""
        raise NotImplementedError

    def patch_embedding(self):
        """The vision tower's patch-embedding module (its output: one vector per vision patch)."""
        raise NotImplementedError(f"{self.name}: no patch embedding hook")

    def input_embeddings(self):
        """The language model's token embedding module."""
        return self.model.get_input_embeddings()

    def _config_extra(self) -> dict:
        """Family fields of ``config_summary``."""
        return {}

    def _meta_extra(self, image: Image.Image) -> dict:
        """Family fields of a record's ``meta``."""
        return {}

    def _extra_model_inputs(self, input_ids) -> dict:
        """Family hook: model inputs derived from a batch of prompt ids besides the image's (e.g.
        Qwen2-VL's ``mm_token_type_ids``), for generate and the prompt's inputs."""
        return {}

    def _sequence_inputs(self, ids, prompt: GenerativePrompt) -> dict:
        """Model inputs for the recording's one causal forward over prompt + generated tokens
        (``ids``, (1, N)); a family overrides it when the model needs more (rotary positions...)."""
        import torch

        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **prompt.image_inputs(self.image_input_names)}

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def _model_classes(cls, source: str):
        """(model class, processor class) for a checkpoint (a family may pick by its model_type)."""
        import transformers

        return getattr(transformers, cls.model_class), getattr(transformers, cls.processor_class)

    @classmethod
    def load(cls, source: str | Path | None = None, *, device: str = "cpu") -> "GenerativeAdapter":
        src, local = resolve_source(source or cls.default_source)
        try:
            model_cls, processor_cls = cls._model_classes(src)
            # eager: SDPA / flash attention compute no attention weights to record
            model = model_cls.from_pretrained(src, attn_implementation="eager")
            processor = processor_cls.from_pretrained(src)
        except (OSError, ValueError, EnvironmentError) as e:
            raise load_error(str(source), e) from e
        model_id = Path(src).name if local else src
        adapter = cls(model, processor, model_id=model_id, device=device)
        adapter.checkpoint = checkpoint_info(src, local, model.config)
        return adapter

    def set_full_attention(self, layers: Sequence[int], heads: Sequence[int] | None = None) -> None:
        """Record every query row (image tokens' too) of these decoder ``layers`` and ``heads`` (None:
        every head) besides the ``attention_rows``; negative positions count from the end."""
        t = self.model.config.text_config
        self.full_layers = resolved_positions("full layers", layers, len(self.decoder_layers()))
        heads = range(t.num_attention_heads) if heads is None else heads
        self.full_heads = resolved_positions("full heads", heads, t.num_attention_heads) if self.full_layers else ()

    def answers(self) -> list[str]:
        """A generative model has no answer list: it writes its answer (open vocabulary)."""
        return []

    def answer_probabilities(self, logits):
        """(batch, vocabulary) next-token logits -> probabilities (what greedy decoding picks from)."""
        return probabilities_by_rule(logits, self.probability_rule)

    def config_summary(self) -> dict:
        t = self.model.config.text_config
        return {"layers": t.num_hidden_layers, "heads": t.num_attention_heads, "hidden": t.hidden_size,
                "vision_layers": self.model.config.vision_config.num_hidden_layers, **self._config_extra(),
                "context": self.context, "max_text_tokens": self.max_text_tokens,
                "max_new_tokens": self.max_new_tokens, "attention_rows": self.attention_rows,
                **self._full_attention_meta(),
                "attention": "eager (SDPA and flash attention return no weights)",
                "hidden_last": "last decoder layer's output (language model)",
                "probability": "product of the generated tokens' probabilities (greedy decoding)"}

    def _full_attention_meta(self) -> dict:
        if not self.full_layers:
            return {}
        return {"full_layers": list(self.full_layers), "full_heads": list(self.full_heads)}

    # ---- prompt ----------------------------------------------------------------------------------
    def _prompt_text(self, question: str) -> str:
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.fallback_template.format(question=question).replace("<image>", self.processor.image_token)

    def _expanded_prompt_text(self, prompt: str, image: Image.Image) -> str:
        """``prompt`` as the processor expands it for ``image`` (what its token offsets refer to)."""
        token = self.processor.image_token
        return prompt.replace(token, token * self._n_image_tokens(image))

    def _count_fixed_tokens(self) -> int:
        """Tokens of a prompt that are not the question: image tokens plus the template's."""
        probe = "what"
        with_q = len(self.tokenizer(self._prompt_text(probe), add_special_tokens=False)["input_ids"])
        alone = len(self.tokenizer(probe, add_special_tokens=False)["input_ids"])
        return with_q - alone - 1 + self._max_image_tokens()  # the unexpanded prompt holds one image placeholder

    def _truncate(self, question: str) -> tuple[str, list[str]]:
        """The part of the question that fits the context with room for the answer, and notices."""
        limit = max(1, self.max_text_tokens - self.max_new_tokens)
        enc = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        notices = []
        unk = self.tokenizer.unk_token_id
        if ids and unk is not None and all(i == unk for i in ids):
            notices.append("none of the question's words are in this model's vocabulary (all unknown)")
        if len(ids) <= limit:
            return question, notices
        notices.append(f"question truncated: {len(ids)} tokens, this model reads at most {limit} beside the image "
                       f"and its answer; words after the cut were ignored")
        return question[:offsets[limit - 1][1]], notices

    def _encode(self, image: Image.Image, question: str) -> tuple[Image.Image, str, GenerativePrompt]:
        image = check_image(image)
        question = check_question(question)
        kept, notices = self._truncate(question)
        prompt = self._prompt_text(kept)
        enc = self.processor(images=image, text=prompt, return_tensors="pt", return_offsets_mapping=True)
        ids = enc["input_ids"][0].tolist()
        # Offsets are in the prompt as the processor expanded it (its image placeholders written out).
        q_start = self._expanded_prompt_text(prompt, image).rfind(kept)
        coords = self._text_coordinates(ids, enc["offset_mapping"][0].tolist(), q_start, len(kept))
        self._place_image_tokens(image, ids, coords, enc)
        inputs = {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask", *self.image_input_names)}
        inputs.update(self._extra_model_inputs(inputs["input_ids"]))
        return image, question, GenerativePrompt(inputs=inputs, tokens=coords.tokens, modality=coords.modality,
                                                 boxes=coords.boxes, grid=coords.grid, spans=coords.spans,
                                                 notices=notices)

    def _text_coordinates(self, ids: list[int], offsets: list, q_start: int, q_len: int) -> PromptCoordinates:
        """Every token special except the question's words: tokens inside the question's characters."""
        n = len(ids)
        coords = PromptCoordinates(tokens=self.tokenizer.convert_ids_to_tokens(ids), modality=["special"] * n,
                                   boxes=np.full((n, 4), np.nan, np.float32), grid=np.full((n, 2), -1, np.int32),
                                   spans=np.full((n, 2), -1, np.int32))
        for i, (s, e) in enumerate(offsets):
            if ids[i] != self.image_token_id and q_start >= 0 and e > s and s >= q_start and e <= q_start + q_len:
                coords.modality[i], coords.spans[i] = "text", (s - q_start, e - q_start)
        return coords

    # ---- the contract ----------------------------------------------------------------------------
    def _special_ids(self) -> set[int]:
        """Ids of the tokenizer's special tokens, added ones included (a processor may register its
        markers as added special tokens without listing them among ``all_special_ids``)."""
        added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
        return set(self.tokenizer.all_special_ids) | {int(i) for i, t in added.items() if getattr(t, "special", False)}

    def _answer_token_labels(self, token_ids) -> tuple[list[str], list[str]]:
        """Record token strings and modalities ("text" / "special") of answer token ids.

        A checkpoint's embedding is often wider than its tokenizer (Qwen2-VL: 151,936 rows): an id
        past the tokenizer has no string; it is a special token "<id N>"."""
        specials = self._special_ids()
        strings = self.tokenizer.convert_ids_to_tokens(list(token_ids))
        tokens = [f"<id {i}>" if s is None else s for i, s in zip(token_ids, strings)]
        modality = ["special" if i in specials or s is None else "text" for i, s in zip(token_ids, strings)]
        return tokens, modality

    def _answer_text(self, token_ids) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()

    def _generate(self, prompt: GenerativePrompt) -> GeneratedAnswer:
        return greedy_answer(self.model, prompt.inputs, max_new_tokens=self.max_new_tokens, eos_ids=self.eos_ids,
                             pad_id=self.pad_id)

    def predict(self, image: Image.Image, question: str, *, top_k: int = 5) -> Prediction:
        """The generated answer (one: ``top_k`` does not apply to a generated text)."""
        _, _, prompt = self._encode(image, question)
        answer = self._generate(prompt)
        return Prediction(answers=(self._answer_text(answer.token_ids),), probabilities=(min(1.0, answer.probability),),
                          token_probabilities=answer.token_probabilities)

    def run(self, image: Image.Image, question: str, *, top_k: int = 5, label: str | None = None,
            source_key: str | None = None, layer_observer: LayerObserver | None = None) -> Record:
        """Generate the answer, then capture the language model's attention layer by layer over
        prompt + answer (module docstring). ``layer_observer`` sees each layer's full map."""
        import torch

        rgb, q, prompt = self._encode(image, question)
        answer = self._generate(prompt)
        gen = list(answer.token_ids)
        answer_tokens, answer_modality = self._answer_token_labels(gen)
        tokens = prompt.tokens + answer_tokens
        modality = prompt.modality + answer_modality
        role = ["prompt"] * len(prompt.tokens) + ["answer"] * len(gen)
        n_gen = len(gen)
        boxes = np.concatenate([prompt.boxes, np.full((n_gen, 4), np.nan, np.float32)])
        grid = np.concatenate([prompt.grid, np.full((n_gen, 2), -1, np.int32)])
        spans = np.concatenate([prompt.spans, np.full((n_gen, 2), -1, np.int32)])
        ids = torch.cat([prompt.inputs["input_ids"], torch.tensor([gen], dtype=torch.long, device=self.device)], 1)
        qidx = query_rows(modality, self.attention_rows)
        with torch.no_grad(), LayerCapture([layer.self_attn for layer in self.decoder_layers()], query_index=qidx,
                                           modality=np.asarray(modality), grid=grid, role=np.asarray(role),
                                           observer=layer_observer, full_layers=self.full_layers,
                                           full_heads=self.full_heads) as cap:
            out = self.model(**self._sequence_inputs(ids, prompt), output_hidden_states=True, use_cache=False)
        notices = list(prompt.notices)
        if not answer.stopped:
            notices.append(f"answer cut at {self.max_new_tokens} tokens (no end-of-sequence token before the limit)")
        return generative_record(
            image=rgb, question=q, tokens=tokens, modality=modality, role=role, token_boxes=boxes, token_grid=grid,
            token_spans=spans, attention=cap.attention(), query_index=qidx, hidden_states=out.hidden_states,
            answer_text=self._answer_text(gen), answer=answer, label=label, source_key=source_key, notices=notices,
            full_attention=cap.full_attention(),
            meta={"model_id": self.model_id, "adapter": self.name, "adapter_version": self.version,
                  "image_size": [rgb.width, rgb.height], **self._meta_extra(rgb),
                  "attention_rows": self.attention_rows, **self._full_attention_meta(),
                  "attention_implementation": "eager",
                  "answer_rows": "the row of token i is its causal row as a query; the row of token i-1 is the one "
                                 "that generated token i"},
        )

    # ---- batches: training (language-model loss on the answer tokens) and batched answers --------
    def _expanded_prompts(self, images: list[Image.Image], questions: list[str]):
        """Checked images, and each prompt's token ids with its image placeholder expanded."""
        imgs = [check_image(im) for im in images]
        texts = [self._expanded_prompt_text(self._prompt_text(self._truncate(check_question(q))[0]), im)
                 for im, q in zip(imgs, questions)]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return imgs, ids

    def _pixels(self, images: list[Image.Image]) -> dict:
        """The image processor's tensors (``image_input_names``) for ``images``, on the device."""
        out = self.image_processor(images, return_tensors="pt")
        return {k: out[k].to(self.device) for k in self.image_input_names}

    def _distinct_pixels(self, images: list[Image.Image]) -> tuple[dict, "torch.Tensor"]:
        """Pixels of each distinct image object once, and each example's index into them (a
        training batch holds several questions per image: the vision tower then runs once each)."""
        import torch

        first: dict[int, int] = {}
        index = [first.setdefault(id(im), len(first)) for im in images]
        distinct = list({id(im): im for im in images}.values())
        return self._pixels(distinct), torch.tensor(index, dtype=torch.long, device=self.device)

    def encode_batch(self, images: list[Image.Image], questions: list[str], answers: list[str] | None = None) -> dict:
        """Right-padded prompts, followed by each answer and an end-of-sequence token when ``answers``
        is given; ``labels`` then holds the answer tokens' ids and -100 everywhere else."""
        import torch

        imgs, prompts = self._expanded_prompts(images, questions)
        seqs, labels = [], []
        if answers is None:
            seqs, labels = prompts, [[-100] * len(p) for p in prompts]
        else:
            answer_ids = self.tokenizer([str(a) for a in answers], add_special_tokens=False)["input_ids"]
            for p, a in zip(prompts, answer_ids):
                a = list(a) + [self.eos_ids[0]]
                seqs.append(p + a)
                labels.append([-100] * len(p) + a)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        lab = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, lb) in enumerate(zip(seqs, labels)):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
            lab[i, :len(lb)] = torch.tensor(lb)
        pixels, image_index = self._distinct_pixels(images)  # by object identity: before any copy
        out = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device), **pixels,
               "image_index": image_index}
        if answers is not None:
            out["labels"] = lab.to(self.device)
        return out

    def answer_loss(self, inputs: dict):
        """Mean cross-entropy of the answer tokens (``labels`` of ``encode_batch``), next-token style."""
        return self.model(**self._with_image_features(inputs), use_cache=False).loss

    def next_token_logits(self, **inputs):
        """(batch, vocabulary) logits of the token after each prompt of ``encode_batch`` (without
        answers): what the first answer token is chosen from. ``forward_logits`` of such inputs
        (adapters/generative_attribution.py: with a spec's teacher-forced answers, their token scores)."""
        import torch

        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        logits = self.model(**self._with_image_features(inputs), use_cache=False).logits
        last = inputs["attention_mask"].sum(1) - 1  # right padding: each prompt's last token
        return logits[torch.arange(len(last), device=logits.device), last]

    def _with_image_features(self, inputs: dict) -> dict:
        """``inputs`` with the image features put in place as input embeddings: one vision tower
        run per distinct image (``image_index`` maps examples to them)."""
        ids = inputs["input_ids"]
        embeds = self._embed_with_images(ids, ids == self.image_token_id,
                                         {k: inputs[k] for k in self.image_input_names}, inputs["image_index"])
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "image_index", *self.image_input_names)}
        return {"inputs_embeds": embeds, **rest}

    def _embed_with_images(self, ids, image_mask, image_inputs: dict, image_index):
        """Token embeddings of ``ids`` (B, T) with the image features in place where ``image_mask`` (B, T)
        is true; ``image_index`` (one per row) picks each row's image among ``image_inputs``' (None: in
        order). One vision tower run per distinct image."""
        import torch

        feats = self._image_features(image_inputs)
        if image_index is not None:
            feats = [feats[i] for i in image_index.tolist()]
        embeds = self.input_embeddings()(ids)
        mask = image_mask[..., None].expand_as(embeds)
        return embeds.masked_scatter(mask, torch.cat(feats).to(embeds.dtype))

    def generate_batch(self, images: list[Image.Image], questions: list[str]) -> list[str]:
        """Greedy answers of a batch (left-padded prompts); the same texts as ``predict`` one by one."""
        import torch

        imgs, prompts = self._expanded_prompts(images, questions)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      **self._pixels(imgs), **self._extra_model_inputs(ids.to(self.device)),
                                      max_new_tokens=self.max_new_tokens, do_sample=False,
                                      num_beams=1, eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id,
                                      temperature=None, top_p=None, top_k=None)
        return [self._answer_text(row[width:].tolist()) for row in out]

    def trainable_parameters(self, full: bool = False) -> list:
        """Every weight, or (not ``full``) the projector and the language model's output layer."""
        if full:
            return list(self.model.parameters())
        return list(self.projector().parameters()) + list(self.model.lm_head.parameters())

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
