"""The whole DCD loop on an ingested workspace, as one function.

1. the classifier under debug: trained on ``train`` unless one is given (a workspace model id, or a
   checkpoint file). Without flags: the packaged ImageNet backbone fine-tuned (core.models.schedules'
   pretrained schedule);
2. the embedder: embeds error_sample and pool. Without flags: the same pretrained backbone, frozen, at its
   own resolution (DCD's feature space); ``classifier`` uses the classifier's own penultimate layer;
3. the fixes (:func:`fix_each`): the failure's images alone (``error_sample_only``, also DCD's teacher);
   whether retrieval helps, checked on folds of the failure's images (core.dcd.fix_choice);
   ``dcd`` (the failure's images plus what retrieval adds, core.dcd.debug_train, or the failure-only fix
   where retrieval did not help); ``random`` (the failure's images plus as many random pool images as DCD
   retrieved); ``all_pool``. Each fine-tunes the classifier with the same schedule and is evaluated;
4. a report ``{"methods": {method: {"test_acc", "error_heldout_acc", "n_added", ...}}, "retrieval": ...}``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from core.data.splits import split_counts
from core.dcd.embed import EmbedderSpec, embed_split_images
from core.dcd.fine_tune import retrain
from core.dcd.selection import Selection, record_params
from core.dcd.strategies import (
    DEFAULT_LABEL_POLICY,
    METHODS,
    SelectionRequest,
    check_label_issues_choice,
    search_size,
    select,
)
from core.engines.ray_data import RayConfig
from core.models.catalog import get_model
from core.models.evaluation import evaluate, metrics_summary
from core.models.pretrained import DEFAULT_BACKBONE
from core.models.schedules import finetune_schedule, initial_schedule
from core.models.training import train_classifier
from core.progress import Progress, as_progress
from core.store.workspace import Workspace

RETRIEVAL_CHOICES = ("checked", "always")
#: Whether DCD's fix also trains on the rest of the pool its teacher labels with confidence (PipelineConfig).
REST_OF_POOL_CHOICES = ("teacher", "off")


@dataclass
class PipelineConfig:
    classifier: str = DEFAULT_BACKBONE
    classifier_weights: str | None = None
    classifier_id: str | None = None  # an existing classifier of the workspace: skip training
    hub: bool = False
    image_size: int | None = None  # None: core.models.schedules.default_image_size
    embedder: EmbedderSpec = field(default_factory=EmbedderSpec)
    neighbours: int | None = None  # DCD's search depth per failure image (None: core.dcd.strategies.search_size)
    budget: int | None = None
    label_policy: str = DEFAULT_LABEL_POLICY
    # Training settings the user gave (TrainConfig field -> value); the rest follow the model's schedule.
    train: dict[str, Any] = field(default_factory=dict)
    finetune_epochs: int | None = None
    methods: tuple[str, ...] = METHODS
    seed: int = 0
    index_memory_gb: float | None = None  # the pool index's memory budget (core.dcd.index)
    # RUN:RANK: the failure is that slice's misclassified members (core.dcd.slice_targets), not error_sample.
    # Without an error_sample split, core.scanner.slice_loop finds the slices and targets the worst one.
    from_slice: str | None = None
    # A failure reference (core.dcd.failure: error_sample, a slice RUN:RANK, a stored failure's id such as a
    # confusion cell's or picked images'): the loop fixes it (core.scanner.slice_loop.run_loop).
    failure: str | None = None
    heldout_share: float = 0.5
    # The pool's flagged label issues, as SelectionRequest.label_issues: "drop" leaves them out of DCD's
    # selection, "keep" does not, "auto" drops them for a slice and keeps them with an error_sample split.
    # Where none are stored, they are found first (finds_label_issues, find_label_issues_stage).
    label_issues: str = "auto"
    # "checked": DCD's retrieval is used only where it beats the failure's images alone on folds of them
    # (core.dcd.fix_choice); "always": used as found, without that check (faster; what the method's paper did).
    retrieval: str = "checked"
    # "teacher": DCD's fix also trains on the rest of the pool its teacher labels with confidence, drawn with
    # train (core.dcd.debug_train); "off": the failure's images and what retrieval adds, only. Measured on
    # the stamp, CIFAR-10 fog and photo scenarios (docs/results.md): better or equal on each.
    rest_of_pool: str = "teacher"
    # Where the loop's per-image passes over stored images run (predictions for every evaluation, embedding,
    # attributions): None here, else on Ray Data (core.engines.ray_data); the results are the same.
    ray: RayConfig | None = None

    def __post_init__(self) -> None:
        check_label_issues_choice(self.label_issues)  # before training, not when selecting
        if self.from_slice and self.failure:
            raise ValueError("name the failure once: --failure REF (a slice RUN:RANK is one) or --from-slice "
                             "RUN:RANK, not both")
        if self.retrieval not in RETRIEVAL_CHOICES:
            raise ValueError(f"retrieval must be one of {', '.join(RETRIEVAL_CHOICES)}, not {self.retrieval!r}")
        if self.rest_of_pool not in REST_OF_POOL_CHOICES:
            raise ValueError(f"rest_of_pool must be one of {', '.join(REST_OF_POOL_CHOICES)}, "
                             f"not {self.rest_of_pool!r}")

    def selection_request(self, *, n_failure: int, n_pool: int, **fields) -> SelectionRequest:
        """What DCD's selections are asked for under this config, for a failure of ``n_failure`` images: the
        budget and neighbours resolved (core.dcd.strategies.search_size)."""
        size = search_size(n_failure, n_pool, budget=self.budget, neighbours=self.neighbours)
        print(size.note, flush=True)
        return SelectionRequest(budget=size.budget, neighbours=size.neighbours,
                                label_policy=self.label_policy,  # type: ignore[arg-type]
                                seed=self.seed, index_memory_gb=self.index_memory_gb, label_issues=self.label_issues,
                                rest_of_pool=self.rest_of_pool == "teacher", **fields)


class Timings(dict):
    """Seconds per step, as the report's ``timings_s``."""

    def step(self, name: str, since: float) -> None:
        self[name] = round(time.perf_counter() - since, 1)


