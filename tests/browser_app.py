"""Helpers for the real-browser tests: the app served by `streamlit run`, and headless Chromium settings."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-output" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_idle(page, title: str | None = None, timeout: float = 90_000) -> None:
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


@contextmanager
def running_app(src: Path, tmp_path: Path):
    """`streamlit run app.py` on a copy of workspace ``src``: yields (base url, workspace dir); always stopped."""
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
