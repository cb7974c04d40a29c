"""What tells a slice apart: the facts over-represented in it against the rest of its confusion cell.

Slices of one confusion cell share a description ("landbird taken for waterbird"); a reviewer asks what slice
4 has that slice 1 has not. :func:`slice_facts` answers with measured facts, each comparing the slice's
members with the **rest of its confusion cell** (the run's other members of the slice's label and
prediction; unless the slice is nearly its whole cell) and with the **rest of the run**:

- **values**: a planted group (``group``) or a text metadata column's value (core.data.metadata) held by
  more of the slice than of the rest ("93% have group=landbird_on_water, 2.4x the cell");
- **measures**: the prediction's confidence, cheap image properties (brightness, contrast, colourfulness,
  sharpness, aspect ratio, size) and number or date metadata columns, where the slice's members mostly lie
  on one side of the rest's median ("darker: 88% below the cell's median brightness");
- **attention**: where the classifier looks, from the run's attribution heatmaps (the centre of their mass,
  how spread it is): "looks higher up", "looks at one spot";
- **neighbours**: the class most of the slice's members' nearest labelled images hold, in a stored
  embedder's space, where that differs from the rest.

Each is measured against the rest of the cell and against the rest of the run (a fact found against both
is told once, against the cell).

Every fact has a ``score`` in [0, 1] (how much of the slice it separates from the rest: a difference of
shares, or ``|2 AUC - 1|`` for a measure), and facts are listed strongest first, those of the data's own
description (a value most of the slice holds, at least twice as often as the rest; a number or date
metadata column) before the measured ones. :func:`name_facts` names
each slice by its strongest fact, adding the strongest one no earlier slice of its cell is named by where
that fact is shared, so names differ wherever the slices do. A run's facts are computed once and kept beside its mosaics (``artifacts/slices/<run>/facts.json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from core.progress import Progress, as_progress
from core.scanner.image_measures import attention_properties, image_properties
from core.store.workspace import Workspace

#: Fewest other members of its cell a slice is compared with; below it, the rest of the run.
MIN_COMPARISON = 8
#: A value is a fact when the slice holds it this much more often than the rest (difference of shares)
#: and at least :data:`MIN_LIFT` times as often.
MIN_SHARE_GAIN, MIN_LIFT = 0.15, 1.5
#: A value most of the slice holds (a group, a metadata value), clearly more often than the rest, names it
#: before any measure.
MOSTLY, STRONG_LIFT = 0.6, 2.0
#: A measure is a fact when |2 AUC - 1| reaches this (0.4: 70% of slice/rest pairs in one order).
MIN_SEPARATION = 0.4
#: Neighbours looked at per member, and the image side the properties are measured at.
N_NEIGHBOURS, PROPERTY_SIZE = 10, 96
FACTS_VERSION = 3


@dataclass(frozen=True)
class SliceFact:
    """One fact about a slice against ``against`` (``"cell"`` or ``"run"``)."""

    kind: str  # "value", "measure" or "neighbours"
    name: str  # "group", a metadata column, "brightness", ..., "nearest class"
    value: str  # the value held, or the direction of a measure ("lower" / "higher")
    score: float  # in [0, 1]: how much of the slice it separates from the rest
    share: float  # values: share of the slice holding it; measures: share on its side of the rest's median
    base: float  # values: share of the rest holding it; measures: the rest's median
    median: float | None  # measures: the slice's median
    against: str
    text: str  # "93% have group=landbird_on_water (2.4x the cell)"
    short: str  # what a slice's name uses: "group=landbird_on_water"


# -- measures ---------------------------------------------------------------------------------------------

#: measure -> (word when lower, word when higher)
MEASURE_WORDS: dict[str, tuple[str, str]] = {
    "confidence": ("less confident", "more confident"),
    "brightness": ("darker", "brighter"),
    "contrast": ("lower contrast", "higher contrast"),
    "colourfulness": ("less colourful", "more colourful"),
    "sharpness": ("blurrier", "sharper"),
    "aspect ratio": ("taller", "wider"),
    "size": ("smaller", "larger"),
    "attention x": ("looks further left", "looks further right"),
    "attention y": ("looks higher up", "looks lower down"),
    "attention spread": ("looks at one spot", "looks all over"),
}


def _auc(a: np.ndarray, b: np.ndarray) -> float:
    """P(a value of ``a`` > one of ``b``), ties counting half (Mann-Whitney)."""
    both = np.concatenate([a, b])
    ranks = pd.Series(both).rank().to_numpy()[: len(a)]
    return float((ranks.sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def measure_fact(name: str, slice_values: np.ndarray, rest_values: np.ndarray, against: str, *,
                 words: tuple[str, str] | None = None, fmt: Callable[[float], str] = _fmt) -> SliceFact | None:
    """The fact that the slice lies on one side of the rest in ``name`` (``words``: what lower and higher
    values are called; ``fmt`` writes a value), or None below :data:`MIN_SEPARATION` (or without values)."""
    a, b = np.asarray(slice_values, float), np.asarray(rest_values, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return None
    auc = _auc(a, b)
    score = abs(2 * auc - 1)
    if score < MIN_SEPARATION:
        return None
    higher = auc > 0.5
    base, median = float(np.median(b)), float(np.median(a))
    side = float((a > base).mean() if higher else (a < base).mean())
    word = (words or MEASURE_WORDS.get(name, (f"lower {name}", f"higher {name}")))[int(higher)]
    text = (f"{word}: {100 * side:.0f}% {'above' if higher else 'below'} the {against}'s median {name} "
            f"({fmt(median)} vs {fmt(base)})")
    return SliceFact("measure", name, "higher" if higher else "lower", round(score, 4), round(side, 4), base,
                     median, against, text, word)


# -- values -----------------------------------------------------------------------------------------------

def value_facts(name: str, slice_values: pd.Series, rest_values: pd.Series, against: str) -> list[SliceFact]:
    """Values of a categorical column held by clearly more of the slice than of the rest (missing values
    count in neither)."""
    a, b = slice_values.dropna().astype(str), rest_values.dropna().astype(str)
    if a.empty:
        return []
    share_a = a.value_counts() / len(slice_values)
    share_b = b.value_counts() / max(1, len(rest_values))
    out = []
    for value, share in share_a.items():
        base = float(share_b.get(value, 0.0))
        lift = share / max(base, 0.5 / max(1, len(rest_values)))
        if share - base < MIN_SHARE_GAIN or lift < MIN_LIFT:
            continue
        times = f"{lift:.1f}x the {against}" if base > 0 else f"none in the rest of the {against}"
        out.append(SliceFact("value", name, str(value), round(float(share - base), 4), round(float(share), 4),
                             round(base, 4), None, against, f"{100 * share:.0f}% have {name}={value} ({times})",
                             f"{100 * share:.0f}% {name}={value}"))
    return out


def neighbour_fact(slice_classes: np.ndarray, rest_classes: np.ndarray, class_names: Sequence[str],
                   against: str) -> SliceFact | None:
    """The class that most of the slice's members' nearest labelled images hold (each member's majority),
    where clearly more of the slice than of the rest has it."""
    facts = value_facts("nearest class", pd.Series(slice_classes), pd.Series(rest_classes), against)
    if not facts:
        return None
    f = facts[0]
    name = class_names[int(f.value)] if str(f.value).lstrip("-").isdigit() and 0 <= int(f.value) < len(class_names) \
        else f.value
    return SliceFact("neighbours", f.name, name, f.score, f.share, f.base, None, against,
                     f"{100 * f.share:.0f}% look most like {name} (nearest labelled images; "
                     f"{100 * f.base:.0f}% in the rest of the {against})", f"looks like {name}")


# -- a run ------------------------------------------------------------------------------------------------

def facts_for(members: pd.DataFrame, slice_id: int, cell: tuple[int, int] | None, *, value_columns: Sequence[str],
              measure_columns: Sequence[str], class_names: Sequence[str],
              measure_styles: Mapping[str, tuple[tuple[str, str], Callable[[float], str]]] | None = None
              ) -> list[SliceFact]:
    """The facts of one slice, strongest first. ``members``: the run's members with slice_id, label, pred,
    the ``value_columns`` (categorical) and ``measure_columns`` (numeric), and optionally ``nearest``
    (each member's neighbours' majority class). ``measure_styles``: a measure's words for lower and higher
    values and how its values are written (dates, say), where :data:`MEASURE_WORDS` and plain numbers do not
    fit."""
    styles = measure_styles or {}
    inside = members.slice_id == slice_id
    comparisons = []
    if cell is not None:
        in_cell = (members.label == cell[0]) & (members.pred == cell[1])
        if int((in_cell & ~inside).sum()) >= MIN_COMPARISON:
            comparisons.append(("cell", in_cell & ~inside))
    comparisons.append(("run", ~inside))
    a = members[inside]
    facts: list[SliceFact] = []
    seen: set[tuple[str, str]] = set()  # a fact against the cell is not repeated against the run
    for against, rest in comparisons:
        b = members[rest]
        if a.empty or b.empty:
            continue
        found = [f for col in value_columns for f in value_facts(col, a[col], b[col], against)]
        for col in measure_columns:
            words, fmt = styles.get(col, (None, _fmt))
            found.append(measure_fact(col, a[col].to_numpy(float), b[col].to_numpy(float), against, words=words,
                                      fmt=fmt))
        if "nearest" in members:
            found.append(neighbour_fact(a.nearest.to_numpy(), b.nearest.to_numpy(), class_names, against))
        for fact in found:
            if fact is not None and (fact.name, fact.value) not in seen:
                seen.add((fact.name, fact.value))
                facts.append(fact)
    # what the data's own description says (a group, a metadata column) comes first where most of the slice
    # has it: it is what a reviewer can check, and what the people who made the data call it
    def described(f: SliceFact) -> bool:
        return f.name in styles or (f.kind == "value" and f.share >= MOSTLY and f.share >= STRONG_LIFT * f.base)

    return sorted(facts, key=lambda f: (not described(f), -f.score, f.text))


def name_facts(cells: Mapping[int, object], facts: Mapping[int, Sequence[SliceFact]],
               order: Sequence[int]) -> dict[int, list[SliceFact]]:
    """What each slice is named by (``order``: the run's ranking; ``cells``: slice_id -> its cell): its
    strongest fact, and where an earlier slice of the same cell is named by that fact (the same column and
    value), also its strongest fact no earlier slice of the cell uses, so that the names differ. Slices
    with no fact are left out."""
    used: dict[object, set[tuple[str, str]]] = {}
    chosen: dict[int, list[SliceFact]] = {}
    for sid in order:
        taken = used.setdefault(cells.get(sid), set())
        told = list(facts.get(sid, ()))
        if not told:
            continue
        named = [told[0]]
        if (told[0].name, told[0].value) in taken:
            named += [f for f in told[1:] if (f.name, f.value) not in taken][:1]
        taken.update((f.name, f.value) for f in named)
        chosen[sid] = named
    return chosen


def _members(ws: Workspace, run_id: str) -> pd.DataFrame:
    return ws.df("SELECT m.slice_id, m.image_id, i.path, i.label, i.group_name AS \"group\", i.width, i.height, "
                 "p.pred, p.confidence FROM slice_members m JOIN slice_runs r USING (run_id) "
                 "JOIN images i ON i.image_id = m.image_id "
                 "LEFT JOIN predictions p ON p.image_id = m.image_id AND p.model_id = r.model_id "
                 "WHERE m.run_id = ? ORDER BY m.image_id", [run_id])


def _attention(ws: Workspace, run_id: str, image_ids: np.ndarray) -> pd.DataFrame | None:
    """:func:`attention_properties` of the run model's stored attributions of ``image_ids`` (in their
    order), or None where some are missing."""
    from core.scanner.attribution import load_attributions

    model_id = str(ws.scalar("SELECT model_id FROM slice_runs WHERE run_id = ?", [run_id]))
    try:
        att = load_attributions(ws, model_id, image_ids=image_ids.tolist())
    except LookupError:
        return None
    if len(att.image_ids) != len(image_ids):
        return None
    props = attention_properties(att.heatmaps)
    order = pd.Series(np.arange(len(att.image_ids)), index=att.image_ids)
    return props.iloc[order.loc[image_ids].to_numpy()].reset_index(drop=True)


def _nearest_classes(ws: Workspace, image_ids: np.ndarray, *, embed: bool = False,
                     progress: Progress | None = None) -> np.ndarray | None:
    """Each image's majority class among its :data:`N_NEIGHBOURS` nearest labelled images (any split but the
    pool; itself left out) in the search embedder's space (core.dcd.embed.default_search_embedder); None
    where the workspace has no embedder, or (without ``embed``) where it lacks some of the images' vectors.
    With ``embed``, the images it lacks are embedded first (the slices job does; the app never)."""
    import faiss

    from core.dcd.embed import default_search_embedder, embed_missing
    from core.store.vectors import load_embeddings

    try:
        embedder_id = default_search_embedder(ws)
    except ValueError:
        return None
    if embed:
        try:
            embed_missing(ws, embedder_id, image_ids.tolist(), progress=progress)
        except (ValueError, LookupError, OSError) as exc:  # the slices stand without this one fact
            print(f"note: the slices' nearest labelled images are left out: embedding them with {embedder_id} "
                  f"failed ({exc})", flush=True)
            return None
    labelled = ws.df("SELECT image_id, label FROM images WHERE split <> 'pool' AND label IS NOT NULL")
    ids, vecs = load_embeddings(ws, embedder_id, image_ids=labelled.image_id.tolist())
    have = set(int(i) for i in ids)
    if not all(int(i) in have for i in image_ids) or len(ids) <= N_NEIGHBOURS:
        return None
    label_of = dict(zip(labelled.image_id.astype(int), labelled.label.astype(int)))
    vecs = np.ascontiguousarray(vecs, np.float32)
    index = faiss.IndexFlatL2(vecs.shape[1])
    index.add(vecs)
    row_of = {int(i): k for k, i in enumerate(ids)}
    _, nn = index.search(vecs[[row_of[int(i)] for i in image_ids]], N_NEIGHBOURS + 1)
    out = np.empty(len(image_ids), np.int64)
    for k, image_id in enumerate(image_ids):
        classes = [label_of[int(ids[j])] for j in nn[k] if j >= 0 and int(ids[j]) != int(image_id)]
        out[k] = np.bincount(classes[:N_NEIGHBOURS]).argmax()
    return out


def _date_text(days: float) -> str:
    return str(pd.Timestamp(days, unit="D").date())


def with_metadata(ws: Workspace, members: pd.DataFrame) -> tuple[pd.DataFrame, list[str], dict]:
    """The members with their image metadata (core.data.metadata): text columns to compare as values,
    number and date columns as measures (dates in days, written as dates); (members, value columns,
    measure styles by measure column)."""
    from core.data.metadata import image_metadata, metadata_columns

    columns = [c for c in metadata_columns(ws) if c.name not in members.columns]
    if not columns:
        return members, [], {}
    meta = image_metadata(ws, members.image_id.tolist(), columns=[c.name for c in columns])
    members = members.copy()
    values, styles = [], {}
    for c in columns:
        col = meta[c.name].to_numpy()
        if c.kind == "date":
            stamps = pd.to_datetime(pd.Series(col))
            members[c.name] = (stamps - pd.Timestamp(0)).dt.total_seconds().to_numpy() / 86400.0
            styles[c.name] = (("earlier", "later"), _date_text)
        elif c.kind == "number":
            members[c.name] = pd.to_numeric(pd.Series(col), errors="coerce").to_numpy()
            styles[c.name] = ((f"lower {c.name}", f"higher {c.name}"), _fmt)
        else:
            members[c.name] = col
            values.append(c.name)
    return members, values, styles


def compute_slice_facts(ws: Workspace, run_id: str, *, embed: bool = False,
                        progress: Progress | None = None) -> dict[int, list[SliceFact]]:
    """Every slice's facts in ``run_id`` (see the module doc), strongest first. ``embed``: embed the members
    the search embedder lacks, for their nearest labelled images (the slices job does)."""
    from core.data.images import decode_all

    progress = as_progress(progress)
    members = _members(ws, run_id)
    slices = ws.df("SELECT slice_id, dominant_label, dominant_pred FROM slices WHERE run_id = ?", [run_id])
    if members.empty:
        return {}
    px = decode_all(members.path.tolist(), PROPERTY_SIZE, progress=progress.span(0, 0.4),
                    cache_dir=ws.cache_dir("cache"))
    members = pd.concat([members.reset_index(drop=True), image_properties(px)], axis=1)
    members["aspect ratio"] = members.width / members.height
    members["size"] = members.width * members.height
    attention = _attention(ws, run_id, members.image_id.to_numpy(np.int64))
    if attention is not None:
        members = pd.concat([members, attention], axis=1)
    members, meta_values, styles = with_metadata(ws, members)
    values = (["group"] if members["group"].notna().any() else []) + meta_values
    nearest = _nearest_classes(ws, members.image_id.to_numpy(np.int64), embed=embed,
                               progress=progress.span(0.4, 0.95))
    if nearest is not None:
        members["nearest"] = nearest
    measures = ["confidence", *image_properties(px[:1]).columns, "aspect ratio", "size",
                *([] if attention is None else attention.columns), *styles]
    class_names = ws.class_names()
    out = {}
    for s in slices.itertuples(index=False):
        cell = None if pd.isna(s.dominant_label) or pd.isna(s.dominant_pred) else (int(s.dominant_label),
                                                                                     int(s.dominant_pred))
        out[int(s.slice_id)] = facts_for(members, int(s.slice_id), cell, value_columns=values,
                                         measure_columns=measures, class_names=class_names, measure_styles=styles)
    progress.report(1.0, f"facts of {len(out)} slices", force=True)
    return out


def _facts_path(ws: Workspace, run_id: str):
    return ws.artifacts / "slices" / run_id / "facts.json"


def save_slice_facts(ws: Workspace, run_id: str, facts: Mapping[int, Sequence[SliceFact]]) -> None:
    """Keep a run's facts beside its mosaics (written atomically)."""
    from core.store.files import atomic_path

    with atomic_path(_facts_path(ws, run_id)) as tmp:
        tmp.write_text(json.dumps({"version": FACTS_VERSION,
                                   "slices": {str(k): [asdict(f) for f in v] for k, v in facts.items()}}))


