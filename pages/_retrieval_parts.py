"""The query part of the Retrieval page: the embedder, the query (a stored failure, core.dcd.failure, or
uploaded images), the search options, and the jobs that act on them.

A selection is made one way, by the select job (core.dcd.strategies.select: the label-issue exclusion and
the budget and neighbours resolved as the loop does); the page only previews the nearest pool images of the
query's images, and launches the select job for a failure (``--failure ID``), the pipeline that fixes it,
or the failure job for uploaded images (``--upload-dir``). Jobs write the workspace; the page reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st
from PIL import Image

from core.app import names, queries
from core.data.uploads import UPLOAD_TYPES, save_uploads, upload_problem
from core.dcd.failure import Failure, list_failures
from core.dcd.index import IndexInfo
from core.dcd.retrieval import DEFAULT_PAIR_LABEL_POLICY, PAIR_LABEL_POLICIES
from core.dcd.strategies import search_size
from core.models.catalog import CLASSIFIER_EMBEDDER_PREFIX, split_embedder_id
from core.store.workspace import Workspace
from pages._session import find_candidates, find_candidates_for_upload, pool_index, view
from pages._widgets import gallery, launch_button

POLICY_NAMES = {"weak": "pool's weak label", "source": "error image's label", "agree": "both agree"}
EMBED_ARGS = ["--splits", "error_sample,pool"]


@dataclass(frozen=True)
class Search:
    """What the person asked for: the feature space, neighbours per image, budget and label policy."""

    embedder_id: str
    neighbours: int
    budget: int
    label_policy: str


def embedder_ui(ws: Workspace) -> tuple[str, IndexInfo]:
    """The chosen embedder and its pool index's description; stops the page (offering the embed job) without."""
    emb = view(queries.embedders)
    if emb.empty:
        st.warning("No embeddings yet: run the embed job (it embeds the error sample and the pool and builds the "
                   "pool index).")
        launch_button(ws, "Run the embed job (current classifier's features)", "embed", EMBED_ARGS,
                      key="retr_launch_embed")
        st.stop()
    model_names = view(names.model_names)
    embedder_id = st.selectbox("Embedder", emb.embedder_id.tolist(), key="retr_embedder",
                               format_func=lambda e: names.embedder_name(e, model_names),
                               help="The feature space to search in (the paper finds DINO ViTs find similar "
                                    "images best)")
    found = pool_index(ws, embedder_id)
    if found is None:
        st.warning(f"No pool index for `{embedder_id}` yet: run the embed job (it builds the index).")
        base_id, layers = split_embedder_id(embedder_id)
        args = list(EMBED_ARGS)
        if base_id.startswith(CLASSIFIER_EMBEDDER_PREFIX):
            args += ["--classifier-id", base_id[len(CLASSIFIER_EMBEDDER_PREFIX):]]
        launch_button(ws, "Run the embed job", "embed", [*args, "--embedder-layers", layers], key="retr_launch_index")
        st.stop()
    info = found[1]
    st.caption(f"Pool index: {info.index_type}, {info.n:,} images, {info.dim}-d, recall@{info.recall_k} "
               f"{info.recall_at_k:.3f}")
    return embedder_id, info


def search_ui(embedder_id: str, n_query: int, sized_for: str) -> Search:
    """Neighbours, budget and label policy; the defaults are the select job's for a failure of ``n_query``
    images (core.dcd.strategies.search_size), set again when the query (``sized_for``) changes."""
    counts = view(queries.split_class_table).set_index("split")["total"]
    n_pool = max(1, int(counts.get("pool", 0)))
    default = search_size(max(1, n_query), n_pool)
    if st.session_state.get("retr_sized_for") != sized_for or "retr_neighbours" not in st.session_state:
        st.session_state["retr_sized_for"] = sized_for
        st.session_state["retr_neighbours"] = min(1000, default.neighbours)
        st.session_state["retr_budget"] = min(default.budget, n_pool)
    c1, c2, c3 = st.columns(3)
    neighbours = c1.number_input("Neighbours per image", 1, 1000, key="retr_neighbours")
    budget = c2.number_input("Budget: most images to select", 1, n_pool, key="retr_budget", help=default.note)
    policy = c3.radio("Label to train with", list(PAIR_LABEL_POLICIES), key="retr_policy", horizontal=True,
                      index=PAIR_LABEL_POLICIES.index(DEFAULT_PAIR_LABEL_POLICY), format_func=POLICY_NAMES.get,
                      help="'both agree' keeps only the pool images whose weak label is the error image's label")
    return Search(embedder_id, int(neighbours), int(budget), policy)


