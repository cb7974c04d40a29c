"""Accuracy broken down by a column of the images: the ground-truth ``group`` or any image metadata column
(core.data.metadata), as the Errors and Before / after pages show it; the metadata values of a set of images
(a slice's members) with their shares; and an image's metadata in a few words.

A column's values become the rows of a breakdown (:func:`value_labels`): each text value (the
:data:`MAX_VALUES` most frequent; the rest pooled), numbers in up to :data:`MAX_BINS` quantile bins labelled
by the range of the values in them (``0.5 – 1.5``), dates by month (``2023-04``) or, over more than two
years, by year; images without a value (or with a bad value) form the row :data:`NO_VALUE`. Each row has n,
accuracy and its 95% Wilson interval (core.app.story, as the Before / after page's intervals); a comparison
of classifiers gives each change Newcombe's interval and a verdict (:func:`core.app.story.compare`).

    acc = accuracy_breakdown(ws, "base-1", "test", "site")    # value, n, n_correct, accuracy, low, high
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.app.story import compare, wilson_interval
from core.data.metadata import column_values, image_metadata, stored_kinds
from core.store.workspace import Workspace

GROUP = "group"  # the built-in ground-truth group (images.group_name)
NO_VALUE = "(no value)"
OTHER_VALUES = "(other values)"
MAX_BINS = 5
MAX_VALUES = 20
#: Dates spanning more days than this are broken down by year, else by month.
YEARS_AFTER_DAYS = 2 * 366
BREAKDOWN_COLUMNS = ["value", "n", "n_correct", "accuracy", "low", "high"]
#: The eval-set key of a value in a comparison (never a name core.app.story.set_kind gives a meaning to).
_KEY = "by:"


def breakdown_columns(ws: Workspace) -> list[str]:
    """What accuracy can be broken down by: ``group`` where some image has one, then the metadata columns."""
    has_group = ws.scalar("SELECT count(*) FROM images WHERE group_name IS NOT NULL")
    return ([GROUP] if has_group else []) + list(stored_kinds(ws))


def column_kind(ws: Workspace, column: str) -> str:
    """``text``, ``number`` or ``date``: how ``column`` (``group`` or a metadata column) is broken down."""
    if column == GROUP:
        return "text"
    kinds = stored_kinds(ws)
    if column not in kinds:
        raise ValueError(f"cannot break down by {column!r}: this workspace has {', '.join(breakdown_columns(ws)) or 'no group and no metadata columns'}")
    return kinds[column]


# -- values into rows ----------------------------------------------------------------------------------

def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.4g}"


def _number_labels(values: pd.Series, max_bins: int) -> tuple[pd.Series, list[str]]:
    v = values.dropna().astype(float)
    if v.nunique() <= max_bins:
        order = [_number(x) for x in sorted(v.unique())]
        return v.map(_number), order
    edges = np.unique(np.quantile(v, np.linspace(0, 1, max_bins + 1)))
    bins = pd.cut(v, edges, include_lowest=True, labels=False, duplicates="drop")
    ranges = v.groupby(bins).agg(["min", "max"])
    names = {b: _number(r["min"]) if r["min"] == r["max"] else f"{_number(r['min'])} – {_number(r['max'])}"
             for b, r in ranges.iterrows()}
    return bins.map(names), [names[b] for b in sorted(names)]


def _date_labels(values: pd.Series) -> tuple[pd.Series, list[str]]:
    v = pd.to_datetime(values.dropna())
    if v.empty:
        return v.astype(object), []
    fmt = "%Y" if (v.max() - v.min()).days > YEARS_AFTER_DAYS else "%Y-%m"
    labels = v.dt.strftime(fmt)
    return labels, sorted(labels.unique())


def value_labels(values: pd.Series, kind: str, *, max_bins: int = MAX_BINS,
                 max_values: int = MAX_VALUES) -> tuple[pd.Series, list[str]]:
    """(the row label of each value, same index; the labels in their natural order): numbers binned, dates by
    month or year, text as is (beyond the ``max_values`` most frequent: :data:`OTHER_VALUES`), missing values
    :data:`NO_VALUE` (last)."""
    if kind == "number":
        labels, order = _number_labels(values, max_bins)
    elif kind == "date":
        labels, order = _date_labels(values)
    elif kind == "text":
        text = values.dropna().astype(str)
        counts = text.value_counts()
        top = set(counts.index[:max_values])
        labels = text.where(text.isin(top), OTHER_VALUES)
        order = [c for c in counts.index if c in top] + ([OTHER_VALUES] if len(counts) > max_values else [])
    else:
        raise ValueError(f"kind must be text, number or date, not {kind!r}")
    labels = labels.reindex(values.index).astype(object).where(lambda s: s.notna(), NO_VALUE)
    return labels, order + ([NO_VALUE] if (labels == NO_VALUE).any() else [])


def _split_labels(ws: Workspace, split: str, column: str) -> tuple[pd.Series, list[str], str]:
    """The row label of every labelled image of ``split`` (indexed by image_id), the labels in order, the kind."""
    kind = column_kind(ws, column)
    if column == GROUP:
        df = ws.df("SELECT image_id, group_name FROM images WHERE split = ? AND label IS NOT NULL ORDER BY image_id",
                   [split])
        values = pd.Series(df.group_name.to_numpy(dtype=object), index=df.image_id.astype("int64"))
    else:
        values = column_values(ws, column, split=split)
    labels, order = value_labels(values, kind)
    return labels, order, kind


def _correct(ws: Workspace, model_ids: Sequence[str], split: str) -> pd.DataFrame:
    return ws.df("SELECT p.model_id, p.image_id, p.correct FROM predictions p JOIN images i USING (image_id) "
                 "WHERE p.model_id IN (SELECT unnest(?::VARCHAR[])) AND i.split = ? AND i.label IS NOT NULL "
                 "AND p.correct IS NOT NULL", [list(model_ids), split])


def _tally(labels: pd.Series, correct: pd.DataFrame) -> pd.DataFrame:
    """n and n_correct per (model_id, value)."""
    rows = correct.assign(value=correct.image_id.map(labels), correct=correct.correct.astype(int))
    return rows.groupby(["model_id", "value"], sort=False).correct.agg(n="size", n_correct="sum").reset_index()


# -- one classifier --------------------------------------------------------------------------------------

def accuracy_breakdown(ws: Workspace, model_id: str, split: str, column: str) -> pd.DataFrame:
    """Accuracy of ``model_id`` on ``split`` per value of ``column`` (``group`` or a metadata column):
    :data:`BREAKDOWN_COLUMNS` (``value``, ``n``, ``n_correct``, ``accuracy``, ``low`` and ``high``: its 95%
    Wilson interval). Text values worst first; number bins and dates in order; :data:`OTHER_VALUES` and
    :data:`NO_VALUE` last."""
    labels, order, kind = _split_labels(ws, split, column)
    tally = _tally(labels, _correct(ws, [model_id], split))
    if tally.empty:
        return pd.DataFrame(columns=BREAKDOWN_COLUMNS)
    tally["accuracy"] = tally.n_correct / tally.n
    bounds = [wilson_interval(k, n) for k, n in zip(tally.n_correct, tally.n)]
    tally["low"], tally["high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    rank = {v: i for i, v in enumerate(order)}
    special = tally.value.isin([OTHER_VALUES, NO_VALUE])
    tally["_s"] = special.astype(int)
    tally["_o"] = tally.value.map(rank)
    by = ["_s", "accuracy", "value"] if kind == "text" else ["_s", "_o"]
    tally = tally.sort_values(by, kind="stable")
    return tally[BREAKDOWN_COLUMNS].astype({"n": int, "n_correct": int}).reset_index(drop=True)


# -- classifiers compared --------------------------------------------------------------------------------

def breakdown_comparison(ws: Workspace, model_ids: Sequence[str], reference: str, split: str,
                         column: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every classifier against ``reference`` on each value of ``column`` on ``split``: (the rows of
    :func:`core.app.story.compare`, one per classifier and value, each change with its 95% interval and
    verdict; the value each row's ``eval_set`` key stands for, as :func:`core.app.story.scorecard` takes
    ``set_names``). Values in the order of :func:`accuracy_breakdown` for the reference."""
    ids = [reference, *[m for m in dict.fromkeys(model_ids) if m != reference]]
    labels, _, _ = _split_labels(ws, split, column)
    tally = _tally(labels, _correct(ws, ids, split))
    order = accuracy_breakdown(ws, reference, split, column).value.tolist()
    tally["_o"] = tally.value.map({v: i for i, v in enumerate(order)}).fillna(len(order))
    tally = tally.sort_values(["_o", "value"], kind="stable")
    long = pd.DataFrame({"model_id": tally.model_id, "eval_set": _KEY + tally.value.astype(str), "metric": "accuracy",
                         "value": tally.n_correct / tally.n, "n": tally.n})
    return compare(long, ids, reference), {_KEY + v: v for v in tally.value.astype(str).unique()}


