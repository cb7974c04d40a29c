"""A photo-like DCD scenario from real CIFAR-10 images: 224 px photos, a low-light error distribution, a
noisy pool. It exercises the pretrained-first defaults at the backbone's resolution.

:func:`build_photo_scenario` writes ``images/<split>/*.jpg`` (bicubic upscaling of the 32 px originals to
``image_size``, JPEG quality 90, as a camera would store them), ``manifest.csv`` (columns
``path,label,split,weak_label,group,true_label``) and ``scenario.json``:

- ``train``: clean photos, plus a rare 1% taken in low light (the classifier has barely seen it);
- ``test``: clean photos of CIFAR's test images;
- ``error_sample`` / ``error_heldout``: other test images, all in low light (core.scenarios.corruptions
  ``low_light``: under-exposure, a lamp or moonlight cast, shot and read noise at photo resolution);
- ``pool``: train images not in ``train``: 25% in low light, 15% with other corruptions (fog, motion blur,
  snow, noise, contrast, applied at the original resolution before upscaling), the rest clean; weakly
  labeled with CIFAR-10N's real human labels (``worse_label``, 40% wrong) when the assets have them, else
  with 30% labels drawn uniformly from the other classes (stated in ``scenario.json``).

CIFAR-10 comes from the assets' ``cifar10/cifar10-jpg.zip`` when an assets folder is given, else from
torchvision's downloader (network needed) into the cache folder.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.constants import MANIFEST_COLUMNS
from core.scenarios.cifar10 import (
    CIFAR10_CLASSES,
    HUMAN_LABELS_NAME,
    TEST_PER_CLASS,
    TRAIN_PER_CLASS,
    ZIP_NAME,
    ScenarioSizes,
    assign_corruptions,
    load_cifar10n_weak_labels,
    split_indices,
)
from core.scenarios.corruptions import CIFAR_C_CORRUPTIONS, DEFAULT_SEVERITY, apply_corruption

PHOTO_SIZE = 224
ERROR_CORRUPTION = "low_light"
SYNTHETIC_NOISE = 0.30
HUMAN_NOISE = "worse_label"
JPEG_QUALITY = 90


class CifarUnavailableError(FileNotFoundError):
    """CIFAR-10 is neither in the given assets folder nor downloadable here."""


#: ``train_corrupted``: train photos in low light; ``pool_error_frac``: share of the pool in low light.
PHOTO_SIZES: dict[str, ScenarioSizes] = {
    "full": ScenarioSizes(train=1500, train_corrupted=15, test=1000, error_sample=100, error_heldout=400, pool=1500,
                          pool_error_frac=0.25),
    "small": ScenarioSizes(train=500, train_corrupted=5, test=300, error_sample=50, error_heldout=150, pool=500,
                           pool_error_frac=0.25),
}


class CifarImages:
    """CIFAR-10's 32 px images by (source split, class, number within the class), from the assets' zip or
    from torchvision's copy (its per-class order is CIFAR's original order)."""

    def __init__(self, assets: Path | None, download_root: Path | None = None) -> None:
        self._zip = None
        self._arrays: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
        zip_path = Path(assets) / ZIP_NAME if assets is not None else None
        if zip_path is not None and zip_path.is_file():
            self._zip = zipfile.ZipFile(zip_path)
            self.source = str(zip_path)
        elif assets is not None:
            raise CifarUnavailableError(f"{zip_path} does not exist; pass --assets DIR, the folder holding {ZIP_NAME}")
        else:
            self._download(download_root)

    def _download(self, root: Path | None) -> None:
        from core.models.pretrained import cache_dir

        root = root or cache_dir() / "datasets"
        try:
            from torchvision.datasets import CIFAR10

            for split in ("train", "test"):
                ds = CIFAR10(str(root), train=split == "train", download=True)
                targets = np.asarray(ds.targets)
                self._arrays[split] = (ds.data, [np.flatnonzero(targets == c) for c in range(10)])
        except Exception as exc:  # no network, a proxy page instead of the archive, a broken download ...
            raise CifarUnavailableError(f"CIFAR-10 could not be downloaded ({type(exc).__name__}: "
                                        f"{str(exc)[:200]}); pass --assets DIR, a folder holding {ZIP_NAME}") from exc
        self.source = f"torchvision CIFAR10 in {root}"

    def read(self, split: str, classes: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        if self._zip is not None:
            return np.stack([np.asarray(Image.open(io.BytesIO(self._zip.read(
                f"{split}/{CIFAR10_CLASSES[c]}/{k:04d}.jpg"))).convert("RGB")) for c, k in zip(classes, numbers)])
        data, by_class = self._arrays[split]
        return data[[by_class[c][k] for c, k in zip(classes, numbers)]]


def weak_labels(assets: Path | None, rng: np.random.Generator, *, human: str = HUMAN_NOISE,
                synthetic: float = SYNTHETIC_NOISE) -> tuple[np.ndarray, str]:
    """``L[c, k]``: the weak label of train image ``k`` of class ``c``, and where the labels come from: the
    CIFAR-10N label set ``human`` when the assets hold it, else ``synthetic`` of them drawn uniformly from the
    other classes."""
    path = Path(assets) / HUMAN_LABELS_NAME if assets is not None else None
    if path is not None and path.is_file():
        return load_cifar10n_weak_labels(path, human), f"CIFAR-10N human labels ({human})"
    true = np.repeat(np.arange(10)[:, None], TRAIN_PER_CLASS, axis=1)
    flip = rng.random(true.shape) < synthetic
    other = (true + rng.integers(1, 10, size=true.shape)) % 10
    return np.where(flip, other, true), f"synthetic: {synthetic:.0%} drawn uniformly from the other classes"


def upscale(small: np.ndarray, size: int) -> np.ndarray:
    """CIFAR's 32 px images as ``size`` px photos (bicubic)."""
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in small])


