"""A Waterbirds-like synthetic benchmark with planted failures, for demos and planted-truth tests.

:func:`generate_waterbirds_like` draws two classes of birds, ``landbird`` (round body, short beak,
legs, raised tail) and ``waterbird`` (long flat body, long neck, long beak), with random colour, size,
rotation and position, on a ``land`` (textured green/brown ground, trees) or ``water`` (blue, waves)
background under a sky band, with colour jitter and pixel noise. It plants three failures whose truth is
in the manifest (``group`` and ``true_label`` columns):

- a **spurious correlation**: in ``train`` the background agrees with the class 95% of the time, so a
  classifier leans on it and fails on the minority groups ``landbird_on_water`` and ``waterbird_on_land``;
  ``error_sample`` / ``error_heldout`` hold only those two groups;
- **mislabeled training images**: 3% of ``train``, all from ``waterbird_on_water``, labeled ``landbird``;
- a **noisy pool**: ``pool`` is 4x ``train``, mostly majority groups (12% minority), with 30% of its weak
  labels flipped.

Output: ``images/<split>/<number>.png`` and ``manifest.csv`` with columns
``path,label,split,weak_label,group,true_label`` (see the project's ingest contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from core.constants import MANIFEST_COLUMNS

__all__ = [
    "CLASSES",
    "GROUPS",
    "MINORITY_GROUPS",
    "DemoSizes",
    "DEMO_SIZES",
    "generate_waterbirds_like",
    "render_birds",
]

CLASSES: tuple[str, str] = ("landbird", "waterbird")
BACKGROUNDS: tuple[str, str] = ("land", "water")
GROUPS: tuple[str, ...] = ("landbird_on_land", "landbird_on_water", "waterbird_on_land", "waterbird_on_water")
MINORITY_GROUPS: tuple[str, str] = ("landbird_on_water", "waterbird_on_land")
MISLABELED_GROUP = "waterbird_on_water"



@dataclass(frozen=True)
class DemoSizes:
    """Split sizes and the planted rates of the benchmark."""

    train: int
    test: int
    error_sample: int
    error_heldout: int
    pool: int
    train_minority_frac: float = 0.05  # per class: share of its images on the other background
    train_mislabeled_frac: float = 0.03  # of all train images, all taken from MISLABELED_GROUP
    pool_minority_frac: float = 0.12  # both minority groups together
    pool_noise: float = 0.30  # share of pool weak labels flipped


DEMO_SIZES: dict[str, DemoSizes] = {
    "full": DemoSizes(train=2000, test=800, error_sample=50, error_heldout=500, pool=8000),
    "small": DemoSizes(train=600, test=400, error_sample=40, error_heldout=200, pool=2000),
}


def _group_name(cls: int, bg: int) -> str:
    return f"{CLASSES[cls]}_on_{BACKGROUNDS[bg]}"


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------


def _value_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1], shape ``n x size x size``, from a bilinearly upsampled grid."""
    grid = rng.uniform(-1, 1, size=(n, cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0.0, cells, size, dtype=np.float32)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = grid[:, i0, :] * (1 - f)[None, :, None] + grid[:, i0 + 1, :] * f[None, :, None]
    return rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]


