"""Models: timm by name with local weights, feature widths, checkpoints, bf16 checked against fp32."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from core.data.model_input import DataConfig
from core.models.checkpoints import save_checkpoint, weights_include_head
from core.models.config import ModelError
from core.models.factory import create_model, default_data_config, load_checkpoint
from core.models.features import (
    MULTISCALE_STAGES,
    embedding_dim,
    embedding_function,
    feature_dim,
    features,
)
from core.models.inference import choose_precision, cpu_has_bf16, embed, predict_probs


@pytest.mark.parametrize("arch", ["test_resnet", "mobilenetv3_small_050", "test_vit"])
def test_feature_dim_is_the_width_of_the_embedding(arch):
    model = create_model(arch, num_classes=3).eval()
    size = default_data_config(model).image_size if "vit" in arch else 32
    with torch.no_grad():
        out = features(model, torch.randn(2, 3, size, size))
    assert out.shape == (2, feature_dim(model))


def test_local_backbone_weights_load_and_are_not_mistaken_for_a_classifier(tmp_path):
    donor = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "backbone.pth"
    torch.save(donor.state_dict(), path)
    model = create_model("test_resnet", num_classes=3, weights=path)
    first = next(iter(donor.state_dict()))
    assert torch.equal(model.state_dict()[first], donor.state_dict()[first])  # weights really loaded
    assert model.num_classes == 3
    assert not weights_include_head(model, path, 3)
    assert weights_include_head(create_model("test_resnet", num_classes=1000, weights=path), path, 1000)


def test_checkpoint_round_trip_keeps_weights_and_preprocessing(tmp_path):
    model = create_model("test_resnet", num_classes=2).eval()
    cfg = DataConfig(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    path = save_checkpoint(model, tmp_path / "m.pt", arch="test_resnet", num_classes=2, data_config=cfg,
                           class_names=["a", "b"])
    loaded, info = load_checkpoint(path)
    assert info["data_config"] == cfg and info["class_names"] == ["a", "b"]
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))
    assert weights_include_head(loaded, path, 2)
    assert create_model("whatever", num_classes=2, weights=path).num_classes == 2  # our checkpoint wins


def test_clear_errors_for_bad_model_requests(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        create_model("resnet18", num_classes=2, weights=tmp_path / "missing.pth")
    with pytest.raises(ModelError):
        create_model("no_such_architecture_xyz", num_classes=2)


def test_bf16_is_used_only_where_it_matches_fp32():
    model = create_model("test_resnet", num_classes=2).eval()
    cfg = DataConfig(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    check = choose_precision(model, px, cfg, embedding=True)
    if not cpu_has_bf16():
        assert not check.bf16 and "no native bf16" in check.reason
    else:
        assert check.knn_overlap is not None and check.bf16 == (check.knn_overlap >= 0.95)
    assert not choose_precision(model, px, cfg, embedding=True, allow_bf16=False).bf16
    fp32 = embed(model, px, cfg, batch_size=16)
    assert fp32.shape == (64, feature_dim(model))
    probs = predict_probs(model, px, cfg, batch_size=16)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("arch", ["test_resnet", "cifar_resnet20"])
def test_multiscale_embedding_is_unit_norm_stats_of_the_last_stages(arch):
    model = create_model(arch, num_classes=3).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=MULTISCALE_STAGES, intermediates_only=True)
        vec = embedding_function(model, "multiscale")(x)
    widths = [2 * m.shape[1] for m in maps]
    assert vec.shape == (4, sum(widths)) == (4, embedding_dim(model, "multiscale"))
    parts = torch.split(vec, widths, dim=1)
    for part in parts:
        assert torch.allclose(part.norm(dim=1), torch.ones(4), atol=1e-5)
    # the first half of each stage's part is the channel mean of that stage's map (before normalising)
    mean_last = maps[-1].flatten(2).mean(2)
    stats_last = torch.cat([mean_last, maps[-1].flatten(2).std(2, unbiased=False)], 1)
    assert torch.allclose(parts[-1], torch.nn.functional.normalize(stats_last, dim=1), atol=1e-5)


def test_multiscale_embedding_separates_a_low_level_shift_the_penultimate_layer_ignores():
    """Blurred copies of images: their nearest neighbours should be other blurred images."""
    model = create_model("cifar_resnet20", num_classes=10).eval()
    gen = torch.Generator().manual_seed(0)
    sharp = torch.rand(40, 3, 32, 32, generator=gen)
    blurred = torch.nn.functional.avg_pool2d(torch.rand(40, 3, 32, 32, generator=gen), 5, 1, 2)
    x = torch.cat([sharp, blurred])
    shifted = torch.tensor([0] * 40 + [1] * 40)
    with torch.no_grad():
        vec = embedding_function(model, "multiscale")(x)
    dist = torch.cdist(vec, vec).fill_diagonal_(float("inf"))
    nearest = dist.topk(5, largest=False).indices
    assert (shifted[nearest] == shifted[:, None]).float().mean() > 0.95


def test_unknown_embedding_layers_are_refused():
    model = create_model("test_resnet", num_classes=3)
    with pytest.raises(ValueError, match="embedding layers must be one of"):
        embedding_function(model, "third_from_last")
