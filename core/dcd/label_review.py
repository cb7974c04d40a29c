"""Stored label issues: reading them, a person's decisions, and where they take effect.

Rows of ``label_issues`` are written by core.dcd.label_issues (one per scored train or pool image). Here:

- :func:`label_issues` reads them back (filter by split, flagged only, sort by score), with image paths
  and class names for the app;
- :func:`decide` records a person's decision: ``'relabel'`` (train with ``suggested_label``), ``'drop'``
  (leave the image out), ``'keep'`` (the given label is right), or ``None`` (undecided again);
- the decisions are applied to train rows by core.data.label_decisions (training reads them there), and
  :func:`flagged_pool_ids` names the pool images a label policy should drop;
- :func:`slice_label_issue_share` / :func:`suggest_mislabeled`: the slices whose scored members are mostly
  flagged, to suggest the annotation "mislabeled".

"Flagged" means core.dcd.label_issues flagged the image and no one decided ``'keep'``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.store.workspace import Workspace

DECISIONS = ("relabel", "drop", "keep")
SORTS = ("score", "-score")  # lowest score (most likely wrong) first, or highest first
FLAGGED = "li.is_issue AND li.decision IS DISTINCT FROM 'keep'"


def store_label_issues(ws: Workspace, rows: pd.DataFrame, *, noise_rows: Sequence[dict] = ()) -> int:
    """Replace the rows of ``rows``' images (image_id, embedder_id, given_label, suggested_label, score,
    is_issue), and the ``label_noise`` rows of the splits in ``noise_rows``, in one transaction. A decision
    already made on an image is kept if its given label is the same (a ``'relabel'`` keeps the label the
    person accepted, even if the suggestion has changed)."""
    cols = ["image_id", "embedder_id", "given_label", "suggested_label", "score", "is_issue"]
    staged = rows[cols].copy()
    noise_cols = ["split", "embedder_id", "fitted_on", "n_scored", "n_wrong_estimated", "n_flagged", "noise"]
    with ws.write() as con:
        for row in noise_rows:
            con.execute("DELETE FROM label_noise WHERE split = ?", [row["split"]])
            con.execute(f"INSERT INTO label_noise ({', '.join(noise_cols)}) VALUES ({', '.join('?' * len(noise_cols))})",
                        [row[c] for c in noise_cols])
        con.register("staged_label_issues", staged)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE merged_label_issues AS SELECT n.image_id, n.embedder_id, n.given_label, "
            "CASE WHEN o.decision = 'relabel' AND o.given_label = n.given_label THEN o.suggested_label "
            "ELSE n.suggested_label END AS suggested_label, n.score, n.is_issue, "
            "CASE WHEN o.given_label = n.given_label THEN o.decision END AS decision "
            "FROM staged_label_issues n LEFT JOIN label_issues o USING (image_id)")
        con.execute("DELETE FROM label_issues WHERE image_id IN (SELECT image_id FROM staged_label_issues)")
        con.execute("INSERT INTO label_issues (image_id, embedder_id, given_label, suggested_label, score, "
                    "is_issue, decision) SELECT * FROM merged_label_issues")
        con.execute("DROP TABLE merged_label_issues")
        con.unregister("staged_label_issues")
    return len(staged)


def label_noise(ws: Workspace) -> pd.DataFrame:
    """The noise estimated in each scored split's labels: split, fitted_on, n_scored, n_wrong_estimated,
    n_flagged, and ``noise``, the K x K matrix ``P(given | true)`` as an array (rows: true class)."""
    df = ws.df("SELECT split, embedder_id, fitted_on, n_scored, n_wrong_estimated, n_flagged, noise, computed_at "
               "FROM label_noise ORDER BY split")
    df["noise"] = [np.asarray(json.loads(v)) for v in df.noise]
    return df


#: How many of the most frequent confusions a noise summary names.
TOP_CONFUSIONS = 3


def noise_cells(noise: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """A noise matrix ``P(given | true)`` as long rows: true, given (class names), rate."""
    k = len(noise)
    return pd.DataFrame({"true": np.repeat(list(class_names), k), "given": np.tile(list(class_names), k),
                         "rate": np.asarray(noise, float).reshape(-1)})


def noise_sentence(row: pd.Series, class_names: Sequence[str]) -> str:
    """One line on a split's estimated noise: how many labels are wrong, how many flagged, the commonest
    confusions (a row of :func:`label_noise`)."""
    n, wrong = int(row.n_scored), float(row.n_wrong_estimated)
    cells = noise_cells(row.noise, class_names)
    off = cells[cells.true != cells.given].sort_values("rate", ascending=False).head(TOP_CONFUSIONS)
    common = ", ".join(f"{r.true} labelled {r.given} ({r.rate:.0%} of {r.true})" for r in off.itertuples()
                       if r.rate >= 0.005)
    read = ("the heads' probabilities read as the true class's" if row.fitted_on == "trusted"
            else "the heads fitted on these labels, their probabilities sharpened")
    return (f"{row.split}: an estimated {wrong:,.0f} of {n:,} labels are wrong ({wrong / max(n, 1):.1%}); "
            f"{int(row.n_flagged):,} flagged" + (f". Commonest: {common}" if common else "") + f" ({read}).")


def has_label_issues(ws: Workspace) -> bool:
    return bool(ws.scalar("SELECT count(*) FROM label_issues"))


def label_issues(ws: Workspace, *, splits: Sequence[str] | None = None, issues_only: bool = False,
                 sort: str = "score", limit: int | None = None, offset: int = 0) -> pd.DataFrame:
    """Stored label issues: image_id, split, path, given_label, given_name, suggested_label, suggested_name,
    score, is_issue, decision, embedder_id, group_name, true_label. ``sort`` is one of :data:`SORTS`
    (``"score"``: most likely wrong first); ``issues_only`` keeps the flagged images."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {SORTS}, got {sort!r}")
    where, params = _where(splits, issues_only)
    page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
    return ws.df(
        "SELECT li.image_id, i.split, i.path, li.given_label, g.name AS given_name, li.suggested_label, "
        "s.name AS suggested_name, li.score, li.is_issue, li.decision, li.embedder_id, i.group_name, i.true_label "
        "FROM label_issues li JOIN images i USING (image_id) "
        "LEFT JOIN classes g ON g.class_id = li.given_label LEFT JOIN classes s ON s.class_id = li.suggested_label "
        f"WHERE {where} ORDER BY li.score {'DESC' if sort == '-score' else 'ASC'}, li.image_id{page}",
        params)


