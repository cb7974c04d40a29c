"""Attribution maps and attribution-weighted feature vectors (AttributionScanner, phase 1).

For every image the classifier's attribution map says where it looks; the activations of the last conv
block, weighted by that map and pooled, give the **attribution-weighted feature vector** that the slice
finder clusters (core.scanner.runs).

Methods (``METHODS``):

- ``gradcam``: captum ``LayerGradCam`` on ``core.models.factory.last_conv_block(model)`` (ReLU'd). For ViTs
  (token outputs ``N x T x C``), Grad-CAM on tokens: channel weights are the token-averaged gradients, the
  map is the ReLU of the weighted sum over channels for each patch token (taken at the last block's input
  norm, since its output's patch tokens do not reach a class-token head), laid out on the patch grid.
- ``integrated_gradients``: captum ``IntegratedGradients`` in input space (baseline: the mean image, 0 after
  normalisation), absolute value summed over colour channels. Finer than Grad-CAM at small resolutions, and
  ``n_steps`` times slower.

Every map is average-pooled (or bilinearly resized) to ``heatmap_size`` x ``heatmap_size`` and stored
flattened; the map is scaled to [0, 1] per image. The vector is
``sum_p w_p * A[:, p]`` with ``w = relu(map) / sum(relu(map))`` over the last block's positions ``p``
(a uniform map if the attribution is all zero): a C-dimensional weighted mean of the block's activations.

The attribution target is the image's label where it has one (``target="label"``: errors then show where
the model looks when wrong), or the model's prediction (``target="pred"``).

bf16 autocast is used only when a sample's maps agree with fp32 (``MIN_MAP_CORRELATION``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from core.data.images import iter_decoded, pixels, to_tensor
from core.data.model_input import DataConfig
from core.data.splits import images_df
from core.engines.ray_data import RayConfig, map_images_to_arrays
from core.models.catalog import load_classifier, require_classifier
from core.models.device import on_device
from core.models.factory import last_conv_block
from core.models.inference import has_bf16, predict_probs
from core.progress import Progress, as_progress
from core.store.workspace import Workspace, replace_model_rows

METHODS = ("gradcam", "integrated_gradients")
TARGETS = ("label", "pred")
DEFAULT_SPLITS = ("train", "test", "error_heldout")
MIN_MAP_CORRELATION = 0.95


@dataclass(frozen=True)
class AttributionConfig:
    """How attributions are computed.

    method: one of ``METHODS``. target: ``label`` (the image's label, else the prediction) or ``pred``.
    heatmap_size: side of the stored square map. batch_size: images per batch (16: a batch's activations at
    128 px stay within what the allocator reuses, core.models.memory). ig_steps: integration steps of
    Integrated Gradients. allow_bf16: try bf16 autocast (kept only if it agrees with fp32)."""

    method: str = "gradcam"
    target: str = "label"
    heatmap_size: int = 7
    batch_size: int = 16
    ig_steps: int = 16
    allow_bf16: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"attribution method must be one of {METHODS}, got {self.method!r}")
        if self.target not in TARGETS:
            raise ValueError(f"attribution target must be one of {TARGETS}, got {self.target!r}")
        if not 1 <= self.heatmap_size <= 64:
            raise ValueError(f"heatmap_size must be between 1 and 64, got {self.heatmap_size}")
        if self.batch_size < 1 or self.ig_steps < 1:
            raise ValueError("batch_size and ig_steps must be at least 1")


@dataclass
class AttributionResult:
    heatmaps: np.ndarray  # N x s x s float32 in [0, 1]
    vectors: np.ndarray  # N x C float32
    bf16: bool
    precision_reason: str


# -- the maps --------------------------------------------------------------------------------------

def _is_token_layer(out: torch.Tensor) -> bool:
    return out.dim() == 3


def _tokens_to_grid(t: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """N x T x C tokens -> N x C x h x w, dropping the prefix (class/register) tokens."""
    prefix = int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))
    patches = t[:, prefix:, :]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"cannot lay {patches.shape[1]} tokens on a square grid; Grad-CAM on tokens needs a "
                         f"square patch grid (use method='integrated_gradients')")
    return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)


class _Capture:
    """Forward hook keeping the layer's last output."""

    def __init__(self, layer: nn.Module):
        self.out: torch.Tensor | None = None
        self._h = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.out = output

    def close(self) -> None:
        self._h.remove()


def _gradcam_tokens(model: nn.Module, layer: nn.Module, x: torch.Tensor,
                    targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cap = _Capture(layer)
    try:
        logits = model(x)
        acts = cap.out
        score = logits.gather(1, targets.view(-1, 1)).sum()
        grads = torch.autograd.grad(score, acts)[0]
    finally:
        cap.close()
    a = _tokens_to_grid(acts.detach().float(), model)
    g = _tokens_to_grid(grads.float(), model)
    weights = g.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True))
    return cam, a


