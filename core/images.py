"""Decoding images into model-ready tensors, fast, and thumbnails for the app.

Images are decoded once to ``uint8`` arrays at the model's resolution (square resize) with a thread pool
(PIL releases the GIL while decoding) and, for repeated use by training and evaluation, cached as a
``.npy`` file in the workspace's artifacts. Normalisation happens on the fly in float.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.models import DataConfig
from core.progress import Progress, as_progress

DECODE_THREADS = 4


def load_rgb(path: str | Path, size: int) -> np.ndarray:
    """Decode ``path`` to an RGB ``size`` x ``size`` x 3 uint8 array (JPEG draft mode for big photos)."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size * 2, size * 2))
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(img, dtype=np.uint8)


def iter_decoded(paths: Sequence[str], size: int, *, chunk: int = 256,
                 threads: int = DECODE_THREADS) -> Iterator[np.ndarray]:
    """Yield N x size x size x 3 uint8 chunks of ``paths`` in order, decoding ahead in threads."""
    with ThreadPoolExecutor(threads) as pool:
        pending = None
        for start in range(0, len(paths), chunk):
            batch = list(pool.map(lambda p: load_rgb(p, size), paths[start:start + chunk]))
            if pending is not None:
                yield pending
            pending = np.stack(batch) if batch else np.zeros((0, size, size, 3), np.uint8)
        if pending is not None:
            yield pending


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
        tmp = cache_file.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(cache_file)
    return out


def to_tensor(pixels: np.ndarray | torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 N x H x W x 3 -> normalised float N x 3 x H x W."""
    x = torch.as_tensor(pixels).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light training augmentation on a normalised batch: random flip and random shifted crop."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n x h
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n x w
    idx_n = torch.arange(n).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def thumbnail(path: str | Path, cache_dir: Path, image_id: int, size: int = 128) -> Path:
    """A cached JPEG thumbnail of an image (created on first use)."""
    out = cache_dir / f"{image_id}-{size}.jpg"
    if not out.exists():
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            if img.width < size // 2:  # tiny images (e.g. 32 px) are upscaled to be seen
                img = img.resize((size, size), Image.Resampling.NEAREST)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp.jpg")
            img.save(tmp, quality=85)
            tmp.replace(out)
    return out
