"""What the charts look like in a real browser: cells and bars tall enough to read and click, every
axis label drawn, pictures at their own aspect ratio (issue 18, items 7-9, 11).

The charts are drawn as SVG (charts.style.SVG), so each mark is an element of the page: its size is
measured with getBoundingClientRect, after Streamlit has laid the chart into its column. Reuses the
server, browser and data fixtures of tests/test_browser_e2e.py: by default the tiny store; run with
VL_LENS_E2E_STORE=demo (or a demo store's path) to measure the demo models, every run of the store.
"""
from __future__ import annotations

import re

import pytest

from tests.test_browser_e2e import (PAGE_TIMEOUT_S, Tab, app_data, browser, server, shots, tab)  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MIN_PX = 14  # the smallest cell or bar a person reads and clicks
ASPECT_TOL = 0.02

# Every mark of one chart: the SVG holding the first visible element that matches `probe` (hidden tabs'
# charts have no size). Boxes as drawn; axis labels as shown (Vega keeps a label it hides for overlap in
# the DOM at opacity 0: those do not count); legend titles and labels.
MEASURE = """(probe) => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; };
  const hit = [...document.querySelectorAll('[data-testid="stMain"] ' + probe)].find(e => box(e)[2] > 0);
  if (!hit) return null;
  const root = hit.closest('svg.marks');
  root.scrollIntoView({block: 'center'});
  const shown = t => t.getAttribute('opacity') !== '0' && t.textContent.length > 0;
  const marks = q => [...root.querySelectorAll(q)];
  const named = {};  // charts/ names its marks: Vega writes "<name>_marks" as the group's class
  for (const g of marks('g.role-mark')) {
    const name = [...g.classList].find(c => c.endsWith('_marks'));
    if (name && name !== 'marks') named[name.slice(0, -6)] = [...g.children].map(box);
  }
  return {
    marks: named,
    axes: marks('g.role-axis').map(a => [...a.querySelectorAll('g.role-axis-label text')]
                                          .filter(shown).map(t => t.textContent.replace(/\u200b/g, ''))),
    legends: marks('g.role-legend-title text').map(t => t.textContent),
    legend_labels: marks('g.role-legend-label text').map(t => t.textContent),
  };
}"""
HEATMAP, MATRIX, IMAGE = "g.head_cells_marks path", "g.matrix_cells_marks path", "g.picture_marks image"
BARS, POINTS = "g.bars_marks path", "g.points_marks path"


def measure(tab, probe: str) -> dict:
    tab.page.locator(f'[data-testid="stMain"] {probe}').first.wait_for(state="attached", timeout=PAGE_TIMEOUT_S * 1000)
    tab.page.wait_for_timeout(300)
    found = tab.page.evaluate(MEASURE, probe)
    assert found is not None, f"no visible chart with {probe} ({tab.page.url})"
    return found


def runs_of(app_data) -> list[str]:
    from store.zarr_store import VLStore

    return VLStore(app_data.store).runs()


def tokens_of(app_data, run: str) -> tuple[str, dict]:
    from store.zarr_store import VLStore

    reader = VLStore(app_data.store).run(run)
    eid = reader.example_ids()[0]
    return eid, reader.tokens(eid)


def aspect(box) -> float:
    return box[2] / box[3]


def open_tab(tab, name: re.Pattern) -> None:
    t = tab.page.locator('[data-testid="stMain"] [role="tab"]', has_text=name)
    assert t.count(), f"no tab {name.pattern}"
    t.first.click()
    tab.wait_idle()


REPORT: dict[str, dict] = {}  # what was measured, printed at the end of the module (for the README)


@pytest.fixture(scope="module", autouse=True)
def print_report():
    yield
    print(f"\nLAYOUT: {REPORT}")


def open_example(tab, app_data, page: str, run: str) -> dict:
    """Open ``page`` on the run's first example; returns the example's tokens."""
    eid, tok = tokens_of(app_data, run)
    tab.open(f"{page}?run={run}&ex={eid}")
    tab.assert_healthy(f"{page} {run}")
    return tok


def grid(cells: list) -> tuple[int, int, float]:
    """(rows, columns, smallest height) of heatmap cells given as (x, y, width, height) boxes."""
    return len({round(b[1]) for b in cells}), len({round(b[0]) for b in cells}), min(b[3] for b in cells)


def test_head_summary_cells_and_labels(tab, app_data):
    for run in runs_of(app_data):
        open_example(tab, app_data, "heads", run)
        m = measure(tab, HEATMAP)
        n_layers, n_cols, low = grid(m["marks"]["head_cells"])
        assert low >= MIN_PX, (run, low)
        x_labels, y_labels = m["axes"][0], m["axes"][1]
        assert len(y_labels) == n_layers and len(x_labels) == n_cols and x_labels[-1] == "mean", (run, m["axes"])
        REPORT.setdefault(run, {})["head summary cell px"] = round(low, 1)


