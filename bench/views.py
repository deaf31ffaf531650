"""View data latency: what a view reads and computes before it can draw, against the naive ways.

Synthetic ViLT-B/32-sized examples (12 layers x 12 heads, 185 tokens: [CLS], 38 words, [SEP],
the image [CLS] and a 12 x 12 patch grid; hidden width 768; random softmax attention and random
hidden states) are written with the real ``RunWriter`` into a temporary store, so every read
goes through the real layout. Each figure times one view's data step (store reads plus the
analysis functions the page calls; no Streamlit, no chart rendering):

1. attention view, one head: the example's tokens and image, the kind's query/key index, ONE
   (layer, head) chunk, and the heatmap / token-row / overlay data. Baselines: the same step
   reading the example's whole attention array and slicing it; and the way VL-InterpreT reads
   (each example one LMDB value: a pickled dict of every array, msgpack-wrapped, lz4-compressed;
   reading any view decompresses and unpickles all of it). Goal <= 50 ms.
2. head summary, one example: the stored head statistics + ``head_summary``. Baseline: reading
   the whole attention and computing the statistics from it. Goal <= 100 ms.
3. head summary over 1,000 examples: the run's listing and the consolidated ``index/`` array.
   Baseline: the listing, then one head-statistics read per example (timed on 100, scaled
   linearly). These examples are small: 12 x 12 heads of statistics over a few tokens, stored
   with a one-head attention slice (``stats_only_example``). Goal <= 1 s.
4. projections of all layers of one example: reading the hidden states and the page's method
   (one joint fit over all layers: PCA to 50 dims, then ``fast_tsne``). Baseline: scikit-learn's
   default ``TSNE`` on the same points. Goal <= 3 s.

Timings are medians of repeats on a store opened once (as the app keeps it open); the files are
in the page cache after the first read, as they are for an app that has drawn a page before.
The VL-InterpreT emulation pickles only this benchmark's own arrays and unpickles only what this
process wrote, through the importer's restricted unpickler.
"""
from __future__ import annotations

import pickle
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.importers.vlinterpret import restricted_loads

from bench.common import figure, median

KIND, STREAM, STAT, RUN = "self", "joint", "text_to_image", "bench"
# [CLS] + 38 words + [SEP] = 40 text-side tokens; [IMG] + 12 x 12 patches = 145 image-side tokens.
VILT_B32 = {"layers": 12, "heads": 12, "n_words": 38, "grid": (12, 12), "dim": 768, "image_px": 384}
# For the 1,000-example aggregate only the (stat, layer, head) statistics matter: statistics of
# 12 x 12 heads over few tokens, stored with a one-head attention slice (see stats_only_example).
AGGREGATE_SHAPE = {"layers": 12, "heads": 12, "n_words": 4, "grid": (3, 3), "dim": 8, "image_px": 8}
GOALS = {"one_head": (50.0, "ms"), "head_summary": (100.0, "ms"), "aggregate": (1000.0, "ms"),
         "projection": (3.0, "s")}


# ---- synthetic examples ------------------------------------------------------------------------
def synthetic_record(i: int, *, layers: int, heads: int, n_words: int, grid: tuple[int, int], dim: int,
                     image_px: int, seed: int = 0):
    """A ViLT-like single-stream Record: [CLS] words [SEP] [IMG] patches (row-major), random values.

    Attention rows are softmax rows of scaled Gaussian logits (peaked like a trained head's, not
    uniform); hidden states drift from layer to layer as a residual stream does.
    """
    from store.schema import AttentionBlock, HiddenBlock, Prediction, Record
    from testkit.records import grid_geometry, word_spans

    rng = np.random.default_rng((seed, i))
    gh, gw = grid
    words = [f"w{k}" for k in range(n_words)]
    tokens = ["[CLS]", *words, "[SEP]", "[IMG]"] + [f"patch {r},{c}" for r in range(gh) for c in range(gw)]
    modality = ["special"] + ["text"] * n_words + ["special", "special"] + ["image"] * (gh * gw)
    n = len(tokens)
    boxes, token_grid = grid_geometry(n, n_words + 3, gh, gw)
    spans = word_spans(n, {1 + k: w for k, w in enumerate(words)}, " ".join(words))
    logits = rng.standard_normal((layers, heads, n, n), dtype=np.float32) * np.float32(3.0)
    logits -= logits.max(axis=-1, keepdims=True)
    att = np.exp(logits, out=logits)
    att /= att.sum(axis=-1, keepdims=True)
    steps = rng.standard_normal((layers + 1, n, dim), dtype=np.float32)
    steps[1:] *= np.float32(0.3)
    hidden = np.cumsum(steps, axis=0)
    probs = np.sort(rng.random(3))[::-1]
    probs = probs / probs.sum()
    idx = np.arange(n)
    return Record(
        example_id=f"ex{i:05d}", question=" ".join(words), tokens=tuple(tokens), modality=tuple(modality),
        token_boxes=boxes, token_grid=token_grid, token_spans=spans,
        image=rng.integers(0, 256, (image_px, image_px, 3), dtype=np.uint8),
        attention={KIND: AttentionBlock(values=att, query_index=idx, key_index=idx)},
        hidden={STREAM: HiddenBlock(values=hidden, token_index=idx)},
        prediction=Prediction(answers=("red", "blue", "green"), probabilities=tuple(float(p) for p in probs)),
        label=("red", "blue")[i % 2], source_key=f"synthetic/{i}", meta={"model_id": "bench-synthetic"},
    )


