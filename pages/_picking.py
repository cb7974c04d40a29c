"""Images a person picks as a failure, and fixing a failure: tick images under a gallery (the Errors and Slices
pages), name them as a failure (the failure job, core.dcd.failure.failure_from_images), then fix it (the
pipeline with ``--failure``). The jobs write the workspace; these widgets only launch them."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from core.dcd.failure import Failure, picked_failure, picking_problem
from core.store.workspace import Workspace
from pages._session import view
from pages._widgets import launch_button


def picking_ui(ws: Workspace, key: str) -> bool:
    """Whether the galleries below show a tick box under each image (a toggle, off by default; never for a
    viewer, who launches no job)."""
    if ws.read_only:
        return False
    return st.toggle("Pick images to name as a failure", key=f"{key}_on",
                     help="Tick the images that show what the classifier gets wrong; they become a failure whose "
                          "images the pool is searched with (half of them held out to measure the fix on)")


def picked(key: str) -> set[int]:
    """The image ids picked under ``key`` (kept while the person moves between cells and pages of images)."""
    return st.session_state.setdefault(f"{key}_picked", set())


def _toggle(key: str, image_id: int, box: str) -> None:
    chosen = picked(key)
    if st.session_state[box]:
        chosen.add(image_id)
    else:
        chosen.discard(image_id)


def pick_box(key: str, gallery_key: str) -> Callable[[pd.Series], None]:
    """A gallery's ``below``: a tick box under each image, keyed ``<gallery_key><image_id>`` (one gallery's
    keys apart from another's, so an image shown in two galleries has a box in each)."""
    def below(r: pd.Series) -> None:
        iid = int(r.image_id)
        box = f"{gallery_key}{iid}"
        st.session_state[box] = iid in picked(key)
        st.checkbox("pick", key=box, label_visibility="collapsed", on_change=_toggle, args=(key, iid, box))

    return below


def name_picked_ui(ws: Workspace, key: str, *, model_id: str) -> None:
    """The picked images named as a failure (the failure job), refused with the reason for pool or unlabelled
    images, then its fix once the job has stored it."""
    ids = sorted(picked(key))
    if not ids:
        st.caption("Tick images in the galleries above to name them as a failure.")
        return
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    c1.markdown(f"**{len(ids)} image(s) picked**: {', '.join(f'#{i}' for i in ids[:20])}"
                + (" ..." if len(ids) > 20 else ""))
    if c2.button("Clear the picks", key=f"{key}_clear"):
        picked(key).clear()
        st.rerun()
    problem = view(picking_problem, ids)
    if problem:
        st.error(f"These images cannot be a failure: {problem}.")
        return
    if len(ids) < 2:
        st.info("Pick at least 2 images: one to search the pool with, one to measure the fix on.")
        return
    found = view(picked_failure, ids)
    if found is None:
        name = st.text_input("Failure name", key=f"{key}_name", placeholder=f"{len(ids)} picked images",
                             help="How the failure, its selections and its fixes are called")
        st.caption(f"Splits the {len(ids)} images: half to search the pool with, half held out (never trained on) "
                   f"to measure the fix on. Then the fix can start here.")
        args = ["--images", *map(str, ids), *(["--name", name.strip()] if name.strip() else [])]
        launch_button(ws, f"Name these {len(ids)} images as a failure", "failure", args, key=f"{key}_launch")
        return
    fix_failure_ui(ws, found, model_id=model_id, key=key)


def fix_failure_ui(ws: Workspace, failure: Failure, *, model_id: str, key: str) -> None:
    """What a stored failure holds, and the button that fixes it: DCD against random, retrained from
    ``model_id`` and compared on Before / after."""
    if failure.heldout_ids:
        measured = (f"{len(failure.heldout_ids)} held out (never trained on) to measure the fix on, as the eval "
                    f"set `{failure.eval_set}` on Before / after")
    else:
        measured = "no held-out part: the fix is measured on test only"
    st.caption(f"Failure {failure.failure_id} ({failure.name}): {len(failure.query_ids)} images to search the pool "
               f"with, {measured}.")
    launch_button(ws, "Collect, retrain and compare with random", "pipeline",
                  ["--failure", failure.failure_id, "--classifier-id", model_id, "--methods", "dcd", "random"],
                  key=f"{key}_fix_{failure.failure_id}")
