"""The app's session: the sidebar that opens the workspace, and cached, typed access to its data.

Pages call :func:`workspace` for the open workspace, :func:`view` to run a core query through the cache and
:func:`refresh` after they write; the pool index, the embedder and the candidate searches are cached here too.
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import pandas as pd
import streamlit as st

from core.app import queries
from core.app.names import model_names
from core.store.workspace import (
    NotAWorkspaceError,
    SchemaVersionError,
    Workspace,
    WorkspaceError,
    workspace_from_env,
)

WS_KEY = "workspace_path"
DIED_KEY = "jobs_died"  # {workspace root: ids of jobs the sidebar found dead}
P = ParamSpec("P")
R = TypeVar("R")


# -- the workspace --------------------------------------------------------------------------------

def cli_workspace(argv: Sequence[str] | None = None) -> str | None:
    """``--workspace DIR`` from the app's command line (``streamlit run app.py -- --workspace DIR``)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--workspace", default=None)
    args, _ = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return args.workspace


def data_roots(ws: Workspace, argv: Sequence[str] | None = None) -> list[Path]:
    """Folders the Jobs page may name in path options: ``--data-root DIR`` (repeatable) from the app's
    command line, else the workspace's parent folder."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data-root", action="append", default=None)
    args, _ = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return [Path(r).expanduser().resolve() for r in args.data_root] if args.data_root else [ws.root.parent]


def read_only_mode(argv: Sequence[str] | None = None) -> bool:
    """The viewer mode: ``--read-only`` on the app's command line (``make view``), or ``DCD_READ_ONLY=1``.
    Every page shows what is there and nothing a person can change: no job launch, annotation, label decision,
    selection, review or current-classifier switch; the workspace is opened read-only (core.store)."""
    import os

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--read-only", action="store_true")
    args, _ = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return args.read_only or os.environ.get("DCD_READ_ONLY", "").strip().lower() in ("1", "true", "yes")


def default_workspace_path() -> str:
    """``DCD_WORKSPACE`` if set, else ``--workspace`` from the command line, else ''."""
    found = workspace_from_env(cli_workspace())
    return str(found) if found else ""


def _file_stamp(path: str | Path | None) -> str:
    """mtime and size of a file ('-' when there is none): a cache key that changes when the file does."""
    try:
        s = Path(path).expanduser().stat() if path else None
    except OSError:
        s = None
    return f"{s.st_mtime_ns}:{s.st_size}" if s else "-"


@st.cache_resource(show_spinner=False, max_entries=16)
def _open_cached(path: str, stamp: str, read_only: bool) -> Workspace:
    return Workspace.open(path, read_only=read_only)


def open_workspace(path: str) -> tuple[Workspace | None, str | None, str | None]:
    """(workspace, error, hint): open ``path`` or say why not."""
    if not path.strip():
        return None, "No workspace is open.", ("Enter a workspace folder in the sidebar, or start the app with "
                                               "`streamlit run app.py -- --workspace DIR` (or set DCD_WORKSPACE). "
                                               "Build a demo one with `python -m jobs.demo --workspace DIR --size small`.")
    try:
        root = str(Path(path).expanduser())
        return _open_cached(root, _file_stamp(Path(root) / "workspace.duckdb"), read_only_mode()), None, None
    except SchemaVersionError as exc:
        return None, f"Schema from another version: {exc}", "Open a workspace written by this DCD Studio version."
    except NotAWorkspaceError as exc:
        return None, f"Not a workspace: {exc}", "Check the path in the sidebar."
    except WorkspaceError as exc:
        return None, str(exc), None


def sidebar() -> Workspace | None:
    """The workspace box in the sidebar; returns the open workspace or None (after showing why)."""
    if WS_KEY not in st.session_state or read_only_mode():  # a viewer cannot open another folder
        st.session_state[WS_KEY] = default_workspace_path()
    if read_only_mode():
        st.sidebar.info(":material/visibility: **Viewer mode**: read-only. You can look at everything; jobs, "
                        "annotations, label decisions and selections are made in the full app.")
    else:
        st.sidebar.text_input("Workspace folder", key=WS_KEY,
                              help="A DCD Studio workspace (a folder with workspace.duckdb)")
    ws, error, hint = open_workspace(st.session_state[WS_KEY])
    if ws is None:
        st.error(error)
        if hint:
            st.info(hint)
        return None
    counts = view(queries.split_class_table)
    current = view(queries.current_classifier_id)
    st.sidebar.caption(f"**{ws.root.name}** · {int(counts['total'].sum()):,} images · "
                       f"current classifier: **{view(model_names).get(current, current) if current else 'none'}**")
    if ws.jobs_path.exists():
        store = ws.jobs()
        st.session_state.setdefault(DIED_KEY, {}).setdefault(str(ws.root), []).extend(store.reconcile())
        active = store.list(active_only=True)
        if active:
            st.sidebar.caption(f":material/hourglass_top: {len(active)} job(s) running: see Jobs")
    return ws


def died_jobs(ws: Workspace) -> list[str]:
    """Ids of the jobs found dead (their process gone) and marked failed since this was last asked: the
    sidebar reconciles the job store first on every page, so it remembers what it found for the Jobs page."""
    return st.session_state.get(DIED_KEY, {}).pop(str(ws.root), []) + ws.jobs().reconcile()


def workspace() -> Workspace:
    """The open workspace, or stop the page (the sidebar has already said why)."""
    ws, _, _ = open_workspace(st.session_state.get(WS_KEY) or default_workspace_path())
    if ws is None:
        st.stop()
    return ws


# -- cached reads ---------------------------------------------------------------------------------

def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_call(module: str, name: str, root: str, version: str, args: tuple, kwargs: tuple) -> Any:
    return getattr(importlib.import_module(module), name)(Workspace(Path(root)), *args, **dict(kwargs))


def view(query: Callable[Concatenate[Workspace, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``query(ws, *args, **kwargs)``, cached until the workspace's data changes.

    ``query`` is a module-level function of ``core`` whose first argument is the workspace, usually one of
    :mod:`core.app.queries` (``view(queries.confusion, model_id, split)``); lists in the arguments are fine.
    """
    if "." in query.__qualname__ or not query.__module__.startswith("core."):
        raise ValueError(f"view() caches module-level functions of core, not {query.__module__}.{query.__qualname__}")
    ws = workspace()
    kw = tuple(sorted((k, _frozen(v)) for k, v in kwargs.items()))
    return _cached_call(query.__module__, query.__qualname__, str(ws.root), ws.data_version(),
                        tuple(_frozen(a) for a in args), kw)


