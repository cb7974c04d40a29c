"""Selection strategies: how a debug-train set is chosen from the pool (DCD and its baselines).

Methods (:data:`STRATEGIES`, all reached through :func:`select`):

- ``dcd``: for each ``error_sample`` image, its nearest pool images (L2 in the embedder's space);
  merged round-robin by neighbour rank (every error image gets its nearest first), de-duplicated
  (an image found for several error images keeps its closest), cut to ``budget``.
- ``random``: ``budget`` pool images drawn uniformly (same count as a DCD selection for a fair baseline).
- ``all_pool``: every pool image.
- ``error_sample_only``: the error sample itself, with its labels.

Label policies for pool images (``dcd`` only), :data:`LABEL_POLICIES`:

- ``weak``: the pool's weak label;
- ``source``: the label of the error image the candidate was retrieved for;
- ``agree``: keep only the candidates whose weak label *is* that error image's label, trained with it. Two
  independent labels that agree are rarely both wrong, so this drops most of the pool's label noise, and it
  drops neighbours of another class that were retrieved for what they share with the error image (its
  background, say) rather than for the failure itself. It keeps fewer neighbours per error image, so
  :func:`select_dcd` searches deeper until the budget is filled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from core.data.splits import split_counts
from core.dcd.embed import embed_missing, search_embedder
from core.dcd.index import pool_index, search
from core.dcd.selection import Selection, save_selection
from core.dcd.slice_targets import SliceTarget, parse_slice_ref, slice_target
from core.runner.progress import Progress
from core.store.vectors import load_embeddings
from core.store.workspace import Workspace

LabelPolicy = Literal["weak", "source", "agree"]
LABEL_POLICIES = ("weak", "source", "agree")
DEFAULT_LABEL_POLICY: LabelPolicy = "agree"


def neighbours(ws: Workspace, embedder_id: str, source_ids: Sequence[int] | None = None, *, k: int,
               queries: np.ndarray | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """Every (source, neighbour) pair: source_image_id, image_id, neighbour_rank, distance.

    Sources are ``source_ids`` (default: the whole error sample) looked up in the embedder's vectors,
    or raw ``queries`` vectors (e.g. an uploaded image), which get source ids -1, -2, ...
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    index, _ = pool_index(ws, embedder_id, progress=progress)
    src, queries = query_vectors(ws, embedder_id, source_ids, queries=queries)
    dist, ids = search(index, queries, k)
    return pairs_from_search(src, dist, ids)


