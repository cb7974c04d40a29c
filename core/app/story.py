"""The honest before/after: every model against a reference on every eval set, with n, a 95% interval and a
verdict, and the one sentence a stakeholder reads, generated from those numbers.

Accuracies are proportions of ``n`` images, so each delta gets the Newcombe hybrid score interval for a
difference of two proportions (Newcombe 1998, method 10, from Wilson score intervals). It treats the two
accuracies as independent; both models are scored on the same images, so the paired interval would be
somewhat narrower: the verdict here errs on the side of "within noise". A delta is a ``gain`` when its whole
interval lies above 0, a ``regression`` when below 0, else ``within noise``. Chance level is
``1 / num_classes``.

Everything here is pure pandas over the long metrics frame of :func:`core.app.queries.comparison_long`
(model_id, eval_set, metric, value, n), so it works for any page::

    cmp = compare(long, model_ids, reference)               # one row per (model, eval set, metric)
    tell(cmp, "dcd-1", reference="base-1", num_classes=2,   # "DCD raised accuracy on the failure ..."
         names={"dcd-1": "DCD", "base-1": "Baseline"})
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

Z95 = 1.959964  # two-sided 95%
VERDICTS = ("gain", "regression", "within noise")
#: What an eval set says about a fix: the failure it targets, or everything else it must not break.
KINDS = ("failure", "test", "worst_group", "group", "train", "slice", "trained_on", "other")
#: Kinds searched for regressions ("everything else"): a fix must hold these.
ELSEWHERE = ("test", "worst_group", "group", "train", "slice")
COLUMNS = ["model_id", "eval_set", "metric", "kind", "value", "n", "ref_value", "ref_n", "delta", "lo", "hi",
           "verdict", "images"]
#: A group that was at least this good and fell to at most the next is a shortcut swapped, not a fix.
SWAP_WAS, SWAP_NOW = 0.8, 0.5


# -- intervals --------------------------------------------------------------------------------------

def wilson_interval(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k / n`` (``(nan, nan)`` when ``n`` is 0)."""
    if not n or n <= 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(k_new: float, n_new: float, k_ref: float, n_ref: float,
                      z: float = Z95) -> tuple[float, float]:
    """95% interval of ``k_new/n_new - k_ref/n_ref`` (Newcombe's hybrid score method)."""
    if not n_new or not n_ref:
        return math.nan, math.nan
    p1, p2 = k_new / n_new, k_ref / n_ref
    l1, u1 = wilson_interval(k_new, n_new, z)
    l2, u2 = wilson_interval(k_ref, n_ref, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def verdict(lo: float, hi: float) -> str | None:
    """'gain' (interval above 0), 'regression' (below 0), 'within noise', or None without an interval."""
    if lo != lo or hi != hi:  # NaN
        return None
    return "gain" if lo > 0 else "regression" if hi < 0 else "within noise"


def chance_level(num_classes: int) -> float:
    """Accuracy of guessing among ``num_classes`` classes: ``1 / num_classes``."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return 1.0 / num_classes


def at_chance(value: float, n: int, num_classes: int) -> bool:
    """Whether an accuracy of ``value`` on ``n`` images cannot be told from guessing (chance lies inside its
    95% Wilson interval)."""
    if value != value or not n or num_classes < 2:
        return False
    lo, hi = wilson_interval(round(value * n), n)
    return lo <= chance_level(num_classes) <= hi


# -- the comparison ---------------------------------------------------------------------------------

def set_kind(eval_set: str, metric: str = "accuracy") -> str:
    """Which of :data:`KINDS` an eval set is: ``error_heldout`` and a slice's held-out part
    (``slice:<run>:<rank>``) are the failure; ``error_sample`` was trained on (DCD retrieves for it)."""
    if metric == "worst_group_acc":
        return "worst_group"
    if metric != "accuracy":
        return "other"
    if eval_set == "error_heldout" or eval_set.startswith("slice:"):
        return "failure"
    fixed = {"test": "test", "train": "train", "error_sample": "trained_on"}
    if eval_set in fixed:
        return fixed[eval_set]
    if eval_set.startswith("test/group="):
        return "group"
    return "slice" if eval_set.startswith("slice=") else "other"


def _worst_group_n(long: pd.DataFrame) -> dict[str, int]:
    """model_id -> size of its worst test group (the n behind its worst-group accuracy)."""
    groups = long[long.eval_set.str.startswith("test/group=") & (long.metric == "accuracy")]
    if groups.empty:
        return {}
    worst = groups.sort_values(["value", "eval_set"]).drop_duplicates("model_id")
    return dict(zip(worst.model_id, worst.n.astype(int)))


def compare(long: pd.DataFrame, model_ids: Sequence[str], reference: str) -> pd.DataFrame:
    """Each model's value on each (eval set, metric) beside the reference's, with the delta (a fraction:
    0.1 = 10 points), its 95% interval ``lo``/``hi``, the :func:`verdict`, ``images`` (the delta in images,
    ``delta * n``) and the set's :func:`set_kind`. The reference's own rows have no delta. A
    ``worst_group_acc`` row's ``n`` is the size of that model's worst group. Columns: :data:`COLUMNS`;
    rows in ``model_ids`` order, then in the order of ``long``."""
    if long.empty or reference not in set(long.model_id):
        return pd.DataFrame(columns=COLUMNS)
    df = long[long.model_id.isin(list(model_ids))][["model_id", "eval_set", "metric", "value", "n"]].copy()
    df["n"] = pd.to_numeric(df["n"], errors="coerce").astype(float)
    wg = _worst_group_n(df)
    is_wg = df.metric == "worst_group_acc"
    if is_wg.any():
        df.loc[is_wg, "n"] = [wg.get(m, n) for m, n in zip(df.model_id[is_wg], df.n[is_wg])]
    ref = df[df.model_id == reference].set_index(["eval_set", "metric"])[["value", "n"]]
    ref.columns = ["ref_value", "ref_n"]
    df = df.join(ref, on=["eval_set", "metric"])
    df["kind"] = [set_kind(e, m) for e, m in zip(df.eval_set, df.metric)]
    rows = []
    for r in df.itertuples(index=False):
        lo = hi = delta = math.nan
        if r.model_id != reference and pd.notna(r.ref_value) and pd.notna(r.n) and pd.notna(r.ref_n):
            delta = r.value - r.ref_value
            lo, hi = newcombe_interval(round(r.value * r.n), r.n, round(r.ref_value * r.ref_n), r.ref_n)
        rows.append((lo, hi, delta))
    df["lo"], df["hi"], df["delta"] = zip(*rows) if rows else ([], [], [])
    df["verdict"] = [verdict(lo, hi) for lo, hi in zip(df.lo, df.hi)]
    df["images"] = [round(d * n) if d == d and pd.notna(n) else None for d, n in zip(df.delta, df.n)]
    order = {m: i for i, m in enumerate(model_ids)}
    df["_o"] = df.model_id.map(order)
    return df.sort_values("_o", kind="stable").drop(columns="_o")[COLUMNS].reset_index(drop=True)


# -- words --------------------------------------------------------------------------------------------

def pct(value: float | None) -> str:
    """'77.5%' ('–' when unknown); whole numbers without the decimal."""
    if value is None or value != value:
        return "–"
    text = f"{100 * value:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"


def delta_text(row: Mapping | pd.Series, *, with_n: bool = True) -> str:
    """'+77.5 pt ± 13.9 (n=40)': the delta in points with half its 95% interval, or '+4 of 30 images' style
    when the set is small (n < 100), where a point is less than one image."""
    delta, lo, hi, n = row["delta"], row["lo"], row["hi"], row["n"]
    if delta is None or delta != delta:
        return "–"
    half = 100 * (hi - lo) / 2 if lo == lo and hi == hi else math.nan
    text = f"{100 * delta:+.1f} pt" + (f" ± {half:.1f}" if half == half else "")
    if with_n and pd.notna(n):
        text += f" (n={int(n)})" if n >= 100 else f" ({int(row['images']):+d} of {int(n)} images)"
    return text


def _name(names: Mapping[str, str] | None, key: str) -> str:
    return (names or {}).get(key, key)


def _moved(row: pd.Series, set_name: str) -> str:
    way = "rose" if row["delta"] > 0 else "fell"
    return f"{set_name} {way} from {pct(row['ref_value'])} to {pct(row['value'])}"


def _chance_note(row: pd.Series, num_classes: int) -> str:
    if set_kind(row["eval_set"], row["metric"]) == "test" and at_chance(row["value"], row["n"], num_classes):
        return f", which is chance for {num_classes} classes"
    return ""


def swapped_groups(cmp: pd.DataFrame, model_id: str) -> pd.DataFrame:
    """Groups or slices the model broke: at least :data:`SWAP_WAS` for the reference, at most
    :data:`SWAP_NOW` now, a significant regression."""
    rows = cmp[(cmp.model_id == model_id) & cmp.kind.isin(["group", "slice"]) & (cmp.verdict == "regression")]
    return rows[(rows.ref_value >= SWAP_WAS) & (rows.value <= SWAP_NOW)]


def outcome(cmp: pd.DataFrame, model_id: str, failure_set: str | None = None) -> str | None:
    """One word for the model against the reference: 'fix' (the failure gained and nothing else regressed),
    'trade-off' (gained, but something else regressed), 'harm' (a regression, no gain on the failure),
    'no change' (everything within noise), or None without a comparison."""
    rows = cmp[cmp.model_id == model_id]
    if rows.verdict.isna().all():
        return None
    fail = _failure_row(rows, failure_set)
    gained = fail is not None and fail["verdict"] == "gain"
    regressed = bool((rows.kind.isin(ELSEWHERE) & (rows.verdict == "regression")).any()
                     or (fail is not None and fail["verdict"] == "regression"))
    if gained:
        return "trade-off" if regressed else "fix"
    return "harm" if regressed else "no change"


def _failure_row(rows: pd.DataFrame, failure_set: str | None) -> pd.Series | None:
    fails = rows[rows.kind == "failure"] if failure_set is None else rows[rows.eval_set == failure_set]
    fails = fails[fails.delta.notna()]
    if fails.empty:
        return None
    preferred = fails[fails.eval_set == "error_heldout"]
    return (preferred if len(preferred) else fails).iloc[0]


def tell(cmp: pd.DataFrame, model_id: str, *, reference: str, num_classes: int,
         names: Mapping[str, str] | None = None, set_names: Mapping[str, str] | None = None,
         failure_set: str | None = None, failure_name: str | None = None) -> str:
    """One sentence from the numbers of :func:`compare`: what ``model_id`` did on the failure (value before
    and after, n, delta ± interval, or "within noise"), then the worst significant regression elsewhere (test
    first), whether test is at chance, and whether it swapped one shortcut for another (a group or slice that
    was right became wrong while the failure rose). ``names`` maps model ids, ``set_names`` eval sets to
    what to call them (default: :func:`core.app.names.eval_set_name`); ``failure_set`` defaults to
    ``error_heldout``, else the first slice held-out set; ``failure_name`` says what the failure is
    ("waterbird on land"), else a slice's set name is used."""
    rows = cmp[(cmp.model_id == model_id) & cmp.delta.notna()]
    who = _name(names, model_id)
    if rows.empty:
        return f"{who} has no metrics to compare with {_name(names, reference)} yet."
    fail = _failure_row(rows, failure_set)
    gained = fail is not None and fail["verdict"] == "gain"
    text = (_failure_clause(fail, who, set_names, failure_name) if fail is not None
            else f"{who} has no failure set to compare on")
    fell = rows[rows.kind.isin(ELSEWHERE) & (rows.verdict == "regression")].sort_values("delta")
    test = rows[rows.kind == "test"]
    test = test.iloc[0] if len(test) else None
    if len(fell):
        first = fell[fell.kind == "test"].iloc[0] if (fell.kind == "test").any() else fell.iloc[0]
        text += (" but " if gained else " and ") + _moved(first, _set_name(set_names, first))
        text += _chance_note(first, num_classes)
        if len(fell) > 1:
            worst = fell[fell.index != first.name].iloc[0]
            more = len(fell) - 1
            text += (f", and {more} more set{'s' if more > 1 else ''} fell (worst: {_set_name(set_names, worst)} "
                     f"{pct(worst['ref_value'])} → {pct(worst['value'])})")
    else:
        text += " and nothing else got significantly worse"
        if test is not None and test["verdict"] == "gain":
            text += f" ({_moved(test, 'test')})"
    if test is not None and (not len(fell) or first["kind"] != "test") and at_chance(test["value"], test["n"],
                                                                                      num_classes):
        text += f"; test is at chance ({pct(test['value'])}, for {num_classes} classes)"
    if gained and len(swapped_groups(cmp, model_id)):
        text += ": it swapped one shortcut for another"
    return text + "."


def _set_name(set_names: Mapping[str, str] | None, row: pd.Series) -> str:
    """What to call an eval set inside a sentence: 'test', 'train', 'landbird on land (test)' ..."""
    from core.app.names import eval_set_name

    kind = row["kind"]
    if kind in ("test", "worst_group", "train"):
        return {"test": "test", "worst_group": "the worst test group", "train": "train"}[kind]
    if kind == "group":
        return row["eval_set"].split("=", 1)[1].replace("_", " ") + " (test)"
    key = row["eval_set"] if row["metric"] == "accuracy" else f"{row['eval_set']}:{row['metric']}"
    name = (set_names or {}).get(key) or eval_set_name(row["eval_set"], row["metric"])
    return name[:1].lower() + name[1:] if name[:2] != name[:2].upper() else name


def _failure_clause(fail: pd.Series, who: str, set_names: Mapping[str, str] | None,
                    failure_name: str | None) -> str:
    what = failure_name or ((set_names or {}).get(fail["eval_set"]) if fail["eval_set"] != "error_heldout" else None)
    where = f"the failure ({what})" if what else "the failure"
    numbers = f"from {pct(fail['ref_value'])} to {pct(fail['value'])} ({_interval_words(fail)})"
    if fail["verdict"] == "gain":
        return f"{who} raised accuracy on {where} {numbers}"
    if fail["verdict"] == "regression":
        return f"{who} lowered accuracy on {where} {numbers}"
    return f"{who} moved accuracy on {where} {numbers}, which is within noise,"


def _interval_words(row: pd.Series) -> str:
    text = delta_text(row, with_n=False)
    n = int(row["n"])
    return f"n={n}, {text}" if n >= 100 else f"{int(row['images']):+d} of {n} images, {text}"


def describe_model(values: Mapping[str, tuple[float, int]], *, name: str, num_classes: int,
                   failure_name: str = "the failure") -> str:
    """One sentence for a model on its own: ``values`` maps 'test', 'error_heldout' and 'worst_group' to
    (accuracy, n), any of them missing; chance is stated when test is at chance."""
    bits = []
    if "test" in values:
        v, n = values["test"]
        chance = f", which is chance for {num_classes} classes" if at_chance(v, n, num_classes) else ""
        bits.append(f"{pct(v)} of {n} test images right{chance}")
    if "error_heldout" in values:
        v, n = values["error_heldout"]
        bits.append(f"{pct(v)} of the {n} images of {failure_name}")
    if "worst_group" in values:
        bits.append(f"{pct(values['worst_group'][0])} on its worst test group")
    if not bits:
        return f"{name} has no metrics yet: run the evaluate job."
    return f"{name} gets " + (", ".join(bits[:-1]) + " and " + bits[-1] if len(bits) > 1 else bits[0]) + "."


# -- the scorecard: every model side by side ---------------------------------------------------------

KIND_ORDER = {k: i for i, k in enumerate(("failure", "test", "worst_group", "group", "train", "slice",
                                          "trained_on", "other"))}
MARKS = {"gain": "▲", "regression": "▼", "within noise": "≈"}
STYLES = {"gain": "background-color: #e3f4e8; color: #14532d", "regression": "background-color: #fbe4e6; "
          "color: #7f1d1d", "within noise": "color: #5b6472"}


def cell_text(row: Mapping | pd.Series) -> str:
    """'79.5% ▲ +77.5 ±6.0' (a gain), '20% ▼ -80.0 ±5.5' (a regression), '0% ≈ -2.0 ±2.6' (within noise),
    or the value alone for the reference."""
    text = pct(row["value"])
    if row.get("verdict") is None or row["delta"] != row["delta"]:
        return text
    half = 100 * (row["hi"] - row["lo"]) / 2
    return f"{text} {MARKS[row['verdict']]} {100 * row['delta']:+.1f} ±{half:.1f}"


def scorecard(cmp: pd.DataFrame, model_ids: Sequence[str], *, names: Mapping[str, str] | None = None,
              set_names: Mapping[str, str] | None = None, kinds: Sequence[str] | None = None
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, verdicts): one row per eval set (the failure first, then test, the worst group, each group,
    train, each slice, what was trained on), a column ``eval set``, a column ``n`` and one column per model
    (named by ``names``, in ``model_ids`` order) holding :func:`cell_text`; ``verdicts`` has the same shape
    with each cell's verdict (None for the reference), for colouring (:func:`style_scorecard`). ``kinds``
    keeps only those kinds of set. Metrics other than accuracy and worst-group accuracy are left out."""
    df = cmp[cmp.kind != "other"] if kinds is None else cmp[cmp.kind.isin(list(kinds))]
    keys = list(dict.fromkeys(zip(df.eval_set, df.metric, df.kind)))
    keys.sort(key=lambda k: KIND_ORDER.get(k[2], 99))  # stable: slices stay by rank
    by = {(r.model_id, r.eval_set, r.metric): r._asdict() for r in df.itertuples(index=False)}
    cols = [_name(names, m) for m in model_ids]
    cells, verdicts = [], []
    for e, m, kind in keys:
        label = (set_names or {}).get(e if m == "accuracy" else f"{e}:{m}") or _fallback_set_name(e, m)
        ns = [by[(mid, e, m)]["n"] for mid in model_ids if (mid, e, m) in by]
        row, ver = {"eval set": label, "n": int(max(ns)) if ns else None}, {"eval set": None, "n": None}
        for mid, col in zip(model_ids, cols):
            r = by.get((mid, e, m))
            row[col] = cell_text(r) if r else "–"
            ver[col] = r["verdict"] if r and kind != "trained_on" else None  # no credit for what was trained on
        cells.append(row)
        verdicts.append(ver)
    return pd.DataFrame(cells, columns=["eval set", "n", *cols]), pd.DataFrame(verdicts, columns=["eval set", "n", *cols])


def _fallback_set_name(eval_set: str, metric: str) -> str:
    from core.app.names import eval_set_name

    return eval_set_name(eval_set, metric)


def style_scorecard(cells: pd.DataFrame, verdicts: pd.DataFrame):
    """A pandas Styler of the scorecard: gains green, regressions red, changes within noise grey."""
    return cells.style.apply(lambda _: verdicts.map(lambda v: STYLES.get(v, "")), axis=None)
