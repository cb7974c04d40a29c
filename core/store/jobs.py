"""The job table: state, progress, messages and timings of batch jobs, in SQLite (WAL mode).

Jobs report progress many times a minute while the app polls; DuckDB allows one writing process and no
readers beside it, SQLite in WAL mode allows one writer and any number of readers. Writes use
``BEGIN IMMEDIATE`` with a busy timeout, so concurrent writers wait instead of failing.

A job row is the truth every page shows. A queued or running job whose process has died (killed, machine
restarted) or stopped reporting is marked failed by :meth:`JobStore.reconcile`, which every read
(:meth:`JobStore.get`, :meth:`JobStore.list`) runs first, so no page shows it as running forever. Two jobs
of the same kind never run at once on one workspace: :meth:`JobStore.claim` starts a job only when no other
job of its kind runs, else the job stays queued behind it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.store.errors import ReadOnlyWorkspaceError
from core.store.transactions import transaction

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")

_DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL DEFAULT 'queued',
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    log_path TEXT,
    error TEXT,
    result TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""

# A running job writes a heartbeat at least this often (seconds); one silent for much longer is dead.
HEARTBEAT_SECONDS = 5.0
STALE_AFTER_SECONDS = 120.0


@dataclass
class Job:
    job_id: str
    kind: str
    args: list[str]
    state: str
    progress: float
    message: str
    pid: int | None
    log_path: str | None
    error: str | None
    result: dict[str, Any] | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None

    @property
    def elapsed(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES


def _row_to_job(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["args"] = json.loads(d["args"] or "[]")
    d["result"] = json.loads(d["result"]) if d["result"] else None
    return Job(**d)


def pid_alive(pid: int | None) -> bool:
    """True if a process with this pid exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (FileNotFoundError, IndexError):
        return os.name != "posix" or not Path("/proc").exists()


