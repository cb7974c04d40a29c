"""Fine-tune the classifier on train + a debug-train selection, then evaluate the new model.

    python -m jobs.retrain --workspace DIR --selection-id ID [--base-model-id ID] [--finetune-epochs 6]
"""

from __future__ import annotations

import argparse

from core.evaluation import evaluate
from core.pipeline import metrics_summary
from core.progress import Progress
from core.registry import current_classifier
from core.workspace import Workspace
from core.training import retrain
from jobs._common import add_train_args, parser, run_job, train_config


def build_parser() -> argparse.ArgumentParser:
    p = parser("Fine-tune the classifier on train + a selection and evaluate it.")
    p.add_argument("--selection-id", default=None, help="debug-train selection to add (none: train only)")
    p.add_argument("--base-model-id", default=None, help="classifier to fine-tune (default: the current one)")
    p.add_argument("--method", default=None, help="name recorded for the new model (default: the selection's)")
    add_train_args(p)
    return p


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    base = args.base_model_id or current_classifier(ws)
    if not base:
        raise ValueError("no classifier to fine-tune; run jobs.train first or pass --base-model-id")
    method = args.method
    if method is None and args.selection_id:
        method = ws.scalar("SELECT method FROM selections WHERE selection_id = ?", [args.selection_id])
        if method is None:
            raise ValueError(f"no selection {args.selection_id!r} in the workspace")
    model_id = retrain(ws, base_model_id=base, selection_id=args.selection_id, method=method or "finetune",
                       config=train_config(args), epochs=args.finetune_epochs, progress=progress.span(0, 0.9))
    metrics = evaluate(ws, model_id, progress=progress.span(0.9, 1.0))
    return {"methods": {method or "finetune": {**metrics_summary(metrics), "model_id": model_id}}}


def main(argv: list[str] | None = None) -> int:
    return run_job("retrain", argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
