"""The pool index within a memory budget: the planned type per budget, recall against exact search,
persistence through a workspace, chunked builds that never hold the whole pool, and bad budgets."""

from __future__ import annotations

import json
import math
import tracemalloc

import faiss
import numpy as np
import pytest

import core.dcd.index as index_mod
import core.dcd.index_build as build_mod
from core.dcd.index import (
    IndexInfo,
    RerankedIndex,
    build_index,
    exact_search,
    load_index,
    plan_index,
    pool_index,
    recall_at_k,
    search,
)
from core.dcd.index_build import GIB, build_from_chunks, default_memory_gb, index_kind, resolve_memory_gb
from core.dcd.retrieval import select_dcd
from core.store.vectors import store_embeddings
from core.store.workspace import Workspace

N, DIM, K = 20_000, 32, 50
RAW_GB = N * DIM * 4 / GIB


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """One OpenMP thread: on a shared 2-core machine faiss's spinning threads make small builds 10x slower."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


class Mixture:
    """Clustered vectors like embeddings: Gaussian clusters of different spreads, non-negative."""

    def __init__(self, dim: int = DIM, clusters: int = 100, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.centers = rng.normal(0, 1, (clusters, dim)).astype(np.float32)
        self.spread = rng.uniform(0.2, 0.5, clusters).astype(np.float32)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = rng.integers(len(self.centers), size=n)
        x = self.centers[c] + rng.standard_normal((n, self.centers.shape[1]), dtype=np.float32) * self.spread[c, None]
        return np.maximum(x, 0)


@pytest.fixture(scope="module")
def pool():
    mix = Mixture()
    vecs = mix.sample(N, 1)
    ids = np.arange(N, dtype=np.int64) * 3 + 7  # ids are not row numbers
    queries = mix.sample(100, 2)  # like error images: drawn from the same distribution, not in the pool
    _, truth = exact_search(vecs, ids, queries, K)
    return vecs, ids, queries, truth


# budget (GB), exact_max -> the kind planned
CASES = {"Flat": (1.0, build_mod.EXACT_MAX_VECTORS), "IVF-Flat": (1.0, 5_000), "IVF-PQ": (RAW_GB / 2, 5_000)}


@pytest.mark.parametrize("kind", list(CASES))
def test_each_budget_gets_its_index_with_recall_against_exact_search(pool, kind, tmp_path):
    vecs, ids, queries, truth = pool
    memory_gb, exact_max = CASES[kind]
    assert plan_index(N, DIM, memory_gb, exact_max=exact_max).kind == kind
    index, info = build_index(vecs, ids, k=K, memory_gb=memory_gb, exact_max=exact_max, sidecar_dir=tmp_path)
    assert index_kind(info) == kind and info.memory_gb == memory_gb and info.recall_k == K
    assert isinstance(index, RerankedIndex) == (kind == "IVF-PQ")
    assert index.ntotal == N
    dist, found = search(index, queries, K)
    measured = recall_at_k(found, truth)
    assert measured >= 0.9
    assert info.recall_at_k >= 0.9 and abs(info.recall_at_k - measured) < 0.1
    assert set(found[found >= 0].tolist()) <= set(ids.tolist())
    # distances are exact squared L2 to the ids returned, in ascending order
    pos = {int(v): i for i, v in enumerate(ids)}
    want = ((vecs[[pos[int(v)] for v in found[0]]] - queries[0]) ** 2).sum(1)
    np.testing.assert_allclose(dist[0], want, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(dist, axis=1) >= -1e-5)
    if kind == "IVF-PQ":
        assert info.rerank and info.nprobe and info.sidecar and ",PQ" in info.index_type
        assert (tmp_path / f"{info.sidecar}.f32").stat().st_size == vecs.nbytes


def test_a_search_deeper_than_the_pool_pads_like_faiss(pool, tmp_path):
    vecs, ids, queries, _ = pool
    index, _ = build_index(vecs[:3000], ids[:3000], k=10, memory_gb=3000 * DIM * 4 / GIB / 2, exact_max=100,
                           sidecar_dir=tmp_path)
    dist, found = search(index, queries[:3], 4000)
    assert found.shape == (3, 4000) and (found[:, :3000] >= 0).sum() > 0
    assert np.all(found[:, 3000:] == -1) and np.all(dist[:, 3000:] == np.finfo(np.float32).max)
    empty_d, empty_i = search(index, queries[:0], 5)
    assert empty_i.shape == (0, 5)


def test_the_plan_follows_the_budget_arithmetic():
    big = plan_index(10_000_000, 384, 2.0)  # 15.4 GB of raw vectors under 2 GB
    assert big.kind == "IVF-PQ" and big.pq_m == 96 and big.resident_bytes <= big.budget_bytes
    assert big.nlist == build_mod.PQ_NLIST_MAX
    assert plan_index(10_000_000, 384, 32.0).kind == "IVF-Flat"
    assert plan_index(1_000_000, 384, 4.0).kind == "IVF-Flat"  # the 1M benchmark keeps its index
    assert plan_index(100_000, 384, 4.0).kind == "Flat"
    assert plan_index(100_000, 384, 0.1).kind == "IVF-PQ"  # small but over the budget: compressed
    tight = plan_index(10_000_000, 384, 0.5)
    assert tight.kind == "IVF-PQ" and tight.pq_m < 96 and tight.resident_bytes <= tight.budget_bytes
    with pytest.raises(ValueError, match="too small"):
        plan_index(10_000_000, 384, 0.05)
    assert 0 < default_memory_gb() <= build_mod.DEFAULT_MAX_GB
    assert plan_index(1000, 8).budget_bytes == int(default_memory_gb() * GIB)


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan"), float("inf"), "lots"])
def test_a_bad_budget_is_a_clear_error(bad, pool, tmp_path):
    vecs, ids, _, _ = pool
    with pytest.raises(ValueError, match="memory budget"):
        resolve_memory_gb(bad)
    with pytest.raises(ValueError, match="memory budget"):
        build_index(vecs[:100], ids[:100], memory_gb=bad)
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(ValueError, match="memory budget"):
        pool_index(ws, "emb", memory_gb=bad)


def test_a_chunked_build_never_holds_the_whole_pool(monkeypatch, tmp_path):
    """The source's vectors (15 MB) exceed the budget (7.5 MB); numpy never holds half of them at once.

    The working buffers whose size does not grow with the pool (rows added or re-ranked at a time, the
    recall queries) are shrunk to this pool's scale, so that what is measured is what grows with it."""
    n, dim = 60_000, 64
    mix = Mixture(dim, seed=3)
    monkeypatch.setattr(build_mod, "ADD_ROWS", 4096)
    monkeypatch.setattr(build_mod, "RECALL_QUERIES", 50)
    monkeypatch.setattr("core.dcd.ondisk.READ_BLOCK_ROWS", 4096)
    monkeypatch.setattr("core.dcd.ondisk.PAIR_ROWS", 2048)
    calls = []

    def chunks():
        calls.append(0)
        for c, start in enumerate(range(0, n, 2000)):  # deterministic per chunk: re-iterable
            yield np.arange(start, start + 2000, dtype=np.int64), mix.sample(2000, 100 + c)

    raw = n * dim * 4
    memory_gb = raw / 2 / GIB
    tracemalloc.start()
    try:
        index, info = build_from_chunks(chunks, n, dim, k=K, memory_gb=memory_gb, sidecar_dir=tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index_kind(info) == "IVF-PQ" and len(calls) == 1  # one pass over the source; then the sidecar
    assert peak < raw / 2, f"numpy peaked at {peak / raw:.2f}x the pool's vectors"
    queries = mix.sample(50, 999)
    truth = np.full((50, K), -1)
    best = np.full((50, K), np.inf)
    for ids, vecs in chunks():  # exact ground truth, streamed
        d = ((queries[:, None, :] - vecs[None]) ** 2).sum(-1)
        cat_d, cat_i = np.concatenate([best, d], 1), np.concatenate([truth, np.broadcast_to(ids, d.shape)], 1)
        top = np.argsort(cat_d, 1, kind="stable")[:, :K]
        best, truth = np.take_along_axis(cat_d, top, 1), np.take_along_axis(cat_i, top, 1)
    assert recall_at_k(search(index, queries, K)[1], truth) >= 0.9
    with pytest.raises(ValueError, match="announced"):
        build_from_chunks(chunks, n + 10, dim, memory_gb=memory_gb, sidecar_dir=tmp_path / "short")
    assert not list((tmp_path / "short").glob("*.f32"))  # a failed build leaves no partial sidecar


def _workspace(tmp_path, vecs: np.ndarray, queries: np.ndarray) -> Workspace:
    """Pool images 0..n-1 (weak labels alternate) and error-sample images after them, with their vectors."""
    ws = Workspace.create(tmp_path / "ws")
    n, m = len(vecs), len(queries)
    with ws.write() as con:
        con.execute("INSERT INTO classes VALUES (0, 'a'), (1, 'b')")
        con.execute(f"INSERT INTO images (image_id, path, split, label, weak_label) "
                    f"SELECT i, '/img/' || i || '.png', 'pool', NULL, i % 2 FROM range({n}) t(i)")
        con.execute(f"INSERT INTO images (image_id, path, split, label, weak_label) "
                    f"SELECT i, '/img/' || i || '.png', 'error_sample', i % 2, NULL FROM range({n}, {n + m}) t(i)")
    store_embeddings(ws, "emb", np.arange(n + m), np.concatenate([vecs, queries]))
    return ws


def test_a_compressed_pool_index_persists_reloads_and_serves_selections(pool, tmp_path):
    vecs, _, queries, _ = pool
    ws = _workspace(tmp_path, vecs, queries[:10])
    ids = np.arange(N)
    _, truth = exact_search(vecs, ids, queries, K)
    small = RAW_GB / 2
    index, info = pool_index(ws, "emb", memory_gb=small)
    assert index_kind(info) == "IVF-PQ" and info.n == N and info.sidecar
    folder = ws.artifact_dir("indexes")
    assert (folder / f"{info.sidecar}.f32").exists() and (folder / f"{info.sidecar}.ids.npy").exists()
    assert index.stem.parent == folder
    built = search(index, queries, K)

    index_mod._loaded.clear()  # as a fresh process would
    loaded, info2 = load_index(ws, "emb")
    assert isinstance(loaded, RerankedIndex) and info2 == info and loaded.nprobe == info.nprobe
    again = search(loaded, queries, K)
    np.testing.assert_array_equal(again[1], built[1])
    assert recall_at_k(again[1], truth) >= 0.9

    faiss_file = folder / "emb-pool.faiss"
    mtime = faiss_file.stat().st_mtime_ns
    assert pool_index(ws, "emb")[1] == info  # current: reused, whatever the default budget
    assert pool_index(ws, "emb", memory_gb=small)[1] == info
    assert faiss_file.stat().st_mtime_ns == mtime

    sel = select_dcd(ws, embedder_id="emb", neighbours=5, budget=30, label_policy="weak", name="budget-test")
    assert len(sel.items) == 30 and sel.index_info.index_type == info.index_type

    # a budget that holds the raw vectors: rebuilt as an exact index; the sidecar of the old one goes
    _, info3 = pool_index(ws, "emb", memory_gb=1.0)
    assert info3.index_type == "Flat" and not info3.sidecar
    assert not list(folder.glob("*.f32")) and not list(folder.glob("*.ids.npy"))


def test_old_index_metadata_still_loads(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    vecs = Mixture().sample(500, 5)
    index, info = build_index(vecs, np.arange(500), embedder_id="old")
    index_mod.save_index(ws, index, info)
    meta = ws.artifact_dir("indexes") / "old-pool.json"
    old = {k: v for k, v in json.loads(meta.read_text()).items() if k not in ("memory_gb", "rerank", "sidecar")}
    meta.write_text(json.dumps(old))
    _, loaded = load_index(ws, "old")
    assert loaded == IndexInfo(**old) and loaded.sidecar == "" and loaded.memory_gb is None
    assert math.isclose(loaded.recall_at_k, 1.0)
