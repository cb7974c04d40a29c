"""Evaluate classifiers: predict on the evaluation splits and store accuracy per split and group.

    python -m jobs.evaluate --workspace DIR [--model-id ID ...]   (default: every classifier)
"""

from __future__ import annotations

import argparse

from core.evaluation import evaluate
from core.pipeline import metrics_summary
from core.progress import Progress
from core.registry import list_models
from core.workspace import Workspace
from jobs._common import parser, run_job


def build_parser() -> argparse.ArgumentParser:
    p = parser("Evaluate classifiers on test, error_heldout and every group.")
    p.add_argument("--model-id", nargs="*", default=None, help="classifiers to evaluate (default: all)")
    return p


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    ids = args.model_id or list_models(ws, "classifier").model_id.tolist()
    if not ids:
        raise ValueError("the workspace has no classifier to evaluate; run jobs.train first")
    out = {}
    for i, model_id in enumerate(ids):
        out[model_id] = metrics_summary(evaluate(ws, model_id,
                                                 progress=progress.span(i / len(ids), (i + 1) / len(ids))))
    return {"models": out}


def main(argv: list[str] | None = None) -> int:
    return run_job("evaluate", argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
