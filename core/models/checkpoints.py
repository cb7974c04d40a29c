"""Classifier checkpoints: writing them, and reading them and other weight files back.

A DCD Studio checkpoint is a dict with ``format`` :data:`CHECKPOINT_FORMAT`, the architecture, the class
count, the data config, the class names and the state dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.models.config import DataConfig

CHECKPOINT_FORMAT = "dcd-studio-classifier-v1"


def read_weights(path: str | Path) -> Any:
    """The object stored in a weights file (a checkpoint dict, a state dict ...), on the CPU."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def is_classifier_checkpoint(obj: Any) -> bool:
    """True if ``obj`` (read by :func:`read_weights`) is a checkpoint written by :func:`save_checkpoint`."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def state_dict_of(obj: Any) -> dict[str, Any] | None:
    """The state dict inside ``obj`` (itself, or under ``state_dict``), keys without a ``module.`` prefix;
    None if there is none."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        return None
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def save_checkpoint(model: nn.Module, path: Path, *, arch: str, num_classes: int,
                    data_config: DataConfig, class_names: list[str] | None = None) -> Path:
    """Write a classifier checkpoint (atomically: a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "arch": arch, "num_classes": num_classes,
                "data_config": data_config.to_dict(), "class_names": class_names,
                "state_dict": model.state_dict()}, tmp)
    tmp.replace(path)
    return path


def weights_include_head(model: nn.Module, weights: str | Path, num_classes: int) -> bool:
    """True if ``weights`` hold a trained classifier head with ``num_classes`` outputs for ``model``.

    A DCD Studio checkpoint always does; a timm/ImageNet backbone file whose head has another class count
    does not (its head was dropped, the model must be trained on this workspace's classes).
    """
    obj = read_weights(weights)
    if is_classifier_checkpoint(obj):
        return True
    state = state_dict_of(obj) or {}
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "linear"
    heads = head if isinstance(head, (list, tuple)) else [head]
    for key, value in state.items():
        if any(key == f"{h}.weight" for h in heads) and hasattr(value, "shape"):
            return int(value.shape[0]) == num_classes
    return False
