"""Benchmark 6: a pool beyond memory: 10M x 384 float32 (15.4 GB raw) under a 2 GB index memory budget.

The pool is generated chunk by chunk (``bench.scale.ClusteredVectors``, each chunk from its own seed, so
every pass yields the same vectors and none holds them all) and fed straight to the project's builder,
``core.dcd.index_build.build_from_chunks`` (no DuckDB at this size); the index is persisted in a workspace
with ``save_index``. Each step is a child process (its own peak RSS, VmHWM):

- ``build``: plan + build under ``--memory-gb``, ``save_index``; build seconds, peak RSS;
- ``truth``: exact top-k of 100 query vectors drawn like error images (the same generator, their own seed),
  by a streaming brute force over the regenerated chunks (``faiss.knn`` per chunk, merged);
- ``select``: a fresh process: ``load_index`` + ``search`` of the 100 queries x 50 neighbours + DCD's merge of the
  neighbours (``merge_candidates``) = the selection time; recall@50 against ``truth``; peak RSS. ``all`` runs it
  twice: first with ``--cold-disk`` (the index's files dropped from the page cache first, as after a reboot:
  every re-ranked candidate is a random read from disk), then as a job run after the embed job finds it (the
  files in the page cache: the selection time the target counts).

    python -m bench.index10m all --work DIR [--n 10000000] [--dim 384] [--memory-gb 2] [--keep]
    python -m bench.index10m build|truth|select --work DIR [same options]

``all`` runs the three children and deletes the workspace (the 15 GB sidecar) unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench.common import GIB, peak_rss_bytes, run_child, wait_for_quiet, write_result

EMBEDDER_ID = "bench-10m:synthetic"
FIRST_ID = 1_000_000  # pool ids start here (not row numbers)
CHUNK = 65_536
SEED = 0
N_QUERIES = 100


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def chunks_of(n: int, dim: int):
    """A re-iterable source of (ids, vectors) chunks: chunk ``c`` is generated from seed (SEED, c)."""
    from bench.scale import ClusteredVectors

    gen = ClusteredVectors(dim, seed=SEED)

    def chunks():
        for c, start in enumerate(range(0, n, CHUNK)):
            m = min(CHUNK, n - start)
            yield (np.arange(FIRST_ID + start, FIRST_ID + start + m, dtype=np.int64),
                   gen.sample(m, np.random.default_rng([SEED, c])))

    return chunks


def queries_of(dim: int) -> np.ndarray:
    """The error-image-like queries: the pool's generator, a seed no chunk uses."""
    from bench.scale import ClusteredVectors

    return ClusteredVectors(dim, seed=SEED).sample(N_QUERIES, np.random.default_rng([SEED, 10 ** 9]))


def _printer():
    """A progress sink printing elapsed time, fraction and message (children's stdout reaches the log)."""
    t0 = time.perf_counter()

    def sink(fraction: float, message: str) -> None:
        print(f"  [{time.perf_counter() - t0:7.1f} s] {fraction:5.1%} {message} (load {_load():.1f})", flush=True)

    return sink


def do_build(work: Path, n: int, dim: int, memory_gb: float) -> dict:
    from core.dcd.index import save_index
    from core.dcd.index_build import build_from_chunks, plan_index
    from core.progress import Progress
    from core.store.workspace import Workspace

    root = work / "ws-index10m"
    shutil.rmtree(root, ignore_errors=True)
    ws = Workspace.create(root)
    plan = plan_index(n, dim, memory_gb)
    print(f"  plan: {plan}", flush=True)
    load0 = _load()
    t = time.perf_counter()
    index, info = build_from_chunks(chunks_of(n, dim), n, dim, embedder_id=EMBEDDER_ID, k=50, memory_gb=memory_gb,
                                    sidecar_dir=ws.artifact_dir("indexes"),
                                    progress=Progress(_printer(), min_interval=15.0))
    build_secs = time.perf_counter() - t
    save_index(ws, index, info)
    secs = time.perf_counter() - t
    files = {p.name: p.stat().st_size for p in ws.artifact_dir("indexes").iterdir()}
    return {"root": str(root), "n": n, "dim": dim, "memory_gb": memory_gb, "plan_kind": plan.kind,
            "plan_resident_bytes": plan.resident_bytes, "seconds": secs, "build_seconds": build_secs,
            "index_type": info.index_type, "nprobe": info.nprobe, "rerank": info.rerank,
            "recall_at_k_tuning": info.recall_at_k, "recall_k": info.recall_k, "files": files,
            "load_average": [load0, _load()]}


