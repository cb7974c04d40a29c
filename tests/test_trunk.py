"""The frozen trunk computed once (core.models.trunk): the cut model gives the model's outputs, each image and
view is computed once and read back, training on it trains only the rest, and predictions agree with pixels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from core.data.images import fixed_view, fixed_views, pixels, to_tensor
from core.data.splits import images_df
from core.models import training as training_module
from core.models import trunk as trunk_module
from core.models.factory import create_model, default_data_config
from core.models.pretrained import DEFAULT_BACKBONE
from core.models.schedules import PRETRAINED_SCHEDULE
from core.models.training import fit, frozen_trunk
from core.models.trunk import TrunkCache, cached_trunk, freeze_early_stages, split_trunk
from core.store.workspace import Workspace

SIZE = 32


@pytest.fixture()
def tiny_ws(tmp_path, tiny_manifest) -> Workspace:
    from jobs import ingest

    assert ingest.main(["--workspace", str(tmp_path / "ws"), "--manifest", str(tiny_manifest)]) == 0
    return Workspace.open(tmp_path / "ws")


def _backbone(trainable_stages: int | None = 2):
    torch.manual_seed(0)
    model = create_model(DEFAULT_BACKBONE, num_classes=2)
    freeze_early_stages(model, trainable_stages)
    return model, default_data_config(model, SIZE)


def test_the_cut_model_is_the_frozen_prefix_and_gives_the_models_outputs() -> None:
    model, cfg = _backbone()
    split = split_trunk(model, cfg)
    assert split is not None
    assert all(not p.requires_grad for p in split.trunk.parameters())
    assert any(p.requires_grad for p in split.rest.parameters())
    rest_params = {id(p) for p in split.rest.parameters()}
    assert id(model.blocks[5][0].conv_pw.weight) in rest_params  # the trained stages are the model's own
    model.eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(split.rest(split.trunk(x)), model(x), atol=1e-4, rtol=1e-4)
    # The key follows the trunk's weights and the resolution
    other, _ = _backbone()
    assert split_trunk(other, cfg).key == split.key
    assert split_trunk(other, default_data_config(other, 64)).key != split.key
    with torch.no_grad():
        other.blocks[0][0].conv_dw.weight.mul_(1.01)
    assert split_trunk(other, cfg).key != split.key


@pytest.mark.parametrize("arch, stages", [(DEFAULT_BACKBONE, None), ("cifar_resnet20", None),
                                         ("vit_tiny_patch16_224", 2)])
def test_models_with_no_frozen_chain_are_not_cut(arch, stages) -> None:
    model = create_model(arch, num_classes=2)
    freeze_early_stages(model, stages)
    assert split_trunk(model, default_data_config(model, 32 if "vit" not in arch else 224)) is None


def test_a_cifar_resnet_is_cut_after_its_frozen_stages() -> None:
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=2)
    cfg = default_data_config(model, SIZE)
    frozen = freeze_early_stages(model, 1)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"layer3", "linear"}
    assert frozen and all(not p.requires_grad for m in frozen for p in m.parameters(recurse=False))
    split = split_trunk(model, cfg)
    assert split is not None
    assert {id(p) for p in split.rest.parameters()} == {id(p) for p in model.layer3.parameters()}  # + the head
    model.eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(split.rest(split.trunk(x)), model(x), atol=1e-4, rtol=1e-4)
        assert split.trunk(x).shape == (3, 32, SIZE // 2, SIZE // 2)  # layer2's output
    # 0 stages: the head alone trains, on the stored output of the whole chain
    freeze_early_stages(model, 0)
    head_only = split_trunk(model, cfg)
    assert head_only is not None and not list(head_only.rest.parameters())
    with torch.no_grad():
        assert head_only.trunk(x).shape == (3, 64, SIZE // 4, SIZE // 4)
        torch.testing.assert_close(head_only.rest(head_only.trunk(x)), model(x), atol=1e-4, rtol=1e-4)


def test_a_classifier_from_scratch_trains_whole_and_its_fine_tunings_only_the_last_stage(tiny_ws) -> None:
    from core.dcd.debug_train import failure_items
    from core.dcd.fine_tune import fine_tune
    from core.models.catalog import load_classifier
    from core.models.schedules import SCRATCH_SCHEDULE, schedule_of
    from core.models.training import train_classifier

    torch.manual_seed(0)
    init = create_model("cifar_resnet20", num_classes=2).state_dict()
    config = replace(SCRATCH_SCHEDULE, epochs=1, batch_size=32, trainable_stages=1)
    base_id = train_classifier(tiny_ws, arch="cifar_resnet20", image_size=SIZE, config=config)
    base, _ = load_classifier(tiny_ws, base_id)
    trained = base.state_dict()
    assert not torch.equal(trained["conv1.weight"], init["conv1.weight"])  # the first training is whole
    assert not torch.equal(trained["layer1.0.conv1.weight"], init["layer1.0.conv1.weight"])
    assert schedule_of(tiny_ws, base_id).trainable_stages == 1  # recorded for the lineage
    assert not list((tiny_ws.artifacts / "trunk").glob("*/*.feats.npy"))  # nothing frozen, nothing stored
    fails = images_df(tiny_ws, ["test"]).head(6)
    tuned = fine_tune(tiny_ws, base_model_id=base_id, selection_id=None,
                      items=failure_items(fails.image_id.to_numpy(), fails.label.to_numpy()))
    assert tuned.trainable_stages == 1
    assert list((tiny_ws.artifacts / "trunk").glob("*/*.feats.npy"))  # the frozen stages ran once, stored
    after = tuned.model.state_dict()
    for name, before in trained.items():
        same = torch.equal(after[name], before)
        assert same == (not name.startswith(("layer3", "linear"))), name


def test_each_image_and_view_is_computed_once_and_read_back_in_order(tiny_ws) -> None:
    model, cfg = _backbone()
    split = split_trunk(model, cfg)
    seen = []
    split.trunk.register_forward_hook(lambda m, i, o: seen.append(len(o)))
    train = images_df(tiny_ws, ["train"]).head(12)
    ids, paths = train.image_id.tolist(), train.path.tolist()
    cache = TrunkCache(tiny_ws, split, cfg)
    first = cache.features(ids[:8], paths[:8], 2)
    assert first.shape[:2] == (8, 2) and first.dtype == np.float16
    assert sum(seen) == 8 * 2
    # Ask again in another order with 4 new images: only the new ones are computed
    seen.clear()
    again = TrunkCache(tiny_ws, split, cfg).features(ids[::-1], paths[::-1], 2)
    assert sum(seen) == 4 * 2
    np.testing.assert_array_equal(again[::-1][:8], first)
    # View 0 is the image as it is, view 1 its mirror image
    x = to_tensor(pixels(tiny_ws, paths, SIZE), cfg)
    with torch.no_grad():
        plain, mirrored = split.trunk(x).numpy(), split.trunk(x.flip(3)).numpy()
    np.testing.assert_allclose(again[::-1][:, 0].astype(np.float32), plain, atol=2e-2, rtol=1e-2)
    np.testing.assert_allclose(again[::-1][:, 1].astype(np.float32), mirrored, atol=2e-2, rtol=1e-2)
    # A shifted view is the same each time it is asked for, and differs between images' seeds
    assert torch.equal(fixed_view(x, ids, 2), fixed_view(x, ids, 2))
    assert not torch.equal(fixed_view(x, ids, 2), fixed_view(x, [i + 1 for i in ids], 2))
    # Each image in its own view (training on pixels) is that image's fixed view
    mixed = [i % 4 for i in range(len(ids))]
    each = fixed_views(x, ids, mixed)
    for row, view in enumerate(mixed):
        assert torch.equal(each[row], fixed_view(x, ids, view)[row])
    with pytest.raises(ValueError, match="image ids"):
        fixed_views(x, ids[:-1], mixed)
    assert len(list(cache.folder.glob("*.ids.npy"))) == 2  # one chunk per computation, append-only
    # Views asked for later are computed only where they are lacking: view 0 of 4 new images (evaluation),
    # then 3 views of all 16 (training): 4 x 3 views for those, 4 x 3 for the 4 never seen, 12 x 1 for the rest
    seen.clear()
    more_ids, more_paths = images_df(tiny_ws, ["train"]).image_id.tolist()[12:16], \
        images_df(tiny_ws, ["train"]).path.tolist()[12:16]
    cache.features(more_ids, more_paths, 1)
    assert sum(seen) == 4
    seen.clear()
    wider = cache.features(ids + more_ids, paths + more_paths, 3)
    assert sum(seen) == 12 * 1 + 4 * 2
    np.testing.assert_array_equal(wider[:12, :2], again[::-1])
    np.testing.assert_allclose(wider[:12, 0].astype(np.float32), plain, atol=2e-2, rtol=1e-2)
    seen.clear()
    np.testing.assert_array_equal(TrunkCache(tiny_ws, split, cfg).features(ids + more_ids, paths + more_paths, 3),
                                  wider)
    assert sum(seen) == 0


def test_training_on_the_cache_trains_only_the_rest_and_learns(tiny_ws) -> None:
    config = replace(PRETRAINED_SCHEDULE, epochs=3, batch_size=32)
    train = images_df(tiny_ws, ["train"])
    test = images_df(tiny_ws, ["test"])
    accuracy = {}
    for cached in (True, False):
        model, cfg = _backbone()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trunk = frozen_trunk(tiny_ws, model, cfg, config, train.image_id.tolist(), train.path.tolist()) \
            if cached else None
        assert (trunk is not None) == cached
        px = None if cached else pixels(tiny_ws, train.path.tolist(), SIZE)
        fit(model, px, train.label.to_numpy(), cfg, config, trunk=trunk, image_ids=train.image_id.tolist())
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed and all(n.startswith(("blocks.5", "blocks.6", "conv_head", "bn2", "classifier")) for n in changed)
        model.eval()
        with torch.no_grad():
            pred = model(to_tensor(pixels(tiny_ws, test.path.tolist(), SIZE), cfg)).argmax(1).numpy()
        accuracy[cached] = float((pred == test.label.to_numpy()).mean())
    # 40 test images of a backbone trained from random weights: a run's figure moves by a few images with the
    # arithmetic's order (seen: 0.85 / 0.925 in channels-last order, 0.9 / 0.825 in the usual one) and with
    # the cache's float16 rounding, which such an untrained network amplifies
    assert accuracy[True] >= 0.8 and accuracy[True] >= accuracy[False] - 0.1, accuracy


def test_on_pixels_a_model_trains_on_the_views_the_cache_would_hold(tiny_ws, monkeypatch) -> None:
    """The head alone trained (make run's demo's fixes): on pixels and on the cache the same views in the same
    order, so the same head to the cache's float16 rounding; random flips and shifts instead would part them."""
    config = replace(PRETRAINED_SCHEDULE, epochs=3, batch_size=32, trainable_stages=0)
    train = images_df(tiny_ws, ["train"])
    test_x = to_tensor(pixels(tiny_ws, images_df(tiny_ws, ["test"]).path.tolist(), SIZE), _backbone()[1])

    def trained_logits(cached: bool) -> torch.Tensor:
        model, cfg = _backbone(0)
        trunk = frozen_trunk(tiny_ws, model, cfg, config, train.image_id.tolist(), train.path.tolist()) \
            if cached else None
        assert (trunk is not None) == cached
        px = None if cached else pixels(tiny_ws, train.path.tolist(), SIZE)
        fit(model, px, train.label.to_numpy(), cfg, config, trunk=trunk, image_ids=train.image_id.tolist())
        with torch.no_grad():
            return model.eval()(test_x)

    cached, on_pixels = trained_logits(True), trained_logits(False)
    gap = float((cached - on_pixels).abs().max())
    monkeypatch.setattr(training_module, "trains_on_views", lambda model: False)  # random flips and shifts
    gap_random = float((cached - trained_logits(False)).abs().max())
    scale = float(cached.abs().max())
    # seen: logits up to 10.3, the gap 9e-5, with random flips and shifts 0.42
    assert gap <= 1e-3 * scale and gap_random >= 1e-2 * scale, (gap, gap_random, scale)


