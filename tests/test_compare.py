"""Model comparison: analysis/compare.py on hand-built cases with known answers, the Compare page
(AppTest on two tiny ViLT runs of different depth), and two models recorded in one CLI command."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from analysis import compare as cmp

ROOT = Path(__file__).resolve().parent.parent
N_EXAMPLES = 6


def S(eid, answer, conf, label=None, question="q"):
    return SimpleNamespace(example_id=eid, answer=answer, confidence=conf, label=label, question=question)


# ---- pure functions ------------------------------------------------------------------------------
def test_join_keeps_shared_ids_in_a_order_and_counts_the_rest():
    a = [S("e3", "x", .5), S("e1", "x", .5), S("e2", "x", .5), S("a_only", "x", .5)]
    b = [S("e1", "x", .5), S("b1", "x", .5), S("e2", "x", .5), S("e3", "x", .5), S("b2", "x", .5)]
    j = cmp.join_examples(a, b)
    assert j.shared_ids == ("e3", "e1", "e2")
    assert (j.only_a, j.only_b) == (1, 2)
    assert "3 examples recorded by both" in j.statement() and "2 only in B" in j.statement()
    assert cmp.join_examples(a, []).shared_ids == ()


def test_accuracy_overall_and_per_answer():
    rows = [S("1", "red", .9, "red"), S("2", "blue", .8, "red"), S("3", "red", .7, "red"),
            S("4", "yes", .6, "yes"), S("5", "no", .6, None)]  # unlabelled: left out
    acc = cmp.accuracy(rows)
    assert (acc.n_correct, acc.n_labelled) == (3, 4)
    assert acc.overall == pytest.approx(0.75)
    assert acc.per_answer == {"red": (2, 3), "yes": (1, 1)}
    assert acc.of("red") == pytest.approx(2 / 3)
    assert np.isnan(acc.of("circle"))
    assert np.isnan(cmp.accuracy([]).overall)


def test_disagreements_sorted_by_confidence_gap():
    a = [S("1", "red", .9), S("2", "red", .5), S("3", "yes", .6), S("4", "no", .2), S("x", "no", .2)]
    b = [S("1", "blue", .3), S("2", "red", .99), S("3", "no", .55), S("4", "yes", .9)]
    d = cmp.disagreements(a, b)
    assert [x.example_id for x in d] == ["4", "1", "3"]  # gaps .7, .6, .05; "2" agrees; "x" not shared
    assert [round(x.gap, 6) for x in d] == [0.7, 0.6, 0.05]
    assert (d[1].answer_a, d[1].answer_b) == ("red", "blue")
    # restricting to given shared ids
    assert [x.example_id for x in cmp.disagreements(a, b, ["3", "1"])] == ["1", "3"]


def test_relative_depth_lines_up_models_of_different_depth():
    np.testing.assert_allclose(cmp.relative_depth(3), [0, .5, 1])
    d6, d12 = cmp.relative_depth(6), cmp.relative_depth(12)
    assert d6[0] == d12[0] == 0 and d6[-1] == d12[-1] == 1
    assert len(d6) == 6 and len(d12) == 12
    np.testing.assert_allclose(cmp.relative_depth(1), [1.0])
    with pytest.raises(ValueError):
        cmp.relative_depth(0)
    assert cmp.layer_at(0.5, 5) == 2 and cmp.layer_at(1.0, 12) == 11 and cmp.layer_at(0.0, 7) == 0
    assert cmp.layer_at(0.5, 2) == 1 and cmp.layer_at(0.5, 4) == 2 and cmp.layer_at(0.49, 2) == 0  # ties go deeper
    assert cmp.layer_at(0.3, 1) == 0
    lo, hi = cmp.relative_depth_bins(3)
    np.testing.assert_allclose(lo, [0, .25, .75])
    np.testing.assert_allclose(hi, [.25, .75, 1])
    lo, hi = cmp.relative_depth_bins(1)
    assert (lo[0], hi[0]) == (0, 1)


def test_network_depth_of_the_demo_lxmert():
    """LXMERT's 2 language + 2 vision + 2 cross layers (the demo model's config): the encoders side by side
    at positions 0 and 1, the cross layers after them at 2 and 3, on 4 positions."""
    from analysis.depth import depth_bins, kind_depths, nearest_layer, network_depth
    from core.kinds import DUAL_STREAM_KINDS

    cfg = json.loads((ROOT / "demo" / "models" / "lxmert-easyvqa" / "config.json").read_text())
    assert (cfg["l_layers"], cfg["r_layers"], cfg["x_layers"]) == (2, 2, 2)
    layers = {"lang_self": cfg["l_layers"], "vision_self": cfg["r_layers"],
              **{k: cfg["x_layers"] for k in DUAL_STREAM_KINDS if k.startswith("cross")}}
    expected = {"lang_self": [0, 1 / 3], "vision_self": [0, 1 / 3], "cross_l2v": [2 / 3, 1], "cross_v2l": [2 / 3, 1],
                "cross_lang_self": [2 / 3, 1], "cross_vision_self": [2 / 3, 1]}
    for kind, depths in expected.items():
        np.testing.assert_allclose(kind_depths(kind, layers), depths)
    assert network_depth("cross_lang_self", 0, layers) == pytest.approx(2 / 3)  # not 0, beside lang_self 0
    lo, hi = depth_bins("cross_l2v", layers)
    np.testing.assert_allclose(lo, [.5, 5 / 6])
    np.testing.assert_allclose(hi, [5 / 6, 1])
    assert nearest_layer(0.0, "cross_l2v", layers) == 0 and nearest_layer(0.9, "cross_l2v", layers) == 1
    assert nearest_layer(0.5, "lang_self", layers) == 1
    # a deeper language encoder (LXMERT-base: 9 + 5 + 5): vision counted from the input, cross after 9
    base = {"lang_self": 9, "vision_self": 5, "cross_l2v": 5}
    np.testing.assert_allclose(kind_depths("vision_self", base), np.arange(5) / 13)
    np.testing.assert_allclose(kind_depths("cross_l2v", base), np.arange(9, 14) / 13)
    with pytest.raises(ValueError):
        network_depth("lang_self", 2, layers)


def test_depth_profile_mean_and_spread_over_heads():
    # 2 examples, 1 stat, 3 layers, 2 heads; mean over examples first, then over heads
    v = np.zeros((2, 1, 3, 2))
    v[0, 0] = [[0.0, 0.2], [0.4, 0.4], [1.0, 0.0]]
    v[1, 0] = [[0.2, 0.2], [0.4, 0.8], [1.0, 0.0]]
    p = cmp.depth_profile({"self": (["s"], v)})
    np.testing.assert_allclose(p.relative_depth, [0, .5, 1])
    # per head over examples: [[.1,.2],[.4,.6],[1,0]]
    np.testing.assert_allclose(p.mean[0], [.15, .5, .5])
    np.testing.assert_allclose(p.spread[0], [.05, .1, .5])
    np.testing.assert_array_equal(p.n_heads[0], [2, 2, 2])
    assert p.kinds == {"s": ("self",)}
    rows = cmp.profile_rows(p, "m", "self")
    assert [r["relative_depth"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[2]["low"] == pytest.approx(0.0) and rows[2]["high"] == pytest.approx(1.0)


def test_depth_profile_pools_kinds_where_they_apply_at_their_network_position():
    """Dual-stream: each kind's layers sit at their position in the network; a statistic is pooled over
    the heads of the kinds it applies to at each position (constants and NaN-only kinds left out)."""
    nan = np.nan
    # lang_self 3 layers (stage 0), cross_lang_self and cross_l2v 2 layers (stage 1): 5 positions
    lang = np.array([[[[0.0], [0.5], [1.0]], [[nan], [nan], [nan]]]])  # (1 example, 2 stats, 3 layers, 1 head)
    cross = np.array([[[[1.0], [0.0]], [[0.2], [0.4]]]])  # (1, 2, 2, 1)
    p = cmp.depth_profile({"lang_self": (["s0", "s1"], lang), "cross_lang_self": (["s0", "s1"], cross)})
    np.testing.assert_allclose(p.relative_depth, [0, .25, .5, .75, 1])
    np.testing.assert_array_equal(p.layer, [0, 1, 2, 3, 4])
    # s0: lang_self at positions 0..2, cross_lang_self after them at 3..4
    np.testing.assert_allclose(p.mean[0], [0, .5, 1, 1, 0])
    np.testing.assert_allclose(p.spread[0], 0)
    # s1: NaN everywhere in lang_self, so only cross_lang_self's positions
    np.testing.assert_allclose(p.mean[1], [nan, nan, nan, .2, .4])
    assert p.kinds == {"s0": ("cross_lang_self", "lang_self"), "s1": ("cross_lang_self",)}
    np.testing.assert_array_equal(p.n_heads, [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    # a statistic constant by construction is left out of the pool: text -> image of cross_l2v is 1.0
    names = ["text_to_image", "text_to_text"]
    l2v = np.ones((1, 2, 2, 1))
    ls = np.full((1, 2, 3, 1), 0.3)
    ls[:, 0] = nan
    q = cmp.depth_profile({"cross_l2v": (names, l2v), "lang_self": (names, ls)})
    assert not q.exists("text_to_image") and q.kinds["text_to_image"] == ()
    assert np.isnan(q.mean[0]).all()
    assert q.kinds["text_to_text"] == ("lang_self",)  # cross_l2v's keys hold no text
    # one kind profiled alone still sits after the encoders when told the model's layers
    alone = cmp.depth_profile({"cross_lang_self": (["s0"], cross[:, :1])},
                              layers_per_kind={"lang_self": 3, "cross_lang_self": 2})
    np.testing.assert_allclose(alone.mean[0], [nan, nan, nan, 1, 0])


def test_missing_statistic_is_stated_plainly():
    a = cmp.depth_profile({"self": (["t2i", "i2i"], np.ones((1, 2, 2, 1)))})
    v = np.ones((1, 2, 2, 1))
    v[:, 0] = np.nan
    b = cmp.depth_profile({"vision_self": (["t2i", "i2i"], v)})
    msgs = cmp.missing_statistics(a, b, "A", "B")
    assert len(msgs) == 1 and msgs[0].startswith("t2i does not exist for B (it applies to none of its attention kinds")
    assert msgs[0].endswith("only A is shown.")
    assert not b.exists("t2i") and b.exists("i2i")
    assert np.isnan(b.mean[0]).all()
    assert cmp.profile_rows(b, "B", "k")[0]["stat"] == "i2i"


def test_compare_kinds_single_vs_dual_stream():
    dual = ["lang_self", "vision_self", "cross_l2v", "cross_v2l", "cross_lang_self", "cross_vision_self"]
    k = cmp.compare_kinds(["self"], dual)
    assert k.shared == () and k.only_a == ("self",) and k.only_b == tuple(dual)
    assert "share no attention kind" in k.statement()
    same = cmp.compare_kinds(["self"], ["self"])
    assert same.shared == ("self",) and same.statement().startswith("Both models")
    assert cmp.overlay_kind(dual) == "cross_l2v" and cmp.overlay_kind(["self"]) == "self"
    assert cmp.overlay_kind(["vision_self"]) is None


def test_words_and_attention_row_and_overlay():
    tokens_a = ["[CLS]", "What", "color", "[SEP]", "patch 0,0", "patch 0,1"]
    mod_a = ["special", "text", "text", "special", "image", "image"]
    tokens_b = ["[CLS]", "color", "is", "[SEP]", "patch 0,0"]
    mod_b = ["special", "text", "text", "special", "image"]
    assert cmp.common_words(tokens_a, mod_a, tokens_b, mod_b) == ["color"]
    assert cmp.word_token(tokens_a, mod_a, "COLOR") == 2
    # 2 heads; query token 2 sends (.1, .3) and (.3, .1) to the two patches -> mean (.2, .2)
    att = np.zeros((2, 6, 6))
    att[0, 2] = [.2, .2, .1, .1, .1, .3]
    att[1, 2] = [.1, .1, .2, .3, .3, .0]
    idx = np.arange(6)
    img, w = cmp.word_to_image_row(att, idx, idx, mod_a, 2)
    np.testing.assert_array_equal(img, [4, 5])
    np.testing.assert_allclose(w, [.2, .15])
    with pytest.raises(ValueError):
        cmp.word_to_image_row(att, idx[:2], idx, mod_a, 2)


# ---- two runs in one store -------------------------------------------------------------------------
def _record(store, model_dir, run, examples):
    from adapters.vilt import ViltAdapter
    from pipeline.record import record_examples

    adapter = ViltAdapter.load(str(model_dir))
    return record_examples(adapter, examples, store, run, progress=False)


@pytest.fixture(scope="module")
def deep_vilt_dir(tmp_path_factory):
    from testkit.tiny_vilt import make_tiny_vilt

    return make_tiny_vilt(tmp_path_factory.mktemp("tiny_vilt_deep"), seed=1, layers=3)


@pytest.fixture(scope="module")
def pair_store(tmp_path_factory, tiny_vilt_dir, deep_vilt_dir):
    """Runs 'a' (2 layers) and 'b' (3 layers, other seed) over the same 6 easy-VQA examples."""
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore

    path = tmp_path_factory.mktemp("pair") / "pair.zarr"
    store = VLStore(path, mode="a")
    _record(store, tiny_vilt_dir, "a", itertools.islice(iter(EasyVQA("test")), N_EXAMPLES))
    _record(store, deep_vilt_dir, "b", itertools.islice(iter(EasyVQA("test")), N_EXAMPLES))
    return path


@pytest.fixture(scope="module")
def partial_store(tmp_path_factory, tiny_vilt_dir, deep_vilt_dir):
    """Run 'a' over examples 0..5 and run 'b' over 3..8: 3 shared, 3 only in each."""
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore

    path = tmp_path_factory.mktemp("partial") / "partial.zarr"
    store = VLStore(path, mode="a")
    _record(store, tiny_vilt_dir, "a", itertools.islice(iter(EasyVQA("test")), 0, 6))
    _record(store, deep_vilt_dir, "b", itertools.islice(iter(EasyVQA("test")), 3, 9))
    return path


def _app(store_path, monkeypatch, **params):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("VL_LENS_STORE", str(store_path))
    at = AppTest.from_file(str(ROOT / "views" / "compare.py"), default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


def _picker_ids(at, candidates) -> list[str]:
    """Which of ``candidates`` the shared example picker offers, in its order (options are labels)."""
    box = at.selectbox(key="compare_example")
    labels = [box.format_func(i) for i in candidates]
    assert len(set(labels)) == len(labels), "test examples need distinct labels"
    return [candidates[labels.index(o)] for o in box.options]


def _frame(at, *columns):
    """The one table on the page that has all these columns."""
    found = [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]
    assert len(found) == 1, f"{len(found)} tables with columns {columns}"
    return found[0]


def _chart_data(at, name: str) -> list[dict]:
    """Rows of the Altair chart tagged ``usermeta.chart == name`` (Streamlit sends its data as Arrow)."""
    import pyarrow as pa

    for node in at.get("vega_lite_chart"):
        spec = json.loads(node.proto.spec)
        if spec.get("usermeta", {}).get("chart") == name:
            rows = []
            for ds in node.proto.datasets:
                rows += pa.ipc.open_stream(ds.data.data).read_all().to_pylist()
            return rows
    raise AssertionError(f"no chart {name!r} on the page")


def test_page_joins_and_lists_disagreements_from_stored_predictions(pair_store, monkeypatch):
    from store.zarr_store import VLStore

    at = _app(pair_store, monkeypatch, run="a", run2="b")
    assert not at.exception, at.exception
    store = VLStore(pair_store)
    sa, sb = store.run("a").summaries(), store.run("b").summaries()
    ids = [s.example_id for s in sa]
    assert len(ids) == N_EXAMPLES and set(ids) == {s.example_id for s in sb}
    captions = " ".join(c.value for c in at.caption)
    assert f"{N_EXAMPLES} examples recorded by both runs" in captions
    # the example picker offers exactly the joined ids
    assert _picker_ids(at, ids) == ids
    assert list(_frame(at, "agree")["example_id"]) == ids
    # disagreement list, recomputed by hand from the stored predictions
    pred_b = {s.example_id: s for s in sb}
    expect = sorted(((abs(s.confidence - pred_b[s.example_id].confidence), s.example_id) for s in sa
                     if s.answer != pred_b[s.example_id].answer), key=lambda t: (-t[0], t[1]))
    assert expect, "the two random models should disagree on some of the 6 examples"
    table = at.dataframe(key="disagreements_table").value
    assert list(table["example_id"]) == [e for _, e in expect]
    np.testing.assert_allclose(table["gap"], [g for g, _ in expect], rtol=1e-6)
    for _, row in table.iterrows():
        assert row["answer A"] != row["answer B"]
    # accuracy per answer against the stored correct flags
    acc = _frame(at, "accuracy A (a)")
    for _, row in acc.iterrows():
        truth = [s for s in sa if s.label == row["true answer"]]
        assert row["examples"] == len(truth)
        assert row["accuracy A (a)"] == pytest.approx(sum(s.correct for s in truth) / len(truth))


def test_page_relative_depth_axis(pair_store, monkeypatch):
    at = _app(pair_store, monkeypatch, run="a", run2="b")
    assert not at.exception, at.exception
    table = _frame(at, "relative_depth", "spread")
    for model, L in (("A: a", 2), ("B: b", 3)):
        sub = table[(table["model"] == model) & (table["stat"] == "text_to_image")]
        np.testing.assert_allclose(sorted(sub["relative_depth"]), np.linspace(0, 1, L))
        assert sorted(sub["layer"]) == list(range(L))
    # the chart itself plots the same axis
    rows = _chart_data(at, "depth_chart")
    for model, L in (("A: a", 2), ("B: b", 3)):
        depths = sorted({r["relative_depth"] for r in rows if r["model"] == model})
        np.testing.assert_allclose(depths, np.linspace(0, 1, L))
    # the per-example head heatmaps use relative depth too: 3 layers x 2 heads for B
    heat_b = _chart_data(at, "compare_heat_B")
    assert sorted({r["relative_depth"] for r in heat_b}) == [0.0, 0.5, 1.0]
    assert len(heat_b) == 3 * 2
    # both overlays drawn (a word is common to both token lists) and both projections
    from store.zarr_store import VLStore

    eid = at.selectbox(key="compare_example").value
    for tag, run in (("A", "a"), ("B", "b")):  # drawn by the one overlay renderer, one region per image token
        regions = [r for r in _chart_data(at, f"compare_overlay_{tag}") if "weight" in r]
        n_image = VLStore(pair_store).run(run).tokens(eid)["modality"].count("image")
        assert len(regions) == n_image and sum(r["weight"] for r in regions) <= 1 + 1e-6
    _chart_data(at, "compare_pca_A")
    _chart_data(at, "compare_pca_B")


def test_page_follows_ex_and_reports_answers(pair_store, monkeypatch):
    from store.zarr_store import VLStore

    store = VLStore(pair_store)
    sa, sb = store.run("a").summaries(), store.run("b").summaries()
    target = sa[3]
    at = _app(pair_store, monkeypatch, run="a", run2="b", ex=target.example_id)
    assert not at.exception, at.exception
    assert at.selectbox(key="compare_example").value == target.example_id
    other = {s.example_id: s for s in sb}[target.example_id]
    md = " ".join(m.value for m in at.markdown)
    assert f"{target.answer} ({target.confidence:.2f})" in md
    assert f"{other.answer} ({other.confidence:.2f})" in md
    # depth slider: at relative depth 0 the overlays read layer 0 of both models
    def overlay_captions():  # the overlays' captions ("A: a · self · layer ...")
        return [c.value for c in at.caption if c.value.startswith(("A: ", "B: "))]

    caps = overlay_captions()  # default: the last layer of each model, counted from 0 (b has 3 layers: 0-2)
    assert any("a · self · layer 1 (0–1), relative depth 1.00" in c for c in caps), caps
    assert any("b · self · layer 2 (0–2), relative depth 1.00" in c for c in caps), caps
    assert not any(" of 2 " in c or " of 1 " in c for c in caps), caps  # not "layer 2 of 2" for 3 layers
    assert all("% of its attention to the image" in c for c in caps), caps  # ViLT's joint keys: a real share
    at.slider(key="compare_depth").set_value(0.5).run()
    assert not at.exception, at.exception
    caps = overlay_captions()  # 0.5 -> layer 1 of b (exact); a has layers at 0 and 1, the tie goes deeper
    assert any("b · self · layer 1 (0–2), relative depth 0.50" in c for c in caps), caps
    assert any("a · self · layer 1 (0–1), relative depth 1.00" in c for c in caps), caps
    at.slider(key="compare_depth").set_value(0.2).run()
    caps = overlay_captions()
    assert any("b · self · layer 0 (0–2)" in c for c in caps) and any("a · self · layer 0 (0–1)" in c for c in caps)
    pca = [json.loads(n.proto.spec).get("title", {}) for n in at.get("vega_lite_chart")
           if json.loads(n.proto.spec).get("usermeta", {}).get("chart") == "compare_pca_B"]
    assert pca and "joint 1 (0–3)" in str(pca[0])  # 0.2 is nearest 1/3  # b's hidden states: embeddings + 3 layers


def test_page_shows_only_shared_examples_with_count_of_rest(partial_store, monkeypatch):
    from store.zarr_store import VLStore

    at = _app(partial_store, monkeypatch, run="a", run2="b")
    assert not at.exception, at.exception
    store = VLStore(partial_store)
    ids_a = [s.example_id for s in store.run("a").summaries()]
    ids_b = {s.example_id for s in store.run("b").summaries()}
    shared = [i for i in ids_a if i in ids_b]
    assert len(shared) == 3
    captions = " ".join(c.value for c in at.caption)
    assert "3 examples recorded by both runs (3 only in A, 3 only in B, not shown)" in captions
    assert _picker_ids(at, shared) == shared  # an option outside the shared ids would not map back
    assert list(_frame(at, "agree")["example_id"]) == shared
    depth = _frame(at, "relative_depth", "spread")
    assert (depth["heads"] == 2).all()


def test_page_with_one_run_says_how_to_get_two(tiny_store, monkeypatch):
    at = _app(tiny_store, monkeypatch)
    assert not at.exception, at.exception
    assert any("holds one run" in w.value for w in at.warning)


# ---- CLI: two models in one command ----------------------------------------------------------------
def test_cli_records_two_models_over_the_same_examples(tmp_path, tiny_vilt_dir, deep_vilt_dir, capsys):
    import cli
    from commands.record import run_name_for
    from store.zarr_store import VLStore

    out = tmp_path / "two.zarr"
    ma, mb = f"vilt:{tiny_vilt_dir}", f"vilt:{deep_vilt_dir}"
    rc = cli.main(["record", "--model", ma, "--model", mb, "--limit", "3", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    store = VLStore(out)
    ra, rb = run_name_for(ma), run_name_for(mb)
    assert sorted(store.runs()) == sorted([ra, rb]) and ra != rb
    ids_a, ids_b = store.run(ra).example_ids(), store.run(rb).example_ids()
    assert len(ids_a) == 3 and sorted(ids_a) == sorted(ids_b)
    assert store.run(ra).provenance["config"]["layers"] == 2
    assert store.run(rb).provenance["config"]["layers"] == 3


# ---- single-stream against dual-stream -------------------------------------------------------------
def _softmax_rows(rng, shape):
    x = rng.rand(*shape).astype(np.float64) * 4
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def dual_stream_record(summary, *, with_v2l: bool = True, seed: int = 0):
    """A hand-built LXMERT-shaped Record of an already recorded example (same example_id):
    language encoder 3 layers, vision and cross encoders 2 layers, 2 heads, 4 detector regions."""
    from store.schema import AttentionBlock, HiddenBlock, Prediction, Record

    rng = np.random.RandomState(seed)
    words = summary.question.rstrip("?").split()
    tokens = ["[CLS]"] + words + ["[SEP]"] + [f"region {i}" for i in range(4)]
    modality = ["special"] + ["text"] * len(words) + ["special"] + ["image"] * 4
    n = len(tokens)
    lang = np.arange(len(words) + 2)
    vis = np.arange(len(words) + 2, n)
    boxes = np.full((n, 4), np.nan, np.float32)
    boxes[vis] = [[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1]]
    spans = np.full((n, 2), -1, np.int32)
    pos = 0
    for i, w in enumerate(words, start=1):
        start = summary.question.index(w, pos)
        spans[i] = (start, start + len(w))
        pos = start + len(w)

    def block(layers, q, k):
        return AttentionBlock(values=_softmax_rows(rng, (layers, 2, len(q), len(k))), query_index=q, key_index=k)

    attention = {"lang_self": block(3, lang, lang), "vision_self": block(2, vis, vis),
                 "cross_l2v": block(2, lang, vis), "cross_lang_self": block(2, lang, lang),
                 "cross_vision_self": block(2, vis, vis)}
    if with_v2l:
        attention["cross_v2l"] = block(2, vis, lang)
    hidden = {"lang": HiddenBlock(values=rng.randn(6, len(lang), 8).astype(np.float32), token_index=lang),
              "vision": HiddenBlock(values=rng.randn(5, len(vis), 8).astype(np.float32), token_index=vis)}
    answer = "circle" if summary.answer != "circle" else "red"
    return Record(example_id=summary.example_id, question=summary.question, tokens=tuple(tokens),
                  modality=tuple(modality), token_boxes=boxes, token_grid=np.full((n, 2), -1, np.int32),
                  token_spans=spans, image=np.full((16, 16, 3), 128, np.uint8), attention=attention, hidden=hidden,
                  prediction=Prediction(answers=(answer,), probabilities=(0.5,)), label=summary.label)


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory, tiny_vilt_dir):
    """Run 'single' (tiny ViLT, kind self) and run 'dual' (hand-built LXMERT-shaped records, no cross_v2l)."""
    from analysis.head_stats import compute_head_stats
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore

    path = tmp_path_factory.mktemp("mixed") / "mixed.zarr"
    store = VLStore(path, mode="a")
    _record(store, tiny_vilt_dir, "single", itertools.islice(iter(EasyVQA("test")), 4))
    kinds = ["lang_self", "vision_self", "cross_l2v", "cross_lang_self", "cross_vision_self"]
    writer = store.writer("dual", {"model_id": "synthetic-lxmert", "adapter": "synthetic",
                                   "architecture": "dual-stream", "attention_kinds": kinds,
                                   "config": {"layers": 3, "heads": 2}})
    for i, s in enumerate(store.run("single").summaries()):
        rec = dual_stream_record(s, with_v2l=False, seed=i)
        writer.write(rec, compute_head_stats(rec))
    writer.consolidate()
    return path


def test_single_vs_dual_stream_compares_what_exists_in_both(mixed_store, monkeypatch):
    at = _app(mixed_store, monkeypatch, run="single", run2="dual")
    assert not at.exception, at.exception
    info = " ".join(i.value for i in at.info)
    assert "share no attention kind" in info and "Only in single: self" in info
    # no shared kind: the kind picker offers only the pooled rule
    assert list(at.selectbox(key="compare_kind").options) == ["all kinds (mean where it applies)"]
    # image_to_text needs image queries with text keys: without cross_v2l no dual kind has them; text_to_image
    # exists only in cross_l2v, whose keys are all regions, so it is 1.0 by construction: not applicable either
    warnings = [w.value for w in at.warning]
    for stat in ("image_to_text", "text_to_image", "image_to_image", "cross_modal"):
        assert any(w.startswith(f"{stat} does not exist for B (dual)") for w in warnings), (stat, warnings)
    depth = _frame(at, "relative_depth", "spread")
    dual = depth[depth["model"] == "B: dual"]
    assert set(dual["stat"]) == {"image_to_image_nonlocal", "text_to_text", "intra_modal"}
    assert not (dual["mean"] > 0.999).all()  # no constant 1.0 pooled into the profile
    # network positions: lang_self 3 layers, then the 2 cross layers: 5 positions
    t2t = dual[dual["stat"] == "text_to_text"].sort_values("relative_depth")
    np.testing.assert_allclose(t2t["relative_depth"], [0, .25, .5, .75, 1])
    assert list(t2t["layer"]) == [0, 1, 2, 3, 4]
    assert (t2t["heads"] == 2).all()  # lang_self at 0..2, cross_lang_self at 3..4: one kind (2 heads) each
    # the vision encoder (2 layers) sits beside the language encoder from 0, cross_vision_self after it
    nonlocal_ = dual[dual["stat"] == "image_to_image_nonlocal"]
    np.testing.assert_allclose(sorted(nonlocal_["relative_depth"]), [0, .25, .75, 1])
    # intra-modal of the dual model is text -> text alone (image -> image is constant in every vision kind)
    np.testing.assert_allclose(dual[dual["stat"] == "intra_modal"].sort_values("relative_depth")["mean"],
                               t2t["mean"], rtol=1e-6)
    # the per-example head summary: text -> image varies in A's self; in B it is a message, not a chart of 1.0
    assert at.selectbox(key="compare_stat").value == "text_to_image"
    assert at.selectbox(key="compare_hkind_B").value == "cross_l2v"
    assert any(i.value.startswith("text → image is not applicable for kind cross_l2v: its keys are all image tokens")
               for i in at.info), [i.value for i in at.info]
    assert "compare_heat_B" not in {json.loads(n.proto.spec).get("usermeta", {}).get("chart")
                                    for n in at.get("vega_lite_chart")}
    # a statistic that varies in B: B's picker opens a kind that has it
    at.selectbox(key="compare_stat").set_value("text_to_text").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="compare_hkind_B").value in ("lang_self", "cross_lang_self")
    heat_b = _chart_data(at, "compare_heat_B")
    assert {r["value"] for r in heat_b} != {1.0}
    # the same word's overlay from both models (self vs cross_l2v), and both projections
    captions = [c.value for c in at.caption]
    assert any("single · self" in c for c in captions) and any("dual · cross_l2v" in c for c in captions)
    # cross_l2v's keys are all regions: no "'word' sends 100% of its attention to the image"
    dual_cap = next(c for c in captions if "dual · cross_l2v" in c)
    assert "sends" not in dual_cap and "keys are all image tokens" in dual_cap, dual_cap
    assert "relative depth 1.00" in dual_cap  # its last cross layer is the network's last position
    # PCA of the dual model pools both hidden streams: every token of the example is a point
    from store.zarr_store import VLStore

    eid = at.selectbox(key="compare_example").value
    n_tokens = len(VLStore(mixed_store).run("dual").tokens(eid)["tokens"])
    points = _chart_data(at, "compare_pca_B")
    assert len(points) == n_tokens
    assert {p["modality"] for p in points} == {"text", "image", "special"}


def test_kind_picked_by_hand_stays_with_a_message(mixed_store, monkeypatch):
    """Picking a kind where the statistic is not applicable keeps that kind and says why."""
    at = _app(mixed_store, monkeypatch, run="single", run2="dual")
    at.selectbox(key="compare_stat").set_value("text_to_text").run()
    at.selectbox(key="compare_hkind_B").set_value("vision_self").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="compare_hkind_B").value == "vision_self"
    assert "text → text is not applicable for kind vision_self: its queries are image tokens only." in [
        i.value for i in at.info]


# ---- what a person sees on the Data set tab ---------------------------------------------------------
def _spec(at, name):
    for node in at.get("vega_lite_chart"):
        spec = json.loads(node.proto.spec)
        if spec.get("usermeta", {}).get("chart") == name:
            return spec
    raise AssertionError(f"no chart {name!r}")


def _encodings(spec, channel):
    """Every encoding of ``channel`` in a (layered, faceted) Vega-Lite spec."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            enc = node.get("encoding")
            if isinstance(enc, dict) and channel in enc:
                found.append(enc[channel])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return found


