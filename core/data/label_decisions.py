"""What a person decided about a train image's label (the Errors page's label-issue review, stored in
``label_issues.decision`` by core.dcd.label_review): 'drop' leaves the image out of training, 'relabel'
trains it with the suggested label. Training reads the decisions here, below the DCD layer that makes them."""

from __future__ import annotations

import pandas as pd

from core.store.workspace import Workspace


def label_decisions(ws: Workspace) -> tuple[set[int], dict[int, int]]:
    """(image ids decided 'drop', {image id: suggested label} of those decided 'relabel')."""
    df = ws.df("SELECT image_id, decision, suggested_label FROM label_issues WHERE decision IN ('drop', 'relabel')")
    drop = {int(i) for i in df.image_id[df.decision == "drop"]}
    relabel = {int(i): int(lbl) for i, lbl in zip(df.image_id[df.decision == "relabel"],
                                                   df.suggested_label[df.decision == "relabel"])}
    return drop, relabel


def apply_label_decisions(ws: Workspace, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (image_id, label, ...: train images) without the images decided 'drop' and with the
    suggested label for those decided 'relabel'."""
    drop, relabel = label_decisions(ws)
    if not drop and not relabel:
        return rows
    out = rows[~rows.image_id.isin(drop)].copy()
    out["label"] = [relabel.get(int(i), lbl) for i, lbl in zip(out.image_id, out.label)]
    return out
