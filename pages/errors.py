"""Errors: where the classifier is wrong (confusion matrix, accuracy per group, metadata value and class,
confident mistakes; a confusion cell, or images picked in the galleries, named as a failure and fixed,
core.dcd.failure), and where the labels are (label issues of the train and pool images, with a person's
decisions)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.app import breakdowns, charts, queries
from core.store.workspace import Workspace
from pages._label_issues import label_issues_ui
from pages._picking import fix_failure_ui, name_picked_ui, pick_box, picking_ui
from pages._session import view, workspace
from pages._widgets import BREAKDOWN_NOTE, breakdown_ui, gallery, launch_button, pct


def model_and_set_ui() -> tuple[str, str] | None:
    """The classifier and evaluation set chosen, or None (after saying what to run)."""
    classifiers = view(queries.classifier_ids)
    if not classifiers:
        st.warning("No classifier yet: run the train job (Jobs page) or the pipeline.")
        return None
    current = view(queries.current_classifier_id)
    labels = view(queries.model_labels, classifiers)
    c1, c2 = st.columns(2)
    model_id = c1.selectbox("Classifier", classifiers, index=classifiers.index(current) if current in classifiers else 0,
                            format_func=lambda m: labels.get(m, m) + (" · current" if m == current else ""),
                            key="errors_model")
    splits = view(queries.predicted_splits, model_id)
    if not splits:
        st.info(f"No predictions of `{model_id}` yet: run the predict (or evaluate) job.")
        return None
    split = c2.selectbox("Evaluation set", splits, key="errors_split",
                         index=splits.index("error_heldout") if "error_heldout" in splits else 0)
    return model_id, split


def confusion_ui(conf: pd.DataFrame) -> tuple[int, int] | None:
    """The confusion matrix and the cell chosen (a click on the matrix, or the select box)."""
    st.subheader("Confusion matrix")
    event = st.altair_chart(charts.confusion_chart(conf), on_select="rerun", key="errors_confusion",
                            selection_mode=charts.CONFUSION_SELECTION)
    picked = (event or {}).get("selection", {}).get(charts.CONFUSION_SELECTION) or []
    cells = [(int(r.label), int(r.pred)) for r in conf.itertuples() if r.n > 0]
    names = dict(zip(conf.label, conf.label_name))
    if picked:  # a click on the chart chooses the cell shown below
        clicked = (int(picked[0]["label"]), int(picked[0]["pred"]))
        if clicked in cells:
            st.session_state["errors_cell"] = clicked
    if not cells:
        return None
    wrong = [c for c in cells if c[0] != c[1]]
    if st.session_state.get("errors_cell") not in cells:
        st.session_state["errors_cell"] = wrong[0] if wrong else cells[0]
    n_of = {(int(r.label), int(r.pred)): int(r.n) for r in conf.itertuples()}
    return st.selectbox("Cell (click the matrix, or choose)", cells, key="errors_cell",
                        format_func=lambda c: f"true {names[c[0]]} → predicted {names[c[1]]} ({n_of[c]})")


def accuracy_ui(model_id: str, split: str) -> None:
    """Accuracy per group or metadata value (with n and a 95% interval), and per class, worst first."""
    by_value, by_class = st.tabs(["Per group or metadata", "Per class"])
    with by_value:
        column = breakdown_ui(key="errors_breakdown")
        if column is not None:
            acc = view(breakdowns.accuracy_breakdown, model_id, split, column)
            in_order = view(breakdowns.column_kind, column) != "text"
            st.altair_chart(charts.accuracy_bars(acc, key="value", what=column, in_order=in_order),
                            key="errors_breakdown_chart")
            st.dataframe(acc.rename(columns={"value": column}), hide_index=True, key="errors_breakdown_table",
                         column_order=[column, "n", "accuracy", "low", "high"],
                         column_config={"accuracy": st.column_config.NumberColumn(format="percent"),
                                        "low": st.column_config.NumberColumn("95% from", format="percent"),
                                        "high": st.column_config.NumberColumn("to", format="percent")})
            st.caption(BREAKDOWN_NOTE)
    with by_class:
        acc = view(queries.accuracy_by, model_id, split, by="class")
        st.altair_chart(charts.accuracy_bars(acc, what="class"), key="errors_classes_chart")
        st.dataframe(acc.rename(columns={"key": "class"}), hide_index=True, key="errors_classes",
                     column_config={"accuracy": st.column_config.NumberColumn(format="percent")})


def fix_cell_ui(ws: Workspace, model_id: str, split: str, label: int, pred: int, n: int) -> None:
    """Name the chosen cell as a failure (the failure job), then fix it (the pipeline with ``--failure``)."""
    from core.dcd.failure import CELL_SPLITS, cell_failure

    st.subheader("Fix this failure")
    if split not in CELL_SPLITS:
        st.caption(f"A failure is named on {' or '.join(CELL_SPLITS)}: the classifier trained on train, and DCD "
                   f"draws from the pool.")
        return
    if n < 2:
        st.info("This cell has fewer than 2 images: nothing to search with and measure on.")
        return
    found = view(cell_failure, model_id, label, pred, splits=[split])
    if found is None:
        st.caption(f"Splits its {n} images: half to search the pool with, half held out (never trained on) to "
                   f"measure the fix on. Then the fix can start here.")
        launch_button(ws, "Name this cell as a failure", "failure",
                      ["--cell", f"{label}:{pred}", "--splits", split, "--classifier-id", model_id],
                      key=f"errors_name_{model_id}_{split}_{label}_{pred}")
        return
    fix_failure_ui(ws, found, model_id=model_id, key="errors")


def mistakes_ui(ws: Workspace) -> None:
    """The classifier's mistakes on an evaluation set."""
    chosen = model_and_set_ui()
    if chosen is None:
        return
    model_id, split = chosen
    conf = view(queries.confusion, model_id, split)
    n_total = int(conf.n.sum())
    n_wrong = int(conf.loc[conf.label != conf.pred, "n"].sum())
    m1, m2, m3 = st.columns(3)
    m1.metric("Images", f"{n_total:,}")
    m2.metric("Mistakes", f"{n_wrong:,}")
    m3.metric("Accuracy", pct(1 - n_wrong / n_total if n_total else None))
    left, right = st.columns([3, 2])
    with left:
        cell = confusion_ui(conf)
    with right:
        accuracy_ui(model_id, split)
    picking = picking_ui(ws, PICKS)
    if cell is not None:
        names = dict(zip(conf.label, conf.label_name))
        label, pred = cell
        st.subheader(f"Images: true {names[label]}, predicted {names[pred]}")
        imgs = view(queries.cell_images, model_id, split, label, pred, limit=24)
        gallery(ws, imgs, lambda r: f"#{r.image_id} · conf {r.confidence:.2f}" +
                (f" · {r.group_name}" if r.group_name else ""), columns=6 if picking else 8,
                below=pick_box(PICKS, "errors_pick_cell_") if picking else None)
        if label != pred:
            n_cell = int(conf.loc[(conf.label == label) & (conf.pred == pred), "n"].sum())
            fix_cell_ui(ws, model_id, split, label, pred, n_cell)
    st.subheader("Most confident mistakes")
    limit = st.slider("How many", 6, 60, 18, step=6, key="errors_limit")
    mistakes = view(queries.confident_mistakes, model_id, split, limit=limit)
    if mistakes.empty:
        st.success(f"No mistakes on {split}.")
    else:
        gallery(ws, mistakes, lambda r: f"label {r.label_name} · pred {r.pred_name} ({r.confidence:.2f})",
                columns=6, below=pick_box(PICKS, "errors_pick_mistake_") if picking else None)
        with st.expander("As a table"):
            st.dataframe(mistakes.drop(columns=["path"]), hide_index=True, key="errors_mistakes")
    if picking:
        st.subheader("Picked images")
        name_picked_ui(ws, PICKS, model_id=model_id)


PICKS = "errors_picks"  # the images picked in this page's galleries (pages/_picking.py)

ws = workspace()
st.title("Errors")
tab_mistakes, tab_labels = st.tabs(["Mistakes", "Label issues"])
with tab_mistakes:
    mistakes_ui(ws)
with tab_labels:
    label_issues_ui(ws)
