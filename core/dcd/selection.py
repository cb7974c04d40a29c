"""Debug-train selections as stored: a named set of images with the label each will be trained with.

Kept in ``selections`` / ``selection_items``; a person can accept, reject or relabel items (the Retrieval
page). How a selection is chosen is core.dcd.strategies.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.dcd.index import IndexInfo
from core.store.workspace import Workspace

#: What a selection's item is: one of the failure's own images, a pool image retrieval added for it, or one of
#: the rest of the pool its teacher labels with confidence (core.dcd.debug_train; fine-tuning draws these
#: with train's share of each batch, core.dcd.fine_tune).
ITEM_KINDS = ("failure", "retrieved", "rest")


@dataclass
class Selection:
    selection_id: str
    name: str
    method: str
    items: pd.DataFrame  # image_id, rank, distance, source_image_id, label, status, kind, confidence
    index_info: IndexInfo | None = None
    # what it was made with: embedder_id, budget, label_policy ... (as stored; see latest_selection)
    params: dict = field(default_factory=dict)

    def n_of_kind(self, kind: str) -> int:
        """How many items are of ``kind`` (one of :data:`ITEM_KINDS`): e.g. the pool images retrieval added."""
        if kind not in ITEM_KINDS:
            raise ValueError(f"an item's kind is one of {', '.join(ITEM_KINDS)}, not {kind!r}")
        return int((self.items["kind"] == kind).sum()) if "kind" in self.items else 0


def save_selection(ws: Workspace, name: str, method: str, items: pd.DataFrame, *,
                   params: dict | None = None, index_info: IndexInfo | None = None,
                   status: str = "proposed") -> Selection:
    """Store a selection (items: image_id, label, [rank, distance, source_image_id, status, kind,
    confidence]; ``kind``: one of :data:`ITEM_KINDS`, ``retrieved`` by default)."""
    if items["label"].isna().any():
        missing = items.loc[items["label"].isna(), "image_id"].head(5).tolist()
        raise ValueError(f"selection {name!r}: images without a label to train with, e.g. {missing}")
    selection_id = f"{method}-{uuid.uuid4().hex[:8]}"
    out = pd.DataFrame({
        "selection_id": selection_id,
        "image_id": items["image_id"].astype("int64").values,
        "rank": items.get("rank", pd.Series(np.arange(len(items)))).astype("int32").values,
        "distance": items["distance"].astype("float32").values if "distance" in items else np.nan,
        "source_image_id": (items["source_image_id"].astype("Int64").values
                            if "source_image_id" in items else pd.array([None] * len(items), "Int64")),
        "label": items["label"].astype("int32").values,
        "status": items["status"].fillna(status).values if "status" in items else status,
        "kind": items["kind"].fillna("retrieved").values if "kind" in items else "retrieved",
        "confidence": items["confidence"].astype("float32").values if "confidence" in items else np.nan,
    })
    if not out.kind.isin(ITEM_KINDS).all():
        raise ValueError(f"selection {name!r}: an item's kind must be one of {', '.join(ITEM_KINDS)}")
    p = dict(params or {})
    with ws.write() as con:
        con.execute(
            "INSERT INTO selections (selection_id, name, method, embedder_id, neighbours, budget, label_policy, "
            "index_type, recall, params) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [selection_id, name, method, p.get("embedder_id"), p.get("neighbours"), p.get("budget"),
             p.get("label_policy"), index_info.index_type if index_info else None,
             index_info.recall_at_k if index_info else None, json.dumps(p)])
        con.register("staging_items", out)
        con.execute("INSERT INTO selection_items (selection_id, image_id, rank, distance, source_image_id, label, "
                    "status, kind, confidence) SELECT selection_id, image_id, rank, distance, source_image_id, "
                    "label, status, kind, confidence FROM staging_items")
        con.unregister("staging_items")
    return Selection(selection_id, name, method, out, index_info, params=p)


def latest_selection(ws: Workspace, method: str) -> Selection:
    """The newest stored selection made by ``method`` (``dcd``, ``random`` ...), with every item (rejected ones
    too) and its params: those it stored, and the selections table's embedder_id, neighbours, budget and
    label_policy. A ValueError if the workspace has none."""
    row = ws.df("SELECT selection_id, name, method, embedder_id, neighbours, budget, label_policy, params "
                "FROM selections WHERE method = ? ORDER BY created_at DESC LIMIT 1", [method])
    if row.empty:
        raise ValueError(f"the workspace has no {method} selection yet")
    r = row.iloc[0]
    columns = {key: (None if pd.isna(r[key]) else r[key]) for key in ("embedder_id", "neighbours", "budget",
                                                                      "label_policy")}
    for key in ("neighbours", "budget"):
        columns[key] = None if columns[key] is None else int(columns[key])
    params = {**(json.loads(r["params"]) if r["params"] else {}), **columns}
    items = ws.df("SELECT * FROM selection_items WHERE selection_id = ? ORDER BY rank", [r["selection_id"]])
    return Selection(str(r["selection_id"]), str(r["name"]), str(r["method"]), items, params=params)


def record_params(ws: Workspace, selection_id: str, **params) -> dict:
    """Add ``params`` to a stored selection's params (e.g. what the loop decided about it); returns them all."""
    raw = ws.scalar("SELECT params FROM selections WHERE selection_id = ?", [selection_id])
    if raw is None and not ws.scalar("SELECT count(*) FROM selections WHERE selection_id = ?", [selection_id]):
        raise ValueError(f"no selection {selection_id!r}")
    merged = {**(json.loads(raw) if raw else {}), **params}
    with ws.write() as con:
        con.execute("UPDATE selections SET params = ? WHERE selection_id = ?", [json.dumps(merged), selection_id])
    return merged


