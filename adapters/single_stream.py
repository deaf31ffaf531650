"""What single-stream adapters share (ViLT, KD-VLP style): one transformer over the joint sequence

    [CLS] words... [SEP]   [IMG]    image token 0 ... image token I-1
    text-side positions    special  image (a grid of cells: patches or CNN cells, (row, col) order)

A subclass says how to encode an input (``_encode``) or a padded batch (``_batch_inputs``), run
the model (``_outputs``), where its image tokens lie (``_image_tokens``) and how many pixels of
``pixel_values`` one cell spans (``_cell_pixels``); the Record (one or a batch), prediction,
attribution spec, attention maps, layer scores and occlusion are built here, once.

In a padded batch, example b's questions tokens are the first T_b of T positions (padding after
them, masked), then [IMG], then the batch's image positions, of which b's own are those
``_image_tokens`` names; its Record keeps exactly those positions, so it is the batch-of-one Record
up to float rounding (masked keys get exactly zero attention).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from adapters.base import (Adapter, AttributionSpec, batch_layers, display_copy, probabilities_by_rule,
                           token_geometry, top_k_prediction)
from adapters.inputs import IMAGE_TOKEN, check_batch, encode_each_question, pad_words, text_layout
from core.errors import AdapterError
from core.ids import example_id_of
from core.runs import index_runs, take_runs
from store.schema import AttentionBlock, HiddenBlock, Prediction, Record


@dataclass(frozen=True, kw_only=True)
class SequenceLayout:
    """Record tokens of one encoded input: T text-side positions, the [IMG] separator, I image tokens."""

    tokens: tuple[str, ...]  # (N,) N = T + 1 + I
    modality: tuple[str, ...]  # (N,)
    text_spans: tuple  # (T,) character spans in the question, (-1, -1) for special tokens
    image_boxes: np.ndarray  # (I, 4) x0, y0, x1, y1 in 0..1 of the source image
    image_grid: np.ndarray  # (I, 2) row, col of each image token's cell
    positions: np.ndarray  # (N,) each token's position in the model's (padded batch) sequence

    @property
    def n_text(self) -> int:
        return len(self.text_spans)


def single_stream_record(*, image: Image.Image, question: str, layout: SequenceLayout, attentions: np.ndarray,
                         hidden_states: np.ndarray, prediction: Prediction, label: str | None, source_key: str | None,
                         notices, meta: dict, b: int = 0) -> Record:
    """The Record of batch element ``b`` of a single-stream model: one ``self`` attention over the
    joint sequence and one ``joint`` hidden stream, at ``layout.positions`` only.

    ``attentions`` / ``hidden_states``: the whole batch's maps as float16 arrays (``batch_layers``),
    (B, L, H, S, S) / (B, L + 1, S, D).
    """
    n = len(layout.tokens)
    boxes, grid, token_spans = token_geometry(n, layout.text_spans, layout.image_boxes, layout.image_grid)
    attn, hidden = attentions[b], hidden_states[b]  # (L, H, S, S), (L + 1, S, D)
    pos = layout.positions
    if len(pos) != attn.shape[-1]:  # positions are increasing: as many as S means all of them
        runs = index_runs(pos)  # a few runs (words, [IMG], image tokens): slices, not a gather of every pair
        attn, hidden = take_runs(take_runs(attn, runs, 2), runs, 3), take_runs(hidden, runs, 1)
    if attn.shape[-1] != n:
        raise AdapterError(f"internal: {attn.shape[-1]} attention positions for {n} tokens")
    idx = np.arange(n)
    return Record(
        example_id=example_id_of(image, question), question=question, tokens=layout.tokens,
        modality=layout.modality, token_boxes=boxes, token_grid=grid, token_spans=token_spans,
        image=display_copy(image),
        attention={"self": AttentionBlock(values=attn, query_index=idx, key_index=idx)},
        hidden={"joint": HiddenBlock(values=hidden, token_index=idx)},
        prediction=prediction, label=label, source_key=source_key, notices=tuple(notices), meta=meta,
    )


class SingleStreamAdapter(Adapter):
    """Base of adapters over [text..., IMG, image cells...]; see the module docstring."""

    architecture = "single-stream"
    image_token_name: ClassVar[str] = "cell"  # image tokens are named "<name> row,col"
    # ViLT learns where its patches lie only from a forward (it reorders them inside the model)
    layout_needs_forward: ClassVar[bool] = False

    def answers(self) -> list[str]:
        return list(self._answers)

    def answer_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return probabilities_by_rule(logits, self.probability_rule)

    # ---- what a subclass provides ----------------------------------------------------------------
    @abstractmethod
    def _encode(self, image: Image.Image, question: str):
        """(checked RGB image, checked question, model inputs (batch of 1), offsets, notices)."""

    @abstractmethod
    def _batch_inputs(self, images: list[Image.Image], questions: list[str]) -> dict:
        """Model inputs of checked images and questions as one batch, text padded to the longest."""

    @abstractmethod
    def _outputs(self, inputs: dict, **kwargs):
        """The model's output (``logits``, ``attentions``, ``hidden_states``) for keyword ``inputs``."""

    @abstractmethod
    def _image_tokens(self, inputs: dict, b: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Example ``b``'s image tokens, in order: ((I, 4) boxes in 0..1 of its source image,
        (I, 2) row, col, (I,) their indices among the batch's image positions)."""

    @abstractmethod
    def _cell_pixels(self) -> int:
        """Side in pixels of ``pixel_values`` of one image cell (cell (r, c) spans rows r*p..(r+1)*p)."""

    @abstractmethod
    def _patch_grid(self, inputs: dict, b: int = 0) -> list[int]:
        """[rows, cols] of example ``b``'s image grid."""

    # ---- layout ----------------------------------------------------------------------------------
    def _layout(self, inputs: dict, offsets, b: int = 0) -> SequenceLayout:
        """Record tokens of example ``b`` (its question has ``len(offsets)`` tokens) of ``inputs``."""
        n_text, padded = len(offsets), int(inputs["input_ids"].shape[1])
        toks, modality, spans = text_layout(self.tokenizer, inputs["input_ids"][b, :n_text].tolist(), offsets)
        boxes, grid, image_pos = self._image_tokens(inputs, b)
        names = [f"{self.image_token_name} {r},{c}" for r, c in grid.tolist()]
        positions = np.concatenate([np.arange(n_text), [padded], padded + 1 + np.asarray(image_pos, np.int64)])
        return SequenceLayout(tokens=tuple(toks + [IMAGE_TOKEN] + names),
                              modality=tuple(modality + ["special"] + ["image"] * len(names)),
                              text_spans=tuple(spans), image_boxes=boxes, image_grid=grid,
                              positions=positions.astype(np.int64))

    def _record_meta(self, rgb: Image.Image, inputs: dict, b: int = 0) -> dict:
        return {"model_id": self.model_id, "adapter": self.name, "adapter_version": self.version,
                "image_size": [rgb.width, rgb.height], "patch_grid": self._patch_grid(inputs, b)}

    # ---- the contract ----------------------------------------------------------------------------
    def forward_logits(self, **inputs) -> torch.Tensor:
        return self._outputs(inputs).logits

    @torch.no_grad()
    def predict(self, image: Image.Image, question: str, *, top_k: int = 5) -> Prediction:
        _, _, inputs, _, _ = self._encode(image, question)
        return self.prediction_from_logits(self.forward_logits(**inputs), top_k)

    @torch.no_grad()
    def run(self, image: Image.Image, question: str, *, top_k: int = 5, label: str | None = None,
            source_key: str | None = None) -> Record:
        return self.run_batch([image], [question], top_k=top_k, labels=[label], source_keys=[source_key])[0]

    @torch.no_grad()
    def run_batch(self, images: list[Image.Image], questions: list[str], *, top_k: int = 5,
                  labels: list | None = None, source_keys: list | None = None) -> list[Record]:
        """``run`` for many examples in one forward; each Record cut back to its own tokens."""
        rgbs, qs, labels, source_keys = check_batch(images, questions, labels, source_keys)
        encoded = encode_each_question(self.tokenizer, qs, self.max_text_tokens)
        inputs = self._batch_inputs(rgbs, qs)
        out = self._outputs(inputs, output_attentions=True, output_hidden_states=True)
        # The whole batch converted at once (one float16 copy per layer, not one per layer and example),
        # then each example's own positions picked from it (demo ViLT: run_batch beyond the forward
        # 2.8 -> 2.0 ms per example).
        attentions, hidden_states = batch_layers(out.attentions), batch_layers(out.hidden_states)
        probabilities, answers = self.answer_probabilities(out.logits), self.answers()
        return [single_stream_record(
            image=rgbs[b], question=qs[b], layout=self._layout(inputs, enc.offsets, b), attentions=attentions,
            hidden_states=hidden_states, prediction=top_k_prediction(probabilities[b:b + 1], answers, top_k),
            label=labels[b], source_key=source_keys[b], notices=list(enc.notices),
            meta=self._record_meta(rgbs[b], inputs, b), b=b) for b, enc in enumerate(encoded)]

    # ---- attribution -----------------------------------------------------------------------------
    def attribution_spec(self, image: Image.Image, question: str) -> AttributionSpec:
        """Baseline: a zero image and padding in place of the words (special tokens kept)."""
        rgb, q, inputs, offsets, notices = self._encode(image, question)
        if self.layout_needs_forward:
            with torch.no_grad():
                self._outputs(inputs)
        layout = self._layout(inputs, offsets)
        n_text = layout.n_text
        is_special = np.array([m == "special" for m in layout.modality[:n_text]])
        baselines = dict(inputs, input_ids=pad_words(inputs["input_ids"], ~is_special, self.tokenizer.pad_token_id),
                         pixel_values=torch.zeros_like(inputs["pixel_values"]))
        return AttributionSpec(
            record_tokens=layout.tokens, record_modality=layout.modality, inputs=inputs, baselines=baselines,
            word_token_index=np.arange(n_text), word_is_special=is_special, region_boxes=layout.image_boxes,
            region_token_index=np.arange(n_text + 1, len(layout.tokens)), cls_token_index=0, notices=tuple(notices),
            extra={"patch_index": layout.image_grid, "cell_pixels": self._cell_pixels(),
                   "example_id": example_id_of(rgb, q)},
        )

    def layer_scores(self, name: str, attribution, spec: AttributionSpec) -> np.ndarray:
        a = attribution.detach().float()
        if name == "text":  # (B, T, D) -> (T,)
            return a.sum(-1)[0].cpu().numpy()
        if name == "image":  # (B, D, rows, cols) -> (R,) in the spec's region order
            grid = a.sum(1)[0].cpu().numpy()
            pi = spec.extra["patch_index"]
            return grid[pi[:, 0], pi[:, 1]]
        raise KeyError(name)

    def attention_probs(self, inputs: dict):
        out = self._outputs(inputs, output_attentions=True)
        idx = np.arange(out.attentions[0].shape[-1])
        return out.logits, {"self": list(out.attentions)}, {"self": (idx, idx)}

    def occlude(self, inputs: dict, spec: AttributionSpec, *, region_mask=None, word_mask=None) -> dict:
        """Regions: their cells' pixels replaced by the baseline's; words: replaced by padding."""
        new = dict(inputs)
        if region_mask is not None and np.any(region_mask):
            pv = inputs["pixel_values"].clone()
            base = spec.baselines["pixel_values"]
            p = spec.extra["cell_pixels"]
            for r, c in spec.extra["patch_index"][np.asarray(region_mask, bool)]:
                pv[..., r * p:(r + 1) * p, c * p:(c + 1) * p] = base[..., r * p:(r + 1) * p, c * p:(c + 1) * p]
            new["pixel_values"] = pv
        if word_mask is not None and np.any(word_mask):
            new["input_ids"] = pad_words(inputs["input_ids"], np.asarray(word_mask, bool) & ~spec.word_is_special,
                                         self.tokenizer.pad_token_id)
        return new
