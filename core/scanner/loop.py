"""The DCD loop, for every failure: find it (or take the one named), fix it with DCD, and report each fix.

:func:`run_loop` runs its steps in order over one :class:`LoopState`:

1. :func:`check`: the splits the loop needs, and the failure when it is known before training: the
   ``error_sample`` split (held out ``error_heldout``), or ``config.failure`` (core.dcd.failure: a confusion
   cell, picked images, uploaded images, a slice ``RUN:RANK``), so that a reference that names nothing fails
   at once;
2. :func:`classifier`: the classifier under debug, trained on ``train`` unless one is given (without flags: the
   packaged ImageNet backbone fine-tuned, core.models.schedules' pretrained schedule), and evaluated;
3. :func:`failure`: otherwise the slice ``config.from_slice``, or, without an ``error_sample`` split, a slice
   AttributionScanner finds: the classifier's attributions on the labeled splits are computed and sliced
   (core.scanner.runs), and the slice whose failures go one way most is the target (:func:`_auto_target`);
   a slice's misclassified members are split into a query part and a held-out part (core.dcd.slice_targets);
4. :func:`embed`: the pool (and the ``error_sample`` split where it is the failure; a named failure's query
   images are embedded when selecting) in DCD's feature space: without flags the same pretrained backbone,
   frozen, at its own resolution; ``classifier`` uses the classifier's own penultimate layer;
5. :func:`find_label_issues`: the pool's label issues, found unless stored, where DCD leaves them out
   (``label_issues``: under the ``agree`` policy a wrong weak label that happens to agree with the error
   image's is otherwise kept; on the Waterbirds-like demo most of them were land images labelled
   "waterbird", and training on them swapped the background shortcut for the opposite one);
6. :func:`fix`: each method's fix (core.dcd.pipeline.fix_each): ``dcd`` retrieves for the failure's query
   part, the baselines get as many images (``random`` from the whole pool, ``all_pool``,
   ``error_sample_only`` = the query part itself); each fine-tunes the classifier and is evaluated on test,
   train and the failure's held-out part (an eval set, never trained on);
7. :func:`report`: ``{"methods": {method: {"test_acc", "error_heldout_acc", "n_added", ...}}, "retrieval":
   ...}`` (also the content of ``--json``). A named failure's report holds it under ``failure`` (a slice's also
   under ``slice``) and each method's accuracy on its held-out part as ``failure_heldout_acc`` (a slice's also
   as ``slice_heldout_acc``). A failure without a held-out part (uploaded images) is measured on test only:
   ``failure_heldout_acc`` is None, retrieval's summary compares on test, and ``measured_on`` says so.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

from core.data.splits import split_counts
from core.dcd.embed import embed_split_images
from core.dcd.failure import ERROR_SAMPLE, Failure, get_failure
from core.dcd.label_issues import ensure_label_issues
from core.dcd.label_review import count_label_issues
from core.dcd.pipeline import PipelineConfig, Timings, fix_each, n_fix_stages, retrieval_summary
from core.dcd.selection import Selection
from core.dcd.slice_targets import coherent_failures, failure_counts, parse_slice_ref, resolve_slice
from core.dcd.strategies import SelectionRequest, drops_label_issues
from core.models.catalog import get_model
from core.models.evaluation import compute_metrics, evaluate, metrics_summary
from core.models.schedules import finetune_schedule, initial_schedule
from core.models.training import train_classifier
from core.progress import Progress, as_progress
from core.scanner.attribution import attribute, has_attributions
from core.scanner.runs import SliceConfig, find_slices, get_slices
from core.store.workspace import Workspace

#: Fewest misclassified members a slice needs to be targeted automatically (half are held out).
MIN_TARGET_ERRORS = 6


@dataclass
class LoopState:
    """What the loop's steps share: its inputs, then what each step adds (None until it has run)."""

    ws: Workspace
    config: PipelineConfig
    progress: Progress
    t0: float = field(default_factory=time.perf_counter)
    timings: Timings = field(default_factory=Timings)
    counts: dict[str, int] = field(default_factory=dict)
    on_error_sample: bool = False  # the failure is the error_sample split (else a named or a found one)
    ref: str | None = None  # the failure's reference (core.dcd.failure.get_failure)
    failure: Failure | None = None
    base_id: str | None = None  # the classifier under debug
    baseline: dict | None = None  # its result, as each fix's
    emb: dict | None = None  # embed_split_images' summary: DCD's feature space
    request: SelectionRequest | None = None
    fixes_from: float = 0.4  # where the fixes start in the loop's progress (after the label issues, if found)
    results: dict[str, dict] = field(default_factory=dict)  # method -> result
    selections: dict[str, Selection] = field(default_factory=dict)

    @property
    def finds_slices(self) -> bool:
        """Whether the failure is a slice AttributionScanner finds for this loop (nothing names one)."""
        return not self.on_error_sample and self.config.failure is None and self.config.from_slice is None


