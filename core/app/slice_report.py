"""A stakeholder's report of one slice and its fix, as one self-contained HTML page.

:func:`slice_report_data` gathers what a person who does not read code needs about slice ``RANK`` of slice
run ``RUN``: the slice (size, accuracy, its main confusion in words), its Attribution Mosaic, its
annotations, what was done about it (debug-train selections made for it, ``params.from_slice``, and the
models fine-tuned on them; mitigation models of its run, ``config.mitigation``) and the before/after: the
slice run's classifier against each fix, on the slice's held-out part (eval set ``slice:RUN:RANK``), on
test and on the worst test group, each change with its 95% interval and verdict as the Before / after page
computes them (core.app.story), and the sentence that tells it; and, where the images have metadata, the
members' most frequent values of each metadata column beside their share of all images
(core.app.breakdowns.metadata_shares).
core.app.slice_report_page.slice_report_html lays it out, with no script and no external
resource, so the file opens offline and reads when e-mailed::

    html = slice_report_html(slice_report_data(ws, "latest", 1))
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.app.breakdowns import ColumnShares, metadata_shares
from core.app.names import model_names, selection_names
from core.app.story import compare, outcome, tell
from core.dcd.slice_targets import EVAL_SET_PREFIX, get_target, resolve_slice
from core.models.evaluation import metrics_table
from core.scanner.annotations import current_annotations, list_annotations
from core.scanner.runs import get_slices, render_slice_mosaic
from core.scanner.slice_facts import slice_facts
from core.store.workspace import Workspace


@dataclass(frozen=True)
class Delta:
    """A change of accuracy (after - before, a fraction) with its 95% interval and verdict (core.app.story:
    'gain', 'regression' or 'within noise'); ``images``: the change in correctly classified images."""

    value: float
    low: float
    high: float
    verdict: str
    images: int | None = None

    @property
    def within_noise(self) -> bool:
        return self.verdict == "within noise"


@dataclass(frozen=True)
class Measure:
    value: float | None
    n: int | None
    delta: Delta | None = None


@dataclass(frozen=True)
class ModelResult:
    """One classifier's numbers: ``heldout`` (the slice's held-out part), ``test``, ``worst_group`` (the
    lowest test group accuracy, ``group`` naming it); deltas against the slice run's classifier."""

    model_id: str
    name: str
    method: str
    heldout: Measure
    test: Measure
    worst_group: Measure
    group: str | None = None
    outcome: str | None = None
    sentence: str = ""


@dataclass(frozen=True)
class SelectionFix:
    selection_id: str
    name: str
    method: str
    size: int
    label_mix: dict[str, int]
    status: dict[str, int]
    params: dict
    model_ids: tuple[str, ...]


@dataclass(frozen=True)
class MitigationFix:
    model_id: str
    chosen: str
    settings: dict
    reason: str
    candidates: tuple[dict, ...]
    kinds_here: tuple[str, ...]


@dataclass
class SliceReportData:
    """Everything the slice report shows (see the module doc)."""

    workspace: str
    run_id: str
    rank: int
    slice_id: int
    size: int
    accuracy: float | None
    class_names: list[str]
    dominant_label: str
    dominant_pred: str
    confusion: list[list[int]]
    cell_text: str
    mosaic_png: bytes | None
    mosaic_note: str
    annotations: list[dict]
    history: list[dict]
    eval_set: str
    n_query: int | None
    n_heldout: int | None
    selections: list[SelectionFix]
    mitigations: list[MitigationFix]
    before: ModelResult
    fixes: list[ModelResult]
    next_steps: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)  # what sets it apart, strongest first (core.scanner.slice_facts)
    facts_against: str = "cell"
    metadata: list[ColumnShares] = field(default_factory=list)

    @property
    def slice_ref(self) -> str:
        return f"{self.run_id}:{self.rank}"


# -- gathering ------------------------------------------------------------------------------------------

def _json(value: object) -> dict:
    try:
        return json.loads(value) if isinstance(value, str) and value else {}
    except ValueError:
        return {}


