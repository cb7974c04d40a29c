"""Helpers for the real-browser tests: the app served by `streamlit run`, and headless Chromium settings."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from helpers import wait_until

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
    # and nothing left over from the previous run (Streamlit greys out stale elements until they are replaced)
    page.wait_for_function("() => document.fonts.status === 'loaded' && !document.querySelector(\"[data-stale='true']\")",
                           timeout=timeout)


@contextmanager
def running_app(ws_dir: Path, tmp_path: Path):
    """`streamlit run app.py` on the workspace ``ws_dir`` (give it a copy: the app writes to it): yields
    (base url, workspace dir); always stopped."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DCD_WORKSPACE"}
    log_path = tmp_path / "streamlit.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--", "--workspace", str(ws_dir)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n" + log_path.read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        try:
            wait_until(healthy, 60, f"streamlit to answer on {url}/_stcore/health", interval=0.3)
        except AssertionError as exc:
            raise RuntimeError(f"{exc}:\n" + log_path.read_text()[-3000:]) from None
        yield url, ws_dir
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
