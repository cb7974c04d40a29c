"""The whole DCD loop on an ingested workspace, as one function.

1. the classifier under debug: trained on ``train`` unless one is given (a workspace model id, or a
   checkpoint file). Without flags: the packaged ImageNet backbone fine-tuned (core.models.schedules'
   pretrained schedule);
2. the embedder: embeds error_sample and pool. Without flags: the same pretrained backbone, frozen, at its
   own resolution (DCD's feature space); ``classifier`` uses the classifier's own penultimate layer;
3. selections: ``dcd`` and, with the same number of images, the baselines ``random``, ``all_pool`` and
   ``error_sample_only``;
4. each selection fine-tunes the classifier (same schedule for all), every model is evaluated;
5. a report ``{"methods": {method: {"test_acc", "error_heldout_acc", "n_added", ...}}}``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from core.data.splits import split_counts
from core.dcd.embed import EmbedderSpec, embed_split_images
from core.dcd.strategies import DEFAULT_LABEL_POLICY, METHODS, SelectionRequest, default_budget, default_k, select
from core.models.catalog import get_model
from core.models.evaluation import evaluate, metrics_summary
from core.models.pretrained import DEFAULT_BACKBONE
from core.models.schedules import finetune_schedule, initial_schedule
from core.models.training import retrain, train_classifier
from core.runner.progress import Progress, as_progress
from core.store.workspace import Workspace


@dataclass
class PipelineConfig:
    classifier: str = DEFAULT_BACKBONE
    classifier_weights: str | None = None
    classifier_id: str | None = None  # an existing classifier of the workspace: skip training
    hub: bool = False
    image_size: int | None = None  # None: core.models.schedules.default_image_size
    embedder: EmbedderSpec = field(default_factory=EmbedderSpec)
    k: int | None = None
    budget: int | None = None
    label_policy: str = DEFAULT_LABEL_POLICY
    # Training settings the user gave (TrainConfig field -> value); the rest follow the model's schedule.
    train: dict[str, Any] = field(default_factory=dict)
    finetune_epochs: int | None = None
    methods: tuple[str, ...] = METHODS
    seed: int = 0
    index_memory_gb: float | None = None  # the pool index's memory budget (core.dcd.index)


def run_pipeline(ws: Workspace, config: PipelineConfig, *, progress: Progress | None = None) -> dict:
    """Run the loop and return the report (also the content of ``--json``)."""
    progress = as_progress(progress)
    t0 = time.perf_counter()
    counts = split_counts(ws)
    for split in ("train", "test", "error_sample", "error_heldout", "pool"):
        if counts[split] == 0 and (split != "train" or config.classifier_id is None):
            raise ValueError(f"the DCD loop needs '{split}' images and the workspace has none "
                             f"(counts: {counts}); ingest them first")
    timings: dict[str, float] = {}

    def timed(name: str, t: float) -> None:
        timings[name] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    if config.classifier_id:
        base_id = get_model(ws, config.classifier_id).model_id
    else:
        schedule = initial_schedule(config.classifier, weights=config.classifier_weights, hub=config.hub,
                                    overrides=config.train)
        base_id = train_classifier(ws, arch=config.classifier, weights=config.classifier_weights,
                                   hub=config.hub, image_size=config.image_size, config=schedule,
                                   progress=progress.span(0.0, 0.25))
    timed("train", t)
    t = time.perf_counter()
    results = {"baseline": {**metrics_summary(evaluate(ws, base_id, progress=progress.span(0.25, 0.28))),
                            "n_added": 0, "model_id": base_id}}
    timed("evaluate_baseline", t)

    t = time.perf_counter()
    spec = config.embedder
    if spec.arch == "classifier":
        spec = replace(spec, classifier_id=base_id)
    emb = embed_split_images(ws, spec, splits=("error_sample", "pool"), progress=progress.span(0.28, 0.4))
    embedder_id = emb["embedder_id"]
    timed("embed", t)

    budget = config.budget or default_budget(counts["error_sample"], counts["pool"])
    k = config.k or default_k(budget, counts["error_sample"])
    t = time.perf_counter()
    selections = {}
    if "dcd" in config.methods:
        selections["dcd"] = select(ws, "dcd", SelectionRequest(budget=budget, neighbours=k, embedder_id=embedder_id,
                                                                label_policy=config.label_policy,
                                                                index_memory_gb=config.index_memory_gb))  # type: ignore[arg-type]
    n_match = len(selections["dcd"].items) if "dcd" in selections else budget
    for method in ("random", "all_pool", "error_sample_only"):
        if method in config.methods:
            selections[method] = select(ws, method, SelectionRequest(budget=n_match, seed=config.seed))
    timed("select", t)

    n_sel = max(1, len(selections))
    schedule = finetune_schedule(ws, base_id, config.train)
    for i, (method, sel) in enumerate(selections.items()):
        t = time.perf_counter()
        span = progress.span(0.4 + 0.6 * i / n_sel, 0.4 + 0.6 * (i + 1) / n_sel)
        model_id = retrain(ws, base_model_id=base_id, selection_id=sel.selection_id, method=method,
                           config=schedule, epochs=config.finetune_epochs, progress=span.span(0, 0.9))
        metrics = evaluate(ws, model_id, progress=span.span(0.9, 1.0))
        results[method] = {**metrics_summary(metrics), "n_added": len(sel.items), "model_id": model_id,
                           "selection_id": sel.selection_id}
        timed(f"retrain_{method}", t)

    info = selections["dcd"].index_info if "dcd" in selections else None
    report = {
        "methods": results,
        "classifier": {"model_id": base_id, "arch": get_model(ws, base_id).arch, "finetune": asdict(schedule)},
        "embedder": {"embedder_id": embedder_id, "precision": emb.get("precision")},
        "selection": {"k": k, "budget": budget, "label_policy": config.label_policy,
                      "index_type": info.index_type if info else None,
                      "recall": info.recall_at_k if info else None},
        "counts": counts,
        "config": {**asdict(config), "embedder": asdict(config.embedder)},
        "timings_s": timings,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    return report
