"""Decoding images into model-ready tensors, fast, and thumbnails for the app.

Images are decoded once to ``uint8`` arrays at the model's resolution (square resize) with a thread pool
(PIL and torch release the GIL) that works ahead of the consumer (the next chunk decodes during the
current chunk's forward pass) and, for repeated use by training and evaluation, cached as a ``.npy`` file
in the workspace's artifacts. Normalisation happens on the fly in float: on the consumer's thread
(:func:`to_tensor`), or, for a stream that feeds a forward pass (:func:`iter_model_inputs`: the embed
job), in the decode threads too, so that the forward pass's thread does nothing else. Decode threads run
their torch ops (the resize) on themselves alone: no OpenMP teams beside the forward pass's.

Every decode goes through core.data.imagefile.read_rgb, as ingest's check does: the pixel limit
(:data:`MAX_IMAGE_PIXELS`, ``$DCD_MAX_IMAGE_PIXELS``; a bigger image raises
:class:`~core.data.imagefile.ImageTooLargeError` instead of filling the memory), EXIF orientation, and
the conversion to 8-bit RGB (16-bit scaled, alpha on white).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.data.imagefile import MAX_IMAGE_PIXELS, ImageSource, ImageTooLargeError, read_rgb, to_rgb
from core.data.model_input import DataConfig
from core.progress import Progress, as_progress
from core.store.files import atomic_path
from core.store.workspace import Workspace

DECODE_THREADS = 4
INPUT_THREADS = 2  # decode threads of iter_model_inputs (a forward pass runs beside them)
INPUT_NICE = 0  # steps below the forward pass's priority (a lower one starved decode under load here)

__all__ = ["MAX_IMAGE_PIXELS", "ImageTooLargeError", "to_rgb", "resize_rgb", "load_rgb", "iter_decoded",
           "iter_model_inputs", "decode_all", "as_model_input", "to_tensor", "augment", "flip_and_shift", "fixed_view", "fixed_views", "thumbnail", "pixels"]


def resize_rgb(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize an H x W x 3 uint8 array to ``size`` x ``size`` (antialiased bilinear, as PIL's BILINEAR).

    torch's uint8 kernel is vectorised (AVX2) and about 3x faster than Pillow's; it matches Pillow's
    BILINEAR resize to within one grey level.
    """
    if not pixels.flags.writeable or not pixels.flags.c_contiguous:
        pixels = np.array(pixels, dtype=np.uint8, order="C")  # torch wants a writable buffer
    t = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False)
    return out[0].permute(1, 2, 0).contiguous().numpy()


