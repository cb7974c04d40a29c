"""Altair charts of the app, built from the small aggregated frames of :mod:`core.app.queries` (testable).

Every function takes a DataFrame and returns an ``alt.Chart``/``alt.LayerChart``; none queries the
workspace. Accuracy axes are fractions shown as percentages.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

CONFUSION_SELECTION = "cell"
ACCENT = "#2f6fde"
BAD = "#d1495b"


def confusion_chart(conf: pd.DataFrame, *, title: str = "") -> alt.LayerChart:
    """Heatmap of a long confusion matrix (label_name, pred_name, n, row_share) with counts in the cells.

    A click selects a cell: the selection parameter ``cell`` carries the cell's ``label`` and ``pred``.
    """
    cell = alt.selection_point(name=CONFUSION_SELECTION, fields=["label", "pred"], on="click",
                               clear="dblclick", toggle=False)
    order = conf.drop_duplicates("label").sort_values("label")["label_name"].tolist()
    base = alt.Chart(conf, title=title or alt.Undefined).encode(
        x=alt.X("pred_name:N", title="predicted", sort=order, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("label_name:N", title="true label", sort=order),
    )
    rect = base.mark_rect(stroke="white", strokeWidth=2, cursor="pointer").encode(
        color=alt.Color("row_share:Q", title="share of class", scale=alt.Scale(scheme="blues", domain=[0, 1])),
        opacity=alt.condition(cell, alt.value(1.0), alt.value(0.55)),
        tooltip=[alt.Tooltip("label_name:N", title="true"), alt.Tooltip("pred_name:N", title="predicted"),
                 alt.Tooltip("n:Q", title="images"), alt.Tooltip("row_share:Q", title="share", format=".1%")],
    ).add_params(cell)
    text = base.mark_text(fontSize=14).encode(
        text="n:Q",
        color=alt.condition(alt.datum.row_share > 0.5, alt.value("white"), alt.value("#1c2430")),
    )
    side = max(180, 60 * conf["label"].nunique())
    return alt.layer(rect, text).properties(width=side, height=side)


def accuracy_bars(acc: pd.DataFrame, *, title: str = "", key: str = "key") -> alt.Chart:
    """Horizontal accuracy bars (worst first) from a frame with ``key``, ``accuracy``, ``n``."""
    return alt.Chart(acc, title=title or alt.Undefined).mark_bar().encode(
        y=alt.Y(f"{key}:N", title=None, sort=alt.EncodingSortField("accuracy", order="ascending")),
        x=alt.X("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=alt.condition(alt.datum.accuracy < 0.5, alt.value(BAD), alt.value(ACCENT)),
        tooltip=[alt.Tooltip(f"{key}:N", title="group"), alt.Tooltip("accuracy:Q", format=".1%"),
                 alt.Tooltip("n:Q", title="images")],
    ).properties(height=alt.Step(26))


def _set_label(row: pd.Series) -> str:
    return row.eval_set if row.metric == "accuracy" else f"{row.eval_set} · {row.metric}"


def comparison_chart(long: pd.DataFrame, labels: dict[str, str] | None = None) -> alt.Chart:
    """Grouped bars: every eval set (row) with one bar per model; ``long`` has model_id, eval_set, metric,
    value (see :func:`core.app.queries.comparison_long`)."""
    df = long.copy()
    df["set"] = df.apply(_set_label, axis=1) if len(df) else []
    df["model"] = df.model_id.map(lambda m: (labels or {}).get(m, m))
    order = list(dict.fromkeys(df["set"]))
    return alt.Chart(df).mark_bar().encode(
        y=alt.Y("set:N", title=None, sort=order),
        yOffset=alt.YOffset("model:N"),
        x=alt.X("value:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=alt.Color("model:N", title="model", legend=alt.Legend(orient="bottom", columns=1)),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("set:N", title="eval set"),
                 alt.Tooltip("value:Q", format=".1%"), alt.Tooltip("n:Q", title="images")],
    ).properties(height=alt.Step(10))


def delta_chart(table: pd.DataFrame) -> alt.Chart:
    """Diverging bars of every ``Δ <model>`` column of a comparison table (see
    :func:`core.app.queries.comparison_table`): positive = better than the reference."""
    delta_cols = [c for c in table.columns if str(c).startswith("Δ ")]
    df = table.assign(set=table.apply(_set_label, axis=1) if len(table) else [])
    long = df.melt(id_vars=["set"], value_vars=delta_cols, var_name="model", value_name="delta").dropna()
    long["model"] = long.model.str.slice(2)
    order = list(dict.fromkeys(df["set"]))
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("set:N", title=None, sort=order),
        yOffset=alt.YOffset("model:N"),
        x=alt.X("delta:Q", title="change vs reference (accuracy points)", axis=alt.Axis(format="+%")),
        color=alt.condition(alt.datum.delta >= 0, alt.value(ACCENT), alt.value(BAD)),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("set:N", title="eval set"),
                 alt.Tooltip("delta:Q", format="+.1%")],
    ).properties(height=alt.Step(10))


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
