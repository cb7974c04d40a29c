"""Metadata-free error slices: clustering attribution-weighted vectors (AttributionScanner, phase 1).

:class:`AttributionSlicer` is an sklearn-like slicer (``fit -> self``, ``predict``, ``predict_proba``) over
faiss k-means. :func:`find_slices` runs it on a workspace's stored attributions (core.attribution), scores
and ranks the slices, draws their Attribution Mosaics (core.mosaic) and stores one **slice run**
(``slice_runs``, ``slices``, ``slice_members``) so runs can be compared.

What is clustered (:func:`slice_features`): each image's attribution-weighted vector, L2-normalised, with
the model's predicted class appended as a one-hot scaled by ``pred_weight`` and whether the prediction
matches the label as a one-hot scaled by ``error_weight``, then L2-normalised again. The two small blocks
keep images the model treats differently (another predicted class, right vs wrong) from sharing a slice only
because they look alike; with both weights 0 it is the paper's plain attribution-weighted clustering. No
ground-truth metadata (``group_name``, ``true_label``) is used: those only fill the report's ``group``,
``purity`` and ``mislabeled`` fields (:func:`slice_report`).

Ranking score (higher = hurts the model more, ranked first): ``errors x error_rate = n (1 - acc)^2``.
It grows with the number of errors a slice holds (big slices first) and with how concentrated they are (a
slice of 100 images at 40% accuracy, score 36, ranks above 1,000 images at 90%, score 10, although the
latter holds more errors); slices without errors score 0.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from core.attribution import DEFAULT_SPLITS, load_attributions
from core.progress import Progress, as_progress
from core.registry import current_classifier
from core.workspace import Workspace

AUTO_K_RANGE = (6, 24)


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
    """k-means slicer (faiss) over L2-normalised vectors; ``k=None`` picks k in ``k_range`` by silhouette.

    After :meth:`fit`: ``k_`` slices, ``centroids_`` (k x D), ``labels_`` (N), ``distances_`` (N, squared L2
    to the own centroid), ``k_scores_`` ({k: silhouette}) when k was chosen automatically.
    """

    k: int | None = None
    k_range: tuple[int, int] = AUTO_K_RANGE
    niter: int = 30
    nredo: int = 3
    seed: int = 0
    min_slice_size: int = 5
    k_: int = field(init=False, default=0)
    centroids_: np.ndarray = field(init=False, repr=False, default_factory=lambda: np.zeros((0, 0)))
    labels_: np.ndarray = field(init=False, repr=False, default_factory=lambda: np.zeros(0, int))
    distances_: np.ndarray = field(init=False, repr=False, default_factory=lambda: np.zeros(0))
    k_scores_: dict[int, float] = field(init=False, default_factory=dict)

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
        if self.k is not None and not 1 <= self.k <= len(x):
            raise ValueError(f"k must be between 1 and the number of images ({len(x)}), got {self.k}")
        if self.k is None:
            lo, hi = self.k_range
            hi = min(hi, max(2, len(x) // max(1, self.min_slice_size)))
            lo = min(max(2, lo), hi)
            rng = np.random.default_rng(self.seed)
            best = None
            for k in range(lo, hi + 1):
                km = self._kmeans(x, k)
                _, lab = km.index.search(x, 1)
                self.k_scores_[k] = _silhouette(x, lab[:, 0], rng)
                if best is None or self.k_scores_[k] > self.k_scores_[best[0]]:
                    best = (k, km)
            k, km = best
        else:
            k, km = self.k, self._kmeans(x, self.k)
        self.k_ = k
        self.centroids_ = np.asarray(km.centroids, dtype=np.float32)
        dist, lab = km.index.search(x, 1)
        self.labels_, self.distances_ = lab[:, 0].astype(int), dist[:, 0]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The nearest slice of each row."""
        return self.predict_proba(x).argmax(1)

    def predict_proba(self, x: np.ndarray, temperature: float = 0.05) -> np.ndarray:
        """Soft membership N x k: softmax of minus squared distance to each centroid over ``temperature``."""
        if self.k_ == 0:
            raise ValueError("fit the slicer first")
        x = np.ascontiguousarray(x, dtype=np.float32)
        d = ((x[:, None, :] - self.centroids_[None]) ** 2).sum(-1)
        z = -(d - d.min(1, keepdims=True)) / temperature
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)


