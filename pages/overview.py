"""Overview: the workspace at a glance."""

from __future__ import annotations

import streamlit as st

from core.app import queries
from pages._session import view, workspace
from pages._widgets import pct

ws = workspace()
st.title("Overview")

head = view(queries.headline_metrics)
if head["model_id"] is None:
    st.warning("No classifier yet: run the train job (Jobs page) or the pipeline.")
else:
    st.caption(f"Current classifier: `{head['model_id']}`")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Test accuracy", pct(head["test_acc"]), help=f"{head['n_test'] or 0} test images")
    c2.metric("Debug-heldout accuracy", pct(head["error_heldout_acc"]),
              help=f"{head['n_error_heldout'] or 0} held-out images of the error distribution")
    c3.metric("Worst-group accuracy (test)", pct(head["worst_group_acc"]))
    c4.metric("Balanced accuracy (test)", pct(head["balanced_accuracy"]))
    if head["test_acc"] is None:
        st.info("The current classifier has no metrics yet: run the evaluate job.")

st.subheader("Dataset")
counts = view(queries.split_class_table)
st.dataframe(counts, hide_index=True, key="overview_counts")
st.caption("Images per split and class (pool images by their weak label). error_sample: the few images of "
           "the failure mode we retrieve for; error_heldout: where success is measured.")

st.subheader("Models")
models = view(queries.models_table)
if models.empty:
    st.info("No models yet.")
else:
    st.dataframe(models, hide_index=True, key="overview_models",
                 column_config={"test_acc": st.column_config.NumberColumn("test acc", format="percent"),
                                "error_heldout_acc": st.column_config.NumberColumn("debug-heldout acc",
                                                                                  format="percent")})

st.subheader("Latest jobs")
jobs = view(queries.jobs_table, limit=5)
if jobs.empty:
    st.info("No jobs yet: launch one from the Jobs page.")
else:
    st.dataframe(jobs[["job_id", "kind", "state", "progress", "elapsed_s", "created", "message"]], hide_index=True,
                 key="overview_jobs",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)})
st.page_link("pages/jobs.py", label="All jobs →")
