"""LXMERT (Tan & Bansal 2019): a dual-stream transformer over words and image regions.

A language encoder (``l_layers``) and a vision encoder (``r_layers``) run separately, then
``x_layers`` cross-modality layers each do: cross attention in both directions (one shared
``LxmertAttention`` module, called first with language queries, then with vision queries),
then a self attention in each stream, then the feed-forward blocks.

Visual input is a set of regions: features (R, visual_feat_dim) and boxes (R, 4) in 0..1
(x0, y0, x1, y1). They come from either
- a detector, run by the user, saved as an ``.npz`` (see ``load_regions_npz`` and docs/lxmert.md),
  passed with ``run_regions`` / ``run(..., regions=...)``; or
- a region extractor shipped in the checkpoint directory (``region_extractor.safetensors`` +
  ``region_extractor.json``): a small CNN that turns the image into a grid x grid of cells,
  each cell one region with its box (the easy-VQA demo). ``run(image, question)`` uses it.
A model with neither gets a clear ``InputError`` for a plain image.

Quirks handled here (transformers 5.x):
- ``output_attentions`` returns only language self, vision self and language->vision cross
  attention. We capture every kind with forward hooks on the ``LxmertAttention`` modules: a
  pre-hook asks each call for its probabilities, a post-hook takes them and hands the caller
  the output it asked for. No transformers code is edited; hooks are removed after every forward
  (``try``/``finally``). The shared cross module runs twice per layer: its first call of a
  forward is language->vision, its second vision->language (the order of ``LxmertXLayer.cross_att``).
- Hidden states exclude the embeddings; we add them with hooks on the word embeddings block and
  the visual feature encoder. hidden["lang"]: embeddings, l_layers, x_layers;
  hidden["vision"]: visual feature encoder output, r_layers, x_layers (no final norm exists).
- Probabilities: sigmoid of the answer logits (LXMERT's VQA head is trained with binary
  cross-entropy) unless the config says ``answer_probability: "softmax"`` (the easy-VQA demo,
  trained with cross-entropy).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from adapters.base import PROBABILITY_RULES, Adapter, AttributionSpec, display_copy, probabilities_by_rule, stack_layers
from core.kinds import DUAL_STREAM_KINDS, streams
from core.errors import AdapterError, InputError
from core.ids import example_id_of
from adapters.vilt import check_image, check_question, load_error, resolve_source
from store.schema import AttentionBlock, HiddenBlock, Prediction, Record

EXTRACTOR_WEIGHTS = "region_extractor.safetensors"
EXTRACTOR_CONFIG = "region_extractor.json"
EXTRACTOR_FORMAT = "vl-lens-grid-extractor"
ANSWER_FILES = ("answers.json", "trainval_label2ans.json")

KINDS = DUAL_STREAM_KINDS  # each (layer, head, query, key); core/kinds.py says their streams
NO_REGIONS_MESSAGE = (
    "this model needs detector region features: pass an .npz with 'features' (R, {dim}) and 'boxes' (R, 4) "
    "in pixels of the image (x0, y0, x1, y1), see docs/lxmert.md; it ships no region extractor for plain images"
)


# ---- region features ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RegionFeatures:
    """Regions of one image: features (R, D) float32 and boxes (R, 4) x0, y0, x1, y1 in 0..1."""

    features: np.ndarray
    boxes: np.ndarray
    source: str = "detector"

    def __post_init__(self):
        f = np.asarray(self.features)
        b = np.asarray(self.boxes)
        if f.ndim != 2 or f.shape[0] < 1:
            raise InputError(f"region features must be a (regions, dim) array, got shape {f.shape}")
        if not np.issubdtype(f.dtype, np.number) or not np.isfinite(f.astype(np.float64)).all():
            raise InputError("region features must be finite numbers")
        if b.shape != (f.shape[0], 4):
            raise InputError(f"boxes must be ({f.shape[0]}, 4) for {f.shape[0]} regions, got shape {b.shape}")
        if not np.issubdtype(b.dtype, np.number) or not np.isfinite(b.astype(np.float64)).all():
            raise InputError("boxes must be finite numbers")
        b = b.astype(np.float32)
        if (b < -0.01).any() or (b > 1.01).any():
            raise InputError("region boxes lie outside the image: give boxes in pixels of this image "
                             "(x0, y0, x1, y1), or the image size they refer to as 'image_size' (width, height)")
        b = np.clip(b, 0.0, 1.0)
        if (b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any():
            raise InputError("every region box needs x1 > x0 and y1 > y0 (x0, y0, x1, y1 order)")
        f = f.astype(np.float32)
        for arr in (f, b):
            arr.setflags(write=False)
        object.__setattr__(self, "features", f)
        object.__setattr__(self, "boxes", b)

    @classmethod
    def from_pixel_boxes(cls, features, boxes, image_size: tuple[int, int], source: str = "detector"):
        """Boxes in pixels (x0, y0, x1, y1) of an image of ``image_size`` = (width, height)."""
        w, h = (float(s) for s in image_size)
        if w <= 0 or h <= 0:
            raise InputError(f"image size must be positive, got {image_size}")
        b = np.asarray(boxes, dtype=np.float64)
        if b.ndim != 2 or b.shape[-1] != 4:
            raise InputError(f"boxes must be a (regions, 4) array, got shape {b.shape}")
        return cls(features=features, boxes=b / np.array([w, h, w, h]), source=source)

    @property
    def n_regions(self) -> int:
        return self.features.shape[0]


def load_regions_npz(file, image_size: tuple[int, int]) -> RegionFeatures:
    """Read detector regions from an .npz (path, bytes or file object); never unpickles.

    Keys: ``features`` (R, D) float, ``boxes`` (R, 4) pixels x0, y0, x1, y1; optional
    ``image_size`` (width, height) the boxes refer to, when it differs from ``image_size``.
    """
    import io

    if isinstance(file, (bytes, bytearray)):
        file = io.BytesIO(bytes(file))
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read the region file as .npz: {str(e).splitlines()[0] if str(e) else e}") from e
    missing = [k for k in ("features", "boxes") if k not in arrays]
    if missing:
        raise InputError(f"the .npz lacks {', '.join(missing)}: it needs 'features' (R, D) and 'boxes' (R, 4); "
                         f"found {', '.join(sorted(arrays)) or 'nothing'}")
    size = image_size
    if "image_size" in arrays:
        s = np.asarray(arrays["image_size"]).reshape(-1)
        if s.size != 2:
            raise InputError(f"'image_size' must be (width, height), got {s.tolist()}")
        size = (float(s[0]), float(s[1]))
    return RegionFeatures.from_pixel_boxes(arrays["features"], arrays["boxes"], size, source="detector")


class GridRegionExtractor(nn.Module):
    """A small CNN: RGB image -> grid x grid cells, each a region feature (feat_dim).

    Stride-2 convolutions bring the image down, adaptive pooling to ``grid`` x ``grid``, one more
    3 x 3 convolution widens the receptive field to the whole image, a 1 x 1 projects to
    ``feat_dim``. Output (batch, grid * grid, feat_dim), cells in row-major (row, col) order.

    ``norm="batch"`` puts a BatchNorm after every stride-2 convolution (the easy-VQA demo uses it).
    An untrained GELU stack without it is close to positively homogeneous: two images give
    features that differ mostly by a scale factor, which LXMERT's LayerNorm on the visual input
    erases; batch statistics centre each channel across images and keep them apart.
    """

    def __init__(self, *, image_size: int = 64, grid: int = 4, channels=(16, 32, 64, 128), feat_dim: int = 128,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), norm: str = "none"):
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', not {norm!r}")
        self.norm = norm
        self.image_size, self.grid, self.feat_dim = int(image_size), int(grid), int(feat_dim)
        self.channels = tuple(int(c) for c in channels)
        self.mean_values, self.std_values = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        layers, c_in = [], 3
        for c in self.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1)]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.GELU())
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(self.grid), nn.Conv2d(c_in, c_in, 3, padding=1), nn.GELU(),
                   nn.Conv2d(c_in, self.feat_dim, 1)]
        self.net = nn.Sequential(*layers)

    def config(self) -> dict:
        return {"format": EXTRACTOR_FORMAT, "version": 1, "image_size": self.image_size, "grid": self.grid,
                "channels": list(self.channels), "feat_dim": self.feat_dim, "mean": list(self.mean_values),
                "std": list(self.std_values), "norm": self.norm}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, G*G, D)
        return self.net(pixel_values).flatten(2).transpose(1, 2)

    def preprocess(self, images) -> torch.Tensor:
        """PIL image(s) -> normalized (B, 3, S, S) float tensor; the image is stretched to a square."""
        if isinstance(images, Image.Image):
            images = [images]
        s = self.image_size
        arr = np.stack([np.asarray(im.convert("RGB").resize((s, s), Image.Resampling.BILINEAR), np.float32)
                        for im in images])
        return self.normalize(torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean_values).view(1, 3, 1, 1)
        std = torch.tensor(self.std_values).view(1, 3, 1, 1)
        return (x01 - mean) / std

    def grid_index(self) -> np.ndarray:  # (G*G, 2) row, col
        g = self.grid
        return np.stack(np.divmod(np.arange(g * g), g), axis=1).astype(np.int32)

    def boxes(self) -> np.ndarray:  # (G*G, 4) x0, y0, x1, y1 in 0..1
        g = self.grid
        rc = self.grid_index().astype(np.float32)
        return np.stack([rc[:, 1] / g, rc[:, 0] / g, (rc[:, 1] + 1) / g, (rc[:, 0] + 1) / g], axis=1)

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(d / EXTRACTOR_WEIGHTS))
        (d / EXTRACTOR_CONFIG).write_text(json.dumps(self.config(), indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "GridRegionExtractor | None":
        """The extractor saved in ``directory``, or None when there is none. JSON + safetensors only."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / EXTRACTOR_CONFIG).exists():
            return None
        try:
            cfg = json.loads((d / EXTRACTOR_CONFIG).read_text())
            if cfg.get("format") != EXTRACTOR_FORMAT:
                raise ValueError(f"unknown format {cfg.get('format')!r}")
            ext = cls(image_size=cfg["image_size"], grid=cfg["grid"], channels=cfg["channels"],
                      feat_dim=cfg["feat_dim"], mean=cfg["mean"], std=cfg["std"],
                      norm=cfg.get("norm", "none"))
            ext.load_state_dict(load_file(str(d / EXTRACTOR_WEIGHTS)))
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
            raise AdapterError(f"cannot load the region extractor in {d}: {str(e).splitlines()[0]}") from e
        return ext.eval()