QUERIES = {"failure": "A failure", "upload": "Upload images"}


def query_kind_ui() -> str:
    return st.radio("Query", list(QUERIES), key="retr_source", horizontal=True, format_func=QUERIES.get,
                    help="A failure named on the Errors or Slices page (or the error sample), or a few photos of a "
                         "failure seen elsewhere, uploaded with the label they should have")


def failure_ui(ws: Workspace) -> Failure | None:
    """The stored failure to search for (every one the workspace has, by name), or None (after saying how to
    make one)."""
    failures = {f.failure_id: f for f in view(list_failures)}
    if not failures:
        st.info("No failure yet: name a confusion cell or picked images on the Errors page, fix a slice on the "
                "Slices page, or upload images of a failure here.")
        return None
    named = view(names.failure_names)
    ref = st.selectbox("Failure", list(failures), key="retr_failure", format_func=lambda r: named.get(r, r),
                       help="Its query part is searched with (DCD's E_sample); its held-out part, never searched "
                            "with nor trained on, measures each fix")
    return failures[ref]


SCOPES = {"all": "its whole query part ({n})", "wrong": "the {n_wrong} the current classifier gets wrong",
          "some": "images I choose (a preview only)"}


def source_text(r) -> str:
    """'waterbird, taken for landbird ✗' / 'waterbird ✓' / 'waterbird' (no prediction): a query image."""
    if not isinstance(r.pred_name, str):
        return str(r.label_name)
    return f"{r.label_name} ✓" if r.correct else f"{r.label_name}, taken for {r.pred_name} ✗"


def sources_ui(ws: Workspace, failure: Failure) -> list[int]:
    """The images of the failure's query part to preview the neighbours of: all (as the select job searches),
    the misclassified ones, or some chosen by hand (shown only then, so the page does not open on a wall of
    chips)."""
    qs = view(queries.source_images, list(failure.query_ids), view(queries.current_classifier_id))
    wrong = qs[qs.correct == False]  # noqa: E712 (nullable column)
    scopes = [s for s in SCOPES if s != "wrong" or 0 < len(wrong) < len(qs)]
    if st.session_state.get("retr_scope") not in scopes:
        st.session_state["retr_scope"] = "all"
    scope = st.radio("Preview the neighbours of", scopes, key="retr_scope", horizontal=True,
                     format_func=lambda s: SCOPES[s].format(n=len(qs), n_wrong=len(wrong)),
                     help="The select job searches for the whole query part. Each image's candidates are shown "
                          "beside it below.")
    if scope == "all":
        return qs.image_id.astype(int).tolist()
    if scope == "wrong":
        return wrong.image_id.astype(int).tolist()
    describe = {int(r.image_id): f"#{r.image_id} · {source_text(r)}" for r in qs.itertuples()}
    chosen = st.multiselect("Query images", list(describe), key="retr_sources", format_func=describe.get,
                            placeholder="Choose the images to preview the neighbours of")
    gallery(ws, qs[qs.image_id.isin(chosen)], lambda r: describe[int(r.image_id)], width=80)
    return [int(i) for i in chosen]


def failure_preview(ws: Workspace, search: Search, ids: list[int]) -> pd.DataFrame | None:
    """The candidates the select job would find for ``ids`` under the page's options (those of them with a
    vector in the embedder's space; the select job embeds the others first), or None."""
    if not ids:
        return None
    have = view(queries.embedded_ids, search.embedder_id, ids)
    if len(have) < len(ids):
        st.caption(f"{len(ids) - len(have)} of these images have no vector in this embedder's space yet: the "
                   f"select job embeds them first; the preview shows the neighbours of the {len(have)} that have one.")
    if not have:
        return None
    return find_candidates(ws, search.embedder_id, have, neighbours=search.neighbours, budget=search.budget,
                           label_policy=search.label_policy)