def test_depth_curves_have_one_colour_per_model_and_a_legend(pair_store, monkeypatch):
    at = _app(pair_store, monkeypatch, run="a", run2="b")
    spec = _spec(at, "depth_chart")
    colors = _encodings(spec, "color")
    assert len(colors) == 2  # band and line
    for c in colors:
        assert c["field"] == "model" and c.get("legend", {}) is not None
        assert c["scale"]["domain"] == ["A: a", "B: b"]
        assert len(set(c["scale"]["range"])) == 2  # two different colours, the same in band and line
    assert colors[0]["scale"] == colors[1]["scale"]


def test_accuracy_has_one_format_on_the_tab(pair_store, monkeypatch):
    from store.zarr_store import VLStore

    at = _app(pair_store, monkeypatch, run="a", run2="b")
    sa = VLStore(pair_store).run("a").summaries()
    overall = sum(s.correct for s in sa) / len(sa)
    metric = next(m for m in at.metric if m.label.startswith("Accuracy of A"))
    assert metric.value == f"{100 * overall:.1f}%"
    table = next(d for d in at.dataframe if "accuracy A (a)" in d.value.columns)
    config = json.loads(table.proto.columns)
    for col in ("accuracy A (a)", "accuracy B (b)"):
        assert config[col]["type_config"]["format"] == "%.1f%%"  # shown as 97.6%, like the metric
    acc = table.value
    for _, row in acc.iterrows():
        truth = [s for s in sa if s.label == row["true answer"]]
        assert row["accuracy A (a)"] == pytest.approx(100 * sum(s.correct for s in truth) / len(truth))


