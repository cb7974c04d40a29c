"""The read-only queries behind the app's pages: plain functions of a Workspace returning DataFrames/values.

No Streamlit here: the pages cache these results (keyed by ``ws.data_version()``) and lay them out.
Aggregation happens in DuckDB so that charts get few rows (Altair refuses more than 5,000).
Accuracies are fractions in [0, 1]. Vocabulary: error sample (``error_sample``), debug-heldout
(``error_heldout``), pool, debug-train selection, slice, embedder, classifier.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.constants import EVAL_SPLITS, SPLITS, UPLOADED
from core.store.workspace import Workspace

HEADLINE_SETS = ("test", "error_heldout")


def _ids(values: Sequence[Any]) -> list[int]:
    return [int(v) for v in values]


# -- overview -------------------------------------------------------------------------------------

def split_class_counts(ws: Workspace) -> pd.DataFrame:
    """Images per split and class: split, class_name, n (pool images counted by their weak label)."""
    return ws.df(
        "SELECT i.split, coalesce(c.name, '(unlabelled)') AS class_name, count(*) AS n FROM images i "
        "LEFT JOIN classes c ON c.class_id = coalesce(i.label, i.weak_label) "
        "GROUP BY ALL ORDER BY i.split, class_name")


def split_class_table(ws: Workspace) -> pd.DataFrame:
    """Split x class counts with a total column, splits in workflow order (every split shown; ``uploaded``
    only when a person has uploaded images)."""
    long = split_class_counts(ws)
    classes = ws.class_names()
    wide = (long.pivot_table(index="split", columns="class_name", values="n", aggfunc="sum", fill_value=0)
            if not long.empty else pd.DataFrame())
    cols = [c for c in classes if c in wide.columns] + [c for c in wide.columns if c not in classes]
    shown = [s for s in SPLITS if s != UPLOADED or s in wide.index]
    wide = wide.reindex(index=shown, columns=cols, fill_value=0).fillna(0).astype(int)
    wide["total"] = wide.sum(axis=1)
    wide.index.name = "split"
    return wide.reset_index()


def models_table(ws: Workspace) -> pd.DataFrame:
    """Every model with its headline accuracies: model_id, name, current, role, arch, method, parent_id,
    parent (its name), created_at, test_acc, error_heldout_acc (names: :func:`core.app.names.model_names`)."""
    from core.app.names import model_names

    current = current_classifier_id(ws)
    df = ws.df(
        "SELECT m.model_id, m.role, m.arch, m.method, m.parent_id, m.created_at, "
        "max(x.value) FILTER (WHERE x.eval_set = 'test' AND x.metric = 'accuracy') AS test_acc, "
        "max(x.value) FILTER (WHERE x.eval_set = 'error_heldout' AND x.metric = 'accuracy') AS error_heldout_acc "
        "FROM models m LEFT JOIN metrics x USING (model_id) GROUP BY ALL ORDER BY m.created_at")
    names = model_names(ws)
    df.insert(1, "name", df.model_id.map(lambda m: names.get(m, m)))
    df.insert(2, "current", df.model_id == current)
    df.insert(7, "parent", df.parent_id.map(lambda m: names.get(m, m) if isinstance(m, str) else None))
    return df


def current_classifier_id(ws: Workspace) -> str | None:
    from core.models.catalog import current_classifier

    return current_classifier(ws)


def classifier_ids(ws: Workspace) -> list[str]:
    return ws.df("SELECT model_id FROM models WHERE role = 'classifier' ORDER BY created_at")["model_id"].tolist()


def headline_metrics(ws: Workspace, model_id: str | None = None) -> dict[str, Any]:
    """The current (or given) classifier's test / debug-heldout accuracy and worst-group accuracy."""
    model_id = model_id or current_classifier_id(ws)
    out: dict[str, Any] = {"model_id": model_id, "test_acc": None, "error_heldout_acc": None,
                           "worst_group_acc": None, "balanced_accuracy": None, "n_test": None,
                           "n_error_heldout": None}
    if not model_id:
        return out
    df = ws.df("SELECT eval_set, metric, value, n FROM metrics WHERE model_id = ?", [model_id])
    for r in df.itertuples(index=False):
        if r.eval_set == "test" and r.metric == "accuracy":
            out["test_acc"], out["n_test"] = float(r.value), int(r.n)
        elif r.eval_set == "error_heldout" and r.metric == "accuracy":
            out["error_heldout_acc"], out["n_error_heldout"] = float(r.value), int(r.n)
        elif r.eval_set == "test" and r.metric in ("worst_group_acc", "balanced_accuracy"):
            out[r.metric] = float(r.value)
    return out


