"""CoRM mitigation: the loss, the masks, mislabel fixes, and the retrain job's report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from core.scanner.mitigation import (
    CormConfig,
    corm_loss,
    make_corm_loss,
    upsample_masks,
)


def _model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=2).eval()


def test_zero_noise_term_is_the_loss_of_masked_images_with_the_region_blanked():
    model = _model()
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 0, 1, 1, 0])
    masks = torch.zeros(6, 1, 32, 32)
    masks[[1, 4], :, :16] = 1
    with torch.no_grad():
        got = corm_loss(model, x, y, masks, lam=0.7, sigma=0.0)
        blanked = x[[1, 4]] * (1 - masks[[1, 4]])
        want = F.cross_entropy(model(x), y) + 0.7 * F.cross_entropy(model(blanked), y[[1, 4]])
        assert float(got) == pytest.approx(float(want), rel=1e-5)
        # no mask at all, or lam = 0: plain cross-entropy
        plain = F.cross_entropy(model(x), y)
        assert float(corm_loss(model, x, y, torch.zeros_like(masks), lam=1, sigma=1)) == pytest.approx(float(plain), rel=1e-5)
        assert float(corm_loss(model, x, y, masks, lam=0, sigma=1)) == pytest.approx(float(plain), rel=1e-5)


def test_noise_lands_only_inside_the_mask():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(len(x), 2, requires_grad=True)

    x = torch.full((2, 3, 16, 16), 3.0)  # a strong uniform colour, the kind of cue CoRM must remove
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, :8] = 1
    corm_loss(Probe(), x, torch.tensor([0, 1]), masks, lam=1, sigma=1, generator=torch.Generator().manual_seed(0))
    noised = seen[0][2]  # clean batch first, then the one masked image
    assert len(seen[0]) == 3
    assert (noised[:, 8:] == 3.0).all()
    # the region is replaced by noise around the mean colour, so its own colour is gone
    inside = noised[:, :8]
    assert abs(float(inside.mean())) < 0.3 and 0.7 < float(inside.std()) < 1.3


def test_masks_upsample_and_threshold():
    grids = np.zeros((2, 7, 7), np.float32)
    grids[0, :3] = 1.0
    m = upsample_masks(grids, 28, 0.5)
    assert m.shape == (2, 1, 28, 28) and m[1].sum() == 0
    assert m[0, 0, :10].mean() == 1 and m[0, 0, 14:].sum() == 0


def test_loss_hook_moves_mask_with_the_augmentation():
    """The hook flips and shifts image and mask together: after augmentation the noise covers exactly the
    (moved) masked region. A cue of value 3.0 is planted exactly under each mask, so the noised image must
    keep no 3.0 pixel, and every pixel outside the moved cue must be the augmented clean pixel."""
    grids = np.zeros((4, 7, 7), np.float32)
    grids[0, :, :3] = 1.0   # row 0: the left part is spurious
    grids[1, 4:, :] = 1.0   # row 1: the bottom part
    size, cue = 16, 3.0
    masks = upsample_masks(grids, size, CormConfig().mask_threshold)
    idx = torch.tensor([1, 3, 0, 2])  # a batch is any rows of the training arrays, in any order
    x = (cue * masks[idx]).expand(-1, 3, -1, -1).contiguous()  # the cue lies exactly under each row's mask
    x[masks[idx, 0].flatten(1).amax(1) == 0] = -1.0  # rows without a mask: plain images, never noised
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, batch):
            seen.append(batch.clone())
            return torch.zeros(len(batch), 2, requires_grad=True)

    fn = make_corm_loss(grids, size, CormConfig(lam=1.0, sigma=0.5), seed=0)
    moved = False
    for _ in range(4):  # several batches: flips and shifts differ from draw to draw
        seen.clear()
        fn(Probe(), x, torch.tensor([0, 1, 0, 1]), idx)
        (batch,) = seen
        clean, noised = batch[:4], batch[4:]
        assert len(noised) == 2  # only the masked rows (batch positions 0 and 2) get a noised copy
        moved |= not torch.equal(clean[[0, 2]], x[[0, 2]])
        for j, row in zip((0, 2), noised):
            region = clean[j] == cue  # where the augmented mask now is
            assert region.any() and not (row == cue).any()  # the moved cue is all noise
            assert torch.equal(row[~region], clean[j][~region])  # and nothing else changed
    assert moved, "the augmentation never moved an image: the test would not see a mask left behind"

    model = _model().train()  # and the real thing trains through it
    loss = make_corm_loss(grids, size, CormConfig(lam=1.0, sigma=0.5))(model, x, torch.tensor([0, 1, 0, 1]), idx)
    loss.backward()
    assert torch.isfinite(loss) and next(model.parameters()).grad is not None


def test_config_validation():
    with pytest.raises(ValueError, match="mislabeled"):
        CormConfig(mislabeled="fix")
    with pytest.raises(ValueError):
        CormConfig(lam=-1)


@pytest.fixture()
def annotated_ws(sliced_copy):
    from jobs import annotate_demo

    ws_dir = sliced_copy[0].root
    assert annotate_demo.main(["--workspace", str(ws_dir), "--min-purity", "0.5"]) == 0
    from core.scanner.annotations import annotate, annotated_slices
    from core.scanner.runs import get_slices, latest_run
    from core.store.workspace import Workspace

    ws = Workspace.open(ws_dir)
    run_id = latest_run(ws)
    if not annotated_slices(ws, run_id, "spurious"):  # the tiny model may make no error: a person's call
        annotate(ws, run_id, int(get_slices(ws, run_id).slice_id.iloc[0]), "spurious", annotator="tester")
    return ws_dir


@pytest.mark.slow
def test_corm_retrain_job_reports_baseline_and_corm(annotated_ws, tmp_path):
    from core.scanner.annotations import annotated_slices
    from core.scanner.runs import latest_run
    from core.store.workspace import Workspace
    from jobs import retrain

    ws = Workspace.open(annotated_ws)
    assert annotated_slices(ws, latest_run(ws), "spurious")
    out = tmp_path / "corm.json"
    assert retrain.main(["--workspace", str(annotated_ws), "--mitigate", "corm", "--corm-choice", "off",
                         "--finetune-epochs", "1", "--batch-size", "32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for method in ("baseline", "corm"):
        assert {"test_acc", "worst_group_acc", "model_id"} <= set(report["methods"][method])
    assert report["corm"]["n_member_masks"] + report["corm"]["n_propagated_masks"] > 0
    assert ws.scalar("SELECT method FROM models WHERE model_id = ?", [report["methods"]["corm"]["model_id"]]) == "corm"


def test_mislabel_fixes_relabel_to_prediction_or_drop(annotated_ws):
    from core.scanner.annotations import annotate
    from core.scanner.mitigation import mislabel_fixes
    from core.scanner.runs import latest_run, slice_members
    from core.store.workspace import Workspace

    ws = Workspace.open(annotated_ws)
    run_id = latest_run(ws)
    members = slice_members(ws, run_id)
    train_err = members[(members.split == "train") & ~members.correct.astype(bool)]
    sid = int(train_err.slice_id.mode().iloc[0]) if len(train_err) else int(members.slice_id.iloc[0])
    annotate(ws, run_id, sid, "core")  # not spurious: the prediction is evidence of the label here
    annotate(ws, run_id, sid, "mislabeled")
    model_id = ws.scalar("SELECT model_id FROM slice_runs WHERE run_id = ?", [run_id])
    drop, relabel = mislabel_fixes(ws, run_id, model_id, "relabel")
    part = members[(members.slice_id == sid) & (members.split == "train")]
    assert drop == set()
    assert relabel == {int(r.image_id): int(r.pred) for r in part.itertuples() if r.pred != r.label}
    drop, relabel = mislabel_fixes(ws, run_id, model_id, "drop")
    assert relabel == {} and drop == {int(r.image_id) for r in part.itertuples() if not r.correct}
    assert mislabel_fixes(ws, run_id, model_id, "keep") == (set(), {})
