"""A small LLaVA built from configs, offline: a WordLevel tokenizer with an <image> token and a chat
template, a LLaVA processor and random weights. The easy-VQA demo (demo/train_llava.py) starts from
it and the tests' tiny LLaVA (testkit/tiny_llava.py) is one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<user>", "<assistant>"]
# "<s><user> <image> QUESTION <assistant>" then the answer and "</s>".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<user>{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %} <image>{% elif c['type'] == 'text' %} {{ c['text'] }}{% endif %}{% endfor %}"
    " <assistant>{% else %}{% for c in m['content'] %} {{ c['text'] }}{% endfor %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True, kw_only=True)
class LlavaShape:
    """Sizes of a small LLaVA: CLIP vision tower, two-layer MLP projector, Llama language model."""

    image_size: int = 64
    patch: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    context: int = 128
    select_strategy: str = "default"  # "default": drop the vision CLS feature; "full": keep it
    text_intermediate: int | None = None  # the language model's MLP width; None: 4 x hidden


def build_tokenizer(texts: list[str], *, context: int = 128):
    """A lower-cased WordLevel tokenizer over the words of ``texts`` (sorted: the same texts always give the
    same ids), splitting on whitespace and punctuation, with the chat template's special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Lowercase()
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t))})
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=context)
    fast.add_special_tokens({"additional_special_tokens": ["<image>", "<user>", "<assistant>"]})
    return fast


def build_processor(tokenizer, shape: LlavaShape, *, do_pad: bool = True, do_center_crop: bool = True):
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    s = shape.image_size
    ip = LlavaImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s}, do_pad=do_pad,
                                do_center_crop=do_center_crop)
    return LlavaProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=shape.patch,
                          vision_feature_select_strategy=shape.select_strategy, chat_template=CHAT_TEMPLATE,
                          image_token="<image>", num_additional_image_tokens=1)


def build_model(tokenizer, shape: LlavaShape, *, seed: int = 0):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=shape.vision_hidden, intermediate_size=shape.vision_hidden * 4,
                              num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                              image_size=shape.image_size, patch_size=shape.patch, attention_dropout=0.0)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=shape.hidden,
                       intermediate_size=shape.text_intermediate or shape.hidden * 4,
                       num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                       num_key_value_heads=shape.heads, max_position_embeddings=shape.context,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy=shape.select_strategy, vision_feature_layer=-1,
                         projector_hidden_act="gelu", attn_implementation="eager")
    return LlavaForConditionalGeneration(config).eval()


def save_llava(path: Path, texts: list[str], shape: LlavaShape = LlavaShape(), *, seed: int = 0,
               do_pad: bool = True, do_center_crop: bool = True) -> Path:
    """Build a random LLaVA whose vocabulary covers ``texts`` and save it (model, tokenizer, processor)."""
    tok = build_tokenizer(texts, context=shape.context)
    model = build_model(tok, shape, seed=seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    build_processor(tok, shape, do_pad=do_pad, do_center_crop=do_center_crop).save_pretrained(path)
    return path
