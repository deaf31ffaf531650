"""SmolVLM / Idefics3 (``Idefics3ForConditionalGeneration``; ``SmolVLMForConditionalGeneration`` when
the checkpoint's model_type is "smolvlm"): a SigLIP vision tower run on image tiles, a connector that
pixel-shuffles patches into fewer tokens, and a Llama-style language model that generates the answer.

What the processor does to an image (transformers 5.x, followed exactly here):
1. resize so the longest edge is ``size["longest_edge"]`` (aspect kept, the short side rounded to even),
   then (``do_image_splitting``) resize again so both sides are multiples of the tile side
   ``M = max_image_size["longest_edge"]``. Both are resizes of the whole image (no crop, no padding),
   so a processed pixel's position, as a fraction of the image, is the same fraction of the source.
2. if the result is larger than M x M: ``rows x cols`` tiles of M x M, in row-major order, then the
   whole image resized to M x M (the "global image"); else the single M x M image (global only).
   Without splitting: the image resized to M x M.
3. each frame: (M / patch)^2 vision patches; pixel shuffle (``scale_factor`` s) merges s x s patches
   into one image token, row-major: g = M / patch / s tokens a side (``image_seq_len`` = g * g).

Prompt: ``<fake_token_around_image><row_1_col_1>`` + g*g ``<image>`` per tile (a newline after each
row of tiles), then ``<fake_token_around_image><global-img>`` + g*g ``<image><fake_token_around_image>``.
Marker tokens (row/col tags, ``<global-img>``, ``<fake_token_around_image>``, newlines) are "special".

Token geometry:
- token_boxes (authoritative): the area of the SOURCE image a token covers. Tile (r, c) token (i, j):
  x from (c * M + j * s * patch) / (cols * M) to one block further, y likewise; a global token (i, j):
  x from j / g to (j + 1) / g. Tile and global tokens overlap in the image (the global image is a
  coarse copy of the whole picture).
- token labels: "tile r,c patch i,j" and "global patch i,j" (0-based; the marker tokens count from 1).
- token_grid: tile tokens sit on the grid of the tiled image, (r * g + i, c * g + j), rows * g by
  cols * g cells whose neighbours are neighbours in the image; global tokens of a tiled image have no
  grid cell (-1, -1: they would collide with tile cells; their box says where they are). An image
  that is not split has only global tokens: they sit on its g x g grid.
- meta "image_layout": {"tiles": [rows, cols], "tokens_per_side": g, "frame": M}.

SmolVLM checkpoints (model_type "smolvlm", e.g. SmolVLM2) load with their own model class and an
``Idefics3Processor`` built from their image processor and tokenizer (``SmolVLMImageProcessing``:
``SmolVLMProcessor`` needs torchvision); images only, no videos.

Eager attention (SDPA returns no weights), greedy answers, recording and batches: the shared
``GenerativeAdapter`` (adapters/generative.py).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from adapters.generative import GenerativeAdapter, PromptCoordinates
from core.errors import AdapterError

_TILE_MARKER = re.compile(r"<row_(\d+)_col_(\d+)>")
MAX_IMAGE_SIZE = 4096  # the processors' upper bound on a resized side


@dataclass(frozen=True, kw_only=True)
class TileLayout:
    """How the processor cuts one image: ``rows`` x ``cols`` tiles (0 x 0: the global image only)."""

    rows: int
    cols: int

    @property
    def frames(self) -> int:
        return self.rows * self.cols + 1


def _edge(size) -> int | None:
    return size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)


def _longest_edge_size(height: int, width: int, max_len: int) -> tuple[int, int]:
    """The processor's first resize: the longest edge becomes ``max_len``, the other side rounded up to even,
    then both kept within MAX_IMAGE_SIZE (transformers' ``get_resize_output_image_size``)."""
    aspect = width / height
    if width >= height:
        width, height = max_len, int(max_len / aspect)
        height += height % 2
    else:
        height, width = max_len, int(max_len * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def _multiple_size(height: int, width: int, frame: int) -> tuple[int, int]:
    """The processor's second resize (``resize_for_vision_encoder``): both sides up to multiples of ``frame``."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / frame) * frame
        height = math.ceil(int(width / aspect) / frame) * frame
    else:
        height = math.ceil(height / frame) * frame
        width = math.ceil(int(height * aspect) / frame) * frame
    return height, width


def tile_layout(image_processor, width: int, height: int) -> TileLayout:
    """The tiles an Idefics3 / SmolVLM image processor cuts a ``width`` x ``height`` image into."""
    if not image_processor.do_image_splitting:
        return TileLayout(rows=0, cols=0)
    frame = int(_edge(image_processor.max_image_size))
    h, w = height, width
    if image_processor.do_resize:
        h, w = _longest_edge_size(h, w, int(_edge(image_processor.size)))
    h, w = _multiple_size(h, w, frame)
    if h > frame or w > frame:
        return TileLayout(rows=h // frame, cols=w // frame)
    return TileLayout(rows=0, cols=0)


def _model_type(source: str) -> str:
    """The checkpoint's model_type: from its config.json (a local directory or the hub cache)."""
    from transformers.utils import cached_file

    try:
        path = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False)
        return str(json.loads(Path(path).read_text()).get("model_type", "")) if path else ""
    except (OSError, ValueError):
        return ""  # unreachable: the model's own from_pretrained then says why


class SmolVLMImageProcessing:
    """What loads a SmolVLM (model_type "smolvlm") checkpoint's processor here: ``SmolVLMProcessor``
    needs torchvision (for its video processor) and num2words, but for images it writes the same
    prompt as ``Idefics3Processor`` (tile / global markers, ``image_seq_len`` tokens a frame), so the
    adapter builds that from the checkpoint's own image processor, tokenizer and chat template.
    Videos are not supported."""

    @staticmethod
    def from_pretrained(source: str):
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, Idefics3Processor
        from transformers.utils import cached_file

        cfg = AutoConfig.from_pretrained(source)
        v = cfg.vision_config
        seq_len = int((v.image_size // v.patch_size) ** 2 / cfg.scale_factor ** 2)
        tokenizer = AutoTokenizer.from_pretrained(source)
        template = getattr(tokenizer, "chat_template", None)
        for name in ("chat_template.jinja", "chat_template.json"):
            path = None if template else cached_file(source, name, _raise_exceptions_for_missing_entries=False)
            if path:
                text = Path(path).read_text()
                template = json.loads(text)["chat_template"] if name.endswith(".json") else text
        return Idefics3Processor(image_processor=AutoImageProcessor.from_pretrained(source), tokenizer=tokenizer,
                                 image_seq_len=seq_len, chat_template=template)


class Idefics3Adapter(GenerativeAdapter):
    name = "idefics3"
    version = "1"
    default_source = "HuggingFaceTB/SmolVLM-256M-Instruct"
    description = "SmolVLM / Idefics3: image tiles + a global image, pixel shuffle, a language model that answers"
    model_class = "Idefics3ForConditionalGeneration"
    processor_class = "Idefics3Processor"
    image_input_names = ("pixel_values", "pixel_attention_mask")
    fallback_template = "User:<image>{question}<end_of_utterance>\nAssistant:"  # SmolVLM's chat format

    @classmethod
    def _model_classes(cls, source: str):
        import transformers

        if _model_type(source) == "smolvlm":
            return transformers.SmolVLMForConditionalGeneration, SmolVLMImageProcessing
        return super()._model_classes(source)

    def _read_config(self, cfg) -> None:
        self.patch_size = int(cfg.vision_config.patch_size)
        self.scale_factor = int(cfg.scale_factor)
        self.frame = int(_edge(self.image_processor.max_image_size))
        self.side = self.frame // self.patch_size // self.scale_factor  # image tokens a side of a frame
        self.global_token = getattr(self.processor, "global_image_tag", None) or self.processor.global_image_token
        # SmolVLM's chat template ends a turn with <end_of_utterance>: a generated answer stops there too
        eou = self.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
        if eou is not None and eou != self.tokenizer.unk_token_id and eou not in self.eos_ids:
            self.eos_ids = (*self.eos_ids, int(eou))
        if self.side * self.side != self.processor.image_seq_len:
            raise AdapterError(f"processor writes {self.processor.image_seq_len} image tokens per frame, the model "
                               f"makes {self.side}^2 from {self.frame}-pixel frames")

    def _config_extra(self) -> dict:
        ip = self.image_processor
        return {"model_type": self.model.config.model_type, "patch_size": self.patch_size,
                "scale_factor": self.scale_factor, "frame": self.frame, "tokens_per_frame": self.side ** 2,
                "longest_edge": _edge(ip.size), "image_splitting": bool(ip.do_image_splitting)}

    def _meta_extra(self, image: Image.Image) -> dict:
        layout = tile_layout(self.image_processor, image.width, image.height)
        return {"image_layout": {"tiles": [layout.rows, layout.cols], "tokens_per_side": self.side,
                                 "frame": self.frame}}

    def decoder_layers(self) -> list:
        return list(self.model.model.text_model.layers)

    def projector(self):
        return self.model.model.connector

    def patch_embedding(self):
        return self.model.model.vision_model.embeddings.patch_embedding

    # ---- attribution hooks (adapters/generative_attribution.py) --------------------------------------
    def patch_token_index(self, prompt_ids: list[int], n_patches: int) -> np.ndarray:
        """Frame by frame (placeholder order), patch (y, x) of a frame goes to its image token (y // s, x // s)
        of the side x side grid: the pixel shuffle merges s x s patches."""
        pos = np.asarray([i for i, t in enumerate(prompt_ids) if t == self.image_token_id], np.int64)
        n, g = self.side * self.scale_factor, self.side  # patches / tokens a side of a frame
        frames = n_patches // (n * n)
        if frames * n * n != n_patches or len(pos) != frames * g * g:
            raise AdapterError(f"internal: {n_patches} vision patches for {len(pos)} image tokens")
        f, y, x = np.unravel_index(np.arange(n_patches), (frames, n, n))
        return pos[f * g * g + (y // self.scale_factor) * g + x // self.scale_factor]

    def _image_baseline(self, image_inputs: dict) -> dict:
        """Nearly zero pixels (the mean colour): the model drops all-zero frames as padding."""
        import torch

        return {"pixel_values": torch.full_like(image_inputs["pixel_values"], 1e-3)}

    # ---- prompt and geometry -----------------------------------------------------------------------
    def _image_prompt(self, layout: TileLayout) -> str:
        return self.processor.replace_image_token({"rows": [[layout.rows]], "cols": [[layout.cols]]}, 0)

    def _expanded_prompt_text(self, prompt: str, image: Image.Image) -> str:
        layout = tile_layout(self.image_processor, image.width, image.height)
        return prompt.replace(self.processor.image_token, self._image_prompt(layout))

    def _n_image_tokens(self, image: Image.Image) -> int:
        return tile_layout(self.image_processor, image.width, image.height).frames * self.side ** 2

    def _max_image_tokens(self) -> int:
        """Prompt tokens of the largest layout: a square image at the biggest size the processor makes."""
        ip = self.image_processor
        if not ip.do_image_splitting:
            layout = TileLayout(rows=0, cols=0)
        else:
            side = int(_edge(ip.size)) if ip.do_resize else MAX_IMAGE_SIZE
            n = math.ceil(side / self.frame)
            layout = TileLayout(rows=n, cols=n) if n > 1 else TileLayout(rows=0, cols=0)
        return len(self.tokenizer(self._image_prompt(layout), add_special_tokens=False)["input_ids"])

    def _place_image_tokens(self, image: Image.Image, ids: list[int], coords: PromptCoordinates, enc) -> None:
        layout = tile_layout(self.image_processor, image.width, image.height)
        g = self.side
        frame: tuple[int, int] | None = None  # (r, c) of the tile being read, (-1, -1) the global image
        seen: dict[tuple[int, int], int] = {}
        for i, token in enumerate(coords.tokens):
            marker = _TILE_MARKER.fullmatch(token)
            if marker:
                frame = (int(marker.group(1)) - 1, int(marker.group(2)) - 1)
            elif token == self.global_token:
                frame = (-1, -1)
            elif ids[i] == self.image_token_id:
                if frame is None:
                    raise AdapterError("internal: an image token before any tile or global marker")
                k = seen.get(frame, 0)
                seen[frame] = k + 1
                self._place_one(coords, i, frame, divmod(k, g), layout)
        expect = {(r, c) for r in range(layout.rows) for c in range(layout.cols)} | {(-1, -1)}
        if set(seen) != expect or any(n != g * g for n in seen.values()):
            raise AdapterError(f"internal: the prompt's image tokens do not match a {layout.rows} x {layout.cols} "
                               f"tile layout of {g * g} tokens per frame")

    def _place_one(self, coords: PromptCoordinates, i: int, frame: tuple[int, int], cell: tuple[int, int],
                   layout: TileLayout) -> None:
        """Label, box and grid cell of image token ``i``: ``cell`` (row, col) in its ``frame``."""
        g = self.side
        a, b = cell
        if frame == (-1, -1):  # the global image: the whole picture on a g x g grid
            box = (b / g, a / g, (b + 1) / g, (a + 1) / g)
            coords.tokens[i] = f"global patch {a},{b}"
            coords.grid[i] = (a, b) if layout.rows == 0 else (-1, -1)
        else:
            r, c = frame
            box = ((c * g + b) / (layout.cols * g), (r * g + a) / (layout.rows * g),
                   (c * g + b + 1) / (layout.cols * g), (r * g + a + 1) / (layout.rows * g))
            coords.tokens[i] = f"tile {r},{c} patch {a},{b}"
            coords.grid[i] = (r * g + a, c * g + b)
        coords.modality[i], coords.boxes[i] = "image", box

    # ---- batches -----------------------------------------------------------------------------------
    def _pixels(self, images: list[Image.Image]) -> dict:
        """One sample per image (a flat list would be one sample of several images); frames padded to the
        batch's most (all-zero frames, which the model drops)."""
        out = self.image_processor([[im] for im in images], return_tensors="pt")
        return {k: out[k].to(self.device) for k in self.image_input_names}

    def _image_features(self, image_inputs: dict) -> list:
        feats = self.model.model.get_image_features(pixel_values=image_inputs["pixel_values"],
                                                    pixel_attention_mask=image_inputs["pixel_attention_mask"])
        return list(feats.pooler_output)  # per image: (frames x g*g, dim), in placeholder order