def describe_confusion(confusion: list[list[int]], names: list[str]) -> str:
    """The slice's largest mistake in words ("41 waterbird images predicted landbird")."""
    cells = [(n, i, j) for i, row in enumerate(confusion) for j, n in enumerate(row) if i != j and n]
    if not cells:
        return f"all {sum(map(sum, confusion))} labelled images classified correctly"
    n, i, j = max(cells)
    return f"{n} {names[i]} image{'s' if n != 1 else ''} predicted {names[j]}"


def _mosaic(ws: Workspace, run_id: str, slice_id: int, stored: object) -> tuple[bytes | None, str]:
    if isinstance(stored, str) and Path(stored).is_file() and ws.contains(stored):
        return Path(stored).read_bytes(), ""
    try:
        img = render_slice_mosaic(ws, run_id, slice_id)
    except (LookupError, ValueError) as exc:  # no members or no attributions left to draw from
        return None, f"The mosaic could not be drawn: {exc}"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), ""


def _annotations(ws: Workspace, run_id: str, slice_id: int, names: list[str]) -> tuple[list[dict], list[dict]]:
    def rows(df: pd.DataFrame) -> list[dict]:
        return [{"kind": r.kind, "note": None if pd.isna(r.note) else r.note,
                 "annotator": None if pd.isna(r.annotator) else r.annotator,
                 "relabel_to": None if pd.isna(r.relabel_to) else names[int(r.relabel_to)],
                 "created_at": str(r.created_at)[:16]} for r in df.itertuples()]

    cur = current_annotations(ws, run_id)
    return rows(cur[cur.slice_id == slice_id]), rows(list_annotations(ws, run_id).query("slice_id == @slice_id"))


def _selections(ws: Workspace, run_id: str, rank: int, names: list[str], models: pd.DataFrame) -> list[SelectionFix]:
    """The selections made for the slice (``params.from_slice``), by their human names, with the models
    fine-tuned on them (``config.selection_id``)."""
    sel = ws.df("SELECT selection_id, name, method, params FROM selections ORDER BY created_at")
    human = selection_names(ws)
    out = []
    for r in sel.itertuples():
        params = _json(r.params)
        src = params.get("from_slice") or {}
        if src.get("target_id") != f"{run_id}:{rank}" and (src.get("run_id"), src.get("rank")) != (run_id, rank):
            continue
        items = ws.df("SELECT label, status FROM selection_items WHERE selection_id = ?", [r.selection_id])
        kept = items[items.status != "rejected"]
        mix = kept.label.astype(int).map(lambda c: names[c]).value_counts()
        trained = tuple(m for m, c in zip(models.model_id, models.config) if c.get("selection_id") == r.selection_id)
        status = {s: int((items.status == s).sum()) for s in ("proposed", "accepted", "rejected")}
        out.append(SelectionFix(r.selection_id, human.get(r.selection_id, r.name), r.method, len(items),
                                {str(k): int(v) for k, v in mix.items()}, status, params, trained))
    return out


def _mitigations(run_id: str, slice_id: int, models: pd.DataFrame) -> list[MitigationFix]:
    out = []
    for mid, cfg in zip(models.model_id, models.config):
        mit = cfg.get("mitigation") or {}
        if mit.get("run_id") != run_id:
            continue
        cands = tuple(mit.get("candidates") or ())
        chosen = next((c for c in cands if c.get("name") == mit.get("chosen")), {})
        kinds = (mit.get("findings") or {}).get(str(slice_id)) or []
        out.append(MitigationFix(mid, str(mit.get("chosen") or "?"), dict(chosen.get("settings") or {}),
                                 str(mit.get("reason") or ""), cands, tuple(kinds)))
    return out


def _heldout_from_predictions(ws: Workspace, model_id: str, eval_set: str) -> tuple[float | None, int | None]:
    row = ws.fetchone("SELECT avg(p.correct::INT)::DOUBLE, count(*) FROM eval_sets e JOIN predictions p "
                      "ON p.image_id = e.image_id AND p.model_id = ? WHERE e.eval_set = ? AND p.correct IS NOT NULL",
                      [model_id, eval_set])
    return (None, None) if not row or not row[1] else (float(row[0]), int(row[1]))


