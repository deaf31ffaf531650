"""bench/views.py on a tiny shape: the fast and the naive view data steps return the same data,
and the benchmark's figures have the runner's structure."""
from __future__ import annotations

import numpy as np
import pytest

from bench import views

TINY = {"layers": 2, "heads": 3, "n_words": 4, "grid": (3, 3), "dim": 16, "image_px": 12}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench-views")
    recs = [views.synthetic_record(i, **TINY) for i in range(5)]
    reader = views.write_store(tmp / "s.zarr", recs)
    db = views.InterpretDB(tmp / "interpret.lmdb", recs)
    yield recs, reader, db
    db.close()


def test_synthetic_record_has_the_vilt_layout():
    rec = views.synthetic_record(0, **views.VILT_B32)
    assert rec.n_tokens == 185  # [CLS] + 38 words + [SEP] = 40; [IMG] + 144 patches = 145
    assert list(rec.modality).count("text") == 38 and list(rec.modality).count("image") == 144
    assert rec.attention["self"].values.shape == (12, 12, 185, 185)
    assert rec.hidden["joint"].values.shape == (13, 185, 768)


def test_one_head_read_is_the_slice_of_the_whole_attention(tiny):
    recs, reader, db = tiny
    for rec in recs[:2]:
        want = rec.attention["self"].values.astype(np.float32)
        for layer in range(TINY["layers"]):
            for head in range(TINY["heads"]):
                fast = views.attention_view_data(reader, rec.example_id, layer, head)
                whole = views.attention_view_data_whole(reader, rec.example_id, layer, head)
                old = views.attention_view_data_interpret(db, rec.example_id, layer, head)
                assert np.array_equal(fast["matrix"], want[layer, head])
                assert np.array_equal(whole["matrix"], want[layer, head])
                assert np.array_equal(old["matrix"], want[layer, head])
                assert np.array_equal(fast["rows"]["weight"], whole["rows"]["weight"])
                assert np.array_equal(fast["overlay"]["weight"], old["overlay"]["weight"])
    # A different head must give a different matrix (the check above would pass on a constant read).
    a = views.attention_view_data(reader, recs[0].example_id, 0, 0)["matrix"]
    b = views.attention_view_data(reader, recs[0].example_id, 1, 2)["matrix"]
    assert not np.array_equal(a, b)


def test_interpret_value_round_trips_every_array(tiny):
    recs, _, db = tiny
    ex = db.example(recs[1].example_id)
    assert np.array_equal(ex["attention"], recs[1].attention["self"].values.astype(np.float32))
    assert np.array_equal(ex["hidden_states"], recs[1].hidden["joint"].values.astype(np.float32))
    assert np.array_equal(ex["image"], recs[1].image)
    assert len(ex["img_coords"]) == 9 and ex["txt_len"] == TINY["n_words"] + 3


def test_stored_head_summary_equals_the_one_computed_from_attention(tiny):
    recs, reader, db = tiny
    for rec in recs:
        stored = views.head_summary_data(reader, rec.example_id)
        computed = views.head_summary_from_attention(reader, rec.example_id)
        assert stored.grid.shape == (TINY["layers"], TINY["heads"])
        np.testing.assert_allclose(stored.grid, computed.grid, rtol=1e-6, atol=1e-7)
        old = views.head_summary_interpret(db, rec.example_id)  # the emulated VL-InterpreT value agrees too
        np.testing.assert_allclose(stored.grid, old.grid, rtol=1e-6, atol=1e-7)
        assert np.all((stored.grid > 0) & (stored.grid < 1))  # text -> image mass of random attention


def test_aggregate_is_the_mean_of_the_per_example_statistics(tiny):
    recs, reader, _ = tiny
    ids, summary = views.aggregate_summary(reader)
    assert ids == sorted(r.example_id for r in recs)
    assert summary.n_examples == len(recs)
    names, per_example = views.per_example_stats(reader, ids)
    want = per_example[:, names.index(views.STAT)].mean(axis=0)
    np.testing.assert_allclose(summary.grid, want, rtol=1e-6)
    # And not just the first example's map.
    assert not np.allclose(summary.grid, per_example[0, names.index(views.STAT)])


def test_stats_only_example_keeps_the_statistics_of_every_head():
    from analysis.head_stats import compute_head_stats

    small, stats = views.stats_only_example(3, shape=TINY)
    full = views.synthetic_record(3, **TINY)
    assert small.attention["self"].values.shape[:2] == (1, 1)
    assert stats["self"].values.shape == (7, TINY["layers"], TINY["heads"])
    np.testing.assert_array_equal(stats["self"].values, compute_head_stats(full)["self"].values)


def test_projection_fits_every_layer_of_the_example(tiny):
    recs, reader, _ = tiny
    proj = views.projection_data(reader, recs[0].example_id)
    n = recs[0].n_tokens
    assert proj.coords.shape == (TINY["layers"] + 1, n, 2) and np.isfinite(proj.coords).all()
    points = views.projection_points(reader, recs[0].example_id)
    assert points.shape == ((TINY["layers"] + 1) * n, TINY["dim"])
    np.testing.assert_allclose(points.reshape(TINY["layers"] + 1, n, -1).mean(axis=1), 0, atol=1e-5)


def test_goal_note_says_whether_the_goal_was_met():
    assert views._goal_note("one_head", 49.0).endswith(": met")
    assert views._goal_note("one_head", 51.0).endswith("NOT met")
    assert views._goal_note("projection", 2.5).endswith(": met")


def test_run_returns_the_five_figures_with_ratios():
    out = views.run(quick=True, example_shape=TINY, aggregate_shape=TINY, n_examples=2, n_aggregate=12,
                    naive_subset=4, repeats=2, tsne_repeats=1, sklearn_repeats=1)
    assert len(out) == 5
    assert "views: head summary over 12 examples (index vs per-example reads)" in out
    for name, f in out.items():
        assert name.startswith("views: ")
        assert set(f) == {"value", "baseline", "ratio", "unit", "note"}
        assert f["unit"] in ("ms", "s")
        assert f["value"] > 0 and f["baseline"] > 0
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline"])
        assert "goal <=" in f["note"] and f["note"].rstrip().endswith("met")
    agg = out["views: head summary over 12 examples (index vs per-example reads)"]
    assert "timed on 4 examples" in agg["note"] and "x3" in agg["note"]