def stats_only_example(i: int, *, shape: dict, seed: int = 0):
    """(record, head statistics) for the aggregate store: the statistics of a full (layer, head) attention,
    stored with a one-layer, one-head slice of it.

    The aggregate reads only the (stat, layer, head) statistics. Storing every head of a thousand
    examples would only add files (one chunk per head) that the benchmark never reads and that
    take minutes to write and delete on a busy machine.
    """
    import dataclasses

    from analysis.head_stats import compute_head_stats
    from store.schema import AttentionBlock, HiddenBlock

    full = synthetic_record(i, **shape, seed=seed)
    stats = compute_head_stats(full)
    att, hid = full.attention[KIND], full.hidden[STREAM]
    small = dataclasses.replace(
        full, attention={KIND: AttentionBlock(values=att.values[:1, :1], query_index=att.query_index,
                                              key_index=att.key_index)},
        hidden={STREAM: HiddenBlock(values=hid.values[:1], token_index=hid.token_index)})
    return small, stats


def write_store(path: Path, records, *, consolidate: bool = True):
    """Write records (or (record, head statistics) pairs) with the real RunWriter; returns a reader of the run.

    Head statistics are computed from the record's attention unless given.
    """
    from analysis.head_stats import compute_head_stats
    from store.zarr_store import VLStore

    store = VLStore(path, mode="a")
    writer = store.writer(RUN, {"model_id": "bench-synthetic", "adapter": "synthetic", "architecture": "single-stream",
                                "attention_kinds": [KIND], "config": {}})
    for item in records:
        rec, stats = item if isinstance(item, tuple) else (item, compute_head_stats(item))
        writer.write(rec, stats)
    if consolidate:
        writer.consolidate()
    return VLStore(path, mode="r").run(RUN)


# ---- VL-InterpreT's storage, emulated ----------------------------------------------------------
def interpret_value(record) -> bytes:
    """One example as VL-InterpreT stores it: lz4(msgpack(pickle(dict of every array))), float32 as from torch."""
    import msgpack
    from lz4.frame import compress

    from analysis.projections import project_layers

    h = record.hidden[STREAM]
    ex = {
        "ex_id": record.example_id, "image": np.asarray(record.image), "tokens": list(record.tokens),
        "txt_len": record.tokens.index("[IMG]") + 1,  # text and special tokens first, then the patches
        "img_coords": [tuple(g) for g in record.token_grid.tolist() if g[0] >= 0], "accuracy": record.correct,
        "attention": record.attention[KIND].values.astype(np.float32),
        "hidden_states": h.values.astype(np.float32),
        # Its preprocessing stores a t-SNE per layer with the example; its size is what matters here.
        "tsne": list(project_layers(h.values, h.token_index, "pca").coords.astype(np.float32)),
    }
    return compress(msgpack.dumps(pickle.dumps(ex, protocol=pickle.HIGHEST_PROTOCOL), use_bin_type=True))