_MEMORY: dict[tuple[str, str], dict[int, list[SliceFact]]] = {}


def slice_facts(ws: Workspace, run_id: str, *, progress: Progress | None = None) -> dict[int, list[SliceFact]]:
    """A run's facts: read from its ``facts.json``, else computed (and saved, unless the workspace is
    read-only; then kept in this process's memory)."""
    path = _facts_path(ws, run_id)
    try:
        stored = json.loads(path.read_text())
        if stored.get("version") == FACTS_VERSION:
            return {int(k): [SliceFact(**f) for f in v] for k, v in stored["slices"].items()}
    except (OSError, ValueError, TypeError, KeyError):
        pass
    key = (str(ws.root.resolve()), run_id)
    if key in _MEMORY:
        return _MEMORY[key]
    facts = compute_slice_facts(ws, run_id, progress=progress)
    if ws.read_only:
        _MEMORY[key] = facts
    else:
        save_slice_facts(ws, run_id, facts)
    return facts


def naming_facts(ws: Workspace, run_id: str) -> dict[int, list[SliceFact]]:
    """The fact each slice of ``run_id`` is named by (:func:`name_facts` over :func:`slice_facts`)."""
    slices = ws.df("SELECT slice_id, rank, dominant_label, dominant_pred FROM slices WHERE run_id = ? ORDER BY rank",
                   [run_id])
    cells = {int(r.slice_id): (r.dominant_label, r.dominant_pred) for r in slices.itertuples(index=False)}
    return name_facts(cells, slice_facts(ws, run_id), slices.slice_id.astype(int).tolist())
