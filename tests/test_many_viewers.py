"""Many viewers at once: N browser sessions walk every page of one app while jobs write its workspace.

A stakeholder review is several people on the same app while a job writes the workspace. Each session
(its own browser context: its own Streamlit session) opens every page in turn, twice; meanwhile retrain jobs
run one after another in the background, each writing a classifier, its predictions and its metrics to the
workspace. Counted: page errors (an exception shown, or a page that never finishes rendering), the slowest
render, and the machine's load. The figures are written to test-output/many-viewers.json (docs/scale.md
quotes them).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import pytest
from browser_app import CHROMIUM, CHROMIUM_ARGS, REPO
from test_browser import TITLES

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser` (apt-get install "
                                                     "chromium) to run the browser test"),
]

N_VIEWERS = 8
ROUNDS = 2
RENDER_TIMEOUT_MS = 180_000


async def _render(page, url: str, title: str) -> float:
    """Open ``url`` and wait until its script run is over, its title shown and nothing is stale: seconds."""
    t = time.perf_counter()
    await page.goto(url)
    idle = "[data-testid='stApp'][data-test-script-state='notRunning']"
    await page.wait_for_selector(idle, timeout=RENDER_TIMEOUT_MS)
    await page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=RENDER_TIMEOUT_MS)
    await page.wait_for_selector(idle, timeout=RENDER_TIMEOUT_MS)
    await page.wait_for_function("() => !document.querySelector(\"[data-stale='true']\")", timeout=RENDER_TIMEOUT_MS)
    return time.perf_counter() - t


async def _viewer(browser, base: str, viewer: int, renders: list, errors: list) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1200})
    page = await context.new_page()
    try:
        for round_ in range(ROUNDS):
            paths = list(TITLES)
            paths = paths[viewer % len(paths):] + paths[:viewer % len(paths)]  # viewers spread over the pages
            for path in paths:
                try:
                    seconds = await _render(page, f"{base}/{path}", TITLES[path])
                except Exception as exc:  # a page that never finished rendering
                    errors.append(f"viewer {viewer} round {round_} {TITLES[path]}: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0]}")
                    continue
                shown = await page.get_by_test_id("stException").count()
                if shown:
                    text = await page.get_by_test_id("stException").first.inner_text()
                    errors.append(f"viewer {viewer} round {round_} {TITLES[path]}: {text[:300]}")
                renders.append((TITLES[path], seconds))
    finally:
        await context.close()


async def _all_viewers(base: str) -> tuple[list, list]:
    from playwright.async_api import async_playwright

    renders: list = []
    errors: list = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            await asyncio.gather(*(_viewer(browser, base, v, renders, errors) for v in range(N_VIEWERS)))
        finally:
            await browser.close()
    return renders, errors


def test_eight_viewers_walk_every_page_while_jobs_write(sliced_app_server):
    from core.runner import launcher
    from core.store.workspace import Workspace

    url, ws_dir = sliced_app_server
    ws = Workspace.open(ws_dir)
    selection = str(ws.scalar("SELECT selection_id FROM selections WHERE method = 'dcd' ORDER BY created_at LIMIT 1"))
    done, jobs, loads = threading.Event(), [], []

    def writer() -> None:
        """Retrain jobs one after another until the viewers are done: each writes to the workspace."""
        while not done.is_set():
            job_id = launcher.launch(ws, "retrain", ["--selection-id", selection])
            jobs.append(job_id)
            while ws.jobs().get(job_id).is_active and not done.is_set():
                loads.append(os.getloadavg()[0])
                time.sleep(1)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        renders, errors = asyncio.run(_all_viewers(url))
    finally:
        done.set()
        thread.join(60)
    wall = time.perf_counter() - t0
    finished = [launcher.wait(ws, j, timeout=300) for j in jobs]

    seconds = sorted(s for _, s in renders)
    slowest = max(renders, key=lambda r: r[1]) if renders else ("-", float("nan"))
    figures = {"viewers": N_VIEWERS, "rounds": ROUNDS, "pages": len(TITLES), "renders": len(renders),
               "errors": len(errors), "slowest_page": slowest[0], "slowest_seconds": round(slowest[1], 1),
               "median_seconds": round(seconds[len(seconds) // 2], 1) if seconds else None,
               "wall_seconds": round(wall, 1), "write_jobs": len(jobs),
               "write_jobs_succeeded": sum(j.state == "succeeded" for j in finished),
               "load_mean": round(sum(loads) / len(loads), 2) if loads else None,
               "load_max": round(max(loads), 2) if loads else None, "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d")}
    out = REPO / "test-output" / "many-viewers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**figures, "error_lines": errors}, indent=1))
    print(json.dumps(figures))
    assert errors == [], "\n".join(errors)
    assert len(renders) == N_VIEWERS * ROUNDS * len(TITLES)
    assert jobs and all(j.state == "succeeded" for j in finished), [(j.job_id, j.state, j.error) for j in finished]
    assert int(ws.scalar("SELECT count(*) FROM models WHERE method = 'dcd'")) >= 1 + len(jobs) - 1  # they wrote
