"""Faithfulness: how faithful each attribution method is on a model, from a recorded evaluation.

Reads the JSON that `python cli.py faithfulness ...` writes (commands/faithfulness.py); nothing is
recomputed on page load. Evaluations (faithfulness.json files) are looked for under docs/faithfulness/ (the
shipped ones, one folder per model), or instead under the folders named in VL_LENS_FAITHFULNESS_DIRS
(separated by the path separator) when it is set.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis.perturbation import table_rows
from charts.faithfulness import curves_chart, curves_frame
from core.paths import REPO_ROOT
from ui.charts import export_buttons
from ui.url import url_choice

SHIPPED = REPO_ROOT / "docs" / "faithfulness"
CURVE_COLUMNS = {"image_positive": "image + (lower better)", "image_negative": "image − (higher better)",
                 "text_positive": "words + (lower better)", "text_negative": "words − (higher better)"}
MASK_COLUMNS = {"mask_share": "share in shape mask", "mask_ratio": "× chance"}


def table_columns(metric: str) -> dict:
    """Table column -> title, for the areas of ``metric`` ("accuracy" or "probability")."""
    return {"method": "method", **{f"{c}_{metric}_auc": t for c, t in CURVE_COLUMNS.items()}, **MASK_COLUMNS}


def evaluation_files() -> list[Path]:
    named = os.environ.get("VL_LENS_FAITHFULNESS_DIRS")
    roots = [Path(p) for p in named.split(os.pathsep) if p] if named is not None else [SHIPPED]
    return sorted({p.resolve() for r in roots if r.is_dir() for p in r.rglob("faithfulness.json")})


@st.cache_data(show_spinner=False, max_entries=32)
def load_evaluation(path: str, mtime: float) -> dict | None:
    """The evaluation at ``path`` (JSON only), or None when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    needed = {"summary", "fractions", "n_examples", "localization"}
    return data if isinstance(data, dict) and needed <= set(data) else None


def _nan(x):
    return float("nan") if x is None else x


st.title("Faithfulness")
st.caption("Chefer, Gur & Wolf (2021) perturbation tests: remove image regions or words in the order a method "
           "ranks them, most relevant first (+, a faithful map makes accuracy fall fast: lower area) or least "
           "relevant first (−, higher area is better), 0–90%, next to a random order. Areas are the curves' mean "
           "level × 100. On easy-VQA also the share of positive image attribution inside the shape mask.")
files = evaluation_files()
if not files:
    st.info("No recorded evaluation yet. Run, for example: `python cli.py faithfulness --model vilt-easyvqa "
            "--dataset easyvqa --limit 100 --every 97 --out docs/faithfulness/vilt-easyvqa`.")
    st.stop()

evaluations = {str(p): load_evaluation(str(p), p.stat().st_mtime) for p in files}
valid = {p: e for p, e in evaluations.items() if e is not None}
if not valid:
    st.error("The evaluation files found are not faithfulness evaluations (JSON written by `cli.py faithfulness`).")
    st.stop()


def _label(path: str) -> str:
    e = valid[path]
    return f"{e.get('model', Path(path).parent.name)} · {e.get('dataset', '?')} · {e['n_examples']} examples"


# The URL names an evaluation by its folder (the full path only when two folders share a name).
folder = {p: Path(p).parent.name for p in valid}
names = {p: folder[p] if list(folder.values()).count(folder[p]) == 1 else p for p in valid}
by_name = {n: p for p, n in names.items()}
chosen = url_choice("Evaluation", list(by_name), param="evaluation", key="faith_eval",
                    format_func=lambda n: _label(by_name[n]))
path = by_name[chosen]
ev = valid[path]
rows = pd.DataFrame(table_rows({m: {c: {k: _nan(v) for k, v in d.items()} for c, d in curves.items()}
                                for m, curves in ev["summary"].items()},
                               {m: {k: _nan(v) for k, v in loc.items()} for m, loc in ev["localization"].items()}))
st.markdown(f"**{ev.get('model', '?')}** on {ev.get('dataset', '?')} ({ev.get('split', '')}), "
            f"{ev['n_examples']} examples, top-answer accuracy {_nan(ev.get('accuracy')):.1%}; "
            f"probabilities by the model's rule ({ev.get('probability_rule') or 'not recorded'}).")
metric = url_choice("Curves of", ["accuracy", "probability"], param="metric", key="faith_metric", widget="radio",
                    omit_default=True, horizontal=True,
                    format_func={"accuracy": "accuracy", "probability": "target probability"}.get)
columns = table_columns(metric)
shown = rows[list(columns)].rename(columns=columns)
st.dataframe(shown.round(3), hide_index=True, key="faith_table")
chart = curves_chart(ev, metric)
st.altair_chart(chart, key="faith_curves")
export_buttons(chart, curves_frame(ev, metric), f"faithfulness_{names[path]}_{metric}", key="faith_export")
if ev.get("command"):
    st.caption(f"Reproduce: `{ev['command']}`")
