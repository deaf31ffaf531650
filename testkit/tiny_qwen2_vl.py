"""A tiny random Qwen2-VL (or Qwen2.5-VL) saved to a temp dir, built offline: a 2-block vision tower
(7-pixel patches, 2 x 2 merge: one image token per 14 x 14 pixels of the resized image), a 2-layer
language model of width 32, a WordLevel tokenizer with Qwen's chat markers and a Qwen2-VL chat
template, and a processor whose min / max pixels keep tiny images to a few image tokens.

With min 784 / max 3136 pixels: a 64 x 64 image is resized to 56 x 56 (4 x 4 image tokens), a
56 x 40 image to 56 x 42 (3 rows x 4 columns).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from testkit.tiny_vilt import ANSWERS, QUESTIONS

# Qwen's marker tokens (pad / end of text first: the tokenizer's pad token).
MARKERS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
SYSTEM = "You are a helpful assistant."
# Qwen2-VL-Instruct's template, shortened to what an image + text message needs.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    + SYSTEM + "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True, kw_only=True)
class TinyQwenShape:
    patch: int = 7
    merge: int = 2
    vision_embed: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    hidden: int = 32
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1  # grouped-query attention, as the real models
    context: int = 128
    min_pixels: int = 784  # 4 image tokens at least
    max_pixels: int = 3136  # 16 image tokens at most
    extra_vocab: int = 0  # embedding rows past the tokenizer's ids (released checkpoints have some)


def build_tokenizer(texts: list[str], *, context: int):
    """The demo LLaVA's lower-cased WordLevel tokenizer (demo/llava_init.py) over the words of ``texts``
    and of the template, with Qwen's markers as special tokens: pad <|endoftext|>, end <|im_end|>."""
    from demo.llava_init import build_tokenizer as wordlevel

    tok = wordlevel(list(texts) + [SYSTEM, "system user assistant"], context=context)
    tok.add_special_tokens({"pad_token": MARKERS[0], "eos_token": "<|im_end|>",
                            "additional_special_tokens": MARKERS[1:]})
    return tok


def build_bpe_tokenizer(texts: list[str], *, context: int):
    """A byte-level BPE tokenizer as Qwen's ("Ġ" marks a leading space, offsets keep it: no trimming),
    trained here on the words of ``texts`` and of the template, with Qwen's markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=MARKERS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) + [SYSTEM, "system user assistant"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=MARKERS[0], eos_token="<|im_end|>",
                                   model_max_length=context)
    fast.add_special_tokens({"additional_special_tokens": MARKERS[1:]})
    return fast


def build_processor(tokenizer, shape: TinyQwenShape):
    """The image processor both families use, with the tokenizer (Qwen2VLProcessor without videos:
    adapters/qwen2_vl.py says why)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from adapters.qwen2_vl import ImageTextProcessor

    ip = Qwen2VLImageProcessorPil(patch_size=shape.patch, merge_size=shape.merge, temporal_patch_size=2,
                                  min_pixels=shape.min_pixels, max_pixels=shape.max_pixels)
    return ImageTextProcessor(image_processor=ip, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_model(tokenizer, shape: TinyQwenShape, *, family: str, seed: int):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig, \
        Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    half_head = shape.hidden // shape.heads // 2
    section = [half_head - 2 * (half_head // 3), half_head // 3, half_head // 3]  # temporal, height, width
    text = dict(vocab_size=len(tokenizer) + shape.extra_vocab, hidden_size=shape.hidden, intermediate_size=shape.hidden * 4,
                num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                max_position_embeddings=shape.context, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section})
    vision = dict(depth=shape.vision_depth, num_heads=shape.vision_heads, patch_size=shape.patch,
                  spatial_merge_size=shape.merge, temporal_patch_size=2, in_channels=3)
    if family == "qwen2_5_vl":
        vision.update(hidden_size=shape.vision_embed, intermediate_size=shape.vision_embed * 2,
                      out_hidden_size=shape.hidden, window_size=shape.patch * shape.merge * 2,
                      fullatt_block_indexes=[shape.vision_depth - 1])
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    else:
        vision.update(embed_dim=shape.vision_embed, hidden_size=shape.hidden, mlp_ratio=2)
        config_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    ids = tokenizer.convert_tokens_to_ids
    config = config_cls(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                        vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False)
    config._attn_implementation = "eager"
    return model_cls(config).eval()


def make_tiny_qwen2_vl(path: Path, *, family: str = "qwen2_vl", seed: int = 0,
                       shape: TinyQwenShape = TinyQwenShape(), tokenizer: str = "wordlevel") -> Path:
    """Build a random Qwen2-VL (``family`` "qwen2_vl" or "qwen2_5_vl") and save model, tokenizer and
    processor; ``tokenizer``: "wordlevel" or "bpe" (byte-level, as the released models')."""
    build = build_bpe_tokenizer if tokenizer == "bpe" else build_tokenizer
    tok = build(QUESTIONS + ANSWERS, context=shape.context)
    model = build_model(tok, shape, family=family, seed=seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    build_processor(tok, shape).save_pretrained(path)
    return path


def make_tiny_adapter(tmp_path: Path):
    """Contract-suite factory: (adapter, a non-square PIL image it accepts)."""
    import numpy as np
    from PIL import Image

    from adapters.qwen2_vl import Qwen2VLAdapter

    adapter = Qwen2VLAdapter.load(str(make_tiny_qwen2_vl(tmp_path / "qwen2_vl")))
    adapter.max_new_tokens = 4
    img = Image.fromarray((np.random.RandomState(1).rand(40, 56, 3) * 255).astype(np.uint8))
    return adapter, img
