"""Batched inference (on the process's device, core.models.device): logits/probabilities and penultimate-layer embeddings.

bf16 autocast runs 2-3x faster on CPUs with AVX-512 BF16 / AMX. It is used only where results hold:
:func:`choose_precision` runs a sample in both precisions and keeps bf16 only if predictions agree and
nearest neighbours overlap (thresholds below); otherwise fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from core.data.images import as_model_input
from core.data.model_input import DataConfig
from core.models.device import current_device, on_device, on_gpu, to_device
from core.models.features import embedding_function, features
from core.models.memory import forward_in_micro_batches
from core.progress import Progress, as_progress

MIN_PRED_AGREEMENT = 0.99
MIN_KNN_OVERLAP = 0.95
CHECK_BATCH = 32  # images per forward pass of the precision check


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True if this CPU has native bf16 support (AVX-512 BF16 or AMX)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_bf16() -> bool:
    """Whether the current device runs bf16 natively (a GPU that supports it, or a CPU with AVX-512 BF16 / AMX)."""
    return torch.cuda.is_bf16_supported() if on_gpu() else cpu_has_bf16()


def _forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """``fn`` on a CPU batch, run on the current device (core.models.device), its output back on the CPU."""
    device = current_device()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return forward_in_micro_batches(fn, to_device(x)).float().cpu()


def run_model(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[np.ndarray | torch.Tensor],
              total: int, cfg: DataConfig, *, bf16: bool, progress: Progress | None = None,
              desc: str = "infer") -> np.ndarray:
    """Apply ``fn`` to image batches, returning the stacked float32 outputs.

    A batch is uint8 N x H x W x 3 pixels (normalised here), or a float N x 3 x H x W tensor already
    normalised (a chunk of :func:`core.data.images.iter_model_inputs`, which does that in its decode
    threads, overlapped with this forward pass).
    """
    outs = []
    for block in as_progress(progress).iter(batches, total=total, desc=desc, unit="img", weight=len):
        outs.append(_forward(fn, as_model_input(block, cfg), bf16).numpy())
    if not outs:
        raise ValueError("no images to run the model on")
    return np.concatenate(outs)


def _chunks(pixels: np.ndarray | torch.Tensor, batch_size: int) -> list:
    return [pixels[i:i + batch_size] for i in range(0, len(pixels), batch_size)]


def predict_probs(model: nn.Module, pixels: np.ndarray, cfg: DataConfig, *, batch_size: int = 256,
                  bf16: bool = False, progress: Progress | None = None) -> np.ndarray:
    """Class probabilities, N x K."""
    model.eval()
    with on_device(model):
        logits = run_model(model, _chunks(pixels, batch_size), len(pixels), cfg, bf16=bf16, progress=progress,
                           desc="predict")
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def embed(model: nn.Module, pixels: np.ndarray, cfg: DataConfig, *, batch_size: int = 256,
          bf16: bool = False, layers: str = "penultimate", progress: Progress | None = None) -> np.ndarray:
    """Embeddings (``layers``: see ``core.models.EMBEDDING_LAYERS``), N x D float32."""
    model.eval()
    return run_model(embedding_function(model, layers), _chunks(pixels, batch_size), len(pixels), cfg,
                     bf16=bf16, progress=progress, desc="embed")


def knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of common members in the k-nearest-neighbour lists of two embeddings of the same set."""
    import faiss

    k = min(k, len(a) - 1)
    if k < 1:
        return 1.0
    ia = faiss.IndexFlatL2(a.shape[1])
    ia.add(np.ascontiguousarray(a, dtype=np.float32))
    ib = faiss.IndexFlatL2(b.shape[1])
    ib.add(np.ascontiguousarray(b, dtype=np.float32))
    _, na = ia.search(np.ascontiguousarray(a, dtype=np.float32), k + 1)
    _, nb = ib.search(np.ascontiguousarray(b, dtype=np.float32), k + 1)
    return float(np.mean([len(set(x[1:]) & set(y[1:])) / k for x, y in zip(na, nb)]))


@dataclass(frozen=True)
class PrecisionCheck:
    bf16: bool
    reason: str
    pred_agreement: float | None = None
    knn_overlap: float | None = None


def choose_precision(model: nn.Module, sample: np.ndarray | torch.Tensor, cfg: DataConfig, *, embedding: bool,
                     allow_bf16: bool = True,
                     embed_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> PrecisionCheck:
    """Decide bf16 vs fp32 for ``model`` by comparing both on ``sample`` (uint8 images, or a model-ready
    float chunk of :func:`core.data.images.iter_model_inputs`).

    With ``embedding``, the vectors of ``embed_fn`` (default: the penultimate features) are compared.
    """
    if not allow_bf16:
        return PrecisionCheck(False, "bf16 disabled")
    if not has_bf16():
        return PrecisionCheck(False, "this GPU has no bf16" if on_gpu() else "this CPU has no native bf16")
    if len(sample) < 16:
        return PrecisionCheck(False, "too few images to check bf16 against fp32")
    model.eval()
    fn = (embed_fn or (lambda x: features(model, x))) if embedding else model
    # In batches: one 128-image fp32 batch of a ResNet holds ~1 GB of activations at 224 px.
    chunks = _chunks(sample, CHECK_BATCH)
    with on_device(model):
        ref = np.concatenate([_forward(fn, as_model_input(c, cfg), False).numpy() for c in chunks])
        low = np.concatenate([_forward(fn, as_model_input(c, cfg), True).numpy() for c in chunks])
    if embedding:
        overlap = knn_overlap(ref, low)
        ok = overlap >= MIN_KNN_OVERLAP
        return PrecisionCheck(ok, f"kNN@10 overlap bf16 vs fp32 {overlap:.3f}", knn_overlap=overlap)
    agree = float((ref.argmax(1) == low.argmax(1)).mean())
    ok = agree >= MIN_PRED_AGREEMENT
    return PrecisionCheck(ok, f"prediction agreement bf16 vs fp32 {agree:.3f}", pred_agreement=agree)