# -- an image's metadata, in a few words ----------------------------------------------------------------

def metadata_captions(ws: Workspace, image_ids: Sequence[int], *, columns: int = 3, width: int = 24) -> dict[int, str]:
    """``site=north · camera=X`` for each of ``image_ids`` that has metadata: its first ``columns`` metadata
    columns with a value, as written (each cut to ``width`` characters), ``…`` when it has more."""
    if not stored_kinds(ws) or not len(image_ids):
        return {}
    wide = image_metadata(ws, [int(i) for i in image_ids if int(i) >= 0], as_written=True)
    out = {}
    for image_id, row in wide.iterrows():
        have = [(c, str(v)) for c, v in row.items() if isinstance(v, str) and v]
        if have:
            parts = [f"{c}={v if len(v) <= width else v[:width - 1] + '…'}" for c, v in have[:columns]]
            out[int(image_id)] = " · ".join(parts) + (" · …" if len(have) > columns else "")
    return out


# -- the metadata of a set of images ----------------------------------------------------------------------

@dataclass(frozen=True)
class ValueShare:
    """A value (or bin) of a metadata column: ``n`` of the images hold it, ``share`` of them; ``share_all``:
    its share among all images of the same splits, to compare with."""

    value: str
    n: int
    share: float
    share_all: float


