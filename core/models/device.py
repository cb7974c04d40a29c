"""Where models run: one device choice for the whole process, followed by every place a model runs.

A job chooses once (``--device auto|cpu|cuda``, core.runner.cli; ``auto`` is CUDA when torch sees a GPU)
and :func:`use_device` makes it the process's device: training (core.models.training.fit), prediction and
embedding (core.models.inference), the frozen trunk (core.models.trunk) and attribution
(core.scanner.attribution) move their model and batches there and bring the results back to the CPU, so
models, checkpoints and everything stored stay as on a CPU. On CUDA, batches come from pinned memory
(copied without blocking) while the images are decoded by CPU threads, inference uses bf16 autocast where it
gives fp32's predictions (core.models.inference.choose_precision), and training uses TF32 matrix products.
The Ray engine's actors pick their own device (core.engines.ray_data).

On every device a model runs in **channels-last** memory order (:func:`memory_format`: a batch of images is
stored pixel by pixel, each pixel's channels together), the layout oneDNN's CPU convolutions and cuDNN's
tensor cores are fastest in; models go back to the usual layout after the block, so checkpoints and
everything stored are as before. Measured on an AMD EPYC (Zen 4, 2 threads; `python -m bench.compute`):
efficientnet_lite0's forward 1.2-2x faster at 128 and 224 px in fp32 and bf16, a training step of its last
stages 1.5x, a ResNet's 1.2-1.4x; a ViT is unchanged. ``$DCD_CHANNELS_LAST=0`` turns it off.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import nn

from core.models.config import ModelError

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ModelError):
    """A device asked for that this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu`` or ``cuda``; a clear error where CUDA is asked
    for and torch sees none."""
    if name not in DEVICES:
        raise DeviceError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("--device cuda: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is "
                          "False); use --device cpu, or auto to take a GPU only when there is one")
    return torch.device("cuda")


_current = torch.device("cpu")


def use_device(name: str) -> torch.device:
    """Make ``name`` (see :func:`resolve_device`) the device every model of this process runs on."""
    global _current
    _current = resolve_device(name)
    if _current.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return _current


def current_device() -> torch.device:
    return _current


def on_gpu() -> bool:
    return _current.type == "cuda"


def memory_format() -> torch.memory_format:
    """How image batches and convolution weights are laid out while a model runs (see the module doc)."""
    off = os.environ.get("DCD_CHANNELS_LAST", "1").strip().lower() in ("0", "false", "no", "off")
    return torch.contiguous_format if off else torch.channels_last


def to_device(x: torch.Tensor) -> torch.Tensor:
    """A CPU batch on the current device (through pinned memory, without blocking, on CUDA); a batch of
    images (N x C x H x W) in :func:`memory_format`."""
    if x.dim() == 4:
        x = x.contiguous(memory_format=memory_format())
    if _current.type == "cpu":
        return x
    return x.pin_memory().to(_current, non_blocking=True)


def model_to_device(model: nn.Module) -> nn.Module:
    """``model`` moved to the current device in :func:`memory_format` (in place; undone by :func:`model_back`).
    Its new parameters are ordinary tensors even when called under ``torch.inference_mode`` (inference tensors
    could never train again)."""
    with torch.inference_mode(False):
        return model.to(_current, memory_format=memory_format())


def model_back(model: nn.Module) -> nn.Module:
    """``model`` back on the CPU in the usual layout, as models are kept between runs (in place)."""
    with torch.inference_mode(False):
        return model.to("cpu", memory_format=torch.contiguous_format)


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device() -> dict[str, str]:
    """What a job records about where its models ran."""
    if _current.type == "cuda":
        return {"device": "cuda", "name": torch.cuda.get_device_name(_current)}
    return {"device": "cpu", "name": _cpu_model()}


@contextmanager
def on_device(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` on the current device in :func:`memory_format` for the block, back on the CPU in the usual
    layout after it (models are kept so between runs)."""
    model_to_device(model)
    try:
        yield model
    finally:
        model_back(model)
