"""`cli.py faithfulness`: the files it writes agree with each other and with the protocol; bad input is one line."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from cli import main


@pytest.fixture(scope="module")
def evaluation_dir(tiny_vilt_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("faith") / "tiny"
    rc = main(["faithfulness", "--model", f"vilt:{tiny_vilt_dir}", "--dataset", "easyvqa", "--limit", "2",
               "--every", "50", "--methods", "rollout", "occlusion", "--out", str(out)])
    assert rc == 0
    return out


def test_writes_json_csv_and_chart(evaluation_dir):
    from analysis.perturbation import CURVES, FRACTIONS, curve_area

    names = {p.name for p in evaluation_dir.iterdir()}
    assert names == {"faithfulness.json", "faithfulness.csv", "faithfulness.png", "faithfulness.svg"}
    assert (evaluation_dir / "faithfulness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (evaluation_dir / "faithfulness.json").read_text()
    assert "NaN" not in text  # strict JSON
    ev = json.loads(text)
    assert ev["methods"] == ["rollout", "occlusion", "random"] and ev["n_examples"] == 2
    assert ev["fractions"] == list(FRACTIONS)
    assert "--every 50" in ev["command"] and ev["probability_rule"]
    table = pd.read_csv(evaluation_dir / "faithfulness.csv").set_index("method")
    assert list(table.index) == ev["methods"]
    for m in ev["methods"]:
        for c in CURVES:
            curve = ev["summary"][m][c]
            assert len(curve["accuracy"]) == len(FRACTIONS) and 0 <= min(curve["probability"])
            assert table.loc[m, f"{c}_accuracy_auc"] == pytest.approx(100 * curve_area(FRACTIONS, curve["accuracy"]),
                                                                       abs=1e-3)
            # fraction 0 is the unperturbed input: the same for every order and method
            assert curve["probability"][0] == pytest.approx(ev["summary"]["random"]["image_positive"]["probability"][0])
        loc = ev["localization"][m]
        assert 0 < loc["chance"] < 1 and loc["ratio"] == pytest.approx(loc["mask_share"] / loc["chance"], rel=1e-3)


@pytest.mark.parametrize("args, message", [
    (["--limit", "0"], "--limit must be at least 1"),
    (["--limit", "2", "--methods", "gradcam"], "unknown attribution method"),
    (["--limit", "2", "--every", "0"], "--every must be at least 1"),
])
def test_bad_input_is_one_clear_line(args, message, tiny_vilt_dir, tmp_path, capsys):
    rc = main(["faithfulness", "--model", f"vilt:{tiny_vilt_dir}", "--dataset", "easyvqa", *args,
               "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
