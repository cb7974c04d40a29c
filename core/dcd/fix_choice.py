"""Whether retrieval helps a failure, judged on folds of the failure's own images.

The simplest fix of a failure is to fine-tune on its own labelled images; DCD's fix adds the pool images it
retrieves (core.dcd.debug_train). Where those add nothing (the failure's images already teach all that the
classifier can learn of it) or add harm (labels the teacher got wrong), the simplest fix should be shipped.
:func:`choose_retrieval` finds out without touching the failure's held-out part:

1. the failure's query images are split, seeded and by class, into :data:`VALIDATION_FOLDS` folds; each
   fold in turn is the validation part and the others the fit part;
2. the teacher is fine-tuned on train plus the fit part: the simplest fix, made without the validation part;
3. the debug-train set is built for the fit part, labelled by that teacher, and the student is fine-tuned on
   train plus it: DCD's fix, made without the validation part;
4. both are scored on the validation part. Over the folds every failure image is judged once, by models
   that never saw it. Retrieval is used where the students get more of them right than the teachers;
   otherwise (ties included: the simpler fix wins them) the fix is the failure's images alone, and the
   reason says so.

Why folds rather than one validation part: one part of 30 images could not tell the two fixes apart on the
photo and CIFAR-10 scenarios (23 of 30 right for both, each time), where the failure's held-out images
later showed retrieval 2 points below and 5 points above the failure's images alone; and the mean
probability of the right class, tried as the tie-break, sided with retrieval on both. The models stay in
memory and are dropped; the loop then makes the fix it chose with all of the failure's images. A failure
with too few images to give every fold :data:`MIN_VALIDATION` is not validated: retrieval is used, and the
reason says that it was not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from core.dcd.debug_train import build_debug_train, failure_items
from core.dcd.fine_tune import FineTuned, fine_tune
from core.models.schedules import TrainConfig
from core.models.trunk import classifier_probs
from core.progress import Progress, as_progress
from core.store.workspace import Workspace

VALIDATION_FOLDS = 2
#: Fewest validation images a fold needs for a choice to be made.
MIN_VALIDATION = 4


@dataclass
class RetrievalChoice:
    """What the folds said: ``used`` (retrieval in DCD's fix, or the failure's images alone) and
    why, each fix's score over the validation parts, and the sizes."""

    used: bool
    reason: str
    folds: int = 0
    n_validation: int = 0  # failure images judged (each once, by models that never saw it)
    n_retrieved_for_fit: list[int] = field(default_factory=list)  # per fold
    failure_only: dict = field(default_factory=dict)  # accuracy, mean_p_right over the validation parts
    with_retrieval: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def split_folds(labels: Sequence[int], *, folds: int = VALIDATION_FOLDS, seed: int = 0) -> np.ndarray:
    """A fold number in ``[0, folds)`` per image: each class's images shuffled (seeded) and dealt round robin
    (core.dcd.label_issues.stratified_folds)."""
    from core.dcd.label_issues import stratified_folds

    return stratified_folds(np.asarray(labels), folds, seed)


