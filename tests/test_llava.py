"""The LLaVA adapter on tiny random LLaVAs (testkit/tiny_llava.py): token geometry against what the
processor really does, generated answers and their attention rows against transformers' own
incremental decoding, head statistics from the full maps, the store round trip, fine-tuning."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from adapters.llava import LlavaAdapter, image_frame
from core.errors import AdapterError
from store.schema import Prediction
from testkit.tiny_llava import make_tiny_llava
from tests.generative_checks import assert_answer_rows_match_generate, covering_cells, record_and_read_back

QUESTION = "what color is the shape?"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_llava(tmp_path_factory.mktemp("llava") / "pad")


@pytest.fixture(scope="module")
def adapter(tiny_dir):
    a = LlavaAdapter.load(str(tiny_dir))
    a.max_new_tokens = 3
    return a


@pytest.fixture(scope="module")
def crop_adapter(tmp_path_factory):
    """No pad to square: a non-square image is center-cropped (its border is cut away)."""
    a = LlavaAdapter.load(str(make_tiny_llava(tmp_path_factory.mktemp("llava") / "crop", do_pad=False)))
    a.max_new_tokens = 2
    return a


def _gray(w: int, h: int) -> np.ndarray:
    return np.full((h, w, 3), 100, np.uint8)


def _changed_cells(adapter, before: np.ndarray, after: np.ndarray) -> set[tuple[int, int]]:
    """(row, col) of the patches whose processed pixels differ between the two images."""
    pix = [adapter._encode(Image.fromarray(im), QUESTION)[2].inputs["pixel_values"][0] for im in (before, after)]
    diff = (pix[0] - pix[1]).abs().sum(0)  # (y, x)
    p = adapter.patch_size
    gh, gw = diff.shape[0] // p, diff.shape[1] // p
    blocks = diff[:gh * p, :gw * p].reshape(gh, p, gw, p).amax(dim=(1, 3))
    return {(int(r), int(c)) for r, c in (blocks > 1e-6).nonzero().tolist()}


def _covering_cells(adapter, image: np.ndarray, area) -> set[tuple[int, int]]:
    """(row, col) of the image tokens whose box overlaps ``area`` (x0, y0, x1, y1 in source pixels)."""
    return covering_cells(adapter.run(Image.fromarray(image), QUESTION), (image.shape[1], image.shape[0]), area)


# (image width, height, brightened area x0, y0, x1, y1 in source pixels). Areas under a resize keep
# their edges 3+ processed pixels inside a patch, so the bicubic kernel's reach stays in those patches.
GEOMETRY_CASES = {
    "square": (64, 64, (10, 30, 20, 34)),
    "padded non-square": (56, 40, (20, 12, 30, 18)),  # pad to 56 x 56, then resize x 64/56
    "downscaled square": (128, 128, (36, 36, 60, 60)),  # resize x 1/2
}


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_brightened_area_changes_exactly_the_tokens_whose_boxes_cover_it(adapter, case):
    w, h, area = GEOMETRY_CASES[case]
    before = _gray(w, h)
    after = before.copy()
    after[area[1]:area[3], area[0]:area[2]] = 250
    changed = _changed_cells(adapter, before, after)
    assert changed and changed == _covering_cells(adapter, before, area)


def test_cropped_away_border_is_in_no_tokens_box(crop_adapter):
    before = _gray(80, 64)  # shortest edge already 64: no resize; the 64 x 64 crop cuts 8 px left and right
    rec = crop_adapter.run(Image.fromarray(before), QUESTION)
    boxes = rec.token_boxes[rec.indices("image")]
    assert boxes[:, 0].min() == pytest.approx(8 / 80) and boxes[:, 2].max() == pytest.approx(72 / 80)
    border = before.copy()
    border[:, :8] = 250
    assert _changed_cells(crop_adapter, before, border) == set()
    inside = before.copy()
    inside[5:12, 20:30] = 250  # processed x 12..22 -> columns 1, 2; rows 0, 1
    assert _changed_cells(crop_adapter, before, inside) == {(0, 1), (0, 2), (1, 1), (1, 2)}
    assert _covering_cells(crop_adapter, before, (20, 5, 30, 12)) == {(0, 1), (0, 2), (1, 1), (1, 2)}


def test_patches_of_padding_only_are_special_tokens(adapter):
    rec = adapter.run(Image.fromarray(_gray(56, 40)), QUESTION)  # padded 8 px above and below, then x 64/56
    pads = [i for i, t in enumerate(rec.tokens) if t.startswith("pad patch")]
    assert sorted({int(rec.token_grid[i][0]) for i in pads}) == [0, 7]  # the top and bottom rows of 8
    assert all(rec.modality[i] == "special" and np.isnan(rec.token_boxes[i]).all() for i in pads)
    assert len(rec.indices("image")) == 6 * 8


def test_image_frame_undoes_pad_resize_and_crop():
    class Proc:  # what a LLaVA-1.5 processor does: pad to square, resize to 336, crop 336
        do_pad, do_resize, do_center_crop, resample = True, True, True, 3
        size = {"shortest_edge": 336}
        crop_size = {"height": 336, "width": 336}

        def resize(self, image, size, resample):
            return np.zeros((3, 336, 336))

    f = image_frame(Proc(), 640, 480)
    assert (f.pad_x, f.pad_y, f.out_width, f.out_height) == (0, 80, 336, 336)
    # the top-left 14 px patch of the processed image is all padding; the one at y = 168 is mid-image
    assert f.source_box(0, 0, 14, 14)[3] == 0.0
    assert f.source_box(0, 168, 14, 182)[1] == pytest.approx((168 * 640 / 336 - 80) / 480)


def test_vision_cls_feature_is_a_special_token_with_full_strategy(tmp_path):
    a = LlavaAdapter.load(str(make_tiny_llava(tmp_path / "full", select_strategy="full")))
    a.max_new_tokens = 1
    rec = a.run(Image.fromarray(_gray(64, 64)), QUESTION)
    assert "[IMG CLS]" in rec.tokens and rec.modality[rec.tokens.index("[IMG CLS]")] == "special"
    assert len(rec.indices("image")) == 64


def test_answer_rows_are_the_rows_incremental_decoding_computed(adapter):
    """generate(output_attentions=True) computes each step's row with the KV cache; the record's rows
    come from one causal forward afterwards: they must be the same rows."""
    image = Image.fromarray((np.random.RandomState(3).rand(48, 64, 3) * 255).astype(np.uint8))
    assert_answer_rows_match_generate(adapter, image, QUESTION)


def test_head_stats_from_full_maps_match_a_record_of_every_row(tiny_dir):
    """The default record keeps no image rows, yet its image -> image statistics are right: they are
    computed from each layer's full map while recording, equal to those of a record of every row."""
    from analysis.head_stats import compute_head_stats
    from pipeline.record import run_with_head_stats
    from sources.base import Example

    a = LlavaAdapter.load(str(tiny_dir))
    a.max_new_tokens = 2
    image = Image.fromarray((np.random.RandomState(4).rand(64, 64, 3) * 255).astype(np.uint8))
    ex = Example(source_key="k", question=QUESTION, load_image_bytes=lambda: b"")
    rec, stats = run_with_head_stats(a, image, ex)
    assert not set(rec.indices("image")) & set(rec.attention["self"].query_index.tolist())
    a.attention_rows = "all"
    full = a.run(image, QUESTION)
    assert full.attention["self"].values.shape[2] == full.n_tokens
    expect = compute_head_stats(full)["self"]
    got = stats["self"]
    n_shared = len(expect.names)
    assert got.names == expect.names + ("answer_to_image", "answer_to_question")
    assert dict(got.not_applicable) == dict(expect.not_applicable)
    assert np.isfinite(got.values[expect.names.index("image_to_image")]).all()
    np.testing.assert_allclose(got.values[:n_shared], expect.values, atol=2e-3, equal_nan=True)
    # answer statistics by hand from the record of every row: the rows that generated each answer token
    v = full.attention["self"].values.astype(np.float32)  # (layer, head, token, token): every row
    generating = full.answer_indices() - 1
    image = np.asarray(full.modality) == "image"
    words = (np.asarray(full.modality) == "text") & (np.asarray(full.role) == "prompt")
    by_hand_image = v[:, :, generating][..., image].sum(-1).mean(-1)  # (layer, head)
    by_hand_words = v[:, :, generating][..., words].sum(-1).mean(-1)
    np.testing.assert_allclose(got.values[n_shared], by_hand_image, atol=2e-3)
    np.testing.assert_allclose(got.values[n_shared + 1], by_hand_words, atol=2e-3)
    assert (by_hand_image > 0.05).all()  # not a vacuous zero