def _long(ws: Workspace, model_ids: list[str], eval_set: str) -> pd.DataFrame:
    """The models' stored metrics (model_id, eval_set, metric, value, n), with the held-out accuracy taken
    from predictions for a model whose metrics predate the held-out eval set."""
    long = metrics_table(ws, model_ids)[["model_id", "eval_set", "metric", "value", "n"]]
    extra = []
    for mid in model_ids:
        if not ((long.model_id == mid) & (long.eval_set == eval_set)).any():
            value, n = _heldout_from_predictions(ws, mid, eval_set)
            if value is not None:
                extra.append({"model_id": mid, "eval_set": eval_set, "metric": "accuracy", "value": value, "n": n})
    return pd.concat([long, pd.DataFrame(extra)], ignore_index=True) if extra else long


def _worst_group(long: pd.DataFrame, model_id: str) -> str | None:
    groups = long[(long.model_id == model_id) & long.eval_set.str.startswith("test/group=") &
                  (long.metric == "accuracy")]
    return None if groups.empty else str(groups.sort_values(["value", "eval_set"]).eval_set.iloc[0]).split("=", 1)[1]


def _results(ws: Workspace, models: pd.DataFrame, before: str, fixes: list[str], eval_set: str,
             failure: str) -> tuple[ModelResult, list[ModelResult]]:
    """The classifier under test and each fix on the held-out part, test and the worst test group, compared
    by core.app.story (the same numbers, intervals and verdicts as the Before / after page)."""
    ids = [before, *fixes]
    long = _long(ws, ids, eval_set)
    cmp = compare(long, ids, before)
    method_of = dict(zip(models.model_id, models.method))
    label = model_names(ws)
    k = int(ws.scalar("SELECT count(*) FROM classes"))

    def measure(mid: str, es: str, metric: str = "accuracy") -> Measure:
        r = cmp[(cmp.model_id == mid) & (cmp.eval_set == es) & (cmp.metric == metric)]
        if r.empty:
            return Measure(None, None)
        r = r.iloc[0]
        n = None if pd.isna(r.n) else int(r.n)
        if mid == before or pd.isna(r.delta) or pd.isna(r.lo):
            return Measure(float(r.value), n)
        images = None if r.images is None or pd.isna(r.images) else int(r.images)
        return Measure(float(r.value), n, Delta(float(r.delta), float(r.lo), float(r.hi), str(r.verdict), images))

    def result(mid: str) -> ModelResult:
        told = "" if mid == before else tell(cmp, mid, reference=before, num_classes=k, names=label,
                                             failure_set=eval_set, failure_name=failure)
        return ModelResult(mid, label.get(mid, mid), str(method_of.get(mid) or ""), measure(mid, eval_set),
                           measure(mid, "test"), measure(mid, "test", "worst_group_acc"), _worst_group(long, mid),
                           None if mid == before else outcome(cmp, mid, eval_set), told)

    return result(before), [result(m) for m in fixes]


def _next_steps(ws: Workspace, data_ref: str, has_target: bool, has_fix: bool, annotated: bool) -> list[str]:
    w, steps = ws.root, []
    if not has_target:
        steps.append(f"This slice has no held-out part yet, so a fix cannot be measured on it. Make it DCD's target: "
                     f"`python -m jobs.select --workspace {w} --method dcd --from-slice {data_ref}` (and the same "
                     f"with `--method random` for the baseline of the same budget).")
    if not has_fix:
        steps.append(f"No fix yet. Fine-tune on the slice's selection: `python -m jobs.retrain --workspace {w} "
                     f"--selection-id SEL`, then `python -m jobs.evaluate --workspace {w}`; or annotate the slice "
                     f"and run `python -m jobs.retrain --workspace {w} --mitigate corm`.")
    if not annotated:
        steps.append("Not annotated yet: say what the model relies on here on the Slices page.")
    return steps


