"""Writing files atomically: a unique temporary name beside the target, renamed over it when complete.

Two jobs writing the same artifact never write into one temporary file, and a reader (or a job killed
half-way) never sees a half-written file: the target is either the old file or the new one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write to, renamed to ``path`` when the block succeeds (removed if it raises).
    The temporary name keeps the target's suffix, so writers that infer a format from it still do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
