"""Retrieval (DCD): nearest pool neighbours of error-sample images, reviewed and saved as a debug-train set."""

from __future__ import annotations

import streamlit as st

from core.app.queries import candidate_items
from core.dcd.selection import relabel, save_selection, set_status
from core.dcd.strategies import DEFAULT_LABEL_POLICY, LABEL_POLICIES, default_budget, default_k
from core.models.catalog import CLASSIFIER_EMBEDDER_PREFIX, split_embedder_id
from pages._shared import (
    find_candidates,
    find_candidates_for_upload,
    gallery,
    launch_button,
    pool_index,
    refresh,
    view,
    workspace,
)

POLICY_NAMES = {"weak": "pool's weak label", "source": "error image's label", "agree": "both agree"}

PAGE = 10  # candidates reviewed per page
STATUSES = ["accepted", "rejected"]  # no choice = proposed

ws = workspace()
st.title("Retrieval (DCD)")
st.caption("For each error-sample image, its nearest neighbours in the weakly labelled pool, searched in an "
           "embedder's feature space. Review them and save the result as a debug-train selection.")

current = view("current_classifier_id")
emb = view("embedders")
if emb.empty:
    st.warning("No embeddings yet: run the embed job (it embeds the error sample and the pool and builds the "
               "pool index).")
    launch_button(ws, "Run the embed job (current classifier's features)", "embed",
                  ["--splits", "error_sample,pool"], key="retr_launch_embed")
    st.stop()

classes = ws.class_names()
embedder_id = st.selectbox("Embedder", emb.embedder_id.tolist(), key="retr_embedder",
                           help="The feature space to search in (the paper finds DINO ViTs find similar images best)")
found = pool_index(ws, embedder_id)
if found is None:
    st.warning(f"No pool index for `{embedder_id}` yet: run the embed job (it builds the index).")
    args = ["--splits", "error_sample,pool"]
    base_id, layers = split_embedder_id(embedder_id)
    if base_id.startswith(CLASSIFIER_EMBEDDER_PREFIX):
        args += ["--classifier-id", base_id[len(CLASSIFIER_EMBEDDER_PREFIX):]]
    args += ["--embedder-layers", layers]
    launch_button(ws, "Run the embed job", "embed", args, key="retr_launch_index")
    st.stop()
index, info = found
st.caption(f"Pool index: {info.index_type}, {info.n:,} images, {info.dim}-d, recall@{info.recall_k} "
           f"{info.recall_at_k:.3f}")


def _reset_review() -> None:
    st.session_state["retr_decisions"] = {}
    for key in [k for k in st.session_state if str(k).startswith(("cand_status_", "cand_label_"))]:
        del st.session_state[key]


tab_find, tab_saved = st.tabs(["Find candidates", "Saved selections"])