def slice_report_data(ws: Workspace, run_id: str, rank: int) -> SliceReportData:
    """Gather the report of slice ``rank`` of ``run_id`` (``latest``: the newest run). An unknown run or
    rank raises core.dcd.slice_targets.SliceRefError (a ValueError) naming the runs or ranks that exist."""
    run_id, slice_id = resolve_slice(ws, run_id, int(rank))
    names = ws.class_names()
    s = get_slices(ws, run_id).set_index("slice_id").loc[slice_id]
    confusion = json.loads(s.confusion) if isinstance(s.confusion, str) else []
    mosaic, mosaic_note = _mosaic(ws, run_id, slice_id, s.mosaic_path)
    annotations, history = _annotations(ws, run_id, slice_id, names)
    target = get_target(ws, f"{run_id}:{int(rank)}")
    eval_set = f"{EVAL_SET_PREFIX}{run_id}:{int(rank)}"
    models = ws.df("SELECT model_id, arch, parent_id, method, config FROM models WHERE role = 'classifier' "
                   "ORDER BY created_at")
    models["config"] = models.config.map(_json)
    selections = _selections(ws, run_id, int(rank), names, models)
    mitigations = _mitigations(run_id, slice_id, models)
    before_id = str(ws.scalar("SELECT model_id FROM slice_runs WHERE run_id = ?", [run_id]))
    fix_ids = list(dict.fromkeys([m for f in selections for m in f.model_ids] + [f.model_id for f in mitigations]))
    fix_ids = [m for m in fix_ids if m != before_id]
    before, fixes = _results(ws, models, before_id, fix_ids, eval_set, f"the held-out part of slice {rank}")
    told = slice_facts(ws, run_id).get(int(slice_id), [])
    members = ws.df("SELECT image_id FROM slice_members WHERE run_id = ? AND slice_id = ?", [run_id, slice_id])
    return SliceReportData(
        facts=[f.text for f in told], facts_against=told[0].against if told else "cell",
        workspace=str(ws.root), run_id=run_id, rank=int(rank), slice_id=int(slice_id), size=int(s["size"]),
        accuracy=None if pd.isna(s.accuracy) else float(s.accuracy), class_names=names,
        dominant_label=names[int(s.dominant_label)] if pd.notna(s.dominant_label) else "?",
        dominant_pred=names[int(s.dominant_pred)] if pd.notna(s.dominant_pred) else "?",
        confusion=confusion, cell_text=describe_confusion(confusion, names) if confusion else "",
        mosaic_png=mosaic, mosaic_note=mosaic_note, annotations=annotations, history=history, eval_set=eval_set,
        n_query=len(target.query_ids) if target else None, n_heldout=len(target.heldout_ids) if target else None,
        selections=selections, mitigations=mitigations, before=before, fixes=fixes,
        next_steps=_next_steps(ws, f"{run_id}:{int(rank)}", target is not None, bool(fix_ids), bool(annotations)),
        metadata=metadata_shares(ws, members.image_id.tolist()))


def slices_fixed_by(ws: Workspace, model_ids: Sequence[str]) -> list[tuple[str, int]]:
    """(run_id, rank) of the slices the given classifiers are fixes of: fine-tuned on a selection made for
    the slice, or a mitigation of its run (then its slices annotated in the mitigation's findings)."""
    out: list[tuple[str, int]] = []
    if not model_ids:
        return out
    cfgs = ws.df("SELECT config FROM models WHERE model_id IN (SELECT unnest(?::VARCHAR[]))", [list(model_ids)])
    sel_ids = {_json(c).get("selection_id") for c in cfgs.config} - {None}
    for c in ws.df("SELECT selection_id, params FROM selections").itertuples():
        src = _json(c.params).get("from_slice") or {}
        if c.selection_id in sel_ids and src.get("run_id") is not None and src.get("rank") is not None:
            out.append((str(src["run_id"]), int(src["rank"])))
    for c in cfgs.config:
        mit = _json(c).get("mitigation") or {}
        if mit.get("run_id"):
            ranks = ws.df("SELECT slice_id, rank FROM slices WHERE run_id = ?", [mit["run_id"]])
            found = {str(k) for k in (mit.get("findings") or {})}
            out += [(mit["run_id"], int(r.rank)) for r in ranks.itertuples() if str(r.slice_id) in found]
    return sorted(set(out), key=lambda t: (t[0], t[1]))


def report_filename(run_id: str, rank: int) -> str:
    """The report's file name: ``<run>-<rank>.html``."""
    return f"{run_id}-{int(rank)}.html"
