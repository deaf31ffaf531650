"""The SmolVLM / Idefics3 adapter on tiny random Idefics3 models (testkit/tiny_idefics3.py): tile
layouts against what the processor really does, image-token geometry end to end (brighten an area:
exactly the tokens whose boxes cover it change), marker tokens, generated answers and their rows,
batches, loading errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from adapters.idefics3 import Idefics3Adapter, tile_layout
from core.errors import AdapterError
from tests.generative_checks import assert_answer_rows_match_generate, record_and_read_back
from testkit.tiny_idefics3 import MARKERS, make_tiny_idefics3

QUESTION = "what color is the shape?"
LABEL = re.compile(r"(?:tile (\d+),(\d+)|global) patch (\d+),(\d+)")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    a = Idefics3Adapter.load(str(make_tiny_idefics3(tmp_path_factory.mktemp("idefics3") / "tiles")))
    a.max_new_tokens = 3
    return a


@pytest.fixture(scope="module")
def local_adapters(tmp_path_factory):
    """Vision towers without layers (each token's features come from its own patches only): tiled
    (longest edge 64, 32-pixel tiles) and unsplit (one 32 x 32 global image) with SmolVLM's LANCZOS
    filter, and tiled with a bilinear one for the resized cases (LANCZOS reaches 3 lobes: under a 4x
    downscale that is more than half a 32-pixel global block, so every block edge would bleed)."""
    root = tmp_path_factory.mktemp("idefics3-local")
    tiled = Idefics3Adapter.load(str(make_tiny_idefics3(root / "tiled", vision_layers=0)))
    single = Idefics3Adapter.load(str(make_tiny_idefics3(root / "single", vision_layers=0, splitting=False,
                                                         longest_edge=32)))
    bilinear = Idefics3Adapter.load(str(make_tiny_idefics3(root / "bilinear", vision_layers=0, resample=2)))
    return {"tiled": tiled, "single": single, "bilinear": bilinear}


def _gray(w: int, h: int) -> np.ndarray:
    return np.full((h, w, 3), 100, np.uint8)


def _frame_cell(label: str) -> tuple:
    """("tile", r, c, i, j) or ("global", i, j) from a token label."""
    m = LABEL.fullmatch(label)
    assert m, label
    return ("global", int(m[3]), int(m[4])) if m[1] is None else ("tile", int(m[1]), int(m[2]), int(m[3]), int(m[4]))


def _layer0(adapter, image: np.ndarray) -> tuple[torch.Tensor, list[str], list[str]]:
    """Float32 layer-0 hidden states (token, dim): the input embeddings with image features in place."""
    _, _, prompt = adapter._encode(Image.fromarray(image), QUESTION)
    with torch.no_grad():
        out = adapter.model(**prompt.inputs, output_hidden_states=True, use_cache=False)
    return out.hidden_states[0][0], prompt.tokens, prompt.modality


def _changed_tokens(adapter, before: np.ndarray, after: np.ndarray) -> set:
    (h0, tokens, modality), (h1, tokens1, _) = _layer0(adapter, before), _layer0(adapter, after)
    assert tokens == tokens1
    changed = ((h0 - h1).abs().amax(-1) > 1e-6).nonzero().flatten().tolist()
    assert all(modality[i] == "image" for i in changed)  # words and markers never change
    return {_frame_cell(tokens[i]) for i in changed}


def _covering_tokens(adapter, image: np.ndarray, area) -> set:
    """The image tokens whose box overlaps ``area`` (x0, y0, x1, y1 in source pixels)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = area[0] / w, area[1] / h, area[2] / w, area[3] / h
    rec = adapter.run(Image.fromarray(image), QUESTION)
    return {_frame_cell(rec.tokens[i]) for i in rec.indices("image")
            if rec.token_boxes[i][0] < x1 and rec.token_boxes[i][2] > x0
            and rec.token_boxes[i][1] < y1 and rec.token_boxes[i][3] > y0}


# (adapter, image width, height, brightened area x0, y0, x1, y1 in source pixels, expected tokens).
# Tiles are 32 px (blocks of 8 px: 2 x 2 patches of 4 px per token), the global image 32 px. Areas keep
# 6+ source pixels from block edges under a 2x LANCZOS downscale (its reach), so no neighbour changes.
GEOMETRY_CASES = {
    # one 32 x 32 frame, no resize: one block
    "square, one frame": ("single", 32, 32, (10, 18, 14, 22), {("global", 2, 1)}),
    # 2 x 2 tiles, no resize; global = 64 -> 32: the area straddles a tile block edge (x 24, y 40)
    "square, 2 x 2 tiles": ("tiled", 64, 64, (22, 38, 26, 42),
                            {("tile", 1, 0, 0, 2), ("tile", 1, 0, 0, 3), ("tile", 1, 0, 1, 2), ("tile", 1, 0, 1, 3),
                             ("global", 2, 1)}),
    # 1 x 2 tiles, no resize; global 64 x 32 -> 32 x 32 (x only)
    "non-square, 1 x 2 tiles": ("tiled", 64, 32, (6, 10, 10, 14),
                                {("tile", 0, 0, 1, 0), ("tile", 0, 0, 1, 1), ("global", 1, 0)}),
    # 128 x 64 -> 64 x 32 first (1 x 2 tiles): boxes are fractions of the source image
    "non-square downscaled": ("bilinear", 128, 64, (40, 22, 44, 26), {("tile", 0, 0, 1, 2), ("global", 1, 1)}),
    # 128 x 128 -> 64 x 64: the right-hand tile (x 78..82 -> 39..41, straddling its blocks 0 and 1)
    "downscaled square, right tile": ("bilinear", 128, 128, (78, 14, 82, 18),
                                      {("tile", 0, 1, 0, 0), ("tile", 0, 1, 0, 1), ("tile", 0, 1, 1, 0),
                                       ("tile", 0, 1, 1, 1), ("global", 0, 2)}),
    # 56 x 40 -> 64 x 46 -> stretched to 64 x 64 (2 x 2 tiles): y 26..28 -> 46-space 29.9..32.2 -> 41.6..44.8
    "stretched non-square": ("bilinear", 56, 40, (17, 26, 19, 28), {("tile", 1, 0, 1, 2), ("global", 2, 1)}),
    "stretched non-square, 4 tokens": ("bilinear", 56, 40, (20, 12, 24, 16),
                                       {("tile", 0, 0, 2, 2), ("tile", 0, 0, 2, 3), ("tile", 0, 0, 3, 2),
                                        ("tile", 0, 0, 3, 3), ("global", 1, 1)}),
}


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_brightened_area_changes_exactly_the_tokens_whose_boxes_cover_it(local_adapters, case):
    which, w, h, area, expected = GEOMETRY_CASES[case]
    adapter = local_adapters[which]
    before = _gray(w, h)
    after = before.copy()
    after[area[1]:area[3], area[0]:area[2]] = 250
    changed = _changed_tokens(adapter, before, after)
    assert changed == expected
    assert _covering_tokens(adapter, before, area) == expected


SIZES = [(64, 64), (56, 40), (40, 56), (1, 1), (33, 97), (200, 150), (1000, 10), (10, 1000), (65, 64), (31, 32),
         (129, 64), (300, 301)]


@pytest.mark.parametrize("splitting", [True, False])
def test_tile_layout_is_what_the_processor_does(adapter, splitting):
    ip = adapter.image_processor
    old = ip.do_image_splitting
    ip.do_image_splitting = splitting
    try:
        for w, h in SIZES:
            out = ip([[Image.new("RGB", (w, h))]], return_row_col_info=True)
            layout = tile_layout(ip, w, h)
            assert (layout.rows, layout.cols) == (out["rows"][0][0], out["cols"][0][0]), (w, h)
            assert out["pixel_values"].shape[1] == layout.frames
    finally:
        ip.do_image_splitting = old


@pytest.mark.parametrize("edges", [(1456, 364), (2048, 512)])  # Idefics3's defaults; SmolVLM-256M's
def test_tile_layout_at_released_processor_sizes(edges):
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    longest, frame = edges
    ip = Idefics3ImageProcessorPil(size={"longest_edge": longest}, max_image_size={"longest_edge": frame},
                                   resample=0)  # nearest: the layout does not depend on the filter
    for w, h in [(640, 480), (333, 1000), (1000, 101), (100, 100)]:
        out = ip([[Image.new("RGB", (w, h))]], return_row_col_info=True)
        layout = tile_layout(ip, w, h)
        assert (layout.rows, layout.cols) == (out["rows"][0][0], out["cols"][0][0]), (w, h)


def test_marker_tokens_are_special_and_every_frame_has_its_tokens(adapter):
    rec = adapter.run(Image.fromarray(_gray(64, 32)), QUESTION)
    markers = [i for i, t in enumerate(rec.tokens) if t in MARKERS]
    assert {rec.tokens[i] for i in markers} >= {"<fake_token_around_image>", "<global-img>", "<row_1_col_1>",
                                                "<row_1_col_2>"}
    assert all(rec.modality[i] == "special" and np.isnan(rec.token_boxes[i]).all() for i in markers)
    image = rec.indices("image")
    assert len(image) == 3 * 16  # 1 x 2 tiles + the global image, 4 x 4 tokens each
    labels = [_frame_cell(rec.tokens[i]) for i in image]
    assert sum(c[0] == "global" for c in labels) == 16
    assert rec.meta["image_layout"] == {"tiles": [1, 2], "tokens_per_side": 4, "frame": 32}
    # tile tokens: the tiled image's 4 x 8 grid, each cell once; global tokens: no cell (boxes say where)
    tile = [i for i in image if rec.tokens[i].startswith("tile")]
    assert sorted(map(tuple, rec.token_grid[tile].tolist())) == [(r, c) for r in range(4) for c in range(8)]
    glob = [i for i in image if rec.tokens[i].startswith("global")]
    assert (rec.token_grid[glob] == -1).all()
    for group in (tile, glob):  # each group's boxes tile the source image exactly once
        b = rec.token_boxes[group].astype(np.float64)
        assert ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum() == pytest.approx(1.0)
    assert rec.token_boxes[tile][:, 2].max() == 1.0 and rec.token_boxes[tile][:, 0].min() == 0.0


def test_unsplit_image_has_global_tokens_on_their_grid(local_adapters):
    rec = local_adapters["single"].run(Image.fromarray(_gray(50, 30)), QUESTION)
    image = rec.indices("image")
    assert [rec.tokens[i] for i in image] == [f"global patch {r},{c}" for r in range(4) for c in range(4)]
    assert rec.token_grid[image].tolist() == [[r, c] for r in range(4) for c in range(4)]
    np.testing.assert_allclose(rec.token_boxes[image[5]], [0.25, 0.25, 0.5, 0.5])


def test_answer_rows_are_the_rows_incremental_decoding_computed(adapter):
    image = Image.fromarray((np.random.RandomState(3).rand(48, 64, 3) * 255).astype(np.uint8))
    rec, n_prompt = assert_answer_rows_match_generate(adapter, image, QUESTION)
    answer = rec.answer_indices()
    assert len(answer) >= 1 and all(rec.role[i] == "answer" for i in answer)
    assert set(rec.role[:n_prompt]) == {"prompt"} and len(rec.role) == n_prompt + len(answer)
    np.testing.assert_allclose(rec.attention["self"].values.astype(np.float32).sum(-1), 1.0, atol=1e-2)


def test_record_cli_writes_a_store_that_reads_back(adapter, tmp_path, capsys):
    reader, back = record_and_read_back(f"idefics3:{adapter.checkpoint['path']}", "idefics3", tmp_path / "s.zarr",
                                        capsys)
    assert reader.provenance["config"]["tokens_per_frame"] == 16
    assert any(t.startswith("global patch") for t in back.tokens) and "<global-img>" in back.tokens


def test_overlong_question_is_truncated_with_a_notice(adapter):
    rec = adapter.run(Image.fromarray(_gray(64, 64)), " ".join([QUESTION] * 60))
    assert any("truncated" in n for n in rec.notices)
    assert rec.n_tokens <= adapter.context


def test_batches_with_different_tile_counts_match_one_by_one(adapter):
    """64 x 64 (5 frames) and 64 x 32 (3 frames, padded with empty frames in a batch): the batched
    first-token logits and answers are those of each example alone."""
    a, b = Image.fromarray(_gray(64, 64)), Image.fromarray((np.random.RandomState(5).rand(32, 64, 3) * 255).astype(np.uint8))
    with torch.no_grad():
        both = adapter.forward_logits(**adapter.encode_batch([a, b, a], [QUESTION] * 3))
        alone = torch.cat([adapter.forward_logits(**adapter.encode_batch([im], [QUESTION])) for im in (a, b, a)])
    torch.testing.assert_close(both, alone, rtol=1e-4, atol=1e-5)
    assert adapter.generate_batch([a, b], [QUESTION] * 2) == [adapter.predict(im, QUESTION).top for im in (a, b)]
    batch = adapter.encode_batch([a, b], [QUESTION] * 2, ["red", "yes"])
    kept = batch["labels"][1][batch["labels"][1] != -100].tolist()
    assert kept == adapter.tokenizer("yes", add_special_tokens=False)["input_ids"] + [adapter.eos_ids[0]]


def test_provenance_says_eager_attention(adapter):
    prov = adapter.provenance()
    assert prov["adapter"] == "idefics3" and "eager" in prov["config"]["attention"]
    assert prov["config"]["frame"] == 32 and prov["config"]["tokens_per_frame"] == 16


def test_smolvlm_checkpoint_loads_without_its_processor_and_records(tmp_path):
    """A model_type "smolvlm" directory as the hub ships it (no loadable SmolVLMProcessor here: it
    needs torchvision): SmolVLM's model class, an Idefics3Processor from its image processor,
    tokenizer and chat template, and the same geometry (2 x 2 tiles + global)."""
    import transformers

    path = make_tiny_idefics3(tmp_path / "smol", family="smolvlm", vision_layers=0)
    assert json.loads((path / "config.json").read_text())["model_type"] == "smolvlm"
    a = Idefics3Adapter.load(str(path))
    a.max_new_tokens = 2
    assert isinstance(a.model, transformers.SmolVLMForConditionalGeneration)
    assert a.provenance()["config"]["model_type"] == "smolvlm"
    before = _gray(64, 64)
    after = before.copy()
    after[38:42, 22:26] = 250
    expected = {("tile", 1, 0, 0, 2), ("tile", 1, 0, 0, 3), ("tile", 1, 0, 1, 2), ("tile", 1, 0, 1, 3), ("global", 2, 1)}
    assert _changed_tokens(a, before, after) == expected == _covering_tokens(a, before, (22, 38, 26, 42))
    rec = a.run(Image.fromarray(before), QUESTION)
    assert len(rec.indices("image")) == 5 * 16 and rec.role[-1] == "answer"
    assert rec.tokens[:2] == ("<s>", "<user>")  # the checkpoint's chat template, read from its file


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterError, match="not reachable|offline"):
        Idefics3Adapter.load("nobody-here/no-such-smolvlm")
