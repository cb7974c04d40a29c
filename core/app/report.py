"""The before/after export: the honest comparison (:func:`core.app.story.compare`) as CSV, and as a one-page,
self-contained HTML report.

The HTML has no script and no external resource (it opens offline, in any browser, or attached to an
e-mail): each fix's sentence, coloured by its outcome, then the scorecard (every eval set, every model, each
change with its 95% interval, gains green and regressions red).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from core.app import story
from core.app.html_parts import esc, generated_at, page

CSV_COLUMNS = ["model", "model_id", "eval_set", "eval set", "metric", "n", "value", "reference value", "delta",
               "delta 95% low", "delta 95% high", "verdict"]
OUTCOME_CLASS = {"fix": "gain", "trade-off": "mixed", "harm": "regression", "no change": "noise"}
EXTRA_CSS = """
.tell{border-radius:6px;padding:10px 14px;margin:8px 0;font-size:14px}
.tell.gain{background:#e3f4e8} .tell.mixed{background:#fff4d6} .tell.regression{background:#fbe4e6}
.tell.noise{background:#eef2f7}
td.gain{background:#e3f4e8;color:#14532d} td.regression{background:#fbe4e6;color:#7f1d1d}
td.within{color:#5b6472}
"""


def comparison_csv(cmp: pd.DataFrame, *, names: Mapping[str, str] | None = None,
                   set_names: Mapping[str, str] | None = None) -> str:
    """Every row of a comparison as CSV: model, eval set (id and name), n, value, the reference's value, the
    change and its 95% interval, the verdict."""
    from core.app.names import eval_set_name

    def set_name(e: str, m: str) -> str:
        return (set_names or {}).get(e if m == "accuracy" else f"{e}:{m}") or eval_set_name(e, m)

    out = pd.DataFrame({
        "model": [(names or {}).get(m, m) for m in cmp.model_id], "model_id": cmp.model_id,
        "eval_set": cmp.eval_set, "eval set": [set_name(e, m) for e, m in zip(cmp.eval_set, cmp.metric)],
        "metric": cmp.metric, "n": cmp.n, "value": cmp.value, "reference value": cmp.ref_value,
        "delta": cmp.delta, "delta 95% low": cmp.lo, "delta 95% high": cmp.hi, "verdict": cmp.verdict,
    }, columns=CSV_COLUMNS)
    return out.to_csv(index=False, float_format="%.6g")


def comparison_html(tale: dict, *, workspace: str = "", names: Mapping[str, str] | None = None,
                    title: str = "Before / after") -> str:
    """A one-page HTML report of :func:`core.app.before_after.comparison_story`'s ``tale``: a sentence per
    fix, then the scorecard."""
    ref, ids = tale["reference"], [tale["reference"], *tale["fixes"]]
    names = dict(names or {m: tale["names"].get(m, m) for m in ids})
    cells, verdicts = story.scorecard(tale["comparison"], ids, names=names, set_names=tale["set_names"])
    told = "".join(f'<div class="tell {OUTCOME_CLASS.get(tale["outcomes"].get(m), "noise")}">'
                   f"{esc(tale['sentences'][m])}</div>" for m in tale["fixes"])
    head = "".join(f"<th>{esc(c)}</th>" for c in cells.columns)
    rows = []
    for (_, r), (_, v) in zip(cells.iterrows(), verdicts.iterrows()):
        tds = [f"<td>{esc(r['eval set'])}</td>", f'<td class="num">{"" if pd.isna(r["n"]) else int(r["n"])}</td>']
        for c in cells.columns[2:]:
            cls = {"gain": "gain", "regression": "regression", "within noise": "within"}.get(v[c], "")
            tds.append(f'<td class="num {cls}">{esc(r[c])}</td>')
        rows.append(f"<tr>{''.join(tds)}</tr>")
    k = tale["num_classes"]
    body = (f"<h1>{esc(title)}</h1>"
            f'<div class="sub">Workspace {esc(workspace)} · reference {esc(names.get(ref, ref))} · {generated_at()}. '
            f"Accuracy is the share of correctly classified images ({k} classes: guessing scores "
            f"{100 / k:.0f}%). Each change is in accuracy points ± half its 95% interval; ▲ gain / ▼ regression "
            f"when the whole interval lies above / below 0, ≈ within noise; n: images in the set.</div>"
            f"{told}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return page(title, body, extra_css=EXTRA_CSS)
