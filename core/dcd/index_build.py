"""Building a pool index from a stream of (ids, vectors) chunks, within a memory budget.

:func:`plan_index` chooses the index from the pool's size and the memory budget (``memory_gb``; default
:func:`default_memory_gb`: half the machine's RAM, at most 4 GB):

- ``Flat`` (exact) for pools up to :data:`EXACT_MAX_VECTORS` whose vectors fit the budget;
- ``IVF-Flat`` (~sqrt(N) lists, ``nprobe`` tuned) when the raw vectors fit the budget;
- ``IVF-PQ`` otherwise: 4-bit product-quantised codes in RAM (faiss fast scan, ``dim/4`` sub-quantisers
  or fewer if the budget demands) and the raw vectors on disk (:mod:`core.dcd.ondisk`); each query's
  ``rerank x k`` best candidates by code are re-ranked exactly from disk. (faiss's on-disk inverted lists
  were ruled out: a query would read, and keep resident, ``nprobe`` whole lists of raw vectors.)

"Fit" counts what stays resident: the vectors (or codes) and ids, the id maps, plus a working allowance
(:data:`WORKING_BYTES`: interpreter, libraries, one chunk, the training sample) out of the budget.

:func:`build_from_chunks` never holds all raw vectors at once: ``chunks()`` is called once per pass and
yields (ids int64, vectors float32) chunks; the coarse quantiser (and PQ) train on a sample gathered in a
first pass, then vectors are added chunk by chunk (for IVF-PQ from the sidecar written in the first pass,
while the exact neighbours of the recall queries are found by brute force chunk by chunk). The recall
stored with the index is measured against exact search on :data:`RECALL_QUERIES` of the pool's vectors.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from core.dcd.ondisk import RerankedIndex, SidecarWriter, iter_sidecar
from core.progress import Progress, as_progress

GIB = 1024 ** 3
EXACT_MAX_VECTORS = 200_000
TARGET_RECALL = 0.97
RECALL_QUERIES = 200
KMEANS_ITERATIONS = 10  # coarse k-means: nprobe tuning makes up for a rougher quantizer
DEFAULT_MAX_GB = 4.0
WORKING_BYTES = 640 * 2 ** 20  # held back from the budget (at most a third of it): measured ~0.6 GB at 1M
ID_MAP_BYTES = 64  # per vector: ids in the lists, IndexIDMap2's id vector and reverse map
PQ_NLIST_MAX = 1024  # assigning N vectors to lists costs N x nlist x dim; fast-scan lists are cheap to scan
RERANK_FACTORS = (1, 2, 4, 8, 16, 32)
ADD_ROWS = 65_536

Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


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
    memory_gb: float | None = None  # the budget the index was planned for
    rerank: int | None = None  # IVF-PQ: candidates re-ranked exactly per result wanted (rerank x k)
    sidecar: str = ""  # IVF-PQ: file stem of its raw vectors and ids, next to the index


@dataclass(frozen=True)
class IndexPlan:
    kind: str  # "Flat", "IVF-Flat" or "IVF-PQ"
    n: int
    dim: int
    nlist: int | None
    pq_m: int | None
    budget_bytes: int
    resident_bytes: int  # estimated: the index's data structures plus the working allowance


def index_kind(info: IndexInfo) -> str:
    """The plan kind an index was built as (from its ``index_type``)."""
    if info.index_type == "Flat":
        return "Flat"
    return "IVF-PQ" if ",PQ" in info.index_type else "IVF-Flat"


def default_memory_gb() -> float:
    """Half the machine's RAM, at most :data:`DEFAULT_MAX_GB` (4 GB)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        return DEFAULT_MAX_GB
    return min(DEFAULT_MAX_GB, ram / 2)


