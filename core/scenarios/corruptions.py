"""Image corruptions in numpy, in the spirit of CIFAR-10-C (Hendrycks & Dietterich 2019).

``fog``, ``motion_blur``, ``snow``, ``gaussian_noise``, ``contrast``, ``low_light``: float images in [0, 1], shape
N x H x W x 3, deterministic given one ``numpy.random.Generator`` for the whole batch. :func:`apply_corruption`
takes and returns uint8 images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _fractal_noise(
    rng: np.random.Generator, n: int, size: int, *, decay: float = 2.0, finest: int = 8
) -> np.ndarray:
    """Smooth multi-octave noise in [0, 1], shape ``n x size x size`` (a plasma-fractal stand-in).

    Octaves have 2, 4, ... ``finest`` cells per side; each finer one is ``decay`` times weaker.
    """
    out = np.zeros((n, size, size), dtype=np.float32)
    amp, cells = 1.0, 2
    while cells <= min(finest, size):
        grid = rng.standard_normal((n, cells + 1, cells + 1)).astype(np.float32)
        out += amp * _bilinear_upsample(grid, size)
        amp /= decay
        cells *= 2
    lo = out.min(axis=(1, 2), keepdims=True)
    hi = out.max(axis=(1, 2), keepdims=True)
    return (out - lo) / np.maximum(hi - lo, 1e-6)


def _bilinear_upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly resample ``n x g x g`` grids (corner-aligned) to ``n x size x size``."""
    g = grid.shape[1] - 1
    t = np.linspace(0.0, g, size, dtype=np.float32)
    i0 = np.minimum(t.astype(int), g - 1)
    f = t - i0
    rows = grid[:, i0, :] * (1 - f)[None, :, None] + grid[:, i0 + 1, :] * f[None, :, None]
    return rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]


