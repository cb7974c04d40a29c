"""Fine-tune the classifier on train + a debug-train selection, then evaluate the new model.

    python -m jobs.retrain --workspace DIR --selection-id ID [--base-model-id ID] [--finetune-epochs 6]
    python -m jobs.retrain --workspace DIR --mitigate corm [--run-id ID] [--corm-lambda 1] [--corm-sigma 1]
        [--mislabeled relabel|drop|keep] --json OUT

``--mitigate corm`` fine-tunes with Core Risk Minimization from the slice annotations (core.mitigation) and
writes {"methods": {"baseline": {"test_acc", "worst_group_acc", ...}, "corm": {...}}, "corm": {summary}}.
"""

from __future__ import annotations

import argparse

from core.evaluation import compute_metrics, evaluate
from core.pipeline import metrics_summary
from core.progress import Progress
from core.registry import current_classifier
from core.workspace import Workspace
from core.training import retrain
from jobs._common import add_train_args, parser, run_job, train_config


def add_mitigation_args(p: argparse.ArgumentParser) -> None:
    from core.mitigation import MISLABELED_POLICIES, CormConfig

    d = CormConfig()
    g = p.add_argument_group("mitigation (from slice annotations)")
    g.add_argument("--mitigate", choices=("none", "corm"), default="none",
                   help="corm: Core Risk Minimization from the slices annotated spurious / mislabeled")
    g.add_argument("--run-id", default=None, help="slice run whose annotations to use (default: the latest)")
    g.add_argument("--corm-lambda", type=float, default=d.lam, help=f"weight of the noise term ({d.lam})")
    g.add_argument("--corm-sigma", type=float, default=d.sigma, help=f"noise std, normalised pixels ({d.sigma})")
    g.add_argument("--mask-threshold", type=float, default=d.mask_threshold,
                   help=f"share of an attribution map's peak that counts as spurious ({d.mask_threshold})")
    g.add_argument("--propagate", action="store_true",
                   help="also mask train images sharing the spurious slices' feature (default: only their members)")
    g.add_argument("--propagate-threshold", type=float, default=d.propagate_threshold,
                   help=f"cosine similarity to the spurious prototype that gets masked ({d.propagate_threshold})")
    g.add_argument("--mislabeled", choices=MISLABELED_POLICIES, default=d.mislabeled,
                   help=f"train members of slices annotated mislabeled: relabel to the model's label, drop, "
                        f"or keep ({d.mislabeled})")


def build_parser() -> argparse.ArgumentParser:
    p = parser("Fine-tune the classifier on train + a selection and evaluate it.")
    p.add_argument("--selection-id", default=None, help="debug-train selection to add (none: train only)")
    p.add_argument("--base-model-id", default=None, help="classifier to fine-tune (default: the current one)")
    p.add_argument("--method", default=None, help="name recorded for the new model (default: the selection's)")
    add_train_args(p)
    add_mitigation_args(p)
    return p


def run_corm(ws: Workspace, args: argparse.Namespace, base: str, progress: Progress) -> dict:
    from core.mitigation import CormConfig, corm_retrain

    if args.selection_id:
        raise ValueError("--mitigate corm fine-tunes on train only; leave out --selection-id")
    config = CormConfig(lam=args.corm_lambda, sigma=args.corm_sigma, mask_threshold=args.mask_threshold,
                        propagate=args.propagate, propagate_threshold=args.propagate_threshold,
                        mislabeled=args.mislabeled, epochs=args.finetune_epochs)
    try:
        before = compute_metrics(ws, base)
    except ValueError:
        before = evaluate(ws, base, progress=progress.span(0, 0.05))
    model_id, summary = corm_retrain(ws, base_model_id=base, run_id=args.run_id, config=config,
                                     train_config=train_config(args), progress=progress.span(0.05, 0.9))
    after = evaluate(ws, model_id, progress=progress.span(0.9, 1.0))
    report = {"methods": {"baseline": {**metrics_summary(before), "model_id": base},
                          "corm": {**metrics_summary(after), "model_id": model_id}},
              "corm": summary}
    print(f"{'method':<10}{'test_acc':>10}{'worst_group_acc':>17}")
    for m, r in report["methods"].items():
        wga = "" if r["worst_group_acc"] is None else f"{r['worst_group_acc']:.3f}"
        print(f"{m:<10}{r['test_acc']:>10.3f}{wga:>17}")
    return report


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    base = args.base_model_id or current_classifier(ws)
    if not base:
        raise ValueError("no classifier to fine-tune; run jobs.train first or pass --base-model-id")
    if args.mitigate == "corm":
        return run_corm(ws, args, base, progress)
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
