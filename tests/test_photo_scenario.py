"""The photo scenario: real CIFAR-10 images as upscaled photos, a low-light error distribution, a noisy pool."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.scenarios import photos
from core.scenarios.corruptions import apply_corruption
from core.scenarios.demos import assets_dir


def _assets():
    assets = assets_dir()
    if assets is None or not (assets / "cifar10" / "cifar10-jpg.zip").is_file():
        pytest.skip("needs the real assets (cifar10/cifar10-jpg.zip): set DCD_ASSETS=DIR")
    return assets


def test_low_light_darkens_casts_and_adds_signal_dependent_noise() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((64, 32, 32, 3), 160, np.uint8)
    dark = apply_corruption(flat, "low_light", rng).astype(float)
    assert dark.mean() < 0.6 * 160  # under-exposed
    channel_means = dark.mean(axis=(1, 2))
    assert np.all(np.abs(channel_means[:, 0] - channel_means[:, 2]) > 5)  # a lamp or moonlight cast
    assert dark.std(axis=(1, 2)).mean() > 1.0  # sensor noise on a flat image


def test_small_scenario_has_the_planned_splits_groups_and_noise(tmp_path) -> None:
    manifest = photos.build_photo_scenario(tmp_path / "p", assets=_assets(), size="small", image_size=64)
    df = pd.read_csv(manifest, keep_default_na=False)
    sizes = photos.PHOTO_SIZES["small"]
    counts = df.split.value_counts().to_dict()
    assert counts == {"train": sizes.train, "test": sizes.test, "error_sample": sizes.error_sample,
                      "error_heldout": sizes.error_heldout, "pool": sizes.pool}
    assert set(df[df.split.isin(["error_sample", "error_heldout"])].group) == {"low_light"}
    assert set(df[df.split == "test"].group) == {"clean"}
    assert (df[df.split == "train"].group == "low_light").sum() == sizes.train_corrupted
    pool = df[df.split == "pool"]
    assert (pool.group == "low_light").sum() == round(sizes.pool * sizes.pool_error_frac)
    assert pool.label.eq("").all() and pool.weak_label.ne("").all()
    noise = (pool.weak_label != pool.true_label).mean()
    assert 0.3 < noise < 0.5  # CIFAR-10N's worse_label, about 40%
    assert (df[df.split != "pool"].label == df[df.split != "pool"].true_label).all()
    image = Image.open(tmp_path / "p" / df.path.iloc[0])
    assert image.size == (64, 64) and image.format == "JPEG"
    brightness = {g: np.mean([np.asarray(Image.open(tmp_path / "p" / p)).mean() for p in rows.path[:20]])
                  for g, rows in df[df.split.isin(["test", "error_sample"])].groupby("group")}
    assert brightness["low_light"] < 0.6 * brightness["clean"]
    info = json.loads((tmp_path / "p" / "scenario.json").read_text())
    assert info["error_distribution"] == "low_light" and "CIFAR-10N" in info["weak_labels"]["source"]
    again = photos.build_photo_scenario(tmp_path / "q", assets=_assets(), size="small", image_size=64)
    assert pd.read_csv(again, keep_default_na=False).path.tolist() == df.path.tolist()  # same seed, same data


def test_without_assets_or_network_the_error_says_what_to_pass(tmp_path, monkeypatch) -> None:
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(photos.CifarUnavailableError, match="--assets DIR"):
        photos.build_photo_scenario(tmp_path / "p", assets=None, size="small", download_root=tmp_path / "dl")
    with pytest.raises(photos.CifarUnavailableError, match="does not exist"):
        photos.build_photo_scenario(tmp_path / "p", assets=tmp_path / "nothing", size="small")


def test_demo_job_builds_the_photo_workspace(tmp_path) -> None:
    from core.data.splits import split_counts
    from core.store.workspace import Workspace
    from jobs import demo

    assets = _assets()
    assert demo.main(["--workspace", str(tmp_path / "ws"), "--dataset", "photos", "--size", "small",
                      "--assets", str(assets), "--no-pipeline"]) == 0
    sizes = photos.PHOTO_SIZES["small"]
    counts = split_counts(Workspace.open(tmp_path / "ws"))
    assert counts["train"] == sizes.train and counts["pool"] == sizes.pool and counts["error_heldout"] == 150
    first = next((tmp_path / "ws" / "data" / "images" / "test").iterdir())
    assert Image.open(first).size == (photos.PHOTO_SIZE, photos.PHOTO_SIZE)
