"""The slicer: clustering attribution-weighted vectors into slices, and ranking them (no workspace).

:class:`AttributionSlicer` follows the :class:`Slicer` protocol (Domino-style, sklearn-like: ``fit -> self``,
``predict``, ``predict_proba`` of shape N x n_slices) over faiss k-means. :func:`slice_features` builds the
space it clusters in, :func:`slice_table` scores and ranks the slices it found.

What is clustered (:func:`slice_features`): each image's attribution-weighted vector, L2-normalised, with
the model's predicted class appended as a one-hot scaled by ``pred_weight`` and whether the prediction
matches the label as a one-hot scaled by ``error_weight``, then L2-normalised again. The two small blocks
keep images the model treats differently (another predicted class, right vs wrong) from sharing a slice only
because they look alike; with both weights 0 it is the paper's plain attribution-weighted clustering.

Ranking score (higher = hurts the model more, ranked first): ``errors x error_rate = n (1 - acc)^2``.
It grows with the number of errors a slice holds (big slices first) and with how concentrated they are (a
slice of 100 images at 40% accuracy, score 36, ranks above 1,000 images at 90%, score 10, although the
latter holds more errors); slices without errors score 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd


class Slicer(Protocol):
    """What finds slices: fitted on N x D vectors, then gives each row's slice or soft membership."""

    def fit(self, x: np.ndarray) -> "Slicer": ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...


#: The numbers of slices tried when the number is chosen automatically (by silhouette).
AUTO_N_SLICES_RANGE = (6, 24)


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def slice_features(vectors: np.ndarray, pred: np.ndarray | None = None, correct: np.ndarray | None = None, *,
                   num_classes: int | None = None, pred_weight: float = 0.0,
                   error_weight: float = 0.0) -> np.ndarray:
    """The space slices are found in: normalised vectors plus scaled prediction blocks (see module doc)."""
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"vectors must be a non-empty N x D array, got shape {vectors.shape}")
    parts = [_l2n(vectors)]
    if pred_weight > 0:
        if pred is None:
            raise ValueError("pred_weight > 0 needs the predictions (pred)")
        k = int(num_classes or int(pred.max()) + 1)
        parts.append(np.eye(k, dtype=np.float32)[np.asarray(pred, int)] * pred_weight)
    if error_weight > 0:
        if correct is None:
            raise ValueError("error_weight > 0 needs whether each prediction is correct (correct)")
        parts.append(np.eye(2, dtype=np.float32)[np.asarray(correct, bool).astype(int)] * error_weight)
    return _l2n(np.concatenate(parts, axis=1))


def _silhouette(x: np.ndarray, labels: np.ndarray, rng: np.random.Generator, n_max: int = 2000) -> float:
    """Mean silhouette (squared-L2 free, plain L2) on a sample of at most ``n_max`` points."""
    idx = rng.choice(len(x), min(n_max, len(x)), replace=False)
    xs, ls = x[idx], labels[idx]
    sq = (xs ** 2).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * xs @ xs.T, 0))
    uniq = np.unique(ls)
    if len(uniq) < 2:
        return -1.0
    mean_d = np.stack([d[:, ls == c].mean(1) for c in uniq], 1)  # n x k
    own = np.searchsorted(uniq, ls)
    counts = np.array([(ls == c).sum() for c in uniq])
    a = mean_d[np.arange(len(xs)), own] * counts[own] / np.maximum(counts[own] - 1, 1)
    mean_d[np.arange(len(xs)), own] = np.inf
    b = mean_d.min(1)
    s = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
    s[counts[own] == 1] = 0.0
    return float(s.mean())


