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
#: The reference model ("before") is grey; the others take these colours in order (Okabe-Ito, readable with
#: colour-blindness), so a model keeps its colour on every chart that is given the same model order.
REFERENCE_COLOUR = "#8a94a6"
MODEL_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#332288", "#999933",
                 "#882255", "#44AA99"]
VERDICT_OPACITY = {"gain": 1.0, "regression": 1.0, "within noise": 0.35}


def model_scale(models: list[str], reference: str | None = None) -> alt.Scale:
    """One colour per model (in this order; the reference grey): pass the same order to every chart."""
    colours, i = [], 0
    for m in models:
        if m == reference:
            colours.append(REFERENCE_COLOUR)
        else:
            colours.append(MODEL_COLOURS[i % len(MODEL_COLOURS)])
            i += 1
    return alt.Scale(domain=list(models), range=colours)


def _legend() -> alt.Legend:
    return alt.Legend(orient="bottom", direction="vertical", labelLimit=0, title=None)


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


def noise_chart(cells: pd.DataFrame, *, title: str = "") -> alt.LayerChart:
    """Heatmap of an estimated label-noise matrix (long rows: true, given, rate = P(given | true)), the rate
    in each cell; the diagonal is the share of each class labelled right."""
    order = list(dict.fromkeys(cells["true"]))
    base = alt.Chart(cells, title=title or alt.Undefined).encode(
        x=alt.X("given:N", title="given label", sort=order, axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("true:N", title="true class (estimated)", sort=order),
    )
    rect = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color("rate:Q", title="P(given | true)", scale=alt.Scale(scheme="oranges", domain=[0, 0.5],
                                                                         clamp=True)),
        tooltip=[alt.Tooltip("true:N"), alt.Tooltip("given:N"), alt.Tooltip("rate:Q", format=".1%")],
    )
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("rate:Q", format=".0%"),
        color=alt.condition(alt.datum.rate > 0.3, alt.value("white"), alt.value("#1c2430")),
    )
    side = max(180, 34 * len(order))
    return alt.layer(rect, text).properties(width=side, height=side)


def accuracy_bars(acc: pd.DataFrame, *, title: str = "", key: str = "key", what: str = "group",
                  in_order: bool = False) -> alt.LayerChart:
    """Horizontal accuracy bars (worst first, or in the frame's order with ``in_order``: number bins, months)
    from a frame with ``key``, ``accuracy``, ``n`` and, when it has them, ``low`` and ``high`` (the 95%
    interval, drawn as a line across the bar's end); each bar is labelled with its value, so a 0% bar is seen
    as 0%, and labels are never cut. ``what`` names the key in the tooltip."""
    interval = {"low", "high"} <= set(acc.columns)
    tips = [alt.Tooltip(f"{key}:N", title=what), alt.Tooltip("accuracy:Q", format=".1%"),
            alt.Tooltip("n:Q", title="images")]
    if interval:
        tips += [alt.Tooltip("low:Q", title="95% interval from", format=".1%"),
                 alt.Tooltip("high:Q", title="95% interval to", format=".1%")]
    base = alt.Chart(acc, title=title or alt.Undefined).encode(
        y=alt.Y(f"{key}:N", title=None, axis=alt.Axis(labelLimit=0),
                sort=list(acc[key]) if in_order else alt.EncodingSortField("accuracy", order="ascending")),
        x=alt.X("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        tooltip=tips,
    )
    bars = base.mark_bar().encode(color=alt.condition(alt.datum.accuracy < 0.5, alt.value(BAD), alt.value(ACCENT)))
    text = base.mark_text(align="left", dx=4, fontSize=11).encode(text=alt.Text("accuracy:Q", format=".0%"))
    layers = [bars]
    if interval:  # the value's label past the interval's end
        text = text.encode(x="high:Q")
        layers.append(base.mark_rule(color="#1f2937", opacity=0.6).encode(x="low:Q", x2="high:Q"))
    return alt.layer(*layers, text).properties(height=alt.Step(26))


def _set_label(row: pd.Series, set_names: dict[str, str] | None = None) -> str:
    key = row.eval_set if row.metric == "accuracy" else f"{row.eval_set}:{row.metric}"
    if set_names and key in set_names:
        return set_names[key]
    return row.eval_set if row.metric == "accuracy" else f"{row.eval_set} · {row.metric}"


def comparison_chart(long: pd.DataFrame, labels: dict[str, str] | None = None, *, reference: str | None = None,
                     set_names: dict[str, str] | None = None, chance: float | None = None,
                     order: list[str] | None = None) -> alt.LayerChart:
    """Grouped bars: every eval set (row, in ``order`` or as they come) with one bar per model, one colour
    per model with a legend (the reference grey), each bar labelled with its value (a 0% bar shows "0%"),
    full labels, and a dashed line at ``chance``; ``long`` has model_id, eval_set, metric, value (see
    :func:`core.app.queries.comparison_long`); ``labels`` names the models, ``set_names`` the eval sets
    (keys as in :func:`core.app.names.eval_set_names`)."""
    df = long.copy()
    df["set"] = [_set_label(r, set_names) for r in df.itertuples(index=False)] if len(df) else []
    df["model"] = df.model_id.map(lambda m: (labels or {}).get(m, m))
    models = list(dict.fromkeys(df["model"]))
    ref_name = (labels or {}).get(reference, reference) if reference else None
    sets = order or list(dict.fromkeys(df["set"]))
    base = alt.Chart(df).encode(
        y=alt.Y("set:N", title=None, sort=sets, axis=alt.Axis(labelLimit=0)),
        yOffset=alt.YOffset("model:N", sort=models),
        x=alt.X("value:Q", title="accuracy", scale=alt.Scale(domain=[0, 1.08]),
                axis=alt.Axis(format="%", values=[i / 10 for i in range(11)])),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("set:N", title="eval set"),
                 alt.Tooltip("value:Q", format=".1%"), alt.Tooltip("n:Q", title="images")],
    )
    bars = base.mark_bar().encode(color=alt.Color("model:N", scale=model_scale(models, ref_name), legend=_legend()))
    text = base.mark_text(align="left", dx=3, fontSize=10).encode(text=alt.Text("value:Q", format=".0%"))
    layers = [bars, text]
    if chance is not None:
        layers.append(alt.Chart(pd.DataFrame({"chance": [chance]})).mark_rule(strokeDash=[4, 3], color="#5b6472")
                      .encode(x="chance:Q", tooltip=[alt.Tooltip("chance:Q", format=".0%", title="chance")]))
    return alt.layer(*layers).properties(height=alt.Step(11))


