"""A workspace: one DuckDB file, one SQLite job store and a folder of derived artifacts.

Layout of a workspace folder::

    workspace.duckdb   images, models, embeddings, predictions, selections, metrics, slices, annotations
    jobs.sqlite        jobs and their progress (many small writes: see core.store.jobs)
    artifacts/         faiss indexes, checkpoints, thumbnails, mosaics, logs

DuckDB lets one process hold a file read-write, and then no other process may open it at all. So nobody
keeps a connection: every read opens a short read-only connection and every write a short read-write
transaction, and both retry while another process holds the lock. Jobs compute first and write in one
short transaction, so a reader never sees half a result. Inside one process a lock serialises connections
(DuckDB refuses two connections with different ``read_only`` settings to one file in one process).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from core.store.schema import DDL, SCHEMA_VERSION

DB_FILE = "workspace.duckdb"
JOBS_FILE = "jobs.sqlite"
ARTIFACTS_DIR = "artifacts"

_LOCK_ERRORS = ("Could not set lock", "Conflicting lock", "different configuration", "database is locked")
_process_locks: dict[str, threading.RLock] = {}
_process_locks_guard = threading.Lock()


class WorkspaceError(Exception):
    """A workspace cannot be used as asked; the message says what to do."""


class NotAWorkspaceError(WorkspaceError):
    pass


class SchemaVersionError(WorkspaceError):
    pass


class WorkspaceBusyError(WorkspaceError):
    pass


def _process_lock(path: Path) -> threading.RLock:
    key = str(path.resolve())
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.RLock())


def _is_lock_error(exc: Exception) -> bool:
    return any(s in str(exc) for s in _LOCK_ERRORS)


@dataclass(frozen=True)
class Workspace:
    """Handle on a workspace folder. Cheap to create; holds no connection."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILE

    @property
    def jobs_path(self) -> Path:
        return self.root / JOBS_FILE

    @property
    def artifacts(self) -> Path:
        return self.root / ARTIFACTS_DIR

    def artifact_dir(self, *parts: str) -> Path:
        """A folder under ``artifacts/``, created on demand."""
        d = self.artifacts.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- creation and opening -------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, *, exist_ok: bool = False) -> "Workspace":
        """Create a new, empty workspace at ``root`` (a folder that is empty or does not exist)."""
        root = Path(root).expanduser().resolve()
        if (root / DB_FILE).exists():
            if exist_ok:
                return cls.open(root)
            raise WorkspaceError(f"{root} already holds a workspace; open it, or pick another folder.")
        root.mkdir(parents=True, exist_ok=True)
        ws = cls(root)
        ws.artifacts.mkdir(exist_ok=True)
        with ws.write() as con:
            con.execute(DDL)
            now = datetime.now(timezone.utc).isoformat()
            con.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("created_at", now), ("name", root.name)],
            )
        from core.store.jobs import JobStore

        JobStore(ws.jobs_path).init()
        return ws

    @classmethod
    def open(cls, root: str | Path) -> "Workspace":
        """Open an existing workspace, checking that it is one and that its schema is this version's."""
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise NotAWorkspaceError(f"{root} does not exist. Create a workspace with `python -m jobs.demo` "
                                     f"or `python -m jobs.ingest --workspace {root} ...`.")
        if not (root / DB_FILE).exists():
            raise NotAWorkspaceError(f"{root} is not a DCD Studio workspace (no {DB_FILE} in it). "
                                     f"Create one with `python -m jobs.ingest --workspace {root} ...`.")
        ws = cls(root)
        version = ws.schema_version()
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{root} has workspace schema version {version}, this DCD Studio reads version "
                f"{SCHEMA_VERSION}. Rebuild the workspace with this version (re-run ingest), or use the "
                f"DCD Studio version that wrote it.")
        return ws

    def schema_version(self) -> int | None:
        try:
            row = self.fetchone("SELECT value FROM meta WHERE key = 'schema_version'")
        except duckdb.CatalogException:
            return None
        return int(row[0]) if row else None

    # -- connections ----------------------------------------------------------------------------

    @contextmanager
    def _connect(self, *, read_only: bool, timeout: float) -> Iterator[duckdb.DuckDBPyConnection]:
        lock = _process_lock(self.db_path)
        deadline = time.monotonic() + timeout
        delay = 0.005
        with lock:
            while True:
                try:
                    con = duckdb.connect(str(self.db_path), read_only=read_only,
                                         config={"autoinstall_known_extensions": False,
                                                 "autoload_known_extensions": False})
                    break
                except (duckdb.IOException, duckdb.ConnectionException) as exc:
                    if not _is_lock_error(exc) or time.monotonic() > deadline:
                        if _is_lock_error(exc):
                            raise WorkspaceBusyError(
                                f"The workspace {self.root} stayed locked by another process for "
                                f"{timeout:.0f} s. Is a job stuck? See the Jobs page.") from exc
                        raise
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 1.6, 0.25)
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def read(self, *, timeout: float = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived read-only connection (retries while a writer holds the file)."""
        with self._connect(read_only=True, timeout=timeout) as con:
            yield con

    @contextmanager
    def write(self, *, timeout: float = 300.0) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short read-write transaction: committed on success, rolled back on error."""
        with self._connect(read_only=False, timeout=timeout) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def df(self, sql: str, params: list[Any] | tuple[Any, ...] | None = None) -> pd.DataFrame:
        """Run a read query and return a DataFrame."""
        with self.read() as con:
            return con.execute(sql, params or []).df()

    def fetchone(self, sql: str, params: list[Any] | tuple[Any, ...] | None = None) -> tuple | None:
        with self.read() as con:
            return con.execute(sql, params or []).fetchone()

    def scalar(self, sql: str, params: list[Any] | tuple[Any, ...] | None = None) -> Any:
        row = self.fetchone(sql, params)
        return None if row is None else row[0]

    def data_version(self) -> str:
        """Changes whenever the workspace's data or job states change: a key for caches."""
        parts = []
        # The job store's WAL file too: job progress lands there before any checkpoint of jobs.sqlite.
        for p in (self.db_path, self.db_path.with_suffix(".duckdb.wal"), self.jobs_path,
                  self.jobs_path.with_name(self.jobs_path.name + "-wal")):
            try:
                st = p.stat()
                parts.append(f"{st.st_mtime_ns}:{st.st_size}")
            except FileNotFoundError:
                parts.append("-")
        return "|".join(parts)

    # -- small shared lookups -------------------------------------------------------------------

    def class_names(self) -> list[str]:
        return [r[0] for r in self.df("SELECT name FROM classes ORDER BY class_id").itertuples(index=False)]

    def jobs(self):
        from core.store.jobs import JobStore

        return JobStore(self.jobs_path)


def replace_model_rows(con: duckdb.DuckDBPyConnection, table: str, staging: Any, *, model_id: str, key: str,
                       columns: Sequence[str] | None = None) -> None:
    """Inside a write transaction: replace ``table``'s rows of ``model_id`` whose ``key`` is among the staged
    rows (a pandas DataFrame or Arrow table) with the staged rows."""
    con.register("staging_rows", staging)
    try:
        con.execute(f"DELETE FROM {table} WHERE model_id = ? AND {key} IN (SELECT {key} FROM staging_rows)",
                    [model_id])
        cols = ", ".join(columns) if columns else "*"
        target = f"{table} ({cols})" if columns else table
        con.execute(f"INSERT INTO {target} SELECT {cols} FROM staging_rows")
    finally:
        con.unregister("staging_rows")


def workspace_from_env(default: str | os.PathLike | None = None) -> Path | None:
    """The workspace path given by ``DCD_WORKSPACE``, else ``default``."""
    value = os.environ.get("DCD_WORKSPACE") or default
    return Path(value) if value else None
