"""Predictions of a classifier on the workspace's images, and the metrics computed from them.

Metrics are stored per (model, eval set, metric): eval sets are the splits (``test``, ``error_heldout``,
``error_sample``, ``train``), ``test/group=<g>`` for every ground-truth group of the test split, and
``test`` carries ``worst_group_acc`` where groups are known, and every named eval set of the ``eval_sets``
table (e.g. ``slice:<run_id>:<rank>``, a slice target's held-out part). Accuracy is a fraction in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from core.data.images import iter_decoded
from core.data.splits import images_df
from core.engines.ray_data import RayConfig, map_images_to_arrays
from core.models.catalog import load_classifier
from core.models.inference import choose_precision
from core.models.schedules import schedule_of
from core.models.tasks import PredictTask
from core.models.trunk import classifier_probs
from core.progress import Progress, as_progress
from core.store.workspace import Workspace, replace_model_rows


def predict(ws: Workspace, model_id: str, *, splits: Sequence[str] = ("train", "test", "error_sample",
                                                                      "error_heldout"),
            allow_bf16: bool = True, ray: RayConfig | None = None,
            progress: Progress | None = None) -> pd.DataFrame:
    """Run a classifier on the given splits and store its predictions (replacing older ones).

    With ``ray``, the images are decoded and the classifier run on Ray Data (core.engines.ray_data); the
    precision check and the stored rows are the same.
    """
    progress = as_progress(progress)
    model, data_config = load_classifier(ws, model_id)
    df = images_df(ws, list(splits))
    if df.empty:
        raise ValueError(f"no images in splits {list(splits)}")
    if ray is None:  # on the stored outputs of the stages its lineage never trains, where it has them
        probs, check = classifier_probs(ws, model, data_config, df.image_id.tolist(), df.path.tolist(),
                                        trainable_stages=schedule_of(ws, model_id).trainable_stages,
                                        allow_bf16=allow_bf16, progress=progress.span(0, 0.95))
    else:
        sample = next(iter_decoded(df.path.tolist()[:128], data_config.image_size, chunk=128))
        check = choose_precision(model, sample, data_config, embedding=False, allow_bf16=allow_bf16)
        out, _ = map_images_to_arrays(df[["image_id", "path"]], PredictTask(model, data_config, check.bf16),
                                      image_size=data_config.image_size, config=ray,
                                      progress=progress.span(0, 0.95))
        probs = out["probs"]
    # The label the prediction is judged against: the trusted label, else the pool's weak label.
    target = df["label"].fillna(df["weak_label"])
    known = target.notna().to_numpy()
    t = target.fillna(0).astype(int).to_numpy()
    pred = probs.argmax(1)
    p_true = probs[np.arange(len(t)), np.clip(t, 0, probs.shape[1] - 1)]
    loss = np.where(known, -np.log(np.clip(p_true, 1e-12, 1.0)), np.nan)
    table = pa.table({
        "model_id": pa.array([model_id] * len(df)),
        "image_id": pa.array(df.image_id.to_numpy(np.int64)),
        "pred": pa.array(pred.astype(np.int32)),
        "confidence": pa.array(probs.max(1).astype(np.float32)),
        "probs": pa.array(list(probs.astype(np.float32)), type=pa.list_(pa.float32())),
        "loss": pa.array(loss.astype(np.float32), mask=~known),
        "correct": pa.array(pred == t, mask=~known),
    })
    with ws.write() as con:
        replace_model_rows(con, "predictions", table, model_id=model_id, key="image_id")
    progress.report(1.0, f"predicted {len(df)} images ({check.reason})", force=True)
    return df.assign(pred=pred, confidence=probs.max(1))


def compute_metrics(ws: Workspace, model_id: str) -> dict[str, dict[str, float]]:
    """Accuracy per split and per test group from stored predictions; stored and returned.

    Returns ``{eval_set: {metric: value}}``.
    """
    df = ws.df("SELECT i.split, i.group_name, i.label, p.pred, p.correct FROM predictions p "
               "JOIN images i USING (image_id) WHERE p.model_id = ? AND i.label IS NOT NULL", [model_id])
    if df.empty:
        raise ValueError(f"no predictions for {model_id!r}; run `python -m jobs.predict` first")
    rows: list[tuple[str, str, float, int]] = []
    for split, part in df.groupby("split"):
        rows.append((split, "accuracy", float(part.correct.mean()), len(part)))
        if split == "test":
            per_class = part.groupby("label").correct.mean()
            rows.append((split, "balanced_accuracy", float(per_class.mean()), len(part)))
            groups = part.dropna(subset=["group_name"]).groupby("group_name").correct.agg(["mean", "size"])
            for g, r in groups.iterrows():
                rows.append((f"test/group={g}", "accuracy", float(r["mean"]), int(r["size"])))
            if len(groups):
                rows.append((split, "worst_group_acc", float(groups["mean"].min()), len(part)))
    rows += named_eval_set_rows(ws, model_id)
    out = pd.DataFrame(rows, columns=["eval_set", "metric", "value", "n"]).assign(model_id=model_id)
    with ws.write() as con:
        replace_model_rows(con, "metrics", out, model_id=model_id, key="eval_set",
                           columns=("model_id", "eval_set", "metric", "value", "n"))
    result: dict[str, dict[str, float]] = {}
    for r in out.itertuples(index=False):
        result.setdefault(r.eval_set, {})[r.metric] = r.value
    return result


def named_eval_set_rows(ws: Workspace, model_id: str) -> list[tuple[str, str, float, int]]:
    """Accuracy of ``model_id`` on each named eval set (the ``eval_sets`` table: a slice target's held-out
    part, a mitigation's held-out members), from its stored predictions, as (eval_set, metric, value, n).
    An eval set is left out if the model has a prediction for none of its images."""
    df = ws.df("SELECT e.eval_set, p.correct FROM eval_sets e JOIN images i USING (image_id) "
               "JOIN predictions p ON p.image_id = e.image_id AND p.model_id = ? "
               "WHERE i.label IS NOT NULL AND p.correct IS NOT NULL", [model_id])
    return [(name, "accuracy", float(part.correct.mean()), len(part)) for name, part in df.groupby("eval_set")]


def evaluate(ws: Workspace, model_id: str, *, ray: RayConfig | None = None,
             progress: Progress | None = None) -> dict[str, dict[str, float]]:
    """Predict on the evaluation splits (with ``ray``: on Ray Data) and compute the metrics."""
    predict(ws, model_id, ray=ray, progress=progress)
    return compute_metrics(ws, model_id)


def metrics_table(ws: Workspace, model_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table of stored metrics joined with each model's method."""
    where, params = "", []
    if model_ids:
        where = f"WHERE m.model_id IN ({', '.join('?' * len(model_ids))})"
        params = list(model_ids)
    return ws.df(f"SELECT m.model_id, md.method, md.created_at, m.eval_set, m.metric, m.value, m.n "
                 f"FROM metrics m JOIN models md USING (model_id) {where} "
                 f"ORDER BY md.created_at, m.eval_set, m.metric", params)


def metrics_summary(metrics: dict[str, dict[str, float]]) -> dict[str, float | None]:
    return {
        "test_acc": metrics.get("test", {}).get("accuracy"),
        "error_heldout_acc": metrics.get("error_heldout", {}).get("accuracy"),
        "worst_group_acc": metrics.get("test", {}).get("worst_group_acc"),
        **{f"{name}_acc": m.get("accuracy") for name, m in metrics.items() if name.startswith(("slice:", "failure:"))},
    }
