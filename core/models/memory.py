"""Forward passes without a page fault per activation: the CPU allocator tuned once, and big batches run in
micro-batches whose activations the allocator can reuse.

glibc's malloc serves a request above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and gives it
back with ``munmap`` when freed, and it trims the top of its heap above a trim threshold. A convolutional
network's activations at 224 px are far above that (EfficientNet-Lite0's widest, 96 channels at 112 x 112,
is 4.8 MB per image: 620 MB for a batch of 128), so every forward pass made the kernel fault in and zero
hundreds of megabytes again. Measured on the 2-core EPYC (one thread, EfficientNet-Lite0, 224 px, 256
images): 3.6 million page faults and 6.5 s of system time against 4.7 s of compute in batches of 128; in
micro-batches of 4 images with the thresholds below, 1,200 faults, no system time and the same compute. The
photo loop spent 156 of its 675 CPU seconds in the kernel.

So :func:`tune_allocator` (once per process; ``DCD_TUNE_ALLOCATOR=0`` leaves malloc as it is) fixes the mmap
threshold at glibc's largest and keeps up to :data:`TRIM_THRESHOLD` of freed memory for reuse, and
:func:`micro_batches` splits a batch into slices of at most :data:`MICRO_BATCH_PIXELS` pixels, whose
activations stay below the threshold (:func:`forward_in_micro_batches`; on a GPU, whose allocator caches,
one pass). Each image's output is computed on its own either way (inference, BatchNorm in eval mode), so
only floating-point rounding can differ with the batch's size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterator

import torch

#: glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): requests up to it come from the heap.
MMAP_THRESHOLD = 32 << 20
#: Freed memory at the top of the heap kept for the next batch instead of going back to the kernel.
TRIM_THRESHOLD = 512 << 20
#: Pixels per micro-batch: 4 images at 224 x 224 (12 at 128 px, 196 at 32 px).
MICRO_BATCH_PIXELS = 4 * 224 * 224
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Set glibc malloc's mmap and trim thresholds (see the module doc) once per process; False where this
    is not glibc or ``DCD_TUNE_ALLOCATOR=0``."""
    global _tuned
    if _tuned is None:
        _tuned = False
        if os.environ.get("DCD_TUNE_ALLOCATOR", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
                return False
            _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                       TRIM_THRESHOLD))
    return _tuned


def micro_batch_size(x: torch.Tensor) -> int:
    """Images per micro-batch for an N x C x H x W batch (at least 1)."""
    return max(1, MICRO_BATCH_PIXELS // max(1, int(x.shape[-2]) * int(x.shape[-1]))) if x.ndim == 4 else len(x)


def micro_batches(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """``x`` in consecutive slices of :func:`micro_batch_size` images."""
    size = micro_batch_size(x)
    for start in range(0, len(x), size):
        yield x[start:start + size]


def forward_in_micro_batches(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for an inference batch: on the CPU slice by slice (:func:`micro_batches`, with the allocator
    tuned), on a GPU in one pass."""
    if x.device.type != "cpu" or len(x) == 0:
        return fn(x)
    tune_allocator()
    return torch.cat([fn(part) for part in micro_batches(x)])