def _gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor,
             targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps N x 1 x h x w, activations N x C x h x w) of one batch."""
    from captum.attr import LayerGradCam

    with torch.no_grad():
        probe = _Capture(layer)
        try:
            model(x[:1])
            token = _is_token_layer(probe.out)
        finally:
            probe.close()
    if token:
        # A ViT's last block feeds only the class token to the head, so its patch tokens get no gradient:
        # attribute to the tokens entering the block's attention (its first norm), as is usual for ViTs.
        return _gradcam_tokens(model, getattr(layer, "norm1", layer), x, targets)
    cap = _Capture(layer)
    try:
        cam = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
        acts = cap.out
    finally:
        cap.close()
    return cam.detach().float(), acts.detach().float()


def _activations(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    cap = _Capture(layer)
    try:
        with torch.no_grad():
            model(x)
        acts = cap.out.detach().float()
    finally:
        cap.close()
    return _tokens_to_grid(acts, model) if _is_token_layer(acts) else acts


def _integrated_gradients(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                          steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=targets,
                                                n_steps=steps, internal_batch_size=len(x))
    cam = attr.detach().float().abs().sum(1, keepdim=True)
    return cam, _activations(model, layer, x)


def _resize_map(cam: torch.Tensor, size: int) -> torch.Tensor:
    """N x 1 x h x w -> N x 1 x size x size (area average when shrinking, bilinear when growing)."""
    if cam.shape[-1] >= size and cam.shape[-2] >= size:
        return F.adaptive_avg_pool2d(cam, size)
    return F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)


def _normalise_maps(cam: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1] by its maximum (all-zero maps stay zero)."""
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (cam / peak).clamp(0, 1)


