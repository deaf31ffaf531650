"""Explorer views on generative records (issue 20 items 5 and 6): what a person sees after they act.

A hand-built generative Record with a known sink (token 0 takes 0.6 of every row in layer 1) and
known rows, so each drawn value can be checked against the record; and the tiny random LLaVA
recorded through the pipeline (its head statistics computed from full maps at recording time).
"""
from __future__ import annotations

import numpy as np
import pytest

from store.schema import AttentionBlock, HiddenBlock, Prediction, Record
from testkit.records import grid_geometry, word_spans
from tests.view_records import ROOT, chart_datasets, find_frame, open_page, write_store

QUESTION = "what color is it?"
# <s> <user> 4 patches (2 x 2) what color is it ? <assistant> | Red . </s> (answer)
TOKENS = ["<s>", "<user>", "patch 0,0", "patch 0,1", "patch 1,0", "patch 1,1", "what", "color", "is", "it", "?",
          "<assistant>", "Red", ".", "</s>"]
MODALITY = ["special", "special"] + ["image"] * 4 + ["text"] * 5 + ["special", "text", "text", "special"]
ROLE = ["prompt"] * 12 + ["answer"] * 3
N = len(TOKENS)
RED, ASSISTANT = TOKENS.index("Red"), TOKENS.index("<assistant>")
WORDS = {i: t for i, t in enumerate(TOKENS[:12]) if MODALITY[i] == "text"}
LAYERS, HEADS = 2, 2
SINK_LAYER = 1


def causal_rows(rng, query_index: np.ndarray, sink_share: float | None) -> np.ndarray:
    """(head, query, key) causal softmax rows; with ``sink_share``, token 0 takes that share of every
    row that sees more than itself."""
    out = np.zeros((HEADS, len(query_index), N), np.float32)
    for h in range(HEADS):
        for p, q in enumerate(query_index):
            w = rng.random(q + 1).astype(np.float32) + 0.05
            w /= w.sum()
            if sink_share is not None and q > 0:
                w = np.concatenate([[sink_share], (1 - sink_share) * w[1:] / w[1:].sum()])
            out[h, p, :q + 1] = w
    return out


def generative_record(*, eid: str = "gen0", answer: str = "Red.", label: str = "red", seed: int = 0) -> Record:
    rng = np.random.default_rng(seed)
    qidx = np.array([i for i, m in enumerate(MODALITY) if m != "image"])  # default rows: every non-image token
    att = np.stack([causal_rows(rng, qidx, None), causal_rows(rng, qidx, 0.6)])
    boxes, grid = grid_geometry(N, 2, 2, 2)
    return Record(
        example_id=eid, question=QUESTION, tokens=tuple(TOKENS), modality=tuple(MODALITY), role=tuple(ROLE),
        token_boxes=boxes, token_grid=grid, token_spans=word_spans(N, WORDS, QUESTION),
        image=(rng.random((32, 32, 3)) * 255).astype(np.uint8),
        attention={"self": AttentionBlock(values=att, query_index=qidx, key_index=np.arange(N))},
        hidden={"joint": HiddenBlock(values=rng.normal(size=(LAYERS + 1, N, 8)).astype(np.float32),
                                     token_index=np.arange(N))},
        prediction=Prediction(answers=(answer,), probabilities=(0.72,), token_probabilities=(0.9, 0.8, 1.0)),
        label=label, meta={"model_id": "hand-built-generative"},
    )


@pytest.fixture(scope="module")
def gen_store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("gen") / "gen.zarr", [generative_record()], run="gen",
                       provenance={"architecture": "generative"})


def mean_row(rec: Record, layer: int, token: int) -> np.ndarray:
    """(key,) the record's row of ``token`` at ``layer``, mean over heads."""
    block = rec.attention["self"]
    pos = int(np.flatnonzero(block.query_index == token)[0])
    return block.values[layer, :, pos, :].astype(np.float32).mean(0)


def overlay_frame(at):
    return find_frame(at, "x0", "y0", "x1", "y1", "weight")


def chart_titles(at) -> list[str]:
    out = []
    for c in chart_datasets(at):
        t = c["spec"].get("title")
        out.append(t.get("text", "") if isinstance(t, dict) else str(t or ""))
    return out


def image_weights(at) -> dict[int, float]:
    f = overlay_frame(at)
    return dict(zip(f["token"].astype(int), f["weight"].astype(float)))


