"""Retrieval (DCD): a failure's nearest pool neighbours, previewed; the selection made by the select job
(core.dcd.strategies.select), then reviewed.

The query part (pages/_retrieval_parts.py: embedder, the failure or uploaded images, search options)
previews the candidates and launches the jobs that write: the select job for a failure, the pipeline that
fixes it, the failure job for uploaded images. A saved selection is reviewed below in the review grid of
pages/_widgets.py (a person's decisions written to the workspace).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.app import names, queries
from core.app.job_summary import RETRIEVAL_JOBS, jobs_running
from core.dcd.selection import relabel, set_status
from core.store.workspace import Workspace
from pages._retrieval_parts import (
    Search,
    embedder_ui,
    failure_actions,
    failure_preview,
    failure_ui,
    query_kind_ui,
    search_ui,
    source_text,
    sources_ui,
    upload_ui,
)
from pages._session import refresh, view, workspace
from pages._widgets import GridKeys, gallery, jobs_in_progress, launch_button, paginate, review_grid, source_image


def candidate_caption(r: pd.Series) -> str:
    """'weak: landbird · d=0.031' (the parts that are known): what the pool says and how near it is."""
    parts = []
    if isinstance(r.weak_label_name, str):
        parts.append(f"weak: {r.weak_label_name}")
    if pd.notna(r.distance):
        parts.append(f"d={r.distance:.3g}")
    return " · ".join(parts) or f"#{r.image_id}"


def preview_caption(r: pd.Series) -> str:
    """A previewed candidate: its pool label and distance, and the label it would be trained with."""
    trains = f" · trains as {r.label_name}" if isinstance(r.label_name, str) else " · left out (no label)"
    return candidate_caption(r) + trains


def error_images(items: pd.DataFrame) -> pd.DataFrame | None:
    """The images the candidates were found for, in search order (image_id, path, label_name, pred_name,
    correct), or None when there are none to group under (an upload, a random selection)."""
    ids = [int(i) for i in pd.unique(items.source_image_id.dropna()) if i >= 0]
    if not ids or items.source_image_id.isna().any():
        return None
    return view(queries.source_images, ids, view(queries.current_classifier_id))


def preview_candidates(ws: Workspace, candidates: pd.DataFrame) -> None:
    """The candidates a search found, each under the query image it was found for (none is saved: the select
    job makes the selection)."""
    st.subheader(f"{len(candidates)} candidates")
    st.caption("A preview of the nearest pool images and the label each would be trained with; nothing is saved "
               "until the select job makes the selection.")
    sources = error_images(candidates)
    if sources is None:
        gallery(ws, paginate(candidates, key="retr_preview_page", per_page=30), preview_caption, width=96)
        return
    for _, src in paginate(sources, key="retr_preview_page", per_page=3).iterrows():
        group = candidates[candidates.source_image_id == src.image_id]
        with st.container(border=True):
            left, right = st.columns([1, 5])
            with left:
                source_image(ws, src, f"{source_text(src)} · {len(group)} found")
            with right:
                gallery(ws, group.head(10), preview_caption, width=96)
                if len(group) > 10:
                    st.caption(f"and {len(group) - 10} more for this image")


def retrain_label(selection_id: str) -> str:
    current = view(queries.current_classifier_id)
    model = view(names.model_names).get(current, current) or "the current classifier"
    return f"Retrain {model} with {view(names.selection_names).get(selection_id, selection_id)}"


def selection_label(row: pd.Series, shown: str) -> str:
    """What a selection holds and when it was made (its review: :func:`review_text`, which changes as a person
    decides; a select box's labels are not redrawn while its choices stay the same)."""
    n_failure, n_rest = int(row.n_failure), int(getattr(row, "n_rest", 0) or 0)
    parts = [f"{n_failure} of the failure's own" if n_failure else "",
             f"{n_rest} of the rest of the pool, teacher-labelled" if n_rest else "",
             f"{int(row.n_items - n_failure - n_rest)} retrieved"]
    return (f"{shown} · {int(row.n_items)} images ({', '.join(p for p in parts if p)}) · "
            f"{pd.Timestamp(row.created_at):%d %b %H:%M}")


def review_text(row: pd.Series) -> str:
    n_open = int(row.n_items - int(row.n_failure) - int(getattr(row, "n_rest", 0) or 0) - row.n_accepted
                 - row.n_rejected)
    return f"Reviewed: {int(row.n_accepted)} kept, {int(row.n_rejected)} dropped, {n_open} not reviewed"


def review_saved(ws: Workspace, classes: list[str]) -> None:
    """A saved selection (newest first) under its error images; each decision is written to the workspace."""
    sels = view(queries.selections)
    if sels.empty:
        st.info("No selections yet: make one for a failure under Find candidates (the select job).")
        return
    by_id, shown = sels.set_index("selection_id"), view(names.selection_names)
    if st.session_state.get("retr_saved_sel") not in by_id.index:
        st.session_state["retr_saved_sel"] = sels.selection_id.iloc[0]
    sel_id = st.selectbox("Selection", sels.selection_id.tolist(), key="retr_saved_sel",
                          format_func=lambda s: selection_label(by_id.loc[s], shown.get(s, s)))
    st.caption(review_text(by_id.loc[sel_id]))
    items = view(queries.selection_review, sel_id)

    def decide(image_ids: list[int], *, status: str | None = None, label: int | None = None) -> None:
        if status is not None:
            set_status(ws, sel_id, image_ids, status)
        if label is not None:
            relabel(ws, sel_id, image_ids, label)
        refresh()

    keys = GridKeys("retr_saved_keep_rest", "retr_saved_drop_rest", "retr_saved_reset", "retr_saved_bulk_label",
                    "retr_saved_relabel", "retr_saved_page", status=f"saved_status_{sel_id}_",
                    label=f"saved_label_{sel_id}_", group=f"saved_group_{sel_id}_")
    review_grid(ws, items, classes, keys=keys, decide=decide, caption=candidate_caption,
                reset=lambda: decide(items.image_id.astype(int).tolist(), status="proposed"),
                sources=error_images(items), source_caption=source_text)
    launch_button(ws, retrain_label(sel_id), "retrain", ["--selection-id", sel_id], key="retr_saved_retrain")


# -- the page -------------------------------------------------------------------------------------

def find_ui(ws: Workspace, embedder_id: str, classes: list[str]) -> None:
    """The query, the search options, the preview, and the jobs that act on them."""
    kind = query_kind_ui()
    if kind == "failure":
        failure = failure_ui(ws)
        if failure is None:
            return
        search: Search = search_ui(embedder_id, len(failure.query_ids), failure.failure_id)
        try:
            candidates = failure_preview(ws, search, sources_ui(ws, failure))
        except ValueError as exc:
            st.error(str(exc))
            candidates = None
        failure_actions(ws, failure, search)
    else:
        search = search_ui(embedder_id, max(1, len(st.session_state.get("retr_upload") or [])), "upload")
        found = upload_ui(ws, search, classes)
        candidates = None if found is None else found[0]
    if candidates is not None:
        preview_candidates(ws, candidates)


ws = workspace()
st.title("Retrieval (DCD)")
st.caption("A failure's images (its query part: DCD's E_sample) and their nearest neighbours in the weakly "
           "labelled pool, searched in an embedder's feature space. The select job makes the selection; review "
           "it under Saved selections, then retrain.")
if jobs_running(ws, RETRIEVAL_JOBS):  # new embeddings, label issues or selections are coming
    jobs_in_progress(ws, RETRIEVAL_JOBS, "New candidates are being found")
classes = ws.class_names()
if ws.read_only:  # a viewer looks at the saved selections; searching and launching are for the full app
    review_saved(ws, classes)
    st.stop()
embedder_id, info = embedder_ui(ws)
tab_find, tab_saved = st.tabs(["Find candidates", "Saved selections"])
with tab_find:
    find_ui(ws, embedder_id, classes)
with tab_saved:
    review_saved(ws, classes)