def query_vectors(ws: Workspace, embedder_id: str, source_ids: Sequence[int] | None = None, *,
                  queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(source ids, vectors) to search with: as :func:`neighbours` takes them."""
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
    if label_policy not in LABEL_POLICIES:
        raise ValueError(f"label_policy must be one of {LABEL_POLICIES}, got {label_policy!r}")
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


def fill_budget(ws: Workspace, index, source_ids: np.ndarray, queries: np.ndarray, *, k: int,
                budget: int | None, label_policy: str, source_label: int | None = None,
                exclude: set[int] | None = None) -> tuple[pd.DataFrame, int]:
    """Merged, labelled candidates for ``queries`` (one per source id) from the pool ``index``, and the
    search depth used: ``k``, or, under ``agree`` or with pool images to ``exclude`` (flagged label issues),
    doubled (up to the pool's size) until the candidates kept fill ``budget``."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_pool = int(index.ntotal)
    depth = max(1, min(k, n_pool))
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


def select_dcd(ws: Workspace, *, embedder_id: str, k: int, budget: int | None,
               label_policy: LabelPolicy = DEFAULT_LABEL_POLICY, name: str | None = None,
               source_ids: Sequence[int] | None = None, index_memory_gb: float | None = None,
               exclude: set[int] | None = None, extra_params: dict | None = None,
               progress: Progress | None = None) -> Selection:
    """Retrieve the debug-train set for the error sample (or ``source_ids``) and store it as a selection.

    ``index_memory_gb``: the pool index's memory budget if it must be (re)built (core.dcd.index);
    ``exclude``: pool images never to select (flagged label issues); ``extra_params``: recorded with it.

    Under ``agree`` the search goes deeper than ``k`` until the budget is filled (:func:`fill_budget`); the
    depth used is stored in the selection's params as ``k_searched``.
    """
    if label_policy not in LABEL_POLICIES:
        raise ValueError(f"label_policy must be one of {LABEL_POLICIES}, got {label_policy!r}")
    index, info = pool_index(ws, embedder_id, memory_gb=index_memory_gb, progress=progress)
    src, queries = query_vectors(ws, embedder_id, source_ids)
    items, depth = fill_budget(ws, index, src, queries, k=k, budget=budget, label_policy=label_policy,
                               exclude=exclude)
    params = {"k": k, "k_searched": depth, "budget": budget, "label_policy": label_policy,
              "embedder_id": embedder_id, "n_excluded": len(exclude or ()), **(extra_params or {})}
    return save_selection(ws, name or f"dcd-k{k}-b{budget}", "dcd", items, params=params, index_info=info)


def select_random(ws: Workspace, *, n: int, seed: int = 0, name: str | None = None,
                  extra_params: dict | None = None) -> Selection:
    """``n`` pool images drawn uniformly, with their weak labels."""
    pool = ws.df("SELECT image_id, weak_label AS label FROM images WHERE split = 'pool' ORDER BY image_id")
    rng = np.random.default_rng(seed)
    take = pool.iloc[np.sort(rng.choice(len(pool), min(n, len(pool)), replace=False))].copy()
    take["rank"] = np.arange(len(take))
    return save_selection(ws, name or f"random-{len(take)}", "random", take,
                          params={"n": n, "seed": seed, **(extra_params or {})})


def select_all_pool(ws: Workspace, *, name: str | None = None, extra_params: dict | None = None) -> Selection:
    pool = ws.df("SELECT image_id, weak_label AS label FROM images WHERE split = 'pool' ORDER BY image_id")
    pool["rank"] = np.arange(len(pool))
    return save_selection(ws, name or "all-pool", "all_pool", pool, params=dict(extra_params or {}))


def select_error_sample(ws: Workspace, *, name: str | None = None, source_ids: Sequence[int] | None = None,
                        extra_params: dict | None = None) -> Selection:
    """The error sample itself (or the images ``source_ids``, e.g. a slice's query part), with their labels."""
    if source_ids is None:
        es = ws.df("SELECT image_id, label FROM images WHERE split = 'error_sample' ORDER BY image_id")
    else:
        es = ws.df("SELECT image_id, label FROM images WHERE image_id IN (SELECT unnest(?::BIGINT[])) "
                   "ORDER BY image_id", [[int(i) for i in source_ids]])
    es["rank"] = np.arange(len(es))
    return save_selection(ws, name or "error-sample-only", "error_sample_only", es, params=dict(extra_params or {}))


#: Candidates per error image in a default budget, and the share of the pool a default budget is capped at.
PER_ERROR_IMAGE, POOL_SHARE_CAP = 10, 0.25


def default_budget(n_error_sample: int, n_pool: int) -> int:
    """10 candidates per error image, at most a quarter of the pool (see :func:`budget_note`)."""
    return max(1, min(PER_ERROR_IMAGE * n_error_sample, int(n_pool * POOL_SHARE_CAP) or n_pool))


def budget_note(n_error_sample: int, n_pool: int) -> str:
    """One line saying how the default budget came out, including when the pool cap cut it."""
    budget = default_budget(n_error_sample, n_pool)
    asked = PER_ERROR_IMAGE * n_error_sample
    if budget < asked:
        return (f"budget {budget}: {PER_ERROR_IMAGE} per error image would be {asked}, capped at a quarter of "
                f"the pool ({n_pool} images); give --budget to choose")
    return f"budget {budget}: {PER_ERROR_IMAGE} per error image x {n_error_sample} error images"


def default_k(budget: int, n_error_sample: int) -> int:
    """Enough neighbours per error image to fill the budget after de-duplication (2x headroom)."""
    return max(5, math.ceil(2 * budget / max(1, n_error_sample)))


#: What DCD does with the pool's flagged label issues (SelectionRequest.label_issues).
LABEL_ISSUE_CHOICES = ("auto", "drop", "keep")


def check_label_issues_choice(value: str) -> None:
    """A :class:`ValueError` unless ``value`` is one of :data:`LABEL_ISSUE_CHOICES`."""
    if value not in LABEL_ISSUE_CHOICES:
        raise ValueError(f"label_issues must be one of {LABEL_ISSUE_CHOICES}, got {value!r}")


@dataclass(frozen=True)
class SelectionRequest:
    """What a strategy is asked for. ``budget``: most images (``random``: exactly that many; default
    :func:`default_budget`); ``neighbours``: DCD's search depth per error image (default :func:`default_k`);
    ``embedder_id``: DCD's feature space; ``seed``: ``random``'s draw and a slice target's split;
    ``index_memory_gb``: the pool index's memory budget (default: core.dcd.index_build.default_memory_gb);
    ``from_slice``: ``RUN:RANK``, retrieve for that slice's query part instead of the ``error_sample`` split
    (core.dcd.slice_targets; its held-out part becomes an eval set); ``label_issues``: ``"drop"`` never
    selects pool images flagged as label issues (core.dcd.label_issues, found first if none are stored)
    unless a person kept them, ``"keep"`` does, ``"auto"`` drops them for a slice (which the loop finds by
    itself, labels included) and keeps them for the ``error_sample`` split (:data:`LABEL_ISSUE_CHOICES`)."""

    budget: int | None = None
    neighbours: int | None = None
    embedder_id: str | None = None
    label_policy: LabelPolicy = DEFAULT_LABEL_POLICY
    seed: int = 0
    name: str | None = None
    index_memory_gb: float | None = None
    from_slice: str | None = None
    heldout_share: float = 0.5
    label_issues: str = "auto"

    def __post_init__(self) -> None:
        check_label_issues_choice(self.label_issues)

    def drops_label_issues(self) -> bool:
        return self.label_issues == "drop" or (self.label_issues == "auto" and self.from_slice is not None)

    def target(self, ws: Workspace) -> SliceTarget | None:
        if not self.from_slice:
            return None
        return slice_target(ws, *parse_slice_ref(self.from_slice), seed=self.seed, heldout_share=self.heldout_share)

    # ``target``: the request's slice target when the caller has resolved it already (one lookup per selection)

    def n_error_images(self, ws: Workspace, target: SliceTarget | None = None) -> int:
        target = target or self.target(ws)
        return len(target.query_ids) if target else split_counts(ws)["error_sample"]

    def resolved_budget(self, ws: Workspace, target: SliceTarget | None = None) -> int:
        return self.budget or default_budget(self.n_error_images(ws, target), split_counts(ws)["pool"])

    def recorded(self, ws: Workspace, target: SliceTarget | None = None) -> dict:
        """Params every selection of this request records (the slice it was made for)."""
        target = target or self.target(ws)
        return {"from_slice": target.describe()} if target else {}


def _flagged(ws: Workspace, req: SelectionRequest, progress: Progress | None) -> set[int]:
    if not req.drops_label_issues():
        return set()
    from core.dcd.label_issues import ensure_label_issues
    from core.dcd.label_review import flagged_pool_ids

    ensure_label_issues(ws, seed=req.seed, progress=progress)
    return flagged_pool_ids(ws)


def _dcd(ws: Workspace, req: SelectionRequest, progress: Progress | None) -> Selection:
    target = req.target(ws)
    if target is None and split_counts(ws)["error_sample"] == 0:
        raise ValueError("the workspace has no error_sample split: name the failure as a slice instead "
                         "(--from-slice RUN:RANK, e.g. latest:1 after `python -m jobs.slices`)")
    embedder_id = req.embedder_id or search_embedder(ws, progress=progress)
    if target is not None:
        embed_missing(ws, embedder_id, target.query_ids, progress=progress)
    budget = req.resolved_budget(ws, target)
    k = req.neighbours or default_k(budget, req.n_error_images(ws, target))
    name = req.name or (f"dcd-slice{target.rank}-b{budget}" if target else None)
    exclude = _flagged(ws, req, progress)
    extra = {**req.recorded(ws, target), **({"n_label_issues_left_out": len(exclude)} if exclude else {})}
    return select_dcd(ws, embedder_id=embedder_id, k=k, budget=budget, label_policy=req.label_policy,
                      name=name, source_ids=target.query_ids if target else None,
                      index_memory_gb=req.index_memory_gb, exclude=exclude, extra_params=extra, progress=progress)


def _random(ws: Workspace, req: SelectionRequest, progress: Progress | None) -> Selection:
    target = req.target(ws)
    return select_random(ws, n=req.resolved_budget(ws, target), seed=req.seed, name=req.name,
                         extra_params=req.recorded(ws, target))


def _error_sample_only(ws: Workspace, req: SelectionRequest, progress: Progress | None) -> Selection:
    target = req.target(ws)
    return select_error_sample(ws, name=req.name, source_ids=target.query_ids if target else None,
                               extra_params=req.recorded(ws, target))


STRATEGIES: dict[str, Callable[[Workspace, SelectionRequest, Progress | None], Selection]] = {
    "dcd": _dcd,
    "random": _random,
    "all_pool": lambda ws, req, progress: select_all_pool(ws, name=req.name, extra_params=req.recorded(ws)),
    "error_sample_only": _error_sample_only,
}
METHODS = tuple(STRATEGIES)


def select(ws: Workspace, method: str, request: SelectionRequest = SelectionRequest(), *,
           progress: Progress | None = None) -> Selection:
    """Make and store a selection with one of :data:`METHODS`."""
    if method not in STRATEGIES:
        raise ValueError(f"unknown selection method {method!r}; choose one of {list(METHODS)}")
    return STRATEGIES[method](ws, request, progress)
