"""Before / after: classifiers against a reference on the failure and on everything else (test, train, the
worst group, each group and slice), each change with n, its 95% interval and a verdict; the same per value of
a group or metadata column; the sentence that tells each fix; a mitigation's choice; exports and the slice
report."""

from __future__ import annotations

from functools import partial

import streamlit as st

from core.app import before_after, breakdowns, queries, story
from core.app.job_summary import fix_jobs_running
from core.app.report import comparison_csv, comparison_html
from core.app.slice_report import report_filename, slices_fixed_by
from core.app.slice_report_page import render_slice_report
from pages._session import view, workspace
from pages._story import outcome_box, scorecard_ui, short_names
from pages._widgets import breakdown_ui, fix_in_progress


def mitigation_part(model_ids: list[str], labels: dict[str, str]) -> None:
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


def breakdown_part(tale: dict) -> None:
    """Each classifier beside the reference on every value of a group or metadata column, on one evaluation set:
    n, accuracy and each change with its 95% interval and verdict, as the scorecard shows them."""
    ids = [tale["reference"], *tale["fixes"]]
    c1, c2 = st.columns(2)
    with c1:
        column = breakdown_ui(key="compare_breakdown")
    splits = view(queries.predicted_splits, tale["reference"])
    if column is None or not splits:
        return
    split = c2.selectbox("Evaluation set", splits, index=splits.index("test") if "test" in splits else 0,
                         key="compare_breakdown_split")
    cmp, set_names = view(breakdowns.breakdown_comparison, ids, tale["reference"], split, column)
    cells, verdicts = story.scorecard(cmp, ids, names=short_names(tale), set_names=set_names, kinds=["other"])
    cells, verdicts = (f.rename(columns={"eval set": column}) for f in (cells, verdicts))
    st.dataframe(story.style_scorecard(cells, verdicts), hide_index=True, key="compare_breakdown_table",
                 width="stretch", height=min(35 * (len(cells) + 1) + 3, 600))
    st.caption(f"Accuracy of each classifier per {column} on {split}; each change against "
               f"{tale['names'].get(ids[0], ids[0])} with ± half its 95% interval (▲ gain, ▼ regression, ≈ within "
               "noise). "
               "Numbers are cut into up to 5 bins of about as many images each, dates into months (or years).")


ws = workspace()
st.title("Before / after")

classifiers = view(queries.classifier_ids)
if len(classifiers) < 2 and fix_jobs_running(ws):  # the fix is being made: say so, and show it when it lands
    fix_in_progress(ws)
elif len(classifiers) < 2:
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
tale = view(before_after.comparison_story, chosen, reference)
if tale["comparison"].empty:
    st.info("No metrics for these classifiers yet: run the evaluate job.")
    st.stop()

st.caption(f"Against **{labels.get(reference, reference)}**, on the failure and on everything else. "
           f"{tale['num_classes']} classes: guessing scores {100 / tale['num_classes']:.0f}%. A change counts "
           "only when its whole 95% interval lies on one side of 0; otherwise it is *within noise*.")
for m in tale["fixes"]:
    outcome_box(tale, m)

st.subheader("Every evaluation set")
scorecard_ui(tale, key="compare")
st.subheader("By group or metadata")
breakdown_part(tale)
mitigation_part(chosen, labels)

names = short_names(tale)
d1, d2 = st.columns(2)
d1.download_button("Download CSV", comparison_csv(tale["comparison"], names=names, set_names=tale["set_names"]),
                   file_name="before-after.csv", mime="text/csv", key="compare_csv",
                   help="One row per classifier and eval set: value, n, the reference's value, the change, its "
                        "95% interval and the verdict")
d2.download_button("Download HTML report", comparison_html(tale, workspace=str(ws.root), names=names),
                   file_name="before-after.html", mime="text/html", key="compare_html",
                   help="One self-contained page: each fix's sentence and the coloured table")

fixed = view(slices_fixed_by, chosen)
if fixed:
    run_rank = st.selectbox("Slice report: a slice these classifiers fix", fixed, key="compare_slice",
                            format_func=lambda t: f"slice #{t[1]} of {t[0]}")
    st.download_button("Download report (HTML)", partial(render_slice_report, ws, *run_rank),
                       file_name=report_filename(*run_rank), mime="text/html", key="compare_slice_report",
                       help="One self-contained page for stakeholders: mosaic, annotation, fix, before/after")
