"""KD-VLP (Liu et al. 2021) style models: one transformer over word tokens and CNN grid cells.

KD-VLP has no public code or weights; ``adapters/kdvlp_model.py`` defines the architecture family
in plain torch and the checkpoint format (a directory: config.json + model.safetensors + BERT
tokenizer files; see docs/kdvlp.md). Loading never unpickles anything.

Record layout (N = T + 1 + G*G tokens)::

    [CLS] words... [SEP]   [IMG]   cell 0,0 ... cell G-1,G-1
    special text  special  special image (row-major, boxes = the cell's part of the image)

- attention: one kind "self" over the joint sequence, captured inside the model (eager softmax,
  every row sums to 1);
- hidden: {"joint"}: layer 0 is the LayerNorm'ed joint embeddings, layer l the output of encoder
  layer l (post-LN layers, so there is no extra final norm);
- prediction: softmax over the answer vocabulary (trained with cross-entropy).

Attribution: "text" is the word embedding (before positions), "image" the CNN's (B, C, G, G)
grid output before it is flattened into tokens; region k of the spec is cell (k // G, k % G).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapters.base import Adapter, AttributionSpec, probabilities_by_rule, single_stream_record
from core.errors import AdapterError
from core.ids import example_id_of
from adapters.kdvlp_model import (CheckpointError, KdvlpModel, images_to_uint8, load_model, normalize_pixels,
                                  save_checkpoint)
from adapters.lxmert import ResizedPixelCache
from adapters.vilt import check_image, check_question, resolve_source
from store.schema import Prediction, Record

IMAGE_SEPARATOR = "[IMG]"


class KdvlpAdapter(Adapter):
    name = "kdvlp"
    version = "1"
    architecture = "single-stream"
    default_source = "demo/models/kdvlp-easyvqa"
    description = "KD-VLP style: one transformer over word tokens and CNN grid cells"
    probability_rule = "softmax"  # trained with cross-entropy (demo/train_kdvlp.py: --loss softmax)

    def __init__(self, model: KdvlpModel, tokenizer, model_id: str, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        cfg = model.config
        self.config = cfg
        self.max_text_tokens = int(cfg.max_text_tokens)
        self.grid = int(cfg.grid)
        self._answers = list(cfg.answers)
        self._pixel_cache = ResizedPixelCache()

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path | None = None, *, device: str = "cpu") -> "KdvlpAdapter":
        from transformers import BertTokenizerFast

        src, local = resolve_source(source or cls.default_source)
        if not local:
            raise AdapterError(f"KD-VLP checkpoints load from a local directory (config.json + model.safetensors + "
                               f"tokenizer); {source!r} is not one. No public KD-VLP weights exist on any hub.")
        try:
            model = load_model(Path(src))
        except CheckpointError as e:
            raise AdapterError(f"cannot load KD-VLP checkpoint {source}: {e}") from e
        try:
            tokenizer = BertTokenizerFast.from_pretrained(src)
        except (OSError, ValueError, TypeError) as e:
            raise AdapterError(f"cannot load the tokenizer of {source}: {str(e).splitlines()[0] if str(e) else e}") from e
        if len(tokenizer) > model.config.vocab_size:
            raise AdapterError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                               f"{model.config.vocab_size}")
        if tokenizer.pad_token_id != model.config.pad_token_id:
            raise AdapterError(f"{source}: tokenizer pad id {tokenizer.pad_token_id} != config pad_token_id "
                               f"{model.config.pad_token_id}")
        return cls(model, tokenizer, model_id=Path(src).name, device=device)

    def answers(self) -> list[str]:
        return list(self._answers)

    def config_summary(self) -> dict:
        c = self.config
        return {"layers": c.num_layers, "heads": c.num_heads, "hidden": c.hidden_size, "grid": [c.grid, c.grid],
                "image_size": c.image_size, "cnn_channels": list(c.cnn_channels), "max_text_tokens": c.max_text_tokens,
                "answers": len(self._answers), "hidden_last": "output of the last encoder layer (post-LN, no final norm)",
                "probability": "softmax of the logits"}

    # ---- encoding --------------------------------------------------------------------------------
    def encode_batch(self, images, questions) -> dict:
        """Model inputs for a batch (training / evaluation): text padded to the longest question."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        enc = self.tokenizer([check_question(q) for q in questions], padding="longest", truncation=True,
                             max_length=self.max_text_tokens, return_tensors="pt")
        # resized pixels cached per image object: training reads every image each epoch
        pixels = torch.stack([self._pixel_cache.get(im, self.config.image_size) for im in images])
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device),
                "pixel_values": normalize_pixels(pixels, self.config).to(self.device)}

    def _encode(self, image: Image.Image, question: str):
        image = check_image(image)
        question = check_question(question)
        full = self.tokenizer(question, add_special_tokens=True)["input_ids"]
        enc = self.tokenizer(question, truncation=True, max_length=self.max_text_tokens, return_offsets_mapping=True,
                             return_tensors="pt")
        notices = []
        if len(full) > self.max_text_tokens:
            notices.append(f"question truncated: {len(full)} tokens, this model reads at most {self.max_text_tokens}; "
                           "words after the cut were ignored")
        ids = enc["input_ids"][0].tolist()
        unk = self.tokenizer.unk_token_id
        words = [i for i in ids if i not in set(self.tokenizer.all_special_ids) or i == unk]
        if words and all(i == unk for i in words):
            notices.append("none of the question's words are in this model's vocabulary (all unknown)")
        pixels = normalize_pixels(images_to_uint8([image], self.config.image_size), self.config)
        inputs = {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device),
                  "pixel_values": pixels.to(self.device)}
        return image, question, inputs, enc["offset_mapping"][0].tolist(), notices

    def _layout(self, inputs, offsets):
        """Record tokens, modality and text spans for one encoded input."""
        ids = inputs["input_ids"][0].tolist()
        specials = set(self.tokenizer.all_special_ids) - {self.tokenizer.unk_token_id}
        toks = self.tokenizer.convert_ids_to_tokens(ids)
        modality = ["special" if i in specials else "text" for i in ids]
        spans = [tuple(o) if m == "text" else (-1, -1) for o, m in zip(offsets, modality)]
        g = self.grid
        cells = [(r, c) for r in range(g) for c in range(g)]
        tokens = toks + [IMAGE_SEPARATOR] + [f"cell {r},{c}" for r, c in cells]
        modality = modality + ["special"] + ["image"] * len(cells)
        return tokens, modality, spans, np.asarray(cells, np.int32)

    def cell_boxes(self) -> np.ndarray:
        """(G*G, 4) boxes of the grid cells, row-major, in 0..1 of the source image (it is stretched)."""
        g = self.grid
        r, c = np.divmod(np.arange(g * g), g)
        return np.stack([c / g, r / g, (c + 1) / g, (r + 1) / g], axis=1).astype(np.float32)

    def answer_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return probabilities_by_rule(logits, self.probability_rule)

    def _forward(self, inputs, **kw):
        return self.model(inputs["input_ids"], inputs["pixel_values"], inputs.get("attention_mask"), **kw)

    # ---- the contract ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: Image.Image, question: str, *, top_k: int = 5) -> Prediction:
        _, _, inputs, _, _ = self._encode(image, question)
        return self.prediction_from_logits(self._forward(inputs).logits, top_k)

    @torch.no_grad()
    def run(self, image: Image.Image, question: str, *, top_k: int = 5, label: str | None = None,
            source_key: str | None = None) -> Record:
        rgb, q, inputs, offsets, notices = self._encode(image, question)
        out = self._forward(inputs, output_attentions=True, output_hidden_states=True)
        tokens, modality, spans, cells = self._layout(inputs, offsets)
        return single_stream_record(
            image=rgb, question=q, tokens=tokens, modality=modality, text_spans=spans,
            image_boxes=self.cell_boxes(), image_grid=cells,
            attentions=out.attentions, hidden_states=out.hidden_states,
            prediction=self.prediction_from_logits(out.logits, top_k), label=label, source_key=source_key, notices=notices,
            meta={"model_id": self.model_id, "adapter": self.name, "adapter_version": self.version,
                  "image_size": [rgb.width, rgb.height], "patch_grid": [self.grid, self.grid]},
        )

    # ---- attribution -----------------------------------------------------------------------------
    def attribution_spec(self, image: Image.Image, question: str) -> AttributionSpec:
        rgb, q, inputs, offsets, notices = self._encode(image, question)
        tokens, modality, _, cells = self._layout(inputs, offsets)
        n_text = inputs["input_ids"].shape[1]
        is_special = np.array([m == "special" for m in modality[:n_text]])
        base_ids = inputs["input_ids"].clone()
        base_ids[0, torch.from_numpy(~is_special)] = self.tokenizer.pad_token_id
        baselines = dict(inputs, input_ids=base_ids, pixel_values=torch.zeros_like(inputs["pixel_values"]))
        return AttributionSpec(
            record_tokens=tuple(tokens), record_modality=tuple(modality), inputs=inputs, baselines=baselines,
            word_token_index=np.arange(n_text), word_is_special=is_special, region_boxes=self.cell_boxes(),
            region_token_index=np.arange(n_text + 1, len(tokens)), cls_token_index=0, notices=tuple(notices),
            extra={"patch_index": cells, "grid": self.grid, "cell_pixels": self.config.image_size // self.grid,
                   "example_id": example_id_of(rgb, q)},
        )

    def forward_logits(self, **inputs) -> torch.Tensor:
        return self._forward(inputs).logits

    def attribution_layers(self) -> dict:
        # word embeddings run before positions are added; the CNN output is the (B, C, G, G) grid
        return {"text": self.model.word_embeddings, "image": self.model.cnn}

    def layer_scores(self, name: str, attribution, spec: AttributionSpec) -> np.ndarray:
        a = attribution.detach().float()
        if name == "text":  # (B, T, D) -> (T,)
            return a.sum(-1)[0].cpu().numpy()
        if name == "image":  # (B, C, G, G) -> (G*G,) row-major = the spec's region order
            return a.sum(1)[0].reshape(-1).cpu().numpy()
        raise KeyError(name)

    def attention_probs(self, inputs: dict):
        out = self._forward(inputs, output_attentions=True)
        n = out.attentions[0].shape[-1]
        idx = np.arange(n)
        return out.logits, {"self": list(out.attentions)}, {"self": (idx, idx)}

    def occlude(self, inputs: dict, spec: AttributionSpec, *, region_mask=None, word_mask=None) -> dict:
        new = dict(inputs)
        if region_mask is not None and np.any(region_mask):
            pv = inputs["pixel_values"].clone()
            p = spec.extra["cell_pixels"]
            base = spec.baselines["pixel_values"]
            for r, c in spec.extra["patch_index"][np.asarray(region_mask, bool)]:
                pv[..., r * p:(r + 1) * p, c * p:(c + 1) * p] = base[..., r * p:(r + 1) * p, c * p:(c + 1) * p]
            new["pixel_values"] = pv
        if word_mask is not None and np.any(word_mask):
            ids = inputs["input_ids"].clone()
            m = torch.from_numpy(np.asarray(word_mask, bool) & ~spec.word_is_special)
            ids[:, m] = self.tokenizer.pad_token_id
            new["input_ids"] = ids
        return new

    # ---- training (training/finetune.py) ---------------------------------------------------------
    def trainable_parameters(self, full: bool = False) -> list:
        """The answer classifier (an MLP on the pooled [CLS]); with ``full`` every weight, the CNN included."""
        return list(self.model.parameters() if full else self.model.classifier.parameters())

    def set_training(self, training: bool) -> None:
        """Train mode; BatchNorm layers whose weights are frozen stay in eval mode.

        Classifier-only fine-tuning must not move the CNN's running statistics (nor use batch
        statistics), or the frozen part would compute a different function afterwards.
        """
        self.model.train(training)
        if training:
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in m.parameters()):
                    m.eval()

    def add_answers(self, answers: list[str]) -> None:
        import dataclasses

        new = [a for a in dict.fromkeys(answers) if a not in set(self._answers)]
        if not new:
            return
        old = self.model.classifier[-1]
        n_old = old.out_features
        layer = torch.nn.Linear(old.in_features, n_old + len(new), device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            layer.weight[:n_old] = old.weight
            layer.bias[:n_old] = old.bias
            layer.bias[n_old:] = old.bias.mean()  # a new answer starts as likely as a typical old one
        self.model.classifier[-1] = layer
        self._answers = self._answers + new
        self.config = dataclasses.replace(self.model.config, answers=tuple(self._answers))
        self.model.config = self.config

    def save(self, directory: str | Path) -> None:
        """config.json + model.safetensors + tokenizer (docs/kdvlp.md): what ``load`` reads."""
        save_checkpoint(self.model, self.tokenizer, Path(directory))
