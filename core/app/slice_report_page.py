"""The slice report's HTML (core.app.slice_report): one page, CSS inline, the mosaic as a ``data:`` URI.

Sections: the headline numbers, the slice (mosaic, confusion), its images' metadata (each column's most
frequent values), its annotation, what was done (selections and their label mix, mitigation settings),
before/after with each change's 95% interval, and what to run next.
No script and no external URL, so it opens offline and reads when e-mailed (core.app.html_parts).
"""

from __future__ import annotations

import re

from core.app.html_parts import esc, fmt_delta, fmt_pct, generated_at, page, png_data_uri
from core.app.names import method_name
from core.app.slice_report import Delta, Measure, ModelResult, SliceReportData, slice_report_data
from core.store.workspace import Workspace

EXTRA_CSS = """
h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid #e3e7ee;padding-bottom:4px}
.two{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap} .two>div{flex:1;min-width:300px}
.mosaic img{max-width:100%;border:1px solid #e3e7ee;border-radius:4px;image-rendering:auto}
.ci{color:#5b6472;font-size:11px;font-weight:400} .noise{background:#fff4d6;color:#7a5b00;border-radius:3px;
     padding:0 4px;font-size:11px;font-weight:600;margin-left:4px}
.box{background:#f8f9fb;border:1px solid #e3e7ee;border-radius:6px;padding:10px 14px;margin:8px 0}
code{background:#f3f5f9;padding:1px 4px;border-radius:3px;font-size:12px}
"""


