"""The query part of the Retrieval page: the embedder, the search options and the images to search for,
returned as the candidates to review (pages/retrieval.py reviews them)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st
from PIL import Image

from core.app import names, queries
from core.dcd.index import IndexInfo
from core.dcd.retrieval import DEFAULT_PAIR_LABEL_POLICY, PAIR_LABEL_POLICIES
from core.dcd.strategies import search_size
from core.models.catalog import CLASSIFIER_EMBEDDER_PREFIX, split_embedder_id
from core.store.workspace import Workspace
from pages._session import UPLOAD_MAX_BYTES, find_candidates, find_candidates_for_upload, pool_index, view
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


def search_ui(embedder_id: str) -> Search:
    """Neighbours, budget and label policy (defaults as in the select job: core.dcd.strategies.search_size)."""
    counts = view(queries.split_class_table).set_index("split")["total"]
    n_es, n_pool = max(1, int(counts.get("error_sample", 0))), max(1, int(counts.get("pool", 0)))
    default = search_size(n_es, n_pool)
    c1, c2, c3 = st.columns(3)
    neighbours = c1.number_input("Neighbours per image", 1, 1000, min(1000, default.neighbours), key="retr_neighbours")
    budget = c2.number_input("Budget: most images to select", 1, n_pool, min(default.budget, n_pool),
                             key="retr_budget")
    policy = c3.radio("Label to train with", list(PAIR_LABEL_POLICIES), key="retr_policy", horizontal=True,
                      index=PAIR_LABEL_POLICIES.index(DEFAULT_PAIR_LABEL_POLICY), format_func=POLICY_NAMES.get,
                      help="'both agree' keeps only the pool images whose weak label is the error image's label")
    return Search(embedder_id, int(neighbours), int(budget), policy)


SCOPES = {"all": "all {n} error-sample images", "wrong": "the {n_wrong} the current classifier gets wrong",
          "some": "images I choose"}


def query_ui(ws: Workspace, search: Search, classes: list[str]) -> tuple[pd.DataFrame, tuple] | None:
    """(candidates, what they were searched for) for chosen error-sample images or an upload, else None."""
    source = st.radio("Query", ["error sample", "upload"], key="retr_source", horizontal=True,
                      format_func={"error sample": "Error-sample images", "upload": "Upload an image"}.get)
    opts = {"neighbours": search.neighbours, "budget": search.budget, "label_policy": search.label_policy}
    if source == "error sample":
        chosen = sources_ui(ws)
        if not chosen:
            return None
        return find_candidates(ws, search.embedder_id, chosen, **opts), (search, tuple(chosen))
    up = st.file_uploader("An image of the failure mode", type=["png", "jpg", "jpeg", "webp", "bmp"],
                          key="retr_upload")
    label = st.selectbox("Its label (used with 'error image's label' and 'both agree')", range(len(classes)),
                         format_func=lambda c: classes[c], key="retr_upload_label")
    if up is None:
        return None
    data = up.getvalue()
    if len(data) > UPLOAD_MAX_BYTES:
        st.error(f"{up.name} is {len(data) / 2**20:.1f} MB; upload an image of at most {UPLOAD_MAX_BYTES // 2**20} MB.")
        return None
    try:
        found = find_candidates_for_upload(ws, search.embedder_id, data, label=label, **opts)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # not an image, truncated, too large
        st.error(f"{up.name} cannot be used as a query image: {str(exc).splitlines()[0][:300]}")
        return None
    st.image(data, width=128, caption=up.name)
    return found, (search, hash(data), label)


def source_text(r) -> str:
    """'waterbird, taken for landbird ✗' / 'waterbird ✓' / 'waterbird' (no prediction): an error-sample image."""
    if not isinstance(r.pred_name, str):
        return str(r.label_name)
    return f"{r.label_name} ✓" if r.correct else f"{r.label_name}, taken for {r.pred_name} ✗"


def sources_ui(ws: Workspace) -> list[int]:
    """The error-sample images to search for: all (as the select job does), the misclassified ones, or some
    chosen by hand (shown only then, so the page does not open on a wall of chips)."""
    es = view(queries.error_sample_images, view(queries.current_classifier_id))
    if es.empty:
        st.warning("The workspace has no error-sample images: ingest some (split 'error_sample').")
        st.stop()
    wrong = es[es.correct == False]  # noqa: E712 (nullable column)
    scopes = [s for s in SCOPES if s != "wrong" or 0 < len(wrong) < len(es)]
    scope = st.radio("Search for", scopes, key="retr_scope", horizontal=True,
                     format_func=lambda s: SCOPES[s].format(n=len(es), n_wrong=len(wrong)),
                     help="The select job searches for all of them. Each image's candidates are shown beside it below.")
    if scope == "all":
        return es.image_id.astype(int).tolist()
    if scope == "wrong":
        return wrong.image_id.astype(int).tolist()
    describe = {int(r.image_id): f"#{r.image_id} · {source_text(r)}" for r in es.itertuples()}
    chosen = st.multiselect("Error-sample images", list(describe), key="retr_sources", format_func=describe.get,
                            placeholder="Choose the images to search for")
    gallery(ws, es[es.image_id.isin(chosen)], lambda r: describe[int(r.image_id)], width=80)
    return [int(i) for i in chosen]