@dataclass
class AttributionSlicer:
    """k-means slicer (faiss) over L2-normalised vectors; ``n_slices=None`` picks the number of slices in
    ``n_slices_range`` by silhouette.

    After :meth:`fit`: ``n_slices_`` slices, ``centroids_`` (n_slices x D), ``labels_`` (N), ``distances_``
    (N, squared L2 to the own centroid), ``silhouettes_`` ({number of slices: silhouette}) when the number was
    chosen automatically.
    """

    n_slices: int | None = None
    n_slices_range: tuple[int, int] = AUTO_N_SLICES_RANGE
    niter: int = 30
    nredo: int = 3
    seed: int = 0
    min_slice_size: int = 5
    n_slices_: int = field(init=False, default=0)
    centroids_: np.ndarray = field(init=False, repr=False, default_factory=lambda: np.zeros((0, 0)))
    labels_: np.ndarray = field(init=False, repr=False, default_factory=lambda: np.zeros(0, int))
    distances_: np.ndarray = field(init=False, repr=False, default_factory=lambda: np.zeros(0))
    silhouettes_: dict[int, float] = field(init=False, default_factory=dict)

    def _kmeans(self, x: np.ndarray, k: int):
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=self.niter, nredo=self.nredo, seed=self.seed, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=100000)
        km.train(x)
        return km

    def fit(self, x: np.ndarray) -> "AttributionSlicer":
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need an N x D array with N >= 2 to slice, got shape {x.shape}")
        if self.n_slices is not None and not 1 <= self.n_slices <= len(x):
            raise ValueError(f"the number of slices must be between 1 and the number of images ({len(x)}), "
                             f"got {self.n_slices}")
        if self.n_slices is None:
            lo, hi = self.n_slices_range
            hi = min(hi, max(2, len(x) // max(1, self.min_slice_size)))
            lo = min(max(2, lo), hi)
            rng = np.random.default_rng(self.seed)
            best = None
            for n in range(lo, hi + 1):
                km = self._kmeans(x, n)
                _, lab = km.index.search(x, 1)
                self.silhouettes_[n] = _silhouette(x, lab[:, 0], rng)
                if best is None or self.silhouettes_[n] > self.silhouettes_[best[0]]:
                    best = (n, km)
            n, km = best
        else:
            n, km = self.n_slices, self._kmeans(x, self.n_slices)
        self.n_slices_ = n
        self.centroids_ = np.asarray(km.centroids, dtype=np.float32)
        dist, lab = km.index.search(x, 1)
        self.labels_, self.distances_ = lab[:, 0].astype(int), dist[:, 0]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The nearest slice of each row."""
        return self.predict_proba(x).argmax(1)

    def predict_proba(self, x: np.ndarray, temperature: float = 0.05) -> np.ndarray:
        """Soft membership N x n_slices: softmax of minus squared distance to each centroid over ``temperature``."""
        if self.n_slices_ == 0:
            raise ValueError("fit the slicer first")
        x = np.ascontiguousarray(x, dtype=np.float32)
        d = ((x[:, None, :] - self.centroids_[None]) ** 2).sum(-1)
        z = -(d - d.min(1, keepdims=True)) / temperature
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)


def slice_score(size: int | np.ndarray, accuracy: float | np.ndarray) -> float | np.ndarray:
    """``errors x error_rate = size (1 - accuracy)^2``: big, low-accuracy slices score highest."""
    return size * (1.0 - accuracy) ** 2


def _confusion(labels: np.ndarray, pred: np.ndarray, k: int) -> list[list[int]]:
    m = np.zeros((k, k), int)
    ok = labels >= 0
    np.add.at(m, (labels[ok], pred[ok]), 1)
    return m.tolist()


def slice_table(members: pd.DataFrame, centroids: np.ndarray, num_classes: int) -> pd.DataFrame:
    """Per slice: size, accuracy, error rate, confusion matrix (rows label, cols prediction), dominant
    predicted and labelled classes, score and rank. ``members``: slice_id, label, pred, correct."""
    rows = []
    for sid in range(len(centroids)):
        part = members[members.slice_id == sid]
        if part.empty:
            continue
        known = part.dropna(subset=["label"])
        acc = float(known.correct.mean()) if len(known) else None
        lab = known.label.astype(int).to_numpy()
        rows.append({
            "slice_id": sid, "size": len(part), "accuracy": acc,
            "error_rate": None if acc is None else 1.0 - acc,
            "score": float(slice_score(len(known), acc)) if acc is not None else 0.0,
            "dominant_pred": int(part.pred.mode().iloc[0]),
            "dominant_label": int(pd.Series(lab).mode().iloc[0]) if len(lab) else None,
            "confusion": json.dumps(_confusion(lab, known.pred.astype(int).to_numpy(), num_classes)),
            "centroid": centroids[sid].astype(np.float32),
        })
    out = pd.DataFrame(rows).sort_values(["score", "size"], ascending=False).reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out
