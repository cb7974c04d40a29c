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
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from core.store.errors import (  # noqa: F401  (the workspace's errors are importable from here too)
    NotAWorkspaceError,
    ReadOnlyWorkspaceError,
    SchemaVersionError,
    WorkspaceError,
)
from core.store.schema import DDL, MIGRATES_FROM, MIGRATIONS, SCHEMA_VERSION
from core.store.transactions import transaction

DB_FILE = "workspace.duckdb"
JOBS_FILE = "jobs.sqlite"
ARTIFACTS_DIR = "artifacts"

WAIT_NOTICE_SECONDS = 5.0  # a writer waiting longer than this for the file says so once
_LOCK_ERRORS = ("Could not set lock", "Conflicting lock", "different configuration", "database is locked")
_process_locks: dict[str, threading.RLock] = {}
_process_locks_guard = threading.Lock()


class WorkspaceBusyError(WorkspaceError):
    pass


_write_guard: Callable[[], None] | None = None


def set_write_guard(guard: Callable[[], None] | None) -> None:
    """Call ``guard()`` before every write transaction of this process commits; if it raises, the transaction
    is rolled back. A job uses it to never commit once its row in the job table is no longer its own (it was
    marked failed while the process was paused, say)."""
    global _write_guard
    _write_guard = guard


def _process_lock(path: Path) -> threading.RLock:
    key = str(path.resolve())
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.RLock())


def _is_lock_error(exc: Exception) -> bool:
    return any(s in str(exc) for s in _LOCK_ERRORS)


