"""The Slices page's actions on one slice: collect targeted data for it (DCD from the slice), run the whole
fix (DCD against random, retrained and compared), and mitigate from the run's annotations (CoRM)."""

from __future__ import annotations

import streamlit as st

from core.dcd.slice_targets import get_target
from core.store.workspace import Workspace
from pages._widgets import launch_button


def slice_actions(ws: Workspace, run_id: str, rank: int, *, model_id: str, n_errors: int, annotated: bool) -> None:
    """Buttons that start jobs for slice ``rank`` of ``run_id`` (the Jobs page follows them)."""
    ref = f"{run_id}:{rank}"
    st.subheader("Fix this slice")
    target = get_target(ws, ref)
    if target is not None:
        st.caption(f"Its {len(target.query_ids) + len(target.heldout_ids)} misclassified members are split: "
                   f"{len(target.query_ids)} to search the pool with, {len(target.heldout_ids)} held out (never "
                   f"trained on) to measure the fix on, as the eval set `{target.eval_set}` on Before / after.")
    else:
        st.caption(f"Half of its {n_errors} misclassified members outside train and the pool are searched with; "
                   f"the other half is held out, never trained on, and measures the fix on Before / after.")
    if n_errors < 2:
        st.info("This slice has fewer than 2 misclassified members: nothing to retrieve for.")
    else:
        c1, c2 = st.columns(2)
        with c1:
            launch_button(ws, "Collect targeted data for this slice", "select",
                          ["--from-slice", ref, "--name", f"slice {rank} of {run_id}"], key=f"slice_collect_{ref}")
            st.caption("Retrieves the nearest pool images, leaving out pool labels flagged as label issues "
                       "(found first if the Errors page has none yet); review them on the Retrieval page, then "
                       "retrain.")
        with c2:
            launch_button(ws, "Collect, retrain and compare with random", "pipeline",
                          ["--from-slice", ref, "--classifier-id", model_id, "--methods", "dcd", "random"],
                          key=f"slice_loop_{ref}")
            st.caption("Fine-tunes on DCD's images and on as many random pool images; both appear on Before / "
                       "after (unreviewed images are trained with their labels as retrieved).")
    if annotated:
        launch_button(ws, "Mitigate from this run's annotations (CoRM)", "retrain",
                      ["--mitigate", "corm", "--run-id", run_id, "--classifier-id", model_id],
                      key=f"slice_mitigate_{run_id}")
        st.caption("Fine-tunes with Core Risk Minimization on the slices annotated spurious, and fixes the ones "
                   "annotated mislabeled; the result appears on Before / after.")
