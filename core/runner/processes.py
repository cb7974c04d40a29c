"""Batch jobs as background processes: start one, cancel it, wait for it, read its log.

A started job is ``python -m jobs.<kind> --workspace DIR --job-id ID ...`` in its own session (process
group), so it outlives the app's rerun, the browser tab and the app itself. The job row is created here
(``queued``, with its log path under ``artifacts/logs``); the job marks itself running, reports progress and
finishes its row. If the process ends without finishing its row (a crash before the job starts, a kill),
the waiter thread here, or after an app restart :meth:`core.store.jobs.JobStore.reconcile`, marks it
failed with the log's last lines. Nothing here knows the job registry: core.runner.launcher is the app's
door, which checks the kind first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from core.store.jobs import Job
from core.store.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parents[2]


def _waiter(ws: Workspace, job_id: str, proc: subprocess.Popen) -> None:
    """Reap the process; if it ended without finishing its row, record why."""
    code = proc.wait()
    try:
        store = ws.jobs()
        job = store.get(job_id)
        if job.is_active:
            if code in (-signal.SIGTERM, 130, -signal.SIGINT):
                store.finish(job_id, "cancelled", error="cancelled before the job started")
            else:
                tail = log_tail(job, lines=5, ws=ws).strip()
                store.finish(job_id, "failed", error=f"the job's process exited with code {code}"
                             + (f": {tail.splitlines()[-1]}" if tail else ""))
    except Exception:  # the row is reconciled on the next Jobs page render anyway
        pass


def start_job(ws: Workspace, kind: str, args: Sequence[str] = ()) -> str:
    """Start ``jobs.<kind>`` with ``args`` (an argv list, no shell) in the background; returns its job id.
    ``kind`` is taken as it is (core.runner.launcher.launch checks it against the registry first)."""
    args = [str(a) for a in args]
    if any(a == "--trust-checkpoint" or a.startswith("--trust-checkpoint=") for a in args):
        raise ValueError("--trust-checkpoint lets a weights file run code when it loads; it is refused for jobs "
                         "started from the app (run the job from the command line if you trust the file)")
    store = ws.jobs()
    store.init()
    logs = ws.artifact_dir("logs")
    job_id = store.create(kind, list(args))
    log_path = logs / f"{job_id}.log"
    store.set_log_path(job_id, str(log_path))  # the row names its log before the process writes to it
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_MININTERVAL", "5")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"jobs.{kind}", "--workspace", str(ws.root), "--job-id", job_id, *args],
            cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    store.set_pid(job_id, proc.pid)
    threading.Thread(target=_waiter, args=(ws, job_id, proc), daemon=True, name=f"wait-{job_id}").start()
    return job_id


def cancel(ws: Workspace, job_id: str) -> bool:
    """Ask a queued or running job to stop (SIGTERM to its process group); True if a signal was sent.

    The job records itself as cancelled; a job whose process is already gone is marked failed by reconcile.
    """
    store = ws.jobs()
    job = store.get(job_id)
    if not job.is_active or not job.pid:
        return False
    try:
        os.killpg(job.pid, signal.SIGTERM)
    except ProcessLookupError:
        store.reconcile()
        return False
    except PermissionError:
        os.kill(job.pid, signal.SIGTERM)
    return True


def log_tail(job: Job, lines: int = 40, max_bytes: int = 64_000, *, ws: Workspace | None = None) -> str:
    """The last ``lines`` lines of a job's log ('' if it has none). Progress-bar redraws are collapsed.
    With ``ws``, a log path outside that workspace's folder is not read (the job table is data: it could
    name any file)."""
    if not job.log_path or not Path(job.log_path).is_file():
        return ""
    if ws is not None and not ws.contains(job.log_path):
        return f"(the log path {job.log_path} is outside the workspace; it is not shown)"
    with open(job.log_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        text = f.read().decode("utf-8", errors="replace")
    out = [([p for p in ln.split("\r") if p.strip()] or [""])[-1]
           for ln in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([ln for ln in out if ln.strip()][-lines:])


def wait(ws: Workspace, job_id: str, timeout: float = 120.0, poll: float = 0.2) -> Job:
    """Block until a job is no longer queued/running (for scripts and tests); returns its final row."""
    deadline = time.monotonic() + timeout
    store = ws.jobs()
    while True:
        job = store.get(job_id)
        if not job.is_active:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
        time.sleep(poll)  # store.get reconciles: a dead job reads as failed on the next round