with tab_find:
    counts = view("split_class_table").set_index("split")["total"]
    n_es, n_pool = int(counts.get("error_sample", 0)), int(counts.get("pool", 0))
    budget0 = default_budget(max(1, n_es), max(1, n_pool))
    c1, c2, c3 = st.columns(3)
    k = c1.number_input("k: neighbours per image", 1, 1000, min(1000, default_k(budget0, max(1, n_es))), key="retr_k")
    budget = c2.number_input("Budget: most images to select", 1, max(1, n_pool), min(budget0, max(1, n_pool)),
                             key="retr_budget")
    policy = c3.radio("Label to train with", list(LABEL_POLICIES), key="retr_policy", horizontal=True,
                      index=LABEL_POLICIES.index(DEFAULT_LABEL_POLICY),
                      format_func=lambda p: POLICY_NAMES[p],
                      help="'both agree' keeps only the pool images whose weak label is the error image's label")

    source = st.radio("Query", ["error sample", "upload"], key="retr_source", horizontal=True,
                      format_func=lambda s: {"error sample": "Error-sample images", "upload": "Upload an image"}[s])
    candidates = None
    try:
        if source == "error sample":
            es = view("error_sample_images", current)
            if es.empty:
                st.warning("The workspace has no error-sample images: ingest some (split 'error_sample').")
                st.stop()
            wrong = es.loc[es.correct == False, "image_id"].tolist()  # noqa: E712 (nullable column)
            options = es.image_id.tolist()
            describe = {r.image_id: f"#{r.image_id} · {r.label_name}" +
                        (f" · pred {r.pred_name} {'✓' if r.correct else '✗'}" if isinstance(r.pred_name, str) else "")
                        for r in es.itertuples()}
            chosen = st.multiselect("Error-sample images", options, default=options, key="retr_sources",
                                    format_func=lambda i: describe.get(i, str(i)),
                                    help=f"{len(wrong)} of {len(es)} are misclassified by the current classifier")
            gallery(ws, es[es.image_id.isin(chosen)], lambda r: describe[r.image_id], width=96)
            if chosen:
                candidates = find_candidates(ws, embedder_id, chosen, k=k, budget=budget, label_policy=policy)
                signature = ("es", embedder_id, tuple(chosen), k, budget, policy)
        else:
            up = st.file_uploader("An image of the failure mode", type=["png", "jpg", "jpeg", "webp", "bmp"],
                                  key="retr_upload")
            label = st.selectbox("Its label (used with 'error image's label' and 'both agree')",
                                 range(len(classes)), format_func=lambda c: classes[c], key="retr_upload_label")
            if up is not None:
                data = up.getvalue()
                st.image(data, width=128, caption=up.name)
                candidates = find_candidates_for_upload(ws, embedder_id, data, k=k, budget=budget, label=label,
                                                        label_policy=policy)
                signature = ("upload", embedder_id, hash(data), k, budget, policy, label)
    except ValueError as exc:
        st.error(str(exc))
        candidates = None

    if candidates is not None:
        if st.session_state.get("retr_signature") != signature:
            st.session_state["retr_signature"] = signature
            _reset_review()
        decisions: dict[int, dict] = st.session_state.setdefault("retr_decisions", {})

        def _bulk(status: str | None = None, label: int | None = None) -> None:
            for iid in candidates.image_id:
                d = decisions.setdefault(int(iid), {})
                if status is not None:
                    d["status"] = status
                if label is not None:
                    d["label"] = label
            for key in [k for k in st.session_state if str(k).startswith(("cand_status_", "cand_label_"))]:
                del st.session_state[key]

        st.subheader(f"{len(candidates)} candidates")
        b1, b2, b3, b4, b5 = st.columns([1, 1, 1, 1.4, 1])
        b1.button("Accept all", key="retr_accept_all", on_click=_bulk, kwargs={"status": "accepted"})
        b2.button("Reject all", key="retr_reject_all", on_click=_bulk, kwargs={"status": "rejected"})
        b3.button("Reset", key="retr_reset", on_click=_reset_review)
        bulk_label = b4.selectbox("Relabel all to", range(len(classes)), format_func=lambda c: classes[c],
                                  key="retr_bulk_label", label_visibility="collapsed")
        b5.button("Relabel all", key="retr_relabel_all", on_click=lambda: _bulk(label=bulk_label))

        n_pages = max(1, -(-len(candidates) // PAGE))
        page = st.number_input(f"Page (of {n_pages})", 1, n_pages, 1, key="retr_page") if n_pages > 1 else 1
        shown = candidates.iloc[(page - 1) * PAGE: page * PAGE]

        def _on_status(iid: int) -> None:
            value = st.session_state[f"cand_status_{iid}"]
            decisions.setdefault(iid, {})["status"] = value or "proposed"

        def _on_label(iid: int) -> None:
            decisions.setdefault(iid, {})["label"] = st.session_state[f"cand_label_{iid}"]

        def _review_widgets(r) -> None:
            iid = int(r.image_id)
            d = decisions.get(iid, {})
            skey, lkey = f"cand_status_{iid}", f"cand_label_{iid}"
            if skey not in st.session_state:
                status = d.get("status", r.status)
                st.session_state[skey] = status if status in STATUSES else None
            if lkey not in st.session_state:
                lab = d.get("label", r.label)
                st.session_state[lkey] = int(lab) if lab is not None and lab == lab else None
            st.segmented_control("decision", STATUSES, key=skey, label_visibility="collapsed",
                                 format_func=lambda s: {"accepted": ":material/check: keep", "rejected": ":material/close: drop"}[s],
                                 on_change=_on_status, args=(iid,))
            st.selectbox("label", range(len(classes)), key=lkey, format_func=lambda c: classes[c],
                         label_visibility="collapsed", on_change=_on_label, args=(iid,))

        def _caption(r) -> str:
            src = "upload" if r.source_image_id < 0 else f"#{r.source_image_id}"
            return f"#{r.image_id} · d={r.distance:.3g} · weak: {r.weak_label_name} · for {src}"

        gallery(ws, shown, _caption, columns=5, below=_review_widgets, width=110)

        items = candidate_items(candidates, decisions)
        n_acc = int((items.status == "accepted").sum())
        n_rej = int((items.status == "rejected").sum())
        st.caption(f"{n_acc} accepted · {n_rej} rejected · {len(items) - n_acc - n_rej} undecided (kept as "
                   f"proposed; rejected images are left out of training)")
        s1, s2 = st.columns([3, 1])
        default_name = f"dcd-{embedder_id.split(':')[-1]}-k{k}-b{budget}"
        name = s1.text_input("Selection name", value=default_name, key="retr_name")
        if s2.button("Save as debug-train selection", type="primary", key="retr_save"):
            if items.label.isna().any():
                st.error(f"{int(items.label.isna().sum())} candidate(s) have no label: relabel them first.")
            else:
                sel = save_selection(ws, name.strip() or default_name, "dcd", items,
                                     params={"k": int(k), "budget": int(budget), "label_policy": policy,
                                             "embedder_id": embedder_id, "reviewed": True,
                                             "sources": [int(s) for s in candidates.source_image_id.unique()]},
                                     index_info=info)
                refresh()
                st.session_state["retr_saved"] = sel.selection_id
                st.success(f"Saved selection `{sel.selection_id}` ({len(items) - n_rej} images to train with).")
        if st.session_state.get("retr_saved"):
            launch_button(ws, f"Retrain the classifier with `{st.session_state['retr_saved']}`", "retrain",
                          ["--selection-id", st.session_state["retr_saved"]], key="retr_launch_retrain")

with tab_saved:
    sels = view("selections")
    if sels.empty:
        st.info("No selections yet: find candidates and save them, or run the select job.")
    else:
        sel_id = st.selectbox("Selection", sels.selection_id.tolist(), key="retr_saved_sel",
                              format_func=lambda s: "{} · {} ({} images, {} accepted, {} rejected)".format(
                                  *sels.set_index("selection_id").loc[s, ["name", "method", "n_items", "n_accepted",
                                                                           "n_rejected"]]))
        items = view("selection_review", sel_id)

        def _set_all(status: str) -> None:
            set_status(ws, sel_id, items.image_id.tolist(), status)
            refresh()

        def _relabel_all() -> None:
            relabel(ws, sel_id, items.image_id.tolist(), st.session_state["retr_saved_bulk_label"])
            refresh()

        a1, a2, a3, a4, a5 = st.columns([1, 1, 1, 1.4, 1])
        a1.button("Accept all", key="retr_saved_accept", on_click=_set_all, args=("accepted",))
        a2.button("Reject all", key="retr_saved_reject", on_click=_set_all, args=("rejected",))
        a3.button("Reset all", key="retr_saved_reset", on_click=_set_all, args=("proposed",))
        a4.selectbox("Relabel all to", range(len(classes)), format_func=lambda c: classes[c],
                     key="retr_saved_bulk_label", label_visibility="collapsed")
        a5.button("Relabel all", key="retr_saved_relabel", on_click=_relabel_all)

        n_pages = max(1, -(-len(items) // PAGE))
        page = (st.number_input(f"Page (of {n_pages})", 1, n_pages, 1, key="retr_saved_page")
                if n_pages > 1 else 1)
        shown = items.iloc[(page - 1) * PAGE: page * PAGE]

        def _saved_status(iid: int) -> None:
            set_status(ws, sel_id, [iid], st.session_state[f"saved_status_{sel_id}_{iid}"] or "proposed")
            refresh()

        def _saved_label(iid: int) -> None:
            relabel(ws, sel_id, [iid], st.session_state[f"saved_label_{sel_id}_{iid}"])
            refresh()

        def _saved_widgets(r) -> None:
            iid = int(r.image_id)
            st.session_state[f"saved_status_{sel_id}_{iid}"] = r.status if r.status in STATUSES else None
            st.session_state[f"saved_label_{sel_id}_{iid}"] = int(r.label)
            st.segmented_control("decision", STATUSES, key=f"saved_status_{sel_id}_{iid}",
                                 label_visibility="collapsed",
                                 format_func=lambda s: {"accepted": ":material/check: keep", "rejected": ":material/close: drop"}[s],
                                 on_change=_saved_status, args=(iid,))
            st.selectbox("label", range(len(classes)), key=f"saved_label_{sel_id}_{iid}",
                         format_func=lambda c: classes[c], label_visibility="collapsed",
                         on_change=_saved_label, args=(iid,))

        gallery(ws, shown, lambda r: f"#{r.image_id}" + (f" · d={r.distance:.3g}" if r.distance == r.distance else "")
                + (f" · weak: {r.weak_label_name}" if isinstance(r.weak_label_name, str) else ""),
                columns=5, below=_saved_widgets, width=110)
        launch_button(ws, f"Retrain the classifier with `{sel_id}`", "retrain", ["--selection-id", sel_id],
                      key="retr_saved_retrain")
