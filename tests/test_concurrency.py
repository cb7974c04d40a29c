"""While another process writes to the workspace in many short transactions, every page's queries keep
working (no lock error reaches the reader), the app's own writes succeed, and no write is lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.app import queries as views
from core.dcd.selection import set_status
from core.store.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
MIN_READS = 5             # the writer runs until the reader has done this many rounds and one page run
MAX_WRITE_SECONDS = 120.0  # (a safety net: the test fails if the writer stops on this instead)

WRITER = textwrap.dedent("""
    import sys, time
    import pandas as pd
    from core.dcd.selection import save_selection
    from core.store.workspace import Workspace

    from pathlib import Path

    ws = Workspace.open(sys.argv[1])
    max_seconds, stop = float(sys.argv[2]), Path(sys.argv[3])
    pool = ws.df("SELECT image_id, weak_label AS label FROM images WHERE split = 'pool' ORDER BY image_id")
    print("ready", flush=True)
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < max_seconds and not stop.exists():
        items = pool.iloc[[n % len(pool), (n + 1) % len(pool)]].copy()
        save_selection(ws, f"probe-{n}", "random", items)   # one short write transaction
        n += 1
    print(f"wrote {n}", flush=True)
""")


@pytest.fixture()
def ws(ws_copy) -> Workspace:
    return ws_copy[0]


def _page_queries(ws: Workspace, model: str, selection_id: str) -> None:
    """What the pages read (core.app.queries), one call each."""
    views.split_class_table(ws)
    views.models_table(ws)
    views.headline_metrics(ws)
    views.jobs_table(ws)
    views.confusion(ws, model, "test")
    views.accuracy_by(ws, model, "test", by="group")
    views.confident_mistakes(ws, model, "error_heldout")
    views.error_sample_images(ws, model)
    views.embedders(ws)
    views.selections(ws)
    views.selection_review(ws, selection_id)
    views.comparison_long(ws, views.classifier_ids(ws))


@pytest.mark.slow
def test_pages_keep_working_while_a_job_writes(ws, tmp_path, monkeypatch):
    model = views.current_classifier_id(ws)
    target = views.selections(ws).query("method == 'dcd'").selection_id.iloc[0]
    target_items = views.selection_review(ws, target).image_id.tolist()
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DCD_WORKSPACE", str(ws.root))
    AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()  # warm up imports before the clock runs
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, str(script), str(ws.root), str(MAX_WRITE_SECONDS), str(stop)], cwd=REPO,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        reads, failures, app_writes, page_runs = 0, [], 0, 0
        t0 = time.monotonic()
        while writer.poll() is None:
            try:
                _page_queries(ws, model, target)
                reads += 1
                # The app writes too (accept / reject in the Retrieval page) while the job writes.
                status = "accepted" if app_writes % 2 == 0 else "rejected"
                set_status(ws, target, [target_items[app_writes % len(target_items)]], status)
                app_writes += 1
                if page_runs < 1:  # and a whole page, through Streamlit, now and then
                    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
                    at.run()
                    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
                    page_runs += 1
                if reads >= MIN_READS and page_runs == 1:
                    stop.touch()  # enough overlap seen: let the writer finish
            except Exception as exc:  # noqa: BLE001 - any failure of a read is the bug this test is about
                failures.append(repr(exc))
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    n_written = int(out.strip().split()[-1])
    assert failures == []
    assert reads >= MIN_READS and page_runs == 1, (reads, page_runs, time.monotonic() - t0)
    print(f"{reads} rounds of page queries, {page_runs} page runs, {app_writes} app writes and {n_written} job "
          f"writes in {time.monotonic() - t0:.1f} s")
    assert n_written >= 5
    probes = ws.df("SELECT s.name, count(i.image_id) AS n FROM selections s JOIN selection_items i "
                   "USING (selection_id) WHERE s.name LIKE 'probe-%' GROUP BY s.name")
    assert set(probes.name) == {f"probe-{i}" for i in range(n_written)}  # every job write is there
    assert (probes.n == 2).all()
    last = target_items[(app_writes - 1) % len(target_items)]
    status = ws.scalar("SELECT status FROM selection_items WHERE selection_id = ? AND image_id = ?", [target, last])
    assert status == ("accepted" if (app_writes - 1) % 2 == 0 else "rejected")  # and the app's last write