class ResizedPixelCache:
    """(3, S, S) uint8 pixels of an image, resized once: training reads each image every epoch.

    Keyed by the image object (the fine-tuning loop keeps one decoded object per image file);
    a weak reference checks the key still names the same object, so a recycled id() never hits.
    Bounded by entries; plain images are cheap to redo when it is full.
    """

    def __init__(self, max_entries: int = 50_000):
        self.max_entries, self.entries = max_entries, {}

    def get(self, image: Image.Image, size: int) -> torch.Tensor:
        import weakref

        hit = self.entries.get(id(image))
        if hit is not None and hit[0]() is image and hit[1].shape[-1] == size:
            return hit[1]
        rgb = check_image(image)  # a converted copy: the key stays the caller's object
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(rgb, np.uint8).copy()).permute(2, 0, 1)
        if len(self.entries) >= self.max_entries:
            self.entries = {k: v for k, v in self.entries.items() if v[0]() is not None}
        if len(self.entries) < self.max_entries:
            try:
                self.entries[id(image)] = (weakref.ref(image), pixels)
            except TypeError:  # not weak-referenceable: do not cache
                pass
        return pixels


# ---- the adapter ---------------------------------------------------------------------------------


class LxmertAdapter(Adapter):
    name = "lxmert"
    version = "1"
    architecture = "dual-stream"
    default_source = "unc-nlp/lxmert-vqa-uncased"
    description = "LXMERT: language and vision encoders joined by cross-modality layers"
    needs = "regions"
    # LXMERT's VQA head is trained with binary cross-entropy; a checkpoint trained with cross-entropy
    # (the easy-VQA demo) says so in its config (answer_probability: "softmax") and sets it per instance.
    probability_rule = "sigmoid"

    def __init__(self, model, tokenizer, extractor: GridRegionExtractor | None, model_id: str,
                 answers: list[str] | None = None, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.extractor = extractor.eval().to(device) if extractor is not None else None
        self.model_id = model_id
        self.device = device
        cfg = model.config
        tok_max = int(tokenizer.model_max_length) if tokenizer.model_max_length < 100_000 else 512
        self.max_text_tokens = min(tok_max, int(cfg.max_position_embeddings))
        self.visual_feat_dim = int(cfg.visual_feat_dim)
        if self.extractor is not None and self.extractor.feat_dim != self.visual_feat_dim:
            raise AdapterError(f"the region extractor gives {self.extractor.feat_dim}-dim features but the model "
                               f"reads {self.visual_feat_dim}")
        n = int(cfg.num_qa_labels)
        if answers is None:
            labels = getattr(cfg, "id2label", None) or {}
            answers = [labels[i] for i in range(n)] if len(labels) == n else [f"answer {i}" for i in range(n)]
        if len(answers) != n:
            raise AdapterError(f"{len(answers)} answer names for {n} answer logits")
        self._answers = list(answers)
        self.probability_rule = str(getattr(cfg, "answer_probability", type(self).probability_rule))
        if self.probability_rule not in PROBABILITY_RULES:
            raise AdapterError(f"config answer_probability {self.probability_rule!r} is not one of "
                               f"{', '.join(PROBABILITY_RULES)}")
        self._pixel_cache = ResizedPixelCache()

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path | None = None, *, device: str = "cpu") -> "LxmertAdapter":
        from transformers import BertTokenizerFast, LxmertForQuestionAnswering

        src, local = resolve_source(source or cls.default_source)
        try:
            try:
                model = LxmertForQuestionAnswering.from_pretrained(src, attn_implementation="eager")
            except ValueError as e:  # an older/newer transformers may not accept the argument for LXMERT
                if "attn_implementation" not in str(e):
                    raise
                model = LxmertForQuestionAnswering.from_pretrained(src)
            tokenizer = BertTokenizerFast.from_pretrained(src)
        except (OSError, ValueError, EnvironmentError) as e:
            raise load_error(str(source), e) from e
        extractor = GridRegionExtractor.load(src) if local else None
        answers = cls._answer_file(src, int(model.config.num_qa_labels)) if local else None
        model_id = Path(src).name if local else src
        return cls(model, tokenizer, extractor, model_id=model_id, answers=answers, device=device)

    @staticmethod
    def _answer_file(directory: str, n: int) -> list[str] | None:
        """Answer names from answers.json (a list) or trainval_label2ans.json (LXMERT's own file)."""
        for name in ANSWER_FILES:
            p = Path(directory) / name
            if p.exists():
                try:
                    names = json.loads(p.read_text())
                except (OSError, ValueError) as e:
                    raise AdapterError(f"cannot read {p}: {e}") from e
                if isinstance(names, list) and len(names) == n and all(isinstance(a, str) for a in names):
                    return names
                raise AdapterError(f"{p} must be a JSON list of {n} answer strings")
        return None

    def save_pretrained(self, directory: str | Path) -> None:
        """Write model, tokenizer and region extractor (if any) so that ``load`` reads them back."""
        d = Path(directory)
        self.model.save_pretrained(d)
        self.tokenizer.save_pretrained(d)
        if self.extractor is not None:
            self.extractor.save(d)

    def save(self, directory: str | Path) -> None:
        """A checkpoint ``load`` reads back: HF LXMERT + tokenizer + region extractor + answers.json."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.save_pretrained(d)
        (d / ANSWER_FILES[0]).write_text(json.dumps(self._answers))

    # ---- training (training/finetune.py) ---------------------------------------------------------
    def trainable_parameters(self, full: bool = False) -> list:
        """The answer head; with ``full`` every weight, the region extractor's CNN included."""
        if not full:
            return list(self.model.answer_head.parameters())
        return [p for m in self.trainable_modules() for p in m.parameters()]

    def set_training(self, training: bool) -> None:
        for m in self.trainable_modules():
            m.train(training)

    def add_answers(self, answers: list[str]) -> None:
        new = [a for a in dict.fromkeys(answers) if a not in set(self._answers)]
        if not new:
            return
        head = self.model.answer_head.logit_fc
        old = head[-1]
        n_old = old.out_features
        layer = nn.Linear(old.in_features, n_old + len(new), device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            layer.weight[:n_old] = old.weight
            layer.bias[:n_old] = old.bias
            layer.weight[n_old:].normal_(0.0, self.model.config.initializer_range)
            # A new answer starts as likely as a typical old one.
            layer.bias[n_old:] = old.bias.mean()
        head[-1] = layer
        self._answers = self._answers + new
        cfg = self.model.config
        cfg.num_qa_labels = len(self._answers)
        self.model.num_qa_labels = len(self._answers)
        cfg.id2label = {i: a for i, a in enumerate(self._answers)}
        cfg.label2id = {a: i for i, a in enumerate(self._answers)}

    def trainable_modules(self) -> list[nn.Module]:
        """Every module whose parameters a fine-tune should update (the extractor is not in ``model``)."""
        return [self.model] + ([self.extractor] if self.extractor is not None else [])

    def answers(self) -> list[str]:
        return list(self._answers)

    def config_summary(self) -> dict:
        c = self.model.config
        out = {"lang_layers": c.l_layers, "vision_layers": c.r_layers, "cross_layers": c.x_layers,
               "heads": c.num_attention_heads, "hidden": c.hidden_size, "visual_feat_dim": c.visual_feat_dim,
               "max_text_tokens": self.max_text_tokens, "answers": len(self._answers),
               "hidden_last": "last cross-modality layer output (LXMERT has no final norm)",
               "probability": f"{self.probability_rule} of the answer logits",
               "regions": "grid cells of the shipped CNN extractor" if self.extractor else "detector .npz"}
        if self.extractor is not None:
            out["region_grid"] = [self.extractor.grid, self.extractor.grid]
        return out

    # ---- encoding --------------------------------------------------------------------------------
    def _encode_text(self, question: str):
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
        return enc, enc["offset_mapping"][0].tolist(), notices

    def _check_regions(self, regions: RegionFeatures) -> None:
        if regions.features.shape[1] != self.visual_feat_dim:
            raise InputError(f"region features have {regions.features.shape[1]} dims but this model reads "
                             f"{self.visual_feat_dim} (LXMERT checkpoints read 2048-dim Faster R-CNN features)")

    def _visual_inputs(self, images: list[Image.Image], regions: list[RegionFeatures] | None) -> dict:
        """Visual model inputs for a batch: extractor pixels, or (padded) detector regions."""
        if regions is None:
            if self.extractor is None:
                raise InputError(NO_REGIONS_MESSAGE.format(dim=self.visual_feat_dim))
            boxes = torch.from_numpy(self.extractor.boxes())
            return {"pixel_values": self.extractor.preprocess(images).to(self.device),
                    "visual_pos": boxes[None].expand(len(images), -1, -1).contiguous().to(self.device)}
        return self._detector_inputs(regions)

    def _detector_inputs(self, regions: list[RegionFeatures]) -> dict:
        for r in regions:
            self._check_regions(r)
        r_max = max(r.n_regions for r in regions)
        feats = torch.zeros(len(regions), r_max, self.visual_feat_dim)
        pos = torch.zeros(len(regions), r_max, 4)
        mask = torch.zeros(len(regions), r_max, dtype=torch.long)
        for i, r in enumerate(regions):
            feats[i, :r.n_regions] = torch.from_numpy(r.features)
            pos[i, :r.n_regions] = torch.from_numpy(r.boxes)
            mask[i, :r.n_regions] = 1
        out = {"visual_feats": feats.to(self.device), "visual_pos": pos.to(self.device)}
        if (mask == 0).any():
            out["visual_attention_mask"] = mask.to(self.device)
        return out

    def _encode(self, image: Image.Image, question: str, regions: RegionFeatures | None):
        image = check_image(image)
        question = check_question(question)
        enc, offsets, notices = self._encode_text(question)
        inputs = {"input_ids": enc["input_ids"].to(self.device),
                  "attention_mask": enc["attention_mask"].to(self.device),
                  "token_type_ids": torch.zeros_like(enc["input_ids"]).to(self.device)}
        inputs.update(self._visual_inputs([image], None if regions is None else [regions]))
        if regions is not None:
            boxes, grid = regions.boxes, np.full((regions.n_regions, 2), -1, np.int32)
            names = [f"region {k}" for k in range(regions.n_regions)]
        else:
            boxes, grid = self.extractor.boxes(), self.extractor.grid_index()
            names = [f"cell {r},{c}" for r, c in grid]
        return image, question, inputs, offsets, notices, (names, boxes, grid)

    def encode_batch(self, images: list[Image.Image], questions: list[str], *,
                     regions: list[RegionFeatures] | None = None) -> dict:
        """Model inputs for a training batch, to pass as ``forward_logits(**inputs)``.

        Questions are padded to the longest (and truncated to ``max_text_tokens``). Visual input
        is the shipped extractor's pixels (``pixel_values`` (distinct images, 3, S, S), ``image_index``
        (B,) into them, and the grid boxes as ``visual_pos``), or, with ``regions`` (one ``RegionFeatures``
        per image), the detector features padded to the most regions with a ``visual_attention_mask``.
        The logits are in ``answers()`` order. Gradients reach the extractor too:
        ``trainable_parameters(full=True)`` includes it.
        """
        if len(images) != len(questions) or not images:
            raise InputError(f"need as many images as questions (got {len(images)} and {len(questions)})")
        if regions is not None and len(regions) != len(images):
            raise InputError(f"need one region set per image (got {len(regions)} for {len(images)} images)")
        questions = [check_question(q) for q in questions]
        enc = self.tokenizer(questions, padding="longest", truncation=True, max_length=self.max_text_tokens,
                             return_tensors="pt")
        inputs = {"input_ids": enc["input_ids"].to(self.device),
                  "attention_mask": enc["attention_mask"].to(self.device),
                  "token_type_ids": torch.zeros_like(enc["input_ids"]).to(self.device)}
        if regions is None and self.extractor is not None:
            inputs.update(self._grid_inputs(images))  # checks each image (once per distinct image)
        else:
            inputs.update(self._visual_inputs([check_image(im) for im in images], regions))
        return inputs

    def _grid_inputs(self, images: list[Image.Image]) -> dict:
        """Extractor inputs for a batch: each distinct image once (``pixel_values``) + ``image_index``.

        Many questions share one image (the fine-tuning loop hands the same decoded image object
        for each), so the CNN runs once per distinct image; its resized pixels are cached per image.
        """
        distinct: dict[int, int] = {}
        index = [distinct.setdefault(id(im), len(distinct)) for im in images]
        unique = list({id(im): im for im in images}.values())
        pixels = torch.stack([self._pixel_cache.get(im, self.extractor.image_size) for im in unique])
        boxes = torch.from_numpy(self.extractor.boxes())
        return {"pixel_values": self.extractor.normalize(pixels.float() / 255.0).to(self.device),
                "image_index": torch.tensor(index, dtype=torch.long, device=self.device),
                "visual_pos": boxes[None].expand(len(images), -1, -1).contiguous().to(self.device)}

    def _model_kwargs(self, inputs: dict) -> dict:
        kw = dict(inputs)
        index = kw.pop("image_index", None)
        if "pixel_values" in kw:
            if self.extractor is None:
                raise InputError(NO_REGIONS_MESSAGE.format(dim=self.visual_feat_dim))
            feats = self.extractor(kw.pop("pixel_values"))
            kw["visual_feats"] = feats if index is None else feats[index]
        return kw

    def _text_tokens(self, inputs, offsets):
        ids = inputs["input_ids"][0].tolist()
        toks = self.tokenizer.convert_ids_to_tokens(ids)
        specials = set(self.tokenizer.all_special_ids) - {self.tokenizer.unk_token_id}
        modality = ["special" if i in specials else "text" for i in ids]
        spans = [(s, e) if m == "text" else (-1, -1) for (s, e), m in zip(offsets, modality)]
        return toks, modality, spans

    def answer_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return probabilities_by_rule(logits, self.probability_rule)

    # ---- capture ---------------------------------------------------------------------------------
    def _attention_modules(self) -> list[tuple[nn.Module, tuple[str, ...], int]]:
        """(LxmertAttention module, kinds of its successive calls in one forward, layer index)."""
        enc = self.model.lxmert.encoder
        out = [(layer.attention.self, ("lang_self",), i) for i, layer in enumerate(enc.layer)]
        out += [(layer.attention.self, ("vision_self",), i) for i, layer in enumerate(enc.r_layers)]
        for i, x in enumerate(enc.x_layers):
            # One shared module, called language->vision first, then vision->language (LxmertXLayer.cross_att).
            out.append((x.visual_attention.att, ("cross_l2v", "cross_v2l"), i))
            out.append((x.lang_self_att.self, ("cross_lang_self",), i))
            out.append((x.visn_self_att.self, ("cross_vision_self",), i))
        return out

    def _layer_counts(self) -> dict[str, int]:
        c = self.model.config
        return {"lang_self": c.l_layers, "vision_self": c.r_layers, "cross_l2v": c.x_layers,
                "cross_v2l": c.x_layers, "cross_lang_self": c.x_layers, "cross_vision_self": c.x_layers}

    @contextmanager
    def _capture(self, *, keep_graph: bool = False):
        """Hooks that collect every attention map and both embedding outputs during one forward.

        Yields {"attention": {kind: [tensor (B, H, Q, K) per layer]}, "embeddings": {stream: tensor}}.
        With ``keep_graph`` the tensors stay in the autograd graph (they are the very tensors the
        model multiplies with the values, so their gradients are the model's).
        """
        counts = self._layer_counts()
        captured: dict = {"attention": {k: [None] * n for k, n in counts.items()}, "embeddings": {}}
        handles = []

        def keep(t):
            return t if keep_graph else t.detach()

        try:
            for module, kinds, layer in self._attention_modules():
                state = {"calls": 0, "asked": False}

                def pre(mod, args, kwargs, state=state):
                    asked = kwargs.get("output_attentions", args[3] if len(args) > 3 else False)
                    state["asked"] = bool(asked)
                    return args[:3], dict(kwargs, output_attentions=True)

                def post(mod, args, kwargs, output, state=state, kinds=kinds, layer=layer):
                    kind = kinds[state["calls"] % len(kinds)]
                    state["calls"] += 1
                    captured["attention"][kind][layer] = keep(output[1])
                    return output if state["asked"] else output[:1]

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(module.register_forward_hook(post, with_kwargs=True))

            def emb_hook(stream):
                def hook(mod, args, output):
                    captured["embeddings"][stream] = keep(output)
                return hook

            handles.append(self.model.lxmert.embeddings.register_forward_hook(emb_hook("lang")))
            handles.append(self.model.lxmert.encoder.visn_fc.register_forward_hook(emb_hook("vision")))
            yield captured
        finally:
            for h in handles:
                h.remove()
        missing = [f"{k}[{i}]" for k, maps in captured["attention"].items() for i, m in enumerate(maps) if m is None]
        if missing:
            raise AdapterError(f"internal: attention not captured for {', '.join(missing[:4])}")

    @staticmethod
    def _stream_indices(n_text: int, n_regions: int) -> dict[str, np.ndarray]:
        return {"lang": np.arange(n_text), "vision": np.arange(n_text, n_text + n_regions)}

    # ---- the contract ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: Image.Image, question: str, *, top_k: int = 5,
                regions: RegionFeatures | None = None) -> Prediction:
        _, _, inputs, _, _, _ = self._encode(image, question, regions)
        return self.prediction_from_logits(self.forward_logits(**inputs), top_k)

    @torch.no_grad()
    def run(self, image: Image.Image, question: str, *, top_k: int = 5, label: str | None = None,
            source_key: str | None = None, regions: RegionFeatures | None = None) -> Record:
        """One forward capturing every attention kind and both streams' hidden states.

        Without ``regions`` the shipped extractor makes grid regions from the image; a model
        without one raises ``InputError`` (use ``run_regions`` with detector features).
        """
        rgb, q, inputs, offsets, notices, (names, region_boxes, grid_index) = self._encode(image, question, regions)
        with self._capture() as cap:
            out = self.model(**self._model_kwargs(inputs), output_hidden_states=True)
        toks, modality, spans = self._text_tokens(inputs, offsets)
        n_text, n_reg = len(toks), len(names)
        tokens = toks + names
        modality = modality + ["image"] * n_reg
        n = len(tokens)
        boxes = np.full((n, 4), np.nan, np.float32)
        boxes[n_text:] = region_boxes
        grid = np.full((n, 2), -1, np.int32)
        grid[n_text:] = grid_index
        token_spans = np.full((n, 2), -1, np.int32)
        token_spans[:n_text] = np.asarray(spans, np.int32).reshape(-1, 2)
        idx = self._stream_indices(n_text, n_reg)
        attention = {}
        for kind in KINDS:
            maps = cap["attention"][kind]
            if not maps:
                continue  # a stack with zero layers of this kind
            qs, ks = streams(kind)
            attention[kind] = AttentionBlock(values=stack_layers(maps), query_index=idx[qs], key_index=idx[ks])
        emb = cap["embeddings"]
        hidden = {
            "lang": HiddenBlock(values=stack_layers([emb["lang"], *out.language_hidden_states]), token_index=idx["lang"]),
            "vision": HiddenBlock(values=stack_layers([emb["vision"], *out.vision_hidden_states]),
                                  token_index=idx["vision"]),
        }
        c = self.model.config
        meta = {"model_id": self.model_id, "adapter": self.name, "adapter_version": self.version,
                "image_size": [rgb.width, rgb.height],
                "regions": "grid" if regions is None else regions.source,
                "hidden_layers": {
                    "lang": ["embeddings"] + [f"lang {i + 1}" for i in range(c.l_layers)]
                            + [f"cross {i + 1}" for i in range(c.x_layers)],
                    "vision": ["visual feature encoder"] + [f"vision {i + 1}" for i in range(c.r_layers)]
                              + [f"cross {i + 1}" for i in range(c.x_layers)]}}
        if regions is None:
            meta["patch_grid"] = [self.extractor.grid, self.extractor.grid]
        return Record(
            example_id=example_id_of(rgb, q), question=q, tokens=tuple(tokens), modality=tuple(modality),
            token_boxes=boxes, token_grid=grid, token_spans=token_spans, image=display_copy(rgb),
            attention=attention, hidden=hidden, prediction=self.prediction_from_logits(out.question_answering_score, top_k),
            label=label, source_key=source_key, notices=tuple(notices), meta=meta,
        )

    def run_regions(self, image: Image.Image, question: str, features, boxes, *, top_k: int = 5,
                    label: str | None = None, source_key: str | None = None) -> Record:
        """``run`` with detector regions: features (R, D), boxes (R, 4) in pixels of ``image``."""
        rgb = check_image(image)
        regions = RegionFeatures.from_pixel_boxes(features, boxes, rgb.size)
        return self.run(rgb, question, top_k=top_k, label=label, source_key=source_key, regions=regions)

    def run_npz(self, image: Image.Image, question: str, npz, **kwargs) -> Record:
        """``run`` with regions read from an .npz (see ``load_regions_npz``)."""
        rgb = check_image(image)
        return self.run(rgb, question, regions=load_regions_npz(npz, rgb.size), **kwargs)

    # ---- attribution -----------------------------------------------------------------------------
    def attribution_spec(self, image: Image.Image, question: str, *,
                         regions: RegionFeatures | None = None) -> AttributionSpec:
        rgb, q, inputs, offsets, notices, (names, region_boxes, grid_index) = self._encode(image, question, regions)
        toks, modality, _ = self._text_tokens(inputs, offsets)
        n_text = len(toks)
        tokens = tuple(toks + names)
        modality = tuple(modality + ["image"] * len(names))
        is_special = np.array([m == "special" for m in modality[:n_text]])
        base_ids = inputs["input_ids"].clone()
        base_ids[0, torch.from_numpy(~is_special)] = self.tokenizer.pad_token_id
        baselines = dict(inputs, input_ids=base_ids)
        for key in ("pixel_values", "visual_feats"):
            if key in inputs:
                baselines[key] = torch.zeros_like(inputs[key])
        extra = {"example_id": example_id_of(rgb, q), "grid_index": grid_index}
        if regions is None:
            extra["region_grid"] = (self.extractor.grid, self.extractor.grid)
        return AttributionSpec(
            record_tokens=tokens, record_modality=modality, inputs=inputs, baselines=baselines,
            word_token_index=np.arange(n_text), word_is_special=is_special, region_boxes=region_boxes,
            region_token_index=np.arange(n_text, len(tokens)), cls_token_index=0, notices=tuple(notices),
            extra=extra,
        )

    def forward_logits(self, **inputs) -> torch.Tensor:
        """(batch, answers) logits from ``encode_batch`` / ``attribution_spec`` inputs."""
        return self.model(**self._model_kwargs(inputs)).question_answering_score

    def attribution_layers(self) -> dict:
        """Word embeddings (B, T, D) and the visual feature projection (B, R, hidden).

        The projection (``visn_fc.visn_fc``) reads the region features whether they come from the
        extractor or from a detector, so image attributions have one place and one shape: one row per region.
        """
        lx = self.model.lxmert
        return {"text": lx.embeddings.word_embeddings, "image": lx.encoder.visn_fc.visn_fc}

    def layer_scores(self, name: str, attribution, spec: AttributionSpec) -> np.ndarray:
        if name not in ("text", "image"):
            raise KeyError(name)
        return attribution.detach().float().sum(-1)[0].cpu().numpy()  # (B, T|R, D) -> (T,) | (R,)

    def attention_probs(self, inputs: dict):
        """(logits, {kind: [tensor (B, H, Q, K) per layer]}, {kind: (query_index, key_index)}).

        The maps are the tensors the model multiplies with the values, so they are in the graph.
        The answer head reads only the language [CLS], so the last cross layer's vision-side maps
        (``cross_v2l[-1]``, ``cross_vision_self[-1]``) cannot affect the logits: after backward
        their ``grad`` stays None; treat it as zero.
        """
        n_text = int(inputs["input_ids"].shape[1])
        n_reg = int(inputs["visual_pos"].shape[1])
        with self._capture(keep_graph=True) as cap:
            logits = self.forward_logits(**inputs)
        idx = self._stream_indices(n_text, n_reg)
        maps = {k: list(v) for k, v in cap["attention"].items() if v}
        index = {k: tuple(idx[s] for s in streams(k)) for k in maps}
        return logits, maps, index

    def occlude(self, inputs: dict, spec: AttributionSpec, *, region_mask=None, word_mask=None) -> dict:
        """Regions: grid cells' pixels (extractor) or detector feature rows replaced by the baseline."""
        new = dict(inputs)
        if region_mask is not None and np.any(region_mask):
            mask = np.asarray(region_mask, bool)
            if "pixel_values" in inputs:
                pv = inputs["pixel_values"].clone()
                base = spec.baselines["pixel_values"]
                s = pv.shape[-1]
                for x0, y0, x1, y1 in spec.region_boxes[mask]:
                    r0, r1 = int(round(y0 * s)), int(round(y1 * s))
                    c0, c1 = int(round(x0 * s)), int(round(x1 * s))
                    pv[..., r0:r1, c0:c1] = base[..., r0:r1, c0:c1]
                new["pixel_values"] = pv
            else:
                vf = inputs["visual_feats"].clone()
                m = torch.from_numpy(mask)
                vf[:, m] = spec.baselines["visual_feats"][:, m]
                new["visual_feats"] = vf
        if word_mask is not None and np.any(word_mask):
            ids = inputs["input_ids"].clone()
            m = torch.from_numpy(np.asarray(word_mask, bool) & ~spec.word_is_special)
            ids[:, m] = self.tokenizer.pad_token_id
            new["input_ids"] = ids
        return new
