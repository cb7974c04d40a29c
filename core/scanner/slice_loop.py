"""The closed loop for a named failure, or without an ``error_sample`` split: find the failure, fix it with DCD.

Users rarely have a curated sample of their model's failure. Given one (``config.failure``: a confusion
cell, picked images, a slice; core.dcd.failure), its query part is DCD's ``E_sample`` and its held-out part
the eval set each method is measured on (steps 3 to 5 below). Otherwise AttributionScanner finds it:

1. the classifier under debug is trained (or given) and evaluated, as in core.dcd.pipeline;
2. its attributions on the labeled splits are computed and sliced (core.scanner.runs); the target is the
   slice ``config.from_slice`` (``RUN:RANK``), by default the worst-ranked slice with enough errors;
3. that slice's misclassified members are split into a query part and a held-out part
   (core.dcd.slice_targets); the pool is embedded, and so are the query members;
4. the pool's label issues are found (unless stored already; core.dcd.label_issues.ensure_label_issues),
   and ``dcd`` retrieves for the query part, leaving out the flagged pool images (``label_issues``:
   under the ``agree`` policy a wrong weak label that happens to agree with the error image's is otherwise
   kept; on the Waterbirds-like demo most of them were land images labelled "waterbird", and training on
   them swapped the background shortcut for the opposite one); the baselines get as many images
   (``random`` from the whole pool, ``all_pool``, ``error_sample_only`` = the query part itself);
5. each selection fine-tunes the classifier; every model is evaluated on test, train and the slice's
   held-out part (the eval set ``slice:<run_id>:<rank>``, never trained on).

:func:`run_loop` picks this loop or the ``error_sample`` one (core.dcd.pipeline.run_pipeline).
The report holds the failure under ``failure`` (a slice's also under ``slice``) and each method's accuracy
on its held-out part as ``failure_heldout_acc`` (a slice's also as ``slice_heldout_acc``). A failure without
a held-out part (uploaded images) is measured on test only: ``failure_heldout_acc`` is None, retrieval's
summary compares on test, and the report's ``measured_on`` says so.
"""

from __future__ import annotations

import time

from core.data.splits import split_counts
from core.dcd.failure import ERROR_SAMPLE, get_failure
from core.dcd.pipeline import (
    PipelineConfig,
    Timings,
    baseline_classifier,
    check_counts,
    embed_for_search,
    find_label_issues_stage,
    fix_each,
    loop_report,
    run_pipeline,
)
from core.dcd.slice_targets import (
    coherent_failures,
    failure_counts,
    parse_slice_ref,
    resolve_slice,
)
from core.progress import Progress, as_progress
from core.scanner.attribution import attribute, has_attributions
from core.scanner.runs import SliceConfig, find_slices, get_slices
from core.store.workspace import Workspace

#: Fewest misclassified members a slice needs to be targeted automatically (half are held out).
MIN_TARGET_ERRORS = 6


def run_loop(ws: Workspace, config: PipelineConfig, *, progress: Progress | None = None) -> dict:
    """The DCD loop for the ``error_sample`` split, or for the failure ``config.failure`` (or the slice
    ``config.from_slice``), or, without an ``error_sample`` split, for a slice found by AttributionScanner
    (:func:`run_slice_loop`). With ``config.ray`` one Ray session serves the whole loop
    (core.engines.ray_data.ray_runtime: the running one, else one started for it)."""
    named = config.from_slice is not None or config.failure not in (None, ERROR_SAMPLE)
    loop = run_pipeline if not named and split_counts(ws)["error_sample"] > 0 else run_slice_loop
    if config.ray is None:
        return loop(ws, config, progress=progress)
    from core.engines.ray_data import ray_runtime

    with ray_runtime(config.ray):
        report = loop(ws, config, progress=progress)
    report["engine"] = {"engine": "ray", "address": config.ray.address or "local"}
    return report


def _slice_splits(ws: Workspace) -> tuple[str, ...]:
    counts = split_counts(ws)
    return tuple(s for s in ("train", "test", "error_heldout") if counts[s])