def _where(splits: Sequence[str] | None, issues_only: bool) -> tuple[str, list]:
    where, params = ["TRUE"], []
    if splits:
        where.append(f"i.split IN ({', '.join('?' * len(splits))})")
        params += list(splits)
    if issues_only:
        where.append("li.is_issue")
    return " AND ".join(where), params


def count_label_issues(ws: Workspace, *, splits: Sequence[str] | None = None, issues_only: bool = False) -> int:
    """How many rows :func:`label_issues` returns with these filters (without ``limit``)."""
    where, params = _where(splits, issues_only)
    return int(ws.scalar(f"SELECT count(*) FROM label_issues li JOIN images i USING (image_id) WHERE {where}",
                         params))


def label_issue_counts(ws: Workspace) -> pd.DataFrame:
    """Per split: n_scored, n_flagged, and how many were decided each way."""
    return ws.df(
        "SELECT i.split, count(*) AS n_scored, count(*) FILTER (WHERE li.is_issue) AS n_flagged, "
        "count(*) FILTER (WHERE li.decision = 'relabel') AS n_relabel, "
        "count(*) FILTER (WHERE li.decision = 'drop') AS n_drop, "
        "count(*) FILTER (WHERE li.decision = 'keep') AS n_keep "
        "FROM label_issues li JOIN images i USING (image_id) GROUP BY i.split ORDER BY i.split")


