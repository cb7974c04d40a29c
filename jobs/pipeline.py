"""Run the whole DCD loop on an ingested workspace and report every method.

    python -m jobs.pipeline --workspace DIR --json OUT.json
        [--classifier resnet18 | --classifier-id ID | --classifier-weights PATH]
        [--embedder vit_small_patch16_224.dino --embedder-weights PATH] [--k K] [--budget B]

Writes {"methods": {"baseline"|"dcd"|"random"|"all_pool"|"error_sample_only":
                    {"test_acc", "error_heldout_acc", "n_added", ...}}, ...}.
"""

from __future__ import annotations

import argparse

from core.pipeline import PipelineConfig, run_pipeline
from core.progress import Progress
from core.selection import DEFAULT_LABEL_POLICY, LABEL_POLICIES, METHODS
from core.workspace import Workspace
from jobs._common import (add_classifier_args, add_embedder_args, add_train_args, embedder_spec, parser,
                          run_job, train_config)


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    add_classifier_args(p)
    add_embedder_args(p)
    add_train_args(p)
    g = p.add_argument_group("selection")
    g.add_argument("--k", type=int, default=None, help="neighbours per error image (default: from budget)")
    g.add_argument("--budget", type=int, default=None, help="debug-train size (default: 10 per error image)")
    g.add_argument("--label-policy", choices=LABEL_POLICIES, default=DEFAULT_LABEL_POLICY,
                   help="label of a retrieved pool image: its weak label, the error image's label, or only "
                        f"images where both agree (default {DEFAULT_LABEL_POLICY})")
    g.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {list(METHODS)}")
    return PipelineConfig(classifier=args.classifier, classifier_weights=args.classifier_weights,
                          classifier_id=args.classifier_id, hub=args.hub, image_size=args.image_size,
                          embedder=embedder_spec(args), k=args.k, budget=args.budget,
                          label_policy=args.label_policy, train=train_config(args),
                          finetune_epochs=args.finetune_epochs, methods=methods, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = parser("Run the whole DCD loop: train, embed, select (every method), retrain, evaluate.")
    add_pipeline_args(p)
    return p


def print_table(report: dict) -> None:
    print(f"{'method':<20}{'test_acc':>10}{'error_heldout_acc':>20}{'n_added':>10}")
    for method, r in report["methods"].items():
        print(f"{method:<20}{r['test_acc']:>10.3f}{r['error_heldout_acc']:>20.3f}{r['n_added']:>10}")


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    report = run_pipeline(ws, pipeline_config(args), progress=progress)
    print_table(report)
    return report


def main(argv: list[str] | None = None) -> int:
    return run_job("pipeline", argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
