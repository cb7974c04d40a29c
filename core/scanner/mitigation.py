"""Mitigation from slice annotations: Core Risk Minimization (CoRM) and mislabel fixes (phase 3).

CoRM (Moayeri, Singla, Feizi 2022) as AttributionScanner uses it: fine-tune the classifier with

    L = CE(f(x), y) + lambda * CE(f((1 - M_spurious) * x + M_spurious * sigma * eps), y),   eps ~ N(0, I)

so that predictions hold when the spurious region of an image is replaced by noise. Replaced, not noised
on top: zero-mean noise added to a region keeps its mean colour, which is often the spurious cue itself
(a blue background stays blue), and a CNN averages the noise away. ``M_spurious`` comes
from attribution maps (:func:`spurious_masks`):

- every train image in a slice annotated ``spurious`` gets a mask: its own high-attribution region (Grad-CAM
  w.r.t. the model's prediction, map >= ``mask_threshold`` x its peak, upsampled to the image): what the
  model relies on in those images is the spurious feature the person saw in the mosaic;
- **propagation** (``propagate=True``, off by default): the spurious feature is not limited to the few
  train images in those slices (most of them are test errors). Each spurious slice's prototype is the mean
  prediction-weighted vector of its members; every other train image gets, at each position of the last conv block, the cosine
  similarity of its activation there to the closest prototype, and the positions at least
  ``propagate_threshold`` similar are masked. So images that carry the same feature (the same
  background, say) get that region noised too, and images without it are left alone.

The noise term uses the image's own label and only the masked images of a batch (its mean over them is
weighted by ``lam``): the few masked images weigh as much as the whole batch, so besides learning to ignore
the noised region the model is pushed harder on exactly the images of the failure slices. Propagation is
off by default (not yet measured on the demo): at 64 px a ResNet's last block is a 2 x 2 grid, so a
prototype match would mask most of every image with the same background, noising the core feature too and
diluting that weight. Augmentation (flip, shift) is applied to image and mask together.

Mislabeled slices (annotated ``mislabeled``): their train members are relabeled (``mislabeled="relabel"``:
to the annotation's ``relabel_to`` if given, else to the model's prediction, which changes only the members
the model disagrees with) or dropped (``"drop"``), or kept as they are (``"keep"``). A slice annotated
mislabeled *and* spurious gets both: CoRM masks on its members, and the mislabel fix, except that there the
model's prediction is no evidence of the right label (it is what the spurious feature says), so without a
``relabel_to`` its disputed members are dropped, not relabeled to the prediction. Measured on the
Waterbirds-like demos (no error split), such a slice's disputed train members were half planted mislabels
and half true minority images (27 / 29 at seed 0, 58 / 49 at seed 1): relabeling to the prediction would
have taught the shortcut to the true half.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from core.data.images import augment, to_tensor
from core.dcd.fine_tune import FineTuned, fine_tune
from core.models.catalog import load_classifier, new_model_id, register_model
from core.models.factory import last_conv_block
from core.models.schedules import TrainConfig
from core.models.training import LossFn
from core.progress import Progress
from core.scanner.annotations import annotated_slices, current_annotations
from core.scanner.attribution import _Capture
from core.scanner.runs import latest_run, slice_members
from core.store.workspace import Workspace

MISLABELED_POLICIES = ("relabel", "drop", "keep")


@dataclass(frozen=True)
class CormConfig:
    """CoRM options. lam: weight of the noise term; sigma: noise std in normalised pixel units;
    mask_threshold: share of a map's peak above which a position is spurious; propagate /
    propagate_threshold: mask train images carrying the spurious prototype (module doc); mislabeled: one of
    ``MISLABELED_POLICIES``; epochs: fine-tuning epochs (default: the train config's fine-tune schedule)."""

    lam: float = 1.0
    sigma: float = 1.0
    mask_threshold: float = 0.5
    propagate: bool = False
    propagate_threshold: float = 0.5
    mislabeled: str = "relabel"
    epochs: int | None = None

    def __post_init__(self) -> None:
        if self.lam < 0 or self.sigma < 0:
            raise ValueError("lam and sigma must be >= 0")
        if not 0 <= self.mask_threshold <= 1 or not -1 <= self.propagate_threshold <= 1:
            raise ValueError("mask_threshold must be in [0, 1] and propagate_threshold in [-1, 1]")
        if self.mislabeled not in MISLABELED_POLICIES:
            raise ValueError(f"mislabeled must be one of {MISLABELED_POLICIES}, got {self.mislabeled!r}")


# -- the loss -----------------------------------------------------------------------------------------

def corm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, *, lam: float,
              sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``CE(f(x), y) + lam * CE(f((1 - M) * x + M * sigma * eps), y)`` over the images with a non-empty mask.

    ``masks``: N x 1 x H x W in [0, 1]; ``x`` is normalised, so ``sigma * eps`` is noise around the data's
    mean colour. Clean and noised images go through the model in one batch (one set of BatchNorm
    statistics). With ``sigma=0`` the masked region is blanked to the mean colour.
    """
    has = masks.flatten(1).amax(1) > 0
    if lam == 0 or not bool(has.any()):
        return F.cross_entropy(model(x), y)
    xm = x[has]
    eps = torch.randn(xm.shape, generator=generator, dtype=xm.dtype).to(xm.device)
    m = masks[has]
    logits = model(torch.cat([x, (1 - m) * xm + m * sigma * eps]))
    n = len(x)
    return F.cross_entropy(logits[:n], y) + lam * F.cross_entropy(logits[n:], y[has])


def upsample_masks(grids: np.ndarray, size: int, threshold: float) -> torch.Tensor:
    """N x s x s maps in [0, 1] -> N x 1 x size x size binary masks (map >= threshold after upsampling)."""
    t = torch.as_tensor(np.asarray(grids, np.float32)).unsqueeze(1)
    up = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return (up >= threshold).float() * (t.flatten(1).amax(1) > 0).float().view(-1, 1, 1, 1)


def make_corm_loss(mask_grids: np.ndarray, image_size: int, config: CormConfig, *, seed: int = 0,
                   augment_images: bool = True) -> LossFn:
    """A ``core.models.training.fit`` loss hook: ``mask_grids`` (N x s x s, one per training row; zeros: no mask)."""
    masks = upsample_masks(mask_grids, image_size, config.mask_threshold) if len(mask_grids) else None
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        device = x.device  # the process's device (core.models.device); masks and draws stay on the CPU
        m = masks[idx] if masks is not None else torch.zeros_like(x[:, :1].cpu())
        if augment_images:  # fit's own augmentation is off: move image and mask together
            both = augment(torch.cat([x.cpu(), m], 1), gen)
            x, m = both[:, :-1].to(device), both[:, -1:].round()
        return corm_loss(model, x, y, m.to(device), lam=config.lam, sigma=config.sigma, generator=gen)

    return loss_fn


# -- the masks ----------------------------------------------------------------------------------------

def _block_activations(model: nn.Module, px: np.ndarray, data_config, batch_size: int = 128) -> torch.Tensor:
    layer = last_conv_block(model)
    outs = []
    model.eval()
    for s in range(0, len(px), batch_size):
        cap = _Capture(layer)
        try:
            with torch.inference_mode():
                model(to_tensor(px[s:s + batch_size], data_config))
            outs.append(cap.out.float().clone())
        finally:
            cap.close()
    acts = torch.cat(outs)
    if acts.dim() != 4:
        raise ValueError("spurious-feature propagation needs a CNN (conv activations N x C x h x w)")
    return acts


def prototype_maps(acts: torch.Tensor, prototype: np.ndarray, size: int) -> np.ndarray:
    """Cosine similarity of each position's activation to ``prototype``, resized to ``size`` x ``size``."""
    p = torch.as_tensor(prototype, dtype=torch.float32).view(1, -1, 1, 1)
    sim = F.cosine_similarity(acts, p, dim=1).unsqueeze(1)  # N x 1 x h x w
    return F.interpolate(sim, size=(size, size), mode="nearest")[:, 0].numpy()


@dataclass
class MaskPlan:
    grids: np.ndarray  # N x s x s, one per training row; 0 = not noised
    n_member_masks: int
    n_propagated: int
    spurious_slices: list[int]


def _pred_maps(model: nn.Module, px: np.ndarray, data_config, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps and vectors w.r.t. the model's own prediction (what drives its decision)."""
    from core.models.inference import predict_probs
    from core.scanner.attribution import AttributionConfig, compute_attributions

    pred = predict_probs(model, px, data_config).argmax(1)
    res = compute_attributions(model, px, data_config, pred, config=AttributionConfig(heatmap_size=size))
    return res.heatmaps, res.vectors


def spurious_masks(ws: Workspace, run_id: str, model_id: str, train: pd.DataFrame, px: np.ndarray,
                   data_config, config: CormConfig, *, exclude_ids: frozenset[int] = frozenset()) -> MaskPlan:
    """The mask grid of every training row (``train``: image_id, path per row; ``px`` its pixels).

    Maps are Grad-CAM w.r.t. the model's *prediction* (whatever the stored attributions' target): in a
    spurious slice, mostly errors, that is the region pushing the model to the wrong class. Members in
    ``exclude_ids`` (held out) are left out of the propagation prototypes too.
    """
    from core.data.images import pixels

    spurious = annotated_slices(ws, run_id, "spurious")
    size = int(ws.scalar("SELECT heatmap_size FROM attributions WHERE model_id = ? LIMIT 1", [model_id]) or 7)
    grids = np.zeros((len(train), size, size), np.float32)
    if not spurious:
        return MaskPlan(grids, 0, 0, [])
    model, _ = load_classifier(ws, model_id)
    members = slice_members(ws, run_id)
    members = members[members.slice_id.isin(spurious) & ~members.image_id.isin(exclude_ids)]
    row_of = {int(i): r for r, i in enumerate(train.image_id.astype(int))}
    rows = [row_of[int(i)] for i in members.image_id if int(i) in row_of]
    if rows:
        heat, _ = _pred_maps(model, px[rows], data_config, size)
        grids[rows] = np.where(heat >= config.mask_threshold, heat, 0.0)
    n_prop = 0
    if config.propagate:
        # one prototype per spurious slice: its members' prediction-weighted vectors, averaged
        mpx = pixels(ws, members.path.tolist(), data_config.image_size)
        _, vecs = _pred_maps(model, mpx, data_config, size)
        protos = [vecs[(members.slice_id == s).to_numpy()].mean(0) for s in spurious]
        acts = _block_activations(model, px, data_config)
        sim = np.max([prototype_maps(acts, p, size) for p in protos], axis=0)
        carry = (sim >= config.propagate_threshold).astype(np.float32)
        fresh = (grids.reshape(len(grids), -1).max(1) == 0) & (carry.reshape(len(carry), -1).max(1) > 0)
        grids[fresh] = carry[fresh]
        n_prop = int(fresh.sum())
    return MaskPlan(grids, len(rows), n_prop, spurious)


def mislabel_fixes(ws: Workspace, run_id: str, model_id: str, policy: str) -> tuple[set[int], dict[int, int]]:
    """(image ids to drop, {image id: new label}) for the train members of slices annotated mislabeled (a
    slice also annotated spurious: its disputed members dropped unless ``relabel_to`` is given; module doc)."""
    if policy == "keep":
        return set(), {}
    cur = current_annotations(ws, run_id)
    bad = cur[cur.kind == "mislabeled"]
    if bad.empty:
        return set(), {}
    members = slice_members(ws, run_id)
    members = members[(members.split == "train") & members.slice_id.isin(bad.slice_id.astype(int))]
    disputed = ~members.correct.fillna(True).astype(bool)
    if policy == "drop":
        return set(members.loc[disputed, "image_id"].astype(int)), {}
    target = {int(s): None if pd.isna(t) else int(t) for s, t in zip(bad.slice_id, bad.relabel_to)}
    spurious = set(annotated_slices(ws, run_id, "spurious"))
    drop, relabel = set(), {}
    for m, doubt in zip(members.itertuples(index=False), disputed):
        to = target.get(int(m.slice_id))
        if to is None and int(m.slice_id) in spurious:  # the prediction is the spurious feature's: drop
            if doubt:
                drop.add(int(m.image_id))
            continue
        new = to if to is not None else int(m.pred)
        if pd.isna(m.label) or new != int(m.label):
            relabel[int(m.image_id)] = new
    return drop, relabel


def resolve_run(ws: Workspace, base_model_id: str, run_id: str | None) -> str:
    """``run_id``, else the model's latest slice run; refused (saying what to do) without annotations to act on."""
    run_id = run_id or latest_run(ws, base_model_id)
    if run_id is None:
        raise ValueError(f"no slice run of {base_model_id!r}; run `python -m jobs.slices --workspace {ws.root}` "
                         f"and annotate slices first")
    if not annotated_slices(ws, run_id, "spurious") and not annotated_slices(ws, run_id, "mislabeled"):
        raise ValueError(f"run {run_id!r} has no slice annotated spurious or mislabeled; annotate slices on the "
                         f"Slices page (or `python -m jobs.annotate_demo`) first")
    return run_id


def corm_fine_tune(ws: Workspace, *, base_model_id: str, run_id: str, config: CormConfig = CormConfig(),
                   train_config: TrainConfig = TrainConfig(), exclude_ids: frozenset[int] = frozenset(),
                   progress: Progress | None = None) -> tuple[FineTuned, dict]:
    """Fine-tune ``base_model_id`` with CoRM from the annotations of ``run_id``, in memory, never training
    on ``exclude_ids``; returns the model and a summary of what was masked, relabeled, dropped."""
    run_model = ws.scalar("SELECT model_id FROM slice_runs WHERE run_id = ?", [run_id])
    drop_ids, relabel = mislabel_fixes(ws, run_id, run_model, config.mislabeled)
    info: dict = {}

    def factory(df: pd.DataFrame, px: np.ndarray) -> LossFn:
        _, data_config = load_classifier(ws, run_model)
        plan = spurious_masks(ws, run_id, run_model, df, px, data_config, config, exclude_ids=exclude_ids)
        info.update(spurious_slices=plan.spurious_slices, n_member_masks=plan.n_member_masks,
                    n_propagated_masks=plan.n_propagated, n_train=len(df))
        return make_corm_loss(plan.grids, px.shape[1], config, seed=train_config.seed,
                              augment_images=train_config.augment)

    tuned = fine_tune(ws, base_model_id=base_model_id, selection_id=None, config=replace(train_config, augment=False),
                      epochs=config.epochs, loss_fn_factory=factory, drop_ids=drop_ids | set(exclude_ids),
                      relabel=relabel, progress=progress)
    return tuned, {"run_id": run_id, **info, "n_dropped": len(drop_ids), "n_relabeled": len(relabel),
                   "corm": asdict(config)}


def corm_retrain(ws: Workspace, *, base_model_id: str, run_id: str | None = None,
                 config: CormConfig = CormConfig(), train_config: TrainConfig = TrainConfig(),
                 progress: Progress | None = None) -> tuple[str, dict]:
    """Fine-tune ``base_model_id`` with CoRM from the annotations of ``run_id`` (default: the model's latest
    slice run) and register it (one setting, no choice: see core.scanner.mitigation_choice). Returns the
    new classifier's id and a summary of what was masked, relabeled, dropped."""
    t0 = time.perf_counter()
    run_id = resolve_run(ws, base_model_id, run_id)
    tuned, summary = corm_fine_tune(ws, base_model_id=base_model_id, run_id=run_id, config=config,
                                    train_config=train_config, progress=progress)
    model_id = new_model_id("corm")
    register_model(ws, **tuned.record(model_id, "corm", tuned.save(ws, model_id)))
    return model_id, {**summary, "seconds": round(time.perf_counter() - t0, 1)}
