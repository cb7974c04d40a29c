"""Tests for the CIFAR ResNet (core.models.cifar_resnet) and the CIFAR-10 DCD scenario (core.scenarios.cifar10).

Tests that need the real assets skip when the shared assets folder is absent (as on a fresh machine):
set DCD_ASSETS (``make test ASSETS=DIR``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.models.cifar_resnet import (
    CIFAR_DATA_CONFIG,
    create_cifar_resnet,
    list_cifar_resnets,
)
from core.scenarios.cifar10 import (
    CIFAR10_CLASSES,
    SCENARIO_SIZES,
    build_cifar10_scenario,
)
from core.scenarios.corruptions import CIFAR_C_CORRUPTIONS, CORRUPTIONS, apply_corruption
from core.scenarios.demos import assets_dir

ASSETS = assets_dir() or Path("DCD_ASSETS-is-unset")
HAS_CIFAR = (ASSETS / "cifar10" / "cifar10-jpg.zip").is_file() and (
    ASSETS / "cifar10" / "CIFAR-10_human.pt").is_file()
RESNET20 = sorted((ASSETS / "weights" / "cifar10-resnets").glob("resnet20-*.th"))
SKIP_REASON = (f"CIFAR-10 assets not found under {ASSETS} (set DCD_ASSETS=DIR, or make test ASSETS=DIR)"
               if assets_dir() else "the real assets are not given: set DCD_ASSETS=DIR (or make test ASSETS=DIR)")
needs_cifar = pytest.mark.skipif(not HAS_CIFAR, reason=SKIP_REASON)
needs_weights = pytest.mark.skipif(not RESNET20, reason=f"resnet20 weights not found under {ASSETS}/weights")
COLUMNS = ["path", "label", "split", "weak_label", "group", "true_label"]


# ---------------------------------------------------------------------------------------------- ResNet


@pytest.mark.parametrize("name", list_cifar_resnets())
def test_cifar_resnet_shapes(name: str) -> None:
    model = create_cifar_resnet(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 64, 8, 8)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert model(x).shape == (2, 7)
    assert model.num_classes == 7 and model.num_features == 64
    assert model.last_block is model.layer3[-1]


def test_unknown_name_raises() -> None:
    with pytest.raises(ValueError, match="unknown CIFAR ResNet"):
        create_cifar_resnet("cifar_resnet18")


def test_checkpoint_roundtrip_with_module_prefix(tmp_path: Path) -> None:
    src = create_cifar_resnet("cifar_resnet20").eval()
    path = tmp_path / "r20.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    loaded = create_cifar_resnet("cifar_resnet20", checkpoint=path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(src(x), loaded(x))


def test_checkpoint_depth_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "r32.th"
    torch.save({"state_dict": create_cifar_resnet("cifar_resnet32").state_dict()}, path)
    with pytest.raises(ValueError, match="does not fit cifar_resnet20.*unexpected keys"):
        create_cifar_resnet("cifar_resnet20", checkpoint=path)


def test_checkpoint_head_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "r20.th"
    torch.save(create_cifar_resnet("cifar_resnet20", num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match="shape mismatch.*num_classes"):
        create_cifar_resnet("cifar_resnet20", num_classes=3, checkpoint=path)


def test_missing_checkpoint_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        create_cifar_resnet("cifar_resnet20", checkpoint=tmp_path / "nope.th")


@needs_weights
def test_shipped_resnet20_loads_and_predicts() -> None:
    model = create_cifar_resnet("cifar_resnet20", checkpoint=RESNET20[0])
    assert not model.training
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 32, 32))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()
    assert CIFAR_DATA_CONFIG["input_size"] == (3, 32, 32)


# ---------------------------------------------------------------------------------------------- corruptions


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_are_deterministic_and_change_images(name: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    a = apply_corruption(images, name, np.random.default_rng(1))
    b = apply_corruption(images, name, np.random.default_rng(1))
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - images).mean() > 5


def test_apply_corruption_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown corruption"):
        apply_corruption(np.zeros((1, 8, 8, 3), np.uint8), "rain", rng)
    with pytest.raises(ValueError, match="uint8"):
        apply_corruption(np.zeros((1, 8, 8, 3), np.float32), "fog", rng)


# ---------------------------------------------------------------------------------------------- scenario


def _read(manifest: Path) -> pd.DataFrame:
    return pd.read_csv(manifest, keep_default_na=False, dtype=str)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_CIFAR:
        pytest.skip(SKIP_REASON)
    return build_cifar10_scenario(tmp_path_factory.mktemp("c10") / "a", assets=ASSETS, size="small", seed=1)


@needs_cifar
def test_scenario_splits_and_groups(scenario: Path) -> None:
    df = _read(scenario)
    sizes = SCENARIO_SIZES["small"]
    assert list(df.columns) == COLUMNS
    assert df.split.value_counts().to_dict() == {
        "train": sizes.train, "test": sizes.test, "error_sample": sizes.error_sample,
        "error_heldout": sizes.error_heldout, "pool": sizes.pool}
    train = df[df.split == "train"]
    assert (train.group == "fog").sum() == sizes.train_corrupted <= 0.01 * sizes.train
    assert set(df[df.split == "test"].group) == {"clean"}
    assert set(df[df.split.isin(["error_sample", "error_heldout"])].group) == {"fog"}
    pool_groups = df[df.split == "pool"].group.value_counts(normalize=True)
    assert pool_groups["fog"] == pytest.approx(0.10, abs=0.005)
    assert 0.2 <= 1 - pool_groups["clean"] <= 0.3
    assert set(pool_groups.index) == {"clean", *CIFAR_C_CORRUPTIONS}
    assert df.path.is_unique


@needs_cifar
def test_scenario_labels(scenario: Path) -> None:
    df = _read(scenario)
    pool = df[df.split == "pool"]
    rest = df[df.split != "pool"]
    assert (pool.label == "").all() and pool.weak_label.isin(CIFAR10_CLASSES).all()
    assert (rest.label == rest.true_label).all() and (rest.weak_label == "").all()
    noise = (pool.weak_label != pool.true_label).mean()
    assert noise == pytest.approx(0.17, abs=0.03)  # CIFAR-10N random_label1
    info = json.loads((scenario.parent / "scenario.json").read_text())
    assert info["weak_labels"]["noise"] == "random_label1"
    assert info["weak_labels"]["pool_noise_rate"] == pytest.approx(noise)
    # the file name carries the source image; its class folder is the true label
    file_class = df.path.str.split("/").str[-1].str.split("_").str[1]
    assert (file_class == df.true_label).all()


@needs_cifar
def test_scenario_files_exist_and_open(scenario: Path) -> None:
    df = _read(scenario)
    root = scenario.parent
    for rel in df.path:
        assert (root / rel).is_file(), rel
    for rel, group in df[["path", "group"]].iloc[::211].itertuples(index=False):
        with Image.open(root / rel) as img:
            assert img.size == (32, 32)
            assert img.format == ("JPEG" if group == "clean" else "PNG")


@needs_cifar
def test_scenario_is_deterministic(scenario: Path, tmp_path: Path) -> None:
    again = build_cifar10_scenario(tmp_path / "b", assets=ASSETS, size="small", seed=1)
    first = _read(scenario)
    assert _read(again).equals(first)
    some = first.groupby("group").path.first().tolist()
    for rel in some:
        assert (again.parent / rel).read_bytes() == (scenario.parent / rel).read_bytes()


@needs_cifar
def test_scenario_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corruption"):
        build_cifar10_scenario(tmp_path, assets=ASSETS, corruption="rain")
    with pytest.raises(ValueError, match="unknown noise"):
        build_cifar10_scenario(tmp_path, assets=ASSETS, size="small", noise="best_label")
    with pytest.raises(ValueError, match="missing asset"):
        build_cifar10_scenario(tmp_path, assets=tmp_path, size="small")