def test_attention_matrix_overlay_and_bars(tab, app_data):
    for run in runs_of(app_data):
        tok = open_example(tab, app_data, "attention", run)
        m = measure(tab, MATRIX)
        heat = m["marks"]["matrix_cells"]
        n_q, n_k, low = grid(heat)
        assert low >= MIN_PX, (run, low)
        assert sorted(len(a) for a in m["axes"]) == sorted([n_q, n_k]), (run, [len(a) for a in m["axes"]], n_q, n_k)
        # the key strip sits on the matrix's own columns
        strip = sorted(m["marks"]["key_strip"])
        cols = sorted({round(b[0], 1) for b in heat})
        assert [round(b[0], 1) for b in strip] == cols, run
        report = REPORT.setdefault(run, {})
        report["matrix cell px (w x h)"] = f"{min(b[2] for b in heat):.1f} x {min(b[3] for b in heat):.1f}"

        if "text" in tok["modality"]:
            open_tab(tab, re.compile(r"token.*image", re.I))
            m = measure(tab, IMAGE)
            (img,) = m["marks"]["picture"]
            assert aspect(img) == pytest.approx(1.0, rel=ASPECT_TOL), (run, img)  # easy-VQA images are square
            assert any("attention" in t for t in m["legends"]), (run, m["legends"])
            report["overlay aspect"] = round(aspect(img), 3)
            open_tab(tab, re.compile(r"patch.*text", re.I))
            if "no image token" not in tab.main_text():  # a kind with image queries over text keys
                m = measure(tab, BARS)
                hs = [b[3] for b in m["marks"]["bars"]]
                assert hs and min(hs) >= MIN_PX, (run, hs)
                assert len(hs) in [len(a) for a in m["axes"]], (run, m["axes"])  # every bar labelled
                report["patch->text bar px"] = round(min(hs), 1)


def test_hidden_states_legend(tab, app_data):
    open_example(tab, app_data, "projections", runs_of(app_data)[0])
    m = measure(tab, POINTS)
    assert m["legends"] == ["modality"], m["legends"]
    assert set(m["legend_labels"]) == {"text", "image", "special"}


def _upload_picture(path) -> None:
    """200 x 150: a grey field with a black circle, as in issue 18 (a circle drawn as an ellipse)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (200, 150), (128, 128, 128))
    ImageDraw.Draw(im).ellipse((60, 35, 140, 115), fill=(20, 20, 20))
    im.save(path)


def _ask_measure(tab, where: str) -> tuple[float, float]:
    tab.assert_healthy(where)
    heat = measure(tab, IMAGE)
    assert len(heat["marks"]["picture"]) == 1, where
    assert heat["legends"], f"{where}: the attribution map has no legend"
    words = measure(tab, BARS)
    hs = [b[3] for b in words["marks"]["bars"]]
    assert hs and min(hs) >= MIN_PX, (where, hs)
    assert len(hs) in [len(a) for a in words["axes"]], (where, words["axes"])
    assert not any(w.startswith("##") for a in words["axes"] for w in a), words["axes"]  # word pieces joined
    return aspect(heat["marks"]["picture"][0]), min(hs)


def test_ask_keeps_the_pictures_aspect_ratio(tab, tmp_path):
    tab.open("ask")
    tab.page.locator(f'[data-testid="stMain"] {IMAGE}').first.wait_for(state="attached", timeout=PAGE_TIMEOUT_S * 2000)
    tab.wait_idle(timeout_s=PAGE_TIMEOUT_S * 2)
    square, bar_px = _ask_measure(tab, "ask: demo example")
    assert square == pytest.approx(1.0, rel=ASPECT_TOL)
    upload = tmp_path / "wide.png"
    _upload_picture(upload)
    tab.page.locator('[data-testid="stMain"] label', has_text=re.compile(r"^\s*upload\s*$", re.I)).first.click()
    tab.wait_idle()
    tab.page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(upload))
    tab.wait_idle()
    box = tab.widget("stTextInput", re.compile(r"question", re.I)).first.locator("input")
    box.fill("what shape is in the image?")
    box.press("Enter")
    tab.wait_idle(timeout_s=PAGE_TIMEOUT_S * 2)
    wide, _ = _ask_measure(tab, "ask: 200 x 150 upload")
    assert wide == pytest.approx(200 / 150, rel=ASPECT_TOL)
    REPORT.setdefault("ask", {}).update({"demo image aspect": round(square, 3), "200x150 upload aspect": round(wide, 3),
                                         "word bar px": round(bar_px, 1)})