def _bilinear_sample(x: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample images ``x`` (N x H x W x C) at float coordinates ``ys, xs`` (N x H x W), edges clamped."""
    n, h, w, _ = x.shape
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.minimum(ys.astype(np.int32), h - 2)
    x0 = np.minimum(xs.astype(np.int32), w - 2)
    fy = (ys - y0)[..., None]
    fx = (xs - x0)[..., None]
    flat = x.reshape(n * h * w, -1)
    base = (np.arange(n, dtype=np.int32) * h * w)[:, None, None] + y0 * w + x0
    top = flat[base] * (1 - fx) + flat[base + 1] * fx
    bottom = flat[base + w] * (1 - fx) + flat[base + w + 1] * fx
    return top * (1 - fy) + bottom * fy


def _directional_average(
    x: np.ndarray, rng: np.random.Generator, lengths: np.ndarray, steps: int = 9
) -> np.ndarray:
    """Average ``steps`` copies of each image shifted along a random direction over ``lengths`` px."""
    n, h, w, _ = x.shape
    angle = rng.uniform(0, np.pi, size=n).astype(np.float32)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    acc = np.zeros_like(x)
    for t in np.linspace(-0.5, 0.5, steps, dtype=np.float32):
        dy = (t * lengths * np.sin(angle))[:, None, None]
        dx = (t * lengths * np.cos(angle))[:, None, None]
        acc += _bilinear_sample(x, yy[None] + dy, xx[None] + dx)
    return acc / steps


def _col(values: np.ndarray) -> np.ndarray:
    """Reshape per-image values (N,) to broadcast over N x H x W x C."""
    return values.astype(np.float32)[:, None, None, None]


def fog(x: np.ndarray, rng: np.random.Generator, severity: np.ndarray) -> np.ndarray:
    """Add smooth fractal haze and lower contrast (CIFAR-10-C style ``(x + a·fog)·max / (max + a)``)."""
    a = _col(0.3 + 0.4 * severity)
    haze = _fractal_noise(rng, len(x), x.shape[1])[..., None]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    return (x + a * haze) * peak / (peak + a)


def motion_blur(x: np.ndarray, rng: np.random.Generator, severity: np.ndarray) -> np.ndarray:
    """Blur each image along one random direction, as if the camera moved."""
    return _directional_average(x, rng, (1.0 + 0.7 * severity).astype(np.float32))


def snow(x: np.ndarray, rng: np.random.Generator, severity: np.ndarray) -> np.ndarray:
    """Streaks of falling snow over a slightly whitened image."""
    n, h, w, _ = x.shape
    density = (0.01 + 0.007 * severity)[:, None, None]
    flakes = (rng.random((n, h, w)) < density).astype(np.float32)[..., None]
    flakes = _directional_average(flakes, rng, np.full(n, 4.0, dtype=np.float32), steps=5)
    flakes = np.clip(flakes * 2.5, 0.0, 1.0)
    gray = x.mean(axis=3, keepdims=True)
    base = 0.85 * x + 0.15 * np.maximum(x, gray * 1.5 + 0.5)
    return base + flakes * (1.0 - base)


def gaussian_noise(x: np.ndarray, rng: np.random.Generator, severity: np.ndarray) -> np.ndarray:
    """Additive per-pixel Gaussian noise (sensor noise)."""
    sigma = _col(0.02 + 0.01 * severity)
    return x + sigma * rng.standard_normal(size=x.shape, dtype=np.float32)


def contrast(x: np.ndarray, rng: np.random.Generator, severity: np.ndarray) -> np.ndarray:
    """Pull every pixel towards the image mean (washed-out, low-contrast images)."""
    keep = _col(np.maximum(0.05, 0.7 - 0.1 * severity))
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * keep + mean


def low_light(x: np.ndarray, rng: np.random.Generator, severity: np.ndarray) -> np.ndarray:
    """A photo taken in poor light: under-exposed in linear light, a street-lamp or moonlight colour cast,
    and the sensor's signal-dependent shot noise plus read noise (per pixel, at the image's resolution)."""
    n = len(x)
    linear = x ** 2.2
    exposure = _col(np.clip(0.34 - 0.05 * severity, 0.05, 1.0))
    casts = np.array([[1.15, 1.0, 0.7], [0.85, 0.95, 1.15]], dtype=np.float32)  # sodium lamp, moonlight
    cast = casts[rng.integers(0, 2, size=n)][:, None, None, :]
    signal = linear * exposure * cast
    shot = _col(0.004 + 0.003 * severity)
    read = _col(0.002 + 0.001 * severity)
    sigma = np.sqrt(signal * shot + read ** 2)
    noisy = signal + sigma * rng.standard_normal(size=x.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0) ** (1 / 2.2)


CORRUPTIONS: dict[str, Callable[[np.ndarray, np.random.Generator, np.ndarray], np.ndarray]] = {
    "fog": fog,
    "motion_blur": motion_blur,
    "snow": snow,
    "gaussian_noise": gaussian_noise,
    "contrast": contrast,
    "low_light": low_light,
}


#: The CIFAR-10-C-style corruptions (what the CIFAR-10 scenario's pool mixes); ``low_light`` is the photo
#: scenario's, applied at photo resolution.
CIFAR_C_CORRUPTIONS: tuple[str, ...] = ("fog", "motion_blur", "snow", "gaussian_noise", "contrast")


def apply_corruption(
    images: np.ndarray, name: str, rng: np.random.Generator, *, severity: float | np.ndarray = 3.0
) -> np.ndarray:
    """Corrupt a batch of uint8 images (N x H x W x 3) and return uint8 images of the same shape.

    Args:
        images: uint8 array, N x H x W x 3 (H, W >= 2).
        name: one of :data:`CORRUPTIONS` (``fog``, ``motion_blur``, ``snow``, ``gaussian_noise``,
            ``contrast``).
        rng: the generator for all random draws (deterministic given its state).
        severity: strength, about 1 (mild) to 5 (strong); a float or one value per image (N,).
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {sorted(CORRUPTIONS)}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    if len(images) == 0:
        return images.copy()
    sev = np.broadcast_to(np.asarray(severity, dtype=np.float32), (len(images),))
    if not np.all(np.isfinite(sev)) or np.any(sev < 0):
        raise ValueError("severity must be finite and >= 0")
    x = images.astype(np.float32) / 255.0
    y = CORRUPTIONS[name](x, rng, sev)
    return np.round(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


#: Default severity per corruption: the shipped resnet20 (81% on clean JPEG test images) drops to
#: about 50% (fog, motion_blur); the pool's other corruptions are of comparable strength.
DEFAULT_SEVERITY: dict[str, float] = {
    "fog": 3.0, "motion_blur": 3.0, "snow": 3.0, "gaussian_noise": 3.0, "contrast": 3.0, "low_light": 3.0,
}
