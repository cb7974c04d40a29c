"""Where models run: one device choice for the whole process, followed by every place a model runs.

A job chooses once (``--device auto|cpu|cuda``, core.runner.cli; ``auto`` is CUDA when torch sees a GPU)
and :func:`use_device` makes it the process's device: training (core.models.training.fit), prediction and
embedding (core.models.inference), the frozen trunk (core.models.trunk) and attribution
(core.scanner.attribution) move their model and batches there and bring the results back to the CPU, so
models, checkpoints and everything stored stay as on a CPU. On CUDA, batches come from pinned memory
(copied without blocking) while the images are decoded by CPU threads, inference uses bf16 autocast where it
gives fp32's predictions (core.models.inference.choose_precision), and training uses TF32 matrix products;
on the CPU nothing changes. The Ray engine's actors pick their own device (core.engines.ray_data).
"""

from __future__ import annotations

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


def to_device(x: torch.Tensor) -> torch.Tensor:
    """A CPU batch on the current device (through pinned memory, without blocking, on CUDA)."""
    if _current.type == "cpu":
        return x
    return x.pin_memory().to(_current, non_blocking=True)


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
    """``model`` on the current device for the block, back on the CPU after it (models are kept on the CPU)."""
    if _current.type == "cpu":
        yield model
        return
    model.to(_current)
    try:
        yield model
    finally:
        model.cpu()
