"""Retrieval (DCD): nearest pool neighbours of error-sample images, reviewed and saved as a debug-train set.

The query part (pages/_retrieval_parts.py: embedder, search options, the images to search for) returns the
candidates; the review part below shows them in the review grid of pages/_widgets.py twice: the unsaved
candidates (decisions kept in the session) and a saved selection (decisions written to the workspace).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.app import names, queries
from core.app.job_summary import RETRIEVAL_JOBS, jobs_running
from core.dcd.index import IndexInfo
from core.dcd.selection import relabel, save_selection, set_status
from core.store.workspace import Workspace
from pages._retrieval_parts import Search, embedder_ui, query_ui, search_ui, source_text
from pages._session import refresh, view, workspace
from pages._widgets import GridKeys, jobs_in_progress, launch_button, review_grid, tally_text


def candidate_caption(r: pd.Series) -> str:
    """'weak: landbird · d=0.031' (the parts that are known): what the pool says and how near it is."""
    parts = []
    if isinstance(r.weak_label_name, str):
        parts.append(f"weak: {r.weak_label_name}")
    if pd.notna(r.distance):
        parts.append(f"d={r.distance:.3g}")
    return " · ".join(parts) or f"#{r.image_id}"


def error_images(items: pd.DataFrame) -> pd.DataFrame | None:
    """The images the candidates were found for, in search order (image_id, path, label_name, pred_name,
    correct), or None when there are none to group under (an upload, a random selection)."""
    ids = [int(i) for i in pd.unique(items.source_image_id.dropna()) if i >= 0]
    if not ids or items.source_image_id.isna().any():
        return None
    return view(queries.source_images, ids, view(queries.current_classifier_id))


def candidate_decisions(searched_for: tuple) -> dict[int, dict]:
    """The person's decisions on the unsaved candidates, {image_id: {"status", "label"}}: the one place they
    are kept, emptied when the search changes."""
    review = st.session_state.get("retr_review")
    if review is None or review["searched_for"] != searched_for:
        review = st.session_state["retr_review"] = {"searched_for": searched_for, "decisions": {}}
    return review["decisions"]


def retrain_label(selection_id: str) -> str:
    current = view(queries.current_classifier_id)
    model = view(names.model_names).get(current, current) or "the current classifier"
    return f"Retrain {model} with {view(names.selection_names).get(selection_id, selection_id)}"


def review_candidates(ws: Workspace, candidates: pd.DataFrame, decisions: dict[int, dict], search: Search,
                      info: IndexInfo, classes: list[str]) -> None:
    """The unsaved candidates, each under its error image, then saving them as a selection and retraining."""
    def decide(image_ids: list[int], *, status: str | None = None, label: int | None = None) -> None:
        for iid in image_ids:
            d = decisions.setdefault(iid, {})
            if status is not None:
                d["status"] = status
            if label is not None:
                d["label"] = label

    st.subheader(f"{len(candidates)} candidates")
    items = queries.candidate_items(candidates, decisions)
    keys = GridKeys("retr_keep_rest", "retr_drop_rest", "retr_reset", "retr_bulk_label", "retr_relabel_all",
                    "retr_page", status="cand_status_", label="cand_label_", group="cand_group_")
    review_grid(ws, items, classes, keys=keys, decide=decide, reset=decisions.clear, caption=candidate_caption,
                sources=error_images(items), source_caption=source_text)
    s1, s2 = st.columns([3, 1], vertical_alignment="bottom")
    auto = f"dcd-n{search.neighbours}-b{search.budget}"
    name = s1.text_input("Selection name", key="retr_name", placeholder="e.g. birds on the wrong background",
                         help="How the selection and the model retrained on it are called")
    if s2.button("Save as debug-train selection", type="primary", key="retr_save", width="stretch"):
        if items.label.isna().any():
            st.error(f"{int(items.label.isna().sum())} candidate(s) have no label: relabel them first.")
        else:
            params = {"neighbours": search.neighbours, "budget": search.budget, "label_policy": search.label_policy,
                      "embedder_id": search.embedder_id, "reviewed": True,
                      "sources": [int(s) for s in candidates.source_image_id.unique()]}
            sel = save_selection(ws, name.strip() or auto, "dcd", queries.with_their_failure_images(ws, items),
                                 params=params, index_info=info)
            refresh()
            st.session_state["retr_saved"] = sel.selection_id
            st.session_state["retr_saved_sel"] = sel.selection_id  # the Saved tab opens on it
            shown = view(names.selection_names).get(sel.selection_id, sel.name)
            st.success(f"Saved **{shown}**: {tally_text(items)}.")
    if st.session_state.get("retr_saved"):
        launch_button(ws, retrain_label(st.session_state["retr_saved"]), "retrain",
                      ["--selection-id", st.session_state["retr_saved"]], key="retr_launch_retrain")


def selection_label(row: pd.Series, shown: str) -> str:
    n_failure, n_rest = int(row.n_failure), int(getattr(row, "n_rest", 0) or 0)
    n_open = int(row.n_items - n_failure - n_rest - row.n_accepted - row.n_rejected)
    failure = f"{n_failure} of the failure's own, " if n_failure else ""
    rest = f"{n_rest} of the rest of the pool, teacher-labelled, " if n_rest else ""
    return (f"{shown} · {int(row.n_items)} images ({failure}{rest}{int(row.n_accepted)} kept, {int(row.n_rejected)} "
            f"dropped, {n_open} not reviewed) · {pd.Timestamp(row.created_at):%d %b %H:%M}")


def review_saved(ws: Workspace, classes: list[str]) -> None:
    """A saved selection (newest first) under its error images; each decision is written to the workspace."""
    sels = view(queries.selections)
    if sels.empty:
        st.info("No selections yet: find candidates and save them, or run the select job.")
        return
    by_id, shown = sels.set_index("selection_id"), view(names.selection_names)
    if st.session_state.get("retr_saved_sel") not in by_id.index:
        st.session_state["retr_saved_sel"] = sels.selection_id.iloc[0]
    sel_id = st.selectbox("Selection", sels.selection_id.tolist(), key="retr_saved_sel",
                          format_func=lambda s: selection_label(by_id.loc[s], shown.get(s, s)))
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

ws = workspace()
st.title("Retrieval (DCD)")
st.caption("For each error-sample image, its nearest neighbours in the weakly labelled pool, searched in an "
           "embedder's feature space. Review them and save the result as a debug-train selection.")
if jobs_running(ws, RETRIEVAL_JOBS):  # new embeddings, label issues or selections are coming
    jobs_in_progress(ws, RETRIEVAL_JOBS, "New candidates are being found")
classes = ws.class_names()
if ws.read_only:  # a viewer looks at the saved selections; searching and saving are for the full app
    review_saved(ws, classes)
    st.stop()
embedder_id, info = embedder_ui(ws)
tab_find, tab_saved = st.tabs(["Find candidates", "Saved selections"])
with tab_find:
    search = search_ui(embedder_id)
    try:
        found = query_ui(ws, search, classes)
    except ValueError as exc:
        st.error(str(exc))
        found = None
    if found is not None:
        candidates, searched_for = found
        review_candidates(ws, candidates, candidate_decisions(searched_for), search, info, classes)
with tab_saved:
    review_saved(ws, classes)