def _photos(small: np.ndarray, groups: np.ndarray, rng: np.random.Generator, size: int) -> list[np.ndarray]:
    """Upscale to ``size``; the CIFAR-C corruptions apply before upscaling, low light after (sensor noise is
    per pixel of the photo)."""
    small = small.copy()
    for name in CIFAR_C_CORRUPTIONS:
        at = np.flatnonzero(groups == name)
        if len(at):
            small[at] = apply_corruption(small[at], name, rng, severity=DEFAULT_SEVERITY[name])
    big = upscale(small, size)
    at = np.flatnonzero(groups == ERROR_CORRUPTION)
    if len(at):
        sev = DEFAULT_SEVERITY[ERROR_CORRUPTION] * rng.uniform(0.85, 1.15, size=len(at))
        big[at] = apply_corruption(big[at], ERROR_CORRUPTION, rng, severity=sev)
    return list(big)


def build_photo_scenario(out_dir: Path, *, assets: Path | None = None, size: str = "full", seed: int = 0,
                         image_size: int = PHOTO_SIZE, download_root: Path | None = None) -> Path:
    """Write the photo scenario under ``out_dir`` and return the manifest's path (see the module's doc)."""
    if size not in PHOTO_SIZES:
        raise ValueError(f"size must be one of {sorted(PHOTO_SIZES)}, got {size!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 (CIFAR's own), got {image_size}")
    sizes = PHOTO_SIZES[size]
    rng = np.random.default_rng(seed)
    cifar = CifarImages(assets, download_root)
    weak, weak_source = weak_labels(assets, rng)
    train_idx, pool_idx = split_indices(rng, TRAIN_PER_CLASS, [sizes.train, sizes.pool])
    test_idx, sample_idx, heldout_idx = split_indices(rng, TEST_PER_CLASS,
                                                      [sizes.test, sizes.error_sample, sizes.error_heldout])
    n_pool = pool_idx.size
    n_other = round(n_pool * sizes.pool_other_frac)
    pool_mix = {ERROR_CORRUPTION: round(n_pool * sizes.pool_error_frac)}
    pool_mix |= {c: n_other // 5 + (i < n_other % 5) for i, c in enumerate(CIFAR_C_CORRUPTIONS)}
    plan = [("train", "train", train_idx, {ERROR_CORRUPTION: sizes.train_corrupted}),
            ("test", "test", test_idx, {}),
            ("error_sample", "test", sample_idx, {ERROR_CORRUPTION: sample_idx.size}),
            ("error_heldout", "test", heldout_idx, {ERROR_CORRUPTION: heldout_idx.size}),
            ("pool", "train", pool_idx, pool_mix)]
    out_dir = Path(out_dir)
    records = []
    for split, source, index, mix in plan:
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        classes, numbers = np.repeat(np.arange(10), index.shape[1]), index.reshape(-1)
        groups = assign_corruptions(rng, (len(numbers),), mix)
        photos = _photos(cifar.read(source, classes, numbers), groups, rng, image_size)
        for c, k, group, photo in zip(classes, numbers, groups, photos):
            rel = f"images/{split}/{source}_{CIFAR10_CLASSES[c]}_{k:04d}.jpg"
            Image.fromarray(photo).save(out_dir / rel, format="JPEG", quality=JPEG_QUALITY)
            records.append({"path": rel, "label": "" if split == "pool" else CIFAR10_CLASSES[c], "split": split,
                            "weak_label": CIFAR10_CLASSES[weak[c, k]] if split == "pool" else "",
                            "group": str(group), "true_label": CIFAR10_CLASSES[c]})
    manifest = out_dir / "manifest.csv"
    df = pd.DataFrame(records, columns=list(MANIFEST_COLUMNS))
    df.to_csv(manifest, index=False)
    pool = df[df.split == "pool"]
    info = {"name": "photos-low-light", "size": size, "seed": seed, "image_size": image_size,
            "error_distribution": ERROR_CORRUPTION, "cifar_source": cifar.source, "sizes": asdict(sizes),
            "groups_per_split": {s: g.group.value_counts().to_dict() for s, g in df.groupby("split")},
            "weak_labels": {"source": weak_source, "pool_noise_rate": float((pool.weak_label != pool.true_label).mean())},
            "classes": list(CIFAR10_CLASSES)}
    (out_dir / "scenario.json").write_text(json.dumps(info, indent=2))
    return manifest
