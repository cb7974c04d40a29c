"""Classifiers and embedders: any timm architecture by name, weights from the hub or a local file.

Two kinds of model play a part:
- the **classifier** under debug: trained here, or loaded from a user's checkpoint;
- a frozen **embedder** whose penultimate layer gives the feature space DCD searches in: a timm model
  (ResNet, robust ResNet, DINO ViT...) or the classifier's own penultimate layer.

Weights: ``weights=PATH`` loads a local file: either a checkpoint written by
:func:`core.models.checkpoints.save_checkpoint` (a complete classifier), or a timm/ImageNet-style state dict
(``pretrained_cfg_overlay=dict(file=PATH)``: its classifier head is dropped when the class count differs).
``hub=True`` asks timm's hub, which needs network access. Named pretrained backbones
(``efficientnet_lite0.imagenet``, core.models.pretrained) load their packaged ImageNet weights with no hub.
The classic CIFAR ResNets are registered with timm as ``cifar_resnet20/32/44/56`` (core.models.cifar_resnet),
so they are built like any other architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

from core.data.model_input import DataConfig
from core.models import cifar_resnet  # noqa: F401  (registers the cifar_resnet* architectures with timm)
from core.models.checkpoints import is_classifier_checkpoint, read_weights, state_dict_of
from core.models.config import ModelError
from core.models.pretrained import resolve


def _check_weights(weights: str | Path | None) -> Path | None:
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    return path


def create_model(arch: str, *, num_classes: int, weights: str | Path | None = None,
                 hub: bool = False) -> nn.Module:
    """Build ``arch`` with ``num_classes`` outputs (0: no head, an embedder), loading ``weights``.

    A DCD Studio checkpoint in ``weights`` is a complete classifier: it is loaded as it was saved (its own
    architecture and classes). Other weights are a state dict for ``arch``, read without pickle
    (core.models.checkpoints) and handed to timm, which drops a head of another class count. ``arch`` may
    name a pretrained backbone (core.models.pretrained.BACKBONES): its packaged weights are used unless
    ``weights`` or ``hub`` say otherwise.
    """
    resolved = resolve(arch, weights=_check_weights(weights), hub=hub)
    arch, path, hub = resolved.arch, resolved.weights, resolved.hub
    obj = read_weights(path) if path is not None else None
    if obj is not None and is_classifier_checkpoint(obj):
        return model_from_checkpoint(obj, source=path)[0]
    try:
        if obj is not None:
            state = state_dict_of(obj)
            if state is None:
                raise ModelError(f"{path} holds no state dict (no tensors found, nor a 'state_dict' / 'model' "
                                 f"entry of tensors)")
            model = timm.create_model(arch, pretrained=True, num_classes=num_classes,
                                      pretrained_cfg_overlay=dict(state_dict=state))
            (getattr(model, "pretrained_cfg", None) or {}).pop("state_dict", None)  # do not keep a second copy
            return model
        return timm.create_model(arch, pretrained=hub, num_classes=num_classes)
    except RuntimeError as exc:  # e.g. unknown model, or weights of another architecture
        if "Unknown model" in str(exc):
            raise ModelError(f"{arch!r} is not a timm architecture; see timm.list_models('{arch[:4]}*')") \
                from exc
        raise ModelError(f"could not build {arch!r} from {path or ('the hub' if hub else 'scratch')}: "
                         f"{str(exc).splitlines()[0][:500]}") from exc


def model_from_checkpoint(obj: dict[str, Any], *, source: Path | str = "") -> tuple[nn.Module, dict[str, Any]]:
    """The classifier (eval mode) and its info (arch, num_classes, data_config, class_names) from a checkpoint
    read by :func:`core.models.checkpoints.read_weights`."""
    try:
        model = create_model(obj["arch"], num_classes=int(obj["num_classes"]))
        model.load_state_dict(obj["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise ModelError(f"the classifier checkpoint {source} does not load: {str(exc).splitlines()[0][:500]}") \
            from exc
    model.eval()
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    info["data_config"] = DataConfig.from_dict(info["data_config"])
    return model, info


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a classifier saved by :func:`core.models.checkpoints.save_checkpoint`: the model (eval mode)
    and its info (arch, num_classes, data_config, class_names)."""
    obj = read_weights(path)
    if not is_classifier_checkpoint(obj):
        raise ModelError(f"{path} is not a DCD Studio classifier checkpoint")
    return model_from_checkpoint(obj, source=path)


def default_data_config(model: nn.Module, image_size: int | None = None) -> DataConfig:
    """The model's own preprocessing (timm's resolver), with ``image_size`` overriding its input size."""
    cfg = timm.data.resolve_model_data_config(model)
    size = image_size or int(cfg["input_size"][-1])
    return DataConfig(size, tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"]))


def last_conv_block(model: nn.Module) -> nn.Module:
    """The last convolutional block, the layer Grad-CAM attributes to."""
    if hasattr(model, "last_block"):
        return model.last_block
    for name in ("layer4", "stages", "blocks", "features"):
        mod = getattr(model, name, None)
        if mod is not None:
            return mod[-1] if isinstance(mod, (nn.Sequential, nn.ModuleList)) else mod
    if hasattr(model, "conv_head"):
        return model.conv_head
    raise ModelError(f"{type(model).__name__} has no recognisable last conv block; attribution needs a CNN")
