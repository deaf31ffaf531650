"""VL-InterpreT databases import exactly and safely (pipeline/importers/vlinterpret.py).

The fixture writes databases byte for byte as VL-InterpreT's VliLmdb does: LMDB values are
lz4.frame.compress(msgpack.dumps(value, use_bin_type=True)); examples are pickle.dumps of dicts
holding numpy arrays (including np.str_ image tokens, as its preprocessing leaves them).
"""
from __future__ import annotations

import os
import pickle

import lmdb
import lz4.frame
import msgpack
import numpy as np
import pytest

from pipeline.importers.vlinterpret import NO_ANSWER, NOT_THE_ANSWER, UnsafePickleError, VLInterpretError, classify_tokens, import_vlinterpret, rebuild_question, restricted_loads
from store.zarr_store import VLStore

L, H, D = 2, 2, 8
TEXT = ["[CLS]", "what", "color", "is", "the", "sha", "##pe", "?", "[SEP]"]
GRID_W, GRID_H = 3, 2
# preprocessed order: sorted by (y, x); coordinates are (x, y)
COORDS = [(x, y) for y in range(GRID_H) for x in range(GRID_W)]


def write_db(path, values: dict):
    """values: key -> Python value, stored as VliLmdb.__setitem__ stores it."""
    env = lmdb.open(str(path), map_size=64 * 1024 ** 2)
    with env.begin(write=True) as txn:
        for k, v in values.items():
            txn.put(k.encode("utf-8"), lz4.frame.compress(msgpack.dumps(v, use_bin_type=True)))
    env.close()
    return path


def softmax_rows(rng, n):
    z = rng.randn(L, H, n, n) * 2
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Evil:
    """A pickle that runs a shell command when unpickled by an unrestricted loader."""

    def __init__(self, canary):
        self.canary = canary

    def __reduce__(self):
        return os.system, (f"touch {self.canary}",)


class EvilEval:
    def __init__(self, canary):
        self.canary = canary

    def __reduce__(self):
        return eval, (f"open({str(self.canary)!r}, 'w').close()",)


def make_examples(rng):
    n = len(TEXT) + len(COORDS)
    img_tokens = [np.str_(f"IMG_{i}") for i in range(len(COORDS))]
    ex0 = {  # txt_len counts [CLS]/[SEP]; preprocessed (grid size, tsne); int64 image; custom metric
        "ex_id": 0, "image": rng.randint(0, 256, (12, 18, 3)).astype(np.int64), "tokens": TEXT + img_tokens,
        "txt_len": len(TEXT), "img_coords": list(COORDS), "accuracy": True, "attention": softmax_rows(rng, n),
        "hidden_states": rng.randn(L + 1, n, D).astype(np.float32),
        "custom_metrics": {"my metric": rng.rand(L, H)}, "img_grid_size": np.array([GRID_W, GRID_H]),
        "tsne": [rng.randn(n, 2) for _ in range(L + 1)],
    }
    ex1 = {  # txt_len leaves out the specials (the inconsistency); hidden states as a list; uint8 image
        "ex_id": 1, "image": rng.randint(0, 256, (10, 10, 3)).astype(np.uint8), "tokens": TEXT + img_tokens,
        "txt_len": len(TEXT) - 2, "img_coords": np.array(COORDS), "accuracy": False,
        "attention": softmax_rows(rng, n), "hidden_states": [rng.randn(n, D) for _ in range(L + 1)],
    }
    ex2 = {  # no accuracy; hidden states with stop words dropped; attention not normalized
        "ex_id": 2, "image": rng.randint(0, 256, (8, 8, 3)), "tokens": TEXT + img_tokens, "txt_len": len(TEXT),
        "img_coords": list(COORDS), "attention": rng.rand(L, H, n, n),
        "hidden_states": rng.randn(L + 1, n - 3, D),
    }
    return [ex0, ex1, ex2]


@pytest.fixture
def database(tmp_path):
    rng = np.random.RandomState(0)
    examples = make_examples(rng)
    canary = tmp_path / "faiss_ran"
    values = {str(i): pickle.dumps(ex, protocol=pickle.HIGHEST_PROTOCOL) for i, ex in enumerate(examples)}
    # 'faiss' holds pickle bytes too: the importer must never unpickle it (this one would run a command)
    values.update({"n_examples": 3, "n_layers": L, "n_heads": H, "faiss": pickle.dumps(Evil(canary))})
    return write_db(tmp_path / "example_database", values), examples, canary


def expected_modality():
    return ["special"] + ["text"] * 7 + ["special"] + ["image"] * len(COORDS)


