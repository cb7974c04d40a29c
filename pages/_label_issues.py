"""The Errors page's label-issues part: the train and pool images whose labels look wrong (more likely wrong than
right, core.dcd.label_issues), filtered and sorted by score, each with its given and suggested label, and the
decisions a person makes on them (accept the relabel, drop, keep), for one image or for the page shown."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.app import charts
from core.dcd import label_review
from core.store.workspace import Workspace
from pages._session import refresh, view
from pages._widgets import gallery, launch_button

PER_PAGE = 24
SPLIT_CHOICES = ("train", "pool")
DECISION_NAMES = {"relabel": ":material/edit: relabel", "drop": ":material/close: drop",
                  "keep": ":material/check: keep"}
SORT_NAMES = {"score": "lowest score first (most likely wrong)", "-score": "highest score first"}
HOW_TO = ("Compute them with `python -m jobs.label_issues --workspace DIR` or the **label_issues** job on the "
          "Jobs page: out-of-sample probabilities of a head on an embedder's frozen features, then, for each "
          "train label and pool weak label, the probability that it is right under the estimated noise.")


def _decide(ws: Workspace, image_ids: list[int], decision: str | None) -> None:
    label_review.decide(ws, image_ids, decision)
    refresh()


def _from_widget(ws: Workspace, iid: int) -> None:
    _decide(ws, [iid], st.session_state[f"li_decision_{iid}"])


def _caption(r: pd.Series) -> str:
    return (f"#{r.image_id} · {r.split} · given {r.given_name} → {r.suggested_name} · score {r.score:.2f}"
            + (" · flagged" if r.is_issue else ""))


def _decision_widget(ws: Workspace):
    def below(r: pd.Series) -> None:
        iid = int(r.image_id)
        key = f"li_decision_{iid}"
        st.session_state[key] = r.decision if r.decision in DECISION_NAMES else None
        st.segmented_control("decision", list(DECISION_NAMES), key=key, label_visibility="collapsed",
                             format_func=DECISION_NAMES.get, on_change=_from_widget, args=(ws, iid))
    return below


def filters_ui() -> tuple[list[str], bool, str]:
    """The splits chosen, flagged only or not, and the sort order."""
    c1, c2, c3 = st.columns([2, 1, 2])
    splits = c1.multiselect("Splits", list(SPLIT_CHOICES), default=list(SPLIT_CHOICES), key="li_splits")
    flagged = c2.toggle("Flagged only", value=True, key="li_flagged")
    sort = c3.selectbox("Sort by score", list(SORT_NAMES), format_func=SORT_NAMES.get, key="li_sort")
    return splits, flagged, sort


def page_actions_ui(ws: Workspace, ids: list[int]) -> None:
    """Buttons deciding every image of the page shown at once."""
    b1, b2, b3, b4 = st.columns(4)
    b1.button("Accept relabel (page)", key="li_page_relabel", on_click=_decide, args=(ws, ids, "relabel"),
              help="Train these images with the suggested label")
    b2.button("Drop (page)", key="li_page_drop", on_click=_decide, args=(ws, ids, "drop"),
              help="Leave these images out of training (pool: DCD's label policy can drop them)")
    b3.button("Keep (page)", key="li_page_keep", on_click=_decide, args=(ws, ids, "keep"),
              help="The given labels are right")
    b4.button("Undo (page)", key="li_page_undo", on_click=_decide, args=(ws, ids, None),
              help="Back to undecided")


def noise_ui(ws: Workspace) -> None:
    """The noise estimated in each scored split's labels: one sentence each, the matrix on demand."""
    noise = view(label_review.label_noise)
    if noise.empty:
        return
    names = ws.class_names()
    for row in noise.itertuples(index=False):
        st.caption(label_review.noise_sentence(pd.Series(row._asdict()), names))
    with st.expander("Estimated label noise: P(given label | true class)"):
        cols = st.columns(len(noise))
        for col, row in zip(cols, noise.itertuples(index=False)):
            col.altair_chart(charts.noise_chart(label_review.noise_cells(row.noise, names), title=row.split),
                             width="content")


def label_issues_ui(ws: Workspace) -> None:
    """The whole part: counts, filters, a page of images with their decisions; or how to compute them."""
    counts = view(label_review.label_issue_counts)
    if counts.empty:
        st.info("No label issues computed yet. " + HOW_TO)
        launch_button(ws, "Run the label_issues job", "label_issues", key="li_launch")
        return
    st.caption("Images whose given label (train: `label`, pool: `weak_label`) is more likely wrong than right. "
               "Score: the probability that the given label is right (flagged below 0.5). A relabel or drop "
               "takes effect when a classifier is next trained or fine-tuned.")
    st.dataframe(counts, hide_index=True, key="li_counts")
    noise_ui(ws)
    splits, flagged, sort = filters_ui()
    if not splits:
        st.caption("Choose a split.")
        return
    total = view(label_review.count_label_issues, splits=splits, issues_only=flagged)
    n_pages = max(1, -(-total // PER_PAGE))
    page = st.number_input(f"Page (of {n_pages})", 1, n_pages, 1, key="li_page") if n_pages > 1 else 1
    rows = view(label_review.label_issues, splits=splits, issues_only=flagged, sort=sort, limit=PER_PAGE,
                offset=(page - 1) * PER_PAGE)
    st.subheader(f"{total:,} image(s)" + (" flagged" if flagged else ""))
    if rows.empty:
        st.success("No flagged labels in these splits." if flagged else "No images.")
        return
    if ws.read_only:  # a viewer sees each image's decision, and makes none
        gallery(ws, rows, lambda r: f"{_caption(r)} · {DECISION_NAMES.get(r.decision, 'undecided')}", width=110)
    else:
        page_actions_ui(ws, [int(i) for i in rows.image_id])
        gallery(ws, rows, _caption, columns=6, below=_decision_widget(ws), width=110)
    with st.expander("Recompute"):
        st.caption(HOW_TO)
        launch_button(ws, "Run the label_issues job again", "label_issues", key="li_relaunch")