def _code(text: str) -> str:
    """`command` spans of an (escaped) sentence as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _settings(d: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in d.items()) or "plain fine-tuning (no CoRM term)"


def _delta(d: Delta | None, n: int | None) -> str:
    """The change, its interval, and (on a set both models were scored on: ``n``) the change in images."""
    if d is None:
        return ""
    images = f" · {d.images:+d} of {n} images" if d.images is not None and n else ""
    noise = '<span class="noise">within noise</span>' if d.within_noise else ""
    return (f"{fmt_delta(d.value)}{noise}<div class=\"ci\">95% interval {100 * d.low:+.1f} to {100 * d.high:+.1f} pt"
            f"{images}</div>")


def _cell(m: Measure, extra: str = "", *, same_images: bool = True) -> str:
    n = f'<div class="ci">{m.n} images{extra}</div>' if m.n else ""
    return (f'<td class="num">{fmt_pct(m.value)}{n}</td>'
            f'<td class="num">{_delta(m.delta, m.n if same_images else None)}</td>')


def _row(r: ModelResult, role: str) -> str:
    group = f" · {esc(r.group)}" if r.group else ""
    return (f"<tr><td><b>{esc(r.name)}</b><div class=\"ci\">{esc(role)} · {esc(r.model_id)}</div></td>"
            f"{_cell(r.heldout)}{_cell(r.test)}{_cell(r.worst_group, group, same_images=False)}</tr>")


def _cards(d: SliceReportData) -> str:
    cards = [(f"{d.size:,}", "images in the slice"), (fmt_pct(d.accuracy), "accuracy on the slice"),
             (str(d.n_heldout) if d.n_heldout is not None else "–", "held-out images (never trained on)")]
    for f in d.fixes:
        h = f.heldout
        if h.value is not None:
            cards.append((f"{fmt_pct(d.before.heldout.value)} → {fmt_pct(h.value)} {fmt_delta(h.delta.value if h.delta else None)}",
                          f"held-out accuracy · {esc(f.name)}"))
    return '<div class="cards">' + "".join(f'<div class="card"><div class="v">{v}</div><div class="l">{label}</div>'
                                          f"</div>" for v, label in cards) + "</div>"


def _slice(d: SliceReportData) -> str:
    if d.mosaic_png:
        mosaic = (f'<img id="mosaic" src="{png_data_uri(d.mosaic_png)}" alt="Attribution Mosaic of slice {d.rank}">'
                  f'<div class="ci">Attribution Mosaic: each tile is a member\'s high-attribution region (what the '
                  f"model looks at); a red border marks an error.</div>")
    else:
        mosaic = f'<div class="box">{esc(d.mosaic_note or "No mosaic.")}</div>'
    head = "".join(f"<th>predicted {esc(n)}</th>" for n in d.class_names)
    conf = "".join(f"<tr><td>labelled {esc(n)}</td>" + "".join(f'<td class="num">{v}</td>' for v in row) + "</tr>"
                   for n, row in zip(d.class_names, d.confusion))
    errors = sum(v for i, row in enumerate(d.confusion) for j, v in enumerate(row) if i != j)
    facts = (f"<p><b>{esc(d.cell_text)}</b>. The slice holds {d.size:,} images, {errors:,} of them misclassified; "
             f"mostly labelled <b>{esc(d.dominant_label)}</b>, mostly predicted <b>{esc(d.dominant_pred)}</b>.</p>")
    against = "the rest of its confusion cell" if d.facts_against == "cell" else "the rest of the slice run"
    if d.facts:
        facts += (f"<p><b>What sets it apart</b> (against {against}):</p><ul>"
                  + "".join(f"<li>{esc(t)}</li>" for t in d.facts[:6]) + "</ul>")
    else:
        facts += "<p>Nothing measured sets it apart from the rest of its confusion cell.</p>"
    table = f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{conf}</tbody></table>" if conf else ""
    return f'<h2>The slice</h2><div class="two"><div class="mosaic">{mosaic}</div><div>{facts}{table}</div></div>'


def _metadata(d: SliceReportData) -> str:
    """Each metadata column's most frequent values among the slice's images, beside their share of all images."""
    if not d.metadata:
        return ""
    rows = []
    for c in d.metadata:
        values = "; ".join(f"<b>{esc(v.value)}</b> {fmt_pct(v.share)} <span class=\"ci\">(all images: "
                           f"{fmt_pct(v.share_all)})</span>" for v in c.top)
        more = f' <span class="ci">and {c.n_values - len(c.top)} more</span>' if c.n_values > len(c.top) else ""
        rows.append(f"<tr><td>{esc(c.column)}<div class=\"ci\">{esc(c.kind)}</div></td><td>{values}{more}</td></tr>")
    return ("<h2>Its images' metadata</h2><p>The most frequent values among the slice's images, with their share "
            "of the slice and, to compare, of all images of the same splits (numbers in ranges, dates by month or "
            "year).</p><table id=\"metadata\"><thead><tr><th>column</th><th>most frequent values</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _annotation(d: SliceReportData) -> str:
    if not d.annotations:
        return "<h2>Annotation</h2><p>Not annotated yet.</p>"
    parts = []
    for a in d.annotations:
        relabel = f" · relabel to <b>{esc(a['relabel_to'])}</b>" if a["relabel_to"] else ""
        who = f" by {esc(a['annotator'])}" if a["annotator"] else ""
        note = f"<div>“{esc(a['note'])}”</div>" if a["note"] else ""
        parts.append(f'<div class="box"><b>{esc(a["kind"])}</b>{relabel}<span class="ci"> · {esc(a["created_at"])}'
                     f"{who}</span>{note}</div>")
    older = len(d.history) - len(d.annotations)
    more = f'<div class="ci">{older} earlier annotation(s) of this slice are superseded.</div>' if older > 0 else ""
    return "<h2>Annotation</h2>" + "".join(parts) + more


def _done(d: SliceReportData) -> str:
    names = {r.model_id: r.name for r in d.fixes}
    out = []
    for s in d.selections:
        mix = ", ".join(f"{n} {esc(c)}" for c, n in s.label_mix.items()) or "none"
        reviewed = s.status["accepted"] + s.status["rejected"]
        models = "; ".join(esc(names.get(m, m)) for m in s.model_ids) or "none yet (run the retrain job on it)"
        extra = (f" DCD searched the pool for the neighbours of {s.params['from_slice'].get('n_query')} misclassified "
                 f"members of the slice." if s.method == "dcd" and s.params.get("from_slice") else "")
        out.append(f'<div class="box"><b>Selection “{esc(s.name)}”</b> ({esc(method_name(s.method))}): '
                   f"{s.size} pool images.{extra}<br>Labels they are trained with: {mix}.<br>Reviewed by a person: "
                   f"{reviewed} ({s.status['accepted']} accepted, {s.status['rejected']} rejected, "
                   f"{s.status['proposed']} left as proposed).<br>Models fine-tuned on it: {models}.</div>")
    for m in d.mitigations:
        here = f" Findings applied to this slice: {esc(', '.join(m.kinds_here))}." if m.kinds_here else \
            " This slice was not among the findings it applied."
        cands = "".join(
            f"<tr><td>{esc(c.get('name'))}{' (kept)' if c.get('name') == m.chosen else ''}</td>"
            f"<td>{esc(_settings(c.get('settings') or {}))}</td>"
            f'<td class="num">{fmt_pct((c.get("heldout") or {}).get(d.eval_set))}</td></tr>' for c in m.candidates)
        table = (f"<table><thead><tr><th>candidate</th><th>settings</th><th>held-out part of this slice</th></tr>"
                 f"</thead><tbody>{cands}</tbody></table>") if cands else ""
        out.append(f'<div class="box"><b>Mitigation: {esc(names.get(m.model_id, m.model_id))}</b>. Kept candidate '
                   f"“{esc(m.chosen)}” ({esc(_settings(m.settings))}) out of {len(m.candidates)}.{here}"
                   f"<br>Why: {esc(m.reason) or '–'}{table}</div>")
    if not out:
        out.append("<p>No fix has been made for this slice yet.</p>")
    return "<h2>What was done</h2>" + "".join(out)


def _before_after(d: SliceReportData) -> str:
    held = (f"held-out part of the slice<div class=\"ci\">eval set {esc(d.eval_set)}</div>" if d.n_heldout is not None
            else "held-out part of the slice<div class=\"ci\">none yet</div>")
    head = (f"<tr><th>classifier</th><th>{held}</th><th>Δ</th><th>test</th><th>Δ</th><th>worst test group</th>"
            f"<th>Δ</th></tr>")
    rows = _row(d.before, "before: the classifier the slice was found in") + "".join(
        _row(f, "after: a fix") for f in d.fixes)
    told = "".join(f"<li><b>{esc(f.outcome or 'not measured')}</b>: {esc(f.sentence)}</li>" for f in d.fixes)
    note = ('<div class="ci">The held-out images were all misclassified by the “before” classifier (so it scores '
            "0 there by construction) and were never trained on: the random baseline of the same budget is the "
            "fair comparison.</div>") if d.n_heldout is not None else ""
    return (f"<h2>Before / after</h2><table><thead>{head}</thead><tbody>{rows}</tbody></table>{note}"
            + (f"<ul>{told}</ul>" if told else ""))


def slice_report_html(d: SliceReportData) -> str:
    """The whole page of :class:`core.app.slice_report.SliceReportData`."""
    title = f"Slice {d.rank} of {d.run_id}: {d.cell_text}"
    steps = "".join(f"<li>{_code(esc(s))}</li>" for s in d.next_steps)
    body = (f"<h1>{esc(title)}</h1>"
            f'<div class="sub">Workspace {esc(d.workspace)} · classifier under test: {esc(d.before.name)} · '
            f"{generated_at()}. Accuracy is the share of correctly classified images; Δ is the change against "
            f"the classifier under test, in percentage points, with a 95% interval.</div>"
            f"{_cards(d)}{_slice(d)}{_metadata(d)}{_annotation(d)}{_done(d)}{_before_after(d)}"
            + (f"<h2>Next steps</h2><ul>{steps}</ul>" if steps else "")
            + '<div class="foot">Intervals: Newcombe\'s score interval for a difference of two proportions, '
              "treating the two accuracies as independent (conservative when both classifiers are scored on the "
              "same images). “Within noise”: the interval contains 0, so this change could be chance.</div>")
    return page(title, body, extra_css=EXTRA_CSS)


def render_slice_report(ws: Workspace, run_id: str, rank: int) -> str:
    """:func:`slice_report_html` of core.app.slice_report.slice_report_data: the page of slice ``rank`` of ``run_id``."""
    return slice_report_html(slice_report_data(ws, run_id, rank))
