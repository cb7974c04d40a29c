"""The DCD loop's settings and its fixes, below the scanner: the loop itself is core.scanner.loop.run_loop.

- :class:`PipelineConfig`: what the loop is asked to do (the classifier, the embedder, the failure, the methods,
  the engine), and the selection request it makes of DCD (:meth:`PipelineConfig.selection_request`);
- :func:`fix_each`: the fixes, one per method: the failure's images alone (``error_sample_only``, also DCD's
  teacher); whether retrieval helps, checked on folds of the failure's images (core.dcd.fix_choice);
  ``dcd`` (the failure's images plus what retrieval adds, core.dcd.debug_train, or the failure-only fix where
  retrieval did not help); ``random`` (the failure's images plus as many random pool images as DCD
  retrieved); ``all_pool``. Each fine-tunes the classifier with the same schedule and is evaluated;
- :func:`retrieval_summary`: what retrieval added beyond the failure's images, for the loop's report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from core.dcd.embed import EmbedderSpec
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
from core.models.evaluation import evaluate, metrics_summary
from core.models.pretrained import DEFAULT_BACKBONE
from core.models.schedules import finetune_schedule
from core.progress import Progress
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
    # Without an error_sample split, core.scanner.loop finds the slices and targets the worst one.
    from_slice: str | None = None
    # A failure reference (core.dcd.failure: error_sample, a slice RUN:RANK, a stored failure's id such as a
    # confusion cell's or picked images'): the loop fixes it (core.scanner.loop.run_loop).
    failure: str | None = None
    heldout_share: float = 0.5
    # The pool's flagged label issues, as SelectionRequest.label_issues: "drop" leaves them out of DCD's
    # selection, "keep" does not, "auto" drops them for a slice and keeps them with an error_sample split.
    # Where none are stored, they are found first (core.scanner.loop.find_label_issues).
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
    """The loop's fixes (core.scanner.loop.fix): each method's debug-train set, the classifier fine-tuned on it
    (one schedule for all) and evaluated, into ``results``. The failure's images alone come first: they are
    DCD's teacher (core.dcd.debug_train). Then whether retrieval helps is checked on folds of the failure's
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
                    t = time.perf_counter()  # retrain_dcd counts the fix alone, not the check before it
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
