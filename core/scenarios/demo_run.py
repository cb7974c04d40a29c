"""A demo from nothing: build a demo scenario into a new workspace, ingest it, and run the whole loop on it.

    from core.dcd.pipeline import PipelineConfig
    from core.scenarios.demo_run import DemoRun, run_demo

    report = run_demo(ws, DemoRun(dataset="waterbirds", size="small"))

:class:`DemoRun` says which scenario (core.scenarios.demos), where its images go, and the loop's settings:
``loop`` as the user set them, ``given`` the settings a demo picks for itself (its classifier, image size,
epochs ...: :class:`~core.scenarios.demos.DemoSettings`) that the user gave. :func:`loop_config` resolves
them: the user's where given, else the demo's, else the pipeline's own defaults. ``python -m jobs.demo`` is
a thin command over :func:`run_demo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.data.ingest import ingest_manifest
from core.data.manifest import manifest_with_splits_as
from core.dcd.pipeline import PipelineConfig
from core.models.schedules import parse_trainable_stages
from core.progress import Progress, as_progress
from core.scanner.loop import run_loop
from core.scenarios.demos import (
    DATASETS,
    NONE_GIVEN,
    SIZES,
    DemoSettings,
    assets_dir,
    check_assets,
    demo_settings,
    generate_demo,
    require_asset,
)
from core.store.workspace import Workspace


@dataclass(frozen=True)
class DemoRun:
    """A demo to build and the loop to run on it.

    ``dataset`` is one of :data:`~core.scenarios.demos.DATASETS`, ``size`` one of
    :data:`~core.scenarios.demos.SIZES`; ``assets`` the real-assets folder (None: ``$DCD_ASSETS``);
    ``data_dir`` where the images are written (None: ``WORKSPACE/data``); ``corruption`` the cifar10
    demo's error distribution. ``error_split=False`` moves the ``error_sample`` and ``error_heldout`` images
    into test, unmarked, as most users' data comes: the loop then finds the failure as a slice
    (core.scanner.loop). ``ingest_only``: only generate and ingest the data. ``given``: the settings a
    demo picks for itself that the user gave (None: not given; start from
    :data:`~core.scenarios.demos.NONE_GIVEN`, e.g. ``replace(NONE_GIVEN, epochs=2)``); ``loop``'s values of
    those settings are replaced by :func:`loop_config`.
    """

    dataset: str = "waterbirds"
    size: str = "full"
    assets: str | Path | None = None
    data_dir: str | Path | None = None
    corruption: str = "fog"
    error_split: bool = True
    ingest_only: bool = False
    loop: PipelineConfig = field(default_factory=PipelineConfig)
    given: DemoSettings = NONE_GIVEN

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown demo dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown demo size {self.size!r}; choose one of {', '.join(SIZES)}")

    def assets_folder(self) -> Path | None:
        return assets_dir(self.assets)


def loop_config(run: DemoRun) -> PipelineConfig:
    """The loop's config for ``run``: each setting a demo picks (classifier, image size, epochs, learning rate,
    fine-tuning epochs, trainable stages, embedder and its layers) is the user's where given, else the demo's,
    else the pipeline's default; the demo's weight files (under the assets folder) apply where the loop has none."""
    chosen = demo_settings(run.dataset, run.size).with_given(run.given)
    loop, assets = run.loop, run.assets_folder()
    weights = {key: str(require_asset(assets, rel)) for key, rel in chosen.weights.items()}
    train = {**loop.train, **{key: value for key, value in (("epochs", chosen.epochs), ("lr", chosen.lr))
                              if value is not None}}
    if chosen.trainable_stages is not None:
        train["trainable_stages"] = parse_trainable_stages(chosen.trainable_stages)
    embedder = replace(loop.embedder, arch=chosen.embedder or loop.embedder.arch,
                       layers=chosen.embedder_layers or loop.embedder.layers,
                       weights=loop.embedder.weights or weights.get("embedder_weights"))
    return replace(loop, classifier=chosen.classifier or loop.classifier,
                   classifier_weights=loop.classifier_weights or weights.get("classifier_weights"),
                   image_size=chosen.image_size if chosen.image_size is not None else loop.image_size,
                   finetune_epochs=(chosen.finetune_epochs if chosen.finetune_epochs is not None
                                    else loop.finetune_epochs),
                   train=train, embedder=embedder)


def run_demo(ws: Workspace, run: DemoRun, *, progress: Progress | None = None) -> dict[str, Any]:
    """Generate ``run``'s scenario into the empty workspace ``ws``, ingest it and run the loop
    (core.scanner.loop.run_loop) with :func:`loop_config`; returns the loop's report with the scenario
    under ``dataset`` (only ``{"ingest": ...}`` with ``run.ingest_only``). Missing assets raise
    :class:`~core.scenarios.demos.AssetsMissingError` before anything is written."""
    progress = as_progress(progress)
    if ws.scalar("SELECT count(*) FROM images"):
        raise ValueError(f"{ws.root} already holds images; the demo generates into a new workspace")
    assets = run.assets_folder()
    check_assets(run.dataset, assets)
    config = loop_config(run)
    data_dir = Path(run.data_dir) if run.data_dir else ws.root / "data"
    progress.expect_stages(2)
    progress.stage(f"generating the {run.dataset} scenario", 0.0, 0.02)
    manifest = generate_demo(run.dataset, data_dir, size=run.size, seed=config.seed,
                             image_size=config.image_size,  # type: ignore[arg-type]
                             assets=assets, corruption=run.corruption)
    if not run.error_split:
        manifest = manifest_with_splits_as(manifest, ("error_sample", "error_heldout"), "test")
    report = ingest_manifest(ws, manifest, progress=progress.stage("ingesting the images", 0.02, 0.05))
    print(report.summary())
    if run.ingest_only:
        return {"ingest": report.to_dict()}
    result = run_loop(ws, config, progress=progress.span(0.05, 1.0))
    result["dataset"] = {"name": run.dataset, "size": run.size, "manifest": str(manifest)}
    return result
