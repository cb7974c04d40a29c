"""Nearest-neighbour search over pool embeddings with faiss, persisted in the workspace's artifacts.

The index type is chosen from the pool's size and a memory budget (``memory_gb``, default
:func:`core.dcd.index_build.default_memory_gb`: half the RAM, at most 4 GB; see
:func:`core.dcd.index_build.plan_index`): exact ``IndexFlatL2`` up to :data:`EXACT_MAX_VECTORS`; an
inverted-file index (IVF, ~sqrt(N) lists) when the raw vectors fit the budget, whose ``nprobe`` is raised
until recall@k against exact search, measured on a sample of the pool's own vectors, reaches
:data:`TARGET_RECALL`; beyond the budget, compressed codes in RAM (IVF-PQ) re-ranked exactly from the raw
vectors kept on disk next to the index (:class:`core.dcd.ondisk.RerankedIndex`, whose ``search`` and
``ntotal`` behave as a faiss index's). The measured recall is stored with the index and reported with
every selection made from it. All indexes speak workspace image ids, not row numbers.

At scale (1M x 384 float32 is 1.5 GB, 10M is 15 GB): the pool index is built by streaming the vectors from
the workspace (never all of them in RAM: :func:`core.dcd.index_build.build_from_chunks`), whether a
persisted index is current is decided from the pool's ids in SQL, and a persisted IVF-Flat index is
memory-mapped, so a selection reads only the lists it probes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, fields
from pathlib import Path

import faiss
import numpy as np

from core.dcd.index_build import (
    ADD_ROWS,
    EXACT_MAX_VECTORS,
    KMEANS_ITERATIONS,
    RECALL_QUERIES,
    TARGET_RECALL,
    IndexInfo,
    build_from_chunks,
    default_memory_gb,
    index_kind,
    plan_index,
    recall_at_k,
    resolve_memory_gb,
    sidecar_prefix,
)
from core.dcd.index_build import _safe as _safe
from core.dcd.ondisk import RerankedIndex, remove_stale_sidecars
from core.progress import Progress
from core.store.files import atomic_path
from core.store.vectors import iter_embeddings, pool_fingerprint, source_fingerprint
from core.store.workspace import Workspace

__all__ = ["EXACT_MAX_VECTORS", "KMEANS_ITERATIONS", "RECALL_QUERIES", "TARGET_RECALL", "IndexInfo",
           "RerankedIndex", "build_index", "build_pool_index", "default_memory_gb", "exact_search",
           "load_index", "plan_index", "pool_index", "recall_at_k", "save_index", "search"]

PoolIndex = faiss.Index | RerankedIndex


def _checksum(ids: np.ndarray) -> str:
    return f"{len(ids)}:{int(ids.sum()) if len(ids) else 0}:{int(ids.max()) if len(ids) else 0}"


def exact_search(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 kNN (squared distances, image ids); -1 pads when k exceeds the pool."""
    index = faiss.IndexIDMap2(faiss.IndexFlatL2(vectors.shape[1]))
    index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
    return index.search(np.ascontiguousarray(queries, np.float32), k)


def build_index(vectors: np.ndarray, ids: np.ndarray, *, embedder_id: str = "", k: int = 50,
                exact_max: int = EXACT_MAX_VECTORS, target_recall: float = TARGET_RECALL,
                seed: int = 0, memory_gb: float | None = None, sidecar_dir: Path | None = None,
                progress: Progress | None = None) -> tuple[PoolIndex, IndexInfo]:
    """Build the right index for ``vectors`` (N x D float32, in RAM) keyed by ``ids`` (the builder of
    :func:`build_pool_index`, fed from the array chunk by chunk)."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    ids = np.asarray(ids, np.int64)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError("cannot build an index over an empty pool")
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    n, dim = vectors.shape

    def chunks():
        for start in range(0, n, ADD_ROWS):
            yield ids[start:start + ADD_ROWS], vectors[start:start + ADD_ROWS]

    return build_from_chunks(chunks, n, dim, embedder_id=embedder_id, k=k, memory_gb=memory_gb,
                             exact_max=exact_max, target_recall=target_recall, seed=seed,
                             sidecar_dir=sidecar_dir, ids_checksum=_checksum(ids), progress=progress)


def index_paths(ws: Workspace, embedder_id: str) -> tuple[Path, Path]:
    d = ws.artifact_dir("indexes")
    stem = _safe(embedder_id)
    return d / f"{stem}-pool.faiss", d / f"{stem}-pool.json"


def save_index(ws: Workspace, index: PoolIndex, info: IndexInfo) -> Path:
    """Persist a pool index (an IVF-PQ index's raw-vector sidecar is moved next to it) and its info;
    sidecars of earlier builds of the embedder's index are deleted."""
    path, meta = index_paths(ws, info.embedder_id)
    codes = index
    if isinstance(index, RerankedIndex):
        index.move_to(path.parent)
        codes = index.codes
    with atomic_path(path) as tmp:
        faiss.write_index(codes, str(tmp))
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps(asdict(info), indent=2))
    remove_stale_sidecars(path.parent, sidecar_prefix(info.embedder_id), keep=info.sidecar)
    return path


