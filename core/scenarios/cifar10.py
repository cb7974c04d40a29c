"""A real-data DCD scenario on CIFAR-10: a corruption the classifier rarely saw, and a noisy pool.

:func:`build_cifar10_scenario` reads CIFAR-10 straight from ``assets/cifar10/cifar10-jpg.zip`` and writes
a manifest (columns ``path,label,split,weak_label,group,true_label``) plus a ``scenario.json``:

- ``train``: clean CIFAR train images with their true labels, plus a rare few (0.6%) corrupted with the
  error corruption, so the classifier has barely seen it;
- ``test``: clean CIFAR test images;
- ``error_sample`` / ``error_heldout``: other CIFAR test images with the error corruption (e.g. fog);
- ``pool``: CIFAR train images not used for ``train``: mostly clean, 10% with the error corruption and
  15% with *other* corruptions (so retrieval must find the right kind), weakly labeled with CIFAR-10N's
  real human labels (per image; see :data:`CIFAR10N_MAPPING_NOTE`).

The corruptions are core.scenarios.corruptions. Clean images keep their JPEG bytes; corrupted images are
saved as PNG.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image

from core.constants import MANIFEST_COLUMNS
from core.scenarios.corruptions import CIFAR_C_CORRUPTIONS, CORRUPTIONS, DEFAULT_SEVERITY, apply_corruption

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10N_MAPPING_NOTE",
    "CORRUPTIONS",
    "NOISE_KEYS",
    "ScenarioSizes",
    "SCENARIO_SIZES",
    "apply_corruption",
    "build_cifar10_scenario",
    "load_cifar10n_weak_labels",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
NOISE_KEYS: tuple[str, ...] = (
    "random_label1", "random_label2", "random_label3", "aggre_label", "worse_label",
)

ZIP_NAME = "cifar10/cifar10-jpg.zip"
HUMAN_LABELS_NAME = "cifar10/CIFAR-10_human.pt"
TRAIN_PER_CLASS = 5000
TEST_PER_CLASS = 1000

CIFAR10N_MAPPING_NOTE = (
    "CIFAR-10N labels are mapped per image: the k-th train image of class c in the original CIFAR order "
    "(clean_label == c) is train/c/{k:04d}.jpg. Checked with the shipped resnet20 on all 50,000 JPEGs: "
    "under this mapping, images the human aggregate label gets wrong are harder (77.3% vs 86.9% accuracy) "
    "and the model agrees with the wrong human label 2.6x as often as under a shifted mapping (7.0% vs "
    "2.7%); mappings shifted by 1 or 7 positions show no difference (86% vs 86%)."
)



# --------------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioSizes:
    """How many images each split gets.

    ``train_corrupted`` of the ``train`` images carry the error corruption; in the pool,
    ``pool_error_frac`` carry the error corruption and ``pool_other_frac`` the other corruptions.
    """

    train: int
    train_corrupted: int
    test: int
    error_sample: int
    error_heldout: int
    pool: int
    pool_error_frac: float = 0.10
    pool_other_frac: float = 0.15


SCENARIO_SIZES: dict[str, ScenarioSizes] = {
    "full": ScenarioSizes(train=5000, train_corrupted=30, test=2000, error_sample=100,
                          error_heldout=1000, pool=20000),
    "small": ScenarioSizes(train=2000, train_corrupted=12, test=1000, error_sample=50,
                           error_heldout=300, pool=5000),
}

SEVERITY_JITTER = 0.15


@dataclass
class _Rows:
    """Manifest rows for one split, plus what to write: JPEG bytes, or pixels to save as PNG."""

    records: list[dict[str, str]]
    jpeg: dict[str, bytes]
    png: dict[str, np.ndarray]


def load_cifar10n_weak_labels(human_labels: Path, noise: str = "random_label1") -> np.ndarray:
    """CIFAR-10N human labels in JPEG order: array ``L`` with ``L[c, k]`` = label of ``train/c/{k:04d}.jpg``.

    Uses the mapping described in :data:`CIFAR10N_MAPPING_NOTE` (the k-th image of class ``c`` in the
    original train order, by ``clean_label``).

    Args:
        human_labels: path of ``CIFAR-10_human.pt``.
        noise: which human label set: one of :data:`NOISE_KEYS` (``random_label1`` ~17% wrong,
            ``aggre_label`` ~9%, ``worse_label`` ~40%).

    Returns:
        int64 array of shape 10 x 5000.
    """
    if noise not in NOISE_KEYS:
        raise ValueError(f"unknown noise {noise!r}; choose one of {list(NOISE_KEYS)}")
    labels = _torch_load_numpy_dict(human_labels)
    missing = {"clean_label", noise} - set(labels)
    if missing:
        raise ValueError(f"{human_labels} lacks {sorted(missing)}; is it CIFAR-10N's CIFAR-10_human.pt?")
    clean = np.asarray(labels["clean_label"])
    chosen = np.asarray(labels[noise])
    counts = np.bincount(clean, minlength=10)
    if clean.shape != (50000,) or not np.all(counts == TRAIN_PER_CLASS):
        raise ValueError(f"{human_labels}: expected 5000 clean labels per class, got {counts.tolist()}")
    order = np.stack([np.flatnonzero(clean == c) for c in range(10)])
    return chosen[order]


def _torch_load_numpy_dict(path: Path) -> dict[str, np.ndarray]:
    """``torch.load`` a dict of numpy arrays with ``weights_only=True`` (numpy globals allow-listed)."""
    import torch

    core = getattr(np, "_core", None) or np.core
    safe = [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            np.ndarray, (np.dtype, "numpy.dtype")]
    safe += [type(np.dtype(t)) for t in ("int64", "int32", "uint8", "float32", "float64", "bool")]
    with torch.serialization.safe_globals(safe):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dict of label arrays")
    return {k: np.asarray(v) for k, v in obj.items()}


def split_indices(
    rng: np.random.Generator, per_class: int, counts: list[int]
) -> list[np.ndarray]:
    """Draw disjoint per-class index sets: for each count, a (10 x count/10) array of image numbers."""
    if sum(counts) > 10 * per_class:
        raise ValueError(f"the splits need {sum(counts)} images but only {10 * per_class} exist")
    perms = np.stack([rng.permutation(per_class) for _ in range(10)])
    out, start = [], 0
    for n in counts:
        k = n // 10
        out.append(perms[:, start:start + k])
        start += k
    return out


def _decode(zf: zipfile.ZipFile, members: list[str]) -> np.ndarray:
    """Decode JPEG members of the zip into a uint8 N x 32 x 32 x 3 array."""
    return np.stack([np.asarray(Image.open(io.BytesIO(zf.read(m))).convert("RGB")) for m in members])


def _make_rows(
    zf: zipfile.ZipFile,
    rng: np.random.Generator,
    *,
    split: str,
    source: str,
    index: np.ndarray,
    corruption_of: np.ndarray,
    severity: dict[str, float],
    weak: np.ndarray | None,
) -> _Rows:
    """Rows for ``index`` (10 x k image numbers of ``source``); ``corruption_of`` is 'clean' or a name."""
    classes = np.repeat(np.arange(10), index.shape[1])
    numbers = index.reshape(-1)
    groups = corruption_of.reshape(-1)
    members = [f"{source}/{CIFAR10_CLASSES[c]}/{k:04d}.jpg" for c, k in zip(classes, numbers)]
    rows = _Rows(records=[], jpeg={}, png={})
    pixels: dict[int, np.ndarray] = {}
    for name in sorted(set(groups) - {"clean"}):
        at = np.flatnonzero(groups == name)
        sev = severity[name] * rng.uniform(1 - SEVERITY_JITTER, 1 + SEVERITY_JITTER, size=len(at))
        corrupted = apply_corruption(_decode(zf, [members[i] for i in at]), name, rng, severity=sev)
        pixels.update(zip(at.tolist(), corrupted))
    for i, (c, k, group) in enumerate(zip(classes, numbers, groups)):
        ext = "jpg" if group == "clean" else "png"
        path = f"images/{split}/{source}_{CIFAR10_CLASSES[c]}_{k:04d}.{ext}"
        if group == "clean":
            rows.jpeg[path] = zf.read(members[i])
        else:
            rows.png[path] = pixels[i]
        true = CIFAR10_CLASSES[c]
        rows.records.append({
            "path": path,
            "label": "" if split == "pool" else true,
            "split": split,
            "weak_label": CIFAR10_CLASSES[weak[c, k]] if weak is not None else "",
            "group": str(group),
            "true_label": true,
        })
    return rows


def assign_corruptions(
    rng: np.random.Generator, shape: tuple[int, ...], mix: dict[str, int]
) -> np.ndarray:
    """Array of ``shape`` filled with 'clean' except ``mix[name]`` random cells per corruption name."""
    n = int(np.prod(shape))
    if sum(mix.values()) > n:
        raise ValueError(f"cannot corrupt {sum(mix.values())} of {n} images")
    out = np.full(n, "clean", dtype=object)
    cells = rng.permutation(n)
    start = 0
    for name, count in mix.items():
        out[cells[start:start + count]] = name
        start += count
    return out.reshape(shape)


def _write(out_dir: Path, rows: list[_Rows]) -> Path:
    """Write every image and ``manifest.csv``; return the manifest path."""
    for split in ("train", "test", "error_sample", "error_heldout", "pool"):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    for r in rows:
        for rel, data in r.jpeg.items():
            (out_dir / rel).write_bytes(data)
        for rel, arr in r.png.items():
            Image.fromarray(arr).save(out_dir / rel, format="PNG")
    manifest = out_dir / "manifest.csv"
    records = [rec for r in rows for rec in r.records]
    pd.DataFrame(records, columns=list(MANIFEST_COLUMNS)).to_csv(manifest, index=False)
    return manifest


def build_cifar10_scenario(
    out_dir: Path,
    *,
    assets: Path,
    size: Literal["small", "full"] = "full",
    seed: int = 0,
    corruption: str = "fog",
    noise: str = "random_label1",
    severity: float | None = None,
) -> Path:
    """Build the CIFAR-10 DCD scenario under ``out_dir`` and return the manifest path.

    Args:
        out_dir: output folder (created); gets ``images/<split>/...``, ``manifest.csv``, ``scenario.json``.
        assets: the shared assets folder (holding ``cifar10/cifar10-jpg.zip`` and
            ``cifar10/CIFAR-10_human.pt``).
        size: ``"full"`` (train 5000, test 2000, error_sample 100, error_heldout 1000, pool 20000) or
            ``"small"`` (2000, 1000, 50, 300, 5000).
        seed: everything is deterministic given it.
        corruption: the error distribution, one of :data:`CORRUPTIONS` (``fog``, ``motion_blur``,
            ``snow``, ``gaussian_noise``, ``contrast``); the pool also holds the others.
        noise: CIFAR-10N label set for the pool's weak labels (see :func:`load_cifar10n_weak_labels`).
        severity: strength of the error corruption; default :data:`DEFAULT_SEVERITY`.

    Returns:
        Path of ``manifest.csv`` (columns ``path,label,split,weak_label,group,true_label``).
    """
    if size not in SCENARIO_SIZES:
        raise ValueError(f"size must be one of {sorted(SCENARIO_SIZES)}, got {size!r}")
    if corruption not in CIFAR_C_CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; choose one of {sorted(CIFAR_C_CORRUPTIONS)}")
    zip_path, human_path = Path(assets) / ZIP_NAME, Path(assets) / HUMAN_LABELS_NAME
    for p in (zip_path, human_path):
        if not p.is_file():
            raise ValueError(f"missing asset {p}; pass assets= the shared assets folder")
    sizes = SCENARIO_SIZES[size]
    sev = dict(DEFAULT_SEVERITY)
    if severity is not None:
        sev[corruption] = float(severity)
    weak = load_cifar10n_weak_labels(human_path, noise)
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    with zipfile.ZipFile(zip_path) as zf:
        rows, counts = _scenario_rows(zf, rng, sizes, corruption, sev, weak)
    manifest = _write(out_dir, rows)
    _write_scenario_json(out_dir, size=size, seed=seed, corruption=corruption, noise=noise,
                         severity=sev, sizes=sizes, counts=counts, manifest=manifest)
    return manifest


def _scenario_rows(
    zf: zipfile.ZipFile,
    rng: np.random.Generator,
    sizes: ScenarioSizes,
    corruption: str,
    severity: dict[str, float],
    weak: np.ndarray,
) -> tuple[list[_Rows], dict[str, int]]:
    """Choose the images of every split and the corruption of each; build their rows."""
    train_idx, pool_idx = split_indices(rng, TRAIN_PER_CLASS, [sizes.train, sizes.pool])
    test_idx, sample_idx, heldout_idx = split_indices(
        rng, TEST_PER_CLASS, [sizes.test, sizes.error_sample, sizes.error_heldout])
    others = [c for c in CIFAR_C_CORRUPTIONS if c != corruption]
    n_pool = pool_idx.size
    n_other = round(n_pool * sizes.pool_other_frac)
    pool_mix = {corruption: round(n_pool * sizes.pool_error_frac)}
    pool_mix |= {name: n_other // len(others) + (i < n_other % len(others)) for i, name in enumerate(others)}
    plan = [
        ("train", "train", train_idx, {corruption: sizes.train_corrupted}, None),
        ("test", "test", test_idx, {}, None),
        ("error_sample", "test", sample_idx, {corruption: sample_idx.size}, None),
        ("error_heldout", "test", heldout_idx, {corruption: heldout_idx.size}, None),
        ("pool", "train", pool_idx, pool_mix, weak),
    ]
    rows = []
    for split, source, index, mix, weak_labels in plan:
        groups = assign_corruptions(rng, index.shape, mix)
        rows.append(_make_rows(zf, rng, split=split, source=source, index=index,
                               corruption_of=groups, severity=severity, weak=weak_labels))
    counts = {split: index.size for split, _, index, _, _ in plan}
    return rows, counts


def _write_scenario_json(
    out_dir: Path, *, size: str, seed: int, corruption: str, noise: str, severity: dict[str, float],
    sizes: ScenarioSizes, counts: dict[str, int], manifest: Path,
) -> None:
    """Record how the scenario was built next to the manifest."""
    df = pd.read_csv(manifest, keep_default_na=False)
    pool = df[df.split == "pool"]
    info = {
        "name": f"cifar10-{corruption}",
        "size": size,
        "seed": seed,
        "error_corruption": corruption,
        "severity": severity,
        "severity_jitter": SEVERITY_JITTER,
        "counts": counts,
        "groups_per_split": {s: g.group.value_counts().to_dict() for s, g in df.groupby("split")},
        "weak_labels": {
            "source": "CIFAR-10N per-image human labels",
            "noise": noise,
            "mapping": CIFAR10N_MAPPING_NOTE,
            "pool_noise_rate": float((pool.weak_label != pool.true_label).mean()),
        },
        "pool_error_frac": sizes.pool_error_frac,
        "pool_other_frac": sizes.pool_other_frac,
        "classes": list(CIFAR10_CLASSES),
        "image_source": "cifar10/cifar10-jpg.zip; file names are <source split>_<class>_<number>",
    }
    (out_dir / "scenario.json").write_text(json.dumps(info, indent=2))