def run_loop(ws: Workspace, config: PipelineConfig, *, progress: Progress | None = None) -> dict:
    """Run the loop (see the module doc) for the ``error_sample`` split, the failure ``config.failure``, the
    slice ``config.from_slice``, or, without an ``error_sample`` split, a slice AttributionScanner finds, and
    return the report. With ``config.ray`` one Ray session serves the whole loop
    (core.engines.ray_data.ray_runtime: the running one, else one started for it)."""
    state = LoopState(ws, config, as_progress(progress))
    if config.ray is None:
        return _run(state)
    from core.engines.ray_data import ray_runtime

    with ray_runtime(config.ray):
        out = _run(state)
    out["engine"] = {"engine": "ray", "address": config.ray.address or "local"}
    return out


def _run(state: LoopState) -> dict:
    for step in (check, classifier, failure, embed, find_label_issues, fix):
        step(state)
    return report(state)


def check(state: LoopState) -> None:
    """The split counts (a ValueError names a split the loop needs and lacks), the failure when it is known
    before training, and the stages the loop will run."""
    ws, config = state.ws, state.config
    counts = state.counts = split_counts(ws)
    state.on_error_sample = (config.from_slice is None and config.failure in (None, ERROR_SAMPLE)
                             and counts["error_sample"] > 0)
    needed = ["test", "pool"] + (["error_sample", "error_heldout"] if state.on_error_sample else [])
    if config.classifier_id is None:
        needed.insert(0, "train")
    for split in needed:
        if counts[split] == 0:
            raise ValueError(f"the DCD loop needs '{split}' images and the workspace has none "
                             f"(counts: {counts}); ingest them first")
    state.ref = ERROR_SAMPLE if state.on_error_sample else config.failure
    if state.ref:  # before training: a reference that names nothing fails at once
        state.failure = get_failure(ws, state.ref, seed=config.seed, heldout_share=config.heldout_share)
    drops = drops_label_issues(config.label_issues, config.label_policy, named=not state.on_error_sample)
    state.progress.expect_stages((1 if config.classifier_id else 2) + state.finds_slices + 1
                                 + _finds_label_issues(ws, drops) + n_fix_stages(config))  # Progress.stage


def classifier(state: LoopState) -> None:
    """The classifier under debug (trained unless given) and its result."""
    ws, config = state.ws, state.config
    progress = state.progress.span(0.0, 0.2 if state.finds_slices else 0.28)
    t = time.perf_counter()
    if config.classifier_id:
        state.base_id = get_model(ws, config.classifier_id).model_id
    else:
        schedule = initial_schedule(config.classifier, weights=config.classifier_weights, hub=config.hub,
                                    overrides=config.train)
        state.base_id = train_classifier(ws, arch=config.classifier, weights=config.classifier_weights,
                                         hub=config.hub, image_size=config.image_size, config=schedule,
                                         progress=progress.stage("training the classifier", 0.0, 0.9))
    state.timings.step("train", t)
    t = time.perf_counter()
    metrics = evaluate(ws, state.base_id, ray=config.ray,
                       progress=progress.stage("evaluating the classifier", 0.9, 1.0))
    state.baseline = {**metrics_summary(metrics), "n_added": 0, "model_id": state.base_id}
    state.timings.step("evaluate_baseline", t)


def failure(state: LoopState) -> None:
    """The failure, where :func:`check` did not know it: the slice ``config.from_slice``, else the slice
    AttributionScanner finds for the classifier."""
    ws, config = state.ws, state.config
    if state.failure is None:
        if config.from_slice:
            run_id, rank = parse_slice_ref(config.from_slice)
            run_id, _ = resolve_slice(ws, run_id, rank)
            state.ref = f"{run_id}:{rank}"
        else:
            state.ref = _find_slice(state, state.progress.stage("finding the slice to fix", 0.2, 0.3))
        state.failure = get_failure(ws, state.ref, seed=config.seed, heldout_share=config.heldout_share)
    f = state.failure
    print(f"target: {f.name}, {len(f.query_ids)} images to search with, {len(f.heldout_ids)} held out; the fixes "
          f"are measured on {f.measured_on}", flush=True)


def _find_slice(state: LoopState, progress: Progress) -> str:
    """``RUN:RANK`` of the slice to fix: the classifier's attributions (computed unless stored) sliced in a new
    run, and its slice :func:`_auto_target` picks."""
    ws = state.ws
    t = time.perf_counter()
    splits = tuple(s for s in ("train", "test", "error_heldout") if state.counts[s])
    if not has_attributions(ws, state.base_id, splits):
        attribute(ws, state.base_id, splits=splits, ray=state.config.ray, progress=progress.span(0.0, 0.7))
    run = find_slices(ws, state.base_id, config=SliceConfig(splits=splits, seed=state.config.seed),
                      progress=progress.span(0.7, 1.0))
    state.timings.step("slices", t)
    return f"{run.run_id}:{_auto_target(ws, run.run_id)}"


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