# ---- Attention -----------------------------------------------------------------------------------
def test_answer_token_overlay_draws_the_row_that_generated_it(gen_store, monkeypatch):
    rec = generative_record()
    at = open_page(monkeypatch, gen_store, "views/attention.py", run="gen", layer=0)
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="att_token").value == RED  # a generative record opens on its first answer token
    assert any("generating “Red” (row of #11 “<assistant>”)" in t for t in chart_titles(at)), chart_titles(at)
    want = mean_row(rec, 0, ASSISTANT)  # the step that chose "Red" is the row of the token before it
    got = image_weights(at)
    assert sorted(got) == [2, 3, 4, 5]
    for t, w in got.items():
        assert w == pytest.approx(want[t], abs=2e-3)
    # its attention over the prompt: the non-image keys up to <assistant>, from the same row
    bars = find_frame(at, "label", "weight", "modality")
    assert len(bars) == 8 and bars["weight"].sum() == pytest.approx(want[[0, 1, 6, 7, 8, 9, 10, 11]].sum(), abs=3e-3)

    at.radio(key="att_arow").set_value("query").run()  # its own row instead
    assert any(t.startswith("“Red” attends to image") for t in chart_titles(at)), chart_titles(at)
    own = mean_row(rec, 0, RED)
    for t, w in image_weights(at).items():
        assert w == pytest.approx(own[t], abs=2e-3)


def test_sinks_are_flagged_and_leaving_them_out_renormalizes(gen_store, monkeypatch):
    rec = generative_record()
    at = open_page(monkeypatch, gen_store, "views/attention.py", run="gen", layer=SINK_LAYER, arow="query")
    at.run()
    line = next(c.value for c in at.caption if "Attention sinks at layer 1" in c.value)
    assert "“<s>” (#0)" in line and "“<user>”" not in line
    at0 = open_page(monkeypatch, gen_store, "views/attention.py", run="gen", layer=0)
    at0.run()
    assert any("No attention sink at layer 0" in c.value for c in at0.caption)

    at.toggle(key="att_nosink").set_value(True).run()
    assert not at.exception, at.exception
    m = find_frame(at, "query_token", "key_token", "weight")
    sums = m.groupby("query_token")["weight"].sum()
    assert (m.loc[m["key_token"] == 0, "weight"] == 0).all()  # the sink is drawn at 0
    # every row that sees more than the sink sums to 1 without it; the sink's own row (it sees itself only) is empty
    assert sums.drop(0).to_numpy() == pytest.approx(1.0, abs=2e-3) and sums[0] == 0
    row = mean_row(rec, SINK_LAYER, RED)
    kept = row.copy()
    kept[0] = 0
    kept /= kept.sum()
    for t, w in image_weights(at).items():  # the overlay draws the renormalized row
        assert w == pytest.approx(kept[t], abs=2e-3)
    assert any("sinks left out" in t for t in chart_titles(at))


# ---- Examples ------------------------------------------------------------------------------------
def test_examples_show_the_generated_answer_and_its_normalized_verdict(gen_store, monkeypatch):
    at = open_page(monkeypatch, gen_store, "views/browser.py", run="gen")
    at.run()
    assert not at.exception, at.exception
    md = " ".join(m.value for m in at.markdown)
    assert "**Generated answer:** Red. (0.72" in md and "— correct" in md
    assert any("generated “Red.” → “red”, true “red” → “red”" in c.value for c in at.caption)
    table = next(d.value for d in at.dataframe if "generated token" in d.value.columns)
    assert list(table["generated token"]) == ["Red", ".", "</s>"]
    assert list(table["probability"]) == pytest.approx([0.9, 0.8, 1.0])


def test_examples_show_an_incorrect_generated_answer(tmp_path, monkeypatch):
    path = write_store(tmp_path / "wrong.zarr", [generative_record(answer="blue", label="red")], run="gen",
                       provenance={"architecture": "generative"})
    at = open_page(monkeypatch, path, "views/browser.py", run="gen")
    at.run()
    assert "**Generated answer:** blue" in " ".join(m.value for m in at.markdown)
    assert any(c.value.startswith("Incorrect by the VQA answer normalization") for c in at.caption)