def slice_score(size: int | np.ndarray, accuracy: float | np.ndarray) -> float | np.ndarray:
    """``errors x error_rate = size (1 - accuracy)^2``: big, low-accuracy slices score highest."""
    return size * (1.0 - accuracy) ** 2


@dataclass(frozen=True)
class SliceConfig:
    """Options of a slice run (stored as the run's params). See the module doc for the weights."""

    k: int | None = None
    k_range: tuple[int, int] = AUTO_K_RANGE
    splits: tuple[str, ...] = DEFAULT_SPLITS
    pred_weight: float = 0.5
    error_weight: float = 0.5
    niter: int = 30
    seed: int = 0
    mosaics: bool = True
    mosaic_tiles: int = 36
    mosaic_layout: str = "grid"


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


@dataclass
class SliceRun:
    run_id: str
    model_id: str
    slices: pd.DataFrame
    members: pd.DataFrame
    params: dict


def _members_frame(ws: Workspace, model_id: str, image_ids: np.ndarray) -> pd.DataFrame:
    df = ws.df("SELECT i.image_id, i.path, i.split, i.label, p.pred, p.correct FROM images i "
               "LEFT JOIN predictions p ON p.image_id = i.image_id AND p.model_id = ? "
               "WHERE i.image_id IN (SELECT unnest(?::BIGINT[])) ORDER BY i.image_id",
               [model_id, [int(i) for i in image_ids]])
    if df.pred.isna().any():
        raise LookupError(f"{int(df.pred.isna().sum())} images have no prediction of {model_id!r}; run "
                          f"`python -m jobs.predict --workspace {ws.root} --model-id {model_id}` first")
    return df


def find_slices(ws: Workspace, model_id: str | None = None, *, config: SliceConfig = SliceConfig(),
                progress: Progress | None = None) -> SliceRun:
    """Slice the model's attributed images of ``config.splits``, rank the slices and store the run."""
    progress = as_progress(progress)
    t0 = time.perf_counter()
    model_id = model_id or current_classifier(ws)
    if not model_id:
        raise ValueError("no classifier in the workspace; train one with `python -m jobs.train` first")
    att = load_attributions(ws, model_id, splits=list(config.splits))
    df = _members_frame(ws, model_id, att.image_ids)
    num_classes = int(ws.scalar("SELECT count(*) FROM classes"))
    correct = df.correct.fillna(True).astype(bool).to_numpy()
    x = slice_features(att.vectors, df.pred.astype(int).to_numpy(), correct, num_classes=num_classes,
                       pred_weight=config.pred_weight, error_weight=config.error_weight)
    progress.report(0.1, f"clustering {len(x)} images", force=True)
    slicer = AttributionSlicer(k=config.k, k_range=config.k_range, niter=config.niter, seed=config.seed).fit(x)
    df["slice_id"] = slicer.labels_
    df["distance"] = slicer.distances_
    table = slice_table(df, slicer.centroids_, num_classes)
    run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    table["mosaic_path"] = None
    if config.mosaics:
        from core.mosaic import build_slice_mosaics

        paths = build_slice_mosaics(ws, run_id, df, att, table, n_tiles=config.mosaic_tiles,
                                    layout=config.mosaic_layout, progress=progress.span(0.4, 0.95))
        table["mosaic_path"] = table.slice_id.map(paths)
    params = {**asdict(config), "n_images": int(len(df)), "k": int(slicer.k_),
              "k_scores": {str(k): round(v, 4) for k, v in slicer.k_scores_.items()},
              "attribution_method": att.method, "k_chosen": "auto" if config.k is None else "user",
              "seconds": round(time.perf_counter() - t0, 1)}
    _store_run(ws, run_id, model_id, table, df, params)
    progress.report(1.0, f"{slicer.k_} slices of {len(df)} images", force=True)
    return SliceRun(run_id, model_id, table, df, params)


