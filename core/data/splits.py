"""Reading the workspace's images by split, with their pixels decoded (and cached) at a given size."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from core.constants import SPLITS
from core.store.workspace import Workspace


def images_df(ws: Workspace, splits: Sequence[str] | None = None) -> pd.DataFrame:
    """image_id, path, split, label, weak_label, group_name, true_label of the given splits (all if None)."""
    if splits is not None:
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; splits are {list(SPLITS)}")
        ph = ", ".join("?" * len(splits))
        return ws.df(f"SELECT * FROM images WHERE split IN ({ph}) ORDER BY image_id", list(splits))
    return ws.df("SELECT * FROM images ORDER BY image_id")


def split_counts(ws: Workspace) -> dict[str, int]:
    df = ws.df("SELECT split, count(*) AS n FROM images GROUP BY split")
    return {s: int(df.loc[df.split == s, "n"].sum()) for s in SPLITS}


def require_split(df: pd.DataFrame, split: str, why: str) -> None:
    if (df.split == split).sum() == 0:
        raise ValueError(f"the workspace has no '{split}' images, needed {why}; ingest a manifest with "
                         f"rows of split '{split}'")
