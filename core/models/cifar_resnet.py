"""The classic CIFAR ResNet (He et al. 2016, section 4.2) with timm-like methods.

This is the architecture of the pretrained CIFAR-10 weights shipped in
``assets/weights/cifar10-resnets/resnet{20,32,44,56}-*.th`` (akamaster/pytorch_resnet_cifar10):
a 3x3 stem with 16 channels, three stages of ``n`` basic blocks with 16/32/64 channels,
option-A (zero-padding, parameter-free) shortcuts, global average pooling and a ``linear`` head.

The model exposes the same split of the forward pass as timm models and is registered with timm
(``register_model``), so the rest of the project builds it like any timm architecture::

    model = timm.create_model("cifar_resnet20", pretrained=True, pretrained_cfg_overlay=dict(file=path))
    feats = model.forward_head(model.forward_features(x), pre_logits=True)  # N x 64 embedding

There are no hub weights: ``pretrained=True`` needs a local file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from core.models.checkpoints import read_weights, state_dict_of

__all__ = [
    "CIFAR_DATA_CONFIG",
    "CIFAR_RESNET_DEPTHS",
    "BasicBlock",
    "CifarResNet",
    "create_cifar_resnet",
    "list_cifar_resnets",
]

#: Preprocessing the shipped weights expect (timm data-config keys). The akamaster weights
#: were trained on 32x32 inputs normalised with the ImageNet mean/std.
CIFAR_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 32, 32),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}

#: Registered model names and their number of blocks per stage (depth = 6 n + 2).
CIFAR_RESNET_DEPTHS: dict[str, int] = {
    "cifar_resnet20": 3,
    "cifar_resnet32": 5,
    "cifar_resnet44": 7,
    "cifar_resnet56": 9,
}


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the channels (no parameters)."""

    def __init__(self, out_channels: int, in_channels: int) -> None:
        super().__init__()
        self.pad = (out_channels - in_channels) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or option-A shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _PadShortcut(planes, in_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) with ``forward_features`` / ``forward_head`` like timm models.

    Args:
        blocks_per_stage: ``n``, the number of basic blocks in each of the 3 stages.
        num_classes: number of output classes of the ``linear`` head.

    Attributes:
        num_features: width of the pooled embedding (64).
        num_classes: number of logits.
        pretrained_cfg: the data config (see :data:`CIFAR_DATA_CONFIG`), so
            ``timm.data.resolve_model_data_config(model)`` finds the right preprocessing.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.num_features = 64
        self.pretrained_cfg: dict[str, Any] = dict(CIFAR_DATA_CONFIG)
        self._in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_stage(16, blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(32, blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    def _make_stage(self, planes: int, n_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n_blocks - 1):
            layers.append(BasicBlock(self._in_planes, planes, s))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups like timm's ResNet: the stem, then each stage (``coarse``) or each block."""
        return dict(stem=r"^conv1|^bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    def get_classifier(self) -> nn.Module:
        """The head (timm's name for it)."""
        return self.linear

    @property
    def last_block(self) -> nn.Module:
        """The last conv block (target layer for Grad-CAM)."""
        return self.layer3[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the feature map of the last block, shape ``N x 64 x H/4 x W/4``."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_intermediates(self, x: torch.Tensor, indices: int = 3,
                              intermediates_only: bool = True) -> list[torch.Tensor]:
        """The outputs of the last ``indices`` stages (stem, layer1..3), like timm's method of that name."""
        if not intermediates_only:
            raise ValueError("CifarResNet.forward_intermediates supports intermediates_only=True only")
        x = F.relu(self.bn1(self.conv1(x)))
        outs = [x]
        for stage in (self.layer1, self.layer2, self.layer3):
            x = stage(x)
            outs.append(x)
        return outs[-indices:]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool a feature map to ``N x 64`` (``pre_logits=True``) or map it to logits."""
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``N x num_classes``."""
        return self.forward_head(self.forward_features(x))


def list_cifar_resnets() -> list[str]:
    """Names accepted by :func:`create_cifar_resnet`."""
    return sorted(CIFAR_RESNET_DEPTHS, key=CIFAR_RESNET_DEPTHS.get)


def _read_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file and return its state dict without a ``module.`` prefix."""
    if not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint file not found: {checkpoint}")
    state = state_dict_of(read_weights(checkpoint))
    if state is None:
        raise ValueError(
            f"{checkpoint} does not hold a state dict (expected a dict, optionally under 'state_dict')"
        )
    return state


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], name: str, src: Path | str) -> None:
    """Raise ValueError naming missing/unexpected/mis-shaped keys, with a hint."""
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
    raise ValueError(
        f"checkpoint {src} does not fit {name}: " + "; ".join(parts) + ". "
        "Check that the depth matches the file (resnet20 weights need 'cifar_resnet20', ...) "
        "and that num_classes equals the checkpoint's head size."
    )


def create_cifar_resnet(
    name: str, *, num_classes: int = 10, checkpoint: Path | dict[str, torch.Tensor] | None = None
) -> CifarResNet:
    """Build a CIFAR ResNet by name and optionally load weights.

    Args:
        name: one of ``cifar_resnet20``, ``cifar_resnet32``, ``cifar_resnet44``, ``cifar_resnet56``.
        num_classes: size of the ``linear`` head (10 for the shipped CIFAR-10 weights).
        checkpoint: a state dict, or a ``.th``/``.pth``/``.safetensors`` file holding one (optionally under
            ``'state_dict'``, keys optionally prefixed ``module.``).

    Returns:
        The model in eval mode if a checkpoint was loaded, else freshly initialised.

    Raises:
        ValueError: unknown name, missing file, or a checkpoint that does not fit the model.
    """
    if name not in CIFAR_RESNET_DEPTHS:
        raise ValueError(f"unknown CIFAR ResNet {name!r}; choose one of {list_cifar_resnets()}")
    model = CifarResNet(CIFAR_RESNET_DEPTHS[name], num_classes=num_classes)
    if checkpoint is not None:
        state = dict(checkpoint) if isinstance(checkpoint, dict) else _read_state_dict(Path(checkpoint))
        _check_state_dict(model, state, name, "the given state dict" if isinstance(checkpoint, dict) else checkpoint)
        model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent
        model.eval()
    return model



def _register(name: str) -> Callable[..., CifarResNet]:
    """Register ``name`` with timm: ``timm.create_model(name, ...)`` calls the returned entry point."""

    def entry(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: dict | None = None,
              num_classes: int | None = 10, **kwargs: Any) -> CifarResNet:
        # Weights only from a local file, given as its state dict (core.models.factory) or its path: there are
        # none on any hub. num_classes 0 or None keeps the 10-class head (an embedder never uses it).
        overlay = pretrained_cfg_overlay or {}
        source = (overlay.get("state_dict") or overlay.get("file")) if pretrained else None
        if pretrained and source is None:
            raise RuntimeError(f"{name} has no hub weights; pass a local weights file (--classifier-weights "
                               f"or --embedder-weights PATH)")
        return create_cifar_resnet(name, num_classes=num_classes or 10, checkpoint=source)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"CIFAR ResNet-{6 * CIFAR_RESNET_DEPTHS[name] + 2} ({CIFAR_RESNET_DEPTHS[name]} blocks per stage)."
    return register_model(entry)


for _name in CIFAR_RESNET_DEPTHS:
    _register(_name)