def test_training_a_model_with_frozen_stages_on_pixels_needs_its_image_ids(tiny_ws) -> None:
    model, cfg = _backbone()
    train = images_df(tiny_ws, ["train"]).head(8)
    px = pixels(tiny_ws, train.path.tolist(), SIZE)
    with pytest.raises(ValueError, match="image id"):
        fit(model, px, train.label.to_numpy(), cfg, replace(PRETRAINED_SCHEDULE, epochs=1, batch_size=4))
    assert all(p.requires_grad for p in model.parameters())


def test_a_loss_of_its_own_needs_pixels(tiny_ws) -> None:
    model, cfg = _backbone()
    train = images_df(tiny_ws, ["train"]).head(8)
    trunk = frozen_trunk(tiny_ws, model, cfg, PRETRAINED_SCHEDULE, train.image_id.tolist(), train.path.tolist())
    with pytest.raises(ValueError, match="whole model on pixels"):
        fit(model, None, train.label.to_numpy(), cfg, PRETRAINED_SCHEDULE, trunk=trunk,
            loss_fn=lambda m, x, y, i: m(x).sum())


def test_the_cache_turned_off_or_over_its_memory_budget_trains_on_pixels(tiny_ws, monkeypatch, capsys) -> None:
    model, cfg = _backbone()
    train = images_df(tiny_ws, ["train"])
    ids, paths = train.image_id.tolist(), train.path.tolist()
    monkeypatch.setenv(trunk_module.CACHE_ENV, "0")
    assert cached_trunk(tiny_ws, model, cfg, ids, paths) is None
    monkeypatch.setenv(trunk_module.CACHE_ENV, "1")
    monkeypatch.setenv(trunk_module.MEMORY_ENV, "1000")
    assert cached_trunk(tiny_ws, model, cfg, ids, paths) is None
    assert "over the" in capsys.readouterr().out
    assert not (tiny_ws.artifacts / "trunk").exists()
    monkeypatch.setenv(trunk_module.MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match="number of bytes"):
        cached_trunk(tiny_ws, model, cfg, ids, paths)


