"""DCD Studio: the Streamlit entry point.

    streamlit run app.py -- --workspace DIR        (or DCD_WORKSPACE=DIR streamlit run app.py)

The router: the sidebar opens a workspace (pages/_shared.py) and st.navigation shows the pages, each a thin
view over core/. A "Slices" page appears when pages/slices.py exists.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages import _shared

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="DCD Studio", page_icon=":material/troubleshoot:", layout="wide")

pages = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/errors.py", title="Errors", icon=":material/error:"),
]
if (HERE / "pages" / "slices.py").exists():
    pages.append(st.Page("pages/slices.py", title="Slices", icon=":material/category:"))
pages += [
    st.Page("pages/retrieval.py", title="Retrieval (DCD)", icon=":material/image_search:"),
    st.Page("pages/jobs.py", title="Jobs", icon=":material/play_circle:"),
    st.Page("pages/compare.py", title="Before / after", icon=":material/compare_arrows:"),
]

page = st.navigation(pages)
st.sidebar.markdown("### :material/troubleshoot: DCD Studio")
if _shared.sidebar() is None:
    st.stop()
page.run()
