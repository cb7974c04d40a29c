"""Store a classifier's predictions (class, probabilities, loss, correct) for the given splits.

    python -m jobs.predict --workspace DIR [--model-id ID] [--splits train,test,error_sample,error_heldout]
"""

from __future__ import annotations

import argparse

from core.evaluation import predict
from core.progress import Progress
from core.registry import current_classifier
from core.workspace import Workspace
from jobs._common import parser, run_job


def build_parser() -> argparse.ArgumentParser:
    p = parser("Predict with a classifier and store the predictions.")
    p.add_argument("--model-id", default=None, help="classifier (default: the current one)")
    p.add_argument("--splits", default="train,test,error_sample,error_heldout")
    return p


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    model_id = args.model_id or current_classifier(ws)
    if not model_id:
        raise ValueError("the workspace has no classifier yet; run jobs.train first")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    df = predict(ws, model_id, splits=splits, progress=progress)
    return {"model_id": model_id, "n_predicted": len(df)}


def main(argv: list[str] | None = None) -> int:
    return run_job("predict", argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
