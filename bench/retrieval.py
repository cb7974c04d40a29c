"""Benchmark 2: retrieval at 1M x 384 through the project's own code, in child processes (peak RSS).

``build``: ``core.dcd.index.pool_index(rebuild=True)`` on the scale workspace (type chosen by pool size
under the default index memory budget: IVF-Flat at 1M x 384).
``select``: ``core.dcd.retrieval.select_dcd`` for the 100 error-sample images, 50 neighbours each, in a fresh process (the
index is read from disk: cold), then again in the same process (warm, as the app with its cached index);
recall@50 of the same search against exact search (streamed brute force over the stored vectors).

    python -m bench.retrieval build --root DIR
    python -m bench.retrieval select --root DIR [--neighbours 50]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import peak_rss_bytes, write_result
from bench.scale import EMBEDDER_ID


def do_build(root: Path) -> dict:
    from core.dcd.index import pool_index
    from core.store.workspace import Workspace

    ws = Workspace.open(root)
    t = time.perf_counter()
    _, info = pool_index(ws, EMBEDDER_ID, rebuild=True)
    secs = time.perf_counter() - t
    return {"seconds": secs, "index_type": info.index_type, "nprobe": info.nprobe, "n": info.n, "dim": info.dim,
            "recall_at_k_tuning": info.recall_at_k, "recall_k": info.recall_k}


def exact_knn_streamed(ws, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k pool ids of ``queries``, scanning the stored vectors batch by batch."""
    import faiss

    from core.store.vectors import iter_embeddings

    best_d = np.full((len(queries), k), np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for ids, vecs in iter_embeddings(ws, EMBEDDER_ID, splits=["pool"]):
        d, rows = faiss.knn(queries, vecs, min(k, len(ids)))
        cat_d = np.concatenate([best_d, d], 1)
        cat_i = np.concatenate([best_i, ids[rows]], 1)
        top = np.argsort(cat_d, 1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(cat_d, top, 1), np.take_along_axis(cat_i, top, 1)
    return best_i


def do_select(root: Path, k: int) -> dict:
    from core.dcd.index import recall_at_k
    from core.dcd.retrieval import nearest_pairs, select_dcd
    from core.store.vectors import load_embeddings
    from core.store.workspace import Workspace

    ws = Workspace.open(root)
    t = time.perf_counter()
    sel = select_dcd(ws, embedder_id=EMBEDDER_ID, neighbours=k, budget=None, name="bench-select-cold")
    cold = time.perf_counter() - t
    peak_select = peak_rss_bytes()
    t = time.perf_counter()
    select_dcd(ws, embedder_id=EMBEDDER_ID, neighbours=k, budget=None, name="bench-select-warm")
    warm = time.perf_counter() - t
    pairs = nearest_pairs(ws, EMBEDDER_ID, neighbours=k)
    src, queries = load_embeddings(ws, EMBEDDER_ID, splits=["error_sample"])
    found = np.full((len(src), k), -1, np.int64)
    pos = {s: i for i, s in enumerate(src)}
    for s, g in pairs.groupby("source_image_id"):
        found[pos[s], :len(g)] = g.sort_values("neighbour_rank").image_id.to_numpy()
    t = time.perf_counter()
    truth = exact_knn_streamed(ws, queries, k)
    exact_secs = time.perf_counter() - t
    info = sel.index_info
    return {"cold_seconds": cold, "warm_seconds": warm, "n_queries": int(len(src)), "neighbours": k,
            "n_selected": int(len(sel.items)), "recall_at_k": recall_at_k(found, truth),
            "index_type": info.index_type if info else None, "nprobe": info.nprobe if info else None,
            "exact_scan_seconds": exact_secs, "peak_rss_select_bytes": peak_select}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["build", "select"])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--neighbours", type=int, default=50)
    p.add_argument("--result", default=None)
    args = p.parse_args(argv)
    res = do_build(args.root) if args.what == "build" else do_select(args.root, args.neighbours)
    write_result(args.result, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