def jobs_table(ws: Workspace, limit: int = 50) -> pd.DataFrame:
    """The job table (newest first): job_id, kind, state, progress, message, elapsed_s, created, error, pid,
    log_path, args, result."""
    jobs = ws.jobs().list(limit=limit) if ws.jobs_path.exists() else []
    rows = [{"job_id": j.job_id, "kind": j.kind, "state": j.state, "progress": float(j.progress),
             "message": j.message, "elapsed_s": None if j.elapsed is None else round(j.elapsed, 1),
             "created": pd.Timestamp(j.created_at, unit="s", tz="UTC").tz_convert(None).floor("s"),
             "error": j.error, "pid": j.pid, "log_path": j.log_path, "args": " ".join(j.args),
             "result": j.result} for j in jobs]
    cols = ["job_id", "kind", "state", "progress", "message", "elapsed_s", "created", "error", "pid", "log_path",
            "args", "result"]
    return pd.DataFrame(rows, columns=cols)


# -- errors ---------------------------------------------------------------------------------------

def predicted_splits(ws: Workspace, model_id: str) -> list[str]:
    """Labelled splits with predictions of ``model_id``, in workflow order."""
    have = set(ws.df("SELECT DISTINCT i.split FROM predictions p JOIN images i USING (image_id) "
                     "WHERE p.model_id = ? AND p.correct IS NOT NULL", [model_id])["split"])
    return [s for s in EVAL_SPLITS if s in have]


def confusion(ws: Workspace, model_id: str, split: str) -> pd.DataFrame:
    """Confusion matrix in long form, every (label, pred) cell present: label, pred, label_name, pred_name,
    n, row_share (share of the true class's images)."""
    counts = ws.df(
        "SELECT i.label, p.pred, count(*) AS n FROM predictions p JOIN images i USING (image_id) "
        "WHERE p.model_id = ? AND i.split = ? AND i.label IS NOT NULL GROUP BY ALL", [model_id, split])
    classes = ws.df("SELECT class_id, name FROM classes ORDER BY class_id")
    grid = pd.MultiIndex.from_product([classes.class_id, classes.class_id], names=["label", "pred"])
    full = counts.set_index(["label", "pred"]).reindex(grid, fill_value=0).reset_index()
    names = dict(zip(classes.class_id, classes.name))
    full["label_name"] = full.label.map(names)
    full["pred_name"] = full.pred.map(names)
    totals = full.groupby("label").n.transform("sum")
    full["row_share"] = np.where(totals > 0, full.n / totals.where(totals > 0, 1), 0.0)
    full["n"] = full.n.astype(int)
    return full[["label", "pred", "label_name", "pred_name", "n", "row_share"]]


def _prediction_rows(ws: Workspace, model_id: str, where: str, params: list[Any], order: str,
                     limit: int) -> pd.DataFrame:
    return ws.df(
        "SELECT i.image_id, i.path, i.split, i.group_name, i.label, p.pred, cl.name AS label_name, "
        "cp.name AS pred_name, p.confidence, p.loss, p.correct FROM predictions p "
        "JOIN images i USING (image_id) LEFT JOIN classes cl ON cl.class_id = i.label "
        f"LEFT JOIN classes cp ON cp.class_id = p.pred WHERE p.model_id = ? AND {where} "
        f"ORDER BY {order} LIMIT ?", [model_id, *params, int(limit)])


