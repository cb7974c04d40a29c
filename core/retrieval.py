"""Nearest-neighbour search over pool embeddings with faiss, persisted in the workspace's artifacts.

The index type is chosen from the pool's size: exact ``IndexFlatL2`` up to :data:`EXACT_MAX_VECTORS`,
above that an inverted-file index (IVF, ~4·sqrt(N) lists) whose ``nprobe`` is raised until recall@k
against exact search, measured on a sample of the pool's own vectors, reaches :data:`TARGET_RECALL`.
The measured recall is stored with the index and reported with every selection made from it.
All indexes speak workspace image ids (``IndexIDMap2``), not row numbers.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from core.embeddings import load_embeddings
from core.progress import Progress, as_progress
from core.workspace import Workspace

EXACT_MAX_VECTORS = 200_000
TARGET_RECALL = 0.97
RECALL_QUERIES = 200


@dataclass
class IndexInfo:
    embedder_id: str
    index_type: str
    n: int
    dim: int
    nprobe: int | None
    recall_at_k: float
    recall_k: int
    build_seconds: float
    ids_checksum: str


def _checksum(ids: np.ndarray) -> str:
    return f"{len(ids)}:{int(ids.sum()) if len(ids) else 0}:{int(ids.max()) if len(ids) else 0}"


def exact_search(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 kNN (squared distances, image ids); -1 pads when k exceeds the pool."""
    index = faiss.IndexIDMap2(faiss.IndexFlatL2(vectors.shape[1]))
    index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
    return index.search(np.ascontiguousarray(queries, np.float32), k)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true k nearest neighbours that were found."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum())
                          for f, t in zip(found[:, :k], truth)]))


def build_index(vectors: np.ndarray, ids: np.ndarray, *, embedder_id: str = "", k: int = 50,
                exact_max: int = EXACT_MAX_VECTORS, target_recall: float = TARGET_RECALL,
                seed: int = 0, progress: Progress | None = None) -> tuple[faiss.Index, IndexInfo]:
    """Build the right index for ``vectors`` (N x D float32) keyed by ``ids``."""
    progress = as_progress(progress)
    t0 = time.perf_counter()
    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, np.float32)
    ids = np.asarray(ids, np.int64)
    if n == 0:
        raise ValueError("cannot build an index over an empty pool")
    if n <= exact_max:
        index = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
        index.add_with_ids(vectors, ids)
        info = IndexInfo(embedder_id, "Flat", n, dim, None, 1.0, k, time.perf_counter() - t0, _checksum(ids))
        return index, info

    rng = np.random.default_rng(seed)
    nlist = int(2 ** round(np.log2(4 * np.sqrt(n))))
    progress.report(0.05, f"training IVF{nlist} on {n:,} vectors", force=True)
    quantizer = faiss.IndexFlatL2(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist)
    train_n = min(n, nlist * 64)
    train_rows = np.sort(rng.choice(n, train_n, replace=False))
    ivf.train(vectors[train_rows])
    progress.report(0.5, "adding vectors", force=True)
    index = faiss.IndexIDMap2(ivf)
    step = 100_000
    for start in range(0, n, step):
        index.add_with_ids(vectors[start:start + step], ids[start:start + step])
        progress.report(0.5 + 0.4 * min(1.0, (start + step) / n), "adding vectors")

    # Tune nprobe on queries drawn from the pool, against exact search for those queries.
    q_rows = rng.choice(n, min(RECALL_QUERIES, n), replace=False)
    queries = vectors[q_rows]
    kk = min(k, n)
    _, truth = exact_search_rows(vectors, ids, queries, kk)
    nprobe, recall = 4, 0.0
    while True:
        ivf.nprobe = nprobe
        _, found = index.search(queries, kk)
        recall = recall_at_k(found, truth)
        if recall >= target_recall or nprobe >= nlist // 2:
            break
        nprobe *= 2
    progress.report(1.0, f"IVF{nlist} nprobe={nprobe} recall@{kk}={recall:.3f}", force=True)
    info = IndexInfo(embedder_id, f"IVF{nlist},Flat", n, dim, nprobe, recall, kk,
                     time.perf_counter() - t0, _checksum(ids))
    return index, info


def exact_search_rows(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN without building a second copy of the pool (faiss brute force over the array)."""
    d, rows = faiss.knn(np.ascontiguousarray(queries, np.float32), vectors, k)
    return d, np.where(rows >= 0, ids[np.clip(rows, 0, None)], -1)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def index_paths(ws: Workspace, embedder_id: str) -> tuple[Path, Path]:
    d = ws.artifact_dir("indexes")
    stem = _safe(embedder_id)
    return d / f"{stem}-pool.faiss", d / f"{stem}-pool.json"


def save_index(ws: Workspace, index: faiss.Index, info: IndexInfo) -> Path:
    path, meta = index_paths(ws, info.embedder_id)
    tmp = path.with_suffix(".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)
    meta.write_text(json.dumps(asdict(info), indent=2))
    return path


def load_index(ws: Workspace, embedder_id: str) -> tuple[faiss.Index, IndexInfo] | None:
    """The persisted pool index of an embedder, or None if there is none."""
    path, meta = index_paths(ws, embedder_id)
    if not (path.exists() and meta.exists()):
        return None
    info = IndexInfo(**json.loads(meta.read_text()))
    index = faiss.read_index(str(path))
    if info.nprobe:
        faiss.extract_index_ivf(index).nprobe = info.nprobe
    return index, info


def pool_index(ws: Workspace, embedder_id: str, *, rebuild: bool = False,
               progress: Progress | None = None) -> tuple[faiss.Index, IndexInfo]:
    """The pool index of an embedder: loaded if it matches the stored pool vectors, else (re)built."""
    ids, vectors = load_embeddings(ws, embedder_id, splits=["pool"])
    if len(ids) == 0:
        raise ValueError(f"the pool has no embeddings for {embedder_id!r}; embed the pool first")
    if not rebuild:
        found = load_index(ws, embedder_id)
        if found is not None and found[1].ids_checksum == _checksum(ids) and found[1].dim == vectors.shape[1]:
            return found
    index, info = build_index(vectors, ids, embedder_id=embedder_id, progress=progress)
    del vectors
    save_index(ws, index, info)
    return index, info


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(squared L2 distances, image ids), each len(queries) x k; ids are -1 where the pool ran out."""
    return index.search(np.ascontiguousarray(queries, np.float32), k)
