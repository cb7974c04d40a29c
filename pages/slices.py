"""Slices: metadata-free error slices (AttributionScanner): ranked list, Attribution Mosaic, members,
numbers, annotation, and spuriousness propagation."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from core.app import charts, names
from core.app.job_summary import SLICE_JOBS, jobs_running
from core.app.slice_report import report_filename
from core.app.slice_report_page import render_slice_report
from core.constants import ANNOTATION_KINDS
from core.dcd.slice_targets import failure_counts
from core.scanner import annotations as ann
from core.scanner import runs as sl
from core.scanner.slice_facts import naming_facts, slice_facts
from pages._picking import name_picked_ui, pick_box, picking_ui
from pages._session import refresh, slice_mosaic_png, view, workspace
from pages._slice_actions import slice_actions
from pages._widgets import gallery, jobs_in_progress, launch_button, pct

PICKS = "slices_picks"  # members picked as a failure (pages/_picking.py)

ws = workspace()
st.title("Slices")
if jobs_running(ws, SLICE_JOBS):  # new slices are coming: say so, and show them when they land
    jobs_in_progress(ws, SLICE_JOBS, "New slices are being found")

runs = view(sl.list_runs)
if runs.empty:
    st.info("No slices yet. Slices come from the classifier's attributions: run the **slices** job "
            "(`python -m jobs.slices --workspace DIR`), which computes them first if needed.")
    launch_button(ws, "Find slices (attributions + clustering)", "slices", [], key="slices_launch")
    st.stop()

class_names = ws.class_names()
name_of = dict(enumerate(class_names))
model_names = view(names.model_names)
run_labels = {r.run_id: f"{model_names.get(r.model_id, r.model_id)} · {r.n_slices} slices · {r.run_id}"
              for r in runs.itertuples()}
run_id = st.selectbox("Slice run", runs.run_id.tolist(), format_func=run_labels.get, key="slices_run")
params = json.loads(runs.loc[runs.run_id == run_id, "params"].iloc[0] or "{}")
n_slices = params.get("n_slices", params.get("k"))  # runs before the rename stored "k"
chosen = params.get("n_slices_chosen", params.get("k_chosen")) == "auto"
st.caption(f"{n_slices} slices ({'number chosen by silhouette' if chosen else 'number given'}), "
           f"{params.get('n_images', '?')} images of "
           f"{', '.join(params.get('splits', []))}, attributions: {params.get('attribution_method', '?')}. "
           "Ranked by score = errors × error rate: large, low-accuracy slices first.")

slices = view(sl.get_slices, run_id)
current = view(ann.current_annotations, run_id)
kind_of = dict(zip(current.slice_id.astype(int), current.kind))
slices = slices.assign(annotation=[kind_of.get(int(i), "") for i in slices.slice_id])
facts = view(slice_facts, run_id)
named_by = view(naming_facts, run_id)
what = {int(r.slice_id): names.describe_slice(r._asdict(), class_names, named_by.get(int(r.slice_id)))
        for r in slices.itertuples()}

# -- ranked list and chart ----------------------------------------------------------------------------
ids = slices.slice_id.astype(int).tolist()
if st.session_state.get("slices_slice") not in ids:
    st.session_state["slices_slice"] = ids[0]
left, right = st.columns([3, 2])
with right:
    event = st.altair_chart(charts.slices_chart(slices, selected=st.session_state["slices_slice"]),
                            on_select="rerun", key="slices_chart", width="stretch")
    picked = (event or {}).get("selection", {}).get("slice") or []
    if picked and int(picked[0]["slice_id"]) in ids and picked != st.session_state.get("slices_last_pick"):
        st.session_state["slices_last_pick"] = picked
        st.session_state["slices_slice"] = int(picked[0]["slice_id"])
with left:
    table = pd.DataFrame({
        "rank": slices["rank"], "what it holds": [what[int(i)] for i in slices.slice_id], "size": slices["size"],
        "accuracy": slices.accuracy, "errors × error rate": slices.score.round(1),
        "predicted": slices.dominant_pred.map(name_of), "labelled": slices.dominant_label.map(name_of),
        "annotation": slices.annotation,
    })
    st.dataframe(table, hide_index=True, height=320, width="stretch",
                 column_config={"accuracy": st.column_config.ProgressColumn("accuracy", format="percent",
                                                                            min_value=0, max_value=1)})

rank_of = dict(zip(slices.slice_id.astype(int), slices["rank"].astype(int)))
row_of = {int(r.slice_id): r for r in slices.itertuples()}
slice_id = st.selectbox(
    "Slice (click the chart, or choose)", ids, key="slices_slice",
    format_func=lambda s: f"#{rank_of[s]} · {what[s]} · {int(row_of[s].size)} images · "
                          f"accuracy {pct(row_of[s].accuracy)}" + (f" · {kind_of[s]}" if s in kind_of else ""))
s = row_of[slice_id]

# -- the selected slice ---------------------------------------------------------------------------------
st.subheader(f"#{s.rank} · {what[slice_id][:1].upper()}{what[slice_id][1:]}")
m1, m2, m3 = st.columns(3)
m1.metric("Images", f"{int(s.size):,}")
m2.metric("Accuracy", pct(s.accuracy))
m3.metric("Errors", f"{int(round(s.size * (s.error_rate or 0))):,}")
st.caption(f"Slice {slice_id} of run {run_id}; rank {s.rank} of {len(slices)} by errors × error rate ({s.score:.1f}).")

told = facts.get(int(slice_id), [])
if told:
    against = "the rest of its confusion cell" if told[0].against == "cell" else "the rest of the slice run"
    st.markdown(f"**What sets it apart** (against {against}):\n" + "\n".join(f"- {f.text}" for f in told[:6]))
else:
    st.caption("Nothing measured sets this slice apart from the rest of its confusion cell (its group or metadata "
               "values, prediction confidence, brightness, contrast, colourfulness, sharpness, shape and size).")

c_mosaic, c_numbers = st.columns([3, 2])
with c_mosaic:
    st.markdown("**Attribution Mosaic**: each tile is a member's high-attribution region; red border: an error.")
    o1, o2 = st.columns(2)
    positive = name_of.get(s.dominant_pred, "?")
    layout = o1.radio("Layout", ["grid", "confusion"], horizontal=True, key="slices_layout",
                      format_func=lambda v: "grid" if v == "grid" else f"by TP / FP / FN / TN ({positive} vs rest)")
    mode = o2.radio("Tiles", ["crop", "overlay"], horizontal=True, key="slices_mode",
                    format_func=lambda v: "crop to attribution" if v == "crop" else "heatmap overlay")
    stored = s.mosaic_path if isinstance(s.mosaic_path, str) and Path(s.mosaic_path).is_file() else None
    if stored and not ws.contains(stored):  # the workspace names a file elsewhere: never read or serve it
        stored = None
    if layout == "grid" and mode == "crop" and stored:
        png = Path(stored).read_bytes()
    else:
        png = slice_mosaic_png(ws, run_id, slice_id, layout=layout, mode=mode)
    st.image(png, caption=f"slice {slice_id}: {layout}, {mode}")
    st.download_button("Export mosaic (PNG)", png, file_name=f"{run_id}-slice-{slice_id}-{layout}-{mode}.png",
                       mime="image/png", key="slices_download")
    st.download_button("Download report (HTML)", partial(render_slice_report, ws, run_id, int(s.rank)),
                       file_name=report_filename(run_id, int(s.rank)), mime="text/html", key="slices_report",
                       help="One self-contained page for stakeholders: mosaic, annotation, fix, before/after")
with c_numbers:
    st.markdown("**Confusion matrix** (rows: label, columns: prediction)")
    conf = json.loads(s.confusion) if isinstance(s.confusion, str) else []
    if conf:
        st.dataframe(pd.DataFrame(conf, index=[f"label {n}" for n in class_names],
                                  columns=[f"pred {n}" for n in class_names]), width="stretch")
    st.caption(f"Mostly predicted **{name_of.get(s.dominant_pred, '?')}**, mostly labelled "
               f"**{name_of.get(s.dominant_label, '?')}**.")

members = view(sl.slice_members, run_id, slice_id)
n_errors = failure_counts(ws, run_id).get(int(slice_id), 0)  # as the slice target counts them
slice_actions(ws, run_id, int(s.rank), model_id=str(runs.loc[runs.run_id == run_id, "model_id"].iloc[0]),
              n_errors=n_errors, annotated=bool(kind_of))

with st.expander(f"Members ({len(members):,}): errors first", expanded=False):
    show = members.assign(_err=~members.correct.fillna(True).astype(bool)) \
        .sort_values(["_err", "distance"], ascending=[False, True]).head(48)
    picking = picking_ui(ws, PICKS)
    gallery(ws, show, lambda r: f"{r.split} · {name_of.get(int(r.label), '?') if pd.notna(r.label) else '–'}"
                                f" → {name_of.get(int(r.pred), '?') if pd.notna(r.pred) else '–'}",
            below=pick_box(PICKS, "slices_pick_") if picking else None)
    if picking:
        name_picked_ui(ws, PICKS, model_id=str(runs.loc[runs.run_id == run_id, "model_id"].iloc[0]))
    by_split = members.groupby("split").agg(images=("image_id", "size"), accuracy=("correct", "mean"))
    st.dataframe(by_split, width="stretch")

# -- annotation -----------------------------------------------------------------------------------------

def annotate_ui() -> None:
    """The annotation form (not in viewer mode)."""
    st.subheader("Annotate this slice")
    with st.form("slices_annotate", clear_on_submit=True):
        kind = st.radio("What does the model rely on here?", list(ANNOTATION_KINDS), horizontal=True, index=None,
                        key="ann_kind", format_func={"core": "core feature", "spurious": "spurious correlation",
                                                     "mislabeled": "mislabeled", "other": "other"}.get)
        note = st.text_area("Note", key="ann_note", placeholder="e.g. the model looks at the water, not the bird")
        who = st.text_input("Your name", key="ann_annotator")
        relabel_to = st.selectbox("Relabel to (mislabeled only; default: the model's prediction)",
                                  [-1, *range(len(class_names))], key="ann_relabel",
                                  format_func=lambda c: "model's prediction" if c < 0 else class_names[c])
        if st.form_submit_button("Save annotation"):
            try:
                if kind is None:
                    raise ValueError("Choose what the model relies on in this slice first: nothing was saved.")
                ann.annotate(ws, run_id, slice_id, kind, note=note, annotator=who,
                             relabel_to=relabel_to if kind == "mislabeled" and relabel_to >= 0 else None)
            except ValueError as exc:
                st.error(str(exc))
            else:
                refresh()
                st.session_state["slices_flash"] = f"Saved: slice {slice_id} annotated {kind}."
                st.rerun()


if ws.read_only:
    st.caption("Viewer mode: slices are annotated in the full app.")
else:
    annotate_ui()
if st.session_state.get("slices_flash"):
    st.success(st.session_state.pop("slices_flash"))

st.subheader("Annotations")
listed = view(ann.list_annotations, run_id)
if listed.empty:
    st.caption("No annotations in this run yet.")
else:
    st.dataframe(listed.drop(columns=["run_id"]), hide_index=True, width="stretch")

st.subheader("Propagation suggestions")
sugg = view(ann.propagation_suggestions, run_id)
if sugg.empty:
    st.caption("No unannotated slice is close to an annotated one.")
for r in sugg.itertuples():
    c1, c2, c3 = st.columns([4, 1, 1])
    c1.write(f"Slice {r.slice_id} (rank {r.rank}) looks like slice {r.source_slice_id} (rank {r.source_rank}, "
             f"**{r.kind}**): centroid similarity {r.similarity:.2f}")
    if ws.read_only:
        continue
    if c2.button("Confirm", key=f"sugg_ok_{r.slice_id}_{r.source_slice_id}"):
        ann.confirm_suggestion(ws, run_id, r.slice_id, r.source_slice_id,
                               annotator=st.session_state.get("ann_annotator") or None)
        refresh()
        st.rerun()
    if c3.button("Dismiss", key=f"sugg_no_{r.slice_id}_{r.source_slice_id}"):
        ann.dismiss_suggestion(ws, run_id, r.slice_id, r.source_slice_id)
        refresh()
        st.rerun()

