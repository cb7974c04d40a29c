"""End to end in a real browser: `streamlit run app.py` driven by headless Chromium (Playwright).

Opens every page, then walks the curator's loop as a person would: Overview (the story, with the demo's
regression) → Slices (no annotation without a choice, then one made) → Retrieval (preview the error sample's
candidates, make the selection under a typed name with the select job, keep it all) → Jobs (retrain on that
selection with the simple form, wait for it) →
Before / after (the new model by name, the regression as plain as the gain). Screenshots of every page and
every step go to test-output/screenshots/ (`make screenshots` copies two of them into docs/ for the README).
"""

from __future__ import annotations

import re

import pytest
from browser_app import CHROMIUM, CHROMIUM_ARGS, SHOTS, wait_idle
from helpers import wait_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser` (apt-get install "
                                                     "chromium) to run the browser test"),
]

TITLES = {"": "Overview", "errors": "Errors", "slices": "Slices", "retrieval": "Retrieval (DCD)", "jobs": "Jobs",
          "compare": "Before / after"}
SELECTION = "walkthrough picks"


def _regression_shown(page) -> None:
    """The demo's DCD swapped one shortcut for another: its box says trade-off and names what fell."""
    from playwright.sync_api import expect

    box = page.get_by_test_id("stAlertContentWarning").filter(has_text="A trade-off.").first
    expect(box).to_be_visible(timeout=30_000)
    expect(box).to_contain_text("fell from")
    expect(page.get_by_text("▼").first).to_be_attached()  # a regression cell of the scorecard


def test_the_curators_walk_through_every_page(sliced_app_server):
    from playwright.sync_api import expect, sync_playwright

    from core.store.workspace import Workspace

    url, ws_dir = sliced_app_server
    ws = Workspace.open(ws_dir)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            for path, title in TITLES.items():
                page.goto(f"{url}/{path}")
                wait_idle(page, title)
                assert page.get_by_test_id("stException").count() == 0, f"exception on {title}"
                page.screenshot(path=str(SHOTS / f"{path or 'overview'}.png"), full_page=True)

            # 1. Overview: the failure, the story in a sentence, chance level, the regression plainly.
            page.goto(f"{url}/")
            wait_idle(page, "Overview")
            expect(page.get_by_text("guessing scores 50%").first).to_be_visible()
            expect(page.get_by_text("Failure (debug-heldout)").first).to_be_attached()  # a dataframe cell (canvas)
            _regression_shown(page)
            page.screenshot(path=str(SHOTS / "walkthrough-1-overview.png"), full_page=True)

            # 2. Slices: saving without a choice records nothing; a choice is saved.
            page.goto(f"{url}/slices")
            wait_idle(page, "Slices")
            expect(page.get_by_text("Attribution Mosaic").first).to_be_visible()
            page.get_by_role("button", name="Save annotation").click()
            expect(page.get_by_text("Choose what the model relies on").first).to_be_visible(timeout=30_000)
            assert ws.scalar("SELECT count(*) FROM annotations") == 0
            page.get_by_text("spurious correlation").first.click()
            page.get_by_label("Note").fill("looks at the background, not the shape")
            page.get_by_label("Your name").fill("walkthrough")
            page.get_by_role("button", name="Save annotation").click()
            expect(page.get_by_text("annotated spurious").first).to_be_visible(timeout=30_000)
            assert ws.df("SELECT kind, annotator FROM annotations").values.tolist() == [["spurious", "walkthrough"]]
            page.screenshot(path=str(SHOTS / "walkthrough-2-slices.png"), full_page=True)

            # 3. Retrieval: the error sample's candidates previewed; the select job makes the selection under a
            # typed name; kept, all of it, under Saved selections.
            page.goto(f"{url}/retrieval")
            wait_idle(page, "Retrieval (DCD)")
            expect(page.get_by_text(re.compile(r"^\d+ candidates$")).first).to_be_visible()
            page.get_by_role("textbox", name="Selection name").fill(SELECTION)
            page.get_by_role("button", name="Make this selection").click()
            expect(page.get_by_text("Started: make this selection").first).to_be_visible(timeout=30_000)
            job = ws.jobs().list(limit=1)[0]
            assert job.kind == "select" and job.args[:2] == ["--failure", "error_sample"]
            wait_until(lambda: not ws.jobs().get(job.job_id).is_active, 240, f"select job {job.job_id} to finish",
                       interval=1)
            assert ws.jobs().get(job.job_id).state == "succeeded", ws.jobs().get(job.job_id).error
            saved = ws.df("SELECT selection_id, name FROM selections WHERE name = ?", [SELECTION])
            assert len(saved) == 1
            page.goto(f"{url}/retrieval")
            wait_idle(page, "Retrieval (DCD)")
            page.get_by_role("tab", name="Saved selections").click()
            made = re.compile(rf"^{SELECTION} · \d+ images \(\d+ of the failure's own, \d+ retrieved\)")
            expect(page.get_by_role("combobox", name="Selection")).to_have_value(made, timeout=30_000)
            expect(page.get_by_text(re.compile(r"^Reviewed: 0 kept, 0 dropped, [1-9]\d* not reviewed")).first).to_be_visible()
            page.get_by_role("button", name="Keep the rest").click()
            wait_idle(page)
            all_kept = re.compile(r"^Reviewed: [1-9]\d* kept, 0 dropped, 0 not reviewed")
            expect(page.get_by_text(all_kept).first).to_be_visible(timeout=90_000)  # the rerun searches the pool again
            assert set(ws.df("SELECT status FROM selection_items WHERE selection_id = ? AND kind = 'retrieved'",
                             [saved.selection_id.iloc[0]]).status) == {"accepted"}
            expect(page.get_by_role("button", name=f"Retrain Baseline with {SELECTION}")).to_be_visible()
            page.screenshot(path=str(SHOTS / "walkthrough-3-retrieval.png"), full_page=True)

            # 4. Jobs: retrain on it with the simple form (no Advanced field touched).
            page.goto(f"{url}/jobs")
            wait_idle(page, "Jobs")
            page.get_by_test_id("stSelectbox").filter(has_text="Job").first.click()
            page.get_by_role("option", name="retrain", exact=True).click()
            wait_idle(page)
            page.get_by_test_id("stSelectbox").filter(has_text="debug-train selection").first.click()
            page.get_by_role("option", name=re.compile(f"^{SELECTION} ")).click()
            page.get_by_role("button", name="Launch retrain").click()
            expect(page.get_by_text("Launched").first).to_be_visible(timeout=30_000)
            job = ws.jobs().list(limit=1)[0]
            assert job.kind == "retrain" and job.args[job.args.index("--selection-id") + 1] == saved.selection_id[0]
            wait_until(lambda: not ws.jobs().get(job.job_id).is_active, 240, f"retrain job {job.job_id} to finish",
                       interval=1)
            job = ws.jobs().get(job.job_id)
            assert job.state == "succeeded", f"{job.state}: {job.error}"
            expect(page.get_by_text("No job running").first).to_be_visible(timeout=20_000)  # polled, no reload
            expect(page.get_by_test_id("stAlertContentSuccess").first).to_be_visible()  # the job's summary
            page.screenshot(path=str(SHOTS / "walkthrough-4-jobs.png"), full_page=True)

            # 5. Before / after: the new model by its selection's name, the regression as plain as the gain.
            page.goto(f"{url}/compare")
            wait_idle(page, "Before / after")
            expect(page.get_by_test_id("stAlertContainer").filter(has_text=f"'{SELECTION}'").first).to_be_visible(timeout=30_000)
            _regression_shown(page)
            page.screenshot(path=str(SHOTS / "walkthrough-5-before-after.png"), full_page=True)
        finally:
            browser.close()


def test_the_overview_shows_the_fix_arriving_without_a_reload(ws_copy, tmp_path):
    """While the demo job is still fine-tuning, the Overview says a fix is being made (not "No fix yet"); when
    the job ends with the fix stored, the page shows the fix by itself, with no reload by the person."""
    import subprocess

    from browser_app import running_app
    from playwright.sync_api import expect, sync_playwright

    ws, report = ws_copy
    base = report["methods"]["baseline"]["model_id"]
    fixes = "model_id IN (SELECT model_id FROM models WHERE role = 'classifier' AND model_id <> ?)"
    with ws.write() as con:  # the workspace as the demo job leaves it before its fix is in: the baseline only
        held = {t: con.execute(f"SELECT * FROM {t} WHERE {fixes}", [base]).df()
                for t in ("metrics", "predictions", "models")}
        for table in held:
            con.execute(f"DELETE FROM {table} WHERE {fixes}", [base])
    worker = subprocess.Popen(["sleep", "600"])  # the job's process, alive while it runs
    store = ws.jobs()
    job = store.create("demo", ["--workspace", str(ws.root), "--size", "small"])
    store.start(job, pid=worker.pid)
    store.update(job, progress=0.6, message="[9/13] fine-tuning on dcd")
    try:
        with running_app(ws.root, tmp_path) as (url, _), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(url)
                wait_idle(page, "Overview")
                expect(page.get_by_text("A fix is being made").first).to_be_visible(timeout=30_000)
                expect(page.get_by_text("No fix yet")).to_have_count(0)
                with ws.write() as con:  # the fix lands, then the job ends
                    for table in ("models", "metrics", "predictions"):
                        con.register("landed", held[table])
                        con.execute(f"INSERT INTO {table} SELECT * FROM landed")
                        con.unregister("landed")
                store.finish(job, "succeeded", result={})
                # the fixes' story, drawn by the page itself within seconds (its fragment polls every 5 s)
                expect(page.get_by_text("What the other 3 fixes did").first).to_be_visible(timeout=60_000)
                expect(page.get_by_text("A fix is being made")).to_have_count(0)
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / "overview-fix-arrived.png"), full_page=True)
            finally:
                browser.close()
    finally:
        worker.kill()


def test_errors_names_a_cell_as_a_failure_and_fixes_it(app_server):
    """On the Errors page, in a browser: the chosen confusion cell of test named as a failure (the failure job),
    then "Collect, retrain and compare with random" starts the loop for it (the pipeline with --failure)."""
    from playwright.sync_api import expect, sync_playwright

    from core.store.workspace import Workspace

    url, ws_dir = app_server
    ws = Workspace.open(ws_dir)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"{url}/errors")
            wait_idle(page, "Errors")
            def evaluation_set(name: str) -> None:
                page.get_by_test_id("stSelectbox").filter(has_text="Evaluation set").first.click()
                page.get_by_role("option", name=name, exact=True).click()
                wait_idle(page)

            evaluation_set("test")
            page.get_by_role("button", name="Name this cell as a failure").click()
            expect(page.get_by_text("Started: name this cell as a failure").first).to_be_visible(timeout=30_000)
            job = ws.jobs().list(limit=1)[0]
            assert job.kind == "failure" and job.args[0] == "--cell"
            wait_until(lambda: not ws.jobs().get(job.job_id).is_active, 120, f"failure job {job.job_id}", interval=1)
            job = ws.jobs().get(job.job_id)
            assert job.state == "succeeded", job.error
            failure_id = job.result["failure_id"]
            page.get_by_text("Pick images to name as a failure").click()  # a rerun: the page reads the workspace
            wait_idle(page)
            expect(page.get_by_text(f"Failure {failure_id} (").first).to_be_visible(timeout=30_000)
            page.get_by_role("button", name="Collect, retrain and compare with random").click()
            expect(page.get_by_text("Started: collect, retrain").first).to_be_visible(timeout=30_000)
            fix = ws.jobs().list(limit=1)[0]
            assert fix.kind == "pipeline" and fix.args[:2] == ["--failure", failure_id]
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "errors-fix-a-failure.png"), full_page=True)
        finally:
            browser.close()
            from core.runner import launcher

            for j in ws.jobs().list(active_only=True):  # the loop itself is the pipeline's tests' business
                launcher.cancel(ws, j.job_id)
                launcher.wait(ws, j.job_id, timeout=60)
