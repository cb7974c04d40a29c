"""What every page shares: opening the workspace (sidebar), cached data access, thumbnails and galleries.

Pages call :func:`workspace` to get the open :class:`~core.store.workspace.Workspace` (it stops the page with a
clear message when there is none), :func:`view` to run a :mod:`core.app.queries` query through ``st.cache_data``
keyed by the workspace's data version (so caches refresh when a job or the app writes), and
:func:`gallery` to show images as cached thumbnails.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.app import queries as views
from core.store.workspace import (
    NotAWorkspaceError,
    SchemaVersionError,
    Workspace,
    WorkspaceError,
    workspace_from_env,
)

WS_KEY = "workspace_path"


def cli_workspace(argv: Sequence[str] | None = None) -> str | None:
    """``--workspace DIR`` from the app's command line (``streamlit run app.py -- --workspace DIR``)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--workspace", default=None)
    args, _ = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return args.workspace


def default_workspace_path() -> str:
    """``DCD_WORKSPACE`` if set, else ``--workspace`` from the command line, else ''."""
    found = workspace_from_env(cli_workspace())
    return str(found) if found else ""


def _stamp(path: str) -> str:
    try:
        s = (Path(path).expanduser() / "workspace.duckdb").stat()
        return f"{s.st_mtime_ns}:{s.st_size}"
    except OSError:
        return "-"


@st.cache_resource(show_spinner=False, max_entries=16)
def _open_cached(path: str, stamp: str) -> Workspace:
    return Workspace.open(path)


def open_workspace(path: str) -> tuple[Workspace | None, str | None, str | None]:
    """(workspace, error, hint): open ``path`` or say why not."""
    if not path.strip():
        return None, "No workspace is open.", ("Enter a workspace folder in the sidebar, or start the app with "
                                               "`streamlit run app.py -- --workspace DIR` (or set DCD_WORKSPACE). "
                                               "Build a demo one with `python -m jobs.demo --workspace DIR --size small`.")
    try:
        return _open_cached(str(Path(path).expanduser()), _stamp(path)), None, None
    except SchemaVersionError as exc:
        return None, f"Schema from another version: {exc}", "Open a workspace written by this DCD Studio version."
    except NotAWorkspaceError as exc:
        return None, f"Not a workspace: {exc}", "Check the path in the sidebar."
    except WorkspaceError as exc:
        return None, str(exc), None


def sidebar() -> Workspace | None:
    """The workspace box in the sidebar; returns the open workspace or None (after showing why)."""
    if WS_KEY not in st.session_state:
        st.session_state[WS_KEY] = default_workspace_path()
    st.sidebar.text_input("Workspace folder", key=WS_KEY,
                          help="A DCD Studio workspace (a folder with workspace.duckdb)")
    ws, error, hint = open_workspace(st.session_state[WS_KEY])
    if ws is None:
        st.error(error)
        if hint:
            st.info(hint)
        return None
    counts = view("split_class_table")
    st.sidebar.caption(f"**{ws.root.name}** · {int(counts['total'].sum()):,} images · "
                       f"current classifier: `{views.current_classifier_id(ws) or 'none'}`")
    active = [j for j in ws.jobs().list(active_only=True)] if ws.jobs_path.exists() else []
    if active:
        st.sidebar.caption(f":material/hourglass_top: {len(active)} job(s) running: see Jobs")
    return ws


def workspace() -> Workspace:
    """The open workspace, or stop the page (the sidebar has already said why)."""
    ws, _, _ = open_workspace(st.session_state.get(WS_KEY) or default_workspace_path())
    if ws is None:
        st.stop()
    return ws


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_view(name: str, root: str, version: str, args: tuple, kwargs: tuple) -> Any:
    return getattr(views, name)(Workspace(Path(root)), *args, **dict(kwargs))


def view(name: str, *args: Any, **kwargs: Any) -> Any:
    """``core.app.queries.<name>(ws, *args, **kwargs)``, cached until the workspace's data changes."""
    ws = workspace()
    args = tuple(tuple(a) if isinstance(a, list) else a for a in args)
    kw = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    return _cached_view(name, str(ws.root), ws.data_version(), args, kw)


def refresh() -> None:
    """Drop cached query results (after the app itself writes)."""
    _cached_view.clear()


# -- images ---------------------------------------------------------------------------------------

def thumb(ws: Workspace, image_id: int, path: str, size: int = 128) -> str:
    """Path of the image's cached thumbnail (made once, under artifacts/thumbs)."""
    from core.data.images import thumbnail

    try:
        return str(thumbnail(path, ws.artifact_dir("thumbs"), int(image_id), size=size))
    except (OSError, ValueError):
        return ""


