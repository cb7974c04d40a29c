"""Human names for what the dashboard shows: models, selections, slices, eval sets and jobs, in one place.

A person reads "DCD from Baseline", "my birds", "#1 · waterbird taken for landbird (502 images, 0% right)",
"Test · waterbird on land" and "Retrain Baseline with 'my birds'" instead of ``dcd-89a88c``,
``dcd-1d4ef251``, ``slice 7``, ``test/group=waterbird_on_land`` and ``retrain --selection-id ...``.
The functions over frames are pure (testable without a workspace); :func:`model_names`,
:func:`selection_names` and :func:`slice_names` take a workspace and read what they need. Ids stay the key
everywhere: a name is only for display.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from core.scanner.slice_facts import SliceFact
from core.store.workspace import Workspace

#: What each method is called; unknown methods are shown as written, underscores as spaces.
METHOD_NAMES = {"baseline": "Baseline", "dcd": "DCD", "random": "Random pool images", "all_pool": "All pool images",
                "error_sample_only": "E_sample only", "corm": "CoRM", "finetune": "Fine-tuned",
                "upweight": "Upweighted slices"}
#: The fixed eval sets.
SET_NAMES = {"test": "Test", "error_heldout": "Failure (debug-heldout)", "error_sample": "E_sample (trained on)",
             "train": "Train"}
METRIC_NAMES = {"accuracy": "", "worst_group_acc": "worst group", "balanced_accuracy": "balanced accuracy"}
#: Selection names the jobs give when the user gives none: (pattern, how to say it).
_AUTO_SELECTION = [(re.compile(r"^dcd(-.+)?(-k\d+)?-b\d+$"), "DCD retrieval"), (re.compile(r"^random-\d+$"), "Random"),
                   (re.compile(r"^all-pool$"), "All pool"), (re.compile(r"^error-sample-only$"), "E_sample only")]
JOB_VERBS = {"ingest": "Ingest images", "train": "Train a classifier", "embed": "Embed images",
             "predict": "Predict", "select": "Select a debug-train set", "retrain": "Retrain",
             "evaluate": "Evaluate", "pipeline": "Whole DCD loop", "demo": "Build a demo workspace",
             "attribute": "Attribute (Grad-CAM)", "slices": "Find slices", "annotate_demo": "Annotate slices",
             "failure": "Name a failure"}


def _unique(names: dict[str, str]) -> dict[str, str]:
    """Names made unique in insertion order: the second 'DCD from Baseline' becomes 'DCD from Baseline (2)'."""
    seen: dict[str, int] = {}
    out = {}
    for key, name in names.items():
        seen[name] = seen.get(name, 0) + 1
        out[key] = name if seen[name] == 1 else f"{name} ({seen[name]})"
    return out


def method_name(method: str | None) -> str:
    """'DCD', 'Random pool images' ... for a method ('Model' when there is none)."""
    if not isinstance(method, str) or not method:
        return "Model"
    return METHOD_NAMES.get(method, method.replace("_", " ").capitalize())


# -- models ---------------------------------------------------------------------------------------------

def _config(value: Any) -> dict:
    if isinstance(value, dict):
        return value
    try:
        return json.loads(value) if isinstance(value, str) and value else {}
    except ValueError:
        return {}


def name_models(models: pd.DataFrame, selections: Mapping[str, str] | None = None) -> dict[str, str]:
    """model_id -> name, from ``models`` (model_id, role, arch, method, parent_id, config; in creation order).

    A classifier without a parent is called by its method ('Baseline'); a fine-tuned one by its method,
    the user's selection when it has a name of its own, and its parent: 'DCD from Baseline', "DCD 'my birds'
    from Baseline"; an embedder by its architecture. Repeated names get '(2)', '(3)' in creation order.
    ``selections`` maps selection ids to their names as stored (a job's own name such as 'dcd-k20-b400' is
    left out of the model's name)."""
    names: dict[str, str] = {}
    by_id = {r.model_id: r for r in models.itertuples(index=False)}

    def name_of(model_id: str, depth: int = 0) -> str:
        if model_id in names:
            return names[model_id]
        r = by_id.get(model_id)
        if r is None or depth > 8:
            return model_id
        if r.role == "embedder":
            return f"{r.arch} (embedder)"
        what = method_name(r.method if isinstance(r.method, str) else ("baseline" if not _has(r.parent_id)
                                                                        else "finetune"))
        sel = _config(getattr(r, "config", None)).get("selection_id")
        sel_name = (selections or {}).get(sel) if sel else None
        if sel_name and not _is_auto(sel_name):
            what += f" '{sel_name}'"
        return f"{what} from {name_of(r.parent_id, depth + 1)}" if _has(r.parent_id) else what

    raw = {r.model_id: name_of(r.model_id) for r in models.itertuples(index=False)}
    names.update(_unique(raw))
    return names


def _has(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def model_names(ws: Workspace) -> dict[str, str]:
    """Every model of the workspace by name (see :func:`name_models`)."""
    models = ws.df("SELECT model_id, role, arch, method, parent_id, config FROM models ORDER BY created_at")
    sels = ws.df("SELECT selection_id, name FROM selections")
    return name_models(models, dict(zip(sels.selection_id, sels.name)))


def embedder_name(embedder_id: str, models: Mapping[str, str] | None = None) -> str:
    """'Baseline's own features', 'efficientnet_lite0.imagenet (embedder), multiscale' ...: the feature space
    an embedder id names (``classifier:<model>`` is a classifier's penultimate layer; ``+multiscale`` the
    last stages' statistics)."""
    from core.models.catalog import CLASSIFIER_EMBEDDER_PREFIX, split_embedder_id

    base, layers = split_embedder_id(embedder_id)
    models = models or {}
    if base.startswith(CLASSIFIER_EMBEDDER_PREFIX):
        model = base[len(CLASSIFIER_EMBEDDER_PREFIX):]
        name = f"{models.get(model, model)}'s own features"
    else:
        name = models.get(base, base)
    return name if layers == "penultimate" else f"{name}, {layers}"


# -- selections -------------------------------------------------------------------------------------------

def _is_auto(name: str) -> bool:
    return any(p.match(name) for p, _ in _AUTO_SELECTION)


def name_selections(selections: pd.DataFrame) -> dict[str, str]:
    """selection_id -> name, from ``selections`` (selection_id, name, n_items; newest first as
    :func:`core.dcd.selection.list_selections` lists them): the name the user typed, or for a job's own
    name ('dcd-k5-b500') what it is: 'DCD retrieval (500 images)'. Repeated names get '(2)' ... from the
    oldest."""
    rows = list(selections.itertuples(index=False))[::-1]  # oldest first: the first keeps the plain name
    raw = {}
    for r in rows:
        name = str(r.name)
        for pattern, said in _AUTO_SELECTION:
            if pattern.match(name):
                n = getattr(r, "n_items", None)
                name = f"{said} ({int(n)} images)" if n is not None and n == n else said
                break
        raw[r.selection_id] = name
    return _unique(raw)


def selection_names(ws: Workspace) -> dict[str, str]:
    """Every selection of the workspace by name (see :func:`name_selections`)."""
    from core.dcd.selection import list_selections

    return name_selections(list_selections(ws))


# -- slices -------------------------------------------------------------------------------------------------

def _confusion(value: Any) -> list[list[int]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return [list(map(int, row)) for row in value] if value is not None and len(value) else []


def describe_slice(row: Mapping | pd.Series, class_names: Sequence[str],
                   facts: Sequence[SliceFact] | None = None) -> str:
    """What a slice holds, from its confusion matrix (rows: label, columns: prediction): 'waterbird taken
    for landbird' (its largest cell is an error), 'landbird, recognised' (a correct cell), 'mixed' without
    one cell of at least half the slice; unlabelled members count only in the size. With ``facts`` (what
    sets it apart, core.scanner.slice_facts.name_facts), they follow: 'landbird taken for waterbird: 93%
    group=landbird_on_water'."""
    what = _describe_cell(row, class_names)
    return f"{what}: {', '.join(f.short for f in facts)}" if facts else what


def _describe_cell(row: Mapping | pd.Series, class_names: Sequence[str]) -> str:
    conf = _confusion(row.get("confusion"))
    total = sum(map(sum, conf))
    name = lambda c: class_names[c] if 0 <= c < len(class_names) else f"class {c}"  # noqa: E731
    if not total:
        label, pred = row.get("dominant_label"), row.get("dominant_pred")
        if pd.notna(label) and pd.notna(pred):
            return (f"{name(int(label))} taken for {name(int(pred))}" if int(label) != int(pred)
                    else f"{name(int(label))}, recognised")
        return "unlabelled images"
    n, i, j = max(((conf[i][j], i, j) for i in range(len(conf)) for j in range(len(conf[i]))), key=lambda c: c[0])
    what = f"{name(i)} taken for {name(j)}" if i != j else f"{name(i)}, recognised"
    return what if n >= total / 2 else f"mixed, mostly {what}"


def slice_name(row: Mapping | pd.Series, class_names: Sequence[str],
               facts: Sequence[SliceFact] | None = None) -> str:
    """'#1 · waterbird taken for landbird: 93% group=landbird_on_water (502 images, 0% right)': rank,
    contents, what sets it apart (``facts``), size and accuracy."""
    acc = row.get("accuracy")
    right = f", {100 * acc:.0f}% right" if acc is not None and acc == acc else ""
    return f"#{int(row['rank'])} · {describe_slice(row, class_names, facts)} ({int(row['size']):,} images{right})"


def name_slices(slices: pd.DataFrame, class_names: Sequence[str],
                facts: Mapping[int, Sequence[SliceFact]] | None = None) -> dict[int, str]:
    """slice_id -> :func:`slice_name` for a run's slices (rank, size, accuracy, confusion, dominant_*), each
    with the facts it is named by (``facts``: slice_id -> facts, core.scanner.slice_facts.naming_facts)."""
    facts = facts or {}
    return {int(r["slice_id"]): slice_name(r, class_names, facts.get(int(r["slice_id"])))
            for _, r in slices.iterrows()}


def slice_names(ws: Workspace, run_id: str | None = None) -> dict[int, str]:
    """The slices of a run (default: the latest) by name, each with what sets it apart; {} without a run."""
    from core.scanner.slice_facts import naming_facts

    run_id = run_id or ws.scalar("SELECT run_id FROM slice_runs ORDER BY created_at DESC LIMIT 1")
    if not run_id:
        return {}
    slices = ws.df("SELECT slice_id, rank, size, accuracy, confusion, dominant_label, dominant_pred FROM slices "
                   "WHERE run_id = ? ORDER BY rank", [run_id])
    return name_slices(slices, ws.class_names(), naming_facts(ws, run_id))


# -- failures -------------------------------------------------------------------------------------------------

def failure_names(ws: Workspace) -> dict[str, str]:
    """Every failure of the workspace (core.dcd.failure.list_failures, in its order: the newest first, the
    ``error_sample`` split last) by name, with its parts: 'Slice #1 · waterbird taken for landbird ... · 6 to
    search with, 6 held out', '3 uploaded image(s) of disc (no held-out part: measured on test only) · 3 to
    search with'. Keyed by the failure's reference (``--failure``)."""
    from core.dcd.failure import list_failures

    runs: dict[str, dict[int, str]] = {}
    out: dict[str, str] = {}
    for f in list_failures(ws):
        if f.kind == "slice":
            run_id = str(f.source["run_id"])
            named = runs.setdefault(run_id, slice_names(ws, run_id)).get(int(f.source["slice_id"]))
            base = f"Slice {named} of run {run_id}" if named else f.name
        elif f.kind == "error_sample":
            base = "The error sample (the error_sample split; held out: error_heldout)"
        else:
            base = f.name
        parts = f"{len(f.query_ids)} to search with"
        if f.heldout_ids:
            parts += f", {len(f.heldout_ids)} held out"
        elif "held-out" not in base:
            parts += ", no held-out part"
        out[f.failure_id] = f"{base} · {parts}"
    return out


# -- eval sets ------------------------------------------------------------------------------------------------

def eval_set_name(eval_set: str, metric: str = "accuracy", *, slices: Mapping[int, str] | None = None) -> str:
    """'Test', 'Failure (debug-heldout)', 'Test · waterbird on land', 'Test · worst group', a slice's name
    (``slice=<id>``, from ``slices``: slice_id -> name), 'Slice #2 (held-out part)' (``slice:<run>:<rank>``) or
    'Failure f3 (held-out part)' (``failure:<id>``, core.dcd.failure)."""
    if eval_set in SET_NAMES:
        base = SET_NAMES[eval_set]
    elif eval_set.startswith("test/group="):
        base = "Test · " + eval_set.split("=", 1)[1].replace("_", " ")
    elif eval_set.startswith("slice="):
        sid = eval_set.split("=", 1)[1]
        base = (slices or {}).get(int(sid), f"Slice {sid}") if sid.isdigit() else eval_set
        base = f"Slice {base}" if base.startswith("#") else base
    elif eval_set.startswith("slice:"):
        base = f"Slice #{eval_set.rsplit(':', 1)[-1]} (held-out part)"
    elif eval_set.startswith("failure:"):
        base = f"Failure {eval_set.split(':', 1)[1]} (held-out part)"
    else:
        base = eval_set
    extra = METRIC_NAMES.get(metric, metric.replace("_", " "))
    return f"{base} · {extra}" if extra else base


def eval_set_names(keys: Sequence[tuple[str, str]], *, slices: Mapping[int, str] | None = None) -> dict[str, str]:
    """{key: name} for (eval_set, metric) pairs, the key being the eval set for accuracy and
    'eval_set:metric' otherwise (as :func:`core.app.story.tell` looks them up)."""
    return {(e if m == "accuracy" else f"{e}:{m}"): eval_set_name(e, m, slices=slices) for e, m in keys}


# -- jobs -------------------------------------------------------------------------------------------------------

def _arg(args: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def job_name(kind: str, args: Sequence[str], *, models: Mapping[str, str] | None = None,
             selections: Mapping[str, str] | None = None) -> str:
    """'Retrain Baseline with my birds', 'Retrain the current classifier with CoRM', 'Predict with DCD from
    Baseline', 'Whole DCD loop' ...: what a job does, with the models and selections its arguments name."""
    models, selections = models or {}, selections or {}
    clf = _arg(args, "--classifier-id") or _arg(args, "--base-model-id") or _arg(args, "--model-id")
    who = models.get(clf, clf) if clf else "the current classifier"
    verb = JOB_VERBS.get(kind, kind)
    if kind == "retrain":
        sel = _arg(args, "--selection-id")
        how = ("with CoRM" if _arg(args, "--mitigate") == "corm"
               else f"with {selections.get(sel, sel)}" if sel else "on train only")
        return f"Retrain {who} {how}"
    if kind in ("predict", "evaluate", "attribute", "slices"):
        return f"{verb} with {who}" if kind in ("predict", "evaluate") else f"{verb} of {who}"
    if kind == "select":
        return f"{verb} ({_arg(args, '--method') or 'dcd'})"
    return verb
