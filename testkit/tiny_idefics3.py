"""A tiny random Idefics3 (SmolVLM's architecture) saved to a temp dir, offline: a SigLIP-style
vision tower on 32-pixel frames of 4-pixel patches, pixel shuffle with scale factor 2 (16 image
tokens per frame), a 2-layer Llama, the WordLevel tokenizer of the demo LLaVA (demo/llava_init.py)
plus Idefics3's marker tokens, and an Idefics3Processor whose images are resized to a longest edge of
64 and split into 32-pixel tiles plus a downscaled global image (a 64 x 64 image: 2 x 2 tiles)."""
from __future__ import annotations

from pathlib import Path

from testkit.tiny_vilt import ANSWERS, QUESTIONS

FRAME = 32  # max_image_size: the side of a tile and of the global image
PATCH = 4
SCALE = 2  # pixel shuffle: 2 x 2 patches -> one image token
# the markers the Idefics3 / SmolVLM processors write around image tokens (row/col up to 6 x 6)
MARKERS = (["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
           + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])


def make_tiny_idefics3(path: Path, *, seed: int = 0, longest_edge: int = 2 * FRAME, splitting: bool = True,
                       resample: int = 1, vision_layers: int = 2, family: str = "idefics3") -> Path:
    """Build and save the tiny Idefics3; ``longest_edge`` is the processor's first resize (``size``),
    ``splitting`` its ``do_image_splitting``, ``resample`` its PIL filter (1: LANCZOS, SmolVLM's).
    ``vision_layers=0`` leaves the vision tower per-patch (embeddings and a norm only): each image
    token's features then depend on its own patches alone (what the geometry test needs).
    ``family="smolvlm"``: a SmolVLM checkpoint (model_type "smolvlm", SmolVLM's image processor, saved
    as the hub's are: model, image processor, tokenizer and chat template, no SmolVLMProcessor, which
    needs torchvision)."""
    import torch
    from transformers import Idefics3Processor, LlamaConfig

    from demo.llava_init import CHAT_TEMPLATE, build_tokenizer

    config_cls, vision_cls, model_cls, image_processor_cls = _classes(family)
    tok = build_tokenizer(QUESTIONS + ANSWERS, context=256)
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<user>", "<assistant>", *MARKERS]})
    torch.manual_seed(seed)
    vision = vision_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers, num_attention_heads=2,
                        image_size=FRAME, patch_size=PATCH, attention_dropout=0.0)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=False)
    config = config_cls(vision_config=vision.to_dict(), text_config=text.to_dict(), scale_factor=SCALE,
                        image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
                        pad_token_id=tok.pad_token_id)
    model = model_cls(config).eval()
    image_processor = image_processor_cls(size={"longest_edge": longest_edge}, max_image_size={"longest_edge": FRAME},
                                          do_image_splitting=splitting, resample=resample)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if family == "smolvlm":
        image_processor.save_pretrained(path)
        tok.save_pretrained(path)
        (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)  # the processor's template file
    else:
        seq_len = (FRAME // PATCH) ** 2 // SCALE ** 2
        Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len,
                          chat_template=CHAT_TEMPLATE).save_pretrained(path)
    return path


def _classes(family: str):
    """(config, vision config, model, PIL image processor) classes of ``family``."""
    if family == "smolvlm":
        from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
        from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        return SmolVLMConfig, SmolVLMVisionConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    return Idefics3Config, Idefics3VisionConfig, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil


def make_tiny_adapter(tmp_path: Path):
    """Contract-suite factory: (adapter, a non-square PIL image it accepts)."""
    import numpy as np
    from PIL import Image

    from adapters.idefics3 import Idefics3Adapter

    adapter = Idefics3Adapter.load(str(make_tiny_idefics3(tmp_path / "idefics3")))
    adapter.max_new_tokens = 4
    img = Image.fromarray((np.random.RandomState(1).rand(40, 56, 3) * 255).astype(np.uint8))
    return adapter, img
