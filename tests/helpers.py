"""Small helpers shared by the tests: await a condition instead of sleeping, copy a workspace."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; after ``timeout`` seconds fail
    with an AssertionError naming ``what`` was awaited. Exceptions from ``predicate`` propagate (raise one to
    stop waiting for something that can no longer happen, e.g. the process died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def copy_workspace(src: Path, dst: Path, **copytree_kwargs):
    """A private copy of the workspace folder ``src`` at ``dst`` (tests write to it), opened."""
    from core.store.workspace import Workspace

    shutil.copytree(src, dst, **copytree_kwargs)
    return Workspace.open(dst)
