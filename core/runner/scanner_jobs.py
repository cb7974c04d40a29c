"""AttributionScanner's jobs: attribution maps, and slices (attributions, clustering, ranking, mosaics)."""

from __future__ import annotations

from typing import Any

from core.progress import Progress
from core.runner.configs import attribution_config, ray_config
from core.runner.jobspec import JobOptions, JobSpec
from core.runner.options import Option, attribution_options, engine_options
from core.store.workspace import Workspace


def _attribute(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.scanner.attribution import attribute

    return attribute(ws, opts.classifier_id, splits=opts.splits, config=attribution_config(opts), ray=ray_config(opts),
                     progress=progress)


ATTRIBUTE = JobSpec("attribute", "Compute attribution maps and attribution-weighted vectors of the classifier "
                                 "(Grad-CAM on its last conv block; ViTs get Grad-CAM on tokens).",
                    attribution_options() + engine_options(), _attribute)


def _slices(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.models.catalog import require_classifier
    from core.scanner.attribution import attribute, has_attributions
    from core.scanner.runs import SliceConfig, find_slices, slice_report

    model_id = require_classifier(ws, opts.classifier_id, purpose="slice")
    splits = tuple(opts.splits)
    attr_summary = None
    if opts.attribute or not has_attributions(ws, model_id, splits):
        attr_summary = attribute(ws, model_id, splits=splits, config=attribution_config(opts),
                                 ray=ray_config(opts), progress=progress.span(0, 0.6))
    config = SliceConfig(n_slices=opts.slices, n_slices_range=(opts.slices_min, opts.slices_max), splits=splits,
                         pred_weight=opts.pred_weight, error_weight=opts.error_weight, seed=opts.seed,
                         mosaics=not opts.no_mosaics, mosaic_tiles=opts.mosaic_tiles, mosaic_layout=opts.mosaic_layout)
    result = find_slices(ws, model_id, config=config, progress=progress.span(0.6 if attr_summary else 0, 1.0))
    return {"run_id": result.run_id, "model_id": model_id, "n_slices": int(result.params["n_slices"]),
            "n_images": result.params["n_images"], "attribution": attr_summary,
            "slices": slice_report(ws, result.run_id)}


def _slice_options() -> tuple[Option, ...]:
    from core.scanner.mosaic import LAYOUTS
    from core.scanner.runs import SliceConfig
    from core.scanner.slicer import AUTO_N_SLICES_RANGE

    d, g = SliceConfig(), "slicing"
    return attribution_options() + engine_options() + (
        Option("attribute", "flag", False, help="(re)compute the attributions first"),
        Option("slices", "int", group=g, aliases=("--k",), help="number of slices (default: chosen automatically)"),
        Option("slices_min", "int", AUTO_N_SLICES_RANGE[0], group=g, aliases=("--k-min",), advanced=True,
               help="fewest slices tried automatically"),
        Option("slices_max", "int", AUTO_N_SLICES_RANGE[1], group=g, aliases=("--k-max",), advanced=True,
               help="most slices tried automatically"),
        Option("pred_weight", "float", d.pred_weight, group=g, advanced=True,
               help=f"weight of the predicted-class one-hot appended to the vectors ({d.pred_weight})"),
        Option("error_weight", "float", d.error_weight, group=g, advanced=True,
               help=f"weight of the right/wrong one-hot appended to the vectors ({d.error_weight})"),
        Option("seed", "int", d.seed, group=g, advanced=True),
        Option("mosaic_tiles", "int", d.mosaic_tiles, group=g, advanced=True, help="tiles per mosaic"),
        Option("mosaic_layout", "choice", d.mosaic_layout, choices=LAYOUTS, group=g, advanced=True),
        Option("no_mosaics", "flag", False, group=g, advanced=True, help="skip drawing the mosaics"),
    )


SLICES = JobSpec("slices", "Find error slices from attributions, rank them and draw their Attribution "
                           "Mosaics.", _slice_options(), _slices)

#: The jobs this module declares (core.runner.registry gathers them).
JOBS = (ATTRIBUTE, SLICES)
