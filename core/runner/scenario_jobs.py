"""The demo jobs: build a demo scenario into a new workspace and run the loop on it (core.scenarios.demo_run);
annotate its slices from ground truth."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from core.progress import Progress
from core.runner.configs import pipeline_config
from core.runner.dcd_jobs import pipeline_options
from core.runner.demo_rest import launch_rest
from core.runner.jobspec import JobOptions, JobSpec
from core.runner.options import Option, with_defaults
from core.scenarios.demo_run import DemoRun, loop_config, run_demo
from core.scenarios.demos import DemoSettings
from core.store.workspace import Workspace


def demo_run(opts: JobOptions) -> DemoRun:
    """The demo job's options as a :class:`~core.scenarios.demo_run.DemoRun`: the scenario, and the loop's
    settings with those the user left unset (None) for the demo to pick."""
    given = DemoSettings(classifier=opts.classifier, image_size=opts.image_size, epochs=opts.epochs, lr=opts.lr,
                         finetune_epochs=opts.finetune_epochs, embedder=opts.embedder,
                         embedder_layers=opts.embedder_layers, trainable_stages=opts.trainable_stages)
    return DemoRun(dataset=opts.dataset, size=opts.size, assets=opts.assets, data_dir=opts.data_dir,
                   corruption=opts.corruption, error_split=not opts.no_error_split, ingest_only=opts.no_pipeline,
                   loop=pipeline_config(opts), given=given)


def _demo(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    """The demo (core.scenarios.demo_run); with ``--rest-in-background``, only DCD's fix here (and the
    failure-only fix, its teacher), the other methods' fine-tuning and the slices as background jobs."""
    if opts.rest_in_background and opts.no_error_split:
        raise ValueError("--rest-in-background needs the error_sample split; leave out --no-error-split")
    run = demo_run(opts)
    methods = run.loop.methods
    later = [m for m in methods if m != "dcd"] if opts.rest_in_background and "dcd" in methods else []
    if later:
        run = replace(run, loop=replace(run.loop, methods=("dcd",)))
    result = run_demo(ws, run, progress=progress)
    if opts.rest_in_background and not run.ingest_only:
        made = set(result["methods"])  # what the run made already (DCD's teacher is the failure-only fix)
        jobs = launch_rest(ws, loop_config(run), [m for m in later if m not in made])
        print("continuing in the background (the app's Jobs page shows them): "
              + "; ".join(f"{j['what']} (job {j['job_id']})" for j in jobs), flush=True)
        result["background_jobs"] = jobs
    return result


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
                    "(core.scanner.loop)"),
        # Unset so that the demo's own settings apply unless the user gives a value.
        *with_defaults(pipeline_options(), **{k: None for k in scenario_set}),
    )


DEMO = JobSpec("demo", "Generate a demo DCD scenario into a new workspace and run the whole loop on it.",
               _demo_options(), _demo, creates_workspace=True)


def _annotate_demo(ws: Workspace, opts: JobOptions, progress: Progress) -> dict[str, Any]:
    from core.scanner.runs import latest_run
    from core.scenarios.annotate_from_truth import annotate_from_truth

    run_id = opts.run_id or latest_run(ws)
    if run_id is None:
        raise ValueError("no slice run in the workspace; run `python -m jobs.slices` first")
    return {"run_id": run_id, "annotations": annotate_from_truth(ws, run_id, min_purity=opts.min_purity)}


ANNOTATE_DEMO = JobSpec(
       "annotate_demo", "Annotate a benchmark's slices from its ground truth (simulates a person reading the mosaics).",
       (Option("run_id", picker="slice_run", help="slice run to annotate (default: the latest)"),
        Option("min_purity", "float", 0.6, help="share of a failure group to call a slice spurious")),
       _annotate_demo)

#: The jobs this module declares (core.runner.registry gathers them).
JOBS = (DEMO, ANNOTATE_DEMO)
