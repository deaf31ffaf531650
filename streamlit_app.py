"""VL-Lens: router only. Each view is one file in views/; shared sidebar in ui/state.py."""
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

# An emoji icon: a :material: page icon makes the browser fetch a font from the web.
st.set_page_config(page_title="VL-Lens", page_icon="🔍", layout="wide")

# (file, title, icon, url path). Pages not yet present in this build are left out.
PAGES = [
    ("views/browser.py", "Examples", ":material/photo_library:", "examples"),
    ("views/head_summary.py", "Head summary", ":material/grid_on:", "heads"),
    ("views/attention.py", "Attention", ":material/visibility:", "attention"),
    ("views/projections.py", "Hidden states", ":material/scatter_plot:", "projections"),
    ("views/compare.py", "Compare", ":material/compare:", "compare"),
    ("views/ask.py", "Ask", ":material/help:", "ask"),
    ("views/faithfulness.py", "Faithfulness", ":material/fact_check:", "faithfulness"),
]

pages = [st.Page(str(ROOT / f), title=t, icon=i, url_path=u, default=(u == "examples"))
         for f, t, i, u in PAGES if (ROOT / f).exists()]
try:
    st.navigation(pages).run()
except StoreError as e:
    # A damaged example, or a store changed under the page: one line, not a traceback. Streamlit's
    # own stop / rerun signals are not StoreErrors and pass through.
    st.error(str(e))
