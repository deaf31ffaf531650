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

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapters.inputs import check_image, check_question, encode_question, encode_questions, text_inputs
from adapters.loading import checkpoint_info, load_error, resolve_device, resolve_source
from adapters.single_stream import SingleStreamAdapter


class _OrderedVisualEmbed:
    """Replaces ``embeddings.visual_embed``: keeps every patch, in (row, col) order.

    In a batch of images of different sizes, a smaller image's sequence is filled up with patches
    of its padding (masked out, ``last_patch_mask`` 0), sorted in among its own.
    """

    def __init__(self, original):
        self.original = original
        self.last_patch_index: torch.Tensor | None = None  # (batch, patches, 2) row, col
        self.last_patch_mask: torch.Tensor | None = None  # (batch, patches) 1 for the image's own patches

    def __call__(self, pixel_values, pixel_mask, max_image_length=200):
        x, x_mask, (patch_index, (h, w)) = self.original(pixel_values, pixel_mask, max_image_length=-1)
        key = patch_index[..., 0] * w + patch_index[..., 1]  # (B, P)
        order = key.argsort(dim=1)
        d = x.shape[-1]
        x = torch.cat([x[:, :1], torch.gather(x[:, 1:], 1, order[..., None].expand(-1, -1, d))], dim=1)
        x_mask = torch.cat([x_mask[:, :1], torch.gather(x_mask[:, 1:], 1, order)], dim=1)
        patch_index = torch.gather(patch_index, 1, order[..., None].expand(-1, -1, 2))
        self.last_patch_index = patch_index.detach()
        self.last_patch_mask = x_mask[:, 1:].detach()
        return x, x_mask, (patch_index, (h, w))


class ViltAdapter(SingleStreamAdapter):
    name = "vilt"
    version = "1"
    default_source = "dandelin/vilt-b32-finetuned-vqa"
    description = "ViLT: one transformer over word tokens and image patches"
    probability_rule = "sigmoid"  # ViLT's VQA head is trained with binary cross-entropy on soft scores
    image_token_name = "patch"
    layout_needs_forward = True  # the patch order is known after the (reordering) visual embedding

    def __init__(self, model, tokenizer, image_processor, model_id: str, device: str = "cpu"):
        device = resolve_device(device)  # "auto" -> a GPU when one is visible
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
        adapter = cls(model, tokenizer, image_processor, model_id=model_id, device=device)
        adapter.checkpoint = checkpoint_info(src, local, model.config)
        return adapter

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
        enc = encode_question(self.tokenizer, question, self.max_text_tokens)
        pix = self.image_processor(image, return_tensors="pt")
        inputs = text_inputs(enc.input_ids, enc.attention_mask, self.device, token_types=True)
        inputs.update(pixel_values=pix["pixel_values"].to(self.device), pixel_mask=pix["pixel_mask"].to(self.device))
        return image, question, inputs, enc.offsets, list(enc.notices)

    def _outputs(self, inputs: dict, **kwargs):
        return self.model(**inputs, **kwargs)

    def _image_tokens(self, inputs: dict, b: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Example ``b``'s patches in (row, col) order (as the last forward reordered them), padding
        patches left out; boxes in 0..1 of the source image, the resized, unpadded area of its pixels."""
        own = self._visual.last_patch_mask[b].bool().cpu().numpy()
        patch_index = self._visual.last_patch_index[b].cpu().numpy()[own]
        rh, rw = self._image_pixels(inputs, b)
        p = self.patch_size
        r, c = patch_index[:, 0].astype(np.float64), patch_index[:, 1].astype(np.float64)
        boxes = np.stack([c * p / rw, r * p / rh, (c + 1) * p / rw, (r + 1) * p / rh], axis=1)
        return np.clip(boxes, 0.0, 1.0).astype(np.float32), patch_index, np.flatnonzero(own)

    @staticmethod
    def _image_pixels(inputs: dict, b: int) -> tuple[int, int]:
        """(rows, cols) of example ``b``'s own (resized, unpadded) pixels, from its pixel mask.

        ViLT's processor pads at the bottom and right, so the first column and the first row of the
        mask say it (reading the whole mask cost about 1 ms per example at 384 px)."""
        mask = inputs["pixel_mask"][b]
        return int(mask[:, 0].sum()), int(mask[0].sum())

    def _cell_pixels(self) -> int:
        return self.patch_size

    def _patch_grid(self, inputs: dict, b: int = 0) -> list[int]:
        rh, rw = self._image_pixels(inputs, b)
        return [rh // self.patch_size, rw // self.patch_size]

    # ---- attribution -----------------------------------------------------------------------------
    def attribution_layers(self) -> dict:
        emb = self.model.vilt.embeddings
        # The patch convolution runs before the patch reordering; word embeddings before positions.
        return {"text": emb.text_embeddings.word_embeddings, "image": emb.patch_embeddings}

    def _batch_inputs(self, images: list[Image.Image], questions: list[str]) -> dict:
        return self.encode_batch(images, questions)

    # ---- training (training/finetune.py) ---------------------------------------------------------
    def encode_batch(self, images: list[Image.Image], questions: list[str]) -> dict:
        imgs = [check_image(im) for im in images]
        enc = encode_questions(self.tokenizer, questions, self.max_text_tokens)
        pix = self.image_processor(imgs, return_tensors="pt")  # pads to the largest image, with a pixel mask
        inputs = text_inputs(enc["input_ids"], enc["attention_mask"], self.device, token_types=True)
        inputs.update(pixel_values=pix["pixel_values"].to(self.device), pixel_mask=pix["pixel_mask"].to(self.device))
        return inputs

    def trainable_parameters(self, full: bool = False) -> list:
        return list(self.model.parameters() if full else self.model.classifier.parameters())

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def answer_head(self):
        return self.model.classifier

    def new_answer_init_std(self) -> float:
        return self.model.config.initializer_range

    def set_answer_names(self, answers: list[str]) -> None:
        self._answers = list(answers)
        cfg = self.model.config
        cfg.id2label = {i: a for i, a in enumerate(self._answers)}
        cfg.label2id = {a: i for i, a in enumerate(self._answers)}
        cfg.num_labels = len(self._answers)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
