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

from adapters.inputs import check_image, check_question, encode_question, encode_questions, text_inputs
from adapters.kdvlp_model import CheckpointError, KdvlpModel, load_model, save_checkpoint
from adapters.loading import checkpoint_info, resolve_device, resolve_source
from adapters.pixels import ResizedPixelCache, normalize, stack_resized
from adapters.single_stream import SingleStreamAdapter
from core.errors import AdapterError


class KdvlpAdapter(SingleStreamAdapter):
    name = "kdvlp"
    version = "1"
    default_source = "demo/models/kdvlp-easyvqa"
    description = "KD-VLP style: one transformer over word tokens and CNN grid cells"
    probability_rule = "softmax"  # trained with cross-entropy (demo/train_kdvlp.py: --loss softmax)
    image_token_name = "cell"

    def __init__(self, model: KdvlpModel, tokenizer, model_id: str, device: str = "cpu"):
        device = resolve_device(device)  # "auto" -> a GPU when one is visible
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
        adapter = cls(model, tokenizer, model_id=Path(src).name, device=device)
        adapter.checkpoint = checkpoint_info(src, local)
        return adapter

    def config_summary(self) -> dict:
        c = self.config
        return {"layers": c.num_layers, "heads": c.num_heads, "hidden": c.hidden_size, "grid": [c.grid, c.grid],
                "image_size": c.image_size, "cnn_channels": list(c.cnn_channels), "max_text_tokens": c.max_text_tokens,
                "answers": len(self._answers), "hidden_last": "output of the last encoder layer (post-LN, no final norm)",
                "probability": "softmax of the logits"}

    # ---- encoding --------------------------------------------------------------------------------
    def _pixel_values(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        return normalize(pixels_uint8, self.config.image_mean, self.config.image_std).to(self.device)

    def encode_batch(self, images, questions) -> dict:
        """Model inputs for a batch (training / evaluation): text padded to the longest question."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        enc = encode_questions(self.tokenizer, questions, self.max_text_tokens)
        # resized pixels cached per image object: training reads every image each epoch
        pixels = torch.stack([self._pixel_cache.get(im, self.config.image_size) for im in images])
        return dict(text_inputs(enc["input_ids"], enc["attention_mask"], self.device, token_types=False),
                    pixel_values=self._pixel_values(pixels))

    def _batch_inputs(self, images: list[Image.Image], questions: list[str]) -> dict:
        """``encode_batch`` without the pixel cache: recorded images are seen once."""
        enc = encode_questions(self.tokenizer, questions, self.max_text_tokens)
        return dict(text_inputs(enc["input_ids"], enc["attention_mask"], self.device, token_types=False),
                    pixel_values=self._pixel_values(stack_resized(images, self.config.image_size)))

    def _encode(self, image: Image.Image, question: str):
        image = check_image(image)
        question = check_question(question)
        enc = encode_question(self.tokenizer, question, self.max_text_tokens)
        inputs = dict(text_inputs(enc.input_ids, enc.attention_mask, self.device, token_types=False),
                      pixel_values=self._pixel_values(stack_resized([image], self.config.image_size)))
        return image, question, inputs, enc.offsets, list(enc.notices)

    def _outputs(self, inputs: dict, **kwargs):
        return self.model(inputs["input_ids"], inputs["pixel_values"], inputs.get("attention_mask"), **kwargs)

    def _image_tokens(self, inputs: dict, b: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every grid cell, row-major; cell (r, c) covers its part of the (stretched) source image."""
        cells = np.arange(self.grid ** 2)
        return self.cell_boxes(), np.stack(np.divmod(cells, self.grid), axis=1).astype(np.int32), cells

    def cell_boxes(self) -> np.ndarray:
        """(G*G, 4) boxes of the grid cells, row-major, in 0..1 of the source image (it is stretched)."""
        g = self.grid
        r, c = np.divmod(np.arange(g * g), g)
        return np.stack([c / g, r / g, (c + 1) / g, (r + 1) / g], axis=1).astype(np.float32)

    def _cell_pixels(self) -> int:
        return self.config.image_size // self.grid

    def _patch_grid(self, inputs: dict, b: int = 0) -> list[int]:
        return [self.grid, self.grid]

    # ---- attribution -----------------------------------------------------------------------------
    def attribution_layers(self) -> dict:
        # word embeddings run before positions are added; the CNN output is the (B, C, G, G) grid
        return {"text": self.model.word_embeddings, "image": self.model.cnn}

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

    def answer_head(self):
        return self.model.classifier

    def set_answer_names(self, answers: list[str]) -> None:
        import dataclasses

        self._answers = list(answers)
        self.config = dataclasses.replace(self.model.config, answers=tuple(self._answers))
        self.model.config = self.config

    def save(self, directory: str | Path) -> None:
        """config.json + model.safetensors + tokenizer (docs/kdvlp.md): what ``load`` reads."""
        save_checkpoint(self.model, self.tokenizer, Path(directory))