# ---- Head summary --------------------------------------------------------------------------------
def test_head_summary_flags_sinks_and_recomputes_without_them(gen_store, monkeypatch):
    rec = generative_record()
    at = open_page(monkeypatch, gen_store, "views/head_summary.py", run="gen", stat="text_to_image")
    at.run()
    assert not at.exception, at.exception
    sinks = next(d.value for d in at.dataframe if "sinks" in d.value.columns)
    assert list(sinks["layer"]) == [0, 1] and sinks["sinks"][0] == "—" and sinks["sinks"][1].startswith("<s> (#0)")

    at.toggle(key="hs_nosink").set_value(True).run()
    drawn = find_frame(at, "layer", "head", "value")
    words = [i for i, m in enumerate(MODALITY) if m == "text"]
    for layer in range(LAYERS):
        for h in range(HEADS):
            block = rec.attention["self"]
            rows = block.values[layer, h].astype(np.float32)
            if layer == SINK_LAYER:
                rows = rows.copy()
                rows[:, 0] = 0
                rows /= np.where(rows.sum(-1, keepdims=True) > 0, rows.sum(-1, keepdims=True), 1)
            pos = [int(np.flatnonzero(block.query_index == w)[0]) for w in words]
            want = rows[pos][:, 2:6].sum(-1).mean()  # text -> image over the words' rows
            got = drawn[(drawn["layer"] == layer) & (drawn["head"] == str(h))]["value"].iloc[0]
            assert got == pytest.approx(want, abs=2e-3)
    assert at.selectbox(key="hs_stat").value == "text_to_image"
    from analysis.head_stats import STAT_LABELS

    options = at.selectbox(key="hs_stat").options
    assert STAT_LABELS["text_to_image"] in options
    assert STAT_LABELS["image_to_text"] not in options  # no image rows recorded: not offered


@pytest.fixture(scope="module")
def llava_store(tmp_path_factory):
    """Two easy-VQA test examples recorded by the tiny random LLaVA (head statistics from full maps)."""
    from pipeline.record import limited, record_examples
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore
    from testkit.tiny_llava import make_tiny_adapter

    adapter, _ = make_tiny_adapter(tmp_path_factory.mktemp("llava"))
    path = tmp_path_factory.mktemp("stores") / "llava.zarr"
    record_examples(adapter, limited(iter(EasyVQA("test")), 2), VLStore(path, mode="a"), "llava", total=2,
                    progress=False)
    return path


def test_head_summary_offers_answer_token_statistics(llava_store, monkeypatch):
    from analysis.head_stats import STAT_LABELS
    from store.zarr_store import VLStore

    at = open_page(monkeypatch, llava_store, "views/head_summary.py", run="llava")
    at.run()
    assert not at.exception, at.exception
    box = at.selectbox(key="hs_stat")
    assert STAT_LABELS["answer_to_image"] == "answer tokens → image"
    assert {"answer tokens → image", "answer tokens → question words"} <= set(box.options)  # labelled as such
    box.set_value("answer_to_image").run()
    reader = VLStore(llava_store).run("llava")
    eid = reader.example_ids()[0]
    names, values = reader.head_stats(eid)["self"]
    want = values[list(names).index("answer_to_image")]
    drawn = find_frame(at, "layer", "head", "value")
    for layer, head in np.ndindex(*want.shape):
        got = drawn[(drawn["layer"] == layer) & (drawn["head"] == str(head))]["value"].iloc[0]
        assert got == pytest.approx(float(want[layer, head]), abs=1e-4)
    assert any("answer tokens → image" in t for t in chart_titles(at))


def test_without_sinks_at_no_threshold_gives_the_recorded_statistics(llava_store):
    """The recomputation from recorded rows matches what recording computed from the full maps."""
    from analysis.sinks import head_stats_without_sinks
    from store.zarr_store import VLStore

    reader = VLStore(llava_store).run("llava")
    for eid in reader.example_ids():
        tok = reader.tokens(eid)
        qi, ki = reader.attention_index(eid, "self")
        values = reader.attention_array(eid, "self")[:]
        names, got = head_stats_without_sinks(values, qi, ki, modality=tok["modality"], grid=tok["token_grid"],
                                              role=tok["role"], kind="self", causal=True, threshold=2.0)
        stored_names, stored = reader.head_stats(eid)["self"]
        for stat in ("text_to_image", "text_to_text", "answer_to_image", "answer_to_question"):
            np.testing.assert_allclose(got[names.index(stat)], stored[list(stored_names).index(stat)], atol=3e-3)
        assert np.isnan(got[names.index("image_to_text")]).all()  # image rows were not recorded


