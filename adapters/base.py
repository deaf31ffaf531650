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

Generative adapters implement the same contract over teacher-forced answers
(adapters/generative_attribution.py): their spec's ``forward_logits`` is (batch, answer tokens, 3) scores
of the answer tokens, which ``GenerationTarget`` (analysis/attribution/targets.py) reads.

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
from store.schema import Prediction, Record

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
    about twice as fast as numpy (this conversion was a visible part of recording time). Each
    layer moves to the CPU on its own, so layers already offloaded (float16 on the CPU) and
    layers still on a GPU stack together.
    """
    import torch

    return torch.stack([t[0].to("cpu", torch.float16) for t in tensors]).numpy()


def batch_layers(tensors) -> np.ndarray:
    """Per-layer (B, ...) tensors of a whole batch as one float16 array (B, layers, ...): each layer
    converted once for the batch, on the CPU (layers already offloaded and layers on a GPU alike)."""
    import torch

    return torch.stack([t.to("cpu", torch.float16) for t in tensors], 1).numpy()


def token_geometry(n_tokens: int, text_spans, image_boxes: np.ndarray, image_grid: np.ndarray):
    """Per-token geometry arrays of a Record whose first T tokens are the text side (``text_spans``,
    T character spans) and whose last I tokens are the image ones (``image_boxes`` (I, 4),
    ``image_grid`` (I, 2) row, col).

    Returns (boxes (N, 4) NaN off the image, grid (N, 2) -1 off it, spans (N, 2) -1 off the text).
    """
    n_img, n_text = len(image_boxes), len(text_spans)
    boxes = np.full((n_tokens, 4), np.nan, np.float32)
    grid = np.full((n_tokens, 2), -1, np.int32)
    if n_img:
        boxes[n_tokens - n_img:] = image_boxes
        grid[n_tokens - n_img:] = image_grid
    spans = np.full((n_tokens, 2), -1, np.int32)
    spans[:n_text] = np.asarray(text_spans, np.int32).reshape(-1, 2)
    return boxes, grid, spans


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
    # where the weights came from (adapters/loading.checkpoint_info), set by ``load``; None for a
    # model built in memory (a fresh demo model before it is saved)
    checkpoint: dict | None = None

    # ---- loading and running -----------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, source: str | Path | None = None, *, device: str = "cpu") -> "Adapter":
        """Load from a hub id or a local directory (never trust_remote_code).

        ``device``: "cpu", "cuda" ("cuda:N"), "mps", or "auto" (a GPU when one is visible);
        adapters/loading.resolve_device checks it. Records come back on the CPU in float16 whatever it is.
        """

    @abstractmethod
    def run(self, image: Image.Image, question: str, *, top_k: int = 5, label: str | None = None,
            source_key: str | None = None) -> Record:
        """One forward that captures every attention kind and hidden state."""

    def run_batch(self, images: list[Image.Image], questions: list[str], *, top_k: int = 5,
                  labels: list | None = None, source_keys: list | None = None) -> list[Record]:
        """``run`` for each example; an adapter that pads a batch into one forward overrides it.

        Each Record equals the example's own ``run`` up to float16 rounding (tests check it).
        """
        from adapters.inputs import check_batch

        images, questions, labels, source_keys = check_batch(images, questions, labels, source_keys)
        return [self.run(im, q, top_k=top_k, label=lab, source_key=key)
                for im, q, lab, key in zip(images, questions, labels, source_keys)]

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
            "device": str(getattr(self, "device", "cpu")),
            "checkpoint": self.checkpoint or {"kind": "memory"},
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
        """Append answers to the label set: new classifier rows, the old rows unchanged.

        The answer layer (the last of ``answer_head()``) gets one new row per new answer, its
        bias the old biases' mean: a new answer starts as likely as a typical old one (trained BCE
        heads have negative biases). ``set_answer_names`` then records the longer label set.
        """
        known = set(self.answers())
        new = [a for a in dict.fromkeys(answers) if a not in known]
        if not new:
            return
        head = self.answer_head()
        head[-1] = extended_linear(head[-1], len(new), init_std=self.new_answer_init_std())
        self.set_answer_names(self.answers() + new)

    def answer_head(self):
        """The ``nn.Sequential`` whose last layer is the (answers, features) answer ``nn.Linear``."""
        raise NotImplementedError(f"{self.name} cannot extend its answer set")

    def new_answer_init_std(self) -> float | None:
        """Std of the normal init of new answer rows; None keeps ``nn.Linear``'s default init."""
        return None

    def set_answer_names(self, answers: list[str]) -> None:
        """Record a new label set (after ``add_answers``) in the adapter and its model's config."""
        raise NotImplementedError(f"{self.name} cannot extend its answer set")

    def save(self, directory: str | Path) -> None:
        """Write a checkpoint that ``load(directory)`` reads back (weights, tokenizer, processor)."""
        raise NotImplementedError(f"{self.name} cannot save checkpoints yet")


def extended_linear(old, n_new: int, *, init_std: float | None):
    """A copy of ``nn.Linear`` ``old`` with ``n_new`` more output rows appended; the old rows unchanged.

    New rows: ``nn.Linear``'s default init, or normal(0, ``init_std``) weights; bias the mean of
    the old biases.
    """
    import torch

    n_old = old.out_features
    layer = torch.nn.Linear(old.in_features, n_old + n_new, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        layer.weight[:n_old] = old.weight
        layer.bias[:n_old] = old.bias
        if init_std is not None:
            layer.weight[n_old:].normal_(0.0, init_std)
        layer.bias[n_old:] = old.bias.mean()
    return layer
