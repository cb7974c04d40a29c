"""DCD's retrieval itself: the nearest pool images of failure images, merged, labelled by a pair policy.

The primitives the ``dcd`` strategy (core.dcd.strategies), the debug-train set (core.dcd.debug_train), the
Retrieval page and the benchmarks share:

- :func:`query_vectors` / :func:`neighbours`: the failure images' vectors and their nearest pool images
  (faiss, core.dcd.index), as (source, neighbour, rank, distance) pairs (:func:`pairs_from_search`);
- :func:`merge_candidates`: round-robin over neighbour rank (every failure image gets its nearest first),
  de-duplicated (an image found for several keeps its closest), cut to a budget;
- pair label policies (:data:`PAIR_LABEL_POLICIES`, :func:`label_pairs`): ``weak`` (the pool's weak label),
  ``source`` (the label of the failure image it was retrieved for) and ``agree`` (only the candidates whose
  weak label *is* that failure image's label: two independent labels that agree are rarely both wrong, and a
  neighbour of another class found for its background is dropped; :func:`fill_budget` then searches deeper
  until the budget is filled);
- :func:`select_dcd`: the paper's DCD selection as a stored selection (retrieved images only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.dcd.index import pool_index, search
from core.dcd.selection import Selection, save_selection
from core.progress import Progress
from core.store.vectors import load_embeddings
from core.store.workspace import Workspace

#: The policies that label a (failure image, neighbour) pair by itself, with no teacher.
PAIR_LABEL_POLICIES = ("weak", "source", "agree")
DEFAULT_PAIR_LABEL_POLICY = "agree"


def nearest_pairs(ws: Workspace, embedder_id: str, source_ids: Sequence[int] | None = None, *, neighbours: int,
               queries: np.ndarray | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """Every (source, neighbour) pair: source_image_id, image_id, neighbour_rank, distance.

    Sources are ``source_ids`` (default: the whole error sample) looked up in the embedder's vectors,
    or raw ``queries`` vectors (e.g. an uploaded image), which get source ids -1, -2, ...
    """
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    index, _ = pool_index(ws, embedder_id, progress=progress)
    src, queries = query_vectors(ws, embedder_id, source_ids, queries=queries)
    dist, ids = search(index, queries, neighbours)
    return pairs_from_search(src, dist, ids)


def query_vectors(ws: Workspace, embedder_id: str, source_ids: Sequence[int] | None = None, *,
                  queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(source ids, vectors) to search with: as :func:`nearest_pairs` takes them."""
    if queries is not None:
        return -np.arange(1, len(queries) + 1), queries
    if source_ids is None:
        src, queries = load_embeddings(ws, embedder_id, splits=["error_sample"])
    else:
        src, queries = load_embeddings(ws, embedder_id, image_ids=list(source_ids))
    if len(src) == 0:
        raise ValueError(f"no embedded error-sample images for {embedder_id!r}: embed the error_sample "
                         f"split (or pick images that have embeddings)")
    return src, queries