def load_rgb(path: ImageSource, size: int, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode ``path`` (a file or a binary stream) to an RGB ``size`` x ``size`` x 3 uint8 array.

    Upright by EXIF, converted by :func:`~core.data.imagefile.to_rgb`, JPEG in draft mode for big photos;
    raises :class:`~core.data.imagefile.ImageTooLargeError` above the pixel limit (``max_pixels``, default
    ``$DCD_MAX_IMAGE_PIXELS`` or :data:`MAX_IMAGE_PIXELS`).
    """
    pixels = np.asarray(read_rgb(path, max_pixels=max_pixels, draft=(size * 2, size * 2)), dtype=np.uint8)
    return pixels if pixels.shape[:2] == (size, size) else resize_rgb(pixels, size)


def _torch_on_this_thread_only() -> None:
    """Make the torch ops of the calling thread run on that thread alone (no OpenMP team of its own).

    A decode thread that calls torch (the resize) would otherwise start its own team of intra-op threads:
    4 decode threads x 2 plus the forward's 2 on 2 cores, whose barriers then wait on descheduled threads.
    OpenMP's thread count is per calling thread, so this leaves the forward pass's threads untouched (torch's
    own ``set_num_threads`` would also change the default of every later thread). Without libgomp (another
    build of torch) this does nothing.
    """
    torch.get_num_threads()  # torch's lazy per-thread setup first, so that it does not undo the next line
    lib = _libgomp()
    if lib is not None:
        lib.omp_set_num_threads(1)


@lru_cache(maxsize=1)
def _libgomp() -> ctypes.CDLL | None:
    """torch's OpenMP runtime (already loaded), or None where torch uses another one."""
    for path in (Path(torch.__file__).parent / "lib" / "libgomp.so.1", "libgomp.so.1"):
        try:
            return ctypes.CDLL(str(path), mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
    return None


def _decode_worker_setup(nice: int) -> None:
    """Set up a decode thread: single-threaded torch, and ``nice`` steps below the forward's priority."""
    _torch_on_this_thread_only()
    if nice > 0 and hasattr(os, "setpriority"):
        try:  # Linux: a thread id names one thread; the forward pass's threads keep their priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
        except OSError:
            pass


def _iter_chunks(paths: Sequence[str], chunk: int, threads: int, ahead: int, nice: int,
                 new_chunk: Callable[[int], np.ndarray], fill: Callable[[np.ndarray, int, str], None]
                 ) -> Iterator[np.ndarray]:
    """Chunks of ``paths`` in order, each a ``new_chunk(n)`` array whose rows ``fill(out, i, path)`` writes
    in a pool of ``threads`` threads, ``ahead`` chunks ahead of the caller."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    if threads < 1 or ahead < 0:
        raise ValueError(f"threads must be at least 1 and ahead at least 0, got {threads} and {ahead}")
    starts = list(range(0, len(paths), chunk))
    if not starts:
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="decode", initializer=_decode_worker_setup,
                              initargs=(nice,))

    def submit(start: int) -> tuple[np.ndarray, list[Future]]:
        sub = paths[start:start + chunk]
        out = new_chunk(len(sub))
        return out, [pool.submit(fill, out, i, p) for i, p in enumerate(sub)]

    try:
        queue = [submit(s) for s in starts[:ahead + 1]]
        next_start = ahead + 1
        while queue:
            out, futures = queue.pop(0)
            for f in futures:
                f.result()
            if next_start < len(starts):
                queue.append(submit(starts[next_start]))
                next_start += 1
            yield out
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_decoded(paths: Sequence[str], size: int, *, chunk: int = 256, threads: int = DECODE_THREADS,
                 ahead: int = 1, nice: int = 0) -> Iterator[np.ndarray]:
    """Yield N x size x size x 3 uint8 chunks of ``paths`` in order.

    Decoding runs in ``threads`` threads (PIL and torch release the GIL; each runs its torch ops on itself
    alone, ``nice`` steps below the caller's priority) and stays ``ahead`` chunks ahead of the caller:
    while the caller works on chunk i (e.g. a forward pass), chunks i+1..i+ahead decode. At most
    ``ahead + 1`` chunks are held in memory.
    """
    def fill(out: np.ndarray, i: int, path: str) -> None:
        out[i] = load_rgb(path, size)

    yield from _iter_chunks(paths, chunk, threads, ahead, nice,
                            lambda n: np.empty((n, size, size, 3), np.uint8), fill)


def _norm_constants(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """float32 (scale, shift) of ``x * scale + shift`` = ``(x / 255 - mean) / std``, as :func:`to_tensor`."""
    mean, std = np.asarray(cfg.mean, np.float64), np.asarray(cfg.std, np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def iter_model_inputs(paths: Sequence[str], cfg: DataConfig, *, chunk: int = 256,
                      threads: int = INPUT_THREADS, ahead: int = 1, nice: int = INPUT_NICE
                      ) -> Iterator[torch.Tensor]:
    """Yield model-ready chunks of ``paths`` in order: normalised float32 N x 3 x size x size tensors
    (channels-last memory, as :func:`to_tensor` makes), values bit-identical to
    ``to_tensor(iter_decoded(...))``.

    Decode, resize *and* normalisation run in the ``threads`` decode threads, ahead of the caller (see
    :func:`iter_decoded`), so that the consumer's thread only runs the forward pass. The decode threads run
    ``nice`` steps below the caller's priority: on a machine whose cores the forward pass fills, they take
    the cycles it leaves rather than stalling its threads. :func:`core.models.inference.run_model` takes
    these chunks as they are.
    """
    size = cfg.image_size
    scale, shift = (torch.from_numpy(c) for c in _norm_constants(cfg))

    def fill(out: np.ndarray, i: int, path: str) -> None:
        # to_tensor's float32 multiply then add, by the same constants, on this thread alone
        np.copyto(out[i], load_rgb(path, size))  # exact uint8 -> float32 (the array may be read-only)
        torch.from_numpy(out[i]).mul_(scale).add_(shift)

    for block in _iter_chunks(paths, chunk, threads, ahead, nice,
                              lambda n: np.empty((n, size, size, 3), np.float32), fill):
        yield torch.from_numpy(block).permute(0, 3, 1, 2)


def decode_all(paths: Sequence[str], size: int, *, progress: Progress | None = None,
               cache_dir: Path | None = None) -> np.ndarray:
    """All of ``paths`` as one N x size x size x 3 uint8 array, from the cache when it holds them."""
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha1(("\n".join(paths) + f"|{size}").encode()).hexdigest()[:16]
        cache_file = cache_dir / f"pixels-{size}-{key}.npy"
        if cache_file.exists():
            return np.load(cache_file)
    out = np.empty((len(paths), size, size, 3), np.uint8)
    i = 0
    chunks = iter_decoded(paths, size)
    for block in as_progress(progress).iter(chunks, total=len(paths), desc="decode", unit="img",
                                            weight=len):
        out[i:i + len(block)] = block
        i += len(block)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file) as tmp:
            np.save(tmp, out)
    return out


def as_model_input(block: np.ndarray | torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """A batch as the model takes it: uint8 N x H x W x 3 pixels normalised by :func:`to_tensor`; a float
    N x 3 x H x W tensor (a chunk of :func:`iter_model_inputs`, already normalised) as it is."""
    if isinstance(block, torch.Tensor) and block.is_floating_point():
        if block.dim() != 4 or block.shape[1] != 3:
            raise ValueError(f"a float model input must be N x 3 x H x W, got {tuple(block.shape)}")
        return block
    return to_tensor(block, cfg)


def to_tensor(pixels: np.ndarray | torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 N x H x W x 3 -> normalised float N x 3 x H x W (channels-last memory)."""
    if isinstance(pixels, np.ndarray) and not pixels.flags.writeable:
        pixels = pixels.copy()  # a read-only memory map; torch only wraps writable arrays
    x = torch.as_tensor(pixels).permute(0, 3, 1, 2).float()
    mean = torch.tensor(cfg.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float64).view(1, 3, 1, 1)
    # (x / 255 - mean) / std in two passes over the batch instead of three
    return x.mul_((1.0 / (255.0 * std)).float()).add_((-mean / std).float())


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light training augmentation on a normalised batch: random flip and random shifted crop."""
    n, _, h, _ = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    span = 2 * _shift_pad(h) + 1
    dx = torch.randint(0, span, (n,), generator=generator)
    dy = torch.randint(0, span, (n,), generator=generator)
    return flip_and_shift(x, flip, dx, dy)


def _shift_pad(h: int) -> int:
    return max(1, h // 8)


def flip_and_shift(x: torch.Tensor, flip: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` mirrored where ``flip``, then cropped from its reflect-padded self at ``(dy, dx)``
    (pad = h / 8; ``dx = dy = pad`` keeps it in place)."""
    n, _, h, w = x.shape
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    pad = _shift_pad(h)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n x h
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n x w
    idx_n = torch.arange(n).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def fixed_view(x: torch.Tensor, image_ids: Sequence[int], view: int) -> torch.Tensor:
    """View ``view`` of each image: the same augmentation of an image every time it is asked for, so that a
    model's frozen part can be run on it once (core.models.trunk). View 0 is the image as it is, 1 its mirror
    image, and each later view a shift (mirrored in odd views) drawn from the image's id and the view's
    number: the flips and shifts :func:`augment` draws at random."""
    return fixed_views(x, image_ids, [view] * len(x))


def fixed_views(x: torch.Tensor, image_ids: Sequence[int], views: Sequence[int]) -> torch.Tensor:
    """Each image of ``x`` in its own view (``views[i]`` of image ``image_ids[i]``, as :func:`fixed_view`)."""
    n, _, h, _ = x.shape
    if len(image_ids) != n or len(views) != n:
        raise ValueError(f"{n} images, {len(image_ids)} image ids and {len(views)} views")
    pad = _shift_pad(h)
    views = [int(v) for v in views]
    flip = torch.tensor([v % 2 == 1 for v in views], dtype=torch.bool)
    shift = torch.from_numpy(np.array([np.random.default_rng([int(i), v]).integers(0, 2 * pad + 1, 2) if v >= 2
                                       else (pad, pad) for i, v in zip(image_ids, views)], dtype=np.int64)
                             .reshape(n, 2))
    return flip_and_shift(x, flip, shift[:, 0], shift[:, 1])


def thumbnail(path: str | Path, cache_dir: Path, image_id: int, size: int = 128) -> Path:
    """A cached JPEG thumbnail of an image (created on first use; upright, decoded as for the models)."""
    out = cache_dir / f"{image_id}-{size}.jpg"
    if not out.exists():
        img = read_rgb(path, draft=(size, size))
        img.thumbnail((size, size))
        if img.width < size // 2:  # tiny images (e.g. 32 px) are upscaled to be seen
            img = img.resize((size, size), Image.Resampling.NEAREST)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            img.save(tmp, format="JPEG", quality=85)
    return out


def pixels(ws: Workspace, paths: Sequence[str], size: int, *, progress: Progress | None = None) -> np.ndarray:
    """uint8 N x size x size x 3 pixels of ``paths``, cached in the workspace's artifacts."""
    return decode_all(list(paths), size, progress=progress, cache_dir=ws.artifact_dir("cache"))