def cell_images(ws: Workspace, model_id: str, split: str, label: int, pred: int, limit: int = 48) -> pd.DataFrame:
    """Images of one confusion-matrix cell, most confident first."""
    return _prediction_rows(ws, model_id, "i.split = ? AND i.label = ? AND p.pred = ?",
                            [split, int(label), int(pred)], "p.confidence DESC, i.image_id", limit)


def confident_mistakes(ws: Workspace, model_id: str, split: str, limit: int = 24) -> pd.DataFrame:
    """The model's most confident wrong predictions on ``split``."""
    return _prediction_rows(ws, model_id, "i.split = ? AND p.correct = false", [split],
                            "p.confidence DESC, i.image_id", limit)


def accuracy_by(ws: Workspace, model_id: str, split: str, by: str = "group") -> pd.DataFrame:
    """Accuracy per ground-truth group (``by='group'``) or true class (``by='class'``): key, n, n_correct,
    accuracy; worst first."""
    if by == "group":
        key, join = "coalesce(i.group_name, '(no group)')", ""
    elif by == "class":
        key, join = "c.name", "JOIN classes c ON c.class_id = i.label"
    else:
        raise ValueError(f"by must be 'group' or 'class', not {by!r}")
    return ws.df(
        f"SELECT {key} AS key, count(*) AS n, count(*) FILTER (WHERE p.correct) AS n_correct, "
        f"avg(p.correct::INT)::DOUBLE AS accuracy FROM predictions p JOIN images i USING (image_id) {join} "
        f"WHERE p.model_id = ? AND i.split = ? AND i.label IS NOT NULL GROUP BY ALL ORDER BY accuracy, key",
        [model_id, split])


# -- retrieval ------------------------------------------------------------------------------------

def slice_runs(ws: Workspace) -> pd.DataFrame:
    """The workspace's slice runs, newest first."""
    from core.scanner.runs import list_runs

    return list_runs(ws)


def embedders(ws: Workspace) -> pd.DataFrame:
    """Embedders with stored vectors: embedder_id, dim, n, created_at."""
    return ws.df("SELECT embedder_id, dim, n, created_at FROM embedding_sets ORDER BY created_at DESC")


def error_sample_images(ws: Workspace, model_id: str | None = None) -> pd.DataFrame:
    """The error sample with labels and, when a classifier is given, its prediction: image_id, path,
    label, label_name, group_name, pred_name, correct."""
    return ws.df(
        "SELECT i.image_id, i.path, i.label, c.name AS label_name, i.group_name, cp.name AS pred_name, "
        "p.correct FROM images i LEFT JOIN classes c ON c.class_id = i.label "
        "LEFT JOIN predictions p ON p.image_id = i.image_id AND p.model_id = ? "
        "LEFT JOIN classes cp ON cp.class_id = p.pred "
        "WHERE i.split = 'error_sample' ORDER BY p.correct NULLS LAST, i.image_id", [model_id or ""])


def source_images(ws: Workspace, image_ids: Sequence[int], model_id: str | None = None) -> pd.DataFrame:
    """The images candidates were retrieved for, as :func:`error_sample_images` shows them (any split):
    image_id, path, label, label_name, group_name, pred_name, correct; in the order of ``image_ids``."""
    df = ws.df(
        "SELECT i.image_id, i.path, i.label, c.name AS label_name, i.group_name, cp.name AS pred_name, "
        "p.correct FROM images i LEFT JOIN classes c ON c.class_id = i.label "
        "LEFT JOIN predictions p ON p.image_id = i.image_id AND p.model_id = ? "
        "LEFT JOIN classes cp ON cp.class_id = p.pred WHERE i.image_id IN (SELECT unnest(?::BIGINT[]))",
        [model_id or "", _ids(image_ids)])
    order = {int(i): n for n, i in enumerate(image_ids)}
    return df.assign(_o=df.image_id.map(order)).sort_values("_o").drop(columns="_o").reset_index(drop=True)


