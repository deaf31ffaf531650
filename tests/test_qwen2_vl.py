"""The Qwen2-VL adapter on tiny random Qwen2-VL / Qwen2.5-VL models (testkit/tiny_qwen2_vl.py): token
geometry at dynamic resolution against what reaches the language model, the merged grid against the
processor's image_grid_thw, generated answers and their attention rows against transformers' own
incremental decoding (multimodal rotary positions included), the store round trip, fine-tuning."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from adapters.qwen2_vl import Qwen2VLAdapter
from core.errors import AdapterError
from testkit.tiny_qwen2_vl import TinyQwenShape, make_tiny_qwen2_vl
from tests.generative_checks import assert_answer_rows_match_generate, covering_cells, record_and_read_back

QUESTION = "what color is the shape?"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen") / "qwen2_vl")


@pytest.fixture(scope="module")
def adapter(tiny_dir):
    a = Qwen2VLAdapter.load(str(tiny_dir))
    a.max_new_tokens = 3
    return a


@pytest.fixture(scope="module")
def local_adapter(tmp_path_factory):
    """A vision tower with no transformer blocks: patch embedding then the 2 x 2 merger, so an image
    token's input to the language model depends on its own pixels only (a tower's attention would
    mix every patch into every token)."""
    path = make_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen") / "local", shape=TinyQwenShape(vision_depth=0))
    a = Qwen2VLAdapter.load(str(path))
    a.max_new_tokens = 1
    return a


def _gray(w: int, h: int) -> np.ndarray:
    return np.full((h, w, 3), 100, np.uint8)


def _lm_input_of_image_tokens(adapter, image: np.ndarray) -> dict:
    """(row, col) -> the language model's input vector (its layer-0 hidden state) at that image token."""
    rec = adapter.run(Image.fromarray(image), QUESTION)
    h0 = rec.hidden["joint"].values[0].astype(np.float32)
    return {tuple(int(v) for v in rec.token_grid[i]): h0[i] for i in rec.indices("image")}


def _covering_cells(adapter, image: np.ndarray, area) -> set[tuple[int, int]]:
    rec = adapter.run(Image.fromarray(image), QUESTION)
    return covering_cells(rec, (image.shape[1], image.shape[0]), area)


# (image width, height, brightened area x0, y0, x1, y1 in source pixels, the cells it lies in).
# Smart resize (7-px patches, 2 x 2 merge: 14-px cells; 784..3136 pixels): 64 x 64 -> 56 x 56 (4 x 4
# cells of 16 source px); 56 x 40 -> 56 x 42 (3 x 4; rows of 13.3 source px); 120 x 80 -> 56 x 42
# (cells of 30 x 26.7 source px). Area edges sit 3+ resized px inside a cell: the bicubic kernel's
# reach stays in those cells.
GEOMETRY_CASES = {
    "square": (64, 64, (20, 36, 44, 44), {(2, 1), (2, 2)}),
    "non-square": (56, 40, (17, 17, 25, 23), {(1, 1)}),
    "downscaled non-square": (120, 80, (36, 32, 82, 46), {(1, 1), (1, 2)}),
}


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_brightened_area_changes_exactly_the_tokens_whose_boxes_cover_it(local_adapter, case):
    w, h, area, cells = GEOMETRY_CASES[case]
    before = _gray(w, h)
    after = before.copy()
    after[area[1]:area[3], area[0]:area[2]] = 250
    a, b = _lm_input_of_image_tokens(local_adapter, before), _lm_input_of_image_tokens(local_adapter, after)
    changed = {cell for cell in a if not np.array_equal(a[cell], b[cell])}
    assert changed == cells == _covering_cells(local_adapter, before, area)


