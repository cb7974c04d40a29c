"""Model work on one batch of decoded images, as a picklable object an engine's workers run.

An engine (core.engines.ray_data) builds the task on the driver (the model already loaded, its precision
already checked), ships it to each worker once, calls :meth:`setup` there, then calls the task on every
batch. On CPU a task runs exactly the local path's code (:func:`core.models.inference.run_model`), so both
engines give the same numbers for the same model and precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from core.data.images import to_tensor
from core.data.model_input import DataConfig
from core.models.device import memory_format
from core.models.features import embedding_function
from core.models.inference import run_model
from core.progress import Progress


def _run(fn, pixels: np.ndarray, cfg: DataConfig, bf16: bool, device: str) -> np.ndarray:
    if device == "cpu":
        return run_model(fn, [pixels], len(pixels), cfg, bf16=bf16, progress=Progress(bars=False))
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        return fn(to_tensor(pixels, cfg).to(device, memory_format=memory_format())).float().cpu().numpy()


@dataclass
class EmbedTask:
    """Embeddings (``layers``: see core.models.EMBEDDING_LAYERS) -> columns ``image_id``, ``vector``."""

    model: nn.Module
    cfg: DataConfig
    layers: str = "penultimate"
    bf16: bool = False
    device: str = field(default="cpu", init=False)
    _fn: Any = field(default=None, init=False, repr=False)

    def setup(self, device: str) -> None:
        self.device = device
        self.model = self.model.to(device, memory_format=memory_format()).eval()  # as core.models.device runs it
        self._fn = embedding_function(self.model, self.layers)

    def __call__(self, pixels: np.ndarray, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._fn is None:
            self.setup("cpu")
        vectors = _run(self._fn, pixels, self.cfg, self.bf16, self.device)
        return {"image_id": np.asarray(batch["image_id"], np.int64), "vector": vectors.astype(np.float32)}


@dataclass
class PredictTask:
    """Class probabilities -> columns ``image_id``, ``probs``."""

    model: nn.Module
    cfg: DataConfig
    bf16: bool = False
    device: str = field(default="cpu", init=False)

    def setup(self, device: str) -> None:
        self.device = device
        self.model = self.model.to(device, memory_format=memory_format()).eval()

    def __call__(self, pixels: np.ndarray, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        logits = _run(self.model, pixels, self.cfg, self.bf16, self.device)
        probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy().astype(np.float32)
        return {"image_id": np.asarray(batch["image_id"], np.int64), "probs": probs}
