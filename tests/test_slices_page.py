"""The Slices page: AppTest (select a slice, see its mosaic, annotate it, see the annotation listed) and a
real-browser run of the same flow."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_app import CHROMIUM, CHROMIUM_ARGS, SHOTS, wait_idle

REPO = Path(__file__).resolve().parents[1]


def _clear_caches() -> None:
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


def test_select_slice_see_mosaic_annotate_and_list(sliced_copy, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core.scanner.runs import get_slices, latest_run

    _clear_caches()
    ws = sliced_copy[0]
    monkeypatch.setenv("DCD_WORKSPACE", str(ws.root))
    slices = get_slices(ws, latest_run(ws))
    target = int(slices.slice_id.iloc[-1])

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("pages/slices.py").run()
    assert not at.exception and at.title[0].value == "Slices"
    at.selectbox(key="slices_slice").set_value(target).run()
    assert not at.exception
    row = slices[slices.slice_id == target].iloc[0]
    assert at.subheader[0].value.startswith(f"#{int(row['rank'])} · ")  # described by what it holds, not its id
    assert any(f"Slice {target} of run" in c.value for c in at.caption)
    images = at.get("image")
    assert images, "the selected slice's mosaic is shown"
    assert any(f"slice {target}" in str(getattr(img, "proto", "")) for img in images)

    # nothing is preselected: saving without a choice says so and records nothing
    assert at.radio(key="ann_kind").value is None
    next(b for b in at.button if b.label == "Save annotation").click().run()
    assert any("Choose what the model relies on" in e.value for e in at.error)
    assert ws.scalar("SELECT count(*) FROM annotations") == 0
    labels = {b.label for b in at.button}
    assert {"Collect targeted data for this slice", "Collect, retrain and compare with random"} <= labels \
        or any("fewer than 2 misclassified" in i.value for i in at.info)
    at.radio(key="ann_kind").set_value("spurious")
    at.text_area(key="ann_note").input("looks at the background")
    at.text_input(key="ann_annotator").input("page tester")
    next(b for b in at.button if b.label == "Save annotation").click().run()
    assert not at.exception
    assert any("annotated spurious" in s.value for s in at.success)
    listed = at.dataframe[-1].value
    row = listed[listed.slice_id == target].iloc[0]
    assert (row.kind, row.annotator, row.note) == ("spurious", "page tester", "looks at the background")
    # the chart builder, since AppTest cannot read charts
    from core.app.charts import slices_chart

    spec = slices_chart(slices.assign(annotation="spurious"), selected=target).to_dict()
    assert spec["encoding"]["x"]["field"] == "size" and spec["encoding"]["y"]["field"] == "accuracy"
    _clear_caches()


def test_slice_members_picked_and_named_as_a_failure(sliced_copy, monkeypatch):
    """Members ticked under the slice's gallery become a failure (the failure job), fixed from the run's model."""
    from streamlit.testing.v1 import AppTest

    from core.dcd.failure import picked_failure
    from core.runner import launcher
    from core.scanner.runs import latest_run

    _clear_caches()
    ws = sliced_copy[0]
    monkeypatch.setenv("DCD_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("pages/slices.py").run()
    at.toggle(key="slices_picks_on").set_value(True).run()
    boxes = [c.key for c in at.checkbox if (c.key or "").startswith("slices_pick_")]
    assert len(boxes) >= 2
    for box in boxes[:2]:
        at.checkbox(key=box).check().run()
    assert not at.exception
    ids = sorted(int(b.rsplit("_", 1)[1]) for b in boxes[:2])
    next(b for b in at.button if b.label == "Name these 2 images as a failure").click().run()
    job = ws.jobs().list(limit=1)[0]
    assert (job.kind, job.args) == ("failure", ["--images", *map(str, ids)])
    assert launcher.wait(ws, job.job_id, timeout=120).state == "succeeded"
    at.run()
    made = picked_failure(ws, ids)
    model = ws.scalar("SELECT model_id FROM slice_runs WHERE run_id = ?", [latest_run(ws)])
    fix = next(b for b in at.button if b.key == f"slices_picks_fix_{made.failure_id}")
    fix.click().run()
    job = ws.jobs().list(limit=1)[0]
    assert (job.kind, job.args) == ("pipeline", ["--failure", made.failure_id, "--classifier-id", model, "--methods",
                                                 "dcd", "random"])
    launcher.cancel(ws, job.job_id)
    launcher.wait(ws, job.job_id, timeout=60)
    _clear_caches()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser`")
def test_slices_page_in_a_browser(sliced_app_server):
    """The same flow in headless Chromium, on the app server fixture of tests/conftest.py."""
    from playwright.sync_api import expect, sync_playwright

    url, ws_dir = sliced_app_server
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.goto(f"{url}/slices")
            wait_idle(page, "Slices")
            assert page.get_by_test_id("stException").count() == 0
            expect(page.get_by_text("Attribution Mosaic").first).to_be_visible()
            expect(page.get_by_test_id("stImage").first).to_be_visible()
            page.get_by_text("spurious correlation").first.click()
            page.get_by_label("Note").fill("browser: background")
            page.get_by_label("Your name").fill("browser tester")
            page.get_by_role("button", name="Save annotation").click()
            expect(page.get_by_text("annotated spurious").first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("browser tester").first).to_be_attached(timeout=30_000)
            page.screenshot(path=str(SHOTS / "slices.png"), full_page=True)
        finally:
            browser.close()
