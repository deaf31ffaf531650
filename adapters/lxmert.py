"""LXMERT (Tan & Bansal 2019): a dual-stream transformer over words and image regions.

A language encoder (``l_layers``) and a vision encoder (``r_layers``) run separately, then
``x_layers`` cross-modality layers each do: cross attention in both directions (one shared
``LxmertAttention`` module, called first with language queries, then with vision queries),
then a self attention in each stream, then the feed-forward blocks.

Visual input is a set of regions (adapters/regions.py): features (R, visual_feat_dim) and boxes
(R, 4) in 0..1 (x0, y0, x1, y1). They come from either
- a detector, run by the user, saved as an ``.npz`` (see ``load_regions_npz`` and docs/lxmert.md),
  passed with ``run_regions`` / ``run(..., regions=...)``; or
- a region extractor shipped in the checkpoint directory (``region_extractor.safetensors`` +
  ``region_extractor.json``): a small CNN that turns the image into a grid x grid of cells,
  each cell one region with its box (the easy-VQA demo). ``run(image, question)`` uses it.
A model with neither gets a clear ``InputError`` for a plain image.

Quirks handled here (transformers 5.x):
- ``output_attentions`` returns only language self, vision self and language->vision cross
  attention; adapters/lxmert_capture.py captures every kind with forward hooks.
- Hidden states exclude the embeddings; we add them with hooks on the word embeddings block and
  the visual feature encoder. hidden["lang"]: embeddings, l_layers, x_layers;
  hidden["vision"]: visual feature encoder output, r_layers, x_layers (no final norm exists).
- Probabilities: sigmoid of the answer logits (LXMERT's VQA head is trained with binary
  cross-entropy) unless the config says ``answer_probability: "softmax"`` (the easy-VQA demo,
  trained with cross-entropy).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from adapters.base import (PROBABILITY_RULES, Adapter, AttributionSpec, display_copy, probabilities_by_rule,
                           stack_layers, token_geometry)
from adapters.inputs import (check_batch, check_image, check_question, encode_each_question, encode_question,
                             encode_questions, pad_words, text_inputs, text_layout)
from adapters.loading import checkpoint_info, load_error, resolve_device, resolve_source
from adapters.lxmert_capture import capture
from adapters.pixels import ResizedPixelCache
from adapters.regions import GridRegionExtractor, RegionFeatures, load_regions_npz
from core.errors import AdapterError, InputError
from core.ids import example_id_of
from core.kinds import DUAL_STREAM_KINDS, streams
from store.schema import AttentionBlock, HiddenBlock, Prediction, Record

ANSWER_FILES = ("answers.json", "trainval_label2ans.json")

KINDS = DUAL_STREAM_KINDS  # each (layer, head, query, key); core/kinds.py says their streams
NO_REGIONS_MESSAGE = (
    "this model needs detector region features: pass an .npz with 'features' (R, {dim}) and 'boxes' (R, 4) "
    "in pixels of the image (x0, y0, x1, y1), see docs/lxmert.md; it ships no region extractor for plain images"
)


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
        device = resolve_device(device)  # "auto" -> a GPU when one is visible
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
        adapter = cls(model, tokenizer, extractor, model_id=model_id, answers=answers, device=device)
        adapter.checkpoint = checkpoint_info(src, local, model.config)
        return adapter

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

    def answer_head(self):
        return self.model.answer_head.logit_fc

    def new_answer_init_std(self) -> float:
        return self.model.config.initializer_range

    def set_answer_names(self, answers: list[str]) -> None:
        self._answers = list(answers)
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
        enc = encode_question(self.tokenizer, question, self.max_text_tokens)
        inputs = text_inputs(enc.input_ids, enc.attention_mask, self.device, token_types=True)
        inputs.update(self._visual_inputs([image], None if regions is None else [regions]))
        return image, question, inputs, enc.offsets, list(enc.notices), self._region_tokens(regions)

    def _region_tokens(self, regions: RegionFeatures | None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, (R, 4) boxes, (R, 2) row, col or -1) of the image's regions: detector regions, or
        the extractor's grid cells."""
        if regions is not None:
            return ([f"region {k}" for k in range(regions.n_regions)], regions.boxes,
                    np.full((regions.n_regions, 2), -1, np.int32))
        grid = self.extractor.grid_index()
        return [f"cell {r},{c}" for r, c in grid], self.extractor.boxes(), grid

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
        enc = encode_questions(self.tokenizer, questions, self.max_text_tokens)
        inputs = text_inputs(enc["input_ids"], enc["attention_mask"], self.device, token_types=True)
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

    def answer_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return probabilities_by_rule(logits, self.probability_rule)

    # ---- capture ---------------------------------------------------------------------------------
    def _capture(self, *, keep_graph: bool = False, offload: bool = False):
        """Every attention map and both embedding outputs of one forward (adapters/lxmert_capture.py)."""
        return capture(self.model, keep_graph=keep_graph, offload=offload)

    @staticmethod
    def _stream_indices(n_text: int, n_regions: int) -> dict[str, np.ndarray]:
        return {"lang": np.arange(n_text), "vision": np.arange(n_text, n_text + n_regions)}

    # ---- the contract ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: Image.Image, question: str, *, top_k: int = 5,
                regions: RegionFeatures | None = None) -> Prediction:
        _, _, inputs, _, _, _ = self._encode(image, question, regions)
        return self.prediction_from_logits(self.forward_logits(**inputs), top_k)

    def run(self, image: Image.Image, question: str, *, top_k: int = 5, label: str | None = None,
            source_key: str | None = None, regions: RegionFeatures | None = None) -> Record:
        """One forward capturing every attention kind and both streams' hidden states.

        Without ``regions`` the shipped extractor makes grid regions from the image; a model
        without one raises ``InputError`` (use ``run_regions`` with detector features).
        """
        return self.run_batch([image], [question], top_k=top_k, labels=[label], source_keys=[source_key],
                              regions=None if regions is None else [regions])[0]

    @torch.no_grad()
    def run_batch(self, images: list[Image.Image], questions: list[str], *, top_k: int = 5,
                  labels: list | None = None, source_keys: list | None = None,
                  regions: list[RegionFeatures] | None = None) -> list[Record]:
        """``run`` for many examples in one forward (questions padded, detector regions padded with a
        mask); each Record keeps its own words and regions only."""
        rgbs, qs, labels, source_keys = check_batch(images, questions, labels, source_keys)
        if regions is not None and len(regions) != len(rgbs):
            raise InputError(f"need one region set per image (got {len(regions)} for {len(rgbs)} images)")
        encoded = encode_each_question(self.tokenizer, qs, self.max_text_tokens)
        enc = encode_questions(self.tokenizer, qs, self.max_text_tokens)
        inputs = text_inputs(enc["input_ids"], enc["attention_mask"], self.device, token_types=True)
        inputs.update(self._visual_inputs(rgbs, regions))
        with self._capture(offload=True) as cap:
            out = self.model(**self._model_kwargs(inputs), output_hidden_states=True)
        records = []
        for b, e in enumerate(encoded):
            r = None if regions is None else regions[b]
            records.append(self._record(b, rgbs[b], qs[b], e, r, inputs, cap, out, top_k=top_k, label=labels[b],
                                        source_key=source_keys[b]))
        return records

    def _record(self, b: int, rgb: Image.Image, q: str, enc, regions: RegionFeatures | None, inputs: dict,
                cap: dict, out, *, top_k: int, label, source_key) -> Record:
        """Example ``b``'s Record of a batch forward: its first T_b words and R_b regions."""
        names, region_boxes, grid_index = self._region_tokens(regions)
        n_text = len(enc.offsets)
        toks, modality, spans = text_layout(self.tokenizer, inputs["input_ids"][b, :n_text].tolist(), enc.offsets)
        tokens = toks + names
        boxes, grid, token_spans = token_geometry(len(tokens), spans, region_boxes, grid_index)
        idx = self._stream_indices(n_text, len(names))
        return Record(
            example_id=example_id_of(rgb, q), question=q, tokens=tuple(tokens),
            modality=tuple(modality + ["image"] * len(names)), token_boxes=boxes, token_grid=grid,
            token_spans=token_spans, image=display_copy(rgb), attention=self._attention_blocks(cap, idx, b),
            hidden=self._hidden_blocks(cap, out, idx, b),
            prediction=self.prediction_from_logits(out.question_answering_score[b:b + 1], top_k),
            label=label, source_key=source_key, notices=enc.notices, meta=self._record_meta(rgb, regions),
        )

    @staticmethod
    def _attention_blocks(cap: dict, idx: dict, b: int = 0) -> dict[str, AttentionBlock]:
        """Every captured kind of example ``b`` as a float16 block, queries and keys indexed by their
        streams (its words and regions are the first ones of the padded batch's)."""
        attention = {}
        for kind in KINDS:
            maps = cap["attention"][kind]
            if not maps:
                continue  # a stack with zero layers of this kind
            qs, ks = streams(kind)
            nq, nk = len(idx[qs]), len(idx[ks])
            attention[kind] = AttentionBlock(values=stack_layers([m[b:b + 1, :, :nq, :nk] for m in maps]),
                                             query_index=idx[qs], key_index=idx[ks])
        return attention

    @staticmethod
    def _hidden_blocks(cap: dict, out, idx: dict, b: int = 0) -> dict[str, HiddenBlock]:
        """Each stream's embedding output (captured) followed by the model's hidden states, example ``b``."""
        emb = cap["embeddings"]
        layers = {"lang": [emb["lang"], *out.language_hidden_states], "vision": [emb["vision"], *out.vision_hidden_states]}
        return {s: HiddenBlock(values=stack_layers([h[b:b + 1, :len(idx[s])] for h in layers[s]]), token_index=idx[s])
                for s in ("lang", "vision")}

    def _record_meta(self, rgb: Image.Image, regions: RegionFeatures | None) -> dict:
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
        return meta

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
        toks, modality, _ = text_layout(self.tokenizer, inputs["input_ids"][0].tolist(), offsets)
        n_text = len(toks)
        tokens = tuple(toks + names)
        modality = tuple(modality + ["image"] * len(names))
        is_special = np.array([m == "special" for m in modality[:n_text]])
        baselines = dict(inputs, input_ids=pad_words(inputs["input_ids"], ~is_special, self.tokenizer.pad_token_id))
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
                m = torch.from_numpy(mask).to(vf.device)
                vf[:, m] = spec.baselines["visual_feats"][:, m]
                new["visual_feats"] = vf
        if word_mask is not None and np.any(word_mask):
            new["input_ids"] = pad_words(inputs["input_ids"], np.asarray(word_mask, bool) & ~spec.word_is_special,
                                         self.tokenizer.pad_token_id)
        return new
