"""Slice runs: find slices in a workspace's attributions, store them, draw their mosaics, read them back.

:func:`find_slices` runs the slicer (core.scanner.slicer) on a classifier's stored attributions
(core.scanner.attribution), ranks the slices, draws their Attribution Mosaics (core.scanner.mosaic) into the
workspace's artifacts and stores one **slice run** (``slice_runs``, ``slices``, ``slice_members``) so runs
can be compared. No ground-truth metadata (``group_name``, ``true_label``) is used: those only fill the
report's ``group``, ``purity`` and ``mislabeled`` fields (:func:`slice_report`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from core.models.catalog import require_classifier
from core.progress import Progress, as_progress
from core.scanner.attribution import DEFAULT_SPLITS, load_attributions
from core.scanner.mosaic import save_png, slice_mosaic
from core.scanner.slice_facts import compute_slice_facts, save_slice_facts
from core.scanner.slicer import (
    AUTO_N_SLICES_RANGE,
    AttributionSlicer,
    slice_features,
    slice_table,
)
from core.store.workspace import Workspace


@dataclass(frozen=True)
class SliceConfig:
    """Options of a slice run (stored as the run's params). See the module doc for the weights."""

    n_slices: int | None = None  # None: chosen in n_slices_range by silhouette
    n_slices_range: tuple[int, int] = AUTO_N_SLICES_RANGE
    splits: tuple[str, ...] = DEFAULT_SPLITS
    pred_weight: float = 0.5
    error_weight: float = 0.5
    niter: int = 30
    seed: int = 0
    mosaics: bool = True
    mosaic_tiles: int = 36
    mosaic_layout: str = "grid"


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
    model_id = require_classifier(ws, model_id, purpose="slice")
    att = load_attributions(ws, model_id, splits=list(config.splits))
    df = _members_frame(ws, model_id, att.image_ids)
    num_classes = int(ws.scalar("SELECT count(*) FROM classes"))
    correct = df.correct.fillna(True).astype(bool).to_numpy()
    x = slice_features(att.vectors, df.pred.astype(int).to_numpy(), correct, num_classes=num_classes,
                       pred_weight=config.pred_weight, error_weight=config.error_weight)
    progress.report(0.1, f"clustering {len(x)} images", force=True)
    slicer = AttributionSlicer(n_slices=config.n_slices, n_slices_range=config.n_slices_range, niter=config.niter, seed=config.seed).fit(x)
    df["slice_id"] = slicer.labels_
    df["distance"] = slicer.distances_
    table = slice_table(df, slicer.centroids_, num_classes)
    run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    table["mosaic_path"] = None
    if config.mosaics:
        paths = build_slice_mosaics(ws, run_id, df, att, table, n_tiles=config.mosaic_tiles,
                                    layout=config.mosaic_layout, progress=progress.span(0.4, 0.9))
        table["mosaic_path"] = table.slice_id.map(paths)
    params = {**asdict(config), "n_images": int(len(df)), "n_slices": int(slicer.n_slices_),
              "silhouettes": {str(n): round(v, 4) for n, v in slicer.silhouettes_.items()},
              "attribution_method": att.method, "n_slices_chosen": "auto" if config.n_slices is None else "user",
              "seconds": round(time.perf_counter() - t0, 1)}
    _store_run(ws, run_id, model_id, table, df, params)
    # what sets each slice apart, kept beside its mosaics for the names the app and reports give it
    save_slice_facts(ws, run_id, compute_slice_facts(ws, run_id, embed=True, progress=progress.span(0.9, 1.0)))
    progress.report(1.0, f"{slicer.n_slices_} slices of {len(df)} images", force=True)
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


def build_slice_mosaics(ws: Workspace, run_id: str, members: pd.DataFrame, attributions, slices: pd.DataFrame,
                        *, n_tiles: int = 36, layout: str = "grid", tile: int = 64, mode: str = "crop",
                        progress: Progress | None = None) -> dict[int, str]:
    """Draw every slice's mosaic into ``artifacts/mosaics/<run_id>/slice-<id>.png``; returns the paths.

    ``members``: image_id, path, label, pred, correct, slice_id, distance; ``attributions``: a
    core.scanner.attribution.StoredAttributions covering them; ``slices``: slice_id, dominant_pred.
    """
    out_dir = ws.artifact_dir("mosaics", run_id)
    heat_of = {int(i): h for i, h in zip(attributions.image_ids, attributions.heatmaps)}
    dominant = dict(zip(slices.slice_id.astype(int), slices.dominant_pred.astype(int)))
    paths: dict[int, str] = {}
    for sid in as_progress(progress).iter(sorted(dominant), desc="mosaics", unit="slice"):
        img = slice_mosaic(members[members.slice_id == sid], heat_of, dominant[sid], n_tiles=n_tiles,
                           layout=layout, tile=tile, mode=mode)
        paths[sid] = str(save_png(img, out_dir / f"slice-{sid}.png"))
    return paths


def render_slice_mosaic(ws: Workspace, run_id: str, slice_id: int, *, n_tiles: int = 36, layout: str = "grid",
                        mode: str = "crop", tile: int = 64) -> Image.Image:
    """Redraw one stored slice's mosaic with other options (e.g. for an export), without storing it."""
    model_id = ws.scalar("SELECT model_id FROM slice_runs WHERE run_id = ?", [run_id])
    members = slice_members(ws, run_id, slice_id)
    if members.empty:
        raise KeyError(f"slice {slice_id} of run {run_id!r} has no members")
    att = load_attributions(ws, model_id, image_ids=members.image_id.tolist())
    heat_of = {int(i): h for i, h in zip(att.image_ids, att.heatmaps)}
    sl = get_slices(ws, run_id)
    positive = int(sl.loc[sl.slice_id == slice_id, "dominant_pred"].iloc[0])
    return slice_mosaic(members, heat_of, positive, n_tiles=n_tiles, layout=layout, tile=tile, mode=mode)
