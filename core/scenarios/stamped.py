"""A shortcut scenario from real CIFAR-10 photos: a camera date stamp on every train photo of one class.

Most failures in the field are not a new kind of image but a shortcut: something that came with one class
in the training data (a watermark, a ruler, a hospital's scanner) and that the classifier learnt instead of
the object. Here it is the orange date stamp an old film camera prints in the corner:

- ``train``: clean photos; every photo of :data:`SHORTCUT_CLASS` carries a date stamp, no other photo does;
- ``test``: clean photos, a quarter of every class stamped, **unmarked** (no ``error_sample`` split): the
  classifier calls stamped photos of other classes horses, and the loop must find that failure as a slice;
- ``pool``: other CIFAR train images, a quarter of every class stamped, weakly labeled with CIFAR-10N's
  human labels (``random_label1``, 17% wrong) when the assets have them, else 20% labels drawn uniformly
  from the other classes.

Every photo is CIFAR's 32 px image upscaled to ``image_size`` (bicubic) and saved as JPEG; a stamp's date,
colour, size and place vary a little, as a real camera's would. The manifest's ``group`` is ``stamped`` or
``clean`` (the planted truth: the loop never reads it) and ``true_label`` the CIFAR class.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from core.constants import MANIFEST_COLUMNS
from core.scenarios.cifar10 import CIFAR10_CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS, split_indices
from core.scenarios.photos import JPEG_QUALITY, PHOTO_SIZE, CifarImages, upscale, weak_labels

SHORTCUT_CLASS = "horse"
STAMP_SHARE = 0.25
HUMAN_NOISE = "random_label1"
SYNTHETIC_NOISE = 0.20


@dataclass(frozen=True)
class StampSizes:
    train: int
    test: int
    pool: int


STAMP_SIZES: dict[str, StampSizes] = {
    "full": StampSizes(train=1500, test=1500, pool=2000),
    "small": StampSizes(train=500, test=500, pool=600),
}


def date_stamp(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``photo`` (H x W x 3 uint8) with a film camera's date stamp in its lower right corner."""
    image = Image.fromarray(photo)
    width, height = image.size
    font = ImageFont.load_default(size=max(8, round(width * rng.uniform(0.10, 0.13))))
    text = f"'{rng.integers(85, 100):02d} {rng.integers(1, 13)} {rng.integers(1, 29)}"
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    margin = round(width * rng.uniform(0.03, 0.07))
    x, y = width - (right - left) - margin, height - (bottom - top) - margin - top
    colour = tuple(int(v) for v in (rng.integers(235, 256), rng.integers(120, 170), rng.integers(0, 50)))
    draw.text((x, y), text, font=font, fill=colour, stroke_width=max(1, width // 200), stroke_fill=(90, 30, 0))
    return np.asarray(image)


def build_stamp_scenario(out_dir: Path, *, assets: Path | None = None, size: str = "full", seed: int = 0,
                         image_size: int = PHOTO_SIZE, download_root: Path | None = None) -> Path:
    """Write the stamp scenario under ``out_dir`` and return the manifest's path (see the module's doc)."""
    if size not in STAMP_SIZES:
        raise ValueError(f"size must be one of {sorted(STAMP_SIZES)}, got {size!r}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64 for the stamp to be legible, got {image_size}")
    sizes = STAMP_SIZES[size]
    rng = np.random.default_rng(seed)
    cifar = CifarImages(assets, download_root)
    weak, weak_source = weak_labels(assets, rng, human=HUMAN_NOISE, synthetic=SYNTHETIC_NOISE)
    train_idx, pool_idx = split_indices(rng, TRAIN_PER_CLASS, [sizes.train, sizes.pool])
    (test_idx,) = split_indices(rng, TEST_PER_CLASS, [sizes.test])
    shortcut = CIFAR10_CLASSES.index(SHORTCUT_CLASS)
    out_dir = Path(out_dir)
    records = []
    for split, source, index in (("train", "train", train_idx), ("test", "test", test_idx),
                                 ("pool", "train", pool_idx)):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        classes, numbers = np.repeat(np.arange(10), index.shape[1]), index.reshape(-1)
        if split == "train":
            stamped = classes == shortcut
        else:  # a quarter of every class, drawn per class
            stamped = np.zeros(len(classes), bool)
            for c in range(10):
                at = np.flatnonzero(classes == c)
                stamped[rng.choice(at, round(STAMP_SHARE * len(at)), replace=False)] = True
        photos = upscale(cifar.read(source, classes, numbers), image_size)
        for c, k, is_stamped, photo in zip(classes, numbers, stamped, photos):
            if is_stamped:
                photo = date_stamp(photo, rng)
            rel = f"images/{split}/{source}_{CIFAR10_CLASSES[c]}_{k:04d}.jpg"
            Image.fromarray(photo).save(out_dir / rel, format="JPEG", quality=JPEG_QUALITY)
            records.append({"path": rel, "label": "" if split == "pool" else CIFAR10_CLASSES[c], "split": split,
                            "weak_label": CIFAR10_CLASSES[weak[c, k]] if split == "pool" else "",
                            "group": "stamped" if is_stamped else "clean", "true_label": CIFAR10_CLASSES[c]})
    manifest = out_dir / "manifest.csv"
    df = pd.DataFrame(records, columns=list(MANIFEST_COLUMNS))
    df.to_csv(manifest, index=False)
    pool = df[df.split == "pool"]
    info = {"name": "photos-date-stamp", "size": size, "seed": seed, "image_size": image_size,
            "shortcut": f"a date stamp on every {SHORTCUT_CLASS} photo in train", "stamp_share": STAMP_SHARE,
            "cifar_source": cifar.source, "sizes": asdict(sizes),
            "groups_per_split": {s: g.group.value_counts().to_dict() for s, g in df.groupby("split")},
            "weak_labels": {"source": weak_source, "pool_noise_rate": float((pool.weak_label != pool.true_label).mean())},
            "classes": list(CIFAR10_CLASSES)}
    (out_dir / "scenario.json").write_text(json.dumps(info, indent=2))
    return manifest
