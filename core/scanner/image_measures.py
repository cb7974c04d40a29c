"""What is measured per image to tell slices apart (core.scanner.slice_facts): cheap image properties from
its pixels, and where the classifier looks from its attribution heatmap."""

from __future__ import annotations

import numpy as np
import pandas as pd


def image_properties(pixels: np.ndarray) -> pd.DataFrame:
    """brightness, contrast, colourfulness (Hasler and Suesstrunk) and sharpness (variance of the
    Laplacian) of uint8 N x H x W x 3 images, each in [0, 1] units of the image's range."""
    x = np.asarray(pixels, np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    rg, yb = r - g, 0.5 * (r + g) - b
    colour = (np.sqrt(rg.std((1, 2)) ** 2 + yb.std((1, 2)) ** 2)
              + 0.3 * np.sqrt(rg.mean((1, 2)) ** 2 + yb.mean((1, 2)) ** 2))
    lap = (luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:] + luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1] - 4 * luma[:, 1:-1, 1:-1])
    return pd.DataFrame({"brightness": luma.mean((1, 2)), "contrast": luma.std((1, 2)), "colourfulness": colour,
                         "sharpness": lap.var((1, 2))})


def attention_properties(heatmaps: np.ndarray) -> pd.DataFrame:
    """Where the model looks, from N x s x s attribution heatmaps: the centre of their positive mass
    (``attention x`` left to right, ``attention y`` top to bottom, in [0, 1]) and ``attention spread`` (the
    share of the image holding the top half of that mass: small when the model looks at one spot)."""
    h = np.clip(np.asarray(heatmaps, np.float64), 0, None)
    n, size = h.shape[0], h.shape[-1]
    mass = h.reshape(n, -1).sum(1)
    safe = np.where(mass > 0, mass, 1.0)
    grid = (np.arange(size) + 0.5) / size
    x = (h.sum(1) * grid).sum(1) / safe
    y = (h.sum(2) * grid).sum(1) / safe
    ordered = -np.sort(-h.reshape(n, -1), axis=1)
    cum = np.cumsum(ordered, axis=1) / safe[:, None]
    spread = ((cum < 0.5).sum(1) + 1) / (size * size)
    nan = np.where(mass > 0, 1.0, np.nan)
    return pd.DataFrame({"attention x": x * nan, "attention y": y * nan, "attention spread": spread * nan})
