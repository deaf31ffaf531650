"""Hand-built Records for the view tests: attention patterns whose right answer is known."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from store.schema import AttentionBlock, HiddenBlock, Prediction, Record
from testkit.records import grid_geometry, word_spans


def softmax_rows(rng, *shape) -> np.ndarray:
    x = rng.normal(size=shape)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


TEXT = ["[CLS]", "what", "color", "is", "it", "[SEP]"]
TEXT_MODALITY = ["special", "text", "text", "text", "text", "special"]
TEXT_WORDS = {i: t for i, t in enumerate(TEXT) if TEXT_MODALITY[i] == "text"}


def single_stream_record(*, layers=3, heads=4, grid=(3, 3), hot=(1, 2), focus=(2, (1, 2)), dims=16,
                         seed=0, question="what color is it", label="red", answer="red") -> Record:
    """ViLT-like joint sequence: 6 text/special tokens, an image [CLS], then a row-major patch grid.

    hot=(layer, head): in that head every text query puts all its attention on image tokens, so
    text_to_image is 1 there and clearly below 1 everywhere else.
    focus=(layer, (row, col)): at that layer, in every head, the text token "color" puts all its
    attention on the patch at (row, col).
    """
    rng = np.random.default_rng(seed)
    rows, cols = grid
    tokens = TEXT + ["[IMG]"] + [f"patch {r},{c}" for r in range(rows) for c in range(cols)]
    modality = TEXT_MODALITY + ["special"] + ["image"] * (rows * cols)
    n = len(tokens)
    n_text = len(TEXT)
    boxes, grid_idx = grid_geometry(n, n_text + 1, rows, cols)
    spans = word_spans(n, TEXT_WORDS, question)
    att = softmax_rows(rng, layers, heads, n, n)
    text_q = [i for i, m in enumerate(modality) if m == "text"]
    image_k = [i for i, m in enumerate(modality) if m == "image"]
    # Random rows put about image_share of their mass on image keys; keep other heads well below 1.
    hl, hh = hot
    for q in text_q:
        row = np.zeros(n)
        row[image_k] = softmax_rows(rng, len(image_k))
        att[hl, hh, q] = row
    fl, (fr, fc) = focus
    patch = n_text + 1 + fr * cols + fc
    att[fl, :, TEXT.index("color")] = 0.0
    att[fl, :, TEXT.index("color"), patch] = 1.0
    hidden = rng.normal(size=(layers + 1, n, dims)).astype(np.float32)
    image = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    idx = np.arange(n)
    return Record(
        example_id=f"single{seed}", question=question, tokens=tuple(tokens), modality=tuple(modality),
        token_boxes=boxes, token_grid=grid_idx, token_spans=spans, image=image,
        attention={"self": AttentionBlock(values=att, query_index=idx, key_index=idx)},
        hidden={"joint": HiddenBlock(values=hidden, token_index=idx)},
        prediction=Prediction(answers=(answer, "blue"), probabilities=(0.7, 0.2)), label=label,
        meta={"model_id": "hand-built"},
    )


def dual_stream_record(*, seed=0, question="what color is it") -> Record:
    """LXMERT-like: text and 5 detector regions (no grid), six kinds with different query/key sets.

    Kinds differ in depth too (lang_self 3 layers, vision_self 2, cross 2), and the two hidden
    streams differ in depth (lang 4, vision 3), as in LXMERT.
    """
    rng = np.random.default_rng(seed)
    tokens = TEXT + [f"region {k}" for k in range(5)]
    modality = TEXT_MODALITY + ["image"] * 5
    n = len(tokens)
    text = np.arange(len(TEXT))
    regions = np.arange(len(TEXT), n)
    boxes = np.full((n, 4), np.nan, np.float32)
    for k, t in enumerate(regions):
        x0, y0 = rng.uniform(0, 0.5, 2)
        boxes[t] = (x0, y0, x0 + rng.uniform(0.1, 0.5), y0 + rng.uniform(0.1, 0.5))
    spans = word_spans(n, TEXT_WORDS, question)

    def block(q, k, layers, heads=2):
        return AttentionBlock(values=softmax_rows(rng, layers, heads, len(q), len(k)), query_index=q, key_index=k)

    attention = {
        "lang_self": block(text, text, 3), "vision_self": block(regions, regions, 2),
        "cross_l2v": block(text, regions, 2), "cross_v2l": block(regions, text, 2),
        "cross_lang_self": block(text, text, 2), "cross_vision_self": block(regions, regions, 2),
    }
    hidden = {"lang": HiddenBlock(values=rng.normal(size=(4, len(text), 8)), token_index=text),
              "vision": HiddenBlock(values=rng.normal(size=(3, len(regions), 8)), token_index=regions)}
    return Record(
        example_id=f"dual{seed}", question=question, tokens=tuple(tokens), modality=tuple(modality),
        token_boxes=boxes, token_grid=np.full((n, 2), -1, np.int32), token_spans=spans,
        image=(rng.random((40, 60, 3)) * 255).astype(np.uint8), attention=attention, hidden=hidden,
        prediction=Prediction(answers=("red", "blue"), probabilities=(0.6, 0.3)), label="blue",
        meta={"model_id": "hand-built-dual"},
    )


def write_store(path: Path, records, run: str = "hand", consolidate: bool = True, provenance: dict | None = None) -> Path:
    from analysis.head_stats import compute_head_stats
    from store.zarr_store import VLStore

    store = VLStore(path, mode="a")
    writer = store.writer(run, {"model_id": f"hand-built-{run}", "adapter": "hand", "architecture": "test",
                                "config": {"layers": "?", "heads": "?"}, **(provenance or {})})
    for rec in records:
        writer.write(rec, compute_head_stats(rec))
    if consolidate:
        writer.consolidate()
    return path


# ---- AppTest helpers ---------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def open_page(monkeypatch, store_path: Path, page: str, **params):
    """An AppTest of ``page`` on the store at ``store_path`` with URL query parameters."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("VL_LENS_STORE", str(store_path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180)
    # AppTest knows st.navigation's pages (keyed by url_path, not file name) only after a first run.
    at.run()
    at.query_params.clear()
    for k, v in params.items():
        at.query_params[k] = str(v)
    at.switch_page(page)
    return at


def chart_datasets(at) -> list[dict]:
    """For each Altair chart on the page: {"spec": dict, "data": [DataFrame per inline dataset]}."""
    import json

    import pyarrow as pa

    out = []
    for el in at.get("vega_lite_chart"):
        p = el.proto
        frames = [pa.ipc.open_stream(ds.data.data).read_all().to_pandas() for ds in p.datasets]
        out.append({"spec": json.loads(p.spec), "data": frames})
    return out


def find_frame(at, *columns: str):
    """The first chart dataset holding all ``columns``."""
    for chart in chart_datasets(at):
        for f in chart["data"]:
            if all(c in f.columns for c in columns):
                return f
    raise AssertionError(f"no chart dataset with columns {columns}")
