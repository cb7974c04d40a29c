"""End to end in a real browser: `streamlit run app.py` driven by headless Chromium (Playwright).

Opens every page, launches a short retrain job from the Jobs page, waits for it to finish and finds the new
model on the Before/after page. Screenshots of every page go to test-output/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-output" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser` (apt-get install "
                                                     "chromium) to run the browser test"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def app_server(tiny_pipeline_workspace, tmp_path):
    """The real app on a copy of the tiny workspace: (base url, workspace dir); always stopped."""
    src, _ = tiny_pipeline_workspace
    ws_dir = tmp_path / "ws"
    shutil.copytree(src, ws_dir)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DCD_WORKSPACE"}
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--", "--workspace", str(ws_dir)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("streamlit did not start:\n" + (tmp_path / "streamlit.log").read_text()[-3000:])
            time.sleep(0.3)
        yield url, ws_dir
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _wait_idle(page, title: str | None = None, timeout: float = 90_000) -> None:
    """Wait until the script run has finished (the app says so on its root element), the page's title is
    shown, and charts and images have been drawn."""
    from playwright.sync_api import expect

    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)
    if title:
        expect(page.get_by_role("heading", name=title, exact=True).first).to_be_visible(timeout=timeout)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)
    charts = page.locator("[data-testid='stVegaLiteChart']")
    for i in range(charts.count()):  # vega draws after the script ends (charts in hidden tabs: never)
        if charts.nth(i).is_visible():
            charts.nth(i).locator("canvas, svg").first.wait_for(state="attached", timeout=timeout)
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=timeout)
    page.wait_for_timeout(500)


def test_every_page_and_a_job_end_to_end(app_server):
    from playwright.sync_api import expect, sync_playwright

    from core.workspace import Workspace

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
                _wait_idle(page, title)
                assert page.get_by_test_id("stException").count() == 0, f"exception on {title}"
                page.screenshot(path=str(SHOTS / f"{path or 'overview'}.png"), full_page=True)
            # Something real on each: the overview's counts, the confusion chart, the candidates.
            page.goto(f"{url}/")
            _wait_idle(page, "Overview")
            expect(page.get_by_text("Debug-heldout accuracy").first).to_be_visible()

            # Launch a short retrain from the Jobs page.
            page.goto(f"{url}/jobs")
            _wait_idle(page, "Jobs")
            page.get_by_test_id("stSelectbox").filter(has_text="Job").first.click()
            page.get_by_role("option", name="retrain", exact=True).click()
            _wait_idle(page)
            page.get_by_role("textbox", name="finetune epochs", exact=True).fill("1")
            page.get_by_role("textbox", name="method", exact=True).fill("browser_finetune")
            page.get_by_role("button", name="Launch retrain").click()
            expect(page.get_by_text("Launched").first).to_be_visible(timeout=30_000)
            job = ws.jobs().list(limit=1)[0]
            assert job.kind == "retrain"
            assert job.args[job.args.index("--finetune-epochs") + 1] == "1"
            page.screenshot(path=str(SHOTS / "jobs-running.png"), full_page=True)
            deadline = time.monotonic() + 150
            while ws.jobs().get(job.job_id).is_active and time.monotonic() < deadline:
                time.sleep(1)
            job = ws.jobs().get(job.job_id)
            assert job.state == "succeeded", f"{job.state}: {job.error}"
            # The polling fragment shows it finished without a manual reload.
            expect(page.get_by_text("No job running").first).to_be_visible(timeout=20_000)
            page.screenshot(path=str(SHOTS / "jobs-finished.png"), full_page=True)

            new_model = job.result["methods"]["browser_finetune"]["model_id"]
            page.goto(f"{url}/compare")
            _wait_idle(page, "Before / after")
            expect(page.get_by_text(new_model).first).to_be_attached(timeout=20_000)
            page.screenshot(path=str(SHOTS / "compare-after-job.png"), full_page=True)
        finally:
            browser.close()
