"""Overview: the workspace's story in one screen. The failure (a few of its images), what each fix did to it
and to everything else (core.app.story: n, 95% interval, verdict), one sentence from the numbers, chance
level, and the classifier under debug, which can be changed here. Dataset, models and jobs below."""

from __future__ import annotations

import streamlit as st

from core.app import before_after, job_summary, names, queries, story
from core.app.job_summary import duration_text
from core.models.catalog import set_current_classifier
from core.store.workspace import Workspace
from pages._session import refresh, view, workspace
from pages._story import outcome_box, outcome_word, retrieval_caption, scorecard_ui
from pages._widgets import fix_in_progress, gallery


def failure_ui(ws: Workspace, tale: dict) -> None:
    """A few images of the failure that the reference gets wrong."""
    ref = tale["reference"]
    shown = view(before_after.failure_examples, ref, limit=4)
    what = f": {tale['failure_name']}" if tale["failure_name"] else ""
    st.markdown(f"**The failure{what}**, as {tale['names'].get(ref, ref)} sees it")
    gallery(ws, shown, lambda r: f"{r.label_name}, taken for {r.pred_name} ({100 * r.confidence:.0f}%)", width=88)


def headline_ui(ws: Workspace, tale: dict) -> None:
    """The reference in a sentence, then the lead fix's sentence coloured by its outcome, then the others."""
    st.markdown(tale["reference_sentence"])
    st.caption(f"{tale['num_classes']} classes: guessing scores {story.pct(story.chance_level(tale['num_classes']))}. "
               "Every change below carries its 95% interval; *within noise* means it could be chance.")
    lead = tale["headline"]
    if lead is None:
        if job_summary.fix_jobs_running(ws):
            fix_in_progress(ws)
        else:
            st.info("No fix yet: find debug-train images on **Retrieval (DCD)** and retrain, or run the pipeline "
                    "on the Jobs page.")
        return
    outcome_box(tale, lead)
    others = [m for m in tale["fixes"] if m != lead]
    if others:
        with st.expander(f"What the other {len(others)} fix{'es' if len(others) > 1 else ''} did"):
            for m in others:
                st.markdown(f"- **{outcome_word(tale, m)}**: {tale['sentences'][m]}")
                retrieval_caption(tale, m)


def current_ui(ws: Workspace, tale: dict) -> None:
    """The classifier under debug, and making another one current."""
    ids = view(queries.classifier_ids)
    current = view(queries.current_classifier_id)
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    pick = c1.selectbox("Classifier under debug (the default of every page and job)", ids,
                        index=ids.index(current) if current in ids else 0, key="overview_current",
                        format_func=lambda m: tale["names"].get(m, m) + ("  · current" if m == current else ""))
    if ws.read_only:
        c2.caption("viewer mode: the current classifier is set in the full app")
    elif c2.button("Make current", key="overview_make_current", disabled=pick == current, width="stretch"):
        set_current_classifier(ws, pick)
        refresh()
        st.session_state["overview_made_current"] = pick
        st.rerun()
    made = st.session_state.pop("overview_made_current", None)
    if made:
        st.success(f"{tale['names'].get(made, made)} is now the current classifier.")


def details_ui() -> None:
    """The dataset, every model and the latest jobs."""
    with st.expander("Dataset, models and latest jobs"):
        st.markdown("**Dataset**")
        st.dataframe(view(queries.split_class_table), hide_index=True, key="overview_counts")
        st.caption("Images per split and class (pool images by their weak label). error_sample: the few images "
                   "of the failure we retrieve for; error_heldout: where success is measured.")
        models = view(queries.models_table)
        st.markdown("**Models**")
        if models.empty:
            st.info("No models yet.")
        else:
            shown = models.assign(current=models.current.map({True: "★ current", False: ""}))
            st.dataframe(shown[["name", "current", "parent", "test_acc", "error_heldout_acc", "role", "created_at",
                                "model_id"]], hide_index=True, key="overview_models",
                         column_config={"name": "model", "parent": "fine-tuned from", "current": "",
                                        "test_acc": st.column_config.NumberColumn("test", format="percent"),
                                        "error_heldout_acc": st.column_config.NumberColumn("failure (debug-heldout)",
                                                                                          format="percent")})
        st.markdown("**Latest jobs**")
        jobs = view(queries.jobs_table, limit=5)
        if jobs.empty:
            st.info("No jobs yet: launch one from the Jobs page.")
        else:
            model_names, sel_names = view(names.model_names), view(names.selection_names)
            jobs = jobs.assign(job=[names.job_name(k, a.split(), models=model_names, selections=sel_names)
                                    for k, a in zip(jobs.kind, jobs.args)],
                               elapsed=jobs.elapsed_s.map(duration_text))
            st.dataframe(jobs[["job", "state", "progress", "elapsed", "created", "message", "job_id"]],
                         hide_index=True, key="overview_jobs",
                         column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0,
                                                                                    max_value=1)})
        st.page_link("pages/jobs.py", label="All jobs →")


ws = workspace()
st.title("Overview")
tale = view(before_after.overview_story)
if tale["reference"] is None:
    if job_summary.fix_jobs_running(ws):  # the demo or the pipeline is training the classifier
        fix_in_progress(ws)
    else:
        st.warning("No classifier yet: run the pipeline (or the train job) on the Jobs page.")
else:
    left, right = st.columns([2, 3])
    with left:
        failure_ui(ws, tale)
    with right:
        headline_ui(ws, tale)
    st.subheader("Before → after: the failure and everything else")
    scorecard_ui(tale, key="overview")
    current_ui(ws, tale)
details_ui()
