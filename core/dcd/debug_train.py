"""DCD's debug-train set: the failure's own labelled images plus the pool images retrieval adds, labelled by
what the failure's images taught.

A failure comes with a few images a person labelled (the ``error_sample`` split, or a slice's query part).
Fine-tuning on them alone is the simplest fix, and a hard one to beat: retrieved pool images help only if
they show more of the failure and carry the right label. So :func:`build_debug_train` does three things:

1. **Retrieve what resembles the failure** (:func:`retrieve_resembling`): the failure images' nearest pool
   images in the embedder's space (faiss, merged round-robin as DCD does), searched deeper while the new
   neighbours still resemble the failure, and kept where they do. *Resembling* is judged by a logistic
   classifier of the failure images against a sample of ``train`` (core.dcd.resemblance): a pool image is
   kept where it is more like the failure than like what the classifier already trains on. A filled budget
   is not the goal: at most :func:`core.dcd.strategies.default_budget` images.
2. **Label them with the failure's teacher** (:func:`label_with_teacher`): the classifier fine-tuned on
   train plus the failure's images (the ``error_sample_only`` fix) predicts each candidate; its
   probabilities and the candidate's weak label are combined by the noise posterior (core.dcd.label_noise,
   the noise of the pool's weak labels estimated by EM): ``P(true class | image, weak label)``. A candidate
   is kept, with the most probable class as its label, only where that is at least
   :data:`MIN_LABEL_CONFIDENCE`. Measured on the CIFAR-10 scenario (fog): the weak labels of the
   retrieved images were 82% right, their agreement with the error image's label (``agree``) kept 56% of
   them at 96%, and the teacher's posterior keeps 81% of them at 94%, which fine-tunes as well as their true
   labels do.
3. **Put the failure's own images in** (``kind = "failure"``), with their labels.
4. By default (``rest_of_pool``), **the rest of the pool the teacher labels with confidence** (``kind =
   "rest"``, same rule): not part of the failure, so fine-tuning draws them with train's share of each
   batch, not the debug-train share. They keep what the classifier knows of everything else growing as it
   would on all of the pool, with the teacher's labels instead of the weak ones, so that the fix's test
   accuracy holds beside ``all_pool``'s (measured: docs/results.md).

The loop checks on folds of the failure's images whether the result beats the failure's images alone, and
falls back to them where it does not (core.dcd.fix_choice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from torch import nn

from core.data.model_input import DataConfig
from core.dcd.index import IndexInfo, pool_index, search
from core.dcd.resemblance import resemblance_scores
from core.dcd.retrieval import merge_candidates, pairs_from_search, query_vectors
from core.progress import Progress, as_progress
from core.store.workspace import Workspace

#: A retrieved image is trained with its posterior's most probable class only if that is at least this likely.
MIN_LABEL_CONFIDENCE = 0.9
#: Pool images besides the candidates whose weak labels the EM sees, so that the noise matrix is the pool's.
NOISE_SAMPLE = 2000
#: A deeper search that finds fewer new pool images resembling the failure than this share ends the search.
MIN_NEW_RESEMBLING = 0.1
#: The search depth per failure image to start from.
START_DEPTH = 16


@dataclass
class DebugTrain:
    """A debug-train set: ``items`` (image_id, label, kind, rank, distance, source_image_id, confidence) and
    what was done to make it (``info``: counts at each step, the search depth, the rules)."""

    items: pd.DataFrame
    info: dict = field(default_factory=dict)
    index_info: IndexInfo | None = None  # the pool index searched

    @property
    def n_retrieved(self) -> int:
        return int((self.items.kind == "retrieved").sum())

    @property
    def n_failure(self) -> int:
        return int((self.items.kind == "failure").sum())

    @property
    def n_rest(self) -> int:
        return int((self.items.kind == "rest").sum())


def failure_items(image_ids: Sequence[int], labels: Sequence[int]) -> pd.DataFrame:
    """The failure's own images as debug-train items."""
    ids = np.asarray(image_ids, np.int64)
    return pd.DataFrame({"image_id": ids, "label": np.asarray(labels, np.int64), "kind": "failure",
                         "distance": 0.0, "source_image_id": ids, "confidence": np.nan})


def retrieve_resembling(ws: Workspace, embedder_id: str, failure_ids: Sequence[int], *, budget: int,
                        exclude: set[int] | None = None, seed: int = 0, index_memory_gb: float | None = None,
                        progress: Progress | None = None) -> tuple[pd.DataFrame, dict, IndexInfo]:
    """Pool images near the failure images that resemble the failure (see the module doc): a frame
    (image_id, source_image_id, neighbour_rank, distance, resemblance) in DCD's round-robin order, at most
    ``budget``, what the search did and the index searched. ``exclude``: pool images never to take (flagged
    label issues); ``index_memory_gb``: the index's memory budget if it must be (re)built (core.dcd.index)."""
    progress = as_progress(progress)
    index, index_info = pool_index(ws, embedder_id, memory_gb=index_memory_gb, progress=progress.span(0, 0.2))
    score = resemblance_scores(ws, embedder_id, failure_ids, seed=seed, progress=progress.span(0.2, 0.5))
    src, queries = query_vectors(ws, embedder_id, list(failure_ids))  # embedded by resemblance_scores
    n_pool = int(index.ntotal)
    depth, seen, scored = min(n_pool, START_DEPTH), set(), {}
    while True:
        pairs = pairs_from_search(src, *search(index, queries, depth))
        if exclude:
            pairs = pairs[~pairs.image_id.isin(exclude)].copy()
            pairs["neighbour_rank"] = pairs.groupby("source_image_id").cumcount()
        merged = merge_candidates(pairs, None)
        new = [int(i) for i in merged.image_id if int(i) not in seen]
        scored.update(zip(new, score(new)))
        seen.update(new)
        merged["resemblance"] = merged.image_id.map(scored)
        resembling = merged[merged.resemblance >= 0.5]
        new_share = float(np.mean([scored[i] >= 0.5 for i in new])) if new else 0.0
        if len(resembling) >= budget or depth >= n_pool or new_share < MIN_NEW_RESEMBLING:
            break
        depth = min(n_pool, 2 * depth)
    out = resembling.head(budget).reset_index(drop=True)
    progress.report(1.0, f"{len(out)} pool images resemble the failure", force=True)
    return out, {"depth_searched": depth, "n_neighbours_seen": len(seen), "n_resembling": len(resembling),
                 "last_new_resembling_share": round(new_share, 3), "budget": budget}, index_info