def test_import_reproduces_every_array(database, tmp_path):
    path, examples, canary = database
    store = VLStore(tmp_path / "store.zarr", mode="a")
    res = import_vlinterpret(path, store, "vli", progress=False)
    assert (res.examples, res.written, res.skipped, res.n_layers, res.n_heads) == (3, 3, 0, L, H)
    assert not canary.exists(), "the faiss pickle must never be loaded"
    reader = VLStore(tmp_path / "store.zarr").run("vli")
    assert reader.provenance["config"]["layers"] == L and reader.provenance["config"]["heads"] == H
    by_key = {}
    for eid in reader.example_ids():
        rec = reader.record(eid)
        by_key[rec.meta["vlinterpret"]["key"]] = (eid, rec)
    assert sorted(by_key) == ["0", "1", "2"]
    n = len(TEXT) + len(COORDS)
    for key, ex in zip(("0", "1", "2"), examples):
        eid, rec = by_key[key]
        assert list(rec.tokens) == [str(t) for t in ex["tokens"]]
        assert all(type(t) is str for t in rec.tokens)
        assert list(rec.modality) == expected_modality()  # same for ex1 whose txt_len left out the specials
        assert rec.question == "what color is the shape ?"
        for i in rec.indices("text"):
            s, e = rec.token_spans[i]
            assert rec.question[s:e] == rec.tokens[i].removeprefix("##")
        np.testing.assert_array_equal(rec.image, np.asarray(ex["image"]).astype(np.uint8))
        want = np.asarray(ex["attention"], np.float32)
        if key == "2":
            want = want / want.sum(-1, keepdims=True)
            assert any("renormalized" in m for m in rec.notices)
        np.testing.assert_array_equal(rec.attention["self"].values, want.astype(np.float16))
        np.testing.assert_array_equal(rec.attention["self"].query_index, np.arange(n))
        img = rec.indices("image")
        for tok, (x, y) in zip(img, COORDS):
            assert tuple(rec.token_grid[tok]) == (y, x)
            np.testing.assert_allclose(rec.token_boxes[tok], [x / GRID_W, y / GRID_H, (x + 1) / GRID_W,
                                                               (y + 1) / GRID_H], atol=1e-6)
        assert np.isnan(rec.token_boxes[: len(TEXT)]).all()
        hs = ex["hidden_states"]
        if key == "2":
            assert rec.hidden == {} and any("hidden_states cover" in m for m in rec.notices)
        else:
            np.testing.assert_array_equal(rec.hidden["joint"].values, np.asarray(np.stack(hs) if isinstance(hs, list)
                                                                                  else hs, np.float32).astype(np.float16))
        assert rec.prediction.answers == (NO_ANSWER,)
        assert rec.correct is {"0": True, "1": False, "2": None}[key]
        assert rec.label == {"0": NO_ANSWER, "1": NOT_THE_ANSWER, "2": None}[key]
        # head statistics use the explicit modality: text_to_image of layer 0 head 1, computed by hand
        names, stats = reader.head_stats(eid)["self"]
        a = want.astype(np.float16).astype(np.float32)
        text = np.arange(1, 8)
        image = np.arange(len(TEXT), n)
        by_hand = a[0, 1][np.ix_(text, image)].sum(-1).mean()
        np.testing.assert_allclose(stats[names.index("text_to_image"), 0, 1], by_hand, rtol=1e-5)
        # custom metrics: kept in meta and as an extra head statistic (NaN where an example lacks it)
        custom = stats[names.index("custom:my metric")]
        if key == "0":
            np.testing.assert_allclose(custom, ex["custom_metrics"]["my metric"], rtol=1e-6)
            np.testing.assert_allclose(rec.meta["vlinterpret"]["custom_metrics"]["my metric"],
                                       ex["custom_metrics"]["my metric"])
        else:
            assert np.isnan(custom).all()
    assert any("txt_len was 7" in m for m in by_key["1"][1].notices)
    # the consolidated index stacks the statistics of all three examples
    ids, names, allstats = reader.head_stats_all("self")
    assert allstats.shape == (3, len(names), L, H)
    # a rerun resumes: nothing is written twice
    again = import_vlinterpret(path, VLStore(tmp_path / "store.zarr", mode="a"), "vli", progress=False)
    assert (again.written, again.skipped) == (0, 3)


