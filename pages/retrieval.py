"""Retrieval (DCD): nearest pool neighbours of error-sample images, reviewed and saved as a debug-train set.

The query part (pages/_retrieval_parts.py: embedder, search options, the images to search for) returns the
candidates; the review part below shows them in the review grid of pages/_widgets.py twice: the unsaved
candidates (decisions kept in the session) and a saved selection (decisions written to the workspace).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.app import queries
from core.dcd.index import IndexInfo
from core.dcd.selection import relabel, save_selection, set_status
from core.store.workspace import Workspace
from pages._retrieval_parts import Search, embedder_ui, query_ui, search_ui
from pages._session import refresh, view, workspace
from pages._widgets import GridKeys, launch_button, review_grid


def candidate_caption(r: pd.Series) -> str:
    """'#id · d=distance · weak: label · for #source' (the parts that are known)."""
    parts = [f"#{r.image_id}"]
    if pd.notna(r.distance):
        parts.append(f"d={r.distance:.3g}")
    if isinstance(r.weak_label_name, str):
        parts.append(f"weak: {r.weak_label_name}")
    if pd.notna(r.source_image_id):
        parts.append("for upload" if r.source_image_id < 0 else f"for #{int(r.source_image_id)}")
    return " · ".join(parts)


def candidate_decisions(searched_for: tuple) -> dict[int, dict]:
    """The person's decisions on the unsaved candidates, {image_id: {"status", "label"}}: the one place they
    are kept, emptied when the search changes."""
    review = st.session_state.get("retr_review")
    if review is None or review["searched_for"] != searched_for:
        review = st.session_state["retr_review"] = {"searched_for": searched_for, "decisions": {}}
    return review["decisions"]


def review_candidates(ws: Workspace, candidates: pd.DataFrame, decisions: dict[int, dict], search: Search,
                      info: IndexInfo, classes: list[str]) -> None:
    """The unsaved candidates in the review grid, then saving them as a selection and retraining with it."""
    def decide(image_ids: list[int], *, status: str | None = None, label: int | None = None) -> None:
        for iid in image_ids:
            d = decisions.setdefault(iid, {})
            if status is not None:
                d["status"] = status
            if label is not None:
                d["label"] = label

    st.subheader(f"{len(candidates)} candidates")
    items = queries.candidate_items(candidates, decisions)
    keys = GridKeys("retr_accept_all", "retr_reject_all", "retr_reset", "retr_bulk_label", "retr_relabel_all",
                    "retr_page", status="cand_status_", label="cand_label_")
    _, n_rej = review_grid(ws, items, classes, keys=keys, decide=decide, reset=decisions.clear,
                           caption=candidate_caption)
    s1, s2 = st.columns([3, 1])
    default_name = f"dcd-{search.embedder_id.split(':')[-1]}-k{search.k}-b{search.budget}"
    name = s1.text_input("Selection name", value=default_name, key="retr_name")
    if s2.button("Save as debug-train selection", type="primary", key="retr_save"):
        if items.label.isna().any():
            st.error(f"{int(items.label.isna().sum())} candidate(s) have no label: relabel them first.")
        else:
            params = {"k": search.k, "budget": search.budget, "label_policy": search.label_policy,
                      "embedder_id": search.embedder_id, "reviewed": True,
                      "sources": [int(s) for s in candidates.source_image_id.unique()]}
            sel = save_selection(ws, name.strip() or default_name, "dcd", items, params=params, index_info=info)
            refresh()
            st.session_state["retr_saved"] = sel.selection_id
            st.success(f"Saved selection `{sel.selection_id}` ({len(items) - n_rej} images to train with).")
    if st.session_state.get("retr_saved"):
        launch_button(ws, f"Retrain the classifier with `{st.session_state['retr_saved']}`", "retrain",
                      ["--selection-id", st.session_state["retr_saved"]], key="retr_launch_retrain")


def review_saved(ws: Workspace, classes: list[str]) -> None:
    """A saved selection in the review grid; each decision is written to the workspace."""
    sels = view(queries.selections)
    if sels.empty:
        st.info("No selections yet: find candidates and save them, or run the select job.")
        return
    by_id = sels.set_index("selection_id")
    sel_id = st.selectbox("Selection", sels.selection_id.tolist(), key="retr_saved_sel",
                          format_func=lambda s: "{} · {} ({} images, {} accepted, {} rejected)".format(
                              *by_id.loc[s, ["name", "method", "n_items", "n_accepted", "n_rejected"]]))
    items = view(queries.selection_review, sel_id)

    def decide(image_ids: list[int], *, status: str | None = None, label: int | None = None) -> None:
        if status is not None:
            set_status(ws, sel_id, image_ids, status)
        if label is not None:
            relabel(ws, sel_id, image_ids, label)
        refresh()

    keys = GridKeys("retr_saved_accept", "retr_saved_reject", "retr_saved_reset", "retr_saved_bulk_label",
                    "retr_saved_relabel", "retr_saved_page", status=f"saved_status_{sel_id}_",
                    label=f"saved_label_{sel_id}_")
    review_grid(ws, items, classes, keys=keys, decide=decide, caption=candidate_caption,
                reset=lambda: decide(items.image_id.astype(int).tolist(), status="proposed"))
    launch_button(ws, f"Retrain the classifier with `{sel_id}`", "retrain", ["--selection-id", sel_id],
                  key="retr_saved_retrain")


# -- the page -------------------------------------------------------------------------------------

ws = workspace()
st.title("Retrieval (DCD)")
st.caption("For each error-sample image, its nearest neighbours in the weakly labelled pool, searched in an "
           "embedder's feature space. Review them and save the result as a debug-train selection.")
classes = ws.class_names()
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