def embed(state: LoopState) -> None:
    """The images DCD searches, embedded where DCD's feature space (the classifier's own, for embedder
    ``classifier``) lacks them (a frozen embedder's stored vectors are kept: finding label issues embeds the
    pool with the pretrained backbone, and a second run on the same pool embeds nothing); then the selection
    request for the failure in that space."""
    ws, config = state.ws, state.config
    t = time.perf_counter()
    splits = ("error_sample", "pool") if state.on_error_sample else ("pool",)
    progress = state.progress.span(0.3 if state.finds_slices else 0.28, 0.4)
    spec = config.embedder
    if spec.arch == "classifier":
        spec = replace(spec, classifier_id=state.base_id)
    state.emb = embed_split_images(ws, spec, splits=splits, only_missing=True, ray=config.ray,
                                   progress=progress.stage(f"embedding {' + '.join(splits)}", 0, 1))
    state.timings.step("embed", t)
    # the error_sample split is the request's default failure; a named one is named, with its held-out share
    named = {} if state.on_error_sample else {"failure": state.ref, "heldout_share": config.heldout_share}
    state.request = config.selection_request(n_failure=len(state.failure.query_ids), n_pool=state.counts["pool"],
                                             embedder_id=state.emb["embedder_id"], **named)


def _finds_label_issues(ws: Workspace, drops: bool) -> bool:
    """Whether the loop finds the pool's label issues before selecting: DCD drops them and none are stored."""
    return drops and not count_label_issues(ws, splits=["pool"])


def find_label_issues(state: LoopState) -> None:
    """The pool's label issues, found as a stage of its own where :func:`_finds_label_issues`
    (core.dcd.label_issues.ensure_label_issues), so that DCD's selection can leave the flagged ones out."""
    if not _finds_label_issues(state.ws, state.request.drops_label_issues()):
        return
    t = time.perf_counter()
    ensure_label_issues(state.ws, seed=state.config.seed,
                        progress=state.progress.stage("finding the pool's label issues", 0.4, 0.5))
    state.timings.step("label_issues", t)
    state.fixes_from = 0.5


def fix(state: LoopState) -> None:
    """Each method's fix, fine-tuned and evaluated (core.dcd.pipeline.fix_each), after the baseline's."""
    # the baseline was evaluated before a failure found after it (a slice) had its held-out part: read again
    metrics = metrics_summary(compute_metrics(state.ws, state.base_id))
    state.results = {"baseline": {**state.baseline, **metrics}}
    state.selections = fix_each(state.ws, state.config, state.base_id, state.request, state.results, state.timings,
                                progress=state.progress.span(state.fixes_from, 1.0))


def _heldout_keys(f: Failure) -> tuple[str, ...]:
    """The result keys that also give each method's accuracy on the failure's held-out part: none for the
    ``error_sample`` split (its eval set's own key, ``error_heldout_acc``, says it), ``failure_heldout_acc`` for
    a named failure (None without a held-out part), and for a slice also ``slice_heldout_acc`` (as before
    failures had kinds)."""
    if f.kind == ERROR_SAMPLE:
        return ()
    return ("failure_heldout_acc", "slice_heldout_acc") if f.kind == "slice" else ("failure_heldout_acc",)


def _compared_on(f: Failure) -> str:
    """The result key retrieval's summary compares DCD's fix and the failure-only fix on: the failure's
    held-out accuracy, or test's where it has no held-out part."""
    if not f.heldout_ids:
        return "test_acc"
    keys = _heldout_keys(f)
    return keys[-1] if keys else f"{f.eval_set}_acc"


def report(state: LoopState) -> dict:
    """The loop's report (also the content of ``--json``); a named failure's describes it too."""
    ws, config, f, results = state.ws, state.config, state.failure, state.results
    for r in results.values():
        for key in _heldout_keys(f):
            r[key] = r.get(f"{f.eval_set}_acc") if f.heldout_ids else None
    dcd, request = state.selections.get("dcd"), state.request
    info = dcd.index_info if dcd else None
    out = {
        "methods": {m: results[m] for m in ("baseline", *config.methods, "error_sample_only") if m in results},
        "retrieval": retrieval_summary(results, _compared_on(f)),
        "classifier": {"model_id": state.base_id, "arch": get_model(ws, state.base_id).arch,
                       "finetune": asdict(finetune_schedule(ws, state.base_id, config.train))},
        "embedder": {"embedder_id": state.emb["embedder_id"], "precision": state.emb.get("precision")},
        "selection": {"neighbours": request.neighbours, "budget": request.budget, "label_policy": config.label_policy,
                      "drop_label_issues": request.drops_label_issues(),
                      "n_dcd": len(dcd.items) if dcd else None,
                      "index_type": info.index_type if info else None,
                      "recall": info.recall_at_k if info else None},
        "counts": state.counts,
        "config": {**asdict(config), "embedder": asdict(config.embedder)},
        "timings_s": dict(state.timings),
        "total_seconds": round(time.perf_counter() - state.t0, 1),
    }
    if f.kind != ERROR_SAMPLE:
        out["failure"] = f.describe()
        out["measured_on"] = f.measured_on
        if f.kind == "slice":
            out["slice"] = f.describe()
    return out
