"""ViLT (Kim et al. 2021): a single-stream transformer over word tokens and image patches.

Quirks handled here (transformers 5.x):
- ``ViltEmbeddings.visual_embed`` samples and shuffles the image patches on every forward
  (torch.multinomial), even in eval mode. We wrap it so that every patch is kept and the patch
  tokens are put back in (row, col) order *before* the encoder. The encoder then always sees the
  same sequence, so the same input gives the same Record bit for bit, and patch k of the record
  is the patch at grid position k.
- Attribution at the image side attaches to ``patch_embeddings`` (the convolution), which runs
  before that reordering, so it is unaffected by it.
- Text is capped at ``max_position_embeddings`` (40) tokens; longer questions are truncated with
  a visible notice in the Record.
- Hidden states: layer 0 is the embeddings output; the last is the encoder output *before* the
  final LayerNorm. Probabilities are sigmoids of the VQA head's logits (it is trained with BCE).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapters.base import Adapter, AttributionSpec, probabilities_by_rule, single_stream_record
from core.errors import AdapterError, InputError
from core.ids import example_id_of
from store.schema import Prediction, Record
from core.paths import REPO_ROOT



IMAGE_CLS = "[IMG]"


def resolve_source(source: str | Path) -> tuple[str, bool]:
    """(path or hub id, is_local). Relative paths are tried against the repository root too."""
    p = Path(source)
    if p.exists():
        return str(p), True
    if not p.is_absolute() and (REPO_ROOT / p).exists():
        return str(REPO_ROOT / p), True
    if str(source).startswith((".", "/", "~")) or os.sep in str(source) and str(source).count("/") > 1:
        raise AdapterError(f"model directory {source} does not exist")
    return str(source), False


def load_error(source: str, exc: Exception) -> AdapterError:
    msg = str(exc)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in msg.lower() or "connect" in msg.lower():
        return AdapterError(f"cannot load {source!r}: it is not a local directory and the Hugging Face hub is "
                            f"not reachable (offline). Download it on a connected machine and pass its directory.")
    return AdapterError(f"cannot load {source!r}: {msg.splitlines()[0] if msg else type(exc).__name__}")


def check_question(question) -> str:
    if not isinstance(question, str):
        raise InputError("the question must be text")
    q = " ".join(question.split())
    if not q:
        raise InputError("the question is empty: type a question about the image")
    return q


def check_image(image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise InputError("expected a PIL image")
    if image.width < 1 or image.height < 1:
        raise InputError("the image is empty")
    return image.convert("RGB")


class _OrderedVisualEmbed:
    """Replaces ``embeddings.visual_embed``: keeps every patch, in (row, col) order."""

    def __init__(self, original):
        self.original = original
        self.last_patch_index: torch.Tensor | None = None  # (batch, patches, 2) row, col
        self.last_grid: tuple[int, int] | None = None

    def __call__(self, pixel_values, pixel_mask, max_image_length=200):
        x, x_mask, (patch_index, (h, w)) = self.original(pixel_values, pixel_mask, max_image_length=-1)
        key = patch_index[..., 0] * w + patch_index[..., 1]  # (B, P)
        order = key.argsort(dim=1)
        d = x.shape[-1]
        x = torch.cat([x[:, :1], torch.gather(x[:, 1:], 1, order[..., None].expand(-1, -1, d))], dim=1)
        x_mask = torch.cat([x_mask[:, :1], torch.gather(x_mask[:, 1:], 1, order)], dim=1)
        patch_index = torch.gather(patch_index, 1, order[..., None].expand(-1, -1, 2))
        self.last_patch_index = patch_index.detach()
        self.last_grid = (int(h), int(w))
        return x, x_mask, (patch_index, (h, w))


class ViltAdapter(Adapter):
    name = "vilt"
    version = "1"
    architecture = "single-stream"
    default_source = "dandelin/vilt-b32-finetuned-vqa"
    description = "ViLT: one transformer over word tokens and image patches"
    probability_rule = "sigmoid"  # ViLT's VQA head is trained with binary cross-entropy on soft scores

    def __init__(self, model, tokenizer, image_processor, model_id: str, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_id = model_id
        self.device = device
        cfg = model.config
        self.max_text_tokens = int(cfg.max_position_embeddings)
        self.patch_size = int(cfg.patch_size)
        emb = model.vilt.embeddings
        if not isinstance(emb.visual_embed, _OrderedVisualEmbed):
            emb.visual_embed = _OrderedVisualEmbed(emb.visual_embed)
        self._visual = emb.visual_embed
        self._answers = [cfg.id2label[i] for i in range(cfg.num_labels)]

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path | None = None, *, device: str = "cpu") -> "ViltAdapter":
        from transformers import BertTokenizerFast, ViltForQuestionAnswering
        from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

        src, local = resolve_source(source or cls.default_source)
        try:
            model = ViltForQuestionAnswering.from_pretrained(src, attn_implementation="eager")
            tokenizer = BertTokenizerFast.from_pretrained(src)
            image_processor = ViltImageProcessorPil.from_pretrained(src)
        except (OSError, ValueError, EnvironmentError) as e:
            raise load_error(str(source), e) from e
        model_id = Path(src).name if local else src
        return cls(model, tokenizer, image_processor, model_id=model_id, device=device)

    def answers(self) -> list[str]:
        return list(self._answers)

    def config_summary(self) -> dict:
        c = self.model.config
        return {"layers": c.num_hidden_layers, "heads": c.num_attention_heads, "hidden": c.hidden_size,
                "patch_size": c.patch_size, "image_size": c.image_size, "max_text_tokens": self.max_text_tokens,
                "answers": len(self._answers), "hidden_last": "encoder output before the final LayerNorm",
                "probability": "sigmoid of the VQA logits"}

    # ---- encoding --------------------------------------------------------------------------------
    def _encode(self, image: Image.Image, question: str):
        image = check_image(image)
        question = check_question(question)
        full = self.tokenizer(question, add_special_tokens=True)["input_ids"]
        enc = self.tokenizer(question, truncation=True, max_length=self.max_text_tokens,
                             return_offsets_mapping=True, return_tensors="pt")
        notices = []
        if len(full) > self.max_text_tokens:
            notices.append(f"question truncated: {len(full)} tokens, this model reads at most "
                           f"{self.max_text_tokens}; words after the cut were ignored")
        ids = enc["input_ids"][0].tolist()
        unk = self.tokenizer.unk_token_id
        specials = set(self.tokenizer.all_special_ids)
        words = [i for i in ids if i not in specials or i == unk]
        if words and all(i == unk for i in words):
            notices.append("none of the question's words are in this model's vocabulary (all unknown)")
        pix = self.image_processor(image, return_tensors="pt")
        inputs = {
            "input_ids": enc["input_ids"].to(self.device),
            "attention_mask": enc["attention_mask"].to(self.device),
            "token_type_ids": torch.zeros_like(enc["input_ids"]).to(self.device),
            "pixel_values": pix["pixel_values"].to(self.device),
            "pixel_mask": pix["pixel_mask"].to(self.device),
        }
        return image, question, inputs, enc["offset_mapping"][0].tolist(), notices

    def _text_tokens(self, inputs, offsets):
        ids = inputs["input_ids"][0].tolist()
        toks = self.tokenizer.convert_ids_to_tokens(ids)
        specials = set(self.tokenizer.all_special_ids) - {self.tokenizer.unk_token_id}
        modality = ["special" if i in specials else "text" for i in ids]
        spans = [(s, e) if m == "text" else (-1, -1) for (s, e), m in zip(offsets, modality)]
        return toks, modality, spans

    def _patch_geometry(self, inputs, patch_index: np.ndarray):
        """Boxes of patches (row, col) in 0..1 of the source image (the resized, unpadded area)."""
        mask = inputs["pixel_mask"][0]
        rh = int(mask.any(dim=1).sum())
        rw = int(mask.any(dim=0).sum())
        p = self.patch_size
        r, c = patch_index[:, 0].astype(np.float64), patch_index[:, 1].astype(np.float64)
        boxes = np.stack([c * p / rw, r * p / rh, (c + 1) * p / rw, (r + 1) * p / rh], axis=1)
        return np.clip(boxes, 0.0, 1.0).astype(np.float32)

    def answer_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return probabilities_by_rule(logits, self.probability_rule)

    # ---- the contract ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: Image.Image, question: str, *, top_k: int = 5) -> Prediction:
        _, _, inputs, _, _ = self._encode(image, question)
        return self.prediction_from_logits(self.model(**inputs).logits, top_k)

    @torch.no_grad()
    def run(self, image: Image.Image, question: str, *, top_k: int = 5, label: str | None = None,
            source_key: str | None = None) -> Record:
        rgb, q, inputs, offsets, notices = self._encode(image, question)
        out = self.model(**inputs, output_attentions=True, output_hidden_states=True)
        patch_index = self._visual.last_patch_index[0].cpu().numpy()
        toks, modality, spans = self._text_tokens(inputs, offsets)
        return single_stream_record(
            image=rgb, question=q, tokens=toks + [IMAGE_CLS] + [f"patch {r},{c}" for r, c in patch_index.tolist()],
            modality=modality + ["special"] + ["image"] * len(patch_index), text_spans=spans,
            image_boxes=self._patch_geometry(inputs, patch_index), image_grid=patch_index,
            attentions=out.attentions, hidden_states=out.hidden_states,
            prediction=self.prediction_from_logits(out.logits, top_k), label=label, source_key=source_key, notices=notices,
            meta={"model_id": self.model_id, "adapter": self.name, "adapter_version": self.version,
                  "image_size": [rgb.width, rgb.height], "patch_grid": list(self._visual.last_grid)},
        )

    # ---- attribution -----------------------------------------------------------------------------
    def attribution_spec(self, image: Image.Image, question: str) -> AttributionSpec:
        rgb, q, inputs, offsets, notices = self._encode(image, question)
        with torch.no_grad():
            self.model(**inputs)
        patch_index = self._visual.last_patch_index[0].cpu().numpy()
        toks, modality, _ = self._text_tokens(inputs, offsets)
        n_text = len(toks)
        tokens = tuple(toks + [IMAGE_CLS] + [f"patch {r},{c}" for r, c in patch_index.tolist()])
        modality = tuple(modality + ["special"] + ["image"] * len(patch_index))
        is_special = np.array([m == "special" for m in modality[:n_text]])
        base_ids = inputs["input_ids"].clone()
        base_ids[0, torch.from_numpy(~is_special)] = self.tokenizer.pad_token_id
        baselines = dict(inputs, input_ids=base_ids, pixel_values=torch.zeros_like(inputs["pixel_values"]))
        return AttributionSpec(
            record_tokens=tokens, record_modality=modality, inputs=inputs, baselines=baselines,
            word_token_index=np.arange(n_text), word_is_special=is_special,
            region_boxes=self._patch_geometry(inputs, patch_index),
            region_token_index=np.arange(n_text + 1, len(tokens)), cls_token_index=0, notices=tuple(notices),
            extra={"patch_index": patch_index, "patch_size": self.patch_size, "example_id": example_id_of(rgb, q)},
        )

    def forward_logits(self, **inputs) -> torch.Tensor:
        return self.model(**inputs).logits

    def attribution_layers(self) -> dict:
        emb = self.model.vilt.embeddings
        # The patch convolution runs before the patch reordering; word embeddings before positions.
        return {"text": emb.text_embeddings.word_embeddings, "image": emb.patch_embeddings}

    def layer_scores(self, name: str, attribution, spec: AttributionSpec) -> np.ndarray:
        a = attribution.detach().float()
        if name == "text":  # (B, T, D) -> (T,)
            return a.sum(-1)[0].cpu().numpy()
        if name == "image":  # (B, D, gh, gw) -> (R,) in the spec's region order
            grid = a.sum(1)[0].cpu().numpy()
            pi = spec.extra["patch_index"]
            return grid[pi[:, 0], pi[:, 1]]
        raise KeyError(name)

    def attention_probs(self, inputs: dict):
        out = self.model(**inputs, output_attentions=True)
        n = out.attentions[0].shape[-1]
        idx = np.arange(n)
        return out.logits, {"self": list(out.attentions)}, {"self": (idx, idx)}

    def occlude(self, inputs: dict, spec: AttributionSpec, *, region_mask=None, word_mask=None) -> dict:
        new = dict(inputs)
        if region_mask is not None and np.any(region_mask):
            pv = inputs["pixel_values"].clone()
            p = self.patch_size
            for r, c in spec.extra["patch_index"][np.asarray(region_mask, bool)]:
                pv[..., r * p:(r + 1) * p, c * p:(c + 1) * p] = spec.baselines["pixel_values"][..., r * p:(r + 1) * p,
                                                                                             c * p:(c + 1) * p]
            new["pixel_values"] = pv
        if word_mask is not None and np.any(word_mask):
            ids = inputs["input_ids"].clone()
            m = torch.from_numpy(np.asarray(word_mask, bool) & ~spec.word_is_special)
            ids[:, m] = self.tokenizer.pad_token_id
            new["input_ids"] = ids
        return new

    # ---- training (training/finetune.py) ---------------------------------------------------------
    def encode_batch(self, images: list[Image.Image], questions: list[str]) -> dict:
        imgs = [check_image(im) for im in images]
        qs = [check_question(q) for q in questions]
        enc = self.tokenizer(qs, padding="longest", truncation=True, max_length=self.max_text_tokens,
                             return_tensors="pt")
        pix = self.image_processor(imgs, return_tensors="pt")  # pads to the largest image, with a pixel mask
        return {
            "input_ids": enc["input_ids"].to(self.device),
            "attention_mask": enc["attention_mask"].to(self.device),
            "token_type_ids": torch.zeros_like(enc["input_ids"]).to(self.device),
            "pixel_values": pix["pixel_values"].to(self.device),
            "pixel_mask": pix["pixel_mask"].to(self.device),
        }

    def trainable_parameters(self, full: bool = False) -> list:
        return list(self.model.parameters() if full else self.model.classifier.parameters())

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def add_answers(self, answers: list[str]) -> None:
        new = [a for a in dict.fromkeys(answers) if a not in set(self._answers)]
        if not new:
            return
        old = self.model.classifier[-1]
        n_old = old.out_features
        layer = torch.nn.Linear(old.in_features, n_old + len(new), device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            layer.weight[:n_old] = old.weight
            layer.bias[:n_old] = old.bias
            layer.weight[n_old:].normal_(0.0, self.model.config.initializer_range)
            # A new answer starts as likely as a typical old one (trained BCE heads have negative biases).
            layer.bias[n_old:] = old.bias.mean()
        self.model.classifier[-1] = layer
        self._answers = self._answers + new
        cfg = self.model.config
        cfg.id2label = {i: a for i, a in enumerate(self._answers)}
        cfg.label2id = {a: i for i, a in enumerate(self._answers)}
        cfg.num_labels = len(self._answers)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