def images_info(ws: Workspace, image_ids: Sequence[int]) -> pd.DataFrame:
    """image_id, path, split, label, weak_label, weak_label_name, label_name of the given images."""
    return ws.df(
        "SELECT i.image_id, i.path, i.split, i.label, i.weak_label, cw.name AS weak_label_name, "
        "cl.name AS label_name FROM images i LEFT JOIN classes cw ON cw.class_id = i.weak_label "
        "LEFT JOIN classes cl ON cl.class_id = i.label WHERE i.image_id IN (SELECT unnest(?::BIGINT[]))",
        [_ids(image_ids)])


CANDIDATE_COLUMNS = ["rank", "image_id", "source_image_id", "neighbour_rank", "distance", "path", "weak_label",
                     "weak_label_name", "label", "label_name", "status"]


def build_candidates(ws: Workspace, pairs: pd.DataFrame, *, budget: int | None, label_policy: str = "weak",
                     source_label: int | None = None) -> pd.DataFrame:
    """Merge neighbour pairs into the debug-train candidates (round-robin, de-duplicated, cut to budget)
    with the label each would be trained with.

    ``label_policy`` is one of :data:`core.dcd.selection.LABEL_POLICIES`: ``weak`` (the pool image's weak
    label), ``source`` (the label of the error image it was retrieved for; ``source_label`` for an uploaded
    image, whose source id is negative) or ``agree`` (only the candidates whose weak label is that label).
    Columns: :data:`CANDIDATE_COLUMNS`.
    """
    from core.dcd.retrieval import label_pairs, merge_candidates

    labelled = label_pairs(ws, pairs, label_policy, source_label=source_label)
    return _describe_candidates(ws, merge_candidates(labelled, budget))


def candidates_filling_budget(ws: Workspace, index, source_ids: np.ndarray, queries: np.ndarray, *, neighbours: int,
                              budget: int, label_policy: str, source_label: int | None = None) -> pd.DataFrame:
    """The candidates the select job finds for these query vectors: searched in ``index`` at depth ``k``,
    deeper under ``agree`` until the budget is filled (:func:`core.dcd.selection.fill_budget`)."""
    from core.dcd.retrieval import fill_budget

    items, _ = fill_budget(ws, index, source_ids, queries, neighbours=neighbours, budget=budget, label_policy=label_policy,
                           source_label=source_label)
    return _describe_candidates(ws, items)


def _describe_candidates(ws: Workspace, items: pd.DataFrame) -> pd.DataFrame:
    if items.empty:
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    items = items.copy()
    info = images_info(ws, items.image_id.tolist()).set_index("image_id")
    items = items.join(info[["path", "weak_label", "weak_label_name"]], on="image_id")
    classes = ws.df("SELECT class_id, name FROM classes")
    names = dict(zip(classes.class_id.astype(int), classes.name))
    items["label"] = items["label"].astype("Int64")
    items["label_name"] = items["label"].map(lambda v: names.get(int(v)) if pd.notna(v) else None)
    items["status"] = "proposed"
    return items[CANDIDATE_COLUMNS]


def selections(ws: Workspace) -> pd.DataFrame:
    from core.dcd.selection import list_selections

    return list_selections(ws)


def selection_review(ws: Workspace, selection_id: str) -> pd.DataFrame:
    """A selection's items for review (rejected included) with paths, split, label names, kind (the failure's
    own image or a retrieved one) and the label's confidence where a teacher gave it, by rank. The rest of the
    pool a teacher labelled (kind ``rest``) is not reviewed image by image: the selection's label counts it."""
    return ws.df(
        "SELECT s.rank, s.image_id, s.source_image_id, s.distance, s.label, c.name AS label_name, s.status, "
        "s.kind, s.confidence, i.path, i.split, cw.name AS weak_label_name "
        "FROM selection_items s JOIN images i USING (image_id) "
        "LEFT JOIN classes c ON c.class_id = s.label LEFT JOIN classes cw ON cw.class_id = i.weak_label "
        "WHERE s.selection_id = ? AND s.kind <> 'rest' ORDER BY s.rank", [selection_id])