def check_counts(ws: Workspace, config: PipelineConfig, *, error_split: bool) -> dict[str, int]:
    """The split counts, or a ValueError naming the split the loop needs and lacks."""
    counts = split_counts(ws)
    needed = ["test", "pool"] + (["error_sample", "error_heldout"] if error_split else [])
    if config.classifier_id is None:
        needed.insert(0, "train")
    for split in needed:
        if counts[split] == 0:
            raise ValueError(f"the DCD loop needs '{split}' images and the workspace has none "
                             f"(counts: {counts}); ingest them first")
    return counts


def baseline_classifier(ws: Workspace, config: PipelineConfig, timings: Timings, *,
                        progress: Progress) -> tuple[str, dict]:
    """Step 1: the classifier under debug (trained unless given) and its metrics."""
    t = time.perf_counter()
    if config.classifier_id:
        base_id = get_model(ws, config.classifier_id).model_id
    else:
        schedule = initial_schedule(config.classifier, weights=config.classifier_weights, hub=config.hub,
                                    overrides=config.train)
        base_id = train_classifier(ws, arch=config.classifier, weights=config.classifier_weights,
                                   hub=config.hub, image_size=config.image_size, config=schedule,
                                   progress=progress.stage("training the classifier", 0.0, 0.9))
    timings.step("train", t)
    t = time.perf_counter()
    metrics = evaluate(ws, base_id, ray=config.ray, progress=progress.stage("evaluating the classifier", 0.9, 1.0))
    result = {**metrics_summary(metrics), "n_added": 0, "model_id": base_id}
    timings.step("evaluate_baseline", t)
    return base_id, result


def embed_for_search(ws: Workspace, config: PipelineConfig, base_id: str, splits: tuple[str, ...],
                     timings: Timings, *, progress: Progress) -> dict:
    """Step 2: embed the images of ``splits`` that DCD's feature space (the classifier's own, for embedder
    ``classifier``) lacks; a frozen embedder's stored vectors are kept (finding label issues embeds the pool
    with the pretrained backbone, and a second run on the same pool embeds nothing)."""
    t = time.perf_counter()
    spec = config.embedder
    if spec.arch == "classifier":
        spec = replace(spec, classifier_id=base_id)
    emb = embed_split_images(ws, spec, splits=splits, only_missing=True, ray=config.ray,
                             progress=progress.stage(f"embedding {' + '.join(splits)}", 0, 1))
    timings.step("embed", t)
    return emb


def finds_label_issues(ws: Workspace, request: SelectionRequest) -> bool:
    """Whether the loop must find the pool's label issues before selecting: DCD drops them and none are
    stored."""
    from core.dcd.label_review import count_label_issues

    return request.drops_label_issues() and not count_label_issues(ws, splits=["pool"])


def find_label_issues_stage(ws: Workspace, config: PipelineConfig, request: SelectionRequest, timings: Timings,
                            *, progress: Progress, start: float, end: float) -> float:
    """The pool's label issues, found as a stage of its own between ``start`` and ``end`` of ``progress``
    (core.dcd.label_issues.ensure_label_issues) when :func:`finds_label_issues`, so that DCD's selection can
    leave the flagged ones out. Returns where the stage ended: ``end``, or ``start`` when there was none."""
    from core.dcd.label_issues import ensure_label_issues

    if not finds_label_issues(ws, request):
        return start
    t = time.perf_counter()
    span = progress.span(start, end)
    ensure_label_issues(ws, seed=config.seed, progress=span.stage("finding the pool's label issues", 0, 1))
    timings.step("label_issues", t)
    return end