def _info_from_json(text: str) -> IndexInfo:
    """IndexInfo from its JSON (older files lack the newer fields; unknown keys are ignored)."""
    known = {f.name for f in fields(IndexInfo)}
    return IndexInfo(**{k: v for k, v in json.loads(text).items() if k in known})


def load_index(ws: Workspace, embedder_id: str) -> tuple[PoolIndex, IndexInfo] | None:
    """The persisted pool index of an embedder, or None if there is none (or its raw-vector sidecar is
    missing). Search it, do not add to it: IVF lists (raw or compressed) are memory-mapped."""
    path, meta = index_paths(ws, embedder_id)
    if not (path.exists() and meta.exists()):
        return None
    info = _info_from_json(meta.read_text())
    if info.sidecar:
        stem = path.parent / info.sidecar
        if not stem.with_name(stem.name + ".f32").exists():
            return None
        # The codes are memory-mapped too (a 10M pool's are 480 MB): only the probed lists are paged in.
        index = RerankedIndex(faiss.read_index(str(path), faiss.IO_FLAG_MMAP), stem, info.rerank or 1)
        index.nprobe = info.nprobe or 1
        return index, info
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


_loaded: dict[str, tuple[tuple, PoolIndex, IndexInfo]] = {}
_loaded_lock = threading.Lock()


def _load_cached(ws: Workspace, embedder_id: str) -> tuple[PoolIndex, IndexInfo] | None:
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


def pool_index(ws: Workspace, embedder_id: str, *, rebuild: bool = False, progress: Progress | None = None,
               memory_gb: float | None = None) -> tuple[PoolIndex, IndexInfo]:
    """The pool index of an embedder: loaded if it matches the stored pool vectors, else (re)built.

    Whether the persisted index matches is decided from the pool's image ids (count, sum, max) read in
    SQL, without reading the vectors; a build streams the vectors from the workspace
    (:func:`build_pool_index`), so neither path holds the pool's vectors twice. ``memory_gb``: the budget
    to plan the index for (default :func:`default_memory_gb`); given, a persisted index of another kind
    than that budget calls for (:func:`plan_index`) is rebuilt.
    """
    if memory_gb is not None:
        memory_gb = resolve_memory_gb(memory_gb)
    _, dim, source = source_fingerprint(ws, embedder_id, "pool")
    found = None if rebuild else _load_cached(ws, embedder_id)
    if found is not None and memory_gb is not None and \
            index_kind(found[1]) != plan_index(found[1].n, found[1].dim, memory_gb).kind:
        found = None  # planned for another budget
    if found is not None and found[1].dim == dim and found[1].source_checksum == source:
        return found  # neither the embedder's ids nor the pool's changed since the build
    _, dim, stats = pool_fingerprint(ws, embedder_id, splits=["pool"])
    if stats[0] == 0:
        raise ValueError(f"the pool has no embeddings for {embedder_id!r}; embed the pool first")
    if found is not None and found[1].ids_checksum == _stats_checksum(stats) and found[1].dim == dim:
        return found
    index, info = build_pool_index(ws, embedder_id, memory_gb=memory_gb, progress=progress)
    save_index(ws, index, info)
    return index, info


def build_pool_index(ws: Workspace, embedder_id: str, *, k: int = 50, exact_max: int = EXACT_MAX_VECTORS,
                     target_recall: float = TARGET_RECALL, seed: int = 0, memory_gb: float | None = None,
                     progress: Progress | None = None) -> tuple[PoolIndex, IndexInfo]:
    """Build the pool index of an embedder by streaming its vectors from the workspace.

    Same index as :func:`build_index` on the whole array, but peak memory is the index itself plus the
    training sample and one batch (:func:`core.dcd.index_build.build_from_chunks`); an IVF-PQ index
    writes its raw-vector sidecar straight into the workspace's index folder.
    """
    _, _, source = source_fingerprint(ws, embedder_id, "pool")
    _, dim, stats = pool_fingerprint(ws, embedder_id, splits=["pool"])
    if stats[0] == 0:
        raise ValueError("cannot build an index over an empty pool")
    return build_from_chunks(lambda: iter_embeddings(ws, embedder_id, splits=["pool"]), stats[0], dim,
                             embedder_id=embedder_id, k=k, memory_gb=memory_gb, exact_max=exact_max,
                             target_recall=target_recall, seed=seed, sidecar_dir=ws.artifact_dir("indexes"),
                             ids_checksum=_stats_checksum(stats), source_checksum=source, progress=progress)


def search(index: PoolIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(squared L2 distances, image ids), each len(queries) x k; ids are -1 where the pool ran out."""
    return index.search(np.ascontiguousarray(queries, np.float32), k)