def weighted_vectors(cam: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """Attribution-weighted feature vectors: the activations' mean over positions weighted by the map.

    ``cam`` N x 1 x h x w (any resolution; resized to the activations' grid), ``acts`` N x C x h' x w'.
    A map that is zero everywhere weights all positions equally.
    """
    w = F.relu(F.adaptive_avg_pool2d(cam, acts.shape[-2:]) if cam.shape[-2:] != acts.shape[-2:] else cam)
    w = w.flatten(1)
    total = w.sum(1, keepdim=True)
    uniform = torch.full_like(w, 1.0 / w.shape[1])
    w = torch.where(total > 1e-12, w / total.clamp_min(1e-12), uniform)
    return torch.einsum("np,ncp->nc", w, acts.flatten(2))


def attribute_batch(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, *,
                    config: AttributionConfig = AttributionConfig(), layer: nn.Module | None = None,
                    bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Maps (N x s x s, in [0, 1]) and attribution-weighted vectors (N x C) of one normalised batch."""
    layer = layer if layer is not None else last_conv_block(model)
    model.eval()
    device = next(model.parameters()).device  # the process's device, or a Ray actor's own
    x, targets = x.to(device), targets.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        if config.method == "gradcam":
            cam, acts = _gradcam(model, layer, x, targets)
        else:
            cam, acts = _integrated_gradients(model, layer, x, targets, config.ig_steps)
    vec = weighted_vectors(cam, acts)
    maps = _normalise_maps(_resize_map(cam, config.heatmap_size))[:, 0]
    return maps.detach().float().cpu().numpy(), vec.detach().float().cpu().numpy()


def _check_bf16(model: nn.Module, layer: nn.Module, sample: torch.Tensor, targets: torch.Tensor,
                config: AttributionConfig) -> tuple[bool, str]:
    if not config.allow_bf16:
        return False, "bf16 disabled"
    if not has_bf16():
        return False, "this device has no native bf16"
    if len(sample) < 8:
        return False, "too few images to check bf16 against fp32"
    ref, _ = attribute_batch(model, sample, targets, config=config, layer=layer, bf16=False)
    low, _ = attribute_batch(model, sample, targets, config=config, layer=layer, bf16=True)
    a = ref.reshape(len(ref), -1) - ref.reshape(len(ref), -1).mean(1, keepdims=True)
    b = low.reshape(len(low), -1) - low.reshape(len(low), -1).mean(1, keepdims=True)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    corr = float(np.mean(np.where(denom > 0, (a * b).sum(1) / np.maximum(denom, 1e-12), 1.0)))
    return corr >= MIN_MAP_CORRELATION, f"map correlation bf16 vs fp32 {corr:.3f}"


def compute_attributions(model: nn.Module, images: np.ndarray, data_config: DataConfig,
                         targets: np.ndarray, *, config: AttributionConfig = AttributionConfig(),
                         progress: Progress | None = None) -> AttributionResult:
    """Maps and vectors of uint8 ``images`` (N x H x W x 3) for the classes ``targets`` (N ints), batched."""
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    if len(images) == 0:
        raise ValueError("no images to attribute")
    layer = last_conv_block(model)
    model.eval()
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    n_check = min(32, len(images))
    with on_device(model):
        bf16, reason = _check_bf16(model, layer, to_tensor(images[:n_check], data_config), t[:n_check], config)
        starts = range(0, len(images), config.batch_size)
        parts = [attribute_batch(model, to_tensor(images[s:s + config.batch_size], data_config),
                                 t[s:s + config.batch_size], config=config, layer=layer, bf16=bf16)
                 for s in as_progress(progress).iter(starts, total=len(starts), desc=f"{config.method}", unit="batch")]
    return AttributionResult(np.concatenate([m for m, _ in parts]), np.concatenate([v for _, v in parts]), bf16, reason)


# -- the workspace job --------------------------------------------------------------------------------

def _stored_predictions(ws: Workspace, model_id: str, df: pd.DataFrame) -> np.ndarray | None:
    """The model's stored predictions for ``df``'s images, or None if any is missing."""
    stored = ws.df("SELECT image_id, pred FROM predictions WHERE model_id = ? AND image_id IN "
                   "(SELECT unnest(?::BIGINT[]))", [model_id, df.image_id.astype(int).tolist()])
    pred = df[["image_id"]].merge(stored, on="image_id", how="left")["pred"]
    return None if pred.isna().any() else pred.astype(int).to_numpy()


def _targets(df: pd.DataFrame, pred: np.ndarray, config: AttributionConfig) -> np.ndarray:
    """The class to attribute: the label where known (``target="label"``), else the prediction (-1: not known yet)."""
    if config.target == "label":
        return np.where(df.label.notna(), df.label.fillna(0).astype(int), pred)
    return pred


def _predicted_where_missing(model: nn.Module, x: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """``targets`` with each -1 replaced by the model's (fp32) prediction for that row of the batch ``x``."""
    targets = np.asarray(targets, np.int64)
    if not (targets < 0).any():
        return targets
    with torch.inference_mode():  # on the model's device (a Ray actor's GPU)
        return np.where(targets < 0, model(x.to(next(model.parameters()).device)).argmax(1).cpu().numpy(), targets)


@dataclass
class AttributeTask:
    """Attributions of one batch on an engine's worker (core.models.tasks): columns ``image_id``,
    ``heatmap`` (flattened), ``vector``; a ``target`` of -1 is the model's prediction."""

    model: nn.Module
    data_config: DataConfig
    config: AttributionConfig
    bf16: bool = False

    def setup(self, device: str) -> None:
        self.device = device
        self.model = self.model.to(device).eval()

    def __call__(self, pixels: np.ndarray, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not hasattr(self, "device"):
            self.setup("cpu")
        x = to_tensor(pixels, self.data_config).to(self.device)
        targets = _predicted_where_missing(self.model, x, batch["target"])
        maps, vecs = attribute_batch(self.model, x, torch.as_tensor(targets), config=self.config, bf16=self.bf16)
        return {"image_id": np.asarray(batch["image_id"], np.int64), "heatmap": maps.reshape(len(maps), -1),
                "vector": vecs}


def _attribute_on_ray(ws: Workspace, model: nn.Module, data_config: DataConfig, df: pd.DataFrame,
                      targets: np.ndarray, config: AttributionConfig, ray: RayConfig,
                      progress: Progress) -> AttributionResult:
    """:func:`compute_attributions` on Ray Data: the same bf16 check on the first images, then the batches."""
    paths = df.path.tolist()
    n_check = min(32, len(df))
    sample = to_tensor(next(iter_decoded(paths[:n_check], data_config.image_size, chunk=n_check)), data_config)
    t_check = _predicted_where_missing(model, sample, targets[:n_check])
    bf16, reason = _check_bf16(model, last_conv_block(model), sample, torch.as_tensor(t_check), config)
    frame = pd.DataFrame({"image_id": df.image_id.to_numpy(np.int64), "path": paths, "target": targets})
    out, _ = map_images_to_arrays(frame, AttributeTask(model, data_config, config, bf16),
                                  image_size=data_config.image_size, config=ray, batch_size=config.batch_size,
                                  progress=progress)
    size = config.heatmap_size
    return AttributionResult(out["heatmap"].reshape(-1, size, size).astype(np.float32),
                             out["vector"].astype(np.float32), bf16, reason)


def attribute(ws: Workspace, model_id: str | None = None, *, splits: Sequence[str] = DEFAULT_SPLITS,
              config: AttributionConfig = AttributionConfig(), ray: RayConfig | None = None,
              progress: Progress | None = None) -> dict:
    """Compute and store the attributions of ``model_id`` (default: the current classifier) on ``splits``
    (with ``ray``: on Ray Data, core.engines.ray_data).

    Replaces the model's earlier attributions of those images in one short transaction. Returns a summary
    ``{"model_id", "n", "method", "target", "heatmap_size", "dim", "precision", "seconds"}``.
    """
    progress = as_progress(progress)
    t0 = time.perf_counter()
    model_id = require_classifier(ws, model_id, purpose="attribute")
    model, data_config = load_classifier(ws, model_id)
    df = images_df(ws, list(splits))
    if df.empty:
        raise ValueError(f"no images in splits {list(splits)}")
    pred = _stored_predictions(ws, model_id, df)
    if ray is None:
        px = pixels(ws, df.path.tolist(), data_config.image_size, progress=progress.span(0, 0.1))
        pred = pred if pred is not None else predict_probs(model, px, data_config).argmax(1)
        res = compute_attributions(model, px, data_config, _targets(df, pred, config), config=config,
                                   progress=progress.span(0.1, 0.95))
    else:
        pred = pred if pred is not None else np.full(len(df), -1, np.int64)
        res = _attribute_on_ray(ws, model, data_config, df, _targets(df, pred, config), config, ray,
                                progress.span(0, 0.95))
    method = f"{config.method}:{config.target}"
    table = pa.table({
        "model_id": pa.array([model_id] * len(df)),
        "image_id": pa.array(df.image_id.to_numpy(np.int64)),
        "method": pa.array([method] * len(df)),
        "heatmap_size": pa.array(np.full(len(df), config.heatmap_size, np.int32)),
        "heatmap": pa.array(list(res.heatmaps.reshape(len(df), -1)), type=pa.list_(pa.float32())),
        "vector": pa.array(list(res.vectors), type=pa.list_(pa.float32())),
    })
    with ws.write() as con:
        replace_model_rows(con, "attributions", table, model_id=model_id, key="image_id")
    summary = {"model_id": model_id, "n": int(len(df)), "splits": list(splits), **asdict(config),
               "dim": int(res.vectors.shape[1]), "precision": "bf16" if res.bf16 else "fp32",
               "precision_reason": res.precision_reason, "seconds": round(time.perf_counter() - t0, 1)}
    progress.report(1.0, f"attributed {len(df)} images ({res.precision_reason})", force=True)
    return summary


@dataclass
class StoredAttributions:
    image_ids: np.ndarray  # N int64
    heatmaps: np.ndarray  # N x s x s
    vectors: np.ndarray  # N x C
    method: str


def load_attributions(ws: Workspace, model_id: str, *, image_ids: Sequence[int] | None = None,
                      splits: Sequence[str] | None = None) -> StoredAttributions:
    """A model's stored attributions (all, or of ``image_ids`` / ``splits``), ordered by image id."""
    where, params = "a.model_id = ?", [model_id]
    if image_ids is not None:
        where += " AND a.image_id IN (SELECT unnest(?::BIGINT[]))"
        params.append([int(i) for i in image_ids])
    if splits is not None:
        where += f" AND i.split IN ({', '.join('?' * len(splits))})"
        params.extend(splits)
    with ws.read() as con:
        t = con.sql(f"SELECT a.image_id, a.method, a.heatmap_size, a.heatmap, a.vector FROM attributions a "
                    f"JOIN images i USING (image_id) WHERE {where} ORDER BY a.image_id",
                    params=params).to_arrow_table()
    if t.num_rows == 0:
        raise LookupError(f"no attributions of {model_id!r} for these images; run "
                          f"`python -m jobs.attribute --workspace {ws.root}` first")
    from core.store.vectors import arrow_to_vectors

    size = int(t.column("heatmap_size")[0].as_py())
    heat = arrow_to_vectors(t, "heatmap").reshape(-1, size, size)
    return StoredAttributions(t.column("image_id").to_numpy().astype(np.int64), heat,
                              arrow_to_vectors(t, "vector"), str(t.column("method")[0].as_py()))


def has_attributions(ws: Workspace, model_id: str, splits: Sequence[str]) -> bool:
    """True if ``model_id`` has stored attributions of any image of ``splits``."""
    splits = list(splits)
    n = ws.scalar("SELECT count(*) FROM attributions a JOIN images i USING (image_id) WHERE a.model_id = ? "
                  f"AND i.split IN ({', '.join('?' * len(splits))})", [model_id, *splits])
    return bool(n)