def _arm(ws: Workspace, config: PipelineConfig, base_id: str, sel: Selection, method: str, schedule, *,
         progress: Progress) -> dict:
    """Fine-tune the classifier on one selection and evaluate it: the arm's result."""
    model_id = retrain(ws, base_model_id=base_id, selection_id=sel.selection_id, method=method, config=schedule,
                       epochs=config.finetune_epochs, progress=progress.span(0, 0.9))
    metrics = evaluate(ws, model_id, ray=config.ray, progress=progress.span(0.9, 1.0))
    kinds = sel.items["kind"].value_counts() if "kind" in sel.items else {}
    return {**metrics_summary(metrics), "n_added": len(sel.items), "n_failure": int(kinds.get("failure", 0)),
            "n_retrieved": int(kinds.get("retrieved", 0)), "n_rest": int(kinds.get("rest", 0)), "model_id": model_id,
            "selection_id": sel.selection_id}


def _uses_teacher(config: PipelineConfig) -> bool:
    """Whether DCD's retrieved images are labelled by the failure-only fix, which :func:`fix_each` then makes
    first."""
    return "dcd" in config.methods and config.label_policy == "teacher"


def _checks_retrieval(config: PipelineConfig) -> bool:
    """Whether :func:`fix_each` checks DCD's retrieval on folds of the failure's images first (it needs the
    teacher)."""
    return _uses_teacher(config) and config.retrieval == "checked"


def n_fix_stages(config: PipelineConfig) -> int:
    """Named stages :func:`fix_each` runs: the failure-only fix (also DCD's teacher), the check's
    fine-tunings (two per fold), DCD's fix, and the other baselines."""
    from core.dcd.fix_choice import VALIDATION_FOLDS

    arms = len(set(config.methods) | ({"error_sample_only"} if _uses_teacher(config) else set()))
    return arms + (2 * VALIDATION_FOLDS if _checks_retrieval(config) else 0)


def fix_each(ws: Workspace, config: PipelineConfig, base_id: str, request: SelectionRequest, results: dict,
             timings: Timings, *, progress: Progress) -> dict[str, Selection]:
    """Steps 3 and 4: each method's debug-train set, the classifier fine-tuned on it (one schedule for all)
    and evaluated, into ``results``. The failure's images alone come first: they are DCD's teacher
    (core.dcd.debug_train). Then whether retrieval helps is checked on folds of the failure's
    images (core.dcd.fix_choice): where it does not, DCD's fix is the failure-only fix, and its result says
    so. ``random`` gets the failure's images and as many random pool images as DCD retrieved."""
    from core.dcd.fix_choice import VALIDATION_FOLDS, RetrievalChoice, choose_retrieval
    from core.dcd.label_review import flagged_pool_ids
    from core.dcd.strategies import failure_images

    schedule = finetune_schedule(ws, base_id, config.train)
    teacher = _uses_teacher(config)
    order = [m for m in ("error_sample_only", "dcd", "random", "all_pool")
             if m in config.methods or (m == "error_sample_only" and teacher)]
    n_stages = max(1, n_fix_stages(config))
    done = 0

    def stage(name: str) -> Progress:
        nonlocal done
        span = progress.stage(name, done / n_stages, (done + 1) / n_stages)
        done += 1
        return span

    selections: dict[str, Selection] = {}
    for method in order:
        t = time.perf_counter()
        if method == "dcd":
            choice = None
            if teacher:
                target = request.target(ws)
                ids, labels = failure_images(ws, target.query_ids if target else None)
                if _checks_retrieval(config):
                    n_check = 2 * VALIDATION_FOLDS  # the check's fine-tunings, as n_fix_stages counts them
                    span = progress.span(done / n_stages, (done + n_check) / n_stages)
                    done += n_check
                    exclude = flagged_pool_ids(ws) if request.drops_label_issues() else None
                    choice = choose_retrieval(ws, base_id=base_id, failure_ids=ids, failure_labels=labels,
                                              embedder_id=request.embedder_id,
                                              budget=request.budget, config=schedule,
                                              epochs=config.finetune_epochs, seed=config.seed, exclude=exclude,
                                              rest_of_pool=request.rest_of_pool,
                                              index_memory_gb=request.index_memory_gb, progress=span)
                    timings.step("validate_retrieval", t)
                else:
                    choice = RetrievalChoice(True, "not checked: --retrieval always uses retrieval as found")
                print(f"retrieval: {choice.reason}", flush=True)
                request = replace(request, teacher_id=results["error_sample_only"]["model_id"])
            sel = selections["dcd"] = select(ws, "dcd", request)
            if choice is not None:
                record_params(ws, sel.selection_id, retrieval=choice.to_dict())
            if choice is None or choice.used:
                results["dcd"] = _arm(ws, config, base_id, sel, "dcd", schedule, progress=stage("fine-tuning on dcd"))
            else:
                stage("dcd: the failure's images alone (retrieval did not help)").report(1.0, force=True)
                results["dcd"] = {**results["error_sample_only"], "n_retrieved_found": int(
                    (sel.items["kind"] == "retrieved").sum()), "dcd_selection_id": sel.selection_id}
            results["dcd"]["retrieval"] = (choice.to_dict() if choice else
                                           {"used": True, "reason": f"not checked under label policy "
                                                                    f"{config.label_policy!r}"})
        else:
            if method == "random":
                n = int((selections["dcd"].items["kind"] == "retrieved").sum()) if "dcd" in selections else None
                sel = select(ws, "random", replace(request, budget=n or request.budget, name=None))
            else:
                sel = select(ws, method, replace(request, name=None))
            selections[method] = sel
            results[method] = _arm(ws, config, base_id, sel, method, schedule,
                                   progress=stage(f"fine-tuning on {method}"))
        timings.step(f"retrain_{method}", t)
    return selections


