"""Train the classifier under debug on the workspace's train split (or load a given checkpoint).

    python -m jobs.train --workspace DIR [--classifier resnet18] [--classifier-weights PATH] [--epochs 12]

The new classifier becomes the workspace's current classifier; it is evaluated right away.
"""

from __future__ import annotations

import argparse

from core.evaluation import evaluate
from core.pipeline import metrics_summary
from core.progress import Progress
from core.training import train_classifier
from core.workspace import Workspace
from jobs._common import add_classifier_args, add_train_args, parser, run_job, train_config


def build_parser() -> argparse.ArgumentParser:
    p = parser("Train the classifier under debug on the train split.")
    add_classifier_args(p)
    add_train_args(p)
    return p


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    model_id = train_classifier(ws, arch=args.classifier, weights=args.classifier_weights, hub=args.hub,
                                image_size=args.image_size, config=train_config(args),
                                progress=progress.span(0, 0.9))
    metrics = evaluate(ws, model_id, progress=progress.span(0.9, 1.0))
    return {"model_id": model_id, **metrics_summary(metrics)}


def main(argv: list[str] | None = None) -> int:
    return run_job("train", argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
