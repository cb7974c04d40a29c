"""The slice report (core.app.slice_report, jobs.report): a self-contained HTML page of a slice and its fix.

On a copy of the tiny pipeline workspace: slices found, one made a DCD target (its held-out part an eval set),
a DCD and a random selection made for it, a real fine-tune on the DCD one, and a mitigation model with planted
metrics. The page must embed the mosaic, carry the numbers and their deltas, and load nothing from outside,
which a headless Chromium with the network cut checks too.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from browser_app import CHROMIUM, CHROMIUM_ARGS, SHOTS
from helpers import copy_workspace

PLANTED = {"heldout": 0.5, "test_shift": 0.01, "worst": 0.625, "worst_n": 16}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _pt(v: float) -> str:
    return f"{100 * v:+.1f} pt"


@pytest.fixture(scope="module")
def fixed_slice(tiny_sliced_workspace, tmp_path_factory):
    """(ws, run_id, rank, facts) on a copy of the tiny pipeline workspace shared by this module's tests (a
    test that changes it works on its own copy): a slice with a held-out part, two selections for it, a DCD
    fine-tune evaluated for real and a mitigation model with planted metrics; annotated spurious."""
    from core.dcd.fine_tune import retrain
    from core.dcd.selection import save_selection
    from core.dcd.slice_targets import slice_target
    from core.models.catalog import register_model
    from core.models.evaluation import compute_metrics, evaluate
    from core.scanner.annotations import annotate
    from core.scanner.runs import get_slices, latest_run
    ws = copy_workspace(tiny_sliced_workspace[0], tmp_path_factory.mktemp("report") / "ws")
    run_id = latest_run(ws)
    before = ws.scalar("SELECT model_id FROM slice_runs WHERE run_id = ?", [run_id])
    target = None
    for rank in get_slices(ws, run_id)["rank"].astype(int):
        try:
            target = slice_target(ws, run_id, int(rank))
            break
        except ValueError:  # too few misclassified members: the next rank
            continue
    assert target is not None, "the tiny baseline makes errors in some slice"
    pool = ws.df("SELECT image_id, weak_label AS label FROM images WHERE split = 'pool' ORDER BY image_id")
    src = {"from_slice": target.describe()}
    dcd = save_selection(ws, f"dcd-slice{target.rank}-b20", "dcd", pool.head(20), params={"budget": 20, **src})
    save_selection(ws, f"random-slice{target.rank}-b20", "random", pool.tail(20), params={"n": 20, **src})
    compute_metrics(ws, before)  # the held-out eval set is newer than the baseline's metrics
    dcd_model = retrain(ws, base_model_id=before, selection_id=dcd.selection_id, method="dcd", epochs=1)
    evaluate(ws, dcd_model)
    mitigation = {"run_id": run_id, "chosen": "corm-lam1", "reason": "best held-out accuracy of 2 candidates",
                  "candidates": [{"name": "corm-lam1", "settings": {"lam": 1.0, "mask_threshold": 0.5}, "score": 0.5,
                                  "heldout": {target.eval_set: 0.5}},
                                 {"name": "finetune", "settings": {}, "score": 0.4, "heldout": {target.eval_set: 0.25}}],
                  "findings": {str(target.slice_id): ["spurious"]}, "heldout_eval_sets": [target.eval_set]}
    register_model(ws, model_id="corm-planted", role="classifier", arch="test_resnet", parent_id=before,
                   method="corm", config={"selection_id": None, "mitigation": mitigation})
    test_acc = float(ws.scalar("SELECT value FROM metrics WHERE model_id = ? AND eval_set = 'test' "
                               "AND metric = 'accuracy'", [before]))
    n_test = int(ws.scalar("SELECT count(*) FROM images WHERE split = 'test'"))
    rows = [(target.eval_set, "accuracy", PLANTED["heldout"], len(target.heldout_ids)),
            ("test", "accuracy", test_acc + PLANTED["test_shift"], n_test),
            ("test", "worst_group_acc", PLANTED["worst"], n_test),
            ("test/group=disc_on_dark", "accuracy", PLANTED["worst"], PLANTED["worst_n"])]
    with ws.write() as con:
        con.executemany("INSERT INTO metrics (model_id, eval_set, metric, value, n) VALUES ('corm-planted', ?, ?, ?, ?)",
                        rows)
    sl = get_slices(ws, run_id).set_index("slice_id").loc[target.slice_id]
    annotate(ws, run_id, target.slice_id, "spurious", note="looks at the background", annotator="report tester")
    return ws, run_id, target.rank, {"target": target, "before": before, "dcd_model": dcd_model,
                                     "dcd_selection": dcd, "mosaic_path": sl.mosaic_path, "test_acc": test_acc}


def _metric(ws, model_id: str, eval_set: str, metric: str = "accuracy") -> float:
    return float(ws.scalar("SELECT value FROM metrics WHERE model_id = ? AND eval_set = ? AND metric = ?",
                           [model_id, eval_set, metric]))


def _assert_self_contained(html: str) -> None:
    low = html.lower()
    assert "<script" not in low and "<link" not in low and "<iframe" not in low
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", low), "an external resource"
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", low), "an external resource in the CSS"
    assert "http://" not in low and "https://" not in low


def test_report_embeds_the_mosaic_and_shows_the_fix_and_its_numbers(fixed_slice):
    from core.app.html_parts import esc
    from core.app.names import model_names, selection_names
    from core.app.slice_report import slice_report_data
    from core.app.slice_report_page import slice_report_html
    from core.app.story import newcombe_interval

    ws, run_id, rank, f = fixed_slice
    data = slice_report_data(ws, run_id, rank)
    html = slice_report_html(data)
    _assert_self_contained(html)
    uri = re.search(r'<img id="mosaic" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert uri, "the mosaic is embedded as a data: URI"
    assert base64.b64decode(uri.group(1)) == Path(f["mosaic_path"]).read_bytes()  # the slice's own mosaic

    # the slice, its confusion cell in words, its annotation
    assert data.slice_id == f["target"].slice_id and data.n_heldout == len(f["target"].heldout_ids)
    assert re.search(r"\d+ (square|disc) images? predicted (square|disc)", data.cell_text)
    assert data.cell_text in html and "looks at the background" in html and "report tester" in html
    # what was done: both selections by name with their label mix, the models by a person's name
    dcd = next(s for s in data.selections if s.method == "dcd")
    assert {s.method for s in data.selections} == {"dcd", "random"} and dcd.model_ids == (f["dcd_model"],)
    assert sum(dcd.label_mix.values()) == 20 and set(dcd.label_mix) <= {"square", "disc"}
    shown = selection_names(ws)[f["dcd_selection"].selection_id]  # a job's own name, as every page shows it
    assert shown == "DCD retrieval (20 images)" and f"“{shown}”" in html
    named = model_names(ws)  # the names every page uses
    assert [data.before.name, *[r.name for r in data.fixes]] == [named[f["before"]], named[f["dcd_model"]],
                                                                  named["corm-planted"]]
    assert all(esc(r.name) in html for r in [data.before, *data.fixes]) and "CoRM from" in named["corm-planted"]
    assert "corm-lam1 (kept)" in html and "lam = 1.0, mask_threshold = 0.5" in html
    assert "plain fine-tuning (no CoRM term)</td><td class=\"num\">25.0%</td>" in html  # the other candidate

    # before/after on the held-out part: the baseline scores 0 there by construction; the fine-tune for real
    eval_set = f["target"].eval_set
    before = _metric(ws, f["before"], eval_set)
    after = _metric(ws, f["dcd_model"], eval_set)
    assert before == 0.0 and data.before.heldout.value == 0.0
    fix = next(r for r in data.fixes if r.model_id == f["dcd_model"])
    assert fix.heldout.value == pytest.approx(after) and fix.heldout.delta.value == pytest.approx(after - before)
    assert _pct(after) in html and _pt(after - before) in html
    test_before, test_after = _metric(ws, f["before"], "test"), _metric(ws, f["dcd_model"], "test")
    assert _pct(test_after) in html and _pt(test_after - test_before) in html
    # the planted mitigation: +50 points on the held-out part, a test change within noise, the worst group
    corm = next(r for r in data.fixes if r.model_id == "corm-planted")
    n = data.n_heldout
    assert _pt(PLANTED["heldout"]) in html and corm.heldout.delta.images == round(0.5 * n)
    lo, hi = newcombe_interval(round(0.5 * n), n, 0, n)
    assert (corm.heldout.delta.low, corm.heldout.delta.high) == pytest.approx((lo, hi)) and lo > 0
    assert corm.heldout.delta.verdict == "gain" and f"{100 * lo:+.1f} to {100 * hi:+.1f} pt" in html
    assert corm.outcome in ("fix", "trade-off") and esc(corm.sentence) in html and "held-out part of slice" in corm.sentence
    assert corm.test.delta.within_noise and "within noise" in html
    assert corm.worst_group.n == PLANTED["worst_n"] and corm.group == "disc_on_dark"
    assert _pct(PLANTED["worst"]) in html and "95% interval" in html
    assert data.next_steps == []  # a held-out part, a fix and an annotation: nothing left to say


def test_a_slice_without_a_fix_says_what_to_run(fixed_slice, tmp_path):
    from core.app.slice_report import slice_report_data
    from core.app.slice_report_page import slice_report_html
    from core.scanner.runs import get_slices

    base, run_id, _, f = fixed_slice
    ws = copy_workspace(base.root, tmp_path / "ws")
    other = get_slices(ws, run_id)
    other = other[other.slice_id != f["target"].slice_id].iloc[0]
    rank = int(other["rank"])
    # the run's mitigation shows on each of its slices, saying whether it applied a finding to this one
    data = slice_report_data(ws, run_id, rank)
    assert [r.model_id for r in data.fixes] == ["corm-planted"] and data.fixes[0].heldout.value is None
    assert "This slice was not among the findings it applied" in slice_report_html(data)
    with ws.write() as con:
        con.execute("DELETE FROM models WHERE model_id = 'corm-planted'")
        con.execute("UPDATE slices SET mosaic_path = ? WHERE run_id = ? AND slice_id = ?",  # its file is gone
                    [str(ws.root / "artifacts" / "gone.png"), run_id, int(other.slice_id)])
    data = slice_report_data(ws, run_id, rank)
    html = slice_report_html(data)
    _assert_self_contained(html)
    assert data.mosaic_png and data.mosaic_png.startswith(b"\x89PNG") and "data:image/png;base64," in html
    assert data.fixes == [] and data.selections == [] and data.n_heldout is None and data.annotations == []
    assert "No fix has been made for this slice yet" in html and "Not annotated yet" in html
    assert f"--from-slice {run_id}:{rank}" in html and "<code>python -m jobs.retrain" in html
    assert html.split("<h2>Before / after</h2>")[1].count("<tr><td><b>") == 1  # the classifier under test alone


def test_report_job_writes_the_file_and_names_what_exists_on_a_bad_slice(fixed_slice, tmp_path, capsys):
    from core.app.slice_report import slices_fixed_by
    from jobs import report

    ws, run_id, rank, f = fixed_slice
    out = tmp_path / "out" / "report.html"
    assert report.main(["--workspace", str(ws.root), "--slice", f"{run_id}:{rank}", "--out", str(out),
                        "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["path"] == str(out.resolve()) and result["n_fixes"] == 2 and result["mosaic"]
    assert "data:image/png;base64," in out.read_text() and str(out.resolve()) in capsys.readouterr().out
    assert report.main(["--workspace", str(ws.root), "--slice", f"latest:{rank}"]) == 0
    assert (ws.root / "artifacts" / "reports" / f"{run_id}-{rank}.html").is_file()

    n = ws.scalar("SELECT n_slices FROM slice_runs WHERE run_id = ?", [run_id])
    for ref, says in ((f"nope:{rank}", ["no slice run 'nope'", run_id]), (f"{run_id}:99", [f"ranked 1 to {n}, not 99"]),
                      ("rank-one", ["RUN:RANK", "latest:1"])):
        assert report.main(["--workspace", str(ws.root), "--slice", ref]) == 1
        err = capsys.readouterr().err
        assert all(s in err for s in says), err
    assert slices_fixed_by(ws, [f["dcd_model"]]) == [(run_id, rank)]
    assert slices_fixed_by(ws, ["corm-planted"]) == [(run_id, rank)] and slices_fixed_by(ws, [f["before"]]) == []


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser` (apt-get install chromium)")
def test_the_report_opens_offline_in_chromium(fixed_slice, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from core.app.slice_report import slice_report_data
    from core.app.slice_report_page import slice_report_html

    ws, run_id, rank, f = fixed_slice
    data = slice_report_data(ws, run_id, rank)
    path = tmp_path / "report.html"
    path.write_text(slice_report_html(data), encoding="utf-8")
    fix = next(r for r in data.fixes if r.model_id == f["dcd_model"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []

    def block(route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 1600}, offline=True)
            context.route("**/*", block)
            page = context.new_page()
            page.goto(path.as_uri())
            page.wait_for_function("() => document.getElementById('mosaic').complete")
            assert page.evaluate("() => document.getElementById('mosaic').naturalWidth") > 0
            expect(page.locator("#mosaic")).to_be_visible()
            expect(page.get_by_role("heading", name="Before / after")).to_be_visible()
            expect(page.get_by_text(_pt(fix.heldout.delta.value)).first).to_be_visible()
            expect(page.get_by_text(_pct(fix.heldout.value)).first).to_be_visible()
            expect(page.get_by_text(data.cell_text).first).to_be_visible()
            page.screenshot(path=str(SHOTS / "slice-report.png"), full_page=True)
        finally:
            browser.close()
    assert outside == [], f"the report asked for {outside}"
    assert (SHOTS / "slice-report.png").stat().st_size > 10_000


def test_the_slices_and_compare_pages_offer_the_report(fixed_slice, tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    base, run_id, rank, f = fixed_slice
    ws = copy_workspace(base.root, tmp_path / "ws")  # the app may write to its workspace
    monkeypatch.setenv("DCD_WORKSPACE", str(ws.root))
    st.cache_data.clear()
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180).run()
        at.switch_page("pages/slices.py").run()
        assert not at.exception
        at.selectbox(key="slices_slice").set_value(f["target"].slice_id).run()
        buttons = {b.proto.label: b.proto for b in at.get("download_button")}
        assert "Download report (HTML)" in buttons, list(buttons)
        at.switch_page("pages/compare.py").run()
        assert not at.exception
        assert at.selectbox(key="compare_slice").options == [f"slice #{rank} of {run_id}"]
        assert "Download report (HTML)" in [b.proto.label for b in at.get("download_button")]
    finally:
        st.cache_data.clear()
        st.cache_resource.clear()
