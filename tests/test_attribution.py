"""Attributions: Grad-CAM finds a planted bright patch; the job stores one map and vector per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.scanner.attribution import (
    AttributionConfig,
    attribute_batch,
    weighted_vectors,
)


class BrightSpotNet(nn.Module):
    """A fixed CNN whose class 1 logit is the amount of bright pixels: Grad-CAM must point at them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            self.stem.weight.fill_(1.0 / 27)
            self.stem.weight[1].mul_(-1)
            self.stem.bias.copy_(torch.tensor([-0.5, 0.5]))
        self.last_block = nn.Sequential(nn.ReLU(), nn.AvgPool2d(4))  # 32 px -> 8 x 8 grid
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.last_block(self.stem(x))
        return self.head(a.mean((2, 3)))


def _planted(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """Dark images with one bright 8 x 8 patch in a random quadrant; returns images and quadrants."""
    x = torch.zeros(n, 3, 32, 32)
    quads = rng.integers(0, 4, n)
    for i, q in enumerate(quads):
        r, c = divmod(int(q), 2)
        y0, x0 = 4 + 16 * r + int(rng.integers(0, 4)), 4 + 16 * c + int(rng.integers(0, 4))
        x[i, :, y0:y0 + 8, x0:x0 + 8] = 2.0
    return x, quads


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_attribution_peaks_on_planted_patch(method):
    rng = np.random.default_rng(0)
    model = BrightSpotNet().eval()
    x, quads = _planted(12, rng)
    maps, vecs = attribute_batch(model, x, torch.ones(12, dtype=torch.long),
                                 config=AttributionConfig(method=method, heatmap_size=8))
    assert maps.shape == (12, 8, 8) and vecs.shape == (12, 2)
    assert maps.max() == pytest.approx(1.0) and maps.min() >= 0
    peak_quadrant = [2 * (divmod(int(m.argmax()), 8)[0] // 4) + divmod(int(m.argmax()), 8)[1] // 4 for m in maps]
    assert peak_quadrant == quads.tolist()
    # the weighted vector is the bright channel's activation where the map points, not the image mean
    with torch.no_grad():
        plain = model.last_block(model.stem(x)).mean((2, 3))[:, 0].numpy()
    assert (vecs[:, 0] > 2 * plain).all()


def test_weighted_vectors_weighted_mean_and_uniform_fallback():
    acts = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)
    cam = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert weighted_vectors(cam, acts).tolist() == [[0.0, 4.0]]
    assert weighted_vectors(torch.zeros_like(cam), acts).tolist() == [[1.5, 5.5]]


def test_vit_tokens_give_a_grid_map():
    import timm

    model = timm.create_model("test_vit", num_classes=2).eval()
    maps, vecs = attribute_batch(model, torch.randn(2, 3, 160, 160), torch.tensor([0, 1]))
    assert maps.shape == (2, 7, 7) and vecs.shape == (2, model.num_features)
    assert maps.max() > 0


def test_bad_config_is_a_value_error():
    with pytest.raises(ValueError, match="method"):
        AttributionConfig(method="lime")
    with pytest.raises(ValueError, match="target"):
        AttributionConfig(target="truth")


def test_attribute_job_stores_one_row_per_image(ws_copy, tmp_path):
    from core.models.catalog import current_classifier
    from core.scanner.attribution import load_attributions
    from jobs import attribute

    ws, _ = ws_copy
    out = tmp_path / "attr.json"
    assert attribute.main(["--workspace", str(ws.root), "--json", str(out), "--heatmap-size", "5"]) == 0
    ids = ws.df("SELECT image_id FROM images WHERE split IN ('train', 'test', 'error_heldout')").image_id
    att = load_attributions(ws, current_classifier(ws))
    # one row per image: every image of those splits exactly once, one map and one vector each
    assert sorted(int(i) for i in att.image_ids) == sorted(int(i) for i in ids)
    assert att.heatmaps.shape == (len(ids), 5, 5) and len(att.vectors) == len(ids)
    assert np.isfinite(att.vectors).all() and att.method == "gradcam:label"