def gallery(ws: Workspace, df: pd.DataFrame, caption: Callable[[pd.Series], str], *, columns: int = 6,
            below: Callable[[pd.Series], None] | None = None, width: int = 128) -> None:
    """Thumbnails of ``df`` (image_id, path), each with a caption; with ``below``, a grid of ``columns``
    with widgets under each image, else one flowing row of images."""
    if df.empty:
        st.caption("No images.")
        return
    if below is None:
        items = [(thumb(ws, r.image_id, r.path), caption(r)) for _, r in df.iterrows()]
        items = [(t, c) for t, c in items if t]
        if items:
            st.image([t for t, _ in items], caption=[c for _, c in items], width=width)
        if len(items) < len(df):
            st.caption(f"{len(df) - len(items)} image(s) could not be read.")
        return
    for start in range(0, len(df), columns):
        cols = st.columns(columns)
        for col, (_, r) in zip(cols, df.iloc[start:start + columns].iterrows()):
            with col:
                t = thumb(ws, r.image_id, r.path)
                if t:
                    st.image(t, caption=caption(r), width=width)
                else:
                    st.caption(f"{caption(r)} (image missing)")
                below(r)


# -- cached resources -----------------------------------------------------------------------------

@st.cache_resource(show_spinner="Loading the pool index…", max_entries=8)
def _index(root: str, embedder_id: str, mtime: float):
    from core.dcd.index import load_index

    return load_index(Workspace(Path(root)), embedder_id)


def pool_index(ws: Workspace, embedder_id: str):
    """The persisted faiss pool index of an embedder (cached until the file changes), or None."""
    from core.dcd.index import index_paths

    path, meta = index_paths(ws, embedder_id)
    if not (path.exists() and meta.exists()):
        return None
    return _index(str(ws.root), embedder_id, path.stat().st_mtime)


@st.cache_resource(show_spinner="Loading the embedder…", max_entries=4)
def _embedder(root: str, embedder_id: str, version: str):
    from core.models.catalog import load_embedder

    return load_embedder(Workspace(Path(root)), embedder_id)


def embedder_model(ws: Workspace, embedder_id: str):
    """(model, data config) of an embedder, cached."""
    return _embedder(str(ws.root), embedder_id, "")


def pct(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def launch_button(ws: Workspace, label: str, kind: str, args: Sequence[str] = (), *, key: str) -> None:
    """A button that starts a job and points to the Jobs page."""
    from core.runner.launcher import launch

    if st.button(label, key=key):
        job_id = launch(ws, kind, list(args))
        st.success(f"Started job `{job_id}`: follow it on the Jobs page.")


# -- retrieval ------------------------------------------------------------------------------------

@st.cache_data(show_spinner="Searching the pool…", max_entries=64)
def _candidates(root: str, version: str, embedder_id: str, source_ids: tuple[int, ...], k: int,
                budget: int, label_policy: str) -> pd.DataFrame:
    ws = Workspace(Path(root))
    index, _ = pool_index(ws, embedder_id)
    ids, vecs = views.source_vectors(ws, embedder_id, list(source_ids))
    if len(ids) == 0:
        raise ValueError(f"none of the chosen images has a vector for {embedder_id!r}: run the embed job on the "
                         f"error_sample split")
    return views.candidates_filling_budget(ws, index, ids, vecs, k=k, budget=budget, label_policy=label_policy)


def find_candidates(ws: Workspace, embedder_id: str, source_ids: Sequence[int], *, k: int, budget: int,
                    label_policy: str) -> pd.DataFrame:
    """Debug-train candidates for error-sample images, from the persisted pool index (cached)."""
    return _candidates(str(ws.root), ws.data_version(), embedder_id, tuple(int(i) for i in source_ids), int(k),
                       int(budget), label_policy)


@st.cache_data(show_spinner="Embedding the image and searching the pool…", max_entries=16)
def _upload_candidates(root: str, version: str, embedder_id: str, data: bytes, k: int, budget: int,
                       label: int | None, label_policy: str) -> pd.DataFrame:
    import io

    import numpy as np

    from core.data.images import load_rgb
    from core.models.catalog import split_embedder_id
    from core.models.inference import embed

    ws = Workspace(Path(root))
    index, _ = pool_index(ws, embedder_id)
    model, cfg = embedder_model(ws, embedder_id)
    pixels = load_rgb(io.BytesIO(data), cfg.image_size)[None]
    vec = embed(model, pixels, cfg, layers=split_embedder_id(embedder_id)[1])
    return views.candidates_filling_budget(ws, index, np.array([-1]), vec, k=k, budget=budget,
                                           label_policy=label_policy, source_label=label)


def find_candidates_for_upload(ws: Workspace, embedder_id: str, data: bytes, *, k: int, budget: int,
                               label: int | None, label_policy: str) -> pd.DataFrame:
    """Debug-train candidates for an uploaded image (embedded with the embedder, cached)."""
    return _upload_candidates(str(ws.root), ws.data_version(), embedder_id, data, int(k), int(budget), label,
                              label_policy)
