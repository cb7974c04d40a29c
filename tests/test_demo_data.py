"""Planted-truth tests for the Waterbirds-like synthetic benchmark (core.scenarios.waterbirds_like)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.scenarios.waterbirds_like import (
    CLASSES,
    DEMO_SIZES,
    GROUPS,
    MINORITY_GROUPS,
    generate_waterbirds_like,
    render_birds,
)

COLUMNS = ["path", "label", "split", "weak_label", "group", "true_label"]


def _read(manifest: Path) -> pd.DataFrame:
    return pd.read_csv(manifest, keep_default_na=False, dtype=str)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_waterbirds_like(tmp_path_factory.mktemp("wb") / "a", size="small", seed=3)


@pytest.fixture(scope="module")
def small_df(small: Path) -> pd.DataFrame:
    return _read(small)


def test_manifest_columns_and_split_sizes(small: Path, small_df: pd.DataFrame) -> None:
    assert small.name == "manifest.csv"
    assert list(small_df.columns) == COLUMNS
    sizes = DEMO_SIZES["small"]
    counts = small_df.split.value_counts().to_dict()
    assert counts == {"train": sizes.train, "test": sizes.test, "error_sample": sizes.error_sample,
                      "error_heldout": sizes.error_heldout, "pool": sizes.pool}
    assert set(small_df.group) == set(GROUPS)
    assert set(small_df.true_label) == set(CLASSES)
    assert small_df.path.is_unique


def test_label_columns_follow_the_contract(small_df: pd.DataFrame) -> None:
    pool = small_df[small_df.split == "pool"]
    rest = small_df[small_df.split != "pool"]
    assert (pool.label == "").all() and pool.weak_label.isin(CLASSES).all()
    assert (rest.weak_label == "").all() and rest.label.isin(CLASSES).all()
    evaluation = small_df[small_df.split.isin(["test", "error_sample", "error_heldout"])]
    assert (evaluation.label == evaluation.true_label).all()
    assert (small_df.group.str.split("_on_").str[0] == small_df.true_label).all()


def test_train_is_spuriously_correlated(small_df: pd.DataFrame) -> None:
    train = small_df[small_df.split == "train"]
    minority = train.group.isin(MINORITY_GROUPS).mean()
    assert 0.04 <= minority <= 0.06
    assert (train.true_label == "landbird").mean() == pytest.approx(0.5, abs=0.01)


def test_test_is_balanced_and_error_sets_are_minority_only(small_df: pd.DataFrame) -> None:
    test = small_df[small_df.split == "test"].group.value_counts()
    assert test.min() == test.max() == DEMO_SIZES["small"].test // 4
    for split in ("error_sample", "error_heldout"):
        groups = small_df[small_df.split == split].group.value_counts()
        assert set(groups.index) == set(MINORITY_GROUPS)
        assert abs(groups.iloc[0] - groups.iloc[-1]) <= 1


def test_mislabeled_train_rows_are_planted_in_one_group(small_df: pd.DataFrame) -> None:
    train = small_df[small_df.split == "train"]
    bad = train[train.label != train.true_label]
    assert len(bad) == round(0.03 * len(train))
    assert set(bad.group) == {"waterbird_on_water"}
    assert set(bad.label) == {"landbird"}


def test_pool_mostly_majority_with_30_percent_label_noise(small_df: pd.DataFrame) -> None:
    pool = small_df[small_df.split == "pool"]
    assert 0.10 <= pool.group.isin(MINORITY_GROUPS).mean() <= 0.15
    noise = (pool.weak_label != pool.true_label).mean()
    assert noise == pytest.approx(0.30, abs=0.05)
    # flips are uniform: each class flips at about the same rate
    per_class = pool.assign(flip=pool.weak_label != pool.true_label).groupby("true_label").flip.mean()
    assert (per_class - 0.30).abs().max() < 0.06


def test_every_path_exists_and_opens(small: Path, small_df: pd.DataFrame) -> None:
    root = small.parent
    for rel in small_df.path:
        assert (root / rel).is_file(), rel
    for rel in small_df.path.iloc[::97]:
        with Image.open(root / rel) as img:
            assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"


def test_same_seed_same_output(small: Path, small_df: pd.DataFrame, tmp_path: Path) -> None:
    again = generate_waterbirds_like(tmp_path / "b", size="small", seed=3)
    assert _read(again).equals(small_df)
    for rel in small_df.path.iloc[[0, 700, -1]]:
        assert (again.parent / rel).read_bytes() == (small.parent / rel).read_bytes()


def test_render_birds_shapes_and_determinism() -> None:
    cls = np.array([0, 1, 0, 1])
    bgs = np.array([0, 0, 1, 1])
    a = render_birds(np.random.default_rng(0), cls, bgs, image_size=32)
    b = render_birds(np.random.default_rng(0), cls, bgs, image_size=32)
    c = render_birds(np.random.default_rng(1), cls, bgs, image_size=32)
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # water backgrounds are bluer than land backgrounds
    blue_minus_green = a[..., 2].astype(float).mean((1, 2)) - a[..., 1].astype(float).mean((1, 2))
    assert blue_minus_green[2:].min() > blue_minus_green[:2].max()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"size": "huge"}, "size must be one of"), ({"image_size": 8}, "image_size must be >= 16"),
     ({"bird_scale": (0.3, 0.2)}, "bird_scale must be"), ({"camouflage": (0.0, 1.5)}, "camouflage must be")],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_waterbirds_like(tmp_path, **kwargs)


def test_render_birds_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        render_birds(np.random.default_rng(0), np.array([0, 1]), np.array([0]))