class InterpretDB:
    """An LMDB database laid out as VL-InterpreT's (key = example id), holding only this benchmark's data."""

    def __init__(self, path: Path, records):
        import lmdb

        values = {r.example_id: interpret_value(r) for r in records}
        env = lmdb.open(str(path), map_size=max(64 << 20, 2 * sum(len(v) for v in values.values())))
        with env.begin(write=True) as txn:
            for k, v in values.items():
                txn.put(k.encode(), v)
        env.close()
        self.value_bytes = median([len(v) for v in values.values()])
        self.env = lmdb.open(str(path), readonly=True, lock=False)
        self.txn = self.env.begin(buffers=True)

    def example(self, eid: str) -> dict:
        """Everything of one example (its whole value decompressed and unpickled, as VL-InterpreT does per view)."""
        import msgpack
        from lz4.frame import decompress

        # The importer's restricted unpickler: as fast as plain unpickling for numpy arrays, and this
        # repository never calls an unrestricted one (a test scans for it).
        return restricted_loads(msgpack.loads(decompress(self.txn.get(eid.encode())), raw=False), where=eid)

    def close(self) -> None:
        self.txn.abort()
        self.env.close()


# ---- the view data steps -------------------------------------------------------------------------
def _attention_view_rest(matrix, qi, ki, tokens, modality, token_boxes) -> dict:
    """What the attention page computes from one head once it has it: heatmap rows, a token's row, overlay."""
    from analysis.attention_views import matrix_rows, overlay_boxes, token_attention

    rows = matrix_rows(matrix, qi, ki, tokens, modality)
    first_text = next(t for t, m in enumerate(modality) if m == "text")
    att = token_attention(matrix, qi, ki, first_text, "attends to")
    return {"matrix": matrix, "rows": rows, "overlay": overlay_boxes(att, token_boxes, modality)}


def attention_view_data(reader, eid: str, layer: int, head: int) -> dict:
    """The attention page's first draw of one head: tokens, image, index, ONE chunk, view data."""
    tok = reader.tokens(eid)
    reader.image(eid)
    qi, ki = reader.attention_index(eid, KIND)
    matrix = reader.attention(eid, KIND, layer, head)
    return _attention_view_rest(matrix, qi, ki, tok["tokens"], tok["modality"], tok["token_boxes"])


def attention_view_data_whole(reader, eid: str, layer: int, head: int) -> dict:
    """The same step reading the example's whole attention array, then slicing one head."""
    tok = reader.tokens(eid)
    reader.image(eid)
    arr = reader.attention_array(eid, KIND)
    whole = arr[:].astype(np.float32)
    qi, ki = np.asarray(arr.attrs["query_index"], np.int32), np.asarray(arr.attrs["key_index"], np.int32)
    return _attention_view_rest(whole[layer, head], qi, ki, tok["tokens"], tok["modality"], tok["token_boxes"])


