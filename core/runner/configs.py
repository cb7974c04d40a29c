"""From a job's typed options (core.runner.jobspec) to core's config objects, one function per config.

Each reads the option group it is named after (core.runner.options): :func:`train_overrides` the training
options, :func:`embedder_spec` the embedder's, :func:`ray_config` the engine's, :func:`attribution_config`
the attribution's, and :func:`pipeline_config` every option of the whole loop (the pipeline and demo jobs).
:func:`train_option_values` goes the other way: training settings back to the options that give them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.dcd.embed import EmbedderSpec
from core.dcd.pipeline import PipelineConfig
from core.engines.ray_data import RayConfig
from core.models.schedules import parse_trainable_stages
from core.runner.jobspec import JobOptions
from core.scanner.attribution import AttributionConfig

#: The training options whose values become TrainConfig overrides as they are (core.runner.options.train_options).
_PLAIN_TRAIN_SETTINGS = ("epochs", "batch_size", "lr", "seed")


def train_overrides(options: JobOptions) -> dict[str, Any]:
    """The training settings the user gave, as TrainConfig field -> value (the rest comes from the schedule
    that fits the model: core.models.schedules.initial_schedule / finetune_schedule)."""
    plain = {"epochs": options.epochs, "batch_size": options.batch_size, "lr": options.lr, "seed": options.seed}
    given: dict[str, Any] = {k: v for k, v in plain.items() if v is not None}
    given["added_share"] = options.added_share or None  # 0: sample train and selection alike
    if options.added_mix:
        given["added_mix"] = options.added_mix
    if options.trainable_stages is not None:
        given["trainable_stages"] = parse_trainable_stages(options.trainable_stages)
    return given


def train_option_values(train: Mapping[str, Any], finetune_epochs: int | None) -> dict[str, Any]:
    """The training options (option name -> value) whose :func:`train_overrides` is ``train``, with
    ``--finetune-epochs``: how a background job is given the training settings of a loop's config."""
    values: dict[str, Any] = {k: train[k] for k in (*_PLAIN_TRAIN_SETTINGS, "added_mix") if k in train}
    if "added_share" in train:
        values["added_share"] = train["added_share"] if train["added_share"] is not None else 0.0
    if "trainable_stages" in train:
        stages = train["trainable_stages"]
        values["trainable_stages"] = "all" if stages is None else str(stages)
    values["finetune_epochs"] = finetune_epochs
    return values


def embedder_spec(options: JobOptions) -> EmbedderSpec:
    """The embedder options (and ``classifier_id``, for the embedder ``classifier``) as an EmbedderSpec;
    an option left unset (None) takes EmbedderSpec's default."""
    default = EmbedderSpec()
    return EmbedderSpec(arch=options.embedder or default.arch, weights=options.embedder_weights,
                        hub=options.embedder_hub, image_size=options.embedder_image_size,
                        layers=options.embedder_layers or default.layers, classifier_id=options.classifier_id)


def ray_config(options: JobOptions) -> RayConfig | None:
    """The :class:`~core.engines.ray_data.RayConfig` of ``--engine ray``, or None for the local engine (where
    ``--ray-address`` or ``--ray-actors`` is a ValueError: they would be ignored)."""
    if options.engine != "ray":
        given = [flag for flag, value in (("--ray-address", options.ray_address),
                                          ("--ray-actors", options.ray_actors)) if value]
        if given:
            raise ValueError(f"{' and '.join(given)} only apply with --engine ray")
        return None
    return RayConfig(address=options.ray_address or None, actors=options.ray_actors)


def attribution_config(options: JobOptions) -> AttributionConfig:
    """The attribution options as an AttributionConfig."""
    return AttributionConfig(method=options.attribution, target=options.target, heatmap_size=options.heatmap_size,
                             batch_size=options.attr_batch_size, ig_steps=options.ig_steps,
                             allow_bf16=not options.no_bf16)


def pipeline_config(options: JobOptions) -> PipelineConfig:
    """Every option of the whole loop (core.runner.dcd_jobs.pipeline_options) as a PipelineConfig; a classifier
    left unset (None, as the demo declares it) is the pipeline's default."""
    return PipelineConfig(classifier=options.classifier or PipelineConfig.classifier,
                          classifier_weights=options.classifier_weights, classifier_id=options.classifier_id,
                          hub=options.hub, image_size=options.image_size, embedder=embedder_spec(options),
                          neighbours=options.neighbours, budget=options.budget, label_policy=options.label_policy,
                          train=train_overrides(options), finetune_epochs=options.finetune_epochs,
                          methods=tuple(options.methods), seed=options.seed, index_memory_gb=options.index_memory_gb,
                          from_slice=options.from_slice, failure=options.failure, label_issues=options.label_issues,
                          retrieval=options.retrieval, rest_of_pool=options.rest_of_pool, ray=ray_config(options))