def _auto_target(ws: Workspace, run_id: str) -> int:
    """The rank of the slice of ``run_id`` to fix: among those with at least :data:`MIN_TARGET_ERRORS`
    misclassified members, the one with the most failures that go one way (core.dcd.slice_targets.
    coherent_failures), ties to the better rank. The worst-ranked slice is often the catch-all of scattered
    errors (the stamp scenario: 315 failures over 60 confusions, 70 at most of one label, beside 156 stamped
    photos all taken for horses, ranked second); a query set of scattered errors retrieves scattered images."""
    n_err, one_way = failure_counts(ws, run_id), coherent_failures(ws, run_id)
    ranked = [(one_way.get(int(s.slice_id), 0), -int(s.rank)) for s in get_slices(ws, run_id).itertuples(index=False)
              if n_err.get(int(s.slice_id), 0) >= MIN_TARGET_ERRORS]
    if ranked:
        return -max(ranked)[1]
    raise ValueError(f"no slice of run {run_id} has {MIN_TARGET_ERRORS} or more misclassified members: the "
                     f"classifier makes too few errors here to target one; name a slice with --from-slice")


def find_target(ws: Workspace, config: PipelineConfig, base_id: str, timings: Timings, *,
                progress: Progress) -> str:
    """``RUN:RANK`` of the slice to fix: ``config.from_slice``, else the worst slice of a new slice run."""
    if config.from_slice:
        run_id, rank = parse_slice_ref(config.from_slice)
        run_id, _ = resolve_slice(ws, run_id, rank)
        return f"{run_id}:{rank}"
    t = time.perf_counter()
    splits = _slice_splits(ws)
    if not has_attributions(ws, base_id, splits):
        attribute(ws, base_id, splits=splits, ray=config.ray, progress=progress.span(0.0, 0.7))
    run = find_slices(ws, base_id, config=SliceConfig(splits=splits, seed=config.seed),
                      progress=progress.span(0.7, 1.0))
    timings.step("slices", t)
    return f"{run.run_id}:{_auto_target(ws, run.run_id)}"


def run_slice_loop(ws: Workspace, config: PipelineConfig, *, progress: Progress | None = None) -> dict:
    """Run the loop for a named failure or a slice (see the module doc) and return the report, with the
    failure under ``failure`` and each method's accuracy on its held-out part as ``failure_heldout_acc``
    (a slice's also under ``slice`` and ``slice_heldout_acc``)."""
    progress = as_progress(progress)
    t0, timings = time.perf_counter(), Timings()
    counts = check_counts(ws, config, error_split=False)
    if config.failure:  # before training: a reference that names nothing fails at once
        get_failure(ws, config.failure, seed=config.seed, heldout_share=config.heldout_share)
    base_id, baseline = baseline_classifier(ws, config, timings, progress=progress.span(0.0, 0.2))
    ref = config.failure or find_target(ws, config, base_id, timings, progress=progress.span(0.2, 0.3))
    target = get_failure(ws, ref, seed=config.seed, heldout_share=config.heldout_share)
    print(f"target: {target.name}, {len(target.query_ids)} images to search with, {len(target.heldout_ids)} "
          f"held out; the fixes are measured on {target.measured_on}", flush=True)
    emb = embed_for_search(ws, config, base_id, ("pool",), timings, progress=progress.span(0.3, 0.4))
    request = config.selection_request(n_failure=len(target.query_ids), n_pool=counts["pool"],
                                       embedder_id=emb["embedder_id"], failure=ref,
                                       heldout_share=config.heldout_share)
    mid = find_label_issues_stage(ws, config, request, timings, progress=progress, start=0.4, end=0.5)
    # the baseline was evaluated before the held-out part existed: its metrics now include it
    from core.models.evaluation import compute_metrics, metrics_summary

    results = {"baseline": {**baseline, **metrics_summary(compute_metrics(ws, base_id))}}
    selections = fix_each(ws, config, base_id, request, results, timings, progress=progress.span(mid, 1.0))
    is_slice = target.kind == "slice"
    for r in results.values():
        r["failure_heldout_acc"] = r.get(f"{target.eval_set}_acc") if target.heldout_ids else None
        if is_slice:
            r["slice_heldout_acc"] = r["failure_heldout_acc"]
    key = "slice_heldout_acc" if is_slice else "failure_heldout_acc" if target.heldout_ids else "test_acc"
    report = loop_report(ws, config, base_id=base_id, emb=emb, request=request, selections=selections,
                         results=results, counts=counts, timings=timings, t0=t0, failure_key=key)
    report["failure"] = target.describe()
    report["measured_on"] = target.measured_on
    if is_slice:
        report["slice"] = target.describe()
    return report
