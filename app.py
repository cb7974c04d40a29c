"""DCD Studio: the Streamlit entry point (`streamlit run app.py -- --workspace DIR`)."""

from __future__ import annotations

import argparse
import sys

import streamlit as st

from core.splits import split_counts
from core.workspace import Workspace, WorkspaceError, workspace_from_env


def _cli_workspace() -> str | None:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--workspace", default=None)
    args, _ = p.parse_known_args(sys.argv[1:])
    return args.workspace


st.set_page_config(page_title="DCD Studio", layout="wide")
path = st.sidebar.text_input("Workspace", value=str(workspace_from_env(_cli_workspace()) or ""))
try:
    ws = Workspace.open(path)
except WorkspaceError as exc:
    st.error(str(exc))
    st.stop()
st.title("DCD Studio")
st.write(split_counts(ws))