# ---- Compare -------------------------------------------------------------------------------------
def test_compare_judges_generated_answers_by_normalization(tmp_path, monkeypatch):
    from tests.view_records import single_stream_record

    path = write_store(tmp_path / "pair.zarr", [generative_record(eid="shared"), generative_record(eid="g2", seed=1)],
                       run="gen", provenance={"architecture": "generative"})
    cls = single_stream_record(seed=0)
    cls = Record(**{**{f: getattr(cls, f) for f in ("question", "tokens", "modality", "token_boxes", "token_grid",
                                                     "token_spans", "image", "attention", "hidden", "meta")},
                    "example_id": "shared", "label": "red",
                    "prediction": Prediction(answers=("red", "blue"), probabilities=(0.6, 0.3))})
    write_store(path, [cls], run="cls")
    at = open_page(monkeypatch, path, "views/compare.py", run="gen", run2="cls")
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Accuracy of A (gen)"] == "100.0%" and metrics["Accuracy of B (cls)"] == "100.0%"
    assert any("0 of 1 shared examples get different answers" in c.value for c in at.caption)
    shared = next(d.value for d in at.dataframe if "agree" in d.value.columns)
    assert list(shared["agree"]) == [True]  # "Red." and "red" are one answer


# ---- the demo store ------------------------------------------------------------------------------
@pytest.mark.skipif(not (ROOT / "demo/models/llava-easyvqa/config.json").exists(), reason="demo LLaVA not shipped")
def test_demo_store_holds_the_generative_demo_on_the_classifiers_examples(tmp_path):
    from core.answers import normalize_answer
    from demo.build_store import available_demo_models, build_demo_store
    from store.zarr_store import VLStore

    assert "llava-easyvqa" in available_demo_models()
    build_demo_store(tmp_path / "demo.zarr", limit=3, models=["kdvlp-easyvqa", "llava-easyvqa"], progress=False)
    store = VLStore(tmp_path / "demo.zarr")
    gen, cls = store.run("llava-easyvqa").summaries(), store.run("kdvlp-easyvqa").summaries()
    assert [s.example_id for s in gen] == [s.example_id for s in cls] and len(gen) == 3  # Compare joins them all
    for s in gen:
        assert s.correct == (normalize_answer(s.answer) == normalize_answer(s.label))
    assert store.run("llava-easyvqa").provenance["architecture"] == "generative"