@pytest.mark.parametrize("payload", [Evil, EvilEval])
def test_malicious_example_runs_nothing_and_stops_naming_it(tmp_path, payload):
    rng = np.random.RandomState(1)
    good = make_examples(rng)[0]
    canary = tmp_path / "pwned"
    bad = dict(good, attention=[payload(canary)])  # hidden inside an otherwise normal example
    assert not canary.exists()
    path = write_db(tmp_path / "db", {"0": pickle.dumps(good), "1": pickle.dumps(bad), "n_examples": 2,
                                      "n_layers": L, "n_heads": H})
    store = VLStore(tmp_path / "store.zarr", mode="a")
    with pytest.raises(UnsafePickleError, match=r"example '1'.*refusing to load.*(system|eval)"):
        import_vlinterpret(path, store, "vli", progress=False)
    assert not canary.exists(), "the malicious pickle ran"
    # the example before it was committed and is kept
    assert len(VLStore(tmp_path / "store.zarr").run("vli")) == 1


def test_cli_reports_one_line_and_fails(tmp_path, capsys):
    from cli import main

    canary = tmp_path / "pwned"
    path = write_db(tmp_path / "db", {"0": pickle.dumps({"tokens": ["a"], "attention": Evil(canary)}),
                                      "n_examples": 1})
    rc = main(["import-vlinterpret", str(path), "--out", str(tmp_path / "s.zarr")])
    err = capsys.readouterr().err
    assert rc != 0 and not canary.exists()
    errors = [line for line in err.splitlines() if line.startswith("error")]  # the rest is the progress bar
    assert len(errors) == 1 and "Traceback" not in err
    assert "example '0'" in errors[0] and "refusing to load" in errors[0] and "posix.system" in errors[0]
    rc = main(["import-vlinterpret", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.zarr")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "no VL-InterpreT database" in err


def test_cli_imports_and_names_the_run(database, tmp_path, capsys):
    from cli import main

    path, _, _ = database
    rc = main(["import-vlinterpret", str(path), "--out", str(tmp_path / "s.zarr")])
    assert rc == 0
    assert "3 written" in capsys.readouterr().out
    assert VLStore(tmp_path / "s.zarr").runs() == ["vlinterpret-example_database"]


def test_restricted_unpickler_accepts_numpy_and_plain_data_only():
    data = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "s": np.str_("IMG_1"), "f": np.float32(2.5),
            "b": np.bool_(True), "l": [1, 2.0, "x", None, (3, 4)], "t": np.zeros((2, 2), order="F")}
    for protocol in (2, 3, 4, 5):
        out = restricted_loads(pickle.dumps(data, protocol=protocol), where="example 'x'")
        np.testing.assert_array_equal(out["a"], data["a"])
        assert out["s"] == "IMG_1" and out["f"] == np.float32(2.5) and out["l"] == data["l"]
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        import collections

        restricted_loads(pickle.dumps(collections.OrderedDict(a=1)), where="example 'x'")
    with pytest.raises(UnsafePickleError, match="numpy.ma.core"):
        restricted_loads(pickle.dumps(np.ma.masked_array([1, 2], mask=[0, 1])), where="example 'x'")
    with pytest.raises(VLInterpretError, match="not a readable example pickle"):
        restricted_loads(b"\x80\x05garbage", where="example 'x'")


def test_modality_rule_and_question_rebuild():
    toks = ["[CLS]", "is", "it", "red", "[SEP]", "[IMG]", "c0", "c1"]
    # txt_len of 3 (specials left out) and of 5 give the same answer: image = last len(img_coords)
    for txt_len in (3, 5):
        mod, notes = classify_tokens(toks, txt_len, 2)
        assert mod == ["special", "text", "text", "text", "special", "special", "image", "image"]
        assert bool(notes) == (txt_len != 6)
    mod, notes = classify_tokens(["[CLS]", "a", "[SEP]", "x", "y"], 3, 0)  # no coords: txt_len decides
    assert mod == ["special", "text", "special", "image", "image"] and "no img_coords" in notes[0]
    q, spans = rebuild_question(["[CLS]", "un", "##seen", "cat", "[SEP]"], ["special", "text", "text", "text", "special"])
    assert q == "unseen cat" and spans.tolist() == [[-1, -1], [0, 2], [2, 6], [7, 10], [-1, -1]]


def test_not_a_database_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VLInterpretError, match="not a VL-InterpreT database"):
        import_vlinterpret(tmp_path / "empty", VLStore(tmp_path / "s.zarr", mode="a"), "x", progress=False)
    path = write_db(tmp_path / "db", {"0": "not pickle bytes", "n_examples": 1})
    with pytest.raises(VLInterpretError, match="example '0': expected pickle bytes"):
        import_vlinterpret(path, VLStore(tmp_path / "s.zarr", mode="a"), "x", progress=False)
