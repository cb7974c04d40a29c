"""The failure job: name a failure to fix, a confusion cell of a classifier, images a person picked, or image
files a person uploaded.

``python -m jobs.failure --workspace W --cell TRUE:PRED [--splits test] [--classifier-id M]``, ``--images 1 2 3``
or ``--upload-dir DIR --label CLASS`` [``--name NAME``] stores the failure (core.dcd.failure) and prints its id,
to give the select and pipeline jobs as ``--failure ID``. An upload's files are ingested as the ``uploaded``
split, all in the query part (no held-out part: measured on test only); files that are not images are named
with why, and the others kept.
"""

from __future__ import annotations

from typing import Any

from core.progress import Progress
from core.runner.jobspec import JobOptions, JobSpec
from core.runner.options import Option
from core.store.workspace import Workspace


def _failure(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.dcd.failure import failure_from_cell, failure_from_images, failure_from_upload

    refused: dict[str, str] = {}
    if opts.upload_dir is not None:
        if opts.label is None:
            raise ValueError("--upload-dir needs --label CLASS: the class the uploaded images should have")
        failure, refused = failure_from_upload(ws, opts.upload_dir, opts.label, name=opts.name,
                                               progress=progress.span(0.0, 0.9))
        for file, why in refused.items():
            print(f"not used: {file}: {why}", flush=True)
    elif opts.cell is not None:
        true, sep, pred = str(opts.cell).partition(":")
        if not sep or not true.strip() or not pred.strip():
            raise ValueError(f"a confusion cell is TRUE:PRED (the label, then what the classifier takes it for; "
                             f"class names or indices), e.g. waterbird:landbird; got {opts.cell!r}")
        failure = failure_from_cell(ws, opts.classifier_id, true.strip(), pred.strip(), splits=opts.splits,
                                    seed=opts.seed, heldout_share=opts.heldout_share, name=opts.name)
    else:
        try:
            ids = [int(i) for i in opts.images]
        except ValueError:
            raise ValueError(f"--images takes image ids (integers), got {' '.join(opts.images)}") from None
        failure = failure_from_images(ws, ids, name=opts.name, seed=opts.seed, heldout_share=opts.heldout_share)
    progress.report(1.0, force=True)
    return {**failure.describe(), "query_ids": list(failure.query_ids), "heldout_ids": list(failure.heldout_ids),
            **({"refused": refused} if refused else {})}


def _options() -> tuple[Option, ...]:
    from core.dcd.failure import CELL_SPLITS

    return (
        Option("cell", help="a confusion cell TRUE:PRED: the images labelled TRUE that the classifier predicts as "
                            "PRED (class names or indices), e.g. waterbird:landbird"),
        Option("images", "list", help="image ids a person picked (labelled, not pool)"),
        Option("upload_dir", "path", help="a folder of image files a person uploaded (the app saves them under "
                                          "artifacts/uploads/): ingested as the uploaded split, all searched with, "
                                          "none held out (measured on test only)"),
        Option("label", help="with --upload-dir: the class the uploaded images should have (name or index)"),
        Option("splits", "list", ["test"], choices=CELL_SPLITS,
               help="with --cell: the splits the cell is read on (never train, which the classifier fit, nor the "
                    "pool, which DCD draws from)"),
        Option("classifier_id", picker="classifier",
               help="with --cell: the classifier whose predictions make the cell (default: the current one)"),
        Option("name", help="a human name (default: from the cell, or how many images were picked)"),
        Option("seed", "int", 0, advanced=True, help="seed of the query/held-out split"),
        Option("heldout_share", "float", 0.5, advanced=True, help="share of the images held out"),
    )


FAILURE = JobSpec("failure", "Name a failure to fix: a confusion cell of a classifier, images you picked, or "
                             "images you uploaded; its images are split into a query part and a held-out part "
                             "(uploaded ones: no held-out part).",
                  _options(), _failure, one_of=(("cell", "images", "upload_dir"),))

#: The jobs this module declares (core.runner.registry gathers them).
JOBS = (FAILURE,)