def decide(ws: Workspace, image_ids: Sequence[int], decision: str | None) -> int:
    """Record ``decision`` (one of :data:`DECISIONS`, or None to undo) on those of ``image_ids`` that have a
    label-issue row; returns how many rows changed."""
    if decision is not None and decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS} or None, got {decision!r}")
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        return 0
    with ws.write() as con:
        con.register("decided_ids", pd.DataFrame({"image_id": pd.array(ids, dtype="int64")}))
        n = con.execute("SELECT count(*) FROM label_issues WHERE image_id IN (SELECT image_id FROM decided_ids)"
                        ).fetchone()[0]
        con.execute("UPDATE label_issues SET decision = ? WHERE image_id IN (SELECT image_id FROM decided_ids)",
                    [decision])
        con.unregister("decided_ids")
    return int(n)


def flagged_pool_ids(ws: Workspace) -> set[int]:
    """Pool images flagged and not decided 'keep', or decided 'drop' (what a label policy should drop)."""
    df = ws.df(f"SELECT li.image_id FROM label_issues li JOIN images i USING (image_id) WHERE i.split = 'pool' "
               f"AND (({FLAGGED}) OR li.decision = 'drop')")
    return {int(i) for i in df.image_id}


def slice_label_issue_share(ws: Workspace, run_id: str) -> pd.DataFrame:
    """Per slice of a run: slice_id, n_members_scored (members with a label-issue row: train and pool
    images), n_flagged (flagged and not decided 'keep'), share (n_flagged / n_members_scored, NaN if none)."""
    df = ws.df(
        f"SELECT s.slice_id, count(li.image_id) AS n_members_scored, "
        f"count(li.image_id) FILTER (WHERE {FLAGGED}) AS n_flagged "
        f"FROM slices s LEFT JOIN slice_members m ON m.run_id = s.run_id AND m.slice_id = s.slice_id "
        f"LEFT JOIN label_issues li ON li.image_id = m.image_id WHERE s.run_id = ? GROUP BY s.slice_id "
        f"ORDER BY s.slice_id", [run_id])
    df["n_members_scored"] = df.n_members_scored.astype(int)
    df["n_flagged"] = df.n_flagged.astype(int)
    df["share"] = df.n_flagged / df.n_members_scored.where(df.n_members_scored > 0)
    return df


def suggest_mislabeled(ws: Workspace, run_id: str, min_share: float = 0.5, *, min_scored: int = 5) -> list[int]:
    """Slice ids of a run whose scored members are at least ``min_share`` flagged (and that have at least
    ``min_scored`` scored members, so a handful of train images does not decide a slice of test images)."""
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    df = slice_label_issue_share(ws, run_id)
    hit = df[(df.n_members_scored >= min_scored) & (df.share >= min_share)]
    return [int(s) for s in hit.slice_id]


def quality_against_truth(ws: Workspace) -> pd.DataFrame:
    """Per split, how well the flags find the wrong labels, where the truth is known (``images.true_label``,
    set by the demo scenarios; never used by the method): n_scored, n_wrong (given != true), n_flagged,
    n_hit (flagged and wrong), precision, recall."""
    df = ws.df(
        "SELECT i.split, count(*) AS n_scored, count(*) FILTER (WHERE li.given_label <> i.true_label) AS n_wrong, "
        "count(*) FILTER (WHERE li.is_issue) AS n_flagged, "
        "count(*) FILTER (WHERE li.is_issue AND li.given_label <> i.true_label) AS n_hit "
        "FROM label_issues li JOIN images i USING (image_id) WHERE i.true_label IS NOT NULL "
        "GROUP BY i.split ORDER BY i.split")
    df["precision"] = df.n_hit / df.n_flagged.where(df.n_flagged > 0)
    df["recall"] = df.n_hit / df.n_wrong.where(df.n_wrong > 0)
    return df