def _store_run(ws: Workspace, run_id: str, model_id: str, table: pd.DataFrame, members: pd.DataFrame,
               params: dict) -> None:
    d = int(len(table.centroid.iloc[0]))
    slices_t = pa.table({
        "run_id": pa.array([run_id] * len(table)),
        "slice_id": pa.array(table.slice_id.astype(np.int32)),
        "rank": pa.array(table["rank"].astype(np.int32)),
        "size": pa.array(table["size"].astype(np.int32)),
        "accuracy": pa.array(table.accuracy.astype(float)),
        "error_rate": pa.array(table.error_rate.astype(float)),
        "score": pa.array(table.score.astype(float)),
        "dominant_pred": pa.array(table.dominant_pred, type=pa.int32()),
        "dominant_label": pa.array(table.dominant_label, type=pa.int32()),
        "confusion": pa.array(table.confusion.astype(str)),
        "centroid": pa.array([np.asarray(c, np.float32) for c in table.centroid], type=pa.list_(pa.float32(), d)),
        "mosaic_path": pa.array(table.mosaic_path, type=pa.string()),
    })
    members_t = pa.table({
        "run_id": pa.array([run_id] * len(members)),
        "slice_id": pa.array(members.slice_id.astype(np.int32)),
        "image_id": pa.array(members.image_id.astype(np.int64)),
        "distance": pa.array(members.distance.astype(np.float32)),
    })
    with ws.write() as con:
        con.execute("INSERT INTO slice_runs (run_id, model_id, n_slices, params) VALUES (?, ?, ?, ?)",
                    [run_id, model_id, int(len(table)), json.dumps(params, default=str)])
        con.register("staging_slices", slices_t)
        con.execute("INSERT INTO slices SELECT run_id, slice_id, rank, size, accuracy, error_rate, score, "
                    "dominant_pred, dominant_label, confusion, centroid::FLOAT[], mosaic_path FROM staging_slices")
        con.unregister("staging_slices")
        con.register("staging_members", members_t)
        con.execute("INSERT INTO slice_members SELECT * FROM staging_members")
        con.unregister("staging_members")


# -- reading runs back ----------------------------------------------------------------------------------

def list_runs(ws: Workspace, model_id: str | None = None) -> pd.DataFrame:
    """Slice runs, newest first: run_id, model_id, n_slices, params (JSON), created_at."""
    if model_id:
        return ws.df("SELECT * FROM slice_runs WHERE model_id = ? ORDER BY created_at DESC", [model_id])
    return ws.df("SELECT * FROM slice_runs ORDER BY created_at DESC")


def latest_run(ws: Workspace, model_id: str | None = None) -> str | None:
    runs = list_runs(ws, model_id)
    return None if runs.empty else str(runs.run_id.iloc[0])


def get_slices(ws: Workspace, run_id: str) -> pd.DataFrame:
    """A run's slices ordered by rank, with ``centroid`` as arrays."""
    df = ws.df("SELECT * FROM slices WHERE run_id = ? ORDER BY rank", [run_id])
    if df.empty and not ws.scalar("SELECT count(*) FROM slice_runs WHERE run_id = ?", [run_id]):
        raise KeyError(f"no slice run {run_id!r}; run `python -m jobs.slices --workspace {ws.root}`")
    df["centroid"] = [np.asarray(c, np.float32) for c in df.centroid]
    return df