def test_generated_answer_is_correct_after_vqa_normalization(adapter):
    rec = adapter.run(Image.fromarray(_gray(64, 64)), QUESTION, label="Circle")
    n = len(rec.answer_indices())
    pred = Prediction(answers=("a circle.",), probabilities=(0.5,), token_probabilities=(0.5,) + (1.0,) * (n - 1))
    assert dataclasses.replace(rec, prediction=pred).correct is True
    wrong = dataclasses.replace(pred, answers=("circles",))
    assert dataclasses.replace(rec, prediction=wrong).correct is False
    assert dataclasses.replace(rec, label=None).correct is None


def test_record_cli_writes_a_store_that_reads_back(tiny_dir, tmp_path, capsys):
    import cli
    from store.zarr_store import VLStore

    out = tmp_path / "s.zarr"
    record_and_read_back(f"llava:{tiny_dir}", "llava", out, capsys)
    assert cli.main(["record", "--model", f"llava:{tiny_dir}", "--limit", "2", "--out", str(out),
                     "--batch-size", "2"]) != 0
    assert "one example at a time" in capsys.readouterr().err
    # --attention-rows all: every token's row, image tokens too (the full causal maps)
    assert cli.main(["record", "--model", f"llava:{tiny_dir}", "--limit", "1", "--out", str(out), "--run", "full",
                     "--attention-rows", "all"]) == 0
    full = VLStore(out).run("full")
    rec = full.record(full.example_ids()[0])
    assert len(rec.attention["self"].query_index) == rec.n_tokens
    assert full.provenance["config"]["attention_rows"] == "all"


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterError, match="not reachable|offline"):
        LlavaAdapter.load("nobody-here/no-such-llava")


