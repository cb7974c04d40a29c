"""The label-issues job: out-of-sample probabilities, then which train and pool labels are more likely wrong.

``python -m jobs.label_issues --workspace W [--embedder-id E] [--splits train pool] [--folds 5] [--seed 0]``
runs :func:`core.dcd.label_issues.compute_label_issues`; the app's Errors page shows and decides the issues.
"""

from __future__ import annotations

from typing import Any

from core.progress import Progress
from core.runner.jobspec import JobOptions, JobSpec
from core.runner.options import Option
from core.store.workspace import Workspace


def _label_issues(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.dcd.label_issues import compute_label_issues

    return compute_label_issues(ws, embedder_id=opts.embedder_id, splits=opts.splits, folds=opts.folds,
                                seed=opts.seed, filter_by=opts.filter_by, train_labels=opts.train_labels,
                                progress=progress)


def _options() -> tuple[Option, ...]:
    from core.dcd.label_issues import DEFAULT_FILTER_BY, DEFAULT_FOLDS, FILTER_BY, SCORED_SPLITS, TRAIN_LABELS

    return (
        Option("embedder_id", picker="embedder",
               help="embedder whose frozen features the heads are fitted on (default: the pretrained backbone's "
                    "if embedded, else the most recently embedded); train and pool images it lacks are embedded"),
        Option("splits", "list", list(SCORED_SPLITS), choices=SCORED_SPLITS,
               help="splits to score: train against its labels, pool against its weak labels"),
        Option("folds", "int", DEFAULT_FOLDS, help="cross-validation folds for the out-of-sample probabilities"),
        Option("seed", "int", 0, help="seed of the fold assignment"),
        Option("train_labels", "choice", TRAIN_LABELS[0], choices=TRAIN_LABELS,
               help="trusted: train's labels are the ones you trust, flagged only where the heads are confident "
                    "against them; noisy: they are noisy themselves (the heads fitted on them have learnt their "
                    "noise, and their probabilities are read as a model of the given labels)"),
        Option("filter_by", "choice", DEFAULT_FILTER_BY, choices=FILTER_BY, advanced=True,
               help="which labels are flagged: posterior (more likely wrong than right) or one of cleanlab's "
                    "find_label_issues methods (prune_by_noise_rate: as many as confident learning counts wrong)"),
    )


LABEL_ISSUES = JobSpec("label_issues", "Find label issues in the train labels and the pool's weak labels "
                                       "(out-of-sample probabilities, the noise posterior).", _options(), _label_issues)

#: The jobs this module declares (core.runner.registry gathers them).
JOBS = (LABEL_ISSUES,)
