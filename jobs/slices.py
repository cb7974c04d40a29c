"""Find error slices: cluster attribution-weighted vectors, rank the slices, draw their mosaics.

    python -m jobs.slices --workspace DIR --json OUT [--k K | --k-min 6 --k-max 24] [--attribute]
        [--pred-weight 0.5] [--error-weight 0.5] [--mosaic-layout grid|confusion]

Writes {"run_id", "model_id", "k", "slices": [{"rank", "size", "accuracy", "score", "group", "purity",
"mislabeled", ...}]}; group / purity / mislabeled come from ground truth where the workspace has it (they are
never used to find the slices). With --attribute (or when the model has no attributions yet) the
attributions are computed first.
"""

from __future__ import annotations

import argparse

from core.mosaic import LAYOUTS
from core.progress import Progress
from core.slices import AUTO_K_RANGE, SliceConfig, find_slices, slice_report
from core.workspace import Workspace
from jobs._common import parser, run_job
from jobs.attribute import add_attribution_args, attribution_config, split_list


def build_parser() -> argparse.ArgumentParser:
    d = SliceConfig()
    p = parser("Find error slices from attributions, rank them and draw their Attribution Mosaics.")
    add_attribution_args(p)
    p.add_argument("--attribute", action="store_true", help="(re)compute the attributions first")
    g = p.add_argument_group("slicing")
    g.add_argument("--k", type=int, default=None, help="number of slices (default: chosen automatically)")
    g.add_argument("--k-min", type=int, default=AUTO_K_RANGE[0], help="smallest k tried automatically")
    g.add_argument("--k-max", type=int, default=AUTO_K_RANGE[1], help="largest k tried automatically")
    g.add_argument("--pred-weight", type=float, default=d.pred_weight,
                   help=f"weight of the predicted-class one-hot appended to the vectors ({d.pred_weight})")
    g.add_argument("--error-weight", type=float, default=d.error_weight,
                   help=f"weight of the right/wrong one-hot appended to the vectors ({d.error_weight})")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--mosaic-tiles", type=int, default=d.mosaic_tiles, help="tiles per mosaic")
    g.add_argument("--mosaic-layout", choices=LAYOUTS, default=d.mosaic_layout)
    g.add_argument("--no-mosaics", action="store_true", help="skip drawing the mosaics")
    return p


def print_table(report: list[dict]) -> None:
    print(f"{'rank':>4}{'size':>7}{'acc':>7}{'score':>9}  {'group':<24}{'purity':>7}{'mislab':>7}")
    for r in report:
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.2f}"
        pur = "" if r["purity"] is None else f"{r['purity']:.2f}"
        print(f"{r['rank']:>4}{r['size']:>7}{acc:>7}{r['score']:>9.2f}  {str(r['group'] or ''):<24}{pur:>7}"
              f"{'' if r['mislabeled'] is None else r['mislabeled']:>7}")


def run(ws: Workspace, args: argparse.Namespace, progress: Progress) -> dict:
    from core.attribution import attribute
    from core.registry import current_classifier

    model_id = args.model_id or current_classifier(ws)
    if not model_id:
        raise ValueError("no classifier in the workspace; train one with `python -m jobs.train` first")
    splits = tuple(split_list(args.splits))
    have = ws.scalar("SELECT count(*) FROM attributions a JOIN images i USING (image_id) WHERE a.model_id = ? "
                     f"AND i.split IN ({', '.join('?' * len(splits))})", [model_id, *splits])
    attr_summary = None
    if args.attribute or not have:
        attr_summary = attribute(ws, model_id, splits=splits, config=attribution_config(args),
                                 progress=progress.span(0, 0.6))
    config = SliceConfig(k=args.k, k_range=(args.k_min, args.k_max), splits=splits, pred_weight=args.pred_weight,
                         error_weight=args.error_weight, seed=args.seed, mosaics=not args.no_mosaics,
                         mosaic_tiles=args.mosaic_tiles, mosaic_layout=args.mosaic_layout)
    result = find_slices(ws, model_id, config=config, progress=progress.span(0.6 if attr_summary else 0, 1.0))
    report = slice_report(ws, result.run_id)
    print_table(report)
    return {"run_id": result.run_id, "model_id": model_id, "k": int(result.params["k"]),
            "n_images": result.params["n_images"], "attribution": attr_summary, "slices": report}


def main(argv: list[str] | None = None) -> int:
    return run_job("slices", argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