def test_every_compare_chart_downloads(pair_store, monkeypatch):
    at = _app(pair_store, monkeypatch, run="a", run2="b")
    charts = {json.loads(n.proto.spec).get("usermeta", {}).get("chart") for n in at.get("vega_lite_chart")}
    assert charts == {"depth_chart", "compare_heat_A", "compare_heat_B", "compare_pca_A", "compare_pca_B",
                      "compare_overlay_A", "compare_overlay_B"}
    keys = {b.proto.id for b in at.get("download_button")}
    for export in ("depth_export", "compare_heat_A_export", "compare_heat_B_export", "compare_pca_A_export",
                   "compare_pca_B_export", "compare_overlay_A_export", "compare_overlay_B_export"):
        for fmt in ("png", "svg", "csv"):
            assert any(k.endswith(f"{export}_{fmt}") for k in keys), (export, fmt, keys)


def test_two_dual_stream_runs_on_a_kind_where_nothing_varies(tmp_path, monkeypatch):
    """Two LXMERT-like runs, shared kind cross_l2v: every statistic is constant or undefined there."""
    from tests.view_records import dual_stream_record, write_store

    path = write_store(tmp_path / "dd.zarr", [dual_stream_record(seed=0)], run="d1")
    write_store(path, [dual_stream_record(seed=0)], run="d2")
    at = _app(path, monkeypatch, run="d1", run2="d2")
    assert not at.exception, at.exception
    at.selectbox(key="compare_kind").set_value("cross_l2v").run()
    assert not at.exception, at.exception
    assert any(i.value.startswith("No head statistic varies in kind cross_l2v for either model") for i in at.info)
    assert not any("does not exist" in w.value for w in at.warning)  # one line, not one per statistic
    # pooled over all kinds: the profile exists, with no constant in it
    at.selectbox(key="compare_kind").set_value("all kinds (mean where it applies)").run()
    depth = _frame(at, "relative_depth", "spread")
    assert set(depth["stat"]) == {"image_to_text", "image_to_image_nonlocal", "text_to_text", "cross_modal",
                                  "intra_modal"}
    np.testing.assert_allclose(sorted(set(depth["relative_depth"])), [0, .25, .5, .75, 1])