def _backgrounds(rng: np.random.Generator, bg: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Float RGB backgrounds (N x S x S x 3, 0..1) and each image's horizon row.

    Colour depends on the row only (sky above the horizon, ground below); the texture (mottled land,
    waves on water) is a per-pixel brightness modulation, so only one full-size product is needed.
    """
    n = len(bg)
    yy = np.arange(size, dtype=np.float32)[None, :, None]
    xx = np.arange(size, dtype=np.float32)[None, None, :]
    horizon = rng.uniform(0.15, 0.4, size=n).astype(np.float32) * size
    texture = 0.6 * _value_noise(rng, n, size, 4) + 0.4 * _value_noise(rng, n, size, 16)
    mix = rng.uniform(0, 1, size=(n, 1)).astype(np.float32)
    land_rgb = mix * _LAND_GREEN + (1 - mix) * _LAND_BROWN
    water_rgb = mix * _WATER_TEAL + (1 - mix) * _WATER_BLUE
    ground_rgb = np.where(bg[:, None] == 0, land_rgb, water_rgb)
    sky_rgb = rng.uniform([0.55, 0.65, 0.75], [0.8, 0.85, 0.98], size=(n, 3)).astype(np.float32)
    freq = rng.uniform(0.5, 1.2, size=(n, 1, 1)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    wobble = 2.0 * np.sin(xx * rng.uniform(0.08, 0.2, size=(n, 1, 1)).astype(np.float32) + phase)
    waves = np.sin(freq * (yy + wobble) + phase)
    below = yy >= horizon[:, None, None]  # n x S x 1
    ground_mod = np.where(bg[:, None, None] == 0, 0.35 * texture, 0.25 * waves + 0.15 * texture)
    mod = np.where(below, ground_mod, 0.08 * texture)
    rgb = np.where(below[..., None], ground_rgb[:, None, None, :], sky_rgb[:, None, None, :])  # n x S x 1 x 3
    return rgb * (1 + mod[..., None]), horizon


_LAND_GREEN = np.array([0.30, 0.52, 0.22], np.float32)
_LAND_BROWN = np.array([0.50, 0.40, 0.24], np.float32)
_WATER_TEAL = np.array([0.15, 0.45, 0.55], np.float32)
_WATER_BLUE = np.array([0.18, 0.32, 0.65], np.float32)


def _ellipse(cx: float, cy: float, rx: float, ry: float, k: int = 16) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


#: Bird size (body length as a share of the image side) and camouflage (how far the bird's colours are
#: pulled towards the background behind it): the knobs that make the foreground harder to learn than
#: the background, so a classifier takes the background shortcut.
#: Measured on the full demo at 32 px, seed 0, cifar_resnet20 from scratch (the demo's classifier, SGD 0.1):
#: with 30 epochs the model learns part of the birds and still fails on a planted group (two runs: minority
#: groups 0.90 / 0.01 and 0.56 / 0.00 on test); the 10 nearest pool neighbours of error_sample images in
#: its penultimate space are 51-67% from the same group (pool base rate 12%). Learnability is a sharp edge:
#: with 40 epochs these birds are learnt (minority 0.95+), while birds of (0.22, 0.36) with camouflage
#: (0.05, 0.45) are not learnt at all. An ImageNet-style resnet18 (stride-32 stem) learns only the
#: background at 32 or 64 px.
BIRD_SCALE = (0.25, 0.4)
CAMOUFLAGE = (0.0, 0.4)


@dataclass(frozen=True)
class _Look:
    """How hard the foreground is: bird size range and camouflage range."""

    bird_scale: tuple[float, float]
    camouflage: tuple[float, float]

    @classmethod
    def checked(cls, bird_scale: tuple[float, float], camouflage: tuple[float, float]) -> "_Look":
        lo, hi = (float(v) for v in bird_scale)
        if not 0.05 <= lo <= hi <= 0.6:
            raise ValueError(
                f"bird_scale must be (min, max) with 0.05 <= min <= max <= 0.6, got {bird_scale}")
        c_lo, c_hi = (float(v) for v in camouflage)
        if not 0.0 <= c_lo <= c_hi <= 1.0:
            raise ValueError(f"camouflage must be (min, max) with 0 <= min <= max <= 1, got {camouflage}")
        return cls((lo, hi), (c_lo, c_hi))


def _landbird_parts(rng: np.random.Generator) -> list[tuple[np.ndarray, str]]:
    """Round body, round head, short beak, legs, raised tail; canonical frame (x forward, y down)."""
    rx, ry = rng.uniform(0.4, 0.5), rng.uniform(0.3, 0.38)
    leg = rng.uniform(0.55, 0.75)
    beak = rng.uniform(0.7, 0.85)
    return [
        (np.array([[-0.1, 0.25], [-0.12, leg], [-0.06, leg], [-0.04, 0.25]]), "beak"),
        (np.array([[0.08, 0.25], [0.12, leg], [0.18, leg], [0.14, 0.25]]), "beak"),
        (np.array([[-0.35, -0.05], [-0.8, -0.45], [-0.72, 0.05]]), "wing"),
        (_ellipse(0.0, 0.0, rx, ry), "body"),
        (_ellipse(0.38, -0.32, 0.21, 0.2), "body"),
        (np.array([[0.55, -0.38], [beak, -0.31], [0.55, -0.24]]), "beak"),
        (_ellipse(-0.05, 0.02, 0.6 * rx, 0.45 * ry), "wing"),
    ]


def _waterbird_parts(rng: np.random.Generator) -> list[tuple[np.ndarray, str]]:
    """Long flat body, long neck, small head, long beak, flat tail."""
    rx, ry = rng.uniform(0.5, 0.62), rng.uniform(0.17, 0.24)
    neck = rng.uniform(0.35, 0.75)
    beak = rng.uniform(0.95, 1.1)
    return [
        (np.array([[-0.55, 0.0], [-0.85, -0.12], [-0.6, 0.12]]), "wing"),
        (_ellipse(0.0, 0.05, rx, ry), "body"),
        (np.array([[0.38, 0.0], [0.5, -neck], [0.6, -neck + 0.03], [0.52, 0.05]]), "body"),
        (_ellipse(0.58, -neck - 0.03, 0.12, 0.1), "body"),
        (np.array([[0.66, -neck - 0.07], [beak, -neck + 0.01], [0.66, -neck + 0.03]]), "beak"),
        (_ellipse(-0.1, 0.02, 0.6 * rx, 0.5 * ry), "wing"),
    ]


def _bird_colours(rng: np.random.Generator, behind: np.ndarray,
                  camouflage: tuple[float, float]) -> dict[str, tuple[int, int, int]]:
    """Random body/wing/beak colours, pulled towards ``behind`` (RGB 0..1) by a random camouflage."""
    camo = rng.uniform(*camouflage)
    body = (1 - camo) * rng.uniform(0.05, 0.95, size=3) + camo * behind
    wing = np.clip(body * rng.uniform(0.5, 0.8), 0, 1)
    beak = rng.choice([[0.95, 0.6, 0.1], [0.1, 0.1, 0.1], [0.9, 0.85, 0.2]]) * rng.uniform(0.8, 1.0)
    return {k: tuple(int(c * 255) for c in v) for k, v in (("body", body), ("wing", wing), ("beak", beak))}


def _draw_bird(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cls: int, tile: np.ndarray,
               horizon: float, top: int, look: _Look) -> None:
    """Draw one bird of class ``cls`` with random shape, colour, scale, rotation, mirror and position.

    ``tile`` is the image's background (S x S x 3 uint8), ``top`` its first row on the canvas.
    """
    size = tile.shape[0]
    parts = _landbird_parts(rng) if cls == 0 else _waterbird_parts(rng)
    scale = rng.uniform(*look.bird_scale) * size
    angle = rng.uniform(-0.5, 0.5)
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    cx = rng.uniform(0.3, 0.7) * size
    cy = rng.uniform(max(horizon, 0.4 * size), 0.72 * size)
    behind = tile[int(cy), int(cx)].astype(np.float64) / 255
    colours = _bird_colours(rng, behind, look.camouflage)
    for points, role in parts:
        p = (points * [mirror, 1.0]) @ rot.T * scale + [cx, cy + top]
        draw.polygon([tuple(q) for q in p], fill=colours[role])


def _trees(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, horizon: float,
           top: int) -> None:
    """A few trees standing on the horizon (land backgrounds only)."""
    horizon += top
    for _ in range(rng.integers(0, 4)):
        x = rng.uniform(0, size)
        h = rng.uniform(0.12, 0.3) * size
        trunk = tuple(int(c) for c in rng.uniform([60, 40, 20], [100, 70, 40]))
        crown = tuple(int(c) for c in rng.uniform([20, 60, 15], [60, 120, 45]))
        draw.rectangle([x - 1, horizon - h * 0.5, x + 1, horizon + 2], fill=trunk)
        r = h * 0.35
        draw.ellipse([x - r, horizon - h - r * 0.3, x + r, horizon - h + 1.4 * r], fill=crown)


def render_birds(
    rng: np.random.Generator,
    classes: np.ndarray,
    backgrounds: np.ndarray,
    *,
    image_size: int = 64,
    bird_scale: tuple[float, float] = BIRD_SCALE,
    camouflage: tuple[float, float] = CAMOUFLAGE,
) -> np.ndarray:
    """Render one image per (class, background) pair.

    Args:
        rng: source of all randomness.
        classes: int array (N,), 0 = landbird, 1 = waterbird.
        backgrounds: int array (N,), 0 = land, 1 = water.
        image_size: side in pixels (>= 16).
        bird_scale: (min, max) body length as a share of the image side.
        camouflage: (min, max) share by which bird colours are pulled towards the background, in [0, 1].

    Returns:
        uint8 array N x S x S x 3.
    """
    classes, backgrounds = np.asarray(classes), np.asarray(backgrounds)
    if classes.shape != backgrounds.shape or classes.ndim != 1:
        raise ValueError("classes and backgrounds must be 1-d arrays of the same length")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    look = _Look.checked(bird_scale, camouflage)
    out = np.empty((len(classes), image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, len(classes), _CHUNK):
        part = slice(start, start + _CHUNK)
        out[part] = _render_chunk(rng, classes[part], backgrounds[part], image_size, look)
    return out


_CHUNK = 128


def _render_chunk(rng: np.random.Generator, classes: np.ndarray, backgrounds: np.ndarray,
                  size: int, look: _Look) -> np.ndarray:
    """Render a chunk on one tall PIL canvas (tiles separated by margins, so nothing bleeds over)."""
    n = len(classes)
    bg, horizon = _backgrounds(rng, backgrounds, size)
    pitch = size + size // 2
    canvas = np.zeros((n, pitch, size, 3), dtype=np.uint8)
    canvas[:, size // 4:size // 4 + size] = np.clip(bg * 255, 0, 255).astype(np.uint8)
    img = Image.fromarray(canvas.reshape(n * pitch, size, 3))
    draw = ImageDraw.Draw(img)
    for i, (cls, b) in enumerate(zip(classes, backgrounds)):
        top = i * pitch + size // 4
        if b == 0:
            _trees(draw, rng, size, float(horizon[i]), top)
        tile = canvas[i, size // 4:size // 4 + size]
        _draw_bird(draw, rng, int(cls), tile, float(horizon[i]), top, look)
    tiles = np.asarray(img).reshape(n, pitch, size, 3)[:, size // 4:size // 4 + size]
    return _jitter(rng, tiles)


def _jitter(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Per-image brightness/contrast/colour jitter and per-pixel Gaussian noise."""
    n = len(images)
    x = images.astype(np.float32) * np.float32(1 / 255)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    contrast = rng.uniform(0.75, 1.25, size=(n, 1, 1, 1)).astype(np.float32)
    gain = rng.uniform(0.85, 1.15, size=(n, 1, 1, 3)).astype(np.float32)
    shift = rng.uniform(-0.08, 0.08, size=(n, 1, 1, 1)).astype(np.float32)
    # ((x - mean) * contrast + mean) * gain + shift, as x * a + b
    a = contrast * gain * 255
    b = (mean * (1 - contrast) * gain + shift) * 255
    x *= a
    x += b
    x += rng.standard_normal(size=x.shape, dtype=np.float32) * np.float32(0.04 * 255)
    np.clip(x, 0, 255, out=x)
    return np.rint(x).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def _split_groups(rng: np.random.Generator, sizes: DemoSizes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(classes, backgrounds) arrays per split with the planted group proportions, shuffled."""
    def counts_train(n: int) -> list[int]:
        per_class = [n // 2, n - n // 2]
        minority = [round(c * sizes.train_minority_frac) for c in per_class]
        return [per_class[0] - minority[0], minority[0], minority[1], per_class[1] - minority[1]]

    def counts_balanced(n: int, groups: int) -> list[int]:
        return [n // groups + (i < n % groups) for i in range(groups)]

    def counts_pool(n: int) -> list[int]:
        minority = counts_balanced(round(n * sizes.pool_minority_frac), 2)
        majority = counts_balanced(n - sum(minority), 2)
        return [majority[0], minority[0], minority[1], majority[1]]

    plan = {
        "train": counts_train(sizes.train),
        "test": counts_balanced(sizes.test, 4),
        "error_sample": [0, *counts_balanced(sizes.error_sample, 2), 0],
        "error_heldout": [0, *counts_balanced(sizes.error_heldout, 2), 0],
        "pool": counts_pool(sizes.pool),
    }
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1)]  # GROUPS order: (class, background)
    out = {}
    for split, counts in plan.items():
        cls = np.concatenate([np.full(c, pairs[g][0]) for g, c in enumerate(counts)]).astype(int)
        bgs = np.concatenate([np.full(c, pairs[g][1]) for g, c in enumerate(counts)]).astype(int)
        order = rng.permutation(len(cls))
        out[split] = (cls[order], bgs[order])
    return out


def _given_labels(rng: np.random.Generator, split: str, cls: np.ndarray, bgs: np.ndarray,
                  sizes: DemoSizes) -> np.ndarray:
    """The label each row carries: planted mislabels in train, 30% flips in the pool, else the truth."""
    labels = cls.copy()
    if split == "train":
        cls_m, bg_m = (CLASSES.index(MISLABELED_GROUP.split("_on_")[0]),
                       BACKGROUNDS.index(MISLABELED_GROUP.split("_on_")[1]))
        candidates = np.flatnonzero((cls == cls_m) & (bgs == bg_m))
        n_bad = min(round(len(cls) * sizes.train_mislabeled_frac), len(candidates))
        labels[rng.choice(candidates, size=n_bad, replace=False)] = 1 - cls_m
    elif split == "pool":
        flips = rng.choice(len(cls), size=round(len(cls) * sizes.pool_noise), replace=False)
        labels[flips] = 1 - labels[flips]
    return labels


def generate_waterbirds_like(
    out_dir: Path,
    *,
    size: Literal["small", "full"] = "full",
    seed: int = 0,
    image_size: int = 64,
    bird_scale: tuple[float, float] = BIRD_SCALE,
    camouflage: tuple[float, float] = CAMOUFLAGE,
) -> Path:
    """Generate the benchmark under ``out_dir`` and return the path of its ``manifest.csv``.

    Args:
        out_dir: output folder (created); images go to ``images/<split>/<number>.png``.
        size: ``"full"`` (train 2000, test 800, error_sample 50, error_heldout 500, pool 8000) or
            ``"small"`` (600, 400, 40, 200, 2000).
        seed: everything (images and labels) is deterministic given it.
        image_size: side of the square images in pixels (>= 16).
        bird_scale: (min, max) bird body length as a share of the image side; smaller birds make the
            foreground harder to learn, so the background shortcut wins (see :data:`BIRD_SCALE`).
        camouflage: (min, max) share by which bird colours are pulled towards the background behind them,
            in [0, 1] (see :data:`CAMOUFLAGE`).

    Returns:
        Path of ``manifest.csv``, columns ``path,label,split,weak_label,group,true_label``; paths are
        relative to its folder, labels are class names.
    """
    if size not in DEMO_SIZES:
        raise ValueError(f"size must be one of {sorted(DEMO_SIZES)}, got {size!r}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    _Look.checked(bird_scale, camouflage)
    sizes = DEMO_SIZES[size]
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    records: list[dict[str, str]] = []
    for split, (cls, bgs) in _split_groups(rng, sizes).items():
        labels = _given_labels(rng, split, cls, bgs, sizes)
        images = render_birds(rng, cls, bgs, image_size=image_size, bird_scale=bird_scale,
                              camouflage=camouflage)
        folder = out_dir / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for i, (img, c, b, lab) in enumerate(zip(images, cls, bgs, labels)):
            rel = f"images/{split}/{i:06d}.png"
            Image.fromarray(img).save(out_dir / rel, format="PNG")
            records.append({
                "path": rel,
                "label": "" if split == "pool" else CLASSES[lab],
                "split": split,
                "weak_label": CLASSES[lab] if split == "pool" else "",
                "group": _group_name(c, b),
                "true_label": CLASSES[c],
            })
    manifest = out_dir / "manifest.csv"
    pd.DataFrame(records, columns=list(MANIFEST_COLUMNS)).to_csv(manifest, index=False)
    return manifest
