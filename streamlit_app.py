"""VL-Lens: the router. It draws the store / run sidebar once and runs the chosen view (one file in views/)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import streamlit as st  # noqa: E402

from core.errors import StoreError  # noqa: E402
from ui.state import draw_sidebar, set_page_context  # noqa: E402
from ui.url import restore_navigation  # noqa: E402

# An emoji icon: a :material: page icon makes the browser fetch a font from the web.
st.set_page_config(page_title="VL-Lens", page_icon="🔍", layout="wide")

# (file, title, icon, url path)
PAGES = [
    ("views/browser.py", "Examples", ":material/photo_library:", "examples"),
    ("views/head_summary.py", "Head summary", ":material/grid_on:", "heads"),
    ("views/attention.py", "Attention", ":material/visibility:", "attention"),
    ("views/projections.py", "Hidden states", ":material/scatter_plot:", "projections"),
    ("views/compare.py", "Compare", ":material/compare:", "compare"),
    ("views/ask.py", "Ask", ":material/help:", "ask"),
    ("views/faithfulness.py", "Faithfulness", ":material/fact_check:", "faithfulness"),
]
NO_STORE = {"ask", "faithfulness"}  # pages that read no store (a live model, a recorded evaluation): no store sidebar

page = st.navigation([st.Page(str(ROOT / f), title=t, icon=i, url_path=u, default=(u == "examples"))
                      for f, t, i, u in PAGES])
try:
    restore_navigation()  # the sidebar's page links carry no query parameters
    set_page_context(None if page.url_path in NO_STORE else draw_sidebar())
    page.run()
except StoreError as e:
    # A damaged example, or a store changed under the page: one line, not a traceback. Streamlit's
    # own stop / rerun signals are not StoreErrors and pass through.
    st.error(str(e))