def loop_report(ws: Workspace, config: PipelineConfig, *, base_id: str, emb: dict, request: SelectionRequest,
                selections: dict[str, Selection], results: dict, counts: dict, timings: Timings,
                t0: float, failure_key: str = "error_heldout_acc") -> dict:
    """Step 5: the report (also the content of ``--json``); ``failure_key``: the result key of the failure's
    held-out accuracy that retrieval's summary compares on."""
    dcd = selections.get("dcd")
    info = dcd.index_info if dcd else None
    return {
        "methods": {m: results[m] for m in ("baseline", *config.methods, "error_sample_only") if m in results},
        "retrieval": retrieval_summary(results, failure_key),
        "classifier": {"model_id": base_id, "arch": get_model(ws, base_id).arch,
                       "finetune": asdict(finetune_schedule(ws, base_id, config.train))},
        "embedder": {"embedder_id": emb["embedder_id"], "precision": emb.get("precision")},
        "selection": {"neighbours": request.neighbours, "budget": request.budget, "label_policy": config.label_policy,
                      "drop_label_issues": request.drops_label_issues(),
                      "n_dcd": len(dcd.items) if dcd else None,
                      "index_type": info.index_type if info else None,
                      "recall": info.recall_at_k if info else None},
        "counts": counts,
        "config": {**asdict(config), "embedder": asdict(config.embedder)},
        "timings_s": dict(timings),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }


def retrieval_summary(results: dict, eval_key: str = "error_heldout_acc") -> dict | None:
    """What retrieval added beyond the failure's images: whether it was used and why, how many images it
    added, and DCD's fix against the failure-only fix on the failure's held-out part and on test."""
    dcd, alone = results.get("dcd"), results.get("error_sample_only")
    if not dcd or "retrieval" not in dcd:
        return None
    out = {**dcd["retrieval"], "n_retrieved": dcd.get("n_retrieved_found", dcd.get("n_retrieved", 0))}
    if alone:
        for key in (eval_key, "test_acc"):
            if dcd.get(key) is not None and alone.get(key) is not None:
                out[f"{key}_over_failure_only"] = round(dcd[key] - alone[key], 4)
    return out


def run_pipeline(ws: Workspace, config: PipelineConfig, *, progress: Progress | None = None) -> dict:
    """Run the loop for the ``error_sample`` split and return the report (also the content of ``--json``).
    For a slice as the failure, see core.scanner.slice_loop.run_loop."""
    progress = as_progress(progress)
    t0, timings = time.perf_counter(), Timings()
    counts = check_counts(ws, config, error_split=True)
    request = config.selection_request(n_failure=counts["error_sample"], n_pool=counts["pool"])
    n_stages = ((1 if config.classifier_id else 2) + 1 + finds_label_issues(ws, request)
                + n_fix_stages(config))
    progress.expect_stages(n_stages)  # stage names: Progress.stage
    base_id, baseline = baseline_classifier(ws, config, timings, progress=progress.span(0.0, 0.28))
    emb = embed_for_search(ws, config, base_id, ("error_sample", "pool"), timings, progress=progress.span(0.28, 0.4))
    mid = find_label_issues_stage(ws, config, request, timings, progress=progress, start=0.4, end=0.5)
    request = replace(request, embedder_id=emb["embedder_id"])
    results = {"baseline": baseline}
    selections = fix_each(ws, config, base_id, request, results, timings, progress=progress.span(mid, 1.0))
    return loop_report(ws, config, base_id=base_id, emb=emb, request=request, selections=selections,
                       results=results, counts=counts, timings=timings, t0=t0)
