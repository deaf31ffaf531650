"""Chosen layers / heads recorded with every query row (``record --full-layers / --full-heads``): the
Record's ``full_attention`` beside a kind's kept rows, its checks, the store round trip and the reader
that hands a view the full rows of a chosen layer."""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest

from core.errors import RecordError
from store.schema import AttentionBlock, FullAttention
from store.zarr_store import VLStore
from tests.records import grid_record, softmax_rows

LAYERS, HEADS = 3, 2


def _language_and_full(full_layers=(2,), full_heads=(0, 1)):
    """A record keeping the non-image rows of every layer, plus every row of ``full_layers`` x
    ``full_heads``; and the full maps it was cut from (layer, head, query, key)."""
    base = grid_record(layers=LAYERS, heads=HEADS)
    maps = np.asarray(base.attention["self"].values, np.float32)
    n = base.n_tokens
    lang = np.array([i for i, m in enumerate(base.modality) if m != "image"])
    keep = AttentionBlock(values=maps[:, :, lang], query_index=lang, key_index=np.arange(n))
    full = FullAttention(block=AttentionBlock(values=maps[np.ix_(full_layers, full_heads)], query_index=np.arange(n),
                                              key_index=np.arange(n)), layers=full_layers, heads=full_heads)
    rec = dataclasses.replace(base, attention={"self": keep}, full_attention={"self": full})
    return rec, maps


def test_full_attention_must_fit_the_kind_it_completes():
    rec, maps = _language_and_full()
    n = rec.n_tokens
    every = np.arange(n)

    def full(layers, heads, values=None, keys=every):
        v = maps[np.ix_(layers, heads)] if values is None else values
        return {"self": FullAttention(block=AttentionBlock(values=v, query_index=every, key_index=keys),
                                      layers=layers, heads=heads)}

    with pytest.raises(RecordError, match=r"layers: must lie in \[0, 3\)"):
        dataclasses.replace(rec, full_attention=full((3,), (0,), values=maps[[2]][:, [0]]))
    with pytest.raises(RecordError, match="heads: must be distinct and sorted"):
        dataclasses.replace(rec, full_attention=full((0,), (1, 0)))
    with pytest.raises(RecordError, match="completes no attention kind"):
        dataclasses.replace(rec, full_attention={"cross_l2v": full((0,), (0,))["self"]})
    with pytest.raises(RecordError, match="key_index: must be the keys"):
        dataclasses.replace(rec, full_attention=full((0,), (0,), values=maps[[0]][:, [0], :, :-1], keys=every[:-1]))
    with pytest.raises(RecordError, match="rows must be softmax rows"):
        dataclasses.replace(rec, full_attention=full((0,), (0,), values=maps[[0]][:, [0]] * 2))
    with pytest.raises(RecordError, match="values of shape"):
        FullAttention(block=AttentionBlock(values=maps[[0]], query_index=every, key_index=every), layers=(0,),
                      heads=(0,))


def test_store_round_trip_and_reader_gives_full_rows_of_a_chosen_layer(tmp_path):
    rec, maps = _language_and_full(full_layers=(0, 2), full_heads=(1,))
    store = VLStore(tmp_path / "s.zarr", mode="a")
    store.writer("gen", {"model_id": "hand"}).write(rec)
    reader = VLStore(tmp_path / "s.zarr").run("gen")
    eid = rec.example_id
    assert reader.attention_kinds(eid) == ["self"]  # the views' kinds are unchanged
    assert reader.full_attention_layout(eid, "self") == ((0, 2), (1,))
    back = reader.record(eid).full_attention["self"]
    assert back.layers == (0, 2) and back.heads == (1,)
    np.testing.assert_array_equal(back.block.values, rec.full_attention["self"].block.values)

    n = rec.n_tokens
    lang = rec.attention["self"].query_index
    values, qi, ki = reader.attention_rows(eid, "self", 2, 1)  # a full layer and head: every row
    assert list(qi) == list(range(n)) and list(ki) == list(range(n))
    np.testing.assert_allclose(values, maps[2, 1], atol=1e-3)
    image_rows = rec.indices("image")
    assert values[image_rows].sum(-1) == pytest.approx(np.ones(len(image_rows)), abs=1e-2)
    values, qi, _ = reader.attention_rows(eid, "self", 2, 0)  # head 0 is not full: the kept rows
    assert list(qi) == list(lang)
    np.testing.assert_allclose(values, maps[2, 0][lang], atol=1e-3)
    values, qi, _ = reader.attention_rows(eid, "self", 1)  # layer 1 is not full
    assert values.shape == (HEADS, len(lang), n) and list(qi) == list(lang)
    values, qi, _ = reader.attention_rows(eid, "self", 0)  # every head of layer 0? only head 1 is full
    assert list(qi) == list(lang)


def test_full_layer_with_every_head_gives_every_row_of_the_layer(tmp_path):
    rec, maps = _language_and_full(full_layers=(1,), full_heads=(0, 1))
    store = VLStore(tmp_path / "s.zarr", mode="a")
    store.writer("gen", {"model_id": "hand"}).write(rec)
    reader = VLStore(tmp_path / "s.zarr").run("gen")
    values, qi, _ = reader.attention_rows(rec.example_id, "self", 1)
    assert values.shape == (HEADS, rec.n_tokens, rec.n_tokens)
    np.testing.assert_allclose(values, maps[1], atol=1e-3)