def pairs_from_search(source_ids: Sequence[int], distances: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    """faiss search output as (source_image_id, image_id, neighbour_rank, distance) rows, -1 pads dropped."""
    src = np.asarray(source_ids, np.int64)
    rows = pd.DataFrame({
        "source_image_id": np.repeat(src, ids.shape[1]),
        "image_id": ids.reshape(-1),
        "neighbour_rank": np.tile(np.arange(ids.shape[1]), len(src)),
        "distance": distances.reshape(-1),
    })
    return rows[rows.image_id >= 0].reset_index(drop=True)


def merge_candidates(pairs: pd.DataFrame, budget: int | None) -> pd.DataFrame:
    """Round-robin over neighbour rank, de-duplicated (closest source kept), cut to ``budget``."""
    best = pairs.sort_values(["distance"]).drop_duplicates("image_id", keep="first")
    ordered = best.sort_values(["neighbour_rank", "distance"]).reset_index(drop=True)
    if budget is not None:
        ordered = ordered.head(budget)
    ordered["rank"] = np.arange(len(ordered))
    return ordered


def _labels_for(ws: Workspace, image_ids: np.ndarray, column: str) -> np.ndarray:
    df = ws.df(f"SELECT image_id, {column} AS label FROM images WHERE image_id IN "
               f"(SELECT unnest(?::BIGINT[]))", [list(map(int, np.unique(image_ids)))])
    return df.set_index("image_id")["label"].reindex(image_ids).to_numpy()


def label_pairs(ws: Workspace, pairs: pd.DataFrame, label_policy: str, *,
                source_label: int | None = None) -> pd.DataFrame:
    """``pairs`` with the ``label`` each candidate would be trained with, under ``label_policy``.

    Sources with negative ids (an uploaded image) have label ``source_label``. Under ``agree`` only the pairs
    whose weak label equals the source's label are kept, and ``neighbour_rank`` counts among those.
    """
    if label_policy not in PAIR_LABEL_POLICIES:
        raise ValueError(f"label_policy must be one of {PAIR_LABEL_POLICIES}, got {label_policy!r}")
    out = pairs.copy()
    if out.empty:
        out["label"] = pd.Series(dtype="Int64")
        return out
    weak = pd.array(_labels_for(ws, out.image_id.to_numpy(), "weak_label"), dtype="Int64")
    if label_policy == "weak":
        out["label"] = weak
        return out
    src_ids = out.source_image_id.to_numpy()
    src = pd.array([pd.NA] * len(out), dtype="Int64")
    known = src_ids >= 0
    if known.any():
        src[known] = pd.array(_labels_for(ws, src_ids[known], "label"), dtype="Int64")
    if source_label is not None:
        src[~known] = int(source_label)
    out["label"] = src
    if label_policy == "agree":
        out = out[(weak == src).fillna(False).to_numpy(dtype=bool)]
        # rank among the kept, so that the round-robin merge still gives every error image its nearest first
        out = out.sort_values(["source_image_id", "distance"], kind="stable")
        out["neighbour_rank"] = out.groupby("source_image_id").cumcount()
    return out.reset_index(drop=True)


def fill_budget(ws: Workspace, index, source_ids: np.ndarray, queries: np.ndarray, *, neighbours: int,
                budget: int | None, label_policy: str, source_label: int | None = None,
                exclude: set[int] | None = None) -> tuple[pd.DataFrame, int]:
    """Merged, labelled candidates for ``queries`` (one per source id) from the pool ``index``, and the
    search depth used: ``neighbours``, or, under ``agree`` or with pool images to ``exclude`` (flagged label issues),
    doubled (up to the pool's size) until the candidates kept fill ``budget``."""
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    n_pool = int(index.ntotal)
    depth = max(1, min(neighbours, n_pool))
    while True:
        pairs = pairs_from_search(source_ids, *search(index, queries, depth))
        if exclude:
            pairs = pairs[~pairs.image_id.isin(exclude)].copy()
            pairs["neighbour_rank"] = pairs.groupby("source_image_id").cumcount()
        items = merge_candidates(label_pairs(ws, pairs, label_policy, source_label=source_label), budget)
        deeper = label_policy == "agree" or bool(exclude)
        if not deeper or budget is None or len(items) >= budget or depth >= n_pool:
            return items, depth
        depth = min(n_pool, 2 * depth)


def select_dcd(ws: Workspace, *, embedder_id: str, neighbours: int, budget: int | None,
               label_policy: str = DEFAULT_PAIR_LABEL_POLICY, name: str | None = None,
               source_ids: Sequence[int] | None = None, index_memory_gb: float | None = None,
               exclude: set[int] | None = None, extra_params: dict | None = None,
               progress: Progress | None = None) -> Selection:
    """Retrieve the debug-train set for the error sample (or ``source_ids``) and store it as a selection.

    ``index_memory_gb``: the pool index's memory budget if it must be (re)built (core.dcd.index);
    ``exclude``: pool images never to select (flagged label issues); ``extra_params``: recorded with it.

    Under ``agree`` the search goes deeper than ``neighbours`` until the budget is filled (:func:`fill_budget`);
    the depth used is stored in the selection's params as ``neighbours_searched``. The retrieved images alone: the
    ``dcd`` strategy adds the failure's own (:func:`select`).
    """
    if label_policy not in PAIR_LABEL_POLICIES:
        raise ValueError(f"label_policy must be one of {PAIR_LABEL_POLICIES}, got {label_policy!r}")
    index, info = pool_index(ws, embedder_id, memory_gb=index_memory_gb, progress=progress)
    src, queries = query_vectors(ws, embedder_id, source_ids)
    items, depth = fill_budget(ws, index, src, queries, neighbours=neighbours, budget=budget,
                               label_policy=label_policy, exclude=exclude)
    params = {"neighbours": neighbours, "neighbours_searched": depth, "budget": budget, "label_policy": label_policy,
              "embedder_id": embedder_id, "n_excluded": len(exclude or ()), **(extra_params or {})}
    return save_selection(ws, name or f"dcd-n{neighbours}-b{budget}", "dcd", items, params=params, index_info=info)
