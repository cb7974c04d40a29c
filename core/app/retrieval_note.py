"""What retrieval added beyond the failure's own images, in one sentence per fix, for the Overview and the
Before / after page.

DCD's fix is the failure's labelled images plus the pool images retrieval adds (core.dcd.debug_train); the
simplest fix is the failure's images alone (``error_sample_only``, also DCD's teacher). A stakeholder's
first question is what retrieval bought on top of that, so each DCD fix gets a sentence comparing it with
the failure-only fix of the same failure on the failure's held-out images and on test, with the change's
95% interval. Where the loop found on folds of the failure's images that retrieval did not
help, there is no DCD model: the failure-only fix is DCD's fix, and its sentence says so and why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from core.store.workspace import Workspace

#: How a change's verdict reads in the sentence.
_VERDICT_WORDS = {"gain": "a gain", "regression": "a loss", "within noise": "within noise"}


def _params(ws: Workspace, selection_id: object) -> dict:
    if not isinstance(selection_id, str) or not selection_id:  # a model without a selection reads as NaN
        return {}
    raw = ws.scalar("SELECT params FROM selections WHERE selection_id = ?", [selection_id])
    return json.loads(raw) if raw else {}


def _failure_key(params: dict) -> str:
    """Which failure a selection was made for (core.dcd.failure): its id (a slice target's, recorded under
    ``from_slice`` before failures had kinds), or the error_sample split."""
    return ((params.get("failure") or {}).get("failure_id") or (params.get("from_slice") or {}).get("target_id")
            or "error_sample")


def _failure_set(params: dict) -> str:
    return (params.get("failure") or params.get("from_slice") or {}).get("eval_set") or "error_heldout"


def _models(ws: Workspace, model_ids: Sequence[str]) -> pd.DataFrame:
    df = ws.df("SELECT model_id, method, parent_id, config FROM models WHERE role = 'classifier'")
    df["selection_id"] = [json.loads(c).get("selection_id") if c else None for c in df.config]
    return df[df.model_id.isin(list(model_ids)) | df.method.eq("error_sample_only")]


def _change(ws: Workspace, new: str, ref: str, eval_set: str) -> str | None:
    """'78.4% against 73.1% (+5.3 points, 95% interval +1.2 to +9.3: a gain)' on ``eval_set``, or None; the
    verdict (core.app.story.verdict) says whether the change stands out of the noise of this many images."""
    from core.app.story import newcombe_interval, verdict

    m = ws.df("SELECT model_id, value, n FROM metrics WHERE model_id IN (?, ?) AND eval_set = ? "
              "AND metric = 'accuracy'", [new, ref, eval_set]).set_index("model_id")
    if new not in m.index or ref not in m.index:
        return None
    (a, n_a), (b, n_b) = (m.loc[new, ["value", "n"]], m.loc[ref, ["value", "n"]])
    lo, hi = newcombe_interval(a * n_a, n_a, b * n_b, n_b)
    return (f"{a:.1%} against {b:.1%} ({100 * (a - b):+.1f} points, 95% interval {100 * lo:+.1f} to "
            f"{100 * hi:+.1f}: {_VERDICT_WORDS.get(verdict(lo, hi), 'no interval')})")


def retrieval_notes(ws: Workspace, model_ids: Sequence[str]) -> dict[str, str]:
    """model_id -> the sentence on what retrieval added, for the DCD fixes among ``model_ids`` and the
    failure-only fixes that stood in for DCD (see the module doc)."""
    models = _models(ws, model_ids)
    alone = {(r.parent_id, _failure_key(_params(ws, r.selection_id))): r.model_id
             for r in models[models.method == "error_sample_only"].itertuples()}
    notes = {}
    for r in models[models.model_id.isin(list(model_ids))].itertuples():
        params = _params(ws, r.selection_id)
        if r.method == "dcd" and params.get("n_failure") is not None:
            ref = alone.get((r.parent_id, _failure_key(params)))
            head = (f"Retrieval added {params.get('n_retrieved', 0):,} pool images to the failure's "
                    f"{params['n_failure']:,} labelled images")
            relabelled = params.get("n_relabelled")
            if relabelled:
                head += f" ({relabelled:,} of them trained with the teacher's label instead of their weak one)"
            failure, test = ((_change(ws, r.model_id, ref, _failure_set(params)), _change(ws, r.model_id, ref, "test"))
                             if ref else (None, None))
            if failure:
                head += f": on the failure {failure} with the failure's images alone"
                head += f"; on test {test}" if test else ""
            choice = params.get("retrieval") or {}
            notes[r.model_id] = head + (f". Checked first: {choice['reason']}." if choice.get("reason") else ".")
    for sel in ws.df("SELECT params FROM selections WHERE method = 'dcd'").params:
        params = json.loads(sel) if sel else {}
        choice, teacher = params.get("retrieval") or {}, params.get("teacher_id")
        if teacher in set(model_ids) and choice and not choice.get("used", True):
            notes[teacher] = (f"This is DCD's fix too: {choice['reason']}. Retrieval had found "
                              f"{params.get('n_retrieved', 0):,} pool images.")
    return notes