@pytest.mark.parametrize("size", [(56, 40), (64, 64), (20, 20), (200, 60), (30, 90)])
def test_token_grid_is_the_processors_image_grid_over_the_merge(adapter, size):
    """Under min pixels (20 x 20: upscaled), over max pixels (200 x 60), tall and wide images."""
    image = Image.fromarray(_gray(*size))
    enc = adapter.image_processor(image, return_tensors="pt")
    t, gh, gw = enc["image_grid_thw"][0].tolist()
    rec = adapter.run(image, QUESTION)
    img = rec.indices("image")
    assert t == 1 and len(img) == (gh // 2) * (gw // 2) == enc["pixel_values"].shape[0] // 4
    assert rec.token_grid[img].max(0).tolist() == [gh // 2 - 1, gw // 2 - 1]
    assert rec.meta["patch_grid"] == [gh // 2, gw // 2]
    boxes = rec.token_boxes[img].astype(np.float64)
    # the boxes tile the source image: no gaps, no overlaps, row-major like the model's positions
    assert ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum() == pytest.approx(1.0)
    assert [tuple(g) for g in rec.token_grid[img]] == [(r, c) for r in range(gh // 2) for c in range(gw // 2)]
    np.testing.assert_allclose(boxes[-1], [1 - 2 / gw, 1 - 2 / gh, 1, 1], atol=1e-6)


def test_vision_markers_and_template_tokens_are_special(adapter):
    rec = adapter.run(Image.fromarray(_gray(56, 40)), QUESTION)
    img = rec.indices("image")
    start, end = rec.tokens.index("<|vision_start|>"), rec.tokens.index("<|vision_end|>")
    assert (start, end) == (img[0] - 1, img[-1] + 1) and list(img) == list(range(start + 1, end))
    for i, tok in enumerate(rec.tokens):
        if tok.startswith("<|") and rec.role[i] == "prompt":
            assert rec.modality[i] == "special"
    words = [rec.tokens[i] for i in rec.indices("text") if rec.role[i] == "prompt"]
    assert words == ["what", "color", "is", "the", "shape", "?"]  # "system", "user", ... are template, special
    assert rec.modality[rec.tokens.index("system")] == "special"


def test_byte_level_bpe_question_words_and_template(tmp_path):
    """With a byte-level BPE tokenizer (Qwen's kind: "Ġ" tokens, offsets that keep the space, newlines
    in the template), the question's tokens are its text tokens, covering it in order, and every
    template token (newlines, "user", ...) is special."""
    a = Qwen2VLAdapter.load(str(make_tiny_qwen2_vl(tmp_path / "bpe", tokenizer="bpe")))
    a.max_new_tokens = 2
    question = "what color is the shape in the image?"
    rec = a.run(Image.fromarray(_gray(56, 40)), question)
    words = [i for i in rec.indices("text") if rec.role[i] == "prompt"]
    assert any(rec.tokens[i].startswith("\u0120") for i in words)  # "Ġ": a word after a space
    assert "".join(question[s:e] for s, e in rec.token_spans[words]) == question
    assert len(words) == len(a.tokenizer(question, add_special_tokens=False)["input_ids"])
    assert words == list(range(words[0], words[-1] + 1)) and rec.tokens[words[0] - 1] == "<|vision_end|>"
    assert all(m == "special" for m in rec.modality[:rec.indices("image")[0]])
    assert rec.modality[words[-1] + 1:len(rec.role) - rec.role.count("answer")] == ("special",) * (
        len(rec.role) - rec.role.count("answer") - words[-1] - 1)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_answer_rows_are_the_rows_incremental_decoding_computed(tmp_path_factory, family):
    """The rows generate computed with the KV cache and the rotary positions it derived (image tokens:
    3-D positions; the answer continues after them) are the record's rows, of its answer tokens."""
    import transformers

    a = Qwen2VLAdapter.load(str(make_tiny_qwen2_vl(tmp_path_factory.mktemp("rows") / family, family=family)))
    a.max_new_tokens = 4
    expected_class = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
                      "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[family]
    assert type(a.model) is expected_class
    image = Image.fromarray((np.random.RandomState(3).rand(40, 56, 3) * 255).astype(np.uint8))
    rec, n_prompt = assert_answer_rows_match_generate(a, image, QUESTION)
    answer = rec.answer_indices()
    assert len(answer) >= 1 and list(answer) == list(range(n_prompt, rec.n_tokens))
    assert all(rec.role[i] == "answer" for i in answer) and rec.role[:n_prompt] == ("prompt",) * n_prompt
    block = rec.attention["self"]
    np.testing.assert_allclose(block.values.astype(np.float32).sum(-1), 1.0, atol=1e-2)  # causal rows sum to 1


def test_a_generated_image_placeholder_is_embedded_as_text(tiny_dir):
    """A model may generate <|image_pad|>: generate embeds it as a plain token; so does the recording
    forward (no image features there), and the rows still equal generate's."""
    a = Qwen2VLAdapter.load(str(tiny_dir))
    a.max_new_tokens = 2
    a.model.generation_config.sequence_bias = {(a.image_token_id,): 100.0}  # generate and run both read it
    image = Image.fromarray(_gray(56, 40))
    rec, n_prompt = assert_answer_rows_match_generate(a, image, QUESTION)
    assert [rec.tokens[i] for i in rec.answer_indices()] == ["<|image_pad|>"] * 2
    assert all(rec.modality[i] == "special" for i in rec.answer_indices())
    assert len(rec.indices("image")) == 12 and max(rec.indices("image")) < n_prompt


def test_a_generated_id_past_the_tokenizer_is_a_special_token(tmp_path):
    """Released checkpoints have more embedding rows than tokenizer ids; one generated is "<id N>"."""
    a = Qwen2VLAdapter.load(str(make_tiny_qwen2_vl(tmp_path / "wide", shape=TinyQwenShape(extra_vocab=8))))
    a.max_new_tokens = 1
    beyond = len(a.tokenizer) + 3
    a.model.generation_config.sequence_bias = {(beyond,): 100.0}
    rec = a.run(Image.fromarray(_gray(56, 40)), QUESTION)
    last = rec.answer_indices()[-1]
    assert (rec.tokens[last], rec.modality[last]) == (f"<id {beyond}>", "special")


def test_loads_a_hub_style_directory(tmp_path):
    """A released checkpoint's layout: preprocessor_config.json with min / max pixels (processor class
    Qwen2VLProcessor), chat_template.json, tokenizer files, a generation config with two end tokens."""
    from testkit.tiny_qwen2_vl import ANSWERS, CHAT_TEMPLATE, QUESTIONS, build_model, build_tokenizer

    shape = TinyQwenShape()
    tok = build_tokenizer(QUESTIONS + ANSWERS, context=shape.context)
    model = build_model(tok, shape, family="qwen2_vl", seed=0)
    end, text_end = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model.generation_config.eos_token_id = [end, text_end]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 784, "max_pixels": 3136, "patch_size": 7, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    a = Qwen2VLAdapter.load(str(tmp_path))
    assert a.eos_ids == (end, text_end)  # stops at either; training appends the first
    assert a.config_summary()["max_pixels"] == 3136
    a.max_new_tokens = 1
    rec = a.run(Image.fromarray(_gray(56, 40)), QUESTION)
    assert rec.meta["patch_grid"] == [3, 4] and rec.tokens[rec.indices("image")[0] - 1] == "<|vision_start|>"


def test_rotary_positions_matter(adapter):
    """The recording's forward must use the multimodal positions: with plain 1-D positions the rows differ."""
    image = Image.fromarray((np.random.RandomState(5).rand(64, 64, 3) * 255).astype(np.uint8))
    _, _, prompt = adapter._encode(image, QUESTION)
    ids = prompt.inputs["input_ids"]
    inputs = adapter._sequence_inputs(ids, prompt)
    positions, _ = adapter.model.model.get_rope_index(ids, mm_token_type_ids=prompt.inputs["mm_token_type_ids"],
                                                      image_grid_thw=prompt.inputs["image_grid_thw"])
    assert torch.equal(inputs["position_ids"], positions)
    plain = torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
    assert not torch.equal(positions, plain)  # the image's tokens share rows / columns, the text continues after
    with torch.no_grad():
        mrope = adapter.model(**inputs, output_attentions=True).attentions[-1][0, :, -1]
        flat = adapter.model(**{**inputs, "position_ids": plain}, output_attentions=True).attentions[-1][0, :, -1]
    assert (mrope - flat).abs().max() > 1e-4


def test_long_question_is_truncated_with_a_notice(adapter):
    long_q = " ".join(["what color is the shape"] * 60) + "?"
    rec = adapter.run(Image.fromarray(_gray(56, 40)), long_q)
    assert any("question truncated" in n for n in rec.notices)
    words = [i for i in rec.indices("text") if rec.role[i] == "prompt"]
    assert len(words) == adapter.max_text_tokens - adapter.max_new_tokens < 301
    assert rec.n_tokens <= adapter.context
    s, e = rec.token_spans[words[-1]]
    assert long_q[s:e] == rec.tokens[words[-1]]


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterError, match="not reachable|offline"):
        Qwen2VLAdapter.load("nobody-here/no-such-qwen2-vl")


def test_a_checkpoint_of_another_family_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(AdapterError, match="not Qwen2-VL"):
        Qwen2VLAdapter.load(str(tmp_path))


def test_batched_answers_equal_one_by_one(adapter):
    """generate_batch left-pads prompts of different lengths and image sizes (rotary positions per row)."""
    images = [Image.fromarray((np.random.RandomState(s).rand(*hw, 3) * 255).astype(np.uint8))
              for s, hw in ((7, (40, 56)), (8, (64, 64)))]
    questions = [QUESTION, "is there a red circle in the image?"]
    assert adapter.generate_batch(images, questions) == [adapter.predict(im, q).top for im, q in zip(images, questions)]


def test_record_cli_writes_a_store_that_reads_back(tiny_dir, tmp_path, capsys):
    reader, back = record_and_read_back(f"qwen2_vl:{tiny_dir}", "qwen2_vl", tmp_path / "s.zarr", capsys)
    assert reader.provenance["config"]["merge_size"] == 2
    img = back.indices("image")
    assert len(img) == int(np.prod(back.meta["patch_grid"])) and not np.isnan(back.token_boxes[img]).any()


def test_finetune_lowers_the_answer_loss(tiny_dir, tmp_path):
    """The fine-tuning loop on this adapter: the labels are exactly the answer tokens and their
    end-of-sequence token, and a few steps lower the loss on a tiny batch."""
    from sources.base import Example
    from training.finetune import FinetuneConfig, finetune

    a = Qwen2VLAdapter.load(str(tiny_dir))
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255), "yes": (0, 255, 0), "no": (20, 20, 20)}

    def example(answer, size):
        buf = io.BytesIO()
        Image.new("RGB", size, colours[answer]).save(buf, format="PNG")
        return Example(source_key=answer, question=QUESTION, answers={answer: 1.0}, label=answer,
                       load_image_bytes=lambda b=buf.getvalue(): b)

    exs = [example(k, size) for k, size in zip(colours, [(64, 64), (56, 40), (40, 56), (64, 64)])]
    batch = a.encode_batch([ex.image() for ex in exs], [QUESTION] * 4, [ex.label for ex in exs])
    for row, ex in enumerate(exs):
        kept = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert kept == a.tokenizer(ex.label, add_special_tokens=False)["input_ids"] + [a.eos_ids[0]]
    # the training forward sees the same first-answer-token logits as generation does
    first = a.forward_logits(**a.encode_batch([exs[1].image()], [QUESTION]))[0]
    _, _, prompt = a._encode(exs[1].image(), QUESTION)
    with torch.no_grad():
        expect = a.model(**prompt.inputs).logits[0, -1]
    torch.testing.assert_close(first.detach(), expect, atol=1e-4, rtol=1e-4)
    res = finetune(a, exs * 4, config=FinetuneConfig(epochs=10, lr=3e-3, batch_size=8, full=True, progress=False,
                                                      schedule="constant"), eval_examples=exs)
    assert res.losses[1] < res.losses[0] and res.losses[-1] < res.losses[0] / 2
    a.save(tmp_path / "tuned")  # what `cli.py finetune --out` writes: it loads back, answering the same
    again = Qwen2VLAdapter.load(str(tmp_path / "tuned"))
    again.max_new_tokens = a.max_new_tokens
    assert [again.predict(ex.image(), QUESTION) for ex in exs] == [a.predict(ex.image(), QUESTION) for ex in exs]
