"""End to end in a real browser: `streamlit run app.py` driven by headless Chromium (Playwright).

Opens every page, launches a short retrain job from the Jobs page, waits for it to finish and finds the new
model on the Before/after page. Screenshots of every page go to test-output/screenshots/.
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


def test_every_page_and_a_job_end_to_end(app_server):
    from playwright.sync_api import expect, sync_playwright

    from core.store.workspace import Workspace

    url, ws_dir = app_server
    ws = Workspace.open(ws_dir)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            titles = {"": "Overview", "errors": "Errors", "slices": "Slices", "retrieval": "Retrieval (DCD)",
                      "jobs": "Jobs",
                      "compare": "Before / after"}
            for path, title in titles.items():
                page.goto(f"{url}/{path}")
                wait_idle(page, title)
                assert page.get_by_test_id("stException").count() == 0, f"exception on {title}"
                page.screenshot(path=str(SHOTS / f"{path or 'overview'}.png"), full_page=True)
            # Something real on each: the overview's counts, the confusion chart, the candidates.
            page.goto(f"{url}/")
            wait_idle(page, "Overview")
            expect(page.get_by_text("Failure (debug-heldout)").first).to_be_attached()  # a dataframe cell (canvas)
            expect(page.get_by_text("guessing scores 50%").first).to_be_visible()

            # Launch a short retrain from the Jobs page.
            page.goto(f"{url}/jobs")
            wait_idle(page, "Jobs")
            page.get_by_test_id("stSelectbox").filter(has_text="Job").first.click()
            page.get_by_role("option", name="retrain", exact=True).click()
            wait_idle(page)
            page.get_by_text(re.compile(r"^Advanced \(")).first.click()  # epochs and the recorded name are advanced
            page.get_by_role("textbox", name="finetune epochs", exact=True).fill("1")
            page.get_by_role("textbox", name="record as", exact=True).fill("browser_finetune")
            page.get_by_role("button", name="Launch retrain").click()
            expect(page.get_by_text("Launched").first).to_be_visible(timeout=30_000)
            job = ws.jobs().list(limit=1)[0]
            assert job.kind == "retrain"
            assert job.args[job.args.index("--finetune-epochs") + 1] == "1"
            page.screenshot(path=str(SHOTS / "jobs-running.png"), full_page=True)
            wait_until(lambda: not ws.jobs().get(job.job_id).is_active, 150, f"retrain job {job.job_id} to finish",
                       interval=1)
            job = ws.jobs().get(job.job_id)
            assert job.state == "succeeded", f"{job.state}: {job.error}"
            # The polling fragment shows it finished without a manual reload.
            expect(page.get_by_text("No job running").first).to_be_visible(timeout=20_000)
            page.screenshot(path=str(SHOTS / "jobs-finished.png"), full_page=True)

            new_model = job.result["methods"]["browser_finetune"]["model_id"]
            page.goto(f"{url}/compare")
            wait_idle(page, "Before / after")
            expect(page.get_by_text(new_model).first).to_be_attached(timeout=20_000)
            page.screenshot(path=str(SHOTS / "compare-after-job.png"), full_page=True)
        finally:
            browser.close()
