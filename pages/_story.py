"""The before/after story as the Overview and the Before / after page both show it: each fix's sentence in a
box coloured by its outcome, and the scorecard (every fix beside the reference on every eval set, each change
with n, its 95% interval and a verdict) as a table and as two charts. ``tale`` is a dict of
:func:`core.app.before_after.comparison_story`."""

from __future__ import annotations

import streamlit as st

from core.app import charts, story

OUTCOME_BOX = {"fix": st.success, "trade-off": st.warning, "harm": st.error, "no change": st.info}
OUTCOME_WORDS = {"fix": "a fix", "trade-off": "a trade-off", "harm": "harm", "no change": "no real change"}


def outcome_box(tale: dict, model_id: str) -> None:
    """The fix's sentence in a box: green a fix, amber a trade-off, red harm, blue no real change."""
    outcome = tale["outcomes"].get(model_id) or "no change"
    OUTCOME_BOX[outcome](f"**{OUTCOME_WORDS[outcome].capitalize()}.** {tale['sentences'][model_id]}")
    retrieval_caption(tale, model_id)


def retrieval_caption(tale: dict, model_id: str) -> None:
    """What retrieval added beyond the failure's own images, under a DCD fix (or the failure-only fix that
    stands in for it)."""
    note = (tale.get("retrieval") or {}).get(model_id)
    if note:
        st.caption(note)


def outcome_word(tale: dict, model_id: str) -> str:
    return OUTCOME_WORDS.get(tale["outcomes"].get(model_id), "–")


def short_names(tale: dict) -> dict[str, str]:
    """Model names without ' from <reference>' (a fix fine-tuned from the reference), the reference marked."""
    ref = tale["reference"]
    ref_name = tale["names"].get(ref, ref)
    out = {m: tale["names"].get(m, m).removesuffix(f" from {ref_name}") for m in tale["fixes"]}
    return {ref: f"{ref_name} (before)", **out}


def scorecard_ui(tale: dict, *, key: str) -> None:
    """Every fix beside the reference on every eval set: a coloured table, the values as bars and the
    changes with their 95% intervals."""
    cmp, ids = tale["comparison"], [tale["reference"], *tale["fixes"]]
    if cmp.empty:
        st.info("No metrics yet: run the evaluate job (Jobs page).")
        return
    labels = short_names(tale)
    cells, verdicts = story.scorecard(cmp, ids, names=labels, set_names=tale["set_names"])
    order = cells["eval set"].tolist()
    t_table, t_values, t_changes = st.tabs(["Table", "Accuracy", "Changes with 95% interval"], key=f"{key}_view")
    with t_table:
        st.dataframe(story.style_scorecard(cells, verdicts), hide_index=True, key=f"{key}_scorecard",
                     width="stretch", height=min(35 * (len(cells) + 1) + 3, 600))
        st.caption("▲ gain / ▼ regression: the whole 95% interval of the change lies above / below 0; "
                   "≈ within noise. Changes in accuracy points ± half their 95% interval; n: images in the set. "
                   "E_sample is not evidence (the fixes trained on it or on its neighbours)"
                   + (f"; each change is against {tale['names'].get(ids[0], ids[0])}." if len(ids) > 1 else "."))
    with t_values:
        long = cmp[cmp.kind != "other"][["model_id", "eval_set", "metric", "value", "n"]]
        st.altair_chart(charts.comparison_chart(long, labels, reference=ids[0], set_names=tale["set_names"],
                                                chance=story.chance_level(tale["num_classes"]), order=order),
                        key=f"{key}_chart", width="stretch")
        st.caption("Dashed line: chance level.")
    with t_changes:
        if len(ids) < 2:
            st.caption("Choose a second classifier to see changes.")
        else:
            shown = cmp[(cmp.kind != "other") & (cmp.kind != "trained_on")]
            st.altair_chart(charts.interval_chart(shown, labels, set_names=tale["set_names"], order=order),
                            key=f"{key}_changes", width="stretch")
            st.caption("Each change against the reference with its 95% interval: solid, a gain or a regression; "
                       "faint and hollow, within noise. Left of the line is worse.")