def p_right(ws: Workspace, tuned: FineTuned, image_ids: Sequence[int], labels: Sequence[int]) -> np.ndarray:
    """A fine-tuned model's probability of the right class on each of ``image_ids``."""
    paths = ws.df("SELECT image_id, path FROM images WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                  [[int(i) for i in image_ids]]).set_index("image_id").path.loc[list(image_ids)]
    # fp32 always: the check is decided by a few images either way, which bf16's rounding must not tip
    # (a handful of images, so it costs nothing).
    probs, _ = classifier_probs(ws, tuned.model, tuned.data_config, list(image_ids), paths.tolist(),
                                trainable_stages=tuned.trainable_stages, allow_bf16=False)
    labels = np.asarray(labels, np.int64)
    right = probs[np.arange(len(labels)), labels]
    return np.where(probs.argmax(1) == labels, right, -right)  # the sign says whether the argmax is right


def _score(signed: np.ndarray) -> dict:
    return {"accuracy": float((signed > 0).mean()), "mean_p_right": float(np.abs(signed).mean())}


def choose_retrieval(ws: Workspace, *, base_id: str, failure_ids: Sequence[int], failure_labels: Sequence[int],
                     embedder_id: str, budget: int, config: TrainConfig | None = None, epochs: int | None = None,
                     exclude: set[int] | None = None, rest_of_pool: bool = False, seed: int = 0,
                     index_memory_gb: float | None = None, progress: Progress | None = None) -> RetrievalChoice:
    """Fine-tune the failure-only fix and DCD's fix without each fold of the failure's images and compare
    them on it (see the module doc)."""
    progress = as_progress(progress)
    ids, labels = np.asarray(failure_ids, np.int64), np.asarray(failure_labels, np.int64)
    fold = split_folds(labels, seed=seed)
    if np.bincount(fold, minlength=VALIDATION_FOLDS).min() < MIN_VALIDATION:
        return RetrievalChoice(True, f"not checked: {len(ids)} failure images are too few to validate on "
                                     f"{VALIDATION_FOLDS} folds of at least {MIN_VALIDATION}, so retrieval is used "
                                     f"as found")
    common = dict(base_model_id=base_id, selection_id=None, config=config, epochs=epochs)
    alone, added = np.zeros(len(ids)), np.zeros(len(ids))
    retrieved = []
    for f in range(VALIDATION_FOLDS):
        fit, val = fold != f, fold == f
        lo, hi = f / VALIDATION_FOLDS, (f + 1) / VALIDATION_FOLDS
        teacher = fine_tune(ws, items=failure_items(ids[fit], labels[fit]), **common, progress=progress.stage(
            f"validating ({f + 1}/{VALIDATION_FOLDS}): the failure's images alone", lo, lo + 0.4 * (hi - lo)))
        made = build_debug_train(ws, embedder_id=embedder_id, failure_ids=ids[fit], failure_labels=labels[fit],
                                 teacher=teacher.model, data_config=teacher.data_config, budget=budget,
                                 exclude=exclude, rest_of_pool=rest_of_pool, seed=seed,
                                 index_memory_gb=index_memory_gb, teacher_trainable_stages=teacher.trainable_stages,
                                 progress=progress.span(lo + 0.4 * (hi - lo), lo + 0.5 * (hi - lo)))
        retrieved.append(made.n_retrieved)
        alone[val] = p_right(ws, teacher, ids[val], labels[val])
        student = teacher if made.n_retrieved == 0 else fine_tune(ws, items=made.items, **common, progress=progress.stage(
            f"validating ({f + 1}/{VALIDATION_FOLDS}): with the retrieved images", lo + 0.5 * (hi - lo), hi))
        added[val] = p_right(ws, student, ids[val], labels[val])
    a, b = _score(added), _score(alone)
    sizes = dict(folds=VALIDATION_FOLDS, n_validation=len(ids), n_retrieved_for_fit=retrieved, failure_only=b,
                 with_retrieval=a)
    said = (f"on the failure's {len(ids)} images, each judged by fixes made without it ({VALIDATION_FOLDS} folds): "
            f"{int(round(a['accuracy'] * len(ids)))} right with the retrieved images "
            f"({', '.join(str(n) for n in retrieved)} per fold), {int(round(b['accuracy'] * len(ids)))} with the "
            f"failure's images alone")
    if not any(retrieved):
        return RetrievalChoice(False, "retrieval found no pool image that resembles the failure and that the "
                                      "failure's teacher labels with confidence", **sizes)
    if a["accuracy"] > b["accuracy"]:
        return RetrievalChoice(True, f"retrieval helps {said}", **sizes)
    return RetrievalChoice(False, f"retrieval does not help {said}: the fix is the failure's images alone", **sizes)
