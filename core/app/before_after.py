"""The before/after story over a workspace: which classifiers to compare, their honest comparison
(:func:`core.app.story.compare` on every stored metric and slice), the sentence that tells it, and a few
images of the failure. Plain functions of a Workspace, cached by the pages like :mod:`core.app.queries`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from core.app.queries import comparison_long, confident_mistakes, current_classifier_id
from core.store.workspace import Workspace

#: The order fixes are told in: DCD's first, then the failure's images alone (what retrieval is measured
#: against), then the other baselines; anything else after them, oldest first.
FIX_ORDER = ("dcd", "error_sample_only", "random", "all_pool")


def story_models(ws: Workspace) -> tuple[str | None, list[str]]:
    """(reference, the classifiers fine-tuned from it, in :data:`FIX_ORDER`): the current classifier when
    something was fine-tuned from it, else its parent (it is a fix itself), else the current classifier
    alone."""
    current = current_classifier_id(ws)
    if not current:
        return None, []

    def children(model_id: str) -> list[str]:
        kids = ws.df("SELECT model_id, method FROM models WHERE role = 'classifier' AND parent_id = ? "
                     "ORDER BY created_at", [model_id])
        rank = {m: i for i, m in enumerate(FIX_ORDER)}
        kids["_r"] = kids.method.map(lambda m: rank.get(m, len(FIX_ORDER)))
        return kids.sort_values("_r", kind="stable").model_id.tolist()

    kids = children(current)
    parent = ws.scalar("SELECT parent_id FROM models WHERE model_id = ?", [current])
    if kids or not parent:
        return current, kids
    return parent, children(parent)


def story_comparison(ws: Workspace, model_ids: Sequence[str], reference: str) -> pd.DataFrame:
    """:func:`core.app.story.compare` of ``model_ids`` against ``reference`` on every stored metric and slice."""
    from core.app.story import compare

    ids = [reference, *[m for m in model_ids if m != reference]]
    return compare(comparison_long(ws, ids), ids, reference)


def story_set_names(ws: Workspace, cmp: pd.DataFrame) -> dict[str, str]:
    """Human names of the eval sets of a comparison, keyed as :func:`core.app.story.tell` looks them up."""
    from core.app.names import eval_set_names, slice_names

    keys = list(dict.fromkeys(zip(cmp.eval_set, cmp.metric)))
    return eval_set_names(keys, slices=slice_names(ws) if any(e.startswith("slice=") for e, _ in keys) else None)


def model_story(ws: Workspace, model_id: str, reference: str | None = None) -> str | None:
    """The before/after sentence of ``model_id`` against ``reference`` (default: the model it was fine-tuned
    from), or None when there is nothing to compare."""
    from core.app.names import model_names
    from core.app.story import tell

    reference = reference or ws.scalar("SELECT parent_id FROM models WHERE model_id = ?", [model_id])
    if not reference:
        return None
    cmp = story_comparison(ws, [model_id], reference)
    if cmp[cmp.model_id == model_id].delta.notna().sum() == 0:
        return None
    return tell(cmp, model_id, reference=reference, num_classes=len(ws.class_names()), names=model_names(ws),
                set_names=story_set_names(ws, cmp), failure_name=failure_description(ws))


def failure_examples(ws: Workspace, model_id: str, limit: int = 6) -> pd.DataFrame:
    """A few images of the failure the model gets wrong, most confident first, taking each true class in
    turn (so both halves of a two-sided failure show): debug-heldout, else the error sample (columns of
    :func:`confident_mistakes`)."""
    for split in ("error_heldout", "error_sample"):
        found = confident_mistakes(ws, model_id, split, limit=50 * limit)
        if len(found):
            turn = found.groupby("label", sort=False).cumcount()
            return found.assign(_t=turn).sort_values(["_t", "confidence"], ascending=[True, False],
                                                     kind="stable").head(limit).drop(columns="_t")
    return confident_mistakes(ws, model_id, "error_heldout", limit=0)


def failure_description(ws: Workspace) -> str | None:
    """What the failure's images are, when the workspace knows their ground-truth groups: the groups that
    make up debug-heldout ('landbird on water and waterbird on land'), or None (no groups, or no three
    groups hold 80% of it)."""
    groups = ws.df("SELECT group_name, count(*) AS n FROM images WHERE split = 'error_heldout' "
                   "AND group_name IS NOT NULL GROUP BY ALL ORDER BY n DESC, group_name LIMIT 3")
    total = ws.scalar("SELECT count(*) FROM images WHERE split = 'error_heldout'") or 0
    big = groups[groups.n >= 0.1 * total]
    if big.empty or big.n.sum() < 0.8 * total:
        return None
    return " and ".join(sorted(str(g).replace("_", " ") for g in big.group_name))


def comparison_story(ws: Workspace, model_ids: Sequence[str], reference: str) -> dict:
    """Every fix in ``model_ids`` told against ``reference``, in one cached read: ``reference``, ``fixes``
    (the others, in order), ``comparison`` (:func:`story_comparison`), ``set_names``, ``names`` (models),
    ``retrieval`` (what retrieval added beyond the failure's images, core.app.retrieval_note, per DCD fix),
    ``sentences`` and ``outcomes`` per fix (:func:`core.app.story.tell` / ``outcome``), ``failure_name``
    (:func:`failure_description`) and ``num_classes``."""
    from core.app import story
    from core.app.names import model_names
    from core.app.retrieval_note import retrieval_notes

    fixes = [m for m in dict.fromkeys(model_ids) if m != reference]
    names, k = model_names(ws), len(ws.class_names())
    cmp = story_comparison(ws, fixes, reference)
    set_names, failure_name = story_set_names(ws, cmp), failure_description(ws)
    return {"reference": reference, "fixes": fixes, "names": names, "num_classes": k, "comparison": cmp,
            "set_names": set_names, "failure_name": failure_name, "retrieval": retrieval_notes(ws, fixes),
            "sentences": {m: story.tell(cmp, m, reference=reference, num_classes=k, names=names,
                                        set_names=set_names, failure_name=failure_name) for m in fixes},
            "outcomes": {m: story.outcome(cmp, m) for m in fixes}}


def overview_story(ws: Workspace) -> dict:
    """Everything the Overview tells, in one cached read: :func:`comparison_story` of the fixes of
    :func:`story_models` against its reference, plus ``headline`` (the fix to lead with: the current
    classifier if it is one, else the largest gain on the failure) and ``reference_sentence``; with no
    classifier, ``reference`` is None and the rest empty."""
    from core.app import story
    from core.app.names import model_names

    reference, fixes = story_models(ws)
    if reference is None:
        return {"reference": None, "fixes": [], "names": model_names(ws), "num_classes": len(ws.class_names()),
                "failure_name": failure_description(ws), "sentences": {}, "outcomes": {}, "headline": None,
                "comparison": pd.DataFrame(columns=story.COLUMNS), "set_names": {}, "reference_sentence": None}
    out = comparison_story(ws, fixes, reference)
    cmp, names, k = out["comparison"], out["names"], out["num_classes"]
    ref_rows = cmp[cmp.model_id == reference].set_index(["eval_set", "metric"])
    values = {key: (ref_rows.loc[(e, m), "value"], int(ref_rows.loc[(e, m), "n"]))
              for key, (e, m) in {"test": ("test", "accuracy"), "error_heldout": ("error_heldout", "accuracy"),
                                  "worst_group": ("test", "worst_group_acc")}.items() if (e, m) in ref_rows.index}
    what = f"the failure ({out['failure_name']})" if out["failure_name"] else "the failure (debug-heldout)"
    out["reference_sentence"] = story.describe_model(values, name=names.get(reference, reference), num_classes=k,
                                                     failure_name=what)
    fails = cmp[(cmp.kind == "failure") & cmp.delta.notna()].sort_values("delta", ascending=False)
    current = current_classifier_id(ws)
    out["headline"] = current if current in fixes else (fails.model_id.iloc[0] if len(fails) else
                                                        (fixes[0] if fixes else None))
    return out