@dataclass(frozen=True)
class ColumnShares:
    """The most frequent values of one metadata column among ``n`` images, and how many values they hold."""

    column: str
    kind: str
    n: int
    top: tuple[ValueShare, ...]
    n_values: int


def metadata_shares(ws: Workspace, image_ids: Sequence[int], *, top: int = 3) -> list[ColumnShares]:
    """For each metadata column, the ``top`` most frequent values among ``image_ids`` with their share, beside
    their share among all images of the same splits (numbers and dates binned over those, as
    :func:`value_labels` bins them; missing values count as :data:`NO_VALUE`)."""
    ids = pd.Index(sorted({int(i) for i in image_ids}), dtype="int64")
    kinds = stored_kinds(ws)
    if not kinds or ids.empty:
        return []
    splits = ws.df("SELECT DISTINCT split FROM images WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                   [ids.tolist()]).split.tolist()
    around = pd.Index(ws.df("SELECT image_id FROM images WHERE split IN (SELECT unnest(?::VARCHAR[]))",
                            [splits]).image_id.astype("int64"))
    out = []
    for column, kind in kinds.items():
        values = column_values(ws, column)
        labels, _ = value_labels(values[values.index.isin(around)], kind)
        mine = labels.reindex(ids).fillna(NO_VALUE)
        counts, overall = mine.value_counts(), labels.value_counts(normalize=True)
        shares = tuple(ValueShare(str(v), int(n), n / len(ids), float(overall.get(v, 0.0)))
                       for v, n in counts.head(top).items())
        out.append(ColumnShares(column, kind, len(ids), shares, len(counts)))
    return out