@dataclass(frozen=True)
class Workspace:
    """Handle on a workspace folder. Cheap to create; holds no connection. ``read_only``: every write is
    refused (:class:`ReadOnlyWorkspaceError`), the job table is read through a read-only connection, and no
    folder is created (the app's viewer mode)."""

    root: Path
    read_only: bool = False

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

    def contains(self, path: str | Path) -> bool:
        """True if ``path`` (symlinks resolved) lies inside this workspace's folder: the app reads or serves a
        file named in the workspace (a log, a mosaic, a checkpoint) only then."""
        try:
            return Path(path).resolve().is_relative_to(self.root.resolve())
        except (OSError, ValueError, RuntimeError):
            return False

    def cache_dir(self, name: str) -> Path:
        """A folder for files made only to be shown again faster (thumbnails): ``artifacts/<name>``, or, for a
        read-only workspace, one outside it in the system's temporary folder (the workspace stays as it is)."""
        if not self.read_only:
            return self.artifact_dir(name)
        import hashlib
        import tempfile

        key = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        d = Path(tempfile.gettempdir()) / "dcd-studio-view" / key / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def artifact_dir(self, *parts: str) -> Path:
        """A folder under ``artifacts/``, created on demand (not when read-only)."""
        d = self.artifacts.joinpath(*parts)
        if not self.read_only:
            d.mkdir(parents=True, exist_ok=True)
        return d

    # -- creation and opening -------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, *, exist_ok: bool = False) -> "Workspace":
        """Create a new, empty workspace at ``root`` (a folder that is empty or does not exist)."""
        root = Path(root).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise NotAWorkspaceError(f"{root} is a file, not a folder; give a folder for the workspace.")
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
    def open(cls, root: str | Path, *, read_only: bool = False) -> "Workspace":
        """Open an existing workspace, checking that it is one and that its schema is this version's
        (``read_only``: see the class doc; an older schema is then not upgraded but refused)."""
        root = Path(root).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise NotAWorkspaceError(f"{root} is a file, not a workspace folder (a folder holding {DB_FILE}).")
        if not root.is_dir():
            raise NotAWorkspaceError(f"{root} does not exist. Create a workspace with `python -m jobs.demo` "
                                     f"or `python -m jobs.ingest --workspace {root} ...`.")
        if not (root / DB_FILE).exists():
            raise NotAWorkspaceError(f"{root} is not a DCD Studio workspace (no {DB_FILE} in it). "
                                     f"Create one with `python -m jobs.ingest --workspace {root} ...`.")
        ws = cls(root, read_only=read_only)
        version = ws.schema_version()
        if version in MIGRATES_FROM and read_only:
            raise SchemaVersionError(f"{root} has workspace schema version {version}, which this DCD Studio "
                                     f"upgrades in place to {SCHEMA_VERSION} on its first write; a read-only "
                                     f"open cannot. Open it once without --read-only (the app, or any job).")
        if version in MIGRATES_FROM:
            ws._migrate(version)
            version = ws.schema_version()
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{root} has workspace schema version {version}, this DCD Studio reads version "
                f"{SCHEMA_VERSION}. Rebuild the workspace with this version (re-run ingest), or use the "
                f"DCD Studio version that wrote it.")
        return ws

    def _migrate(self, version: int) -> None:
        """Bring a workspace of an older, compatible version to this one: add the tables and columns it lacks."""
        with self.write() as con:
            con.execute(DDL)
            for since, statement in MIGRATIONS:
                if version < since:
                    con.execute(statement)
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])
        renamed = ", DCD's `k` column named `neighbours`" if version < 4 else ""
        copied = ("; images and failures copied into tables that allow the uploaded split (every row kept)"
                  if version < 7 else "")
        print(f"note: workspace {self.root} upgraded from schema version {version} to {SCHEMA_VERSION} "
              f"(tables and columns added{renamed}{copied}; no data changed)", file=sys.stderr)

    def schema_version(self) -> int | None:
        """The schema version recorded in the workspace (None if it records none)."""
        try:
            row = self.fetchone("SELECT value FROM meta WHERE key = 'schema_version'")
        except duckdb.CatalogException:
            return None
        except WorkspaceError:
            raise
        except duckdb.Error as exc:  # not a DuckDB file, a damaged one, another database's file...
            raise NotAWorkspaceError(f"{self.db_path} is not a DuckDB database this DCD Studio can read "
                                     f"({str(exc).splitlines()[0][:200]}). Point at a workspace folder, or "
                                     f"move this file away and re-create the workspace.") from None
        try:
            return int(row[0]) if row else None
        except ValueError:
            return None

    # -- connections ----------------------------------------------------------------------------

    @contextmanager
    def _connect(self, *, read_only: bool, timeout: float) -> Iterator[duckdb.DuckDBPyConnection]:
        lock = _process_lock(self.db_path)
        start = time.monotonic()
        deadline = start + timeout
        delay = 0.005
        said = False
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
                    if not read_only and not said and time.monotonic() - start > WAIT_NOTICE_SECONDS:
                        print(f"waiting for the workspace {self.root}: another process holds it (a job writing, "
                              f"or readers); up to {timeout:.0f} s", file=sys.stderr, flush=True)
                        said = True
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
        if self.read_only:
            raise ReadOnlyWorkspaceError(f"{self.root} is open read-only (viewer mode): nothing can be written "
                                         f"to it here")
        with self._connect(read_only=False, timeout=timeout) as con, transaction(con):
            yield con
            if _write_guard is not None:
                _write_guard()

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

        return JobStore(self.jobs_path, read_only=self.read_only)


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (a table or column name read from a workspace file is data, and
    goes into SQL only through here; values always go through parameters)."""
    return '"' + str(name).replace('"', '""') + '"'


def replace_model_rows(con: duckdb.DuckDBPyConnection, table: str, staging: Any, *, model_id: str, key: str,
                       columns: Sequence[str] | None = None) -> None:
    """Inside a write transaction: replace ``table``'s rows of ``model_id`` whose ``key`` is among the staged
    rows (a pandas DataFrame or Arrow table) with the staged rows."""
    con.register("staging_rows", staging)
    try:
        table, key = quote_ident(table), quote_ident(key)
        con.execute(f"DELETE FROM {table} WHERE model_id = ? AND {key} IN (SELECT {key} FROM staging_rows)",
                    [model_id])
        cols = ", ".join(map(quote_ident, columns)) if columns else "*"
        target = f"{table} ({cols})" if columns else table
        con.execute(f"INSERT INTO {target} SELECT {cols} FROM staging_rows")
    finally:
        con.unregister("staging_rows")


def workspace_from_env(default: str | os.PathLike | None = None) -> Path | None:
    """The workspace path given by ``DCD_WORKSPACE``, else ``default``."""
    value = os.environ.get("DCD_WORKSPACE") or default
    return Path(value) if value else None