def slice_members(ws: Workspace, run_id: str, slice_id: int | None = None) -> pd.DataFrame:
    """Members (all slices, or one) with their image info and the run model's predictions."""
    where, params = "m.run_id = ?", [run_id]
    if slice_id is not None:
        where += " AND m.slice_id = ?"
        params.append(int(slice_id))
    return ws.df(f"SELECT m.slice_id, m.image_id, m.distance, i.path, i.split, i.label, i.group_name, "
                 f"i.true_label, p.pred, p.confidence, p.correct FROM slice_members m "
                 f"JOIN slice_runs r USING (run_id) JOIN images i ON i.image_id = m.image_id "
                 f"LEFT JOIN predictions p ON p.image_id = m.image_id AND p.model_id = r.model_id "
                 f"WHERE {where} ORDER BY m.slice_id, m.distance", params)


def slice_report(ws: Workspace, run_id: str) -> list[dict]:
    """Ranked slices with rank, size, accuracy, score, and where ground truth exists: ``group`` (the
    members' majority planted group), ``purity`` (its share of members) and ``mislabeled`` (members whose
    label differs from their true label)."""
    slices = get_slices(ws, run_id)
    members = slice_members(ws, run_id)
    out = []
    for s in slices.itertuples(index=False):
        part = members[members.slice_id == s.slice_id]
        row = {"rank": int(s.rank), "slice_id": int(s.slice_id), "size": int(s.size),
               "accuracy": None if pd.isna(s.accuracy) else round(float(s.accuracy), 4),
               "score": round(float(s.score), 3), "dominant_pred": s.dominant_pred,
               "dominant_label": s.dominant_label, "group": None, "purity": None, "mislabeled": None}
        groups = part.group_name.dropna()
        if len(groups):
            counts = groups.value_counts()
            row["group"] = str(counts.index[0])
            row["purity"] = round(float(counts.iloc[0] / len(part)), 4)
        truth = part.dropna(subset=["true_label", "label"])
        if len(truth):
            row["mislabeled"] = int((truth.true_label != truth.label).sum())
        out.append(row)
    return out


def slices_chart(slices: pd.DataFrame, *, selected: int | None = None):
    """Altair scatter of a run's slices: size (x, log) vs accuracy (y), point area by score, colour by the
    current annotation (column ``annotation``, optional). A click selects a slice (parameter ``slice``)."""
    import altair as alt

    df = slices.drop(columns=[c for c in ("centroid",) if c in slices]).copy()
    if "annotation" not in df:
        df["annotation"] = "unannotated"
    df["annotation"] = [a if isinstance(a, str) and a else "unannotated" for a in df["annotation"]]
    df["selected"] = df.slice_id == selected if selected is not None else False
    pick = alt.selection_point(name="slice", fields=["slice_id"], on="click", toggle=False, clear="dblclick")
    return alt.Chart(df).mark_circle(stroke="black", cursor="pointer").encode(
        x=alt.X("size:Q", title="slice size (images)", scale=alt.Scale(type="log")),
        y=alt.Y("accuracy:Q", title="accuracy", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        size=alt.Size("score:Q", title="score", scale=alt.Scale(range=[40, 900])),
        color=alt.Color("annotation:N", title="annotation",
                        scale=alt.Scale(domain=["unannotated", "core", "spurious", "mislabeled", "other"],
                                        range=["#9aa5b1", "#2f9e44", "#d1495b", "#f08c00", "#5c7cfa"])),
        strokeWidth=alt.condition(alt.datum.selected, alt.value(3), alt.value(0)),
        tooltip=[alt.Tooltip("rank:Q"), alt.Tooltip("slice_id:Q", title="slice"), alt.Tooltip("size:Q"),
                 alt.Tooltip("accuracy:Q", format=".1%"), alt.Tooltip("score:Q", format=".2f"),
                 alt.Tooltip("annotation:N")],
    ).add_params(pick).properties(height=320)
