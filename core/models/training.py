"""Training and fine-tuning classifiers on in-memory image arrays (CPU, fp32); the schedules they follow
are core.models.schedules.

:func:`fit` is the one training loop: SGD with momentum, cosine learning rate with warm-up, light
augmentation, optional per-image loss hook (used by CoRM mitigation). :func:`train_classifier` trains the
classifier under debug from the workspace's ``train`` split (fine-tuning it on ``train`` plus a debug-train set is
core.dcd.fine_tune). bf16 autocast is not used for training: on this CPU its backward
pass is slower than fp32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data.images import augment, fixed_views, pixels, to_tensor
from core.data.label_decisions import apply_label_decisions
from core.data.model_input import DataConfig
from core.data.splits import images_df, require_split
from core.models.catalog import new_model_id, register_model
from core.models.checkpoints import is_classifier_checkpoint, read_weights, save_checkpoint, weights_include_head
from core.models.config import ModelError
from core.models.device import current_device, model_back, model_to_device, to_device
from core.models.factory import create_model, default_data_config, load_checkpoint, model_from_checkpoint
from core.models.features import feature_dim
from core.models.memory import tune_allocator
from core.models.pretrained import resolve
from core.models.schedules import (  # noqa: F401  (TrainConfig and the schedules are used through here too)
    FINETUNE_EPOCH_CAP,
    PRETRAINED_SCHEDULE,
    SCRATCH_SCHEDULE,
    TrainConfig,
    default_image_size,
    default_schedule,
    finetune_schedule,
    initial_schedule,
    schedule_of,
)
from core.models.softmax_head import fit_head
from core.models.trunk import (
    CachedTrunk,
    cached_trunk,
    draw_views,
    freeze_early_stages,
    trains_on_views,
    unfreeze,
)
from core.progress import Progress, as_progress
from core.store.workspace import Workspace

# loss_fn(model, x, y, index) -> scalar loss; ``index`` are the rows of the batch in the training arrays.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


PROBE_WEIGHT_DECAY = 1e-2


def fit_linear_head(model: nn.Module, images: np.ndarray | None, labels: np.ndarray, data_config: DataConfig, *,
                    weight_decay: float = PROBE_WEIGHT_DECAY, trunk: CachedTrunk | None = None,
                    progress: Progress | None = None) -> bool:
    """Fit the model's linear head on its frozen penultimate features of ``images`` (multinomial logistic
    regression, L-BFGS, L2 ``weight_decay``), or of ``trunk``'s stored images as they are (view 0); False
    (nothing done) if the head is not one linear layer."""
    from core.models.inference import choose_precision, embed

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        return False
    _set_threads()
    model.eval()
    if trunk is not None:
        with torch.no_grad():
            feats = torch.cat([trunk.split.rest_features(torch.from_numpy(trunk.features[i:i + 256, 0]).float())
                               for i in range(0, len(trunk.features), 256)])
    else:
        check = choose_precision(model, images[:128], data_config, embedding=True)  # bf16 where it matches fp32
        feats = torch.from_numpy(embed(model, images, data_config, bf16=check.bf16, progress=progress)).float()
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    probe = fit_head(nn.Linear(feats.shape[1], head.out_features), feats, y, weight_decay=weight_decay, max_iter=200)
    with torch.no_grad():
        head.weight.copy_(probe.weight)
        head.bias.copy_(probe.bias)
    acc = float((probe(feats).argmax(1) == y).float().mean())
    print(f"linear probe on frozen features: train accuracy {acc:.3f}", flush=True)
    return True


def frozen_trunk(ws: Workspace, model: nn.Module, data_config: DataConfig, config: TrainConfig,
                 image_ids: Sequence[int], paths: Sequence[str], *,
                 progress: Progress | None = None) -> CachedTrunk | None:
    """The stored outputs of the stages ``config`` keeps frozen, for the training images (core.models.trunk),
    or None: train on pixels (the whole network trains, the cache is off, or the model cannot be cut)."""
    if config.trainable_stages is None:
        return None
    freeze_early_stages(model, config.trainable_stages)
    return cached_trunk(ws, model, data_config, image_ids, paths, progress=progress)


def _set_threads() -> None:
    """Every core for training, unless the user set ``OMP_NUM_THREADS`` (e.g. on a shared machine)."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def fit(model: nn.Module, images: np.ndarray | None, labels: np.ndarray, data_config: DataConfig,
        config: TrainConfig, *, loss_fn: LossFn | None = None, samples_per_epoch: int | None = None,
        sample_weights: np.ndarray | None = None, trunk: CachedTrunk | None = None,
        image_ids: Sequence[int] | None = None, progress: Progress | None = None) -> nn.Module:
    """Train ``model`` in place on uint8 ``images`` (N x H x W x 3) with integer ``labels``.

    With ``trunk`` (:func:`frozen_trunk`: the frozen stages' stored outputs for the same rows), ``images``
    is not needed: each step runs only the trainable rest on a random stored view of each image. A model with
    such frozen stages trains on the same views on pixels too (core.models.trunk.trains_on_views), drawn
    the same way from the images' ``image_ids`` (one per row): the cache never changes what is learnt.

    ``samples_per_epoch`` caps how many images an epoch visits (a fresh random subset each epoch), so that
    a huge added set (e.g. the whole pool) costs no more than a fixed compute budget. ``sample_weights``
    (one non-negative weight per image) draws each epoch's images with replacement in proportion to them.
    """
    if trunk is not None and loss_fn is not None:
        raise ValueError("a loss function of its own needs the whole model on pixels: give no trunk")
    if trunk is None and images is None:
        raise ValueError("fit needs the training images' pixels or their frozen trunk's features")
    n_images = len(trunk.features) if trunk is not None else len(images)
    if n_images != len(labels):
        raise ValueError(f"{n_images} images but {len(labels)} labels")
    if n_images == 0:
        raise ValueError("no training images")
    _set_threads()
    tune_allocator()  # the batches' activations reuse freed memory instead of fresh pages (core.models.memory)
    progress = as_progress(progress)
    gen = torch.Generator().manual_seed(config.seed)
    y_all = torch.tensor(np.asarray(labels, dtype=np.int64))
    per_epoch = min(n_images, samples_per_epoch or n_images)
    weights = None
    if sample_weights is not None:
        weights = torch.as_tensor(np.asarray(sample_weights, dtype=np.float64))
        if weights.shape != (n_images,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("sample_weights needs one non-negative weight per image, not all zero")
    steps_per_epoch = math.ceil(per_epoch / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)
    frozen = freeze_early_stages(model, config.trainable_stages)
    on_views = trunk is None and config.augment and trains_on_views(model)
    if on_views and (image_ids is None or len(image_ids) != n_images):
        unfreeze(model)
        raise ValueError("a model with frozen stages trains on its images' fixed views: give fit one image id "
                         "per training image (image_ids)")
    ids_all = np.asarray(image_ids, dtype=np.int64) if on_views else None
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warmup) if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))

    def default_loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(m(x), y, label_smoothing=config.label_smoothing)

    loss_fn = loss_fn or default_loss
    model_to_device(model)
    try:
        y_all = y_all.to(current_device())
        model.train()
        for module in frozen:  # frozen stages keep their (pretrained) BatchNorm statistics
            module.eval()
        step = 0
        for epoch in range(config.epochs):
            order = (torch.randperm(n_images, generator=gen)[:per_epoch] if weights is None
                     else torch.multinomial(weights, per_epoch, replacement=True, generator=gen))
            running = 0.0
            for b in range(steps_per_epoch):
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                y = y_all[idx.to(y_all.device)]
                if trunk is not None:
                    logits = trunk.split.rest(to_device(trunk.batch(idx, gen, config.augment)))
                    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                else:
                    x = to_tensor(images[idx.numpy()], data_config)
                    if on_views:
                        x = fixed_views(x, ids_all[idx.numpy()], draw_views(len(idx), gen))
                    elif config.augment:
                        x = augment(x, gen)
                    loss = loss_fn(model, to_device(x), y, idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                running += loss.item()
                progress.report(step / total, f"epoch {epoch + 1}/{config.epochs} loss {running / (b + 1):.3f}")
            print(f"epoch {epoch + 1}/{config.epochs} loss {running / steps_per_epoch:.4f}", flush=True)
    finally:
        model.eval()
        model_back(model)  # models are kept on the CPU between runs, also after a failed fit (core.models.device)
    unfreeze(model)
    return model


def class_index(ws: Workspace) -> int:
    n = int(ws.scalar("SELECT count(*) FROM classes"))
    if n < 2:
        raise ValueError("the workspace has fewer than 2 classes; ingest a dataset first")
    return n


def _checked_checkpoint(obj: dict, weights: str | Path, arch: str, classes: list[str]) -> tuple[nn.Module, str,
                                                                                             DataConfig]:
    """A DCD Studio classifier checkpoint given as ``weights``, checked against the workspace's classes:
    (model, its architecture, its data config)."""
    model, info = model_from_checkpoint(obj, source=weights)
    theirs = info.get("class_names")
    if int(info["num_classes"]) != len(classes):
        raise ModelError(f"{weights} is a classifier of {info['num_classes']} classes ({theirs}); this workspace "
                         f"has {len(classes)} ({classes}). Train one for this workspace instead (leave out "
                         f"--classifier-weights, or give backbone weights to fine-tune)")
    if theirs is not None and list(theirs) != list(classes):
        same = sorted(theirs) == sorted(classes)
        raise ModelError(f"{weights} was trained on the classes {theirs}, this workspace has {classes}"
                         + (" (the same classes in another order: its predictions would be permuted)" if same
                            else "") + "; use it on a workspace with those classes, or train a new classifier")
    if info["arch"] != arch:
        print(f"note: {weights} is a {info['arch']} classifier; using its architecture, not {arch}", flush=True)
    return model, info["arch"], info["data_config"]


def train_classifier(ws: Workspace, *, arch: str, weights: str | None = None, hub: bool = False,
                     image_size: int | None = None, config: TrainConfig | None = None,
                     model_id: str | None = None, progress: Progress | None = None) -> str:
    """Train (or load) the classifier under debug on ``train``; register it and make it current.

    With ``weights`` holding a complete classifier for this workspace's classes (a DCD Studio checkpoint
    whose class names are the workspace's, or a checkpoint whose head has as many outputs as there are
    classes), the model is used as is. With backbone-only weights (e.g. ImageNet), the head is new and the
    model is fine-tuned on ``train``. The classifier is registered and made current only once its saved
    checkpoint has loaded back and fits the workspace's classes.

    ``arch`` may name a pretrained backbone (core.models.pretrained). Without ``config`` / ``image_size``
    the schedule and resolution are :func:`default_schedule` / :func:`default_image_size` for a pretrained
    start (packaged, hub or backbone weights) or a start from scratch.
    """
    progress = as_progress(progress)
    requested, resolved = arch, resolve(arch, weights=weights, hub=hub)
    config = config or default_schedule(resolved.pretrained)
    num_classes = class_index(ws)
    classes = ws.class_names()
    torch.manual_seed(config.seed)  # the initial weights (a new head, or the whole model) follow --seed
    obj = read_weights(weights) if weights is not None else None
    if obj is not None and is_classifier_checkpoint(obj):
        model, arch, data_config = _checked_checkpoint(obj, weights, arch, classes)
        trained_already = True
    else:
        model = create_model(arch, num_classes=num_classes, weights=weights, hub=hub)
        arch = resolved.arch
        data_config = default_data_config(model, image_size or default_image_size(resolved.pretrained))
        trained_already = obj is not None and weights_include_head(model, obj, num_classes)  # no second read
        if trained_already:
            print(f"note: {weights} has a head of {num_classes} outputs and is used as is; its class order cannot "
                  f"be checked and is taken to be the workspace's: {classes}", flush=True)
    del obj
    model_id = model_id or new_model_id("baseline")
    if not trained_already:
        train = apply_label_decisions(ws, images_df(ws, ["train"]))  # a person's label-issue decisions
        require_split(train, "train", "to train the classifier")
        if train["label"].isna().any():
            raise ValueError("some train images have no label")
        # From scratch the whole network trains (random stages are not worth freezing); the schedule's
        # trainable_stages is recorded and applies to the fine-tunings of its lineage.
        first = config if resolved.pretrained else replace(config, trainable_stages=None)
        trunk = frozen_trunk(ws, model, data_config, first, train.image_id.tolist(), train.path.tolist(),
                             progress=progress.span(0, 0.2))
        px = None if trunk is not None else pixels(ws, train.path.tolist(), data_config.image_size,
                                                    progress=progress.span(0, 0.1))
        if config.probe_first and resolved.pretrained:
            fit_linear_head(model, px, train.label.to_numpy(), data_config, trunk=trunk,
                            progress=progress.span(0.1, 0.2))
        fit(model, px, train.label.to_numpy(), data_config, first, trunk=trunk, image_ids=train.image_id.tolist(),
            progress=progress.span(0.2, 1.0))
    ckpt = save_verified(model, ws, model_id, arch=arch, num_classes=num_classes, data_config=data_config)
    register_model(ws, model_id=model_id, role="classifier", arch=arch, method="baseline",
                   checkpoint=str(ckpt), num_classes=num_classes, embed_dim=feature_dim(model),
                   config={"requested": requested, "weights": weights, "hub": hub, "pretrained": resolved.pretrained,
                           "data_config": data_config.to_dict(),
                           "train": asdict(config), "trained_here": not trained_already}, make_current=True)
    return model_id


def save_verified(model: nn.Module, ws: Workspace, model_id: str, *, arch: str, num_classes: int,
                  data_config: DataConfig) -> Path:
    """Save a classifier's checkpoint under ``artifacts/models`` and load it back: the path of a checkpoint
    that is known to load and to have ``num_classes`` outputs for the workspace's class names."""
    ckpt = save_checkpoint(model, ws.artifact_dir("models") / model_id, arch=arch, num_classes=num_classes,
                           data_config=data_config, class_names=ws.class_names())
    try:
        back, info = load_checkpoint(ckpt)
        out = back(torch.zeros(1, 3, data_config.image_size, data_config.image_size))
        if out.shape[-1] != num_classes or info["class_names"] != ws.class_names():
            raise ModelError(f"gives {out.shape[-1]} outputs for {num_classes} classes")
    except Exception as exc:
        ckpt.unlink(missing_ok=True)
        raise ModelError(f"the trained classifier {model_id} did not load back from its checkpoint ({exc}); "
                         f"nothing was registered") from exc
    return ckpt
