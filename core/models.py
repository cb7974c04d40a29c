"""Classifiers and embedders: any timm architecture by name, weights from the hub or a local file.

Two kinds of model play a part:
- the **classifier** under debug: trained here, or loaded from a user's checkpoint;
- a frozen **embedder** whose penultimate layer gives the feature space DCD searches in: a timm model
  (ResNet, robust ResNet, DINO ViT...) or the classifier's own penultimate layer.

Weights: ``weights=PATH`` loads a local file: either a checkpoint written by :func:`save_checkpoint` (a
complete classifier), or a timm/ImageNet-style state dict (``pretrained_cfg_overlay=dict(file=PATH)``:
its classifier head is dropped when the class count differs). ``hub=True`` asks timm's hub, which needs
network access. Names starting with ``cifar_resnet`` are the classic CIFAR ResNets (core.cifar_resnet).
"""

from __future__ import annotations

from collections.abc import Callable

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

CHECKPOINT_FORMAT = "dcd-studio-classifier-v1"


class ModelError(ValueError):
    """A model cannot be built or loaded as asked; the message says what to change."""


@dataclass(frozen=True)
class DataConfig:
    """How images are prepared for a model: square resize to ``image_size``, then normalise."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]))  # type: ignore[arg-type]


def _is_cifar(arch: str) -> bool:
    return arch.startswith("cifar_resnet")


def _check_weights(weights: str | Path | None) -> Path | None:
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    return path


def _is_our_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def create_model(arch: str, *, num_classes: int, weights: str | Path | None = None,
                 hub: bool = False) -> nn.Module:
    """Build ``arch`` with ``num_classes`` outputs (0: no head, an embedder), loading ``weights``."""
    path = _check_weights(weights)
    if path is not None:
        obj = torch.load(path, map_location="cpu", weights_only=False)
        if _is_our_checkpoint(obj):
            return load_checkpoint(path)[0]
    if _is_cifar(arch):
        from core.cifar_resnet import create_cifar_resnet

        return create_cifar_resnet(arch, num_classes=num_classes or 10, checkpoint=path)
    try:
        if path is not None:
            return timm.create_model(arch, pretrained=True, num_classes=num_classes,
                                     pretrained_cfg_overlay=dict(file=str(path)))
        return timm.create_model(arch, pretrained=hub, num_classes=num_classes)
    except RuntimeError as exc:  # e.g. unknown model, or weights of another architecture
        raise ModelError(f"could not build {arch!r} from {path or ('the hub' if hub else 'scratch')}: "
                         f"{exc}") from exc
    except Exception as exc:
        if "Unknown model" in str(exc):
            raise ModelError(f"{arch!r} is not a timm architecture; see timm.list_models('{arch[:4]}*')") \
                from exc
        raise


def default_data_config(model: nn.Module, image_size: int | None = None) -> DataConfig:
    """The model's own preprocessing (timm's resolver), with ``image_size`` overriding its input size."""
    from core import cifar_resnet

    if isinstance(model, cifar_resnet.CifarResNet):
        cfg = cifar_resnet.CIFAR_DATA_CONFIG
    else:
        cfg = timm.data.resolve_model_data_config(model)
    size = image_size or int(cfg["input_size"][-1])
    return DataConfig(size, tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"]))


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer features (pooled, before the classifier head): the embedding."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


#: How an embedder turns an image into a vector: ``penultimate`` (the pooled last block, DCD's feature
#: space) or ``multiscale`` (see :func:`multiscale_features`).
EMBEDDING_LAYERS = ("penultimate", "multiscale")
MULTISCALE_STAGES = 3


def multiscale_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and std of the last :data:`MULTISCALE_STAGES` stages, L2-normalised per stage.

    Early stages keep low-level statistics (blur, fog, noise, colour) that the pooled last block is trained
    to ignore, so an error distribution made by such a shift is found by its neighbours here; the last
    stage keeps the semantic content. Measured on the CIFAR-10 fog scenario with the CIFAR resnet56: 64% of
    the 10 nearest pool neighbours of error_sample images are foggy, against 41% with the penultimate layer.
    """
    maps = model.forward_intermediates(x, indices=MULTISCALE_STAGES, intermediates_only=True)
    parts = []
    for m in maps:
        m = m.float().flatten(2)
        stats = torch.cat([m.mean(2), m.std(2, unbiased=False)], dim=1)
        parts.append(torch.nn.functional.normalize(stats, dim=1))
    return torch.cat(parts, dim=1)


def embedding_function(model: nn.Module, layers: str = "penultimate") -> Callable[[torch.Tensor], torch.Tensor]:
    """The function mapping a normalised batch to embedding vectors, for ``layers`` in EMBEDDING_LAYERS."""
    if layers == "penultimate":
        return lambda x: features(model, x)
    if layers == "multiscale":
        if not hasattr(model, "forward_intermediates"):
            raise ModelError(f"{type(model).__name__} cannot give intermediate stages; use --embedder-layers "
                             "penultimate")
        return lambda x: multiscale_features(model, x)
    raise ValueError(f"embedding layers must be one of {EMBEDDING_LAYERS}, got {layers!r}")


def embedding_dim(model: nn.Module, layers: str = "penultimate", image_size: int = 32) -> int:
    """Width of :func:`embedding_function`'s vectors."""
    if layers == "penultimate":
        return feature_dim(model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        dim = int(embedding_function(model, layers)(torch.zeros(2, 3, image_size, image_size)).shape[1])
    model.train(was_training)
    return dim


def feature_dim(model: nn.Module) -> int:
    """Width of :func:`features` (timm's ``head_hidden_size`` when a pre-logits layer widens it)."""
    return int(getattr(model, "head_hidden_size", None) or getattr(model, "num_features"))


def save_checkpoint(model: nn.Module, path: Path, *, arch: str, num_classes: int,
                    data_config: DataConfig, class_names: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "arch": arch, "num_classes": num_classes,
                "data_config": data_config.to_dict(), "class_names": class_names,
                "state_dict": model.state_dict()}, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a classifier saved by :func:`save_checkpoint`: returns the model (eval mode) and its info."""
    path = Path(path)
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not _is_our_checkpoint(obj):
        raise ModelError(f"{path} is not a DCD Studio classifier checkpoint")
    model = create_model(obj["arch"], num_classes=obj["num_classes"])
    model.load_state_dict(obj["state_dict"])
    model.eval()
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    info["data_config"] = DataConfig.from_dict(info["data_config"])
    return model, info


def weights_include_head(model: nn.Module, weights: str | Path, num_classes: int) -> bool:
    """True if ``weights`` hold a trained classifier head with ``num_classes`` outputs for ``model``.

    A DCD Studio checkpoint always does; a timm/ImageNet backbone file whose head has another class count
    does not (its head was dropped, the model must be trained on this workspace's classes).
    """
    obj = torch.load(Path(weights), map_location="cpu", weights_only=False)
    if _is_our_checkpoint(obj):
        return True
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "linear"
    heads = head if isinstance(head, (list, tuple)) else [head]
    for key, value in state.items():
        key = key.removeprefix("module.")
        if any(key == f"{h}.weight" for h in heads) and hasattr(value, "shape"):
            return int(value.shape[0]) == num_classes
    return False


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