def test_finetune_teaches_the_answer_tokens(tiny_dir):
    """The fine-tuning loop on a generative adapter: the loss covers exactly the answer tokens and
    their end-of-sequence token, and a few steps teach a tiny LLaVA four fixed answers."""
    from sources.base import Example
    from training.finetune import FinetuneConfig, evaluate, finetune
    import io

    a = LlavaAdapter.load(str(tiny_dir))
    a.max_new_tokens = 3
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255), "yes": (0, 255, 0), "no": (20, 20, 20)}

    def example(answer):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), colours[answer]).save(buf, format="PNG")
        return Example(source_key=answer, question=QUESTION, answers={answer: 1.0}, label=answer,
                       load_image_bytes=lambda b=buf.getvalue(): b)

    exs = [example(k) for k in colours]
    batch = a.encode_batch([ex.image() for ex in exs], [QUESTION] * 4, [ex.label for ex in exs])
    for row, ex in zip(range(4), exs):
        kept = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert kept == a.tokenizer(ex.label, add_special_tokens=False)["input_ids"] + [a.eos_ids[0]]
    assert evaluate(a, exs)["accuracy"] < 1.0
    res = finetune(a, exs * 8, config=FinetuneConfig(epochs=15, lr=3e-3, batch_size=8, full=True, progress=False,
                                                      schedule="constant"), eval_examples=exs)
    assert res.losses[-1] < res.losses[0] / 5
    assert evaluate(a, exs)["accuracy"] == 1.0
    assert [a.predict(ex.image(), QUESTION).top for ex in exs] == list(colours)



def test_shipped_demo_answers_easy_vqa():
    """The shipped easy-VQA demo LLaVA (demo/train_llava.py: 97.6% on the full test split) writes the
    label on most test questions, and a record's answer tokens are the label's word and the end token."""
    from adapters.registry import MODELS, load_model
    from core.paths import REPO_ROOT
    from sources.easyvqa import EasyVQA
    from training.finetune import evaluate

    assert MODELS["llava-easyvqa"] == ("llava", "demo/models/llava-easyvqa")
    if not (REPO_ROOT / "demo/models/llava-easyvqa/config.json").exists():
        pytest.skip("demo weights not present")
    adapter = load_model("llava-easyvqa")
    tests = [ex for _, ex in zip(range(64), EasyVQA("test"))]
    assert evaluate(adapter, tests)["accuracy"] >= 0.7
    ex = next(ex for ex in tests if adapter.predict(ex.image(), ex.question).top == ex.label)
    rec = adapter.run(ex.image(), ex.question, label=ex.label)
    assert rec.correct and [rec.tokens[i] for i in rec.answer_indices()] == [ex.label, "</s>"]
    assert rec.modality[rec.answer_indices()[-1]] == "special"