def do_truth(work: Path, n: int, dim: int, k: int) -> dict:
    from core.dcd.index_build import TopK

    t, load0 = time.perf_counter(), _load()
    top = TopK(queries_of(dim), k)
    done = 0
    for ids, vecs in chunks_of(n, dim)():
        top.add(ids, vecs)
        done += len(ids)
        if done % (CHUNK * 16) < CHUNK:
            print(f"  [{time.perf_counter() - t:7.1f} s] exact scan {done:,}/{n:,}", flush=True)
    np.save(work / "index10m-truth.npy", top.ids)
    return {"seconds": time.perf_counter() - t, "neighbours": k, "load_average": [load0, _load()]}


def drop_from_page_cache(folder: Path) -> int:
    """Ask the kernel to forget the cached pages of every file under ``folder`` (``POSIX_FADV_DONTNEED``: clean
    pages only, no root needed); the bytes asked for."""
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def do_select(work: Path, dim: int, k: int, cold_disk: bool = False) -> dict:
    import faiss

    from core.dcd.index import load_index, recall_at_k, search
    from core.dcd.retrieval import merge_candidates, pairs_from_search
    from core.store.workspace import Workspace

    queries = queries_of(dim)
    truth = np.load(work / "index10m-truth.npy")
    source_ids = np.arange(N_QUERIES)
    dropped = drop_from_page_cache(work / "ws-index10m" / "artifacts") if cold_disk else 0
    quiet = wait_for_quiet()  # the build and the exact scan before this leave the load average high for a minute
    load0 = _load()
    rss0 = peak_rss_bytes()
    t = time.perf_counter()
    index, info = load_index(Workspace(work / "ws-index10m"), EMBEDDER_ID)
    t_load = time.perf_counter() - t
    dist, ids = search(index, queries, k)
    merged = merge_candidates(pairs_from_search(source_ids, dist, ids), None)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    dist2, ids2 = search(index, queries, k)
    merge_candidates(pairs_from_search(source_ids, dist2, ids2), None)
    warm = time.perf_counter() - t
    return {"cold_seconds": cold, "load_seconds": t_load, "warm_seconds": warm, "n_queries": N_QUERIES, "neighbours": k,
            "n_selected": int(len(merged)), "recall_at_k": recall_at_k(ids, truth),
            "index_type": info.index_type, "nprobe": info.nprobe, "rerank": info.rerank,
            "peak_rss_before_bytes": rss0, "faiss_threads": faiss.omp_get_max_threads(),
            "cold_disk": cold_disk, "dropped_from_page_cache_bytes": dropped, "quiet": quiet,
            "load_average": [load0, _load()]}


def do_all(work: Path, n: int, dim: int, memory_gb: float, k: int, keep: bool) -> dict:
    """The three children in turn, then the big files removed."""
    common = ["--work", str(work), "--n", str(n), "--dim", str(dim), "--memory-gb", str(memory_gb), "--neighbours", str(k)]
    out: dict = {"n": n, "dim": dim, "memory_gb": memory_gb, "raw_vector_bytes": n * dim * 4,
                 "budget_bytes": int(memory_gb * GIB)}
    try:
        for key, step, extra in (("build", "build", []), ("truth", "truth", []),
                                 ("select_cold_disk", "select", ["--cold-disk"]), ("select", "select", [])):
            print(f"-- index10m {key}", flush=True)
            out[key] = run_child("bench.index10m", [step, *common, *extra], timeout=3600)
            print(f"   {json.dumps({k2: v for k2, v in out[key].items() if k2 != 'files'}, default=str)}",
                  flush=True)
    finally:
        if not keep:
            shutil.rmtree(work / "ws-index10m", ignore_errors=True)
            (work / "index10m-truth.npy").unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["all", "build", "truth", "select"])
    p.add_argument("--work", type=Path, default=Path(os.environ.get("DCD_BENCH_WORK", "/tmp/dcd-bench")))
    p.add_argument("--n", type=int, default=10_000_000, help="pool size (e.g. 1000000 while developing)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--memory-gb", type=float, default=2.0)
    p.add_argument("--neighbours", type=int, default=50)
    p.add_argument("--keep", action="store_true", help="keep the workspace and ground truth (all)")
    p.add_argument("--cold-disk", action="store_true",
                   help="select: drop the index's files from the page cache first")
    p.add_argument("--result", default=None)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.what == "all":
        res = do_all(args.work, args.n, args.dim, args.memory_gb, args.neighbours, args.keep)
    elif args.what == "build":
        res = do_build(args.work, args.n, args.dim, args.memory_gb)
    elif args.what == "truth":
        res = do_truth(args.work, args.n, args.dim, args.neighbours)
    else:
        res = do_select(args.work, args.dim, args.neighbours, cold_disk=args.cold_disk)
    write_result(args.result, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
