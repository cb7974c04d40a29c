"""One transaction on a DuckDB or SQLite connection: the workspace's and the job table's writes share it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def transaction(con: Any, begin: str = "BEGIN TRANSACTION") -> Iterator[Any]:
    """``begin`` on a DuckDB or SQLite connection; COMMIT when the block succeeds, ROLLBACK when it raises."""
    con.execute(begin)
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