def interval_chart(cmp: pd.DataFrame, labels: dict[str, str] | None = None, *,
                   set_names: dict[str, str] | None = None, order: list[str] | None = None) -> alt.LayerChart:
    """Each model's change against the reference with its 95% interval, per eval set (the frame of
    :func:`core.app.story.compare`): a point at the delta and a line across the interval, one colour per model
    with a legend; a change within noise is drawn faint and hollow, a gain or a regression solid, so a
    regression shows as plainly as a gain. A vertical line marks no change."""
    df = cmp[cmp.delta.notna()].copy()
    df["set"] = [_set_label(r, set_names) for r in df.itertuples(index=False)] if len(df) else []
    df["model"] = df.model_id.map(lambda m: (labels or {}).get(m, m))
    df["solid"] = df.verdict != "within noise"
    models = list(dict.fromkeys(df["model"]))
    base = alt.Chart(df).encode(
        y=alt.Y("set:N", title=None, sort=order or list(dict.fromkeys(df["set"])), axis=alt.Axis(labelLimit=0)),
        yOffset=alt.YOffset("model:N", sort=models),
        color=alt.Color("model:N", scale=model_scale(models), legend=_legend()),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("set:N", title="eval set"),
                 alt.Tooltip("ref_value:Q", format=".1%", title="before"),
                 alt.Tooltip("value:Q", format=".1%", title="after"), alt.Tooltip("delta:Q", format="+.1%"),
                 alt.Tooltip("lo:Q", format="+.1%", title="95% from"), alt.Tooltip("hi:Q", format="+.1%", title="to"),
                 alt.Tooltip("n:Q", title="images"), alt.Tooltip("verdict:N")],
    )
    scale = alt.Scale(domain=[-1, 1])
    rule = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("lo:Q", title="change vs reference, with 95% interval", scale=scale, axis=alt.Axis(format="+%")),
        x2="hi:Q", opacity=alt.condition(alt.datum.solid, alt.value(1.0), alt.value(0.35)))
    solid = base.mark_point(size=60, strokeWidth=2, filled=True).encode(x=alt.X("delta:Q", scale=scale)
                                                                        ).transform_filter(alt.datum.solid)
    faint = base.mark_point(size=60, strokeWidth=2, filled=False, opacity=0.5).encode(
        x=alt.X("delta:Q", scale=scale)).transform_filter(~alt.datum.solid)
    zero = alt.Chart(pd.DataFrame({"x": [0]})).mark_rule(color="#1c2430").encode(x="x:Q")
    return alt.layer(rule, solid, faint, zero).properties(height=alt.Step(12))


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