# -- before / after -------------------------------------------------------------------------------

def slice_metrics(ws: Workspace, model_ids: Sequence[str]) -> pd.DataFrame:
    """Accuracy of each model on every slice of the latest slice run (from stored predictions of the
    slice members): model_id, eval_set ('slice=<slice_id>'), metric, value, n; slices by rank."""
    cols = ["model_id", "eval_set", "metric", "value", "n"]
    if not model_ids:
        return pd.DataFrame(columns=cols)
    run = ws.scalar("SELECT run_id FROM slice_runs ORDER BY created_at DESC LIMIT 1")
    if run is None:
        return pd.DataFrame(columns=cols)
    return ws.df(
        "SELECT p.model_id, 'slice=' || sm.slice_id AS eval_set, 'accuracy' AS metric, "
        "avg(p.correct::INT)::DOUBLE AS value, count(*)::INT AS n FROM slice_members sm "
        "LEFT JOIN slices s ON s.run_id = sm.run_id AND s.slice_id = sm.slice_id "
        "JOIN predictions p ON p.image_id = sm.image_id WHERE sm.run_id = ? AND p.correct IS NOT NULL "
        "AND p.model_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY p.model_id, sm.slice_id, s.rank "
        "ORDER BY s.rank NULLS LAST, sm.slice_id, p.model_id", [run, list(model_ids)])


def comparison_long(ws: Workspace, model_ids: Sequence[str]) -> pd.DataFrame:
    """Every stored metric of the models plus slice accuracies: model_id, method, eval_set, metric, value, n."""
    from core.models.evaluation import metrics_table

    if not model_ids:
        return pd.DataFrame(columns=["model_id", "method", "eval_set", "metric", "value", "n"])
    m = metrics_table(ws, list(model_ids))[["model_id", "method", "eval_set", "metric", "value", "n"]]
    s = slice_metrics(ws, model_ids)
    if not s.empty:
        methods = dict(zip(m.model_id, m.method))
        s = s.assign(method=s.model_id.map(methods))[m.columns]
        m = pd.concat([m, s], ignore_index=True)
    return m


def model_labels(ws: Workspace, model_ids: Sequence[str]) -> dict[str, str]:
    """model_id -> its human name ('DCD from Baseline', :func:`core.app.names.model_names`) for display."""
    from core.app.names import model_names

    names = model_names(ws)
    return {m: names.get(m, m) for m in model_ids}


def selection_of_model(ws: Workspace, model_id: str) -> str | None:
    cfg = ws.scalar("SELECT config FROM models WHERE model_id = ?", [model_id])
    try:
        return json.loads(cfg).get("selection_id") if cfg else None
    except (TypeError, ValueError):
        return None


def source_vectors(ws: Workspace, embedder_id: str, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids, vectors) of the given images in an embedder's space (those without vectors left out)."""
    from core.store.vectors import load_embeddings

    return load_embeddings(ws, embedder_id, image_ids=_ids(image_ids))


def embedded_ids(ws: Workspace, embedder_id: str, image_ids: Sequence[int]) -> list[int]:
    """Those of ``image_ids`` that have a vector in an embedder's space (what a preview can search with; the
    select job embeds the others first), in order."""
    from core.store.vectors import embedding_table

    found = embedding_table(ws, embedder_id)
    if found is None:
        return []
    have = set(ws.df(f"SELECT image_id FROM {found[0]} WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                     [_ids(image_ids)]).image_id.astype(int))
    return [int(i) for i in image_ids if int(i) in have]