def refresh() -> None:
    """Drop cached query results (after the app itself writes)."""
    _cached_call.clear()


@st.cache_data(show_spinner="Drawing the mosaic…", max_entries=32)
def _mosaic_png(root: str, version: str, run_id: str, slice_id: int, layout: str, mode: str) -> bytes:
    from core.scanner.runs import render_slice_mosaic

    buf = io.BytesIO()
    render_slice_mosaic(Workspace(Path(root)), run_id, slice_id, layout=layout, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def slice_mosaic_png(ws: Workspace, run_id: str, slice_id: int, *, layout: str, mode: str) -> bytes:
    """A slice's Attribution Mosaic as PNG bytes (cached until the workspace's data changes)."""
    return _mosaic_png(str(ws.root), ws.data_version(), run_id, int(slice_id), layout, mode)


# -- cached resources: the pool index and the embedder --------------------------------------------

@st.cache_resource(show_spinner="Loading the pool index…", max_entries=8)
def _index(root: str, embedder_id: str, stamp: str):
    from core.dcd.index import load_index

    return load_index(Workspace(Path(root)), embedder_id)


def pool_index(ws: Workspace, embedder_id: str):
    """(faiss index, IndexInfo) of an embedder's persisted pool index (cached until the file changes), or None."""
    from core.dcd.index import index_paths

    path, meta = index_paths(ws, embedder_id)
    if not (path.exists() and meta.exists()):
        return None
    return _index(str(ws.root), embedder_id, _file_stamp(path) + "|" + _file_stamp(meta))


@st.cache_resource(show_spinner="Loading the embedder…", max_entries=4)
def _embedder(root: str, embedder_id: str, stamp: str):
    from core.models.catalog import load_embedder

    return load_embedder(Workspace(Path(root)), embedder_id)


def _embedder_stamp(ws: Workspace, embedder_id: str) -> str:
    """What changes when an embedder changes: its model record and the files it loads weights from."""
    from core.models.catalog import CLASSIFIER_EMBEDDER_PREFIX, get_model, split_embedder_id

    base = split_embedder_id(embedder_id)[0]
    model_id = base[len(CLASSIFIER_EMBEDDER_PREFIX):] if base.startswith(CLASSIFIER_EMBEDDER_PREFIX) else embedder_id
    try:
        rec = get_model(ws, model_id)
    except KeyError:
        return "-"  # load_embedder says what is missing
    files = [rec.checkpoint, rec.config.get("weights")]
    return "|".join([repr(rec), *(_file_stamp(f) for f in files if isinstance(f, str))])


def embedder_model(ws: Workspace, embedder_id: str):
    """(model, data config) of an embedder, cached until its model record or weights file changes."""
    return _embedder(str(ws.root), embedder_id, _embedder_stamp(ws, embedder_id))


# -- candidate searches ---------------------------------------------------------------------------

@st.cache_data(show_spinner="Searching the pool…", max_entries=64)
def _candidates(root: str, version: str, embedder_id: str, source_ids: tuple[int, ...], neighbours: int,
                budget: int, label_policy: str) -> pd.DataFrame:
    ws = Workspace(Path(root))
    index, _ = pool_index(ws, embedder_id)
    ids, vecs = queries.source_vectors(ws, embedder_id, list(source_ids))
    if len(ids) == 0:
        raise ValueError(f"none of the chosen images has a vector for {embedder_id!r}: the select job embeds "
                         f"them first, or run the embed job on their split")
    return queries.candidates_filling_budget(ws, index, ids, vecs, neighbours=neighbours, budget=budget, label_policy=label_policy)


def find_candidates(ws: Workspace, embedder_id: str, source_ids: Sequence[int], *, neighbours: int, budget: int,
                    label_policy: str) -> pd.DataFrame:
    """Debug-train candidates for a failure's query images (a preview: nothing is saved), from the persisted
    pool index (cached)."""
    return _candidates(str(ws.root), ws.data_version(), embedder_id, tuple(int(i) for i in source_ids), int(neighbours),
                       int(budget), label_policy)


@st.cache_data(show_spinner="Embedding the image and searching the pool…", max_entries=16)
def _upload_candidates(root: str, version: str, embedder_id: str, data: bytes, neighbours: int, budget: int,
                       label: int | None, label_policy: str) -> pd.DataFrame:
    import numpy as np

    from core.data.images import load_rgb
    from core.data.uploads import UPLOAD_MAX_PIXELS
    from core.models.catalog import split_embedder_id
    from core.models.inference import embed

    ws = Workspace(Path(root))
    index, _ = pool_index(ws, embedder_id)
    model, cfg = embedder_model(ws, embedder_id)
    pixels = load_rgb(io.BytesIO(data), cfg.image_size, max_pixels=UPLOAD_MAX_PIXELS)[None]
    vec = embed(model, pixels, cfg, layers=split_embedder_id(embedder_id)[1])
    return queries.candidates_filling_budget(ws, index, np.array([-1]), vec, neighbours=neighbours, budget=budget,
                                             label_policy=label_policy, source_label=label)


def find_candidates_for_upload(ws: Workspace, embedder_id: str, data: bytes, *, neighbours: int, budget: int,
                               label: int | None, label_policy: str) -> pd.DataFrame:
    """Debug-train candidates for an uploaded image (embedded with the embedder, cached)."""
    return _upload_candidates(str(ws.root), ws.data_version(), embedder_id, data, int(neighbours), int(budget), label,
                              label_policy)
