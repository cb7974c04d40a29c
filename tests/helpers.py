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


def planted_predictions(ws, manifest: Path, model_id: str, split: str):
    """A model's predictions on the labelled images of ``split`` (image_id, correct) beside what the tiny
    dataset's manifest planted for each image (group, site, exposure, taken: read from the CSV, not from the
    workspace's metadata tables)."""
    import pandas as pd

    planted = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    planted["path"] = [str((manifest.parent / p).resolve()) for p in planted.path]
    preds = ws.df("SELECT i.image_id, i.path, p.correct FROM predictions p JOIN images i USING (image_id) "
                  "WHERE p.model_id = ? AND i.split = ? AND i.label IS NOT NULL ORDER BY i.image_id", [model_id, split])
    out = preds.merge(planted[["path", "group", "site", "exposure", "taken"]], on="path", validate="one_to_one")
    return out.assign(exposure=out.exposure.astype(float))


def planted_rows(planted, column: str, value: str):
    """The rows of :func:`planted_predictions` a breakdown's row ``value`` of ``column`` stands for: a site as
    is, an exposure range ``a – b`` (or one value), a month ``YYYY-MM`` of ``taken``."""
    if column == "exposure":
        low, _, high = value.partition(" – ")
        return planted[(planted.exposure >= float(low)) & (planted.exposure <= float(high or low))]
    if column == "taken":
        return planted[planted.taken.str[:7] == value]
    return planted[planted[column] == value]