def test_generated_answers_are_judged_and_compared_after_normalization():
    """A generated "A red one." is the label "red one" and agrees with a classifier's "red one"; the
    stored verdict wins where a summary carries one."""
    gen = [S("1", "A red one.", .4, "red one"), S("2", "Blue!", .9, "red one"), S("3", "Two", .5, "2")]
    cls = [S("1", "red one", .8, "red one"), S("2", "red one", .7, "red one"), S("3", "2", .6, "2")]
    acc = cmp.accuracy(gen)
    assert (acc.n_correct, acc.n_labelled) == (2, 3) and acc.per_answer == {"2": (1, 1), "red one": (1, 2)}
    assert [d.example_id for d in cmp.disagreements(gen, cls)] == ["2"]
    assert cmp.same_answer("Two", "2") and not cmp.same_answer("red", None)
    stored = SimpleNamespace(example_id="4", answer="red", label="red", correct=False)
    assert cmp.is_correct(stored) is False  # the store's verdict, not a recomputation


def test_words_match_across_tokenizers():
    sp = ["<s>", "\u2581What", "\u2581color", "?"]
    bpe = ["[CLS]", "what", "\u0120color", "[SEP]"]
    mods = ["special", "text", "text", "text"]
    assert cmp.common_words(sp, mods, bpe, ["special", "text", "text", "special"]) == ["what", "color"]
    assert cmp.word_token(bpe, mods, "\u2581color") == 2


def test_an_answer_statistic_missing_from_a_classifier_says_why():
    def prof(names, exists):
        return SimpleNamespace(stat_names=tuple(names), exists=lambda s: s in exists)

    gen = prof(["text_to_image", "answer_to_image"], {"text_to_image", "answer_to_image"})
    cls = prof(["text_to_image"], {"text_to_image"})
    msgs = cmp.missing_statistics(gen, cls, "A (llava)", "B (vilt)")
    assert msgs == ["answer_to_image does not exist for B (vilt) (it is a statistic of generated answer tokens, and "
                    "this model classifies); only A (llava) is shown."]
