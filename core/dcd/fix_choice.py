"""Whether retrieval helps a failure, judged on a validation part of the failure's own images.

The simplest fix of a failure is to fine-tune on its own labelled images; DCD's fix adds the pool images it
retrieves (core.dcd.debug_train). Where those add nothing (the failure's images already teach all that the
classifier can learn of it) or add harm (labels the teacher got wrong), the simplest fix should be shipped.
:func:`choose_retrieval` finds out without touching the failure's held-out part:

1. the failure's query images are split, seeded and by class, into a fit part and a validation part
   (:data:`VALIDATION_SHARE`);
2. the teacher is fine-tuned on train plus the fit part: the simplest fix, made without the validation part;
3. the debug-train set is built for the fit part, labelled by that teacher, and the student is fine-tuned on
   train plus it: DCD's fix, made without the validation part;
4. both are scored on the validation part: accuracy, ties broken by the mean probability of the right class.
   Retrieval is used where the student scores higher; otherwise the fix is the failure's images alone, and
   the reason says so.

Both models stay in memory and are dropped; the loop then makes the fix it chose with all of the failure's
images. A failure with too few images to hold :data:`MIN_VALIDATION` out is not validated: retrieval is used,
and the reason says that it was not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from core.data.images import pixels
from core.dcd.debug_train import build_debug_train, failure_items
from core.models.inference import predict_probs
from core.models.schedules import TrainConfig
from core.models.training import FineTuned, fine_tune
from core.runner.progress import Progress, as_progress
from core.store.workspace import Workspace

VALIDATION_SHARE = 0.3
#: Fewest validation images a choice is made on.
MIN_VALIDATION = 4


@dataclass
class RetrievalChoice:
    """What the validation part said: ``used`` (retrieval in DCD's fix, or the failure's images alone) and
    why, each model's score on the validation part, and the sizes."""

    used: bool
    reason: str
    n_fit: int = 0
    n_validation: int = 0
    n_retrieved_for_fit: int = 0
    failure_only: dict = field(default_factory=dict)  # accuracy, mean_p_right on the validation part
    with_retrieval: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def split_validation(image_ids: Sequence[int], labels: Sequence[int], *, share: float = VALIDATION_SHARE,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) positions into ``image_ids``: within each class a seeded shuffle, ``round(share * n)``
    held for validation (none from a class of one image)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(len(rows) - 1, round(share * len(rows)))
        val += rows[:n_val].tolist()
        fit += rows[n_val:].tolist()
    return np.sort(np.asarray(fit, np.int64)), np.sort(np.asarray(val, np.int64))


def validation_score(ws: Workspace, tuned: FineTuned, image_ids: Sequence[int], labels: Sequence[int]) -> dict:
    """Accuracy and mean probability of the right class of a fine-tuned model on ``image_ids``."""
    paths = ws.df("SELECT image_id, path FROM images WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                  [[int(i) for i in image_ids]]).set_index("image_id").path.loc[list(image_ids)]
    probs = predict_probs(tuned.model, pixels(ws, paths.tolist(), tuned.data_config.image_size), tuned.data_config)
    labels = np.asarray(labels, np.int64)
    return {"accuracy": float((probs.argmax(1) == labels).mean()),
            "mean_p_right": float(probs[np.arange(len(labels)), labels].mean())}


def _better(a: dict, b: dict) -> bool:
    return (a["accuracy"], a["mean_p_right"]) > (b["accuracy"], b["mean_p_right"])


def choose_retrieval(ws: Workspace, *, base_id: str, failure_ids: Sequence[int], failure_labels: Sequence[int],
                     embedder_id: str, budget: int, config: TrainConfig | None = None, epochs: int | None = None,
                     exclude: set[int] | None = None, seed: int = 0,
                     progress: Progress | None = None) -> RetrievalChoice:
    """Fine-tune the failure-only fix and DCD's fix without a validation part of the failure's images and
    compare them on it (see the module doc)."""
    progress = as_progress(progress)
    ids, labels = np.asarray(failure_ids, np.int64), np.asarray(failure_labels, np.int64)
    fit, val = split_validation(ids, labels, seed=seed)
    if len(val) < MIN_VALIDATION:
        return RetrievalChoice(True, f"not checked: {len(ids)} failure images are too few to hold "
                                     f"{MIN_VALIDATION} out for validation, so retrieval is used as found")
    common = dict(base_model_id=base_id, selection_id=None, config=config, epochs=epochs)
    teacher = fine_tune(ws, items=failure_items(ids[fit], labels[fit]), **common,
                        progress=progress.stage("validating: the failure's images alone", 0.0, 0.35))
    debug_train = build_debug_train(ws, embedder_id=embedder_id, failure_ids=ids[fit], failure_labels=labels[fit],
                                    teacher=teacher.model, data_config=teacher.data_config, budget=budget,
                                    exclude=exclude, seed=seed, progress=progress.span(0.35, 0.45))
    sizes = dict(n_fit=len(fit), n_validation=len(val), n_retrieved_for_fit=debug_train.n_retrieved)
    alone = validation_score(ws, teacher, ids[val], labels[val])
    if debug_train.n_retrieved == 0:
        return RetrievalChoice(False, "retrieval found no pool image that resembles the failure and that the "
                                      "failure's teacher labels with confidence", failure_only=alone, **sizes)
    student = fine_tune(ws, items=debug_train.items, **common,
                        progress=progress.stage("validating: with the retrieved images", 0.45, 1.0))
    added = validation_score(ws, student, ids[val], labels[val])
    n = len(val)
    said = (f"on {n} validation images of the failure: {added['accuracy']:.0%} right with the "
            f"{debug_train.n_retrieved} retrieved images, {alone['accuracy']:.0%} with the failure's images alone")
    if _better(added, alone):
        return RetrievalChoice(True, f"retrieval helps {said}", failure_only=alone, with_retrieval=added, **sizes)
    return RetrievalChoice(False, f"retrieval does not help {said} (mean probability of the right class "
                                  f"{added['mean_p_right']:.2f} against {alone['mean_p_right']:.2f}): the fix is the "
                                  f"failure's images alone", failure_only=alone, with_retrieval=added, **sizes)
