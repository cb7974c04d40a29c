"""Compute attribution maps and attribution-weighted vectors of the classifier (AttributionScanner).

    python -m jobs.attribute --workspace DIR [--model-id ID] [--method gradcam|integrated_gradients]
        [--target label|pred] [--heatmap-size 7] [--splits train,test,error_heldout] [--batch-size 64]

Grad-CAM (captum LayerGradCam) runs on the classifier's last conv block; ViTs get Grad-CAM on tokens.
"""

from __future__ import annotations

import argparse

from core.attribution import DEFAULT_SPLITS, METHODS, TARGETS, AttributionConfig, attribute
from core.progress import Progress
from core.workspace import Workspace
from jobs._common import parser, run_job


def add_attribution_args(p: argparse.ArgumentParser) -> None:
    d = AttributionConfig()
    g = p.add_argument_group("attribution")
    g.add_argument("--model-id", default=None, help="classifier to attribute (default: the current one)")
    g.add_argument("--method", choices=METHODS, default=d.method, help=f"attribution method ({d.method})")
    g.add_argument("--target", choices=TARGETS, default=d.target,
                   help="class to attribute: the image's label where known, or the prediction (label)")
    g.add_argument("--heatmap-size", type=int, default=d.heatmap_size, help=f"stored map side ({d.heatmap_size})")
    g.add_argument("--splits", default=",".join(DEFAULT_SPLITS), help="comma-separated splits to attribute")
    g.add_argument("--attr-batch-size", type=int, default=d.batch_size, help=f"images per batch ({d.batch_size})")
    g.add_argument("--ig-steps", type=int, default=d.ig_steps, help="integrated gradients steps")
    g.add_argument("--no-bf16", action="store_true", help="always compute in fp32")


def attribution_config(args: argparse.Namespace) -> AttributionConfig:
    return AttributionConfig(method=args.method, target=args.target, heatmap_size=args.heatmap_size,
                             batch_size=args.attr_batch_size, ig_steps=args.ig_steps, allow_bf16=not args.no_bf16)


def split_list(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = parser("Compute attribution maps and attribution-weighted vectors of the classifier.")
    add_attribution_args(p)
    return p


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    summary = attribute(ws, args.model_id, splits=split_list(args.splits), config=attribution_config(args),
                        progress=progress)
    print(f"attributed {summary['n']} images of {summary['model_id']} with {summary['method']} "
          f"({summary['precision_reason']}) in {summary['seconds']} s")
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job("attribute", argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
