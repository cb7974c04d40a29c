"""DCD Studio: the Streamlit entry point.

    streamlit run app.py -- --workspace DIR        (or DCD_WORKSPACE=DIR streamlit run app.py)

The router: the sidebar opens a workspace (pages/_session.py) and st.navigation shows the pages, each a thin
view over core/. """

from __future__ import annotations

import streamlit as st

from pages._session import sidebar

st.set_page_config(page_title="DCD Studio", page_icon=":material/troubleshoot:", layout="wide")

pages = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/errors.py", title="Errors", icon=":material/error:"),
    st.Page("pages/slices.py", title="Slices", icon=":material/category:"),
    st.Page("pages/retrieval.py", title="Retrieval (DCD)", icon=":material/image_search:"),
    st.Page("pages/jobs.py", title="Jobs", icon=":material/play_circle:"),
    st.Page("pages/compare.py", title="Before / after", icon=":material/compare_arrows:"),
]

page = st.navigation(pages)
st.sidebar.markdown("### :material/troubleshoot: DCD Studio")
if sidebar() is None:
    st.stop()
page.run()