def test_full_attention_opens_in_xarray_with_model_layer_coordinates(tmp_path):
    xr = pytest.importorskip("xarray")
    rec, maps = _language_and_full(full_layers=(0, 2), full_heads=(1,))
    VLStore(tmp_path / "s.zarr", mode="a").writer("gen", {"model_id": "hand"}).write(rec)
    tree = xr.open_datatree(str(tmp_path / "s.zarr" / "runs" / "gen" / "examples" / rec.example_id), engine="zarr")
    full = tree["full_attention/self"].to_dataset()
    assert list(full["layer"].values) == [0, 2] and list(full["head"].values) == [1]
    np.testing.assert_allclose(full["attention"].sel(layer=2, head=1).values, maps[2, 1], atol=1e-3)


# ---- recording with a generative adapter (the tiny LLaVA) and cli.py record --------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from testkit.tiny_llava import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("llava") / "pad")


def test_positions_parse_lists_ranges_and_negatives():
    import argparse

    from commands.record import positions

    assert positions("0,5,-1") == (0, 5, -1)
    assert positions("0-3") == (0, 1, 2, 3)
    assert positions("1, 3-4") == (1, 3, 4)
    for bad in ("a", "3-1", "1,,2", "-3-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            positions(bad)


def test_full_layer_rows_are_the_rows_of_a_record_of_every_row(tiny_dir):
    """The last layer's head 1 in full: its every row equals that layer and head of a record of every
    row; the language rows of every layer are the default record's."""
    from PIL import Image

    from adapters.llava import LlavaAdapter
    from core.errors import AdapterError

    a = LlavaAdapter.load(str(tiny_dir))
    a.max_new_tokens = 2
    image = Image.fromarray((np.random.RandomState(4).rand(64, 64, 3) * 255).astype(np.uint8))
    default = a.run(image, "what color is the shape?")
    a.set_full_attention([-1], [1])
    assert (a.full_layers, a.full_heads) == ((1,), (1,))
    rec = a.run(image, "what color is the shape?")
    full = rec.full_attention["self"]
    assert (full.layers, full.heads) == ((1,), (1,)) and rec.meta["full_layers"] == [1]
    assert len(full.block.query_index) == rec.n_tokens
    np.testing.assert_array_equal(rec.attention["self"].values, default.attention["self"].values)
    a.attention_rows = "all"
    every = a.run(image, "what color is the shape?").attention["self"].values
    np.testing.assert_array_equal(full.block.values[0, 0], every[1, 1])
    image_rows = rec.indices("image")
    assert np.abs(full.block.values[0, 0][image_rows].astype(np.float32).sum(-1) - 1).max() < 2e-2
    a.set_full_attention([0])  # every head by default
    assert a.full_heads == (0, 1)
    with pytest.raises(AdapterError, match="full layers: 2 is outside the model's 2"):
        a.set_full_attention([2])
    with pytest.raises(AdapterError, match="full heads: -3 is outside"):
        a.set_full_attention([0], [-3])


def test_record_cli_full_layers_write_a_store_whose_reader_gives_every_row(tiny_dir, tmp_path, capsys):
    import cli

    out = tmp_path / "s.zarr"
    assert cli.main(["record", "--model", f"llava:{tiny_dir}", "--limit", "1", "--out", str(out), "--run", "gen",
                     "--full-layers", "-1", "--full-heads", "0"]) == 0
    reader = VLStore(out).run("gen")
    assert reader.provenance["config"]["full_layers"] == [1] and reader.provenance["config"]["full_heads"] == [0]
    eid = reader.example_ids()[0]
    assert reader.full_attention_layout(eid, "self") == ((1,), (0,))
    n = len(reader.tokens(eid)["tokens"])
    values, qi, _ = reader.attention_rows(eid, "self", 1, 0)
    assert values.shape == (n, n) and list(qi) == list(range(n))
    values, qi, _ = reader.attention_rows(eid, "self", 0, 0)  # layer 0: the language rows
    assert len(qi) < n and values.shape == (len(qi), n)
    capsys.readouterr()
    for flags, message in ((["--full-layers", "5"], "outside the model's 2"),
                           (["--full-heads", "0"], "give --full-layers too"),
                           (["--full-layers", "0", "--attention-rows", "all"], "recorded already"),
                           (["--full-layers", "x"], "positions like 0,5,-1")):
        with pytest.raises(SystemExit) if flags[1] == "x" else contextlib.nullcontext():  # argparse exits
            assert cli.main(["record", "--model", f"llava:{tiny_dir}", "--limit", "1", "--out", str(out),
                             "--run", "bad", *flags]) != 0
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("page", ["views/attention.py", "views/head_summary.py", "views/browser.py"])
def test_views_draw_a_store_with_full_layers(tmp_path, monkeypatch, page):
    """A store written with full layers opens in the views as before (they read the kept rows)."""
    from tests.view_records import open_page, write_store

    rec, _ = _language_and_full(full_layers=(2,), full_heads=(0, 1))
    path = write_store(tmp_path / "s.zarr", [rec])
    at = open_page(monkeypatch, path, page, run="hand", ex=rec.example_id, kind="self", layer=2, head=0)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
