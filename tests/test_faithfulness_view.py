"""AppTest of the Faithfulness page: it shows a recorded evaluation's numbers and curves, or says there is none."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "views" / "faithfulness.py")
CURVES = ("image_positive", "image_negative", "text_positive", "text_negative")


def hand_made_evaluation() -> dict:
    """Two methods over 3 fractions; every area is chosen so the table's numbers are known by hand."""
    def curve(acc, prob):
        return {"accuracy": acc, "probability": prob, "accuracy_auc": sum(acc) / len(acc),
                "probability_auc": sum(prob) / len(prob)}

    return {
        "model": "hand-model", "dataset": "easyvqa", "split": "test", "n_examples": 7, "accuracy": 0.875,
        "fractions": [0.0, 0.1, 0.2], "probability_rule": "softmax",
        "summary": {
            "relevance": {c: curve([1.0, 0.5, 0.25], [0.9, 0.5, 0.2]) for c in CURVES},
            "random": {c: curve([1.0, 0.75, 0.5], [0.9, 0.7, 0.6]) for c in CURVES},
        },
        "localization": {"relevance": {"mask_share": 0.42, "chance": 0.1, "ratio": 4.2, "n": 7},
                         "random": {"mask_share": 0.1, "chance": 0.1, "ratio": 1.0, "n": 7}},
        "command": "python cli.py faithfulness --model hand-model --dataset easyvqa --limit 7",
    }


@pytest.fixture
def app(monkeypatch):
    import streamlit as st

    st.cache_data.clear()
    return AppTest.from_file(PAGE, default_timeout=60)


def test_shows_a_recorded_evaluation(app, tmp_path, monkeypatch):
    (tmp_path / "hand").mkdir()
    ev = hand_made_evaluation()
    # the "area" numbers are what the file says, x 100: the page must not recompute them
    ev["summary"]["relevance"]["image_positive"]["accuracy_auc"] = 0.321
    (tmp_path / "hand" / "faithfulness.json").write_text(json.dumps(ev))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "faithfulness.json").write_text("{not json")
    (tmp_path / "another").mkdir()  # listed first; the link below opens "hand"
    (tmp_path / "another" / "faithfulness.json").write_text(json.dumps(dict(hand_made_evaluation(), model="other")))
    monkeypatch.setenv("VL_LENS_FAITHFULNESS_DIRS", str(tmp_path))
    app.query_params["evaluation"] = "hand"
    app.run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Faithfulness"
    table = app.dataframe[0].value.set_index("method")
    assert table.loc["relevance", "image + (lower better)"] == pytest.approx(32.1)
    assert table.loc["random", "image + (lower better)"] == pytest.approx(75.0)
    assert table.loc["relevance", "share in shape mask"] == pytest.approx(0.42)
    assert table.loc["relevance", "× chance"] == pytest.approx(4.2)
    assert any("hand-model" in m.value and "87.5%" in m.value for m in app.markdown)
    assert len(app.get("vega_lite_chart")) == 1
    assert any("--model hand-model" in c.value for c in app.caption)
    assert app.query_params["evaluation"] == "hand"
    app.radio(key="faith_metric").set_value("probability").run()
    table = app.dataframe[0].value.set_index("method")
    assert table.loc["random", "image + (lower better)"] == pytest.approx(100 * (0.9 + 0.7 + 0.6) / 3, abs=1e-3)
    assert app.query_params["metric"] == "probability"


def test_says_when_there_is_no_evaluation(app, tmp_path, monkeypatch):
    monkeypatch.setenv("VL_LENS_FAITHFULNESS_DIRS", str(tmp_path))
    app.run()
    assert not app.exception, app.exception
    assert any("No recorded evaluation" in i.value for i in app.info)
    assert not app.dataframe


def test_shipped_evaluations_open(monkeypatch):
    """docs/faithfulness/ ships one evaluation per demo model; each opens (a fresh session per link) with
    all five methods and random."""
    monkeypatch.delenv("VL_LENS_FAITHFULNESS_DIRS", raising=False)
    for model in ("vilt-easyvqa", "lxmert-easyvqa", "kdvlp-easyvqa", "llava-easyvqa"):
        app = AppTest.from_file(PAGE, default_timeout=60)
        app.query_params["evaluation"] = model
        app.run()
        assert not app.exception, app.exception
        assert any(f"**{model}**" in m.value for m in app.markdown)
        table = app.dataframe[0].value
        assert list(table["method"]) == ["ig", "rollout", "relevance", "occlusion", "attention", "random"]
        assert table["image + (lower better)"].between(0, 100).all()
