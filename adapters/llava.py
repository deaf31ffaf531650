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
- The answer is generated greedily (adapters/generative.py): answer tokens are ``role="answer"``,
  text tokens (the end-of-sequence token: special); the prompt's template tokens are special.
- Hidden states are the language model's: layer 0 is the input embeddings (image features already
  in place), then one per decoder layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapters.base import Adapter, probabilities_by_rule
from adapters.generative import ATTENTION_ROWS, LayerCapture, LayerObserver, generative_record, greedy_answer, query_rows
from adapters.inputs import check_image, check_question
from adapters.loading import checkpoint_info, load_error, resolve_device, resolve_source
from core.errors import AdapterError
from store.schema import Prediction, Record

DEFAULT_MAX_NEW_TOKENS = 16
# LLaVA-1.5's prompt, for checkpoints that ship no chat template.
FALLBACK_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"


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


@dataclass(frozen=True, kw_only=True)
class _Prompt:
    """An encoded prompt: model inputs and the record coordinates of its tokens."""

    inputs: dict
    tokens: list
    modality: list
    boxes: np.ndarray  # (N, 4)
    grid: np.ndarray  # (N, 2)
    spans: np.ndarray  # (N, 2)
    notices: list


class LlavaAdapter(Adapter):
    name = "llava"
    version = "1"
    architecture = "generative"
    default_source = "llava-hf/llava-1.5-7b-hf"
    description = "LLaVA: a vision tower, a projector and a language model that generates the answer"
    probability_rule = "softmax"  # over the vocabulary: the next token's probabilities

    def __init__(self, model, processor, model_id: str, device: str = "cpu", *,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, attention_rows: str = "language"):
        if attention_rows not in ATTENTION_ROWS:
            raise AdapterError(f"attention rows must be one of {', '.join(ATTENTION_ROWS)}")
        device = resolve_device(device)  # "auto" -> a GPU when one is visible
        self.model = model.eval().to(device)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.model_id = model_id
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.attention_rows = attention_rows
        cfg = model.config
        self.image_token_id = int(cfg.image_token_id)
        self.select_strategy = cfg.vision_feature_select_strategy
        self.patch_size = int(cfg.vision_config.patch_size)
        self.context = int(getattr(cfg.text_config, "max_position_embeddings", 0) or 2048)
        eos = cfg.text_config.eos_token_id if cfg.text_config.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._fixed_tokens = self._count_fixed_tokens()
        # Text and answer tokens one example may hold: the context minus image and template tokens.
        self.max_text_tokens = max(1, self.context - self._fixed_tokens)

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path | None = None, *, device: str = "cpu") -> "LlavaAdapter":
        from transformers import LlavaForConditionalGeneration, LlavaProcessor

        src, local = resolve_source(source or cls.default_source)
        try:
            # eager: SDPA / flash attention compute no attention weights to record
            model = LlavaForConditionalGeneration.from_pretrained(src, attn_implementation="eager")
            processor = LlavaProcessor.from_pretrained(src)
        except (OSError, ValueError, EnvironmentError) as e:
            raise load_error(str(source), e) from e
        model_id = Path(src).name if local else src
        adapter = cls(model, processor, model_id=model_id, device=device)
        adapter.checkpoint = checkpoint_info(src, local, model.config)
        return adapter

    def answers(self) -> list[str]:
        """A generative model has no answer list: it writes its answer (open vocabulary)."""
        return []

    def answer_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, vocabulary) next-token logits -> probabilities (what greedy decoding picks from)."""
        return probabilities_by_rule(logits, self.probability_rule)

    def config_summary(self) -> dict:
        c = self.model.config
        t, v = c.text_config, c.vision_config
        return {"layers": t.num_hidden_layers, "heads": t.num_attention_heads, "hidden": t.hidden_size,
                "vision_layers": v.num_hidden_layers, "patch_size": self.patch_size, "image_size": v.image_size,
                "vision_feature_select_strategy": self.select_strategy, "context": self.context,
                "max_text_tokens": self.max_text_tokens, "max_new_tokens": self.max_new_tokens,
                "attention_rows": self.attention_rows,
                "attention": "eager (SDPA and flash attention return no weights)",
                "hidden_last": "last decoder layer's output (language model)",
                "probability": "product of the generated tokens' probabilities (greedy decoding)"}

    # ---- prompt and geometry ---------------------------------------------------------------------
    def _prompt_text(self, question: str) -> str:
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return FALLBACK_TEMPLATE.format(question=question).replace("<image>", self.processor.image_token)

    def _image_grid(self) -> tuple[int, int]:
        frame = image_frame(self.image_processor, self.model.config.vision_config.image_size,
                            self.model.config.vision_config.image_size)
        return frame.out_height // self.patch_size, frame.out_width // self.patch_size

    def _count_fixed_tokens(self) -> int:
        """Tokens of a prompt that are not the question: image tokens plus the template's."""
        gh, gw = self._image_grid()
        n_image = gh * gw + (1 if self.select_strategy == "full" else 0)
        probe = "what"
        with_q = len(self.tokenizer(self._prompt_text(probe), add_special_tokens=False)["input_ids"])
        alone = len(self.tokenizer(probe, add_special_tokens=False)["input_ids"])
        return with_q - alone - 1 + n_image  # the unexpanded prompt holds one image placeholder

    def _truncate(self, question: str) -> tuple[str, list[str]]:
        """The part of the question that fits the context with room for the answer, and notices."""
        limit = max(1, self.max_text_tokens - self.max_new_tokens)
        enc = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        notices = []
        unk = self.tokenizer.unk_token_id
        if ids and unk is not None and all(i == unk for i in ids):
            notices.append("none of the question's words are in this model's vocabulary (all unknown)")
        if len(ids) <= limit:
            return question, notices
        notices.append(f"question truncated: {len(ids)} tokens, this model reads at most {limit} beside the image "
                       f"and its answer; words after the cut were ignored")
        return question[:offsets[limit - 1][1]], notices

    def _encode(self, image: Image.Image, question: str) -> tuple[Image.Image, str, _Prompt]:
        image = check_image(image)
        question = check_question(question)
        kept, notices = self._truncate(question)
        prompt = self._prompt_text(kept)
        enc = self.processor(images=image, text=prompt, return_tensors="pt", return_offsets_mapping=True)
        ids = enc["input_ids"][0].tolist()
        offsets = enc["offset_mapping"][0].tolist()
        # Offsets are in the prompt as the processor expanded it (one placeholder per image token).
        n_img = ids.count(self.image_token_id)
        expanded = prompt.replace(self.processor.image_token, self.processor.image_token * n_img)
        q_start = expanded.rfind(kept)
        tokens, modality, boxes, grid, spans = self._prompt_coordinates(image, ids, offsets, q_start, len(kept))
        inputs = {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device),
                  "pixel_values": enc["pixel_values"].to(self.device)}
        return image, question, _Prompt(inputs=inputs, tokens=tokens, modality=modality, boxes=boxes, grid=grid,
                                        spans=spans, notices=notices)

    def _prompt_coordinates(self, image: Image.Image, ids: list[int], offsets: list, q_start: int, q_len: int):
        n = len(ids)
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        modality = ["special"] * n
        boxes = np.full((n, 4), np.nan, np.float32)
        grid = np.full((n, 2), -1, np.int32)
        spans = np.full((n, 2), -1, np.int32)
        for i, (s, e) in enumerate(offsets):  # question words: tokens inside the question's characters
            if ids[i] != self.image_token_id and q_start >= 0 and e > s and s >= q_start and e <= q_start + q_len:
                modality[i], spans[i] = "text", (s - q_start, e - q_start)
        image_pos = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if self.select_strategy == "full" and image_pos:  # the vision tower's CLS feature comes first
            tokens[image_pos[0]] = "[IMG CLS]"
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
            grid[i] = (r, c)
            if box[2] > box[0] and box[3] > box[1]:
                modality[i], tokens[i], boxes[i] = "image", f"patch {r},{c}", box
            else:  # only padding: no pixel of the source image
                tokens[i] = f"pad patch {r},{c}"
        return tokens, modality, boxes, grid, spans

    # ---- the contract ----------------------------------------------------------------------------
    def _answer_text(self, token_ids) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()

    def _generate(self, prompt: _Prompt):
        return greedy_answer(self.model, prompt.inputs, max_new_tokens=self.max_new_tokens, eos_ids=self.eos_ids,
                             pad_id=self.pad_id)

    def predict(self, image: Image.Image, question: str, *, top_k: int = 5) -> Prediction:
        """The generated answer (one: ``top_k`` does not apply to a generated text)."""
        _, _, prompt = self._encode(image, question)
        answer = self._generate(prompt)
        return Prediction(answers=(self._answer_text(answer.token_ids),), probabilities=(min(1.0, answer.probability),),
                          token_probabilities=answer.token_probabilities)

    def run(self, image: Image.Image, question: str, *, top_k: int = 5, label: str | None = None,
            source_key: str | None = None, layer_observer: LayerObserver | None = None) -> Record:
        """Generate the answer, then capture the language model's attention layer by layer over
        prompt + answer (adapters/generative.py). ``layer_observer`` sees each layer's full map."""
        rgb, q, prompt = self._encode(image, question)
        answer = self._generate(prompt)
        gen = list(answer.token_ids)
        specials = set(self.tokenizer.all_special_ids)
        tokens = prompt.tokens + self.tokenizer.convert_ids_to_tokens(gen)
        modality = prompt.modality + ["special" if t in specials else "text" for t in gen]
        role = ["prompt"] * len(prompt.tokens) + ["answer"] * len(gen)
        n_gen = len(gen)
        boxes = np.concatenate([prompt.boxes, np.full((n_gen, 4), np.nan, np.float32)])
        grid = np.concatenate([prompt.grid, np.full((n_gen, 2), -1, np.int32)])
        spans = np.concatenate([prompt.spans, np.full((n_gen, 2), -1, np.int32)])
        ids = torch.cat([prompt.inputs["input_ids"], torch.tensor([gen], dtype=torch.long, device=self.device)], 1)
        qidx = query_rows(modality, self.attention_rows)
        layers = self.model.model.language_model.layers
        with torch.no_grad(), LayerCapture([layer.self_attn for layer in layers], query_index=qidx,
                                           modality=np.asarray(modality), grid=grid, role=np.asarray(role),
                                           observer=layer_observer) as cap:
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prompt.inputs["pixel_values"],
                             output_hidden_states=True, use_cache=False)
        notices = list(prompt.notices)
        if not answer.stopped:
            notices.append(f"answer cut at {self.max_new_tokens} tokens (no end-of-sequence token before the limit)")
        return generative_record(
            image=rgb, question=q, tokens=tokens, modality=modality, role=role, token_boxes=boxes, token_grid=grid,
            token_spans=spans, attention=cap.attention(), query_index=qidx, hidden_states=out.hidden_states,
            answer_text=self._answer_text(gen), answer=answer, label=label, source_key=source_key, notices=notices,
            meta={"model_id": self.model_id, "adapter": self.name, "adapter_version": self.version,
                  "image_size": [rgb.width, rgb.height], "patch_grid": list(self._image_grid()),
                  "attention_rows": self.attention_rows, "attention_implementation": "eager",
                  "answer_rows": "the row of token i is its causal row as a query; the row of token i-1 is the one "
                                 "that generated token i"},
        )

    # ---- batches: training (language-model loss on the answer tokens) and batched answers --------
    def _expanded_prompts(self, images: list[Image.Image], questions: list[str]):
        """Checked images, and each prompt's token ids with its image placeholder expanded."""
        imgs = [check_image(im) for im in images]
        texts = []
        for im, q in zip(imgs, questions):
            kept, _ = self._truncate(check_question(q))
            n_img = self._n_image_tokens(im)
            texts.append(self._prompt_text(kept).replace(self.processor.image_token, self.processor.image_token * n_img))
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return imgs, ids

    def _n_image_tokens(self, image: Image.Image) -> int:
        frame = image_frame(self.image_processor, image.width, image.height)
        n = (frame.out_height // self.patch_size) * (frame.out_width // self.patch_size)
        return n + (1 if self.select_strategy == "full" else 0)

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return self.image_processor(images, return_tensors="pt")["pixel_values"].to(self.device)

    def _distinct_pixels(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels of each distinct image object once, and each example's index into them (a
        training batch holds several questions per image: the vision tower then runs once each)."""
        first: dict[int, int] = {}
        index = [first.setdefault(id(im), len(first)) for im in images]
        distinct = list({id(im): im for im in images}.values())
        return self._pixels(distinct), torch.tensor(index, dtype=torch.long, device=self.device)

    def encode_batch(self, images: list[Image.Image], questions: list[str], answers: list[str] | None = None) -> dict:
        """Right-padded prompts, followed by each answer and an end-of-sequence token when ``answers``
        is given; ``labels`` then holds the answer tokens' ids and -100 everywhere else."""
        imgs, prompts = self._expanded_prompts(images, questions)
        seqs, labels = [], []
        if answers is None:
            seqs, labels = prompts, [[-100] * len(p) for p in prompts]
        else:
            answer_ids = self.tokenizer([str(a) for a in answers], add_special_tokens=False)["input_ids"]
            for p, a in zip(prompts, answer_ids):
                a = list(a) + [self.eos_ids[0]]
                seqs.append(p + a)
                labels.append([-100] * len(p) + a)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        lab = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, lb) in enumerate(zip(seqs, labels)):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
            lab[i, :len(lb)] = torch.tensor(lb)
        pixels, image_index = self._distinct_pixels(images)
        out = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device), "pixel_values": pixels,
               "image_index": image_index}
        if answers is not None:
            out["labels"] = lab.to(self.device)
        return out

    def answer_loss(self, inputs: dict) -> torch.Tensor:
        """Mean cross-entropy of the answer tokens (``labels`` of ``encode_batch``), next-token style."""
        return self.model(**self._with_image_features(inputs), use_cache=False).loss

    def forward_logits(self, **inputs) -> torch.Tensor:
        """(batch, vocabulary) logits of the token after each prompt of ``encode_batch`` (without
        answers): what the first answer token is chosen from."""
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        logits = self.model(**self._with_image_features(inputs), use_cache=False).logits
        last = inputs["attention_mask"].sum(1) - 1  # right padding: each prompt's last token
        return logits[torch.arange(len(last), device=logits.device), last]

    def _with_image_features(self, inputs: dict) -> dict:
        """``inputs`` with the image features put in place as input embeddings: one vision tower
        run per distinct image (``image_index`` maps examples to them)."""
        feats = self.model.model.get_image_features(
            pixel_values=inputs["pixel_values"], vision_feature_layer=self.model.config.vision_feature_layer,
            vision_feature_select_strategy=self.select_strategy).pooler_output
        feats = torch.stack(list(feats))[inputs["image_index"]]  # (batch, image tokens, dim)
        ids = inputs["input_ids"]
        embeds = self.model.get_input_embeddings()(ids)
        mask = (ids == self.image_token_id)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "image_index")}
        return {"inputs_embeds": embeds, **rest}

    @torch.no_grad()
    def generate_batch(self, images: list[Image.Image], questions: list[str]) -> list[str]:
        """Greedy answers of a batch (left-padded prompts); the same texts as ``predict`` one by one."""
        imgs, prompts = self._expanded_prompts(images, questions)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  pixel_values=self._pixels(imgs), max_new_tokens=self.max_new_tokens, do_sample=False,
                                  num_beams=1, eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id,
                                  temperature=None, top_p=None, top_k=None)
        return [self._answer_text(row[width:].tolist()) for row in out]

    def trainable_parameters(self, full: bool = False) -> list:
        """Every weight, or (not ``full``) the projector and the language model's output layer."""
        if full:
            return list(self.model.parameters())
        return list(self.model.model.multi_modal_projector.parameters()) + list(self.model.lm_head.parameters())

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
