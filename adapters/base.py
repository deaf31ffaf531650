"""The Adapter contract: the only place that knows a model's quirks.

An adapter turns (image, question) into a ``Record`` (store/schema.py) with one forward pass,
and exposes what attribution methods (the analysis/attribution/ package) need, in model-independent
terms:

- ``attribution_spec(image, question)`` -> ``AttributionSpec``: the model inputs, baselines,
  and how positions of the attributed layers map to words and image regions;
- ``forward_logits(inputs)`` -> (batch, answers) differentiable logits, and
  ``answer_probabilities(logits)`` -> their probabilities by the rule the model was trained with
  (``probability_rule``: softmax for cross-entropy, sigmoid for VQA's binary cross-entropy);
- ``attribution_layers()`` -> {"text": module, "image": module} for LayerIntegratedGradients;
  ``layer_scores(name, attribution)`` reduces a layer attribution to one score per word / region;
- ``attention_probs(inputs)`` -> logits and every attention map, in the graph (for gradient-weighted
  relevance and rollout);
- ``occlude(inputs, spec, region_mask, word_mask)`` -> inputs with those regions / words replaced
  by their baseline (for occlusion and deletion curves).

Loading never passes ``trust_remote_code``. Models are put in eval mode.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from core.errors import AdapterError
from core.ids import example_id_of
from store.schema import AttentionBlock, HiddenBlock, Prediction, Record

# How answer logits become probabilities, named by the loss the answer head was trained with:
# "softmax" (cross-entropy, one answer per question: the answers' probabilities sum to 1) or
# "sigmoid" (VQA's binary cross-entropy on soft scores: each answer's probability on its own).
PROBABILITY_RULES = ("softmax", "sigmoid")


def probabilities_by_rule(logits, rule: str):
    """(batch, answers) logits -> (batch, answers) float32 probabilities, differentiable."""
    import torch

    if rule == "softmax":
        return torch.softmax(logits.float(), dim=-1)
    if rule == "sigmoid":
        return torch.sigmoid(logits.float())
    raise AdapterError(f"unknown probability rule {rule!r}; known: {', '.join(PROBABILITY_RULES)}")


def top_k_prediction(probabilities, answers: list[str], top_k: int) -> Prediction:
    """The Prediction of batch element 0: its ``top_k`` most probable answers, most probable first.

    ``probabilities`` (batch, answers) in ``answers`` order.
    """
    probs = probabilities.detach()[0]
    vals, idx = probs.topk(min(top_k, probs.numel()))
    # min(1, p): float rounding must not push a probability past 1 (Prediction validates 0..1)
    return Prediction(answers=tuple(answers[i] for i in idx.tolist()),
                      probabilities=tuple(min(1.0, float(v)) for v in vals))


def display_copy(image: Image.Image, max_side: int = 384) -> np.ndarray:
    """A (y, x, 3) uint8 copy for the store: boxes are fractions, so any resolution overlays."""
    rgb = image.convert("RGB")
    if max(rgb.size) > max_side:
        rgb = rgb.copy()
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).copy()


def stack_layers(tensors) -> np.ndarray:
    """Per-layer tensors of batch element 0, stacked on a new first axis, as a float16 array.

    The store keeps float16, so converting here costs nothing in precision, and torch converts
    about twice as fast as numpy (this conversion was a visible part of recording time).
    """
    import torch

    return torch.stack([t[0] for t in tensors]).to(torch.float16).cpu().numpy()


def single_stream_record(*, image: Image.Image, question: str, tokens: list[str], modality: list[str],
                         text_spans: list, image_boxes: np.ndarray, image_grid: np.ndarray, attentions,
                         hidden_states, prediction: Prediction, label: str | None, source_key: str | None,
                         notices, meta: dict) -> Record:
    """The Record of a single-stream model (ViLT, KD-VLP style): one ``self`` attention over the
    joint sequence and one ``joint`` hidden stream.

    ``tokens`` / ``modality`` cover the whole sequence: the text tokens (``text_spans`` gives their
    character spans, one per text-side position) first and the image tokens (``image_boxes``,
    ``image_grid``) last. ``attentions`` / ``hidden_states`` are the model's per-layer outputs.
    """
    n, n_img, n_text = len(tokens), len(image_boxes), len(text_spans)
    boxes = np.full((n, 4), np.nan, np.float32)
    grid = np.full((n, 2), -1, np.int32)
    if n_img:
        boxes[n - n_img:] = image_boxes
        grid[n - n_img:] = image_grid
    token_spans = np.full((n, 2), -1, np.int32)
    token_spans[:n_text] = np.asarray(text_spans, np.int32).reshape(-1, 2)
    attn = stack_layers(attentions)  # (L, H, N, N)
    hidden = stack_layers(hidden_states)  # (L + 1, N, D)
    if attn.shape[-1] != n:
        raise AdapterError(f"internal: {attn.shape[-1]} attention positions for {n} tokens")
    idx = np.arange(n)
    return Record(
        example_id=example_id_of(image, question), question=question, tokens=tuple(tokens),
        modality=tuple(modality), token_boxes=boxes, token_grid=grid, token_spans=token_spans,
        image=display_copy(image),
        attention={"self": AttentionBlock(values=attn, query_index=idx, key_index=idx)},
        hidden={"joint": HiddenBlock(values=hidden, token_index=idx)},
        prediction=prediction, label=label, source_key=source_key, notices=tuple(notices), meta=meta,
    )


@dataclass(frozen=True, kw_only=True)
class AttributionSpec:
    """Everything attribution methods need for one input, in model-independent terms.

    inputs / baselines: keyword tensors for ``forward_logits`` (batch of 1); the baseline is a
    zero image and padding tokens in place of the words (special tokens kept).
    words: record token index of each position of the "text" layer's output (text and special).
    regions: one entry per image unit of the "image" layer (ViLT: patches in (row, col) order),
    with its box in the source image and the record token it becomes.
    """

    record_tokens: tuple[str, ...]
    record_modality: tuple[str, ...]
    inputs: dict
    baselines: dict
    word_token_index: np.ndarray  # (W,) -> record token index, for the text layer's positions
    word_is_special: np.ndarray  # (W,) bool
    region_boxes: np.ndarray  # (R, 4) x0, y0, x1, y1 in 0..1 of the source image
    region_token_index: np.ndarray  # (R,) -> record token index
    cls_token_index: int  # record token whose final state the classifier reads
    notices: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def words(self) -> list[str]:
        return [self.record_tokens[i] for i in self.word_token_index]


class Adapter(ABC):
    """Base class of every model adapter. Subclasses register in adapters/registry.py."""

    name: ClassVar[str]  # registry key
    version: ClassVar[str]  # bump when the Record an adapter writes changes
    architecture: ClassVar[str]  # "single-stream" | "dual-stream"
    default_source: ClassVar[str]  # hub id or local directory
    description: ClassVar[str] = ""
    needs: ClassVar[str] = "pixels"  # "pixels" or "regions" (detector features)
    # one of PROBABILITY_RULES: the loss the answer head was trained with (an adapter whose
    # checkpoints differ, e.g. LXMERT, sets it per instance from the checkpoint)
    probability_rule: str

    model_id: str
    max_text_tokens: int

    # ---- loading and running -----------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, source: str | Path | None = None, *, device: str = "cpu") -> "Adapter":
        """Load from a hub id or a local directory (never trust_remote_code)."""

    @abstractmethod
    def run(self, image: Image.Image, question: str, *, top_k: int = 5, label: str | None = None,
            source_key: str | None = None) -> Record:
        """One forward that captures every attention kind and hidden state."""

    @abstractmethod
    def predict(self, image: Image.Image, question: str, *, top_k: int = 5) -> Prediction:
        """Top-k answers only (no capture)."""

    @abstractmethod
    def answers(self) -> list[str]:
        """The answer vocabulary, in logit order."""

    @abstractmethod
    def answer_probabilities(self, logits):
        """(batch, answers) logits -> (batch, answers) probabilities, differentiable, by the rule the
        model was trained with (``probability_rule``). Predictions and attribution both use it."""

    def prediction_from_logits(self, logits, top_k: int) -> Prediction:
        """Top-k answers of batch element 0 of (batch, answers) logits, by ``answer_probabilities``."""
        return top_k_prediction(self.answer_probabilities(logits), self.answers(), top_k)

    def provenance(self) -> dict:
        """Group attributes of a run recorded with this adapter."""
        import platform

        import torch
        import transformers

        return {
            "model_id": self.model_id,
            "adapter": self.name,
            "adapter_version": self.version,
            "architecture": self.architecture,
            "probability_rule": self.probability_rule,
            "config": self.config_summary(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version()},
        }

    def config_summary(self) -> dict:
        return {}

    # ---- attribution contract (see module docstring) -----------------------------------------
    def attribution_spec(self, image: Image.Image, question: str) -> AttributionSpec:
        raise NotImplementedError(f"{self.name} does not support attribution yet")

    def forward_logits(self, **inputs):
        raise NotImplementedError(f"{self.name} does not support attribution yet")

    def attribution_layers(self) -> dict:
        raise NotImplementedError(f"{self.name} does not support attribution yet")

    def layer_scores(self, name: str, attribution, spec: AttributionSpec) -> np.ndarray:
        raise NotImplementedError(f"{self.name} does not support attribution yet")

    def attention_probs(self, inputs: dict):
        """(logits, {kind: [tensor (batch, head, query, key) per layer]}, {kind: (query_index, key_index)}).

        The attention tensors are part of the autograd graph (call ``retain_grad`` on them to get
        their gradients). Indices map query / key positions to record tokens.
        """
        raise NotImplementedError(f"{self.name} does not support attribution yet")

    def occlude(self, inputs: dict, spec: AttributionSpec, *, region_mask=None, word_mask=None) -> dict:
        raise NotImplementedError(f"{self.name} does not support attribution yet")

    # ---- training contract (training/finetune.py) ----------------------------------------------
    # The generic fine-tuning loop talks to a model only through these; an adapter that does not
    # implement them simply cannot be fine-tuned (the CLI says so).
    def encode_batch(self, images: list[Image.Image], questions: list[str]) -> dict:
        """A padded batch of model inputs (keyword tensors for ``forward_logits``)."""
        raise NotImplementedError(f"{self.name} does not support fine-tuning yet")

    def trainable_parameters(self, full: bool = False) -> list:
        """The parameters fine-tuning updates: the answer classifier, or every weight when ``full``."""
        raise NotImplementedError(f"{self.name} does not support fine-tuning yet")

    def set_training(self, training: bool) -> None:
        """Switch the model between training mode (dropout on) and eval mode."""
        raise NotImplementedError(f"{self.name} does not support fine-tuning yet")

    def add_answers(self, answers: list[str]) -> None:
        """Append answers to the label set: new classifier rows, the old rows unchanged."""
        raise NotImplementedError(f"{self.name} cannot extend its answer set")

    def save(self, directory: str | Path) -> None:
        """Write a checkpoint that ``load(directory)`` reads back (weights, tokenizer, processor)."""
        raise NotImplementedError(f"{self.name} cannot save checkpoints yet")
