"""Training schedules: the settings of one training run, and which schedule a model gets by default.

A :class:`TrainConfig` is the settings of one run of :func:`core.models.training.fit`. Where the user gives
none, a new classifier follows :data:`PRETRAINED_SCHEDULE` when it starts from pretrained weights (the
packaged backbone, the hub, or backbone weights) and :data:`SCRATCH_SCHEDULE` otherwise; a classifier
fine-tuned further follows its lineage's recorded schedule (:func:`schedule_of`). The user's settings
(``--epochs``, ``--lr`` ...) override single fields (:func:`with_overrides`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from core.models.catalog import get_model
from core.models.pretrained import resolve
from core.store.workspace import Workspace

# Fine-tuning draws this share of its batches from the added selection (see TrainConfig.added_share).
ADDED_SHARE = 0.5
# How that share is taken (TrainConfig.added_mix): "class" within each class, "batch" of the whole batch.
ADDED_MIXES = ("class", "batch")
ADDED_MIX = "class"
# Fine-tuning visits at most this many times the train set's size per epoch, whatever was added.
FINETUNE_EPOCH_CAP = 2


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    # Fine-tuning only: the share of every batch drawn from the added (debug-train) images, whatever their
    # number, so that a few hundred targeted images are not drowned by train; None samples all alike.
    added_share: float | None = ADDED_SHARE
    # How: "class" takes the share within each class the added images hold, so every batch keeps train's
    # class mix (a selection of one class, e.g. a slice's "waterbird taken for landbird", then changes how
    # the classifier sees that class, not how often it answers it); "batch" takes it of the whole batch.
    added_mix: str = ADDED_MIX
    # Train only the last this many stages (timm's coarse parameter groups) and the head; the earlier
    # stages stay frozen, BatchNorm statistics included. None trains the whole network. A network trained
    # from scratch trains whole the first time (random stages are not worth freezing) and follows this in
    # the fine-tunings of its lineage, whose frozen stages then run once per image (core.models.trunk).
    trainable_stages: int | None = None
    # A new classifier on pretrained weights: fit its new head on the frozen features first (a linear
    # probe), then fine-tune (LP-FT, Kumar et al. 2022: the random head's early gradients do not distort
    # the pretrained features).
    probe_first: bool = False

    def __post_init__(self) -> None:
        if self.added_mix not in ADDED_MIXES:
            raise ValueError(f"added_mix must be one of {ADDED_MIXES}, got {self.added_mix!r}")

    def finetune(self, epochs: int | None = None, lr: float | None = None) -> "TrainConfig":
        """The schedule used to fine-tune an already trained classifier."""
        return replace(self, epochs=epochs or max(3, self.epochs // 2), lr=lr or self.lr * 0.2,
                       warmup_epochs=0.0)



#: The schedules used when the user gives none. A pretrained backbone is fine-tuned briefly: its last
#: stages and a new head, at a reduced resolution, which fits two CPU cores (measured on the photo scenario,
#: docs/your-data-and-models.md); a network trained from scratch needs many more epochs.
PRETRAINED_SCHEDULE = TrainConfig(epochs=3, lr=0.02, warmup_epochs=0.3, trainable_stages=2, probe_first=True)
SCRATCH_SCHEDULE = TrainConfig()
PRETRAINED_IMAGE_SIZE = 128
SCRATCH_IMAGE_SIZE = 64


def default_schedule(pretrained: bool) -> TrainConfig:
    return PRETRAINED_SCHEDULE if pretrained else SCRATCH_SCHEDULE


def default_image_size(pretrained: bool) -> int:
    return PRETRAINED_IMAGE_SIZE if pretrained else SCRATCH_IMAGE_SIZE


def parse_trainable_stages(value: str | int) -> int | None:
    """``--trainable-stages`` as given (a number of stages, 0 for the head alone, or 'all') as
    TrainConfig.trainable_stages."""
    text = str(value).strip().lower()
    if text in ("all", "none"):
        return None
    if text.isdigit():
        return int(text)
    raise ValueError(f"--trainable-stages takes a number of stages (0: the head alone) or 'all', got {value!r}")


def with_overrides(base: TrainConfig, overrides: Mapping[str, Any] | None) -> TrainConfig:
    """``base`` with the settings a user gave (field name -> value)."""
    unknown = set(overrides or {}) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"no training setting(s) {sorted(unknown)}")
    return replace(base, **dict(overrides or {}))


def initial_schedule(arch: str, *, weights: str | Path | None = None, hub: bool = False,
                     overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """How to train a new classifier ``arch`` (from ``weights`` / the hub / scratch), with the user's settings."""
    return with_overrides(default_schedule(resolve(arch, weights=weights, hub=hub).pretrained), overrides)


def schedule_of(ws: Workspace, model_id: str) -> TrainConfig:
    """The schedule of a workspace classifier's lineage (recorded when it was trained here), which its
    fine-tuning follows; a classifier that was not trained here gets the pretrained schedule."""
    recorded = get_model(ws, model_id).config.get("train") or {}
    known = {f.name for f in fields(TrainConfig)}
    return replace(PRETRAINED_SCHEDULE, **{k: v for k, v in recorded.items() if k in known})


def finetune_schedule(ws: Workspace, base_model_id: str, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """How to fine-tune ``base_model_id`` further (before :meth:`TrainConfig.finetune`), with the user's settings."""
    return with_overrides(schedule_of(ws, base_model_id), overrides)