def test_predictions_from_the_stored_trunk_agree_with_pixels(tiny_ws, monkeypatch) -> None:
    from core.models.evaluation import predict
    from core.models.training import train_classifier

    model_id = train_classifier(tiny_ws, arch=DEFAULT_BACKBONE, image_size=SIZE,
                                config=replace(PRETRAINED_SCHEDULE, epochs=1, batch_size=32))
    assert list((tiny_ws.artifacts / "trunk").glob("*/*.feats.npy"))  # training stored the trunk's views
    cached = predict(tiny_ws, model_id, splits=["test"]).set_index("image_id")
    probs_cached = tiny_ws.df("SELECT image_id, probs FROM predictions WHERE model_id = ? ORDER BY image_id",
                              [model_id])
    monkeypatch.setenv(trunk_module.CACHE_ENV, "0")
    on_pixels = predict(tiny_ws, model_id, splits=["test"], allow_bf16=False).set_index("image_id")  # fp32 as the cache
    probs_pixels = tiny_ws.df("SELECT image_id, probs FROM predictions WHERE model_id = ? ORDER BY image_id",
                              [model_id])
    np.testing.assert_allclose(np.stack(probs_cached.probs), np.stack(probs_pixels.probs), atol=0.01)
    assert (cached.pred == on_pixels.loc[cached.index].pred).mean() >= 0.97