def _interpret_coords(ex: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(modality, token boxes, token grid) from VL-InterpreT's txt_len and img_coords (all in its value)."""
    n, txt = len(ex["tokens"]), ex["txt_len"]
    coords = np.asarray(ex["img_coords"], np.int32).reshape(-1, 2)
    grid = np.full((n, 2), -1, np.int32)
    grid[txt:] = coords
    gh, gw = (coords.max(axis=0) + 1) if len(coords) else (1, 1)
    boxes = np.full((n, 4), np.nan, np.float32)
    boxes[txt:] = np.stack([coords[:, 1] / gw, coords[:, 0] / gh, (coords[:, 1] + 1) / gw,
                            (coords[:, 0] + 1) / gh], axis=1)
    modality = ["special" if t in ("[CLS]", "[SEP]", "[IMG]") else "text" for t in ex["tokens"][:txt]]
    return modality + ["image"] * (n - txt), boxes, grid


def attention_view_data_interpret(db: InterpretDB, eid: str, layer: int, head: int) -> dict:
    """The same step the VL-InterpreT way: unpickle the whole example, then slice one head."""
    ex = db.example(eid)
    modality, boxes, _ = _interpret_coords(ex)
    qi = ki = np.arange(len(ex["tokens"]), dtype=np.int32)
    return _attention_view_rest(ex["attention"][layer, head], qi, ki, ex["tokens"], modality, boxes)


def head_summary_data(reader, eid: str, stat: str = STAT):
    """The head summary page, one example: the stored statistics of the example, then the summary."""
    from analysis.attention_views import head_summary, head_summary_rows

    names, values = reader.head_stats(eid)[KIND]
    summary = head_summary(values, names, stat)
    head_summary_rows(summary)
    return summary


def _stats_from_attention(values, modality, token_grid, qi, ki) -> tuple[list[str], np.ndarray]:
    from analysis.head_stats import HEAD_STATS, StatInput

    mod = np.asarray(modality)
    inp = StatInput(values=np.asarray(values, np.float32), query_modality=mod[qi], key_modality=mod[ki],
                    query_token=qi, key_token=ki, query_grid=token_grid[qi], key_grid=token_grid[ki])
    return list(HEAD_STATS), np.stack([np.asarray(fn(inp), np.float32) for fn in HEAD_STATS.values()])


def head_summary_from_attention(reader, eid: str, stat: str = STAT):
    """The naive head summary: read the example's whole attention and compute every statistic from it."""
    from analysis.attention_views import head_summary, head_summary_rows

    tok = reader.tokens(eid)
    arr = reader.attention_array(eid, KIND)
    qi, ki = np.asarray(arr.attrs["query_index"], np.int32), np.asarray(arr.attrs["key_index"], np.int32)
    names, values = _stats_from_attention(arr[:], tok["modality"], tok["token_grid"], qi, ki)
    summary = head_summary(values, names, stat)
    head_summary_rows(summary)
    return summary


def head_summary_interpret(db: InterpretDB, eid: str, stat: str = STAT):
    """VL-InterpreT's head summary: unpickle the whole example, compute the statistics from its attention."""
    from analysis.attention_views import head_summary

    ex = db.example(eid)
    modality, _, grid = _interpret_coords(ex)
    idx = np.arange(len(ex["tokens"]), dtype=np.int32)
    names, values = _stats_from_attention(ex["attention"], modality, grid, idx, idx)
    return head_summary(values, names, stat)


def aggregate_summary(reader, stat: str = STAT):
    """The head summary page over a set: the example list, then one read of the consolidated index."""
    from analysis.attention_views import head_summary, head_summary_rows, select_examples

    ids = select_examples([s.as_dict() for s in reader.summaries()])
    got, names, values = reader.head_stats_all(KIND, ids)
    summary = head_summary(values, names, stat)
    head_summary_rows(summary)
    return got, summary


def example_ids(reader) -> list[str]:
    from analysis.attention_views import select_examples

    return select_examples([s.as_dict() for s in reader.summaries()])


def per_example_stats(reader, ids) -> tuple[list[str], np.ndarray]:
    """The naive loop: one head-statistics read per example."""
    names, blocks = None, []
    for eid in ids:
        names, vals = reader.head_stats(eid)[KIND]
        blocks.append(vals)
    return names, np.stack(blocks)


def projection_data(reader, eid: str):
    """The projections page: read the hidden states, one t-SNE fit over all layers (the page's method)."""
    from analysis.projections import project_layers

    values, index = reader.hidden(eid, STREAM)
    return project_layers(values, index, "tsne", center=True)


def projection_points(reader, eid: str) -> np.ndarray:
    """The (layer * token, dim) points the page's joint fit sees (each layer centered), as float64."""
    values, _ = reader.hidden(eid, STREAM)
    h = values - values.mean(axis=1, keepdims=True)
    return np.nan_to_num(h.reshape(-1, h.shape[-1]).astype(np.float64))


def projection_sklearn(reader, eid: str) -> np.ndarray:
    """The same points through scikit-learn's TSNE with its defaults (Barnes-Hut, perplexity 30, 1,000 iterations)."""
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, random_state=0).fit_transform(projection_points(reader, eid))


