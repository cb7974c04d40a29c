"""Nearest-neighbour search over pool embeddings with faiss, persisted in the workspace's artifacts.

The index type is chosen from the pool's size: exact ``IndexFlatL2`` up to :data:`EXACT_MAX_VECTORS`,
above that an inverted-file index (IVF, ~sqrt(N) lists) whose ``nprobe`` is raised until recall@k
against exact search, measured on a sample of the pool's own vectors, reaches :data:`TARGET_RECALL`.
The measured recall is stored with the index and reported with every selection made from it.
All indexes speak workspace image ids (``IndexIDMap2``), not row numbers.

At scale (1M x 384 float32 is 1.5 GB): the pool index is built by streaming the vectors from the workspace
(never a second copy of them), whether a persisted index is current is decided from the pool's ids in
SQL, and a persisted IVF index is memory-mapped, so a selection reads only the lists it probes.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from core.runner.progress import Progress, as_progress
from core.store.files import atomic_path
from core.store.vectors import iter_embeddings, pool_fingerprint, source_fingerprint
from core.store.workspace import Workspace

EXACT_MAX_VECTORS = 200_000
TARGET_RECALL = 0.97
RECALL_QUERIES = 200
KMEANS_ITERATIONS = 10  # coarse k-means: nprobe tuning makes up for a rougher quantizer


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
    source_checksum: str = ""  # core.store.vectors.source_fingerprint at build time: a join-free validity check


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
    nlist = _nlist(n)
    progress.report(0.05, f"training IVF{nlist} on {n:,} vectors", force=True)
    quantizer = faiss.IndexFlatL2(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist)
    ivf.cp.niter = KMEANS_ITERATIONS
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
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    meta.write_text(json.dumps(asdict(info), indent=2))
    return path


def load_index(ws: Workspace, embedder_id: str) -> tuple[faiss.Index, IndexInfo] | None:
    """The persisted pool index of an embedder, or None if there is none (IVF lists memory-mapped:
    search it, do not add to it)."""
    path, meta = index_paths(ws, embedder_id)
    if not (path.exists() and meta.exists()):
        return None
    info = IndexInfo(**json.loads(meta.read_text()))
    # IVF lists are memory-mapped: reading is instant and only the probed lists are ever paged in (an IVF
    # pool index of 1M x 384 is 1.5 GB). The mapping survives save_index replacing the file.
    flags = faiss.IO_FLAG_MMAP if info.index_type.startswith("IVF") else 0
    index = faiss.read_index(str(path), flags)
    if info.nprobe:
        faiss.extract_index_ivf(index).nprobe = info.nprobe
    return index, info


def _stats_checksum(stats: tuple[int, int, int]) -> str:
    n, total, top = stats
    return f"{n}:{total}:{top}"


_loaded: dict[str, tuple[tuple, faiss.Index, IndexInfo]] = {}
_loaded_lock = threading.Lock()


def _load_cached(ws: Workspace, embedder_id: str) -> tuple[faiss.Index, IndexInfo] | None:
    """:func:`load_index`, remembering the last index read in this process (keyed by the file's identity),
    so that repeated calls (a selection asks twice) read a 1.5 GB index once."""
    path, meta = index_paths(ws, embedder_id)
    try:
        st, sm = path.stat(), meta.stat()
    except FileNotFoundError:
        return None
    key = (st.st_mtime_ns, st.st_size, sm.st_mtime_ns)
    with _loaded_lock:
        hit = _loaded.get(str(path))
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
    found = load_index(ws, embedder_id)
    if found is None:
        return None
    with _loaded_lock:
        _loaded.clear()  # keep one index: a process works on one pool at a time
        _loaded[str(path)] = (key, found[0], found[1])
    return found


def pool_index(ws: Workspace, embedder_id: str, *, rebuild: bool = False,
               progress: Progress | None = None) -> tuple[faiss.Index, IndexInfo]:
    """The pool index of an embedder: loaded if it matches the stored pool vectors, else (re)built.

    Whether the persisted index matches is decided from the pool's image ids (count, sum, max) read in
    SQL, without reading the vectors; a build streams the vectors from the workspace
    (:func:`build_pool_index`), so neither path holds the pool's vectors twice.
    """
    _, dim, source = source_fingerprint(ws, embedder_id, "pool")
    found = None if rebuild else _load_cached(ws, embedder_id)
    if found is not None and found[1].dim == dim and found[1].source_checksum == source:
        return found  # neither the embedder's ids nor the pool's changed since the build
    _, dim, stats = pool_fingerprint(ws, embedder_id, splits=["pool"])
    if stats[0] == 0:
        raise ValueError(f"the pool has no embeddings for {embedder_id!r}; embed the pool first")
    if found is not None and found[1].ids_checksum == _stats_checksum(stats) and found[1].dim == dim:
        return found
    index, info = build_pool_index(ws, embedder_id, progress=progress)
    save_index(ws, index, info)
    return index, info


def build_pool_index(ws: Workspace, embedder_id: str, *, k: int = 50, exact_max: int = EXACT_MAX_VECTORS,
                     target_recall: float = TARGET_RECALL, seed: int = 0,
                     progress: Progress | None = None) -> tuple[faiss.Index, IndexInfo]:
    """Build the pool index of an embedder by streaming its vectors from the workspace.

    Same index as :func:`build_index` on the whole array, but peak memory is the index itself plus the
    IVF training sample: pass 1 gathers the training sample and the recall queries, pass 2 adds the
    vectors batch by batch. Ground truth for the recall check is the IVF index scanning all its lists
    (``nprobe = nlist``), which is exact for ``IVFFlat``.
    """
    progress = as_progress(progress)
    t0 = time.perf_counter()
    _, _, source = source_fingerprint(ws, embedder_id, "pool")
    _, dim, stats = pool_fingerprint(ws, embedder_id, splits=["pool"])
    n = stats[0]
    if n == 0:
        raise ValueError("cannot build an index over an empty pool")
    if n <= exact_max:
        index = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
        for ids, vecs in iter_embeddings(ws, embedder_id, splits=["pool"]):
            index.add_with_ids(vecs, ids)
        info = IndexInfo(embedder_id, "Flat", n, dim, None, 1.0, k, time.perf_counter() - t0,
                         _stats_checksum(stats), source)
        return index, info

    rng = np.random.default_rng(seed)
    nlist = _nlist(n)
    train_n = min(n, nlist * 64)
    # Rows are picked by position in the stream; the sample is then put in image-id order so that the
    # result does not depend on the order DuckDB streams rows in.
    train_pos = np.zeros(n, bool)
    train_pos[rng.choice(n, train_n, replace=False)] = True
    query_pos = np.zeros(n, bool)
    query_pos[rng.choice(n, min(RECALL_QUERIES, n), replace=False)] = True
    progress.report(0.02, f"sampling {train_n:,} training vectors", force=True)
    train = np.empty((train_n, dim), np.float32)
    train_ids = np.empty(train_n, np.int64)
    q_parts, q_ids, i, j = [], [], 0, 0
    for ids, vecs in iter_embeddings(ws, embedder_id, splits=["pool"]):
        sel = train_pos[i:i + len(ids)]
        m = int(sel.sum())
        train[j:j + m], train_ids[j:j + m] = vecs[sel], ids[sel]
        j += m
        qs = query_pos[i:i + len(ids)]
        q_parts.append(vecs[qs].copy())
        q_ids.append(ids[qs])
        i += len(ids)
    order = np.argsort(train_ids[:j], kind="stable")
    train = train[:j][order]
    queries = np.concatenate(q_parts)[np.argsort(np.concatenate(q_ids), kind="stable")]
    del train_pos, query_pos, q_parts

    progress.report(0.05, f"training IVF{nlist} on {len(train):,} vectors", force=True)
    quantizer = faiss.IndexFlatL2(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist)
    ivf.cp.niter = KMEANS_ITERATIONS
    ivf.train(train)
    del train
    progress.report(0.5, "adding vectors", force=True)
    index = faiss.IndexIDMap2(ivf)
    done = 0
    for ids, vecs in iter_embeddings(ws, embedder_id, splits=["pool"]):
        index.add_with_ids(vecs, ids)
        done += len(ids)
        progress.report(0.5 + 0.4 * done / n, "adding vectors")
    nprobe, recall, kk = _tune_nprobe(index, ivf, queries, min(k, n), target_recall)
    progress.report(1.0, f"IVF{nlist} nprobe={nprobe} recall@{kk}={recall:.3f}", force=True)
    info = IndexInfo(embedder_id, f"IVF{nlist},Flat", n, dim, nprobe, recall, kk,
                     time.perf_counter() - t0, _stats_checksum(stats), source)
    return index, info


def _nlist(n: int) -> int:
    """~sqrt(N) lists (a power of two): 1,024 for 1M. faiss's usual 4-16·sqrt(N) makes training and adding
    4-16x dearer, which a 2-core machine feels (minutes at 1M), for queries that are already sub-millisecond."""
    return int(2 ** round(np.log2(np.sqrt(n))))


def _tune_nprobe(index: faiss.Index, ivf: faiss.IndexIVF, queries: np.ndarray, k: int,
                 target_recall: float) -> tuple[int, float, int]:
    """Smallest power-of-two nprobe whose recall@k against exact search reaches ``target_recall``
    (exact: the same IVFFlat index scanning every list)."""
    ivf.nprobe = ivf.nlist
    _, truth = index.search(queries, k)
    nprobe, recall = 1, 0.0
    while True:
        ivf.nprobe = nprobe
        _, found = index.search(queries, k)
        recall = recall_at_k(found, truth)
        if recall >= target_recall or nprobe >= ivf.nlist // 2:
            break
        nprobe *= 2
    return nprobe, recall, k


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(squared L2 distances, image ids), each len(queries) x k; ids are -1 where the pool ran out."""
    return index.search(np.ascontiguousarray(queries, np.float32), k)
