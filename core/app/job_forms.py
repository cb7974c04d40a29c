"""What the app's job forms show: the two or three options a person sets first (the rest under Advanced), and
for options left empty, the value the job will use on this workspace (so a form never shows a default that
differs from what the job, and the pipeline, do: an empty field passes no flag).
"""

from __future__ import annotations

from typing import Any

from core.runner.options import Option
from core.runner.registry import JobSpec
from core.store.workspace import Workspace

#: The options each job's form shows first, in this order; every other option goes under Advanced. A job not
#: listed shows its first three options that are not marked advanced.
FORM_FIELDS: dict[str, tuple[str, ...]] = {
    "retrain": ("selection_id", "classifier_id", "mitigate"),
    "pipeline": ("classifier", "budget", "methods"),
    "demo": ("dataset", "size", "no_pipeline"),
    "train": ("classifier", "classifier_weights", "epochs"),
    "embed": ("embedder", "embedder_weights", "splits"),
    "select": ("method", "budget", "name"),
    "predict": ("classifier_id", "splits"),
    "evaluate": ("classifier_id",),
    "ingest": ("manifest", "imagefolder"),
    "attribute": ("classifier_id", "splits"),
    "slices": ("classifier_id", "slices"),
    "annotate_demo": ("run_id",),
    "failure": ("cell", "images", "classifier_id"),
}


def form_fields(spec: JobSpec) -> tuple[list[Option], list[Option]]:
    """(the options the form shows first, the rest for its Advanced section) of a job."""
    by_name = {o.name: o for o in spec.options}
    names = [n for n in FORM_FIELDS.get(spec.name, ()) if n in by_name]
    if not names:
        names = [o.name for o in spec.options if not o.advanced][:3]
    return [by_name[n] for n in names], [o for o in spec.options if o.name not in names]


def _schedule_hints(sched: Any, finetune: Any) -> dict[str, str]:
    stages = "all" if sched.trainable_stages is None else str(sched.trainable_stages)
    return {"epochs": f"{sched.epochs}", "finetune_epochs": f"{finetune.epochs}", "batch_size": f"{sched.batch_size}",
            "trainable_stages": stages, "lr": f"{sched.lr:g} (fine-tuning at {finetune.lr:g})"}


def default_hints(ws: Workspace, kind: str) -> dict[str, str]:
    """option name -> what the job does when the option is left empty, on this workspace ("3", "0.02
    (fine-tuning at 0.004)", "400") for the options whose default depends on the data or the model; a form
    shows it as the empty field's placeholder."""
    from core.data.splits import split_counts
    from core.dcd.strategies import search_size
    from core.models.schedules import PRETRAINED_IMAGE_SIZE, PRETRAINED_SCHEDULE, finetune_schedule

    hints: dict[str, str] = {}
    if kind in ("train", "pipeline"):
        hints.update(_schedule_hints(PRETRAINED_SCHEDULE, PRETRAINED_SCHEDULE.finetune()))
        hints["image_size"] = f"{PRETRAINED_IMAGE_SIZE} (the default backbone's; 64 from scratch)"
    if kind == "retrain":
        from core.models.catalog import current_classifier

        base = current_classifier(ws)
        if base:
            sched = finetune_schedule(ws, base)
            hints.update(_schedule_hints(sched, sched.finetune()))
    if kind in ("select", "pipeline"):
        counts = split_counts(ws)
        n_es, n_pool = int(counts.get("error_sample", 0)), int(counts.get("pool", 0))
        if n_es and n_pool:
            size = search_size(n_es, n_pool)
            hints.update(budget=f"{size.budget} ({size.why})",
                         neighbours=f"{size.neighbours}")
    return hints