# ---- measurement ---------------------------------------------------------------------------------
def _time(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _goal_note(key: str, value: float) -> str:
    goal, unit = GOALS[key]
    return f"goal <= {goal:g} {unit}: {'met' if value <= goal else 'NOT met'}"


def _shape_desc(shape: dict, n_tokens: int) -> str:
    return (f"{shape['layers']} layers x {shape['heads']} heads, {n_tokens} tokens, hidden {shape['dim']}, "
            f"image {shape['image_px']} px")


def measure_example_views(tmp: Path, *, shape: dict, n_examples: int, repeats: int, tsne_repeats: int,
                          sklearn_repeats: int, seed: int = 0) -> dict:
    """Medians (seconds) of the one-example view steps and their baselines on a fresh store."""
    recs = [synthetic_record(i, **shape, seed=seed) for i in range(n_examples)]
    reader = write_store(tmp / "views.zarr", recs)
    db = InterpretDB(tmp / "interpret.lmdb", recs)
    rng = random.Random(seed)
    ids = [r.example_id for r in recs]
    n_tokens = recs[0].n_tokens
    raw_attention = recs[0].attention[KIND].values.size * 4
    del recs
    picks = [(rng.choice(ids), rng.randrange(shape["layers"]), rng.randrange(shape["heads"]))
             for _ in range(repeats)]
    # One untimed pass of each step: imports and first-touch costs are not what a view pays per draw.
    attention_view_data(reader, *picks[0])
    attention_view_data_whole(reader, *picks[0])
    attention_view_data_interpret(db, *picks[0])
    head_summary_data(reader, ids[0])
    head_summary_from_attention(reader, ids[0])
    head_summary_interpret(db, ids[0])
    t = {k: [] for k in ("one_head", "whole", "interpret", "chunk_only", "whole_only", "hs", "hs_naive",
                         "hs_interpret")}
    for eid, layer, head in picks:  # alternate the ways on the same picks (fair on a busy machine)
        t["one_head"].append(_time(attention_view_data, reader, eid, layer, head))
        t["whole"].append(_time(attention_view_data_whole, reader, eid, layer, head))
        t["interpret"].append(_time(attention_view_data_interpret, db, eid, layer, head))
        t["chunk_only"].append(_time(reader.attention, eid, KIND, layer, head))
        t["whole_only"].append(_time(lambda: reader.attention_array(eid, KIND)[:]))
        t["hs"].append(_time(head_summary_data, reader, eid))
        t["hs_naive"].append(_time(head_summary_from_attention, reader, eid))
        t["hs_interpret"].append(_time(head_summary_interpret, db, eid))
    projection_data(reader, ids[0])  # first use: numpy warm-up of the t-SNE loop
    tsne, sk = [], []
    for k in range(max(tsne_repeats, sklearn_repeats)):
        eid = ids[k % len(ids)]
        if k < tsne_repeats:
            tsne.append(_time(projection_data, reader, eid))
        if k < sklearn_repeats:
            sk.append(_time(lambda: (reader.hidden(eid, STREAM), projection_sklearn(reader, eid))))
    out = {k: median(v) for k, v in t.items()}
    out.update(tsne=median(tsne), sklearn=median(sk), n_tokens=n_tokens, repeats=repeats,
               tsne_repeats=tsne_repeats, sklearn_repeats=sklearn_repeats, n_examples=n_examples,
               interpret_bytes=db.value_bytes, raw_attention_bytes=raw_attention)
    db.close()
    return out


def measure_aggregate(tmp: Path, *, shape: dict, n_examples: int, naive_subset: int, repeats: int,
                      seed: int = 0) -> dict:
    """Medians (seconds): the set head summary over n_examples via the index, and the per-example loop."""
    from analysis.attention_views import head_summary, head_summary_rows

    reader = write_store(tmp / "aggregate.zarr",
                         (stats_only_example(i, shape=shape, seed=seed) for i in range(n_examples)))
    aggregate_summary(reader)  # untimed first pass
    fast, listing, loop, rest = [], [], [], []
    subset = min(naive_subset, n_examples)
    for _ in range(repeats):
        fast.append(_time(aggregate_summary, reader))
        t0 = time.perf_counter()
        ids = example_ids(reader)
        t1 = time.perf_counter()
        names, values = per_example_stats(reader, ids[:subset])
        t2 = time.perf_counter()
        head_summary_rows(head_summary(values, names, STAT))
        t3 = time.perf_counter()
        listing.append(t1 - t0)
        loop.append(t2 - t1)
        rest.append(t3 - t2)
    scale = n_examples / subset
    return {"fast": median(fast), "naive": median(listing) + median(loop) * scale + median(rest),
            "listing": median(listing), "loop": median(loop), "subset": subset, "n_examples": n_examples,
            "scale": scale, "repeats": repeats}


def run(quick: bool = False, *, example_shape: dict | None = None, aggregate_shape: dict | None = None,
        n_examples: int | None = None, n_aggregate: int | None = None, naive_subset: int = 100,
        repeats: int | None = None, tsne_repeats: int | None = None, sklearn_repeats: int | None = None) -> dict:
    """The four view latency figures. Keyword arguments shrink the benchmark (the test uses them)."""
    example_shape = example_shape or VILT_B32
    aggregate_shape = aggregate_shape or AGGREGATE_SHAPE
    n_examples = n_examples or 3
    n_aggregate = n_aggregate or (100 if quick else 1000)
    repeats = repeats or (7 if quick else 21)
    tsne_repeats = tsne_repeats or (2 if quick else 5)
    sklearn_repeats = sklearn_repeats or (1 if quick else 3)
    with tempfile.TemporaryDirectory(prefix="vl-lens-views-") as tmp:
        ex = measure_example_views(Path(tmp), shape=example_shape, n_examples=n_examples, repeats=repeats,
                                   tsne_repeats=tsne_repeats, sklearn_repeats=sklearn_repeats)
        agg = measure_aggregate(Path(tmp), shape=aggregate_shape, n_examples=n_aggregate,
                                naive_subset=naive_subset, repeats=max(3, repeats // 4))
    desc = _shape_desc(example_shape, ex["n_tokens"])
    where = (f"synthetic {desc}, {ex['n_examples']} examples in a Zarr store written by RunWriter; "
             f"median of {ex['repeats']} random (example, layer, head)")
    one_head, n_agg = ex["one_head"] * 1e3, agg["n_examples"]
    out = {
        "views: attention view, one head vs whole attention": figure(
            one_head, ex["whole"] * 1e3, "ms",
            f"{where}; tokens + image + query/key index + one (layer, head) chunk + heatmap/row/overlay data; "
            f"baseline = same step reading the whole (layer, head, query, key) array and slicing; chunk read alone "
            f"{ex['chunk_only'] * 1e3:.1f} ms vs whole array {ex['whole_only'] * 1e3:.1f} ms; "
            + _goal_note("one_head", one_head)),
        "views: attention view, one head vs VL-InterpreT-style read": figure(
            one_head, ex["interpret"] * 1e3, "ms",
            f"{where}; baseline = VL-InterpreT's storage emulated: one LMDB value per example, "
            f"lz4(msgpack(pickle(dict of every array, float32))), {ex['interpret_bytes'] / 1e6:.1f} MB each, "
            f"decompressed and unpickled whole, then sliced; same view data after; "
            + _goal_note("one_head", one_head)),
        "views: head summary, one example (stored stats vs from attention)": figure(
            ex["hs"] * 1e3, ex["hs_naive"] * 1e3, "ms",
            f"{where}; stored (stat, layer, head) array + head_summary; baseline = read the whole attention and "
            f"compute the 7 statistics; VL-InterpreT way (unpickle the example + compute) "
            f"{ex['hs_interpret'] * 1e3:.0f} ms; " + _goal_note("head_summary", ex["hs"] * 1e3)),
        f"views: head summary over {n_agg:,} examples (index vs per-example reads)": figure(
            agg["fast"] * 1e3, agg["naive"] * 1e3, "ms",
            f"{n_agg} synthetic examples of {aggregate_shape['layers']} layers x {aggregate_shape['heads']} heads "
            f"statistics (few tokens; each stored with a one-head attention slice: only the statistics are read), "
            f"consolidated index; example list + one index read "
            f"+ head_summary, median of {agg['repeats']}; baseline = example list + one head-stats read per example, "
            f"timed on {agg['subset']} examples ({agg['loop'] * 1e3:.0f} ms) and scaled linearly x{agg['scale']:g}; "
            + _goal_note("aggregate", agg["fast"] * 1e3)),
        "views: projections, all layers, fast t-SNE vs scikit-learn TSNE": figure(
            ex["tsne"], ex["sklearn"], "s",
            f"{desc}: {example_shape['layers'] + 1} layers x {ex['n_tokens']} tokens = "
            f"{(example_shape['layers'] + 1) * ex['n_tokens']:,} points, one joint fit (read hidden + layer centering "
            f"+ PCA-50 + fast_tsne, median of {ex['tsne_repeats']}); baseline = read hidden + scikit-learn TSNE "
            f"defaults on the same centered points (median of {ex['sklearn_repeats']}); "
            + _goal_note("projection", ex["tsne"])),
    }
    return out
