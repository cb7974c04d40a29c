"""Before / after: compare classifiers on test, debug-heldout and every group or slice; export the result."""

from __future__ import annotations

from functools import partial

import streamlit as st

from core.app import charts, queries
from core.app.report import comparison_csv, comparison_html
from core.app.slice_report import render_slice_report, report_filename, slices_fixed_by
from pages._session import view, workspace
from pages._widgets import pct

ws = workspace()
st.title("Before / after")

classifiers = view(queries.classifier_ids)
if len(classifiers) < 2:
    st.info("Comparing needs two classifiers: retrain one on a debug-train selection (Jobs page → retrain).")
    if not classifiers:
        st.stop()
labels = view(queries.model_labels, classifiers)
current = view(queries.current_classifier_id)
default = ([current] if current in classifiers else []) + [m for m in classifiers if m != current]
chosen = st.multiselect("Classifiers (the first is the reference: 'before')", classifiers, default=default,
                        format_func=lambda m: labels.get(m, m), key="compare_models")
if not chosen:
    st.info("Pick at least one classifier.")
    st.stop()
reference = chosen[0]

long = view(queries.comparison_long, chosen)
if long.empty:
    st.info("No metrics for these classifiers yet: run the evaluate job.")
    st.stop()
table = queries.comparison_table(long, chosen, reference)

head = table[(table.metric == "accuracy") & table.eval_set.isin(["test", "error_heldout"])].set_index("eval_set")
cols = st.columns(max(1, len(chosen)))
for col, m in zip(cols, chosen):
    with col:
        st.markdown(f"**{labels.get(m, m)}**" + (" · reference" if m == reference else ""))
        for eval_set, what in (("test", "Test"), ("error_heldout", "Debug-heldout")):
            if eval_set in head.index:
                delta = head.loc[eval_set].get(f"Δ {m}")
                st.metric(what, pct(head.loc[eval_set, m]),
                          delta=None if delta is None or delta != delta else f"{100 * delta:+.1f} pt")



def mitigation_part(model_ids: list[str]) -> None:
    """For each model kept by a mitigation choice: which candidate, why, and every candidate's held-out scores."""
    from core.scanner.mitigation_choice import mitigation_summary

    for m in model_ids:
        found = view(mitigation_summary, m)
        if found is None:
            continue
        reason, candidates = found
        st.markdown(f"**Mitigation: {labels.get(m, m)}**")
        st.write(reason)
        st.dataframe(candidates, hide_index=True, key=f"compare_mitigation_{m}", column_config={
            c: st.column_config.NumberColumn(c, format="percent") for c in candidates.columns
            if c not in ("candidate", "kept")})


mitigation_part(chosen)

fmt = {m: st.column_config.NumberColumn(labels.get(m, m), format="percent") for m in chosen}
fmt.update({f"Δ {m}": st.column_config.NumberColumn(f"Δ {m}", format="%+.3f") for m in chosen if m != reference})
st.subheader("Every evaluation set")
st.dataframe(table, hide_index=True, key="compare_table", column_config=fmt)

c1, c2 = st.columns(2)
with c1:
    st.altair_chart(charts.comparison_chart(long, labels), key="compare_chart")
with c2:
    if len(chosen) > 1:
        st.altair_chart(charts.delta_chart(table), key="compare_delta_chart")

d1, d2 = st.columns(2)
d1.download_button("Download CSV", comparison_csv(table), file_name="before-after.csv", mime="text/csv",
                   key="compare_csv")
d2.download_button("Download HTML report", comparison_html(table, chosen, labels=labels, workspace=str(ws.root),
                                                           reference=reference),
                   file_name="before-after.html", mime="text/html", key="compare_html")

fixed = view(slices_fixed_by, chosen)
if fixed:
    run_rank = st.selectbox("Slice report: a slice these classifiers fix", fixed, key="compare_slice",
                            format_func=lambda t: f"slice #{t[1]} of {t[0]}")
    st.download_button("Download report (HTML)", partial(render_slice_report, ws, *run_rank),
                       file_name=report_filename(*run_rank), mime="text/html", key="compare_slice_report",
                       help="One self-contained page for stakeholders: mosaic, annotation, fix, before/after")
