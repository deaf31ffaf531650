"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration``,
picked from the checkpoint's ``model_type``): a vision transformer at dynamic resolution, a 2 x 2
patch merger, and a Qwen2 language model with multimodal rotary positions.

Quirks handled here (transformers 5.x):
- Dynamic resolution: the image processor resizes each image ("smart resize", aspect ratio kept) to
  multiples of ``patch_size * merge_size`` (28 px for the released models) within its min / max
  pixels, with no padding and no crop; each ``merge x merge`` block of patches becomes one image
  token. The merged grid is read from the ``image_grid_thw`` the processor returns: an image token
  at merged cell (row, col) of a rows x cols grid covers (col / cols, row / rows) to
  ((col + 1) / cols, (row + 1) / rows) of the source image, since the resize maps the whole image
  onto the whole grid. Image tokens follow in row-major order of merged cells, as the processor's
  patch order and the model's rotary positions have them.
- ``<|vision_start|>`` / ``<|vision_end|>`` and the chat template's tokens are special tokens.
- Multimodal rotary positions (M-RoPE): image tokens get (time, row, column) positions, text after
  the image continues after the image's largest index. The model computes them from
  ``mm_token_type_ids`` (1 at image tokens) and ``image_grid_thw``; the recording's one forward over
  prompt + answer passes positions from the model's own ``get_rope_index``, the positions that
  ``generate`` used (tests/test_qwen2_vl.py checks the rows against generate's).
- A generated token is embedded as text even if it is an image placeholder id (as generate does):
  the recording forward places image features only at the prompt's image tokens.
- Eager attention (SDPA / flash return no weights), said in the provenance.
- ``Qwen2VLProcessor`` requires a video processor, and transformers' video processors need
  torchvision (not a dependency here): the adapter loads ``ImageTextProcessor``, a Qwen2VLProcessor
  with the image processor and tokenizer only (videos are not supported).
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from transformers import Qwen2VLProcessor

from adapters.generative import GenerativeAdapter, PromptCoordinates
from core.errors import AdapterError

# model_type of a checkpoint's config -> the transformers model class that runs it
MODEL_CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}


class ImageTextProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor over images and text only: no video processor (those need torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def merged_grid(image_processor, width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of image tokens the Qwen2-VL image processor makes of a ``width`` x ``height`` image:
    its own smart resize, in patches, divided by the merge size."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    ip = image_processor
    factor = ip.patch_size * ip.merge_size
    h, w = height, width
    if ip.do_resize:
        h, w = smart_resize(height, width, factor=factor, min_pixels=ip.size["shortest_edge"],
                            max_pixels=ip.size["longest_edge"])
    return h // factor, w // factor


class Qwen2VLAdapter(GenerativeAdapter):
    name = "qwen2_vl"
    version = "1"
    default_source = "Qwen/Qwen2-VL-2B-Instruct"
    description = "Qwen2-VL / Qwen2.5-VL: dynamic-resolution vision, 2x2 patch merge, a language model that generates"
    image_input_names = ("pixel_values", "image_grid_thw")
    fallback_template = "<|im_start|>user\n<|vision_start|><image><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def _model_classes(cls, source: str):
        import transformers

        model_type = transformers.AutoConfig.from_pretrained(source).model_type  # never trust_remote_code
        if model_type not in MODEL_CLASSES:
            raise AdapterError(f"{source}: a {model_type!r} checkpoint, not Qwen2-VL / Qwen2.5-VL "
                               f"({', '.join(MODEL_CLASSES)})")
        return getattr(transformers, MODEL_CLASSES[model_type]), ImageTextProcessor

    def _read_config(self, cfg) -> None:
        self.family = cfg.model_type
        self.merge = int(cfg.vision_config.spatial_merge_size)
        self.patch_size = int(cfg.vision_config.patch_size)
        ip = self.image_processor
        if (int(ip.patch_size), int(ip.merge_size)) != (self.patch_size, self.merge):
            raise AdapterError(f"the image processor's {ip.patch_size}-pixel patches merged {ip.merge_size} x "
                               f"{ip.merge_size} do not match the vision tower's {self.patch_size} / {self.merge}")

    def _config_extra(self) -> dict:
        ip = self.image_processor
        return {"family": self.family, "patch_size": self.patch_size, "merge_size": self.merge,
                "min_pixels": int(ip.size["shortest_edge"]), "max_pixels": int(ip.size["longest_edge"]),
                "image_tokens": "one per merged 2x2 block of patches; grid from the processor's image_grid_thw"}

    def _meta_extra(self, image: Image.Image) -> dict:
        return {"patch_grid": list(merged_grid(self.image_processor, image.width, image.height))}

    # ---- modules ---------------------------------------------------------------------------------
    def decoder_layers(self) -> list:
        return list(self.model.model.language_model.layers)

    def projector(self):
        return self.model.model.visual.merger

    def patch_embedding(self):
        return self.model.model.visual.patch_embed

    # ---- attribution hooks (adapters/generative_attribution.py) --------------------------------------
    def patch_token_index(self, prompt_ids: list[int], n_patches: int) -> np.ndarray:
        """The processor orders patches so that each merge x merge group is consecutive: patch k -> image token
        k // merge^2."""
        pos = np.asarray([i for i, t in enumerate(prompt_ids) if t == self.image_token_id], np.int64)
        if len(pos) * self.merge ** 2 != n_patches:
            raise AdapterError(f"internal: {n_patches} vision patches for {len(pos)} image tokens")
        return pos[np.arange(n_patches) // self.merge ** 2]

    def _decoder(self, embeds, mask, seq_ids, prompt_length: int, image_inputs: dict, output_attentions: bool):
        """The language model on teacher-forced rows with each row's multimodal rotary positions (the
        rows of one input share its image: ``image_grid_thw`` repeated; image tokens only in the prompt)."""
        import torch

        grid = image_inputs["image_grid_thw"]
        rows = len(seq_ids) // len(grid)
        in_prompt = torch.arange(seq_ids.shape[1], device=seq_ids.device) < prompt_length
        positions, _ = self.model.model.get_rope_index(
            seq_ids, mm_token_type_ids=((seq_ids == self.image_token_id) & in_prompt).long() * mask,
            image_grid_thw=grid.repeat_interleave(rows, 0), attention_mask=mask)
        out = self.model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                               output_attentions=output_attentions)
        return out.last_hidden_state, (out.attentions if output_attentions else None)

    def _image_features(self, image_inputs: dict) -> list:
        out = self.model.model.get_image_features(pixel_values=image_inputs["pixel_values"],
                                                  image_grid_thw=image_inputs["image_grid_thw"])
        return list(out.pooler_output)

    # ---- geometry --------------------------------------------------------------------------------
    def _n_image_tokens(self, image: Image.Image) -> int:
        rows, cols = merged_grid(self.image_processor, image.width, image.height)
        return rows * cols

    def _max_image_tokens(self) -> int:
        return int(self.image_processor.size["longest_edge"]) // (self.patch_size * self.merge) ** 2

    def _place_image_tokens(self, image: Image.Image, ids: list[int], coords: PromptCoordinates, enc) -> None:
        t, gh, gw = (int(v) for v in enc["image_grid_thw"][0])
        rows, cols = gh // self.merge, gw // self.merge
        image_pos = [i for i, tok in enumerate(ids) if tok == self.image_token_id]
        if len(image_pos) != t * rows * cols:
            raise AdapterError(f"internal: {len(image_pos)} image tokens for a {rows} x {cols} merged grid")
        for k, i in enumerate(image_pos):
            r, c = divmod(k, cols)
            coords.modality[i], coords.tokens[i] = "image", f"patch {r},{c}"
            coords.boxes[i] = (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows)
            coords.grid[i] = (r, c)

    # ---- model inputs: multimodal rotary positions -------------------------------------------------
    def _extra_model_inputs(self, input_ids) -> dict:
        """``mm_token_type_ids`` (1 at image tokens, 0 elsewhere), what the processor returns with
        ``input_ids`` and the model needs for its rotary positions."""
        return {"mm_token_type_ids": (input_ids == self.image_token_id).long()}

    def _sequence_inputs(self, ids, prompt) -> dict:
        """Model inputs for one causal forward over prompt + generated tokens (``ids``, (1, N)):
        image features at the prompt's image tokens only, and the rotary positions generate used."""
        import torch

        n_prompt = prompt.inputs["input_ids"].shape[1]
        types = torch.zeros_like(ids)
        types[:, :n_prompt] = prompt.inputs["mm_token_type_ids"]
        embeds = self._embed_with_images(ids, types == 1, prompt.image_inputs(self.image_input_names), None)
        positions, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=types,
                                                       image_grid_thw=prompt.inputs["image_grid_thw"])
        return {"inputs_embeds": embeds, "position_ids": positions, "attention_mask": torch.ones_like(ids)}

    def _with_image_features(self, inputs: dict) -> dict:
        """Training and first-token logits (``encode_batch``'s right-padded rows): input embeddings
        with each row's image features, and each row's rotary positions (the model cannot compute
        them from embeddings alone)."""
        ids, index = inputs["input_ids"], inputs["image_index"]
        types = self._extra_model_inputs(ids)["mm_token_type_ids"]
        embeds = self._embed_with_images(ids, types == 1, {k: inputs[k] for k in self.image_input_names}, index)
        positions, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=types,
                                                       image_grid_thw=inputs["image_grid_thw"][index],
                                                       attention_mask=inputs["attention_mask"])
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "image_index", *self.image_input_names)}
        return {"inputs_embeds": embeds, "position_ids": positions, **rest}