def resolve_memory_gb(memory_gb: float | None) -> float:
    """``memory_gb`` checked (a positive finite number of GiB), or the default."""
    if memory_gb is None:
        return default_memory_gb()
    try:
        value = float(memory_gb)
    except (TypeError, ValueError):
        raise ValueError(f"the index memory budget must be a number of GB, not {memory_gb!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"the index memory budget must be a positive number of GB, not {memory_gb!r}")
    return value


def nlist_for(n: int) -> int:
    """~sqrt(N) lists (a power of two): 1,024 for 1M. faiss's usual 4-16·sqrt(N) makes training and adding
    4-16x dearer, which a 2-core machine feels (minutes at 1M), for queries that are already sub-millisecond."""
    return max(1, int(2 ** round(np.log2(np.sqrt(n)))))


def _pq_sizes(dim: int) -> list[int]:
    """Sub-quantiser counts for ``dim`` (divisors, at least 4 dimensions each), most precise first."""
    sizes = [m for m in range(dim // 4, 0, -1) if dim % m == 0]
    return sizes or [1]


def plan_index(n: int, dim: int, memory_gb: float | None = None, *,
               exact_max: int = EXACT_MAX_VECTORS) -> IndexPlan:
    """The index for ``n`` x ``dim`` float32 vectors under ``memory_gb`` (see the module docstring)."""
    if n <= 0 or dim <= 0:
        raise ValueError(f"cannot plan an index over {n} vectors of dimension {dim}")
    budget = int(resolve_memory_gb(memory_gb) * GIB)
    work = min(WORKING_BYTES, budget // 3)
    flat = n * (dim * 4 + ID_MAP_BYTES) + work
    if flat <= budget:
        kind = "Flat" if n <= exact_max else "IVF-Flat"
        return IndexPlan(kind, n, dim, None if kind == "Flat" else nlist_for(n), None, budget, flat)
    for m in _pq_sizes(dim):
        resident = n * ((m + 1) // 2 + 16) + work  # codes, ids in the lists, ids file pages read
        if resident <= budget:
            return IndexPlan("IVF-PQ", n, dim, min(nlist_for(n), PQ_NLIST_MAX), m, budget, resident)
    need = (n * (_pq_sizes(dim)[-1] // 2 + 17) + work) / GIB
    raise ValueError(f"a memory budget of {budget / GIB:.3g} GB is too small for a pool of {n:,} x {dim} "
                     f"vectors: even its most compressed index needs {need:.3g} GB")


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true k nearest neighbours that were found."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum())
                          for f, t in zip(found[:, :k], truth)]))


class TopK:
    """Exact k nearest neighbours of fixed queries, merged chunk by chunk (streamed brute force).

    Distances by one BLAS product per chunk (faiss's own brute force takes its slow non-BLAS path for a
    few hundred queries); the k best of each chunk are merged with the k best so far."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = np.ascontiguousarray(queries, np.float32), k
        self.q_norms = (self.queries.astype(np.float64) ** 2).sum(1).astype(np.float32)
        self.dist = np.full((len(queries), k), np.inf, np.float32)
        self.ids = np.full((len(queries), k), -1, np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        x = np.ascontiguousarray(vectors, np.float32)
        d = self.queries @ x.T
        d *= -2
        d += self.q_norms[:, None]
        d += np.einsum("ij,ij->i", x, x)[None, :]
        kk = min(self.k, len(ids))
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if kk < len(ids) else \
            np.broadcast_to(np.arange(len(ids)), d.shape)
        cat_d = np.concatenate([self.dist, np.maximum(np.take_along_axis(d, part, 1), 0)], 1)
        cat_i = np.concatenate([self.ids, np.asarray(ids, np.int64)[part]], 1)
        top = np.argsort(cat_d, 1, kind="stable")[:, :self.k]
        self.dist, self.ids = np.take_along_axis(cat_d, top, 1), np.take_along_axis(cat_i, top, 1)


@dataclass
class _Sample:
    """The training sample and recall queries gathered in a first pass, and the stream's id checksum."""
    train: np.ndarray
    queries: np.ndarray
    checksum: str


class _Sampler:
    """Gathers the training sample and the recall queries in one pass: rows picked by position in the
    stream, then put in image-id order so that the result does not depend on the order the source
    streams rows in; also the stream's id checksum (count:sum:max)."""

    def __init__(self, n: int, dim: int, train_n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.n, self.i, self.j, self.total, self.top = n, 0, 0, 0, 0
        self.train_pos = np.zeros(n, bool)
        self.train_pos[rng.choice(n, train_n, replace=False)] = True
        self.query_pos = np.zeros(n, bool)
        self.query_pos[rng.choice(n, min(RECALL_QUERIES, n), replace=False)] = True
        self.train = np.empty((train_n, dim), np.float32)
        self.train_ids = np.empty(train_n, np.int64)
        self.queries: list[np.ndarray] = []
        self.query_ids: list[np.ndarray] = []

    def take(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        i, j = self.i, self.j
        if i + len(ids) > self.n:
            raise ValueError(f"the source yielded more than the {self.n:,} vectors announced")
        sel = self.train_pos[i:i + len(ids)]
        m = int(sel.sum())
        self.train[j:j + m], self.train_ids[j:j + m] = vecs[sel], ids[sel]
        qs = self.query_pos[i:i + len(ids)]
        self.queries.append(vecs[qs].copy())
        self.query_ids.append(ids[qs])
        self.i, self.j = i + len(ids), j + m
        if len(ids):
            self.total += int(ids.sum())
            self.top = max(self.top, int(ids.max()))

    def finish(self) -> _Sample:
        """The sample (the sampler lets go of its buffers)."""
        if self.i != self.n:
            raise ValueError(f"the source yielded {self.i:,} vectors, not the {self.n:,} announced")
        train = self.train[np.argsort(self.train_ids, kind="stable")]
        queries = np.concatenate(self.queries)[np.argsort(np.concatenate(self.query_ids), kind="stable")]
        self.train = self.train_ids = self.train_pos = self.query_pos = None
        return _Sample(train, queries, f"{self.n}:{self.total}:{self.top}")


def _chunks_checked(chunks: Chunks, dim: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    for ids, vecs in chunks():
        vecs = np.ascontiguousarray(vecs, np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != dim or len(ids) != len(vecs):
            raise ValueError(f"a chunk of shape {vecs.shape} with {len(ids)} ids does not fit a {dim}-d pool")
        yield np.asarray(ids, np.int64), vecs


def build_from_chunks(chunks: Chunks, n: int, dim: int, *, embedder_id: str = "", k: int = 50,
                      memory_gb: float | None = None, exact_max: int = EXACT_MAX_VECTORS,
                      target_recall: float = TARGET_RECALL, seed: int = 0, sidecar_dir: Path | None = None,
                      ids_checksum: str | None = None, source_checksum: str = "",
                      progress: Progress | None = None) -> tuple[faiss.Index | RerankedIndex, IndexInfo]:
    """Build the planned index (:func:`plan_index`) over the ``n`` x ``dim`` vectors that ``chunks()``
    yields. An IVF-PQ index writes its raw vectors to ``sidecar_dir`` (default: a temporary folder that
    the returned index removes when closed, unless ``save_index`` moved them into a workspace)."""
    progress = as_progress(progress)
    t0 = time.perf_counter()
    budget_gb = resolve_memory_gb(memory_gb)
    plan = plan_index(n, dim, budget_gb, exact_max=exact_max)
    kk = min(k, n)
    if plan.kind == "Flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
        total, top = 0, 0
        for ids, vecs in _chunks_checked(chunks, dim):
            index.add_with_ids(vecs, ids)
            total, top = total + int(ids.sum()), max(top, int(ids.max())) if len(ids) else top
        if index.ntotal != n:
            raise ValueError(f"the source yielded {index.ntotal:,} vectors, not the {n:,} announced")
        info = IndexInfo(embedder_id, "Flat", n, dim, None, 1.0, k, 0.0, ids_checksum or f"{n}:{total}:{top}",
                         source_checksum, budget_gb)
    elif plan.kind == "IVF-Flat":
        index, info = _build_ivf_flat(chunks, plan, kk, target_recall, seed, progress)
    else:
        index, info = _build_ivf_pq(chunks, plan, kk, target_recall, seed, sidecar_dir, embedder_id, progress)
    info.embedder_id, info.memory_gb, info.source_checksum = embedder_id, budget_gb, source_checksum
    if ids_checksum:
        info.ids_checksum = ids_checksum
    info.build_seconds = time.perf_counter() - t0
    return index, info


def _train_n(plan: IndexPlan) -> int:
    """Training sample size: 64 vectors a list, within a quarter of the budget."""
    cap = max(plan.nlist * 39, plan.budget_bytes // 4 // (plan.dim * 4))
    return min(plan.n, plan.nlist * 64, cap)


def _build_ivf_flat(chunks: Chunks, plan: IndexPlan, k: int, target_recall: float, seed: int,
                    progress: Progress) -> tuple[faiss.Index, IndexInfo]:
    """IVF-Flat: pass 1 gathers the training sample and the recall queries, pass 2 adds chunk by chunk.
    Ground truth for the recall check is the index scanning all its lists (exact for IVF-Flat)."""
    n, dim, nlist = plan.n, plan.dim, plan.nlist
    progress.report(0.02, f"sampling {_train_n(plan):,} training vectors", force=True)
    sampler = _Sampler(n, dim, _train_n(plan), seed)
    for ids, vecs in _chunks_checked(chunks, dim):
        sampler.take(ids, vecs)
    sample = sampler.finish()
    progress.report(0.05, f"training IVF{nlist} on {len(sample.train):,} vectors", force=True)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
    ivf.cp.niter = KMEANS_ITERATIONS
    ivf.train(sample.train)
    sample.train = sample.train[:0].copy()  # let go of the sample itself
    progress.report(0.5, "adding vectors", force=True)
    index = faiss.IndexIDMap2(ivf)
    for ids, vecs in _chunks_checked(chunks, dim):
        index.add_with_ids(vecs, ids)
        progress.report(0.5 + 0.4 * index.ntotal / n, "adding vectors")
    if index.ntotal != n:
        raise ValueError(f"the source yielded {index.ntotal:,} vectors, not the {n:,} announced")
    nprobe, recall = _tune_nprobe(index, ivf, sample.queries, k, target_recall)
    progress.report(1.0, f"IVF{nlist} nprobe={nprobe} recall@{k}={recall:.3f}", force=True)
    return index, IndexInfo("", f"IVF{nlist},Flat", n, dim, nprobe, recall, k, 0.0, sample.checksum)


def _tune_nprobe(index: faiss.Index, ivf: faiss.IndexIVF, queries: np.ndarray, k: int,
                 target_recall: float) -> tuple[int, float]:
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
    return nprobe, recall


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def sidecar_prefix(embedder_id: str) -> str:
    """File-name prefix of an embedder's pool sidecars (``<prefix>-<12 hex>``)."""
    return f"{_safe(embedder_id) or 'pool'}-pool"


def _build_ivf_pq(chunks: Chunks, plan: IndexPlan, k: int, target_recall: float, seed: int,
                  sidecar_dir: Path | None, embedder_id: str, progress: Progress) -> tuple[RerankedIndex, IndexInfo]:
    """IVF-PQ + exact re-rank from disk: pass 1 over the source writes the sidecar and gathers the sample,
    then the codes are trained, and vectors are added from the sidecar (sequential reads, one buffer)."""
    n, dim, nlist, m = plan.n, plan.dim, plan.nlist, plan.pq_m
    owned = None
    if sidecar_dir is None:
        sidecar_dir = owned = Path(tempfile.mkdtemp(prefix="dcd-pool-index-"))
    stem = Path(sidecar_dir) / f"{sidecar_prefix(embedder_id)}-{uuid.uuid4().hex[:12]}"
    writer = SidecarWriter(stem, n, dim)
    try:
        progress.report(0.01, f"writing the raw vectors to {stem.name}.f32, sampling", force=True)
        sampler = _Sampler(n, dim, _train_n(plan), seed)
        for ids, vecs in _chunks_checked(chunks, dim):
            writer.append(ids, vecs)
            sampler.take(ids, vecs)
            progress.report(0.01 + 0.3 * writer.rows / n, "writing the raw vectors")
        writer.finish()
        sample = sampler.finish()
        progress.report(0.32, f"training IVF{nlist},PQ{m}x4fs on {len(sample.train):,} vectors", force=True)
        codes = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(dim), dim, nlist, m, 4)
        codes.cp.niter = KMEANS_ITERATIONS
        codes.pq.cp.niter = KMEANS_ITERATIONS
        codes.train(sample.train)
        sample.train = sample.train[:0].copy()  # let go of the sample itself
        truth = TopK(sample.queries, k)
        for vecs in iter_sidecar(stem, dim, min(ADD_ROWS, n)):
            rows = np.arange(codes.ntotal, codes.ntotal + len(vecs), dtype=np.int64)
            truth.add(rows, vecs)
            codes.add(vecs)
            progress.report(0.35 + 0.55 * codes.ntotal / n, "adding codes")
        index = RerankedIndex(codes, stem, RERANK_FACTORS[-1], owned_dir=owned)
    except BaseException:
        writer.abort()
        if owned is not None:
            owned.rmdir()
        raise
    nprobe, rerank = _tune_rerank(codes, sample.queries, truth.ids, k, target_recall)
    index.nprobe, index.rerank = nprobe, rerank
    _, found = index.search(sample.queries, k)
    recall = recall_at_k(found, np.asarray(index.ids[truth.ids]))  # measured through the real search
    progress.report(1.0, f"IVF{nlist},PQ{m} nprobe={nprobe} rerank={rerank} recall@{k}={recall:.3f}", force=True)
    info = IndexInfo("", f"IVF{nlist},PQ{m}x4fs,Rerank", n, dim, nprobe, recall, k, 0.0, sample.checksum,
                     rerank=rerank, sidecar=stem.name)
    return index, info


def _found_share(candidates: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true neighbours (rows) among its candidates (-1 pads ignored)."""
    span = int(max(candidates.max(initial=0), truth.max(initial=0))) + 2
    offset = np.arange(len(truth), dtype=np.int64)[:, None] * span  # one number line per query
    hit = np.isin(truth + offset, (candidates + offset)[candidates >= 0]) & (truth >= 0)
    return float(np.mean(hit.sum(1) / np.maximum(1, (truth >= 0).sum(1))))


def _tune_rerank(codes: faiss.IndexIVF, queries: np.ndarray, truth_rows: np.ndarray, k: int,
                 target_recall: float) -> tuple[int, int]:
    """(nprobe, rerank): the smallest re-rank factor, then the smallest power-of-two nprobe, whose
    recall@k after exact re-ranking reaches ``target_recall`` (re-ranked recall = the share of true
    neighbours among the candidates, so no vector is read); the widest tried if none does."""
    kmax = min(codes.ntotal, k * RERANK_FACTORS[-1])
    best: tuple[int, int] | None = None
    nprobe, last = 1, -1.0
    while True:
        codes.nprobe = nprobe
        _, cand = codes.search(queries, kmax)
        recalls = {f: _found_share(cand[:, :min(kmax, f * k)], truth_rows) for f in RERANK_FACTORS}
        ok = [f for f in RERANK_FACTORS if recalls[f] >= target_recall]
        if ok and (best is None or ok[0] < best[1]):
            best = (nprobe, ok[0])
        widest = recalls[RERANK_FACTORS[-1]]
        saturated = nprobe >= 8 and widest - last < 0.002
        if (best and best[1] == RERANK_FACTORS[0]) or nprobe >= codes.nlist // 2 or saturated:
            break
        last, nprobe = widest, nprobe * 2
    return best or (nprobe, RERANK_FACTORS[-1])