def label_with_teacher(ws: Workspace, teacher: nn.Module, data_config: DataConfig, candidate_ids: Sequence[int],
                       *, whole_pool: bool = False, seed: int = 0, trainable_stages: int | None = None,
                       progress: Progress | None = None) -> pd.DataFrame:
    """image_id, label (the most probable true class), confidence (its posterior) of each candidate (with
    ``whole_pool``, of every weakly labelled pool image): the teacher's probabilities as the prior of its true
    class, its weak label as a noisy copy of it, the noise of the pool's weak labels estimated on the
    candidates and a sample of the pool (or all of it) (core.dcd.label_noise)."""
    from core.dcd.label_noise import estimate_noise
    from core.models.trunk import classifier_probs

    progress = as_progress(progress)
    pool = ws.df("SELECT image_id, path, weak_label FROM images WHERE split = 'pool' AND weak_label IS NOT NULL "
                 "ORDER BY image_id")
    wanted = set(int(i) for i in candidate_ids)
    rng = np.random.default_rng(seed)
    others = pool[~pool.image_id.isin(wanted)]
    n_sample = len(others) if whole_pool else min(NOISE_SAMPLE, len(others))
    sample = others.iloc[np.sort(rng.choice(len(others), n_sample, replace=False))]
    rows = pd.concat([pool[pool.image_id.isin(wanted)], sample], ignore_index=True)
    if rows.empty:
        return pd.DataFrame({"image_id": pd.Series(dtype="int64"), "label": pd.Series(dtype="int64"),
                             "confidence": pd.Series(dtype="float64")})
    probs, _ = classifier_probs(ws, teacher, data_config, rows.image_id.tolist(), rows.path.tolist(),
                                trainable_stages=trainable_stages, progress=progress)
    noise = estimate_noise(rows.weak_label.to_numpy(np.int64), probs, fitted_on="trusted")
    out = pd.DataFrame({"image_id": rows.image_id.to_numpy(np.int64), "label": noise.posterior.argmax(1),
                        "confidence": noise.posterior.max(1)})
    return (out if whole_pool else out[out.image_id.isin(wanted)]).reset_index(drop=True)


def build_debug_train(ws: Workspace, *, embedder_id: str, failure_ids: Sequence[int], failure_labels: Sequence[int],
                      teacher: nn.Module, data_config: DataConfig, budget: int, exclude: set[int] | None = None,
                      rest_of_pool: bool = False, seed: int = 0, index_memory_gb: float | None = None,
                      teacher_trainable_stages: int | None = None, progress: Progress | None = None) -> DebugTrain:
    """The failure's images plus the pool images that resemble them and that the teacher (fine-tuned on train
    plus the failure's images) labels with confidence; with ``rest_of_pool``, also the rest of the pool it
    labels with confidence (kind ``rest``). See the module doc."""
    progress = as_progress(progress)
    found, info, index_info = retrieve_resembling(ws, embedder_id, failure_ids, budget=budget, exclude=exclude,
                                                  seed=seed, index_memory_gb=index_memory_gb,
                                                  progress=progress.span(0, 0.5))
    labelled = label_with_teacher(ws, teacher, data_config, found.image_id.tolist(), whole_pool=rest_of_pool,
                                  seed=seed, trainable_stages=teacher_trainable_stages,
                                  progress=progress.span(0.5, 1.0))
    found = found.merge(labelled, on="image_id", how="inner")
    kept = found[found.confidence >= MIN_LABEL_CONFIDENCE]
    columns = ["image_id", "label", "kind", "distance", "source_image_id", "confidence"]
    retrieved = kept.assign(kind="retrieved")[columns]
    parts = [failure_items(failure_ids, failure_labels), retrieved]
    if rest_of_pool:
        taken = set(found.image_id) | set(int(i) for i in failure_ids) | (exclude or set())
        rest = labelled[~labelled.image_id.isin(taken) & (labelled.confidence >= MIN_LABEL_CONFIDENCE)]
        parts.append(rest.assign(kind="rest", distance=np.nan, source_image_id=pd.NA)[columns])
        info["n_rest"] = len(rest)
    items = pd.concat(parts, ignore_index=True)
    items = items.drop_duplicates("image_id").reset_index(drop=True)
    items["rank"] = np.arange(len(items))
    info.update({"n_failure": len(failure_ids), "n_candidates": len(found), "n_retrieved": len(retrieved),
                 "min_label_confidence": MIN_LABEL_CONFIDENCE,
                 "n_relabelled": int((retrieved.label.to_numpy() != _weak(ws, retrieved.image_id)).sum())})
    return DebugTrain(items, info, index_info)


def _weak(ws: Workspace, image_ids: pd.Series) -> np.ndarray:
    if image_ids.empty:
        return np.zeros(0, np.int64)
    weak = ws.df("SELECT image_id, weak_label FROM images WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                 [[int(i) for i in image_ids]]).set_index("image_id").weak_label
    return weak.reindex(image_ids.to_numpy()).to_numpy()
