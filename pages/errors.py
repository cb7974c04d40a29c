"""Errors: where the classifier is wrong: confusion matrix, accuracy per group and class, confident mistakes."""

from __future__ import annotations

import streamlit as st

from core.app import charts, queries
from pages._session import view, workspace
from pages._widgets import gallery, pct

ws = workspace()
st.title("Errors")

classifiers = view(queries.classifier_ids)
if not classifiers:
    st.warning("No classifier yet: run the train job (Jobs page) or the pipeline.")
    st.stop()
current = view(queries.current_classifier_id)
labels = view(queries.model_labels, classifiers)
c1, c2 = st.columns(2)
model_id = c1.selectbox("Classifier", classifiers, index=classifiers.index(current) if current in classifiers else 0,
                        format_func=lambda m: labels.get(m, m) + (" · current" if m == current else ""),
                        key="errors_model")
splits = view(queries.predicted_splits, model_id)
if not splits:
    st.info(f"No predictions of `{model_id}` yet: run the predict (or evaluate) job.")
    st.stop()
split = c2.selectbox("Evaluation set", splits, key="errors_split",
                     index=splits.index("error_heldout") if "error_heldout" in splits else 0)

conf = view(queries.confusion, model_id, split)
n_total = int(conf.n.sum())
n_wrong = int(conf.loc[conf.label != conf.pred, "n"].sum())
m1, m2, m3 = st.columns(3)
m1.metric("Images", f"{n_total:,}")
m2.metric("Mistakes", f"{n_wrong:,}")
m3.metric("Accuracy", pct(1 - n_wrong / n_total if n_total else None))

left, right = st.columns([3, 2])
with left:
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
    if cells:
        wrong = [c for c in cells if c[0] != c[1]]
        default = wrong[0] if wrong else cells[0]
        if st.session_state.get("errors_cell") not in cells:
            st.session_state["errors_cell"] = default
        cell = st.selectbox("Cell (click the matrix, or choose)", cells, key="errors_cell",
                            format_func=lambda c: f"true {names[c[0]]} → predicted {names[c[1]]} "
                                                  f"({int(conf.loc[(conf.label == c[0]) & (conf.pred == c[1]), 'n'].iloc[0])})")
with right:
    tab_g, tab_c = st.tabs(["Per group", "Per class"])
    with tab_g:
        acc_g = view(queries.accuracy_by, model_id, split, by="group")
        st.altair_chart(charts.accuracy_bars(acc_g), key="errors_groups_chart")
        st.dataframe(acc_g.rename(columns={"key": "group"}), hide_index=True, key="errors_groups",
                     column_config={"accuracy": st.column_config.NumberColumn(format="percent")})
    with tab_c:
        acc_c = view(queries.accuracy_by, model_id, split, by="class")
        st.altair_chart(charts.accuracy_bars(acc_c), key="errors_classes_chart")
        st.dataframe(acc_c.rename(columns={"key": "class"}), hide_index=True, key="errors_classes",
                     column_config={"accuracy": st.column_config.NumberColumn(format="percent")})

if cells:
    label, pred = st.session_state["errors_cell"]
    st.subheader(f"Images: true {names[label]}, predicted {names[pred]}")
    imgs = view(queries.cell_images, model_id, split, label, pred, limit=24)
    gallery(ws, imgs, lambda r: f"#{r.image_id} · conf {r.confidence:.2f}" +
            (f" · {r.group_name}" if r.group_name else ""), columns=8)

st.subheader("Most confident mistakes")
limit = st.slider("How many", 6, 60, 18, step=6, key="errors_limit")
mistakes = view(queries.confident_mistakes, model_id, split, limit=limit)
if mistakes.empty:
    st.success(f"No mistakes on {split}.")
else:
    gallery(ws, mistakes, lambda r: f"label {r.label_name} · pred {r.pred_name} ({r.confidence:.2f})", columns=6)
    with st.expander("As a table"):
        st.dataframe(mistakes.drop(columns=["path"]), hide_index=True, key="errors_mistakes")
