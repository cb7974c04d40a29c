"""Fine-tuning a classifier on ``train`` plus a debug-train set (a stored selection, or items in memory), in
memory (:func:`fine_tune`) or registered as a new classifier (:func:`retrain`); the training loop itself is
core.models.training.fit.

:func:`training_set` says what is trained on: ``train`` (with a person's label decisions applied), plus the
debug-train images (``source = "selection"``, drawn with their share of every batch,
core.models.sampling.share_weights), plus the rest of the pool a teacher labelled (``source = "rest"``,
drawn with train). Images of a named eval set are never trained on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from core.data.images import pixels
from core.data.label_decisions import apply_label_decisions
from core.data.model_input import DataConfig
from core.data.splits import images_df
from core.dcd.selection import selection_items
from core.models.catalog import ModelRecord, get_model, load_classifier, new_model_id, register_model
from core.models.sampling import share_weights
from core.models.schedules import FINETUNE_EPOCH_CAP, TrainConfig, schedule_of
from core.models.training import LossFn, fit, frozen_trunk, save_verified
from core.progress import Progress, as_progress
from core.store.workspace import Workspace


def training_set(ws: Workspace, selection_id: str | None, *, items: pd.DataFrame | None = None,
                 drop_ids: set[int] | None = None, relabel: dict[int, int] | None = None) -> pd.DataFrame:
    """``train`` plus a selection's non-rejected items (with the labels the selection gives them), or plus
    ``items`` (image_id, label[, kind]), a debug-train set not stored as a selection. ``source`` says which:
    ``train``, ``selection`` (the debug-train images, given their share of each batch by fine-tuning) or
    ``rest`` (items of kind ``rest``: the rest of the pool a teacher labelled, drawn with train).

    Images of a named eval set (``eval_sets``: a slice target's held-out part, a mitigation's held-out
    members) are held out by definition and never trained on. A person's label-issue decisions apply to the
    train rows (core.data.label_decisions): 'drop' leaves an image out, 'relabel' trains it with the suggestion."""
    if selection_id and items is not None:
        raise ValueError("give a selection_id or items, not both")
    train = apply_label_decisions(ws, images_df(ws, ["train"])[["image_id", "path", "label"]])
    parts = [train.assign(source="train")]
    sel = None
    if selection_id:
        sel = selection_items(ws, selection_id)
    elif items is not None and len(items):
        sel = items.merge(images_df(ws)[["image_id", "path"]], on="image_id", how="left")
        if sel.path.isna().any():
            raise ValueError(f"{int(sel.path.isna().sum())} debug-train image(s) are not in the workspace")
    if sel is not None:
        kind = sel["kind"] if "kind" in sel else pd.Series("retrieved", index=sel.index)
        parts.append(sel[["image_id", "path", "label"]].assign(
            source=np.where(kind.eq("rest"), "rest", "selection")))
    df = pd.concat(parts, ignore_index=True)
    df = df[~df.image_id.isin(set(ws.df("SELECT DISTINCT image_id FROM eval_sets").image_id))]
    if drop_ids:
        df = df[~df.image_id.isin(drop_ids)]
    if relabel:
        df["label"] = [relabel.get(int(i), lbl) for i, lbl in zip(df.image_id, df.label)]
    return df.reset_index(drop=True)


@dataclass
class FineTuned:
    """A fine-tuned classifier, not registered yet (:func:`fine_tune`): the model and its record's fields."""

    model: nn.Module
    data_config: DataConfig
    base: ModelRecord
    config: dict[str, Any]  # the record's config: selection, data config, schedules, sizes

    @property
    def trainable_stages(self) -> int | None:
        """The stages its schedule trains (None: all), so the others' stored outputs can stand in for pixels."""
        return self.config["finetune"].get("trainable_stages")

    def record(self, model_id: str, method: str, checkpoint: Path,
               extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
        """The fields of :func:`core.models.catalog.insert_model_row` for this classifier."""
        return dict(model_id=model_id, role="classifier", arch=self.base.arch, parent_id=self.base.model_id,
                    method=method, checkpoint=str(checkpoint), num_classes=self.base.num_classes,
                    embed_dim=self.base.embed_dim, config={**self.config, **(extra_config or {})})

    def save(self, ws: Workspace, model_id: str) -> Path:
        """Its checkpoint, saved and loaded back (:func:`save_verified`)."""
        return save_verified(self.model, ws, model_id, arch=self.base.arch,
                             num_classes=int(self.base.num_classes or 0), data_config=self.data_config)


def fine_tune(ws: Workspace, *, base_model_id: str, selection_id: str | None, config: TrainConfig | None = None,
              epochs: int | None = None, loss_fn_factory: Callable[[pd.DataFrame, np.ndarray], LossFn] | None = None,
              drop_ids: set[int] | None = None, relabel: dict[int, int] | None = None,
              upweight_ids: set[int] | None = None, upweight_share: float | None = None,
              items: pd.DataFrame | None = None, progress: Progress | None = None) -> FineTuned:
    """Fine-tune a copy of ``base_model_id`` on train + selection (or + ``items``, a debug-train set not
    stored: image_id, label), in memory (see :func:`retrain`).

    ``upweight_ids`` with ``upweight_share``: those training images make up that share of every batch's draws
    (the rest from the others), whatever their number; it replaces ``config.added_share``."""
    progress = as_progress(progress)
    config = config or schedule_of(ws, base_model_id)
    base = get_model(ws, base_model_id)
    model, data_config = load_classifier(ws, base_model_id)
    model = copy.deepcopy(model)
    df = training_set(ws, selection_id, items=items, drop_ids=drop_ids, relabel=relabel)
    cfg = config.finetune(epochs)
    # The frozen stages' stored outputs stand in for the pixels, except for a loss of its own (CoRM), which
    # needs the whole model on pixels.
    trunk = None if loss_fn_factory else frozen_trunk(ws, model, data_config, cfg, df.image_id.tolist(),
                                                      df.path.tolist(), progress=progress.span(0, 0.1))
    px = None if trunk is not None else pixels(ws, df.path.tolist(), data_config.image_size,
                                                progress=progress.span(0, 0.1))
    loss_fn = loss_fn_factory(df, px) if loss_fn_factory else None
    n_train = int((df.source == "train").sum())
    if upweight_ids:
        weights = share_weights(df.image_id.isin(upweight_ids).to_numpy(), upweight_share)
    else:
        weights = share_weights(df.source.eq("selection").to_numpy(), cfg.added_share,
                                df.label.to_numpy() if cfg.added_mix == "class" else None)
    fit(model, px, df.label.to_numpy(), data_config, cfg, loss_fn=loss_fn,
        samples_per_epoch=FINETUNE_EPOCH_CAP * n_train or None, sample_weights=weights, trunk=trunk,
        image_ids=df.image_id.tolist(), progress=progress.span(0.1, 1.0))
    return FineTuned(model, data_config, base,
                     {"selection_id": selection_id, "data_config": data_config.to_dict(),
                      "train": asdict(config), "finetune": asdict(cfg), "n_train": len(df),
                      "n_added": int((df.source == "selection").sum()), "n_rest": int((df.source == "rest").sum()),
                      **({"n_upweighted": int(df.image_id.isin(upweight_ids).sum()), "upweight_share": upweight_share}
                         if upweight_ids else {})})


def retrain(ws: Workspace, *, base_model_id: str, selection_id: str | None, method: str,
            config: TrainConfig | None = None, epochs: int | None = None,
            loss_fn_factory: Callable[[pd.DataFrame, np.ndarray], LossFn] | None = None,
            drop_ids: set[int] | None = None, relabel: dict[int, int] | None = None,
            extra_config: dict[str, Any] | None = None, progress: Progress | None = None) -> str:
    """Fine-tune ``base_model_id`` on train + selection; register the new classifier and return its id.

    ``config.added_share`` (0 < share < 1) draws that share of every fine-tuning batch from the selection's
    images and the rest from ``train``, whatever their sizes; ``None`` samples all images alike. Without
    ``config``, the base's own schedule (:func:`schedule_of`) is fine-tuned with. ``extra_config`` is added
    to the new model's recorded config (e.g. a mitigation record).
    """
    tuned = fine_tune(ws, base_model_id=base_model_id, selection_id=selection_id, config=config, epochs=epochs,
                      loss_fn_factory=loss_fn_factory, drop_ids=drop_ids, relabel=relabel, progress=progress)
    model_id = new_model_id(method)
    register_model(ws, **tuned.record(model_id, method, tuned.save(ws, model_id), extra_config))
    return model_id
