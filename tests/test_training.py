"""The training loop's sampling: the added selection's share of fine-tuning batches, and seeded inits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.data.model_input import DataConfig
from core.models.factory import create_model
from core.models.sampling import share_weights
from core.models.schedules import TrainConfig
from core.models.training import fit


def test_share_weights_give_the_added_images_their_share_whatever_the_sizes():
    is_added = np.array([False] * 900 + [True] * 100)
    w = share_weights(is_added, 0.5)
    assert w.sum() == pytest.approx(1.0)
    assert w[is_added].sum() == pytest.approx(0.5)
    assert np.allclose(w[is_added], 0.005) and np.allclose(w[~is_added], 0.5 / 900)
    assert share_weights(is_added, None) is None
    assert share_weights(np.zeros(10, bool), 0.5) is None  # nothing added: plain sampling
    with pytest.raises(ValueError, match="between 0 and 1"):
        share_weights(is_added, 1.0)


def test_share_weights_by_class_keep_train_class_mix():
    # train: 600 of class 0, 300 of class 1; added: 100 of class 1 only (a slice of one class)
    labels = np.array([0] * 600 + [1] * 300 + [1] * 100)
    is_added = np.arange(1000) >= 900
    w = share_weights(is_added, 0.5, labels)
    assert w.sum() == pytest.approx(1.0)
    assert w[labels == 0].sum() == pytest.approx(600 / 900) and w[labels == 1].sum() == pytest.approx(300 / 900)
    assert w[is_added].sum() == pytest.approx(0.5 * 300 / 900)  # half of class 1's draws, not half of all
    assert np.allclose(w[labels == 0], (600 / 900) / 600)  # class 0 has nothing added: its images as before
    # a class only the added images hold still gets drawn: its share among the added, times added_share
    labels2 = np.array([0] * 500 + [1] * 400 + [2] * 100)
    w2 = share_weights(is_added, 0.5, labels2)
    assert w2.sum() == pytest.approx(1.0) and w2[labels2 == 2].sum() > 0
    with pytest.raises(ValueError, match="added_mix"):
        TrainConfig(added_mix="half")


def _tiny_fit(sample_weights, seen):
    torch.manual_seed(0)
    model = create_model("test_resnet", num_classes=2)
    images = np.random.default_rng(0).integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(40) % 2

    def loss(m, x, y, idx):
        seen.extend(idx.tolist())
        return F.cross_entropy(m(x), y)

    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.01, augment=False)
    fit(model, images, labels, DataConfig(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), cfg, loss_fn=loss, sample_weights=sample_weights)


def test_fit_draws_in_proportion_to_sample_weights():
    weights = np.zeros(40)
    weights[:4] = 1.0  # only four images may be drawn
    seen: list[int] = []
    _tiny_fit(weights, seen)
    assert len(seen) == 3 * 40 and set(seen) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="one non-negative weight per image"):
        _tiny_fit(np.ones(39), [])


@pytest.mark.slow
def test_training_is_reproducible_from_the_seed(tmp_path, tiny_manifest):
    from core.models.catalog import load_classifier
    from core.models.training import train_classifier
    from jobs import ingest

    ws_dir = tmp_path / "ws"
    assert ingest.main(["--workspace", str(ws_dir), "--manifest", str(tiny_manifest)]) == 0
    from core.store.workspace import Workspace

    ws = Workspace.open(ws_dir)
    cfg = TrainConfig(epochs=1, batch_size=32, seed=3)
    states = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # whatever the global random state was, the seed decides
        model_id = train_classifier(ws, arch="test_resnet", image_size=24, config=cfg)
        states.append(load_classifier(ws, model_id)[0].state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