def selection_items(ws: Workspace, selection_id: str, *, include_rejected: bool = False) -> pd.DataFrame:
    """A selection's items with their image paths (rejected items left out unless asked)."""
    where = "" if include_rejected else "AND s.status <> 'rejected'"
    return ws.df(
        f"SELECT s.*, i.path, i.split, i.weak_label, i.true_label, i.group_name FROM selection_items s "
        f"JOIN images i USING (image_id) WHERE s.selection_id = ? {where} ORDER BY s.rank", [selection_id])


def set_status(ws: Workspace, selection_id: str, image_ids: Sequence[int], status: str) -> int:
    """Accept, reject or re-propose items; returns how many changed."""
    if status not in ("proposed", "accepted", "rejected"):
        raise ValueError(f"status must be proposed, accepted or rejected, not {status!r}")
    with ws.write() as con:
        before = con.execute("SELECT count(*) FROM selection_items WHERE selection_id = ? AND status = ?",
                             [selection_id, status]).fetchall()[0][0]
        con.execute("UPDATE selection_items SET status = ? WHERE selection_id = ? AND image_id IN "
                    "(SELECT unnest(?::BIGINT[]))", [status, selection_id, [int(i) for i in image_ids]])
        after = con.execute("SELECT count(*) FROM selection_items WHERE selection_id = ? AND status = ?",
                            [selection_id, status]).fetchall()[0][0]
    return int(after - before)


def relabel(ws: Workspace, selection_id: str, image_ids: Sequence[int], label: int) -> None:
    with ws.write() as con:
        con.execute("UPDATE selection_items SET label = ? WHERE selection_id = ? AND image_id IN "
                    "(SELECT unnest(?::BIGINT[]))", [int(label), selection_id, [int(i) for i in image_ids]])


def list_selections(ws: Workspace) -> pd.DataFrame:
    """Every selection, newest first, with its item counts: n_failure (the failure's own images), n_rest (the
    rest of the pool its teacher labels, not for review) and the review of the retrieved images (n_accepted,
    n_rejected; the others are not reviewed)."""
    return ws.df(
        "SELECT s.selection_id, s.name, s.method, s.embedder_id, s.neighbours, s.budget, s.label_policy, "
        "s.index_type, s.recall, s.created_at, count(i.image_id) AS n_items, "
        "count(*) FILTER (WHERE i.kind = 'failure') AS n_failure, "
        "count(*) FILTER (WHERE i.kind = 'rest') AS n_rest, "
        "count(*) FILTER (WHERE i.status = 'accepted' AND i.kind NOT IN ('failure', 'rest')) AS n_accepted, "
        "count(*) FILTER (WHERE i.status = 'rejected' AND i.kind NOT IN ('failure', 'rest')) AS n_rejected "
        "FROM selections s LEFT JOIN selection_items i USING (selection_id) "
        "GROUP BY ALL ORDER BY s.created_at DESC")