# ---- a tiled image (SmolVLM / Idefics3) ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiled_store(tmp_path_factory):
    """The tiny random Idefics3 on one 64 x 64 image: 2 x 2 tiles and a global image, 16 tokens each."""
    from PIL import Image

    from pipeline.record import record_examples
    from sources.base import Example
    from store.zarr_store import VLStore
    from testkit.tiny_idefics3 import make_tiny_adapter
    import io

    adapter, _ = make_tiny_adapter(tmp_path_factory.mktemp("idefics3"))
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(3).rand(64, 64, 3) * 255).astype(np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    ex = Example(source_key="tiled/0", question="what color is the shape?", load_image_bytes=lambda: data, label="red")
    path = tmp_path_factory.mktemp("stores") / "tiled.zarr"
    record_examples(adapter, [ex], VLStore(path, mode="a"), "tiled", total=1, progress=False)
    return path


def test_a_tiled_image_overlays_tiles_or_the_global_image_from_their_boxes(tiled_store, monkeypatch):
    from store.zarr_store import VLStore

    reader = VLStore(tiled_store).run("tiled")
    eid = reader.example_ids()[0]
    rec = reader.record(eid)
    tile = [i for i, t in enumerate(rec.tokens) if t.startswith("tile ")]
    glob = [i for i, t in enumerate(rec.tokens) if t.startswith("global patch")]
    assert len(tile) == 64 and len(glob) == 16
    at = open_page(monkeypatch, tiled_store, "views/attention.py", run="tiled", layer=1, arow="query")
    at.run()
    assert not at.exception, at.exception
    token = at.selectbox(key="att_token").value
    want = mean_row(rec, 1, token)
    for part, tokens in (("tiles", tile), ("global image", glob)):
        at.radio(key="att_part").set_value(part).run()
        f = overlay_frame(at)
        assert sorted(f["token"].astype(int)) == tokens  # one part at a time: no overlapping boxes
        boxes = rec.token_boxes[f["token"].astype(int)]
        np.testing.assert_allclose(f[["x0", "y0", "x1", "y1"]].to_numpy(), boxes, atol=1e-6)  # drawn from token_boxes
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
        assert area == pytest.approx(1.0, abs=1e-5)  # each part covers the whole picture once
        np.testing.assert_allclose(f["weight"].to_numpy(), want[f["token"].astype(int)], atol=2e-3)


def test_compare_overlays_one_part_of_a_tiled_image_at_a_time(tiled_store, tmp_path, monkeypatch):
    """Compare's word overlay of a tiled model draws tiles or the global image, never both stacked."""
    import shutil

    from store.zarr_store import VLStore
    from tests.view_records import single_stream_record

    path = tmp_path / "pair.zarr"
    shutil.copytree(tiled_store, path)
    reader = VLStore(path).run("tiled")
    eid = reader.example_ids()[0]
    rec = reader.record(eid)
    tile = [i for i, t in enumerate(rec.tokens) if t.startswith("tile ")]
    glob = [i for i, t in enumerate(rec.tokens) if t.startswith("global patch")]
    cls = single_stream_record(seed=0)
    write_store(path, [Record(**{**{f: getattr(cls, f) for f in ("question", "tokens", "modality", "token_boxes",
                                                                 "token_grid", "token_spans", "image", "attention",
                                                                 "hidden", "prediction", "label", "meta")},
                                 "example_id": eid})], run="cls")
    at = open_page(monkeypatch, path, "views/compare.py", run="tiled", run2="cls", ex=eid)
    at.run()
    assert not at.exception, at.exception
    word = at.selectbox(key="compare_word").value
    t = next(i for i, (tok, m) in enumerate(zip(rec.tokens, rec.modality)) if m == "text" and tok.strip() == word)
    layer = rec.attention["self"].n_layers - 1  # relative depth 1: the last layer
    want = mean_row(rec, layer, t)
    for part, tokens in (("tiles", tile), ("global image", glob), ("both", sorted(tile + glob))):
        at.radio(key="compare_part").set_value(part).run()
        assert not at.exception, at.exception
        overlays = [f for c in chart_datasets(at) for f in c["data"]
                    if all(k in f.columns for k in ("x0", "y0", "x1", "y1", "weight"))]
        assert len(overlays) == 2  # A (tiled) and B (the classifier)
        a = overlays[0]
        assert sorted(a["token"].astype(int)) == tokens
        np.testing.assert_allclose(a["weight"].to_numpy(), want[a["token"].astype(int)], atol=2e-3)
        assert len(overlays[1]) == 9  # the classifier's 3 x 3 patches, whatever the part
    caption = next(c.value for c in at.caption if c.value.startswith("A: tiled"))
    assert f"{want[tile + glob].sum():.0%} of its attention to the image" in caption


# ---- a layer recorded in full (record --full-layers) -------------------------------------------------
@pytest.fixture(scope="module")
def full_layer_store(tmp_path_factory):
    """The tiny random LLaVA with its last decoder layer recorded in full (every query row)."""
    from pipeline.record import limited, record_examples
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore
    from testkit.tiny_llava import make_tiny_adapter

    adapter, _ = make_tiny_adapter(tmp_path_factory.mktemp("llava_full"))
    adapter.set_full_attention([-1])
    path = tmp_path_factory.mktemp("stores") / "full.zarr"
    record_examples(adapter, limited(iter(EasyVQA("test")), 1), VLStore(path, mode="a"), "full", total=1,
                    progress=False)
    return path


def test_a_layer_recorded_in_full_shows_its_image_rows(full_layer_store, monkeypatch):
    from store.zarr_store import VLStore

    reader = VLStore(full_layer_store).run("full")
    eid = reader.example_ids()[0]
    tok = reader.tokens(eid)
    at = open_page(monkeypatch, full_layer_store, "views/attention.py", run="full", layer=0, head=1)
    at.run()
    assert any("not those of the image tokens" in i.value for i in at.info)  # layer 0 keeps the words' rows only
    at = open_page(monkeypatch, full_layer_store, "views/attention.py", run="full", layer=1, head=1)
    at.run()
    assert not at.exception, at.exception
    assert any("Layer 1, head 1 was recorded in full" in c.value for c in at.caption)
    values, qi, ki = reader.attention_rows(eid, "self", 1, 1)
    assert len(qi) == len(tok["tokens"])
    m = find_frame(at, "query_token", "key_token", "weight")
    assert set(np.asarray(tok["modality"])[m["query_token"].unique()]) >= {"image"}  # image queries drawn
    # the last patch's row (it sees <s>, <user> and every patch) is drawn from the full rows
    patch = int([i for i, mo in enumerate(tok["modality"]) if mo == "image"][-1])
    row = m[m["query_token"] == patch].sort_values("key_token")
    np.testing.assert_allclose(row["weight"].to_numpy(), values[list(qi).index(patch)][row["key_token"]], atol=2e-3)
    assert row["weight"].sum() == pytest.approx(1.0, abs=3e-3)
    assert not any("not those of the image tokens" in i.value for i in at.info)  # the patch tab has rows to draw