class JobStore:
    """Jobs of one workspace. Every method opens its own short connection: safe across processes."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only  # reads through a read-only connection; writes and reconciling refused

    @contextmanager
    def _con(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        if write and self.read_only:
            raise ReadOnlyWorkspaceError(f"the job table {self.path} is open read-only (viewer mode)")
        if self.read_only:
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0,
                                  isolation_level=None)
        else:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            if write:
                with transaction(con, "BEGIN IMMEDIATE"):
                    yield con
            else:
                yield con
        finally:
            con.close()

    def init(self) -> None:
        con = sqlite3.connect(self.path, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode = WAL")
            con.executescript(_DDL)
        finally:
            con.close()

    # -- writing --------------------------------------------------------------------------------

    def create(self, kind: str, args: list[str], *, log_path: str | None = None,
               job_id: str | None = None) -> str:
        job_id = job_id or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with self._con(write=True) as con:
            con.execute(
                "INSERT INTO jobs (job_id, kind, args, state, log_path, created_at) VALUES (?,?,?,?,?,?)",
                (job_id, kind, json.dumps(args), "queued", log_path, time.time()))
        return job_id

    def start(self, job_id: str, pid: int) -> None:
        now = time.time()
        with self._con(write=True) as con:
            con.execute("UPDATE jobs SET state='running', pid=?, started_at=?, heartbeat_at=? WHERE job_id=?",
                        (pid, now, now, job_id))

    def set_log_path(self, job_id: str, log_path: str) -> None:
        with self._con(write=True) as con:
            con.execute("UPDATE jobs SET log_path=? WHERE job_id=?", (log_path, job_id))

    def set_pid(self, job_id: str, pid: int) -> None:
        with self._con(write=True) as con:
            con.execute("UPDATE jobs SET pid=? WHERE job_id=?", (pid, job_id))

    def claim(self, job_id: str, pid: int) -> str | None:
        """Start ``job_id`` in process ``pid`` unless another job of its kind is running (atomically: two
        claims never both win). Returns None when started, else the id of the job it waits for (this row
        then stays queued, with its pid and a message saying so)."""
        now = time.time()
        with self._con(write=True) as con:
            kind = con.execute("SELECT kind FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if kind is None:
                raise KeyError(f"no job {job_id!r} in {self.path}")
            others = con.execute("SELECT job_id, pid, heartbeat_at FROM jobs WHERE kind=? AND state='running' "
                                 "AND job_id<>?", (kind[0], job_id)).fetchall()
            blocking = [r["job_id"] for r in others if pid_alive(r["pid"])
                        and not (r["heartbeat_at"] and now - r["heartbeat_at"] > STALE_AFTER_SECONDS)]
            if blocking:
                con.execute("UPDATE jobs SET pid=?, heartbeat_at=?, message=? WHERE job_id=? AND state='queued'",
                            (pid, now, f"queued: waiting for {blocking[0]} ({kind[0]}) to finish", job_id))
                return blocking[0]
            con.execute("UPDATE jobs SET state='running', pid=?, started_at=?, heartbeat_at=?, message='' "
                        "WHERE job_id=? AND state='queued'", (pid, now, now, job_id))
        return None

    def owns(self, job_id: str, pid: int) -> bool:
        """True if ``job_id`` is running in process ``pid`` (a job checks this before it commits results)."""
        with self._con() as con:
            row = con.execute("SELECT state, pid FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return row is not None and row["state"] == "running" and row["pid"] == pid

    def update(self, job_id: str, *, progress: float | None = None, message: str | None = None) -> None:
        sets, params = ["heartbeat_at=?"], [time.time()]
        if progress is not None:
            sets.append("progress=?")
            params.append(max(0.0, min(1.0, float(progress))))
        if message is not None:
            sets.append("message=?")
            params.append(message)
        with self._con(write=True) as con:
            con.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id=? AND state IN ('queued','running')",
                        (*params, job_id))

    def finish(self, job_id: str, state: str, *, error: str | None = None,
               result: dict[str, Any] | None = None, message: str | None = None) -> None:
        if state not in ("succeeded", "failed", "cancelled"):
            raise ValueError(f"finish() takes succeeded, failed or cancelled, not {state!r}")
        with self._con(write=True) as con:
            con.execute(
                "UPDATE jobs SET state=?, error=?, result=?, finished_at=?, "
                "progress=CASE WHEN ?='succeeded' THEN 1.0 ELSE progress END, "
                "message=COALESCE(?, message) WHERE job_id=? AND state IN ('queued','running')",
                (state, error, json.dumps(result) if result is not None else None, time.time(), state,
                 message, job_id))

    def reconcile(self) -> list[str]:
        """Mark running or queued jobs whose process is gone as failed; return their ids (none when read-only:
        a viewer changes nothing)."""
        if self.read_only:
            return []
        dead = []
        now = time.time()
        for job in self._list(active_only=True):
            gone = not pid_alive(job.pid) if job.pid else (now - job.created_at > STALE_AFTER_SECONDS)
            stale = job.heartbeat_at is not None and now - job.heartbeat_at > STALE_AFTER_SECONDS
            if gone or stale:
                why = ("the job's process died" if gone else
                       f"the job stopped reporting for over {STALE_AFTER_SECONDS:.0f} s (no heartbeat); if it goes "
                       f"on, it saves nothing")
                log = f"; its log: {job.log_path}" if job.log_path else ""
                self.finish(job.job_id, "failed", error=f"{why}{log}")
                dead.append(job.job_id)
        return dead

    # -- reading --------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """A job's row, after :meth:`reconcile` (so a dead job reads as failed)."""
        self.reconcile()
        with self._con() as con:
            row = con.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id!r} in {self.path}")
        return _row_to_job(row)

    def list(self, *, active_only: bool = False, limit: int = 200) -> list[Job]:
        """Jobs, newest first, after :meth:`reconcile` (so a dead job reads as failed)."""
        self.reconcile()
        return self._list(active_only=active_only, limit=limit)

    def _list(self, *, active_only: bool = False, limit: int = 200) -> list[Job]:
        where = "WHERE state IN ('queued','running')" if active_only else ""
        with self._con() as con:
            rows = con.execute(f"SELECT * FROM jobs {where} ORDER BY created_at DESC LIMIT ?",
                               (limit,)).fetchall()
        return [_row_to_job(r) for r in rows]
