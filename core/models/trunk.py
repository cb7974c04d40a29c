"""The frozen trunk of a classifier, computed once per image and view, and the trainable rest run on it.

A classifier trained with ``trainable_stages`` keeps its early stages frozen, BatchNorm statistics included
(the pretrained default trains only its last 2 stages and head; make run's demo, a network trained whole from
scratch, retrains only its head in every fix: ``0``): their output for an image is the same in every epoch,
every fine-tuning of its lineage (the DCD arms, the fix check's folds) and every evaluation.
:func:`split_trunk` cuts such a model into its **trunk** (the frozen prefix) and its **rest**, checked to
give the model's own outputs; :class:`TrunkCache` keeps the trunk's outputs in the workspace's artifacts
(``artifacts/trunk/<key>/``, float16, keyed by the trunk's weights, the input resolution and normalisation),
one row per image and view (core.data.images.fixed_view: view 0 the image as it is, the others the flips and
shifts training draws), and computes only what it lacks.

Training (core.models.training.fit) then draws a random stored view of each image instead of augmenting its
pixels, and evaluation runs only the rest. ``$DCD_TRUNK_CACHE=0`` turns the cache off (the whole network on
pixels); ``$DCD_TRUNK_CACHE_MEMORY`` (bytes) bounds the features one training run holds in memory (default
:data:`MEMORY_BUDGET`); above it, training runs on pixels. On pixels such a model trains on the very views the
cache would hold, drawn the same way (:func:`trains_on_views`): the cache changes the time a run takes, not
what it learns.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.data.images import fixed_view, pixels, to_tensor
from core.data.model_input import DataConfig
from core.models.device import on_device, to_device
from core.models.inference import PrecisionCheck, choose_precision, predict_probs
from core.models.memory import forward_in_micro_batches
from core.progress import Progress, as_progress
from core.store.files import atomic_path
from core.store.workspace import Workspace

CACHE_ENV = "DCD_TRUNK_CACHE"
MEMORY_ENV = "DCD_TRUNK_CACHE_MEMORY"
MEMORY_BUDGET = 4 << 30
#: Views stored per training image: as it is, mirrored, and two shifts (one mirrored).
TRAIN_VIEWS = 4
CACHE_VERSION = 1
BATCH = 64


def cache_enabled() -> bool:
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def memory_budget() -> int:
    value = os.environ.get(MEMORY_ENV)
    if not value:
        return MEMORY_BUDGET
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"${MEMORY_ENV} must be a number of bytes, got {value!r}") from None


def freeze_early_stages(model: nn.Module, trainable_stages: int | None) -> list[nn.Module]:
    """Freeze all but the last ``trainable_stages`` stages and the head (timm's ``group_matcher``); returns
    the frozen modules, which must stay in eval mode while training. A model without stage groups (or
    ``None``) is left whole."""
    if trainable_stages is None or not hasattr(model, "group_matcher"):
        return []
    from timm.models import group_parameters

    groups = list(group_parameters(model, model.group_matcher(coarse=True)).values())
    head = getattr(model, "get_classifier", lambda: None)()
    head_names = {f"{n}" for n, p in model.named_parameters() if head is not None and
                  any(p is q for q in head.parameters())}
    stages = [g for g in groups if not set(g) <= head_names]
    frozen_names = {n for g in stages[:max(0, len(stages) - trainable_stages)] for n in g}
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen_names)
    return [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))
            and not any(p.requires_grad for p in m.parameters(recurse=False))]


def unfreeze(model: nn.Module) -> None:
    """Undo :func:`freeze_early_stages`: every parameter trainable again (as a model is kept between runs)."""
    for param in model.parameters():
        param.requires_grad_(True)



class _Sequence(nn.Module):
    """Modules run one after the other, then ``tail`` (a callable over the model, not a submodule)."""

    def __init__(self, modules: Sequence[nn.Module], tail: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self._tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return self._tail(x) if self._tail is not None else x


def _stages(model: nn.Module) -> tuple[list[nn.Module], Callable[[torch.Tensor, bool], torch.Tensor]] | None:
    """The model's forward pass as a list of modules run in order, then a tail (the head, with ``pre_logits``):
    for the families whose ``forward_features`` is a plain chain (timm's EfficientNet / MobileNet and
    ResNet, the CIFAR ResNets of core.models.cifar_resnet); None for the others, which train and evaluate on
    pixels."""
    name = type(model).__name__
    if name in ("EfficientNet", "MobileNetV3") and hasattr(model, "blocks"):
        chain = [model.conv_stem, model.bn1, *model.blocks]
        if name == "EfficientNet":
            chain += [model.conv_head, model.bn2]
    elif name == "ResNet" and hasattr(model, "layer4"):
        chain = [model.conv1, model.bn1, model.act1, model.maxpool,
                 model.layer1, model.layer2, model.layer3, model.layer4]
    elif name == "CifarResNet":
        chain = [model.conv1, model.bn1, nn.ReLU(), model.layer1, model.layer2, model.layer3]
    else:
        return None
    return chain, lambda x, pre_logits=False: model.forward_head(x, pre_logits=pre_logits)


@dataclass
class TrunkSplit:
    """A classifier cut after its frozen prefix: ``trunk(pixels) -> features``, ``rest(features) -> logits``
    (the same modules as the model: training the rest trains the model)."""

    trunk: nn.Module
    rest: nn.Module
    rest_features: Callable[[torch.Tensor], torch.Tensor]  # features -> penultimate embedding
    key: str  # the trunk's weights, resolution and normalisation: what its stored outputs are keyed by


def split_trunk(model: nn.Module, data_config: DataConfig) -> TrunkSplit | None:
    """``model`` cut after its longest prefix of modules with no trainable parameter (those frozen by
    core.models.training.freeze_early_stages), or None where there is none, the family is not a plain chain,
    or the cut model does not give the model's own outputs."""
    found = _stages(model)
    n_frozen = _frozen_prefix(found[0]) if found is not None else 0
    if n_frozen == 0:
        return None
    chain, head = found
    trunk = _Sequence(chain[:n_frozen]).eval()
    rest = _Sequence(chain[n_frozen:], head)
    rest_features = _Sequence(chain[n_frozen:], lambda x: head(x, pre_logits=True))
    if not _same_outputs(model, trunk, rest, data_config):
        return None
    return TrunkSplit(trunk, rest, rest_features, _key(trunk, data_config))


def _frozen_prefix(chain: Sequence[nn.Module]) -> int:
    """How many modules at the start of ``chain`` have no trainable parameter."""
    n_frozen = 0
    for module in chain:
        if any(p.requires_grad for p in module.parameters()):
            break
        n_frozen += 1
    return n_frozen


def trains_on_views(model: nn.Module) -> bool:
    """Whether ``model`` (its early stages already frozen) trains on its images' fixed views
    (core.data.images.fixed_views) rather than on random flips and shifts: a model of a family
    :func:`split_trunk` cuts, with a frozen first stage, whether or not its trunk's outputs are cached."""
    found = _stages(model)
    return found is not None and _frozen_prefix(found[0]) > 0


def draw_views(n: int, generator: torch.Generator, views: int = TRAIN_VIEWS) -> torch.Tensor:
    """The view each of ``n`` training images is shown in this step: the one draw the cached and the pixel
    path share."""
    return torch.randint(0, views, (n,), generator=generator)


def _same_outputs(model: nn.Module, trunk: nn.Module, rest: nn.Module, data_config: DataConfig) -> bool:
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(2, 3, data_config.image_size, data_config.image_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return bool(torch.allclose(model(x), rest(trunk(x)), atol=1e-4, rtol=1e-4))
    finally:
        model.train(was_training)


def _key(trunk: nn.Module, data_config: DataConfig) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{data_config.image_size}|{data_config.mean}|{data_config.std}".encode())
    for name, tensor in sorted(trunk.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class TrunkCache:
    """A trunk's outputs for the workspace's images, one float16 row per (image, view), stored as
    append-only chunk files under ``artifacts/trunk/<key>/``: ``<uuid>.feats.npy`` (images x views x C x H x
    W), ``<uuid>.views.npy`` (which view each column is; without it, views 0, 1, ...) and ``<uuid>.ids.npy``,
    written last: concurrent jobs never write the same file, and a chunk is read only once complete. A view
    is computed once per image whichever request needs it first (evaluation's view 0, training's four)."""

    def __init__(self, ws: Workspace, split: TrunkSplit, data_config: DataConfig):
        self.ws = ws
        self.split = split
        self.data_config = data_config
        self.folder = ws.artifacts / "trunk" / split.key

    def _stored(self) -> dict[int, dict[int, tuple[np.ndarray, int, int]]]:
        """image id -> view -> (the memory-mapped chunk holding it, its row, its column)."""
        where: dict[int, dict[int, tuple[np.ndarray, int, int]]] = {}
        if not self.folder.is_dir():
            return where
        for ids_file in sorted(self.folder.glob("*.ids.npy")):
            stem = ids_file.name.removesuffix(".ids.npy")
            try:
                ids = np.load(ids_file)
                feats = np.load(self.folder / f"{stem}.feats.npy", mmap_mode="r")
                views_file = self.folder / f"{stem}.views.npy"
                views = np.load(views_file).tolist() if views_file.exists() else list(range(feats.shape[1]))
            except (OSError, ValueError):
                continue  # a chunk being written or damaged: computed again
            if len(feats) != len(ids) or feats.shape[1] != len(views):
                continue
            for row, image_id in enumerate(ids.tolist()):
                have = where.setdefault(int(image_id), {})
                for col, view in enumerate(views):
                    have.setdefault(int(view), (feats, row, col))
        return where

    def features(self, image_ids: Sequence[int], paths: Sequence[str], views: int, *,
                 progress: Progress | None = None) -> np.ndarray:
        """The trunk's outputs for ``image_ids`` (with their ``paths``): N x views x C x H x W float16, rows in
        the order given; the (image, view) pairs the cache lacks are computed (decoding only those images) and
        stored."""
        progress = as_progress(progress)
        ids = [int(i) for i in image_ids]
        stored = self._stored()
        lacking: dict[tuple[int, ...], list[int]] = {}  # the views lacked -> the images lacking just those
        for i in dict.fromkeys(ids):
            have = stored.get(i, {})
            need = tuple(v for v in range(views) if v not in have)
            if need:
                lacking.setdefault(need, []).append(i)
        total = sum(len(need) * len(group) for need, group in lacking.items())
        done = 0
        path_of = dict(zip(ids, paths))
        for need, group in lacking.items():
            span = progress.span(0.95 * done / total, 0.95 * (done + len(need) * len(group)) / total)
            new = self._compute(group, [path_of[i] for i in group], list(need), span)
            self._save(group, list(need), new)
            for row, i in enumerate(group):
                stored.setdefault(i, {}).update({v: (new, row, col) for col, v in enumerate(need)})
            done += len(need) * len(group)
        first = next(iter(stored[ids[0]].values()))[0] if ids else np.zeros((0, views, 1, 1, 1), np.float16)
        out = np.empty((len(ids), views, *first.shape[2:]), np.float16)
        for row, i in enumerate(ids):
            have = stored[i]
            for view in range(views):
                chunk, at, col = have[view]
                out[row, view] = chunk[at, col]
        progress.report(1.0, force=True)
        return out

    def _compute(self, image_ids: list[int], paths: list[str], views: list[int], progress: Progress) -> np.ndarray:
        data_config = self.data_config
        px = pixels(self.ws, paths, data_config.image_size, progress=progress.span(0, 0.2))
        out = None
        done = 0
        total = len(image_ids) * len(views)
        self.split.trunk.eval()
        with torch.inference_mode(), on_device(self.split.trunk):
            for start in range(0, len(image_ids), BATCH):
                x = to_tensor(px[start:start + BATCH], data_config)
                batch_ids = image_ids[start:start + BATCH]
                for col, view in enumerate(views):
                    f = forward_in_micro_batches(self.split.trunk, to_device(fixed_view(x, batch_ids, view)))
                    f = f.to(torch.float16).cpu().numpy()
                    if out is None:
                        out = np.empty((len(image_ids), len(views), *f.shape[1:]), np.float16)
                    out[start:start + len(f), col] = f
                    done += len(f)
                    progress.report(0.2 + 0.8 * done / total, f"frozen trunk {done}/{total} image views")
        return out

    def _save(self, image_ids: list[int], views: list[int], feats: np.ndarray) -> None:
        if self.ws.read_only:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex[:12]
        with atomic_path(self.folder / f"{name}.feats.npy") as tmp:
            np.save(tmp, feats)
        with atomic_path(self.folder / f"{name}.views.npy") as tmp:
            np.save(tmp, np.asarray(views, np.int64))
        with atomic_path(self.folder / f"{name}.ids.npy") as tmp:
            np.save(tmp, np.asarray(image_ids, np.int64))


@dataclass
class CachedTrunk:
    """What :func:`core.models.training.fit` trains on instead of pixels: the split model and its trunk's
    stored views of every training image (N x views x C x H x W float16, rows as the training arrays)."""

    split: TrunkSplit
    features: np.ndarray

    @property
    def views(self) -> int:
        return int(self.features.shape[1])

    def batch(self, rows: torch.Tensor, generator: torch.Generator, augment: bool) -> torch.Tensor:
        """The rows' features, each in a view drawn at random (view 0, the image as it is, without augmentation)."""
        rows_np = rows.numpy()
        if augment:
            view = draw_views(len(rows_np), generator, self.views).numpy()
        else:
            view = np.zeros(len(rows_np), np.int64)
        return torch.from_numpy(self.features[rows_np, view].astype(np.float32))


def cached_trunk(ws: Workspace, model: nn.Module, data_config: DataConfig, image_ids: Sequence[int],
                 paths: Sequence[str], *, views: int = TRAIN_VIEWS,
                 progress: Progress | None = None) -> CachedTrunk | None:
    """The frozen trunk of ``model`` (its early stages already frozen) on the training images, or None (train
    on pixels) when the cache is off, the model cannot be cut, or the features would not fit the memory
    budget (said so)."""
    if not cache_enabled() or not len(image_ids):
        return None
    split = split_trunk(model, data_config)
    if split is None:
        return None
    with torch.no_grad():
        probe = split.trunk.eval()(torch.zeros(1, 3, data_config.image_size, data_config.image_size))
    need = len(image_ids) * views * probe[0].numel() * 2
    if need > memory_budget():
        print(f"note: the frozen trunk's features of {len(image_ids)} images would take {need / 2**30:.1f} GiB, "
              f"over the {memory_budget() / 2**30:.1f} GiB budget (${MEMORY_ENV}): training on pixels", flush=True)
        return None
    feats = TrunkCache(ws, split, data_config).features(image_ids, paths, views, progress=progress)
    return CachedTrunk(split, feats)


def trunk_probs(ws: Workspace, model: nn.Module, data_config: DataConfig, trainable_stages: int | None,
                image_ids: Sequence[int], paths: Sequence[str], *, progress: Progress | None = None) -> np.ndarray | None:
    """Class probabilities of ``model`` (eval mode) from its cached frozen trunk (view 0): the stages its
    lineage's schedule never trains (``trainable_stages``); None when it has none to reuse (evaluate on pixels)."""
    if not cache_enabled() or trainable_stages is None or not len(image_ids):
        return None
    freeze_early_stages(model, trainable_stages)
    try:
        split = split_trunk(model, data_config)
    finally:
        unfreeze(model)
    if split is None:
        return None
    progress = as_progress(progress)
    feats = TrunkCache(ws, split, data_config).features(image_ids, paths, 1, progress=progress.span(0, 0.8))
    model.eval()
    outs = []
    with torch.inference_mode(), on_device(model):
        for start in range(0, len(feats), 256):
            outs.append(split.rest(to_device(torch.from_numpy(feats[start:start + 256, 0]).float())).cpu())
    return torch.softmax(torch.cat(outs), dim=1).numpy()


def classifier_probs(ws: Workspace, model: nn.Module, data_config: DataConfig, image_ids: Sequence[int],
                     paths: Sequence[str], *, trainable_stages: int | None, allow_bf16: bool = True,
                     progress: Progress | None = None) -> tuple[np.ndarray, PrecisionCheck]:
    """Class probabilities of a classifier whose lineage trains only its last ``trainable_stages`` stages, and
    the precision they were computed at: from its frozen trunk's stored outputs where it has one
    (:func:`trunk_probs`, fp32), else on pixels (bf16 where it matches fp32 and ``allow_bf16``)."""
    progress = as_progress(progress)
    probs = trunk_probs(ws, model, data_config, trainable_stages, image_ids, paths, progress=progress)
    if probs is not None:
        return probs, PrecisionCheck(False, "fp32, on the frozen trunk's stored outputs")
    px = pixels(ws, list(paths), data_config.image_size, progress=progress.span(0, 0.3))
    check = choose_precision(model, px[:128], data_config, embedding=False, allow_bf16=allow_bf16)
    return predict_probs(model, px, data_config, bf16=check.bf16, progress=progress.span(0.3, 1.0)), check
