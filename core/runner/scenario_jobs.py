"""The demo jobs: build a demo scenario into a new workspace and run the loop on it; annotate its slices from
ground truth."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.progress import Progress
from core.runner.dcd_jobs import pipeline_config, pipeline_options
from core.runner.options import Option, with_defaults
from core.runner.registry import JobSpec, register_job
from core.store.workspace import Workspace


def _demo(ws: Workspace, opts: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from core.data.ingest import ingest_manifest
    from core.data.manifest import manifest_with_splits_as
    from core.scanner.slice_loop import run_loop
    from core.scenarios.demos import assets_dir, check_assets, demo_settings, generate_demo

    if ws.scalar("SELECT count(*) FROM images"):
        raise ValueError(f"{ws.root} already holds images; the demo generates into a new workspace")
    if opts.rest_in_background and opts.no_error_split:
        raise ValueError("--rest-in-background needs the error_sample split; leave out --no-error-split")
    assets = assets_dir(opts.assets)
    check_assets(opts.dataset, assets)
    for key, value in demo_settings(opts.dataset, opts.size).values(assets).items():
        if getattr(opts, key) is None:  # what the user did not give
            setattr(opts, key, value)
    data_dir = Path(opts.data_dir) if opts.data_dir else ws.root / "data"
    progress.expect_stages(2)
    progress.stage(f"generating the {opts.dataset} scenario", 0.0, 0.02)
    manifest = generate_demo(opts.dataset, data_dir, size=opts.size, seed=opts.seed, image_size=opts.image_size,
                             assets=assets, corruption=opts.corruption)
    if opts.no_error_split:
        manifest = manifest_with_splits_as(manifest, ("error_sample", "error_heldout"), "test")
    report = ingest_manifest(ws, manifest, progress=progress.stage("ingesting the images", 0.02, 0.05))
    print(report.summary())
    if opts.no_pipeline:
        return {"ingest": report.to_dict()}
    config = pipeline_config(opts)
    later = [m for m in config.methods if m != "dcd"] if opts.rest_in_background and "dcd" in config.methods else []
    result = run_loop(ws, replace(config, methods=("dcd",)) if later else config, progress=progress.span(0.05, 1.0))
    result["dataset"] = {"name": opts.dataset, "size": opts.size, "manifest": str(manifest)}
    if opts.rest_in_background:  # what the run did not make already (DCD's teacher is the failure-only fix)
        later = [m for m in later if m not in result["methods"]]
        result["background_jobs"] = _launch_rest(ws, opts, result, later)
    return result


def _launch_rest(ws: Workspace, opts: argparse.Namespace, result: dict[str, Any], methods: list[str]) -> list[dict]:
    from core.runner.first_run import launch_rest

    jobs = launch_rest(ws, opts, result, methods)
    print("continuing in the background (the app's Jobs page shows them): "
          + "; ".join(f"{j['what']} (job {j['job_id']})" for j in jobs), flush=True)
    return jobs


def _demo_options() -> tuple[Option, ...]:
    from core.scenarios.demos import ASSETS_ENV, DATASETS, SIZES

    scenario_set = ("classifier", "classifier_weights", "embedder", "embedder_weights", "embedder_layers",
                    "image_size", "epochs", "lr")
    return (
        Option("dataset", "choice", "waterbirds", choices=DATASETS,
               help="waterbirds: synthetic, needs nothing; cifar10: real CIFAR-10 images, needs the assets"),
        Option("size", "choice", "full", choices=SIZES),
        Option("assets", "path", help=f"folder of the real assets (CIFAR-10 images, CIFAR ResNet weights), for "
                                      f"--dataset cifar10 (default: ${ASSETS_ENV})"),
        Option("data_dir", "path", advanced=True, help="where to write the images (default WORKSPACE/data)"),
        Option("corruption", default="fog", advanced=True, help="cifar10: the error distribution's corruption"),
        Option("no_pipeline", "flag", False, help="only generate and ingest the data"),
        Option("rest_in_background", "flag", False, advanced=True,
               help="train the baseline and fine-tune on DCD's selection here, then start the other methods' "
                    "fine-tuning and the slices as background jobs (how make run opens the app quickly)"),
        Option("no_error_split", "flag", False, advanced=True,
               help="no error_sample and error_heldout splits, as most users' data has none: their images "
                    "join test, unmarked, and the loop finds the failure as a slice and fixes that "
                    "(core.scanner.slice_loop)"),
        # Unset so that the demo's own settings apply unless the user gives a value.
        *with_defaults(pipeline_options(), **{k: None for k in scenario_set}),
    )


register_job(JobSpec("demo", "Generate a demo DCD scenario into a new workspace and run the whole loop on it.",
                     _demo_options(), _demo, creates_workspace=True))


def _annotate_demo(ws: Workspace, opts: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from core.scanner.runs import latest_run
    from core.scenarios.annotate_from_truth import annotate_from_truth

    run_id = opts.run_id or latest_run(ws)
    if run_id is None:
        raise ValueError("no slice run in the workspace; run `python -m jobs.slices` first")
    return {"run_id": run_id, "annotations": annotate_from_truth(ws, run_id, min_purity=opts.min_purity)}


register_job(JobSpec(
    "annotate_demo", "Annotate a benchmark's slices from its ground truth (simulates a person reading the mosaics).",
    (Option("run_id", picker="slice_run", help="slice run to annotate (default: the latest)"),
     Option("min_purity", "float", 0.6, help="share of a failure group to call a slice spurious")),
    _annotate_demo))
