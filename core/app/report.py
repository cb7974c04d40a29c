"""The before/after export: the comparison table as CSV and as a one-page, self-contained HTML report.

The HTML has no script and no external resource (it opens offline, in any browser, or attached to an
e-mail): a table of every eval set with a bar per model drawn in CSS, and the deltas against the reference
model coloured by sign.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from core.app.html_parts import esc, fmt_delta, fmt_pct, generated_at, page


def comparison_csv(table: pd.DataFrame) -> str:
    """The comparison table (see :func:`core.app.queries.comparison_table`) as CSV text."""
    return table.to_csv(index=False, float_format="%.6g")


def comparison_html(table: pd.DataFrame, model_ids: Sequence[str], *, title: str = "Before / after",
                    labels: Mapping[str, str] | None = None, workspace: str = "",
                    reference: str | None = None) -> str:
    """A one-page HTML report of a comparison table: headline cards, then every eval set."""
    labels = labels or {}
    reference = reference or (model_ids[0] if model_ids else None)
    name = lambda m: esc(labels.get(m, m))  # noqa: E731
    cards = []
    for eval_set, what in (("test", "test accuracy"), ("error_heldout", "debug-heldout accuracy")):
        row = table[(table.eval_set == eval_set) & (table.metric == "accuracy")]
        if row.empty:
            continue
        for m in model_ids:
            if m == reference:
                continue
            delta = row.iloc[0].get(f"Δ {m}")
            cards.append(f'<div class="card"><div class="v">{fmt_pct(row.iloc[0][m])} {fmt_delta(delta)}</div>'
                         f'<div class="l">{esc(what)} · {name(m)}</div></div>')
    head = "".join(f"<th>{name(m)}</th>" for m in model_ids)
    head += "".join(f"<th>Δ {name(m)}</th>" for m in model_ids if m != reference)
    rows = []
    for _, r in table.iterrows():
        metric = "" if r.metric == "accuracy" else f" · {esc(str(r.metric))}"
        n = "" if pd.isna(r.get("n")) else f'<br><span class="sub">{int(r["n"])} images</span>'
        cells = "".join(
            f'<td class="num">{fmt_pct(r[m])}<div class="bar" style="width:{0 if pd.isna(r[m]) else 100 * float(r[m]):.0f}%">'
            f"</div></td>" for m in model_ids)
        cells += "".join(f'<td class="num">{fmt_delta(r.get(f"Δ {m}"))}</td>' for m in model_ids if m != reference)
        rows.append(f"<tr><td>{esc(str(r.eval_set))}{metric}{n}</td>{cells}</tr>")
    body = (f"<h1>{esc(title)}</h1>"
            f'<div class="sub">Workspace {esc(workspace)} · reference model {name(reference or "")} · '
            f"{generated_at()}. Accuracy is the share of correctly classified images; Δ is the change against "
            f"the reference, in percentage points. debug-heldout: held-out images of the failure mode being "
            f"fixed.</div>"
            f'<div class="cards">{"".join(cards)}</div>'
            f"<table><thead><tr><th>evaluation set</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return page(title, body)