def failure_actions(ws: Workspace, failure: Failure, search: Search) -> None:
    """Make the selection for the failure (the select job, as the loop makes it) or fix it (the pipeline)."""
    st.subheader("Make a selection, or fix the failure")
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    name = c1.text_input("Selection name", key="retr_name", placeholder="e.g. birds on the wrong background",
                         help="How the selection and the model retrained on it are called")
    args = ["--failure", failure.failure_id, "--method", "dcd", "--embedder-id", search.embedder_id,
            "--neighbours", str(search.neighbours), "--budget", str(search.budget),
            "--label-policy", search.label_policy, *(["--name", name.strip()] if name.strip() else [])]
    with c2:
        launch_button(ws, "Make this selection", "select", args, key=f"retr_select_{failure.failure_id}")
    st.caption(f"The select job searches for the failure's whole query part ({len(failure.query_ids)} images) with "
               f"these options, leaves out pool images flagged as label issues where the loop does, and adds the "
               f"failure's own images; review it under Saved selections when it lands. Its fixes are measured on "
               f"{failure.measured_on}.")
    current = view(queries.current_classifier_id)
    if current:
        launch_button(ws, "Collect, retrain and compare with random", "pipeline",
                      ["--failure", failure.failure_id, "--classifier-id", current, "--methods", "dcd", "random"],
                      key=f"retr_fix_{failure.failure_id}")
        st.caption("The whole loop for this failure: DCD's images (labelled by the failure's teacher) and as many "
                   "random pool images, each fine-tuning the current classifier; both appear on Before / after.")


def upload_ui(ws: Workspace, search: Search, classes: list[str]) -> tuple[pd.DataFrame, tuple] | None:
    """Uploaded images: each checked (a bad file says why, the others are kept), one previewed, and all named
    as a failure (saved under artifacts/uploads/ and ingested by the failure job). Returns the preview's
    candidates and what they were searched for, or None."""
    ups = st.file_uploader("Images of the failure", type=list(UPLOAD_TYPES), key="retr_upload",
                           accept_multiple_files=True) or []
    label = st.selectbox("The label they should have", range(len(classes)), format_func=lambda c: classes[c],
                         key="retr_upload_label", help="Used with 'error image's label' and 'both agree', and "
                                                       "the label they are stored and trained with")
    files = [(u.name, u.getvalue()) for u in ups]
    good = []
    for name, data in files:
        problem = upload_problem(name, data)
        if problem:
            st.error(f"Not used: {problem}.")
        else:
            good.append((name, data))
    if not good:
        return None
    shown = st.selectbox("Preview the neighbours of", range(len(good)), format_func=lambda i: good[i][0],
                         key="retr_upload_preview") if len(good) > 1 else 0
    name, data = good[shown]
    name_upload_ui(ws, good, classes[label])
    try:
        found = find_candidates_for_upload(ws, search.embedder_id, data, label=label, neighbours=search.neighbours,
                                           budget=search.budget, label_policy=search.label_policy)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # checked above; a model that cannot load
        st.error(f"{name} cannot be searched with: {str(exc).splitlines()[0][:300]}")
        return None
    st.image(data, width=128, caption=name)
    return found, (search, hash(data), label)


def name_upload_ui(ws: Workspace, good: list[tuple[str, bytes]], label: str) -> None:
    """The good uploads named as a failure: saved under the workspace's artifacts/uploads/ and ingested by the
    failure job (no held-out part: measured on test only)."""
    if ws.read_only:
        return
    from core.runner.launcher import launch

    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    name = c1.text_input("Failure name", key="retr_upload_name", placeholder=f"{len(good)} uploaded images of {label}")
    if c2.button(f"Name these {len(good)} images as a failure", key="retr_upload_failure", type="primary"):
        saved = save_uploads(ws, good)
        for problem in saved.refused.values():
            st.error(f"Not used: {problem}.")
        if saved.folder is not None:
            launch(ws, "failure", ["--upload-dir", str(saved.folder), "--label", label,
                                   *(["--name", name.strip()] if name.strip() else [])])
            st.success(f"Started: the failure of {len(saved.saved)} uploaded image(s) of {label}. It is listed "
                       f"under 'A failure' when the job lands.")
            st.page_link("pages/jobs.py", label="Follow it on the Jobs page →")
    st.caption(f"Stored as images of the `uploaded` split labelled {label}, all searched with: a few photos are "
               f"too few to hold some out, so this failure has no held-out part and its fixes are measured on "
               f"test only.")
