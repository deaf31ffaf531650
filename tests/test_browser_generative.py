"""A generative run in a real browser (issue 20: every view works for generated answers).

The shipped demo LLaVA (a tiny random one when its weights are absent) records two easy-VQA examples;
`streamlit run` serves that store and chromium plays what a person does: the Examples page shows the generated answer; on the Attention page the
token overlay opens on the first answer token, explains it from the row that generated it, and
picking another answer token redraws the overlay for that token, names it, and keeps it in the link;
on Compare, a tiled model's word overlay draws its tiles, then only its global image when that is picked.
The helpers (server, tab, waiting) are the end-to-end test's own (tests/test_browser_e2e.py).
"""
from __future__ import annotations

import re

import pytest

from tests.test_browser_e2e import AppData, Tab, require_browser, run_app, squash
from tests.test_browser_e2e import browser, shots  # noqa: F401 - fixtures the tests below use

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def gen_records(tmp_path_factory):
    """(store path, [Record]) of the demo LLaVA on the first two easy-VQA test examples."""
    from adapters.registry import MODELS, load_model
    from core.paths import REPO_ROOT
    from pipeline.record import limited, record_examples
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore
    from testkit.tiny_llava import make_tiny_adapter

    work = tmp_path_factory.mktemp("e2e_generative")
    if (REPO_ROOT / MODELS["llava-easyvqa"][1] / "config.json").is_file():
        adapter = load_model("llava-easyvqa")  # answers "<word> </s>": two answer tokens
    else:
        adapter, _ = make_tiny_adapter(work / "model")
        adapter.max_new_tokens = 4
    path = work / "gen.zarr"
    record_examples(adapter, limited(iter(EasyVQA("test")), 2), VLStore(path, mode="a"), "gen", total=2,
                    progress=False)
    # a tiled model (tiny random Idefics3: 2 x 2 tiles and a global image) on the same examples, for Compare
    from testkit.tiny_idefics3 import make_tiny_adapter as make_tiny_idefics3

    tiled, _ = make_tiny_idefics3(work / "idefics3")
    record_examples(tiled, limited(iter(EasyVQA("test")), 2), VLStore(path, mode="a"), "tiled", total=2,
                    progress=False)
    reader = VLStore(path).run("gen")
    return path, [reader.record(eid) for eid in reader.example_ids()]


@pytest.fixture(scope="module")
def server(gen_records, tmp_path_factory):
    require_browser()
    app = AppData(store=gen_records[0], ask_models=None, answers=(), label="tiny generative")
    with run_app(app, tmp_path_factory.mktemp("e2e_gen_server")) as srv:
        yield srv


@pytest.fixture
def tab(browser, server, shots):  # noqa: F811 - the e2e module's browser and shots
    t = Tab(browser, server, shots)
    yield t
    t.close()


def test_examples_show_the_generated_answer(tab, gen_records):
    _, records = gen_records
    tab.open("?run=gen")  # Examples is the default page: served at the root
    tab.assert_healthy("examples (generative)")
    text = squash(tab.main_text())
    for rec in records:
        assert squash(rec.prediction.top) in text, f"the generated answer {rec.prediction.top!r} is not shown"


def test_attention_overlay_follows_the_picked_answer_token(tab, gen_records):
    _, records = gen_records
    rec = records[0]
    answer = [int(i) for i in rec.answer_indices()]
    assert len(answer) >= 2, "the model should write at least two answer tokens (a word and </s>)"
    tab.open(f"attention?run=gen&ex={rec.example_id}")
    tab.assert_healthy("attention (generative)")
    tab.page.locator('[data-testid="stMain"] [role="tab"]', has_text=re.compile(r"token.*image", re.I)).first.click()
    tab.wait_idle()
    view = '[data-testid="stMain"] [role="tabpanel"]:visible [data-testid="stVegaLiteChart"]'
    tab.page.locator(view).first.wait_for()
    token_box = tab.widget("stSelectbox", re.compile(r"token", re.I)).locator("visible=true").first
    combo = token_box.locator('input[role="combobox"]').first
    first = answer[0]
    # it opens on the first answer token, explained from the row of the step that generated it
    assert squash(combo.input_value()) == f"{rec.tokens[first]} (#{first}) · answer"
    caption = squash(tab.main_text())
    assert f"generating “{rec.tokens[first]}” (row of #{first - 1}" in caption
    before = tab.visual(view)
    tab.screenshot("attention_generative")  # the README's: the demo LLaVA's first answer token
    second = answer[1]
    picked = tab.select(token_box, f"{rec.tokens[second]} (#{second}) · answer")
    assert picked is not None, "the second answer token is not offered"
    tab.assert_healthy("attention (generative): second answer token")
    tab.page.wait_for_function(
        f"() => new URL(location.href).searchParams.get('token') === '{second}'", timeout=30_000)
    assert f"generating “{rec.tokens[second]}” (row of #{second - 1}" in squash(tab.main_text())
    assert tab.visual(view) != before, "picking another answer token did not redraw the overlay"


def test_compare_draws_one_part_of_a_tiled_image_as_picked(tab, gen_records):
    from store.zarr_store import VLStore

    path, records = gen_records
    eid = records[0].example_id
    tiled = VLStore(path).run("tiled").record(eid)
    tab.open(f"compare?run=tiled&run2=gen&ex={eid}")
    tab.assert_healthy("compare (tiled vs generative)")
    radio = tab.page.locator('[data-testid="stMain"] [data-testid="stRadio"]').filter(
        has=tab.page.locator('[data-testid="stWidgetLabel"]', has_text="Image tokens of the tiled model"))
    radio.first.wait_for()
    # A's column (the tiled model): its caption names the run
    column = tab.page.locator('[data-testid="stMain"] [data-testid="stColumn"]').filter(has_text="A: tiled ·")
    overlay_chart = column.last.locator('[data-testid="stVegaLiteChart"]').first
    overlay_chart.wait_for()
    before = overlay_chart.screenshot()
    assert "to the tiles drawn" in squash(tab.main_text())  # tiles first: the share of the part drawn
    radio.first.locator("label", has_text="global image").first.click()
    tab.wait_idle()
    tab.assert_healthy("compare: global image")
    text = squash(tab.main_text())
    assert "to the global image drawn" in text and "to the tiles drawn" not in text
    assert overlay_chart.screenshot() != before, "picking the global image did not redraw the tiled model's overlay"
    assert any(t.startswith("global patch") for t in tiled.tokens)  # the part picked exists in the record
