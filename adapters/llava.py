"""LLaVA (Liu et al. 2023; ``LlavaForConditionalGeneration``): a vision tower (CLIP / SigLIP), a
projector, and a decoder language model (Llama / Qwen style) that generates the answer.

Quirks handled here (transformers 5.x):
- Attention weights exist only with eager attention (SDPA / flash attention return none): the
  model is always loaded with ``attn_implementation="eager"`` and the provenance says so.
- Token geometry follows the image processor exactly: optional pad to square (with the mean colour),
  resize (shortest edge or fixed size), optional center crop, then patches of ``patch_size``. A
  patch's box is the part of the source image it covers after undoing those steps; a patch that
  covers only padding is a special token ("pad patch r,c"), and a border the crop removed is in no
  token's box.
- With ``vision_feature_select_strategy="default"`` the vision tower's CLS feature is dropped (image
  tokens = patches); with "full" the first image token is that CLS feature (special, no box).
- Everything else (prompt, truncation, greedy answers, recording, batches) is the shared
  ``GenerativeAdapter`` (adapters/generative.py); this module holds LLaVA's geometry and hooks.
- The answer is generated greedily (adapters/generative.py): answer tokens are ``role="answer"``,
  text tokens (the end-of-sequence token: special); the prompt's template tokens are special.
- Hidden states are the language model's: layer 0 is the input embeddings (image features already
  in place), then one per decoder layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import numpy as np
from PIL import Image

from adapters.generative import GenerativeAdapter, PromptCoordinates
from core.errors import AdapterError


@dataclass(frozen=True, kw_only=True)
class ImageFrame:
    """Where the processed image's pixels come from: processed (x, y) -> source pixel
    ((x + crop_left) * scale_x - pad_x, (y + crop_top) * scale_y - pad_y)."""

    width: int  # source image size
    height: int
    pad_x: int  # padding added on the left / top by pad-to-square
    pad_y: int
    scale_x: float  # padded pixels per resized pixel
    scale_y: float
    crop_left: int  # resized pixels removed on the left / top (negative: padding added)
    crop_top: int
    out_width: int  # the processed image the vision tower sees
    out_height: int

    def source_box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        """A processed-image box as fractions (0..1) of the source image, clipped to it."""
        def sx(x):
            return min(max(((x + self.crop_left) * self.scale_x - self.pad_x) / self.width, 0.0), 1.0)

        def sy(y):
            return min(max(((y + self.crop_top) * self.scale_y - self.pad_y) / self.height, 0.0), 1.0)

        return sx(x0), sy(y0), sx(x1), sy(y1)


def _crop_offset(size: int, crop: int) -> int:
    """First kept pixel of a center crop (negative: the image is padded by that much first)."""
    if crop <= size:
        return (size - crop) // 2
    return -ceil((crop - size) / 2)


def image_frame(image_processor, width: int, height: int) -> ImageFrame:
    """What ``image_processor`` (a LLaVA image processor) does to a ``width`` x ``height`` image."""
    from transformers.image_utils import SizeDict

    ip = image_processor
    pad_x = pad_y = 0
    w, h = width, height
    if getattr(ip, "do_pad", False) and w != h:
        side = max(w, h)
        pad_x, pad_y = (side - w) // 2, (side - h) // 2
        w = h = side
    rw, rh = w, h
    if ip.do_resize:
        # The processor's own resize on a blank image of this size: its output size, exactly.
        out = ip.resize(np.zeros((3, h, w), np.float32), size=ip.size if isinstance(ip.size, SizeDict) else SizeDict(**ip.size), resample=ip.resample)
        rh, rw = out.shape[-2:]
    left = top = 0
    ow, oh = rw, rh
    if ip.do_center_crop:
        ch, cw = int(ip.crop_size["height"]), int(ip.crop_size["width"])
        left, top = _crop_offset(rw, cw), _crop_offset(rh, ch)
        ow, oh = cw, ch
    return ImageFrame(width=width, height=height, pad_x=pad_x, pad_y=pad_y, scale_x=w / rw, scale_y=h / rh,
                      crop_left=left, crop_top=top, out_width=ow, out_height=oh)


class LlavaAdapter(GenerativeAdapter):
    name = "llava"
    version = "1"
    default_source = "llava-hf/llava-1.5-7b-hf"
    description = "LLaVA: a vision tower, a projector and a language model that generates the answer"
    model_class = "LlavaForConditionalGeneration"
    processor_class = "LlavaProcessor"
    fallback_template = "USER: <image>\n{question} ASSISTANT:"  # LLaVA-1.5's prompt

    def _read_config(self, cfg) -> None:
        self.select_strategy = cfg.vision_feature_select_strategy
        self.patch_size = int(cfg.vision_config.patch_size)

    def _config_extra(self) -> dict:
        return {"patch_size": self.patch_size, "image_size": self.model.config.vision_config.image_size,
                "vision_feature_select_strategy": self.select_strategy}

    def _meta_extra(self, image: Image.Image) -> dict:
        return {"patch_grid": list(self._image_grid())}

    def decoder_layers(self) -> list:
        return list(self.model.model.language_model.layers)

    def projector(self):
        return self.model.model.multi_modal_projector

    def patch_embedding(self):
        tower = self.model.model.vision_tower  # CLIP / SigLIP vision models, with or without a vision_model wrapper
        return getattr(tower, "vision_model", tower).embeddings.patch_embedding

    # ---- geometry --------------------------------------------------------------------------------
    def _image_grid(self) -> tuple[int, int]:
        frame = image_frame(self.image_processor, self.model.config.vision_config.image_size,
                            self.model.config.vision_config.image_size)
        return frame.out_height // self.patch_size, frame.out_width // self.patch_size

    def _max_image_tokens(self) -> int:
        gh, gw = self._image_grid()
        return gh * gw + (1 if self.select_strategy == "full" else 0)

    def _n_image_tokens(self, image: Image.Image) -> int:
        frame = image_frame(self.image_processor, image.width, image.height)
        n = (frame.out_height // self.patch_size) * (frame.out_width // self.patch_size)
        return n + (1 if self.select_strategy == "full" else 0)

    def _place_image_tokens(self, image: Image.Image, ids: list[int], coords: PromptCoordinates, enc) -> None:
        image_pos = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if self.select_strategy == "full" and image_pos:  # the vision tower's CLS feature comes first
            coords.tokens[image_pos[0]] = "[IMG CLS]"
            image_pos = image_pos[1:]
        frame = image_frame(self.image_processor, image.width, image.height)
        p = self.patch_size
        gw = frame.out_width // p
        if len(image_pos) != (frame.out_height // p) * gw:
            raise AdapterError(f"internal: {len(image_pos)} image tokens for a {frame.out_width}x{frame.out_height} "
                               f"image in {p}-pixel patches")
        for k, i in enumerate(image_pos):
            r, c = divmod(k, gw)
            box = frame.source_box(c * p, r * p, (c + 1) * p, (r + 1) * p)
            coords.grid[i] = (r, c)
            if box[2] > box[0] and box[3] > box[1]:
                coords.modality[i], coords.tokens[i], coords.boxes[i] = "image", f"patch {r},{c}", box
            else:  # only padding: no pixel of the source image
                coords.tokens[i] = f"pad patch {r},{c}"

    def _image_features(self, image_inputs: dict) -> list:
        feats = self.model.model.get_image_features(
            pixel_values=image_inputs["pixel_values"], vision_feature_layer=self.model.config.vision_feature_layer,
            vision_feature_select_strategy=self.select_strategy).pooler_output
        return list(feats)
