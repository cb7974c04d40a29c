"""The model registry: which classifiers and embedders a workspace knows, and loading them back.

Classifiers are saved as checkpoints in ``artifacts/models``; embedders are recorded by how to rebuild
them (architecture + weights file, or "the penultimate layer of classifier X").
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from core.data.model_input import DataConfig
from core.models.factory import create_model, default_data_config, load_checkpoint
from core.models.features import EMBEDDING_LAYERS
from core.store.workspace import Workspace

CLASSIFIER_EMBEDDER_PREFIX = "classifier:"


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    role: str
    arch: str
    parent_id: str | None
    method: str | None
    checkpoint: str | None
    num_classes: int | None
    embed_dim: int | None
    config: dict[str, Any]


def new_model_id(method: str) -> str:
    return f"{re.sub(r'[^a-z0-9_]+', '_', method.lower())}-{uuid.uuid4().hex[:6]}"


def insert_model_row(con: Any, *, model_id: str, role: str, arch: str, parent_id: str | None = None,
                     method: str | None = None, checkpoint: str | None = None, num_classes: int | None = None,
                     embed_dim: int | None = None, config: dict[str, Any] | None = None,
                     make_current: bool = False) -> None:
    """Inside a write transaction: record a model (replacing a record of the same id); with
    ``make_current`` it becomes the current classifier in the same transaction."""
    con.execute("DELETE FROM models WHERE model_id = ?", [model_id])
    con.execute("INSERT INTO models (model_id, role, arch, parent_id, method, checkpoint, num_classes, "
                "embed_dim, config) VALUES (?,?,?,?,?,?,?,?,?)",
                [model_id, role, arch, parent_id, method, checkpoint, num_classes, embed_dim,
                 json.dumps(config or {})])
    if make_current:
        con.execute("INSERT OR REPLACE INTO meta VALUES ('current_classifier', ?)", [model_id])


def register_model(ws: Workspace, **record: Any) -> ModelRecord:
    """Record a model in one transaction (see :func:`insert_model_row` for the fields); a reader never sees
    a new current classifier without its record."""
    with ws.write() as con:
        insert_model_row(con, **record)
    return get_model(ws, record["model_id"])


def get_model(ws: Workspace, model_id: str) -> ModelRecord:
    row = ws.df("SELECT * FROM models WHERE model_id = ?", [model_id])
    if row.empty:
        known = ", ".join(list_models(ws)["model_id"].tolist()[:10]) or "none"
        raise KeyError(f"no model {model_id!r} in the workspace (known: {known})")
    r = row.iloc[0]
    return ModelRecord(r.model_id, r.role, r.arch, r.parent_id if pd.notna(r.parent_id) else None,
                       r.method if pd.notna(r.method) else None,
                       r.checkpoint if pd.notna(r.checkpoint) else None,
                       int(r.num_classes) if pd.notna(r.num_classes) else None,
                       int(r.embed_dim) if pd.notna(r.embed_dim) else None,
                       json.loads(r.config) if isinstance(r.config, str) else {})


def list_models(ws: Workspace, role: str | None = None) -> pd.DataFrame:
    if role:
        return ws.df("SELECT * FROM models WHERE role = ? ORDER BY created_at", [role])
    return ws.df("SELECT * FROM models ORDER BY created_at")


def set_current_classifier(ws: Workspace, model_id: str) -> None:
    """Make ``model_id`` the classifier under debug (the default of every job and page); it must be a
    classifier of the workspace (LookupError / ValueError saying which ones are)."""
    with ws.write() as con:
        role = con.execute("SELECT role FROM models WHERE model_id = ?", [model_id]).fetchall()
        if not role:
            known = [r[0] for r in con.execute("SELECT model_id FROM models WHERE role = 'classifier' "
                                               "ORDER BY created_at").fetchall()]
            raise LookupError(f"no model {model_id!r} in the workspace; its classifiers are: "
                              f"{', '.join(known) or 'none (train one first)'}")
        if role[0][0] != "classifier":
            raise ValueError(f"{model_id!r} is an {role[0][0]}, not a classifier: only a classifier can be current")
        con.execute("INSERT OR REPLACE INTO meta VALUES ('current_classifier', ?)", [model_id])


def current_classifier(ws: Workspace) -> str | None:
    """The classifier under debug: the one set by the last train job, else the newest baseline."""
    value = ws.scalar("SELECT value FROM meta WHERE key = 'current_classifier'")
    if value:
        return value
    return ws.scalar("SELECT model_id FROM models WHERE role = 'classifier' ORDER BY created_at DESC LIMIT 1")


class NoClassifierError(ValueError):
    """The workspace has no classifier yet (or not the one asked for)."""


def require_classifier(ws: Workspace, model_id: str | None = None, *, purpose: str = "") -> str:
    """``model_id`` if given, else the current classifier; raises :class:`NoClassifierError` saying how to
    get one when the workspace has none."""
    found = model_id or current_classifier(ws)
    if not found:
        why = f" to {purpose}" if purpose else ""
        raise NoClassifierError(f"the workspace has no classifier{why} yet; train one with "
                                f"`python -m jobs.train --workspace {ws.root}` (or the pipeline) first")
    return found


def load_classifier(ws: Workspace, model_id: str) -> tuple[nn.Module, DataConfig]:
    rec = get_model(ws, model_id)
    if rec.role != "classifier" or not rec.checkpoint:
        raise ValueError(f"{model_id!r} is not a classifier with a checkpoint")
    model, info = load_checkpoint(Path(rec.checkpoint))
    return model, info["data_config"]


def classifier_embedder_id(model_id: str) -> str:
    return f"{CLASSIFIER_EMBEDDER_PREFIX}{model_id}"


def split_embedder_id(embedder_id: str) -> tuple[str, str]:
    """``(model part, layers)`` of an embedder id: ``"classifier:m1+multiscale"`` -> ``("classifier:m1",
    "multiscale")``; ids without a suffix embed with the penultimate layer."""
    base, _, layers = embedder_id.rpartition("+")
    if base and layers in EMBEDDING_LAYERS:
        return base, layers
    return embedder_id, "penultimate"


def load_embedder(ws: Workspace, embedder_id: str) -> tuple[nn.Module, DataConfig]:
    """Rebuild an embedder recorded in the registry (for embedding new or uploaded images); embed with
    ``core.models.features.embedding_function(model, split_embedder_id(embedder_id)[1])``."""
    if split_embedder_id(embedder_id)[0].startswith(CLASSIFIER_EMBEDDER_PREFIX):
        embedder_id = split_embedder_id(embedder_id)[0]
    if embedder_id.startswith(CLASSIFIER_EMBEDDER_PREFIX):
        return load_classifier(ws, embedder_id[len(CLASSIFIER_EMBEDDER_PREFIX):])
    rec = get_model(ws, embedder_id)
    model = create_model(rec.arch, num_classes=0, weights=rec.config.get("weights"),
                         hub=bool(rec.config.get("hub")))
    cfg = rec.config.get("data_config")
    return model.eval(), (DataConfig.from_dict(cfg) if cfg else default_data_config(model))
