"""DCD selection: faiss search against brute-force numpy on the same vectors, merging, baselines."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.dcd.index import build_index, exact_search, pool_index, recall_at_k, search
from core.dcd.retrieval import merge_candidates, nearest_pairs, select_dcd
from core.dcd.selection import selection_items, set_status
from core.dcd.strategies import select_all_pool, select_error_sample, select_random
from core.store.vectors import load_embeddings, store_embeddings
from core.store.workspace import Workspace


def brute_force_knn(pool: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = ((queries[:, None, :] - pool[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), order


def make_workspace(tmp_path, *, n_pool=300, n_err=12, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    ws = Workspace.create(tmp_path / "ws")
    rows = [(i, f"/img/{i}.png", "pool", None, int(rng.integers(2))) for i in range(n_pool)]
    rows += [(n_pool + j, f"/img/e{j}.png", "error_sample", j % 2, None) for j in range(n_err)]
    with ws.write() as con:
        con.execute("INSERT INTO classes VALUES (0, 'a'), (1, 'b')")
        con.executemany("INSERT INTO images (image_id, path, split, label, weak_label) VALUES (?,?,?,?,?)", rows)
    vecs = rng.normal(size=(n_pool + n_err, dim)).astype(np.float32)
    ids = np.arange(n_pool + n_err)
    store_embeddings(ws, "emb", ids, vecs)
    return ws, vecs[:n_pool], vecs[n_pool:]


def test_embeddings_round_trip_as_fixed_size_arrays(tmp_path):
    ws, pool, err = make_workspace(tmp_path)
    ids, vecs = load_embeddings(ws, "emb", splits=["pool"])
    np.testing.assert_array_equal(ids, np.arange(300))
    np.testing.assert_array_equal(vecs, pool)
    dtype = ws.scalar("SELECT data_type FROM information_schema.columns WHERE table_name = "
                      "(SELECT table_name FROM embedding_sets WHERE embedder_id = 'emb') AND column_name = 'vector'")
    assert dtype == "FLOAT[16]"


def test_faiss_neighbours_equal_brute_force_numpy(tmp_path):
    ws, pool, err = make_workspace(tmp_path)
    pairs = nearest_pairs(ws, "emb", neighbours=7)
    d_ref, i_ref = brute_force_knn(pool, err, 7)
    got = pairs.sort_values(["source_image_id", "neighbour_rank"])
    np.testing.assert_array_equal(got.image_id.to_numpy().reshape(12, 7), i_ref)
    np.testing.assert_allclose(got.distance.to_numpy().reshape(12, 7), d_ref, rtol=1e-4, atol=1e-4)


def test_merge_is_round_robin_deduplicated_and_within_budget():
    pairs = pd.DataFrame({
        "source_image_id": [100, 100, 100, 200, 200, 200],
        "image_id":        [1,   2,   3,   2,   4,   5],
        "neighbour_rank":  [0,   1,   2,   0,   1,   2],
        "distance":        [0.1, 0.5, 0.9, 0.2, 0.6, 1.0],
    })
    merged = merge_candidates(pairs, budget=4)
    assert merged.image_id.tolist() == [1, 2, 4, 3]  # every source's nearest first; 2 kept once
    assert merged.loc[merged.image_id == 2, "source_image_id"].item() == 200  # its closest source
    assert merged["rank"].tolist() == [0, 1, 2, 3]
    assert len(merge_candidates(pairs, budget=None)) == 5


def test_select_dcd_stores_items_with_the_chosen_label_policy(tmp_path):
    ws, pool, err = make_workspace(tmp_path)
    weak = select_dcd(ws, embedder_id="emb", neighbours=10, budget=40, label_policy="weak")
    assert len(weak.items) == 40 and weak.items.image_id.is_unique
    items = selection_items(ws, weak.selection_id)
    assert (items.label == items.weak_label).all()
    assert set(items.split) == {"pool"}
    src = select_dcd(ws, embedder_id="emb", neighbours=10, budget=40, label_policy="source")
    items = selection_items(ws, src.selection_id)
    src_labels = ws.df("SELECT image_id AS source_image_id, label AS src_label FROM images")
    merged = items.merge(src_labels, on="source_image_id")
    assert (merged.label == merged.src_label).all()
    with pytest.raises(ValueError, match="label_policy"):
        select_dcd(ws, embedder_id="emb", neighbours=3, budget=5, label_policy="guess")


def test_agree_keeps_only_candidates_whose_weak_label_is_the_error_images_label(tmp_path):
    ws, pool, err = make_workspace(tmp_path)
    # 2 neighbours per error image cannot give 40 agreeing candidates: the search must go deeper to fill the budget
    agree = select_dcd(ws, embedder_id="emb", neighbours=2, budget=40, label_policy="agree")
    items = selection_items(ws, agree.selection_id)
    src_labels = ws.df("SELECT image_id AS source_image_id, label AS src_label FROM images")
    merged = items.merge(src_labels, on="source_image_id")
    assert len(items) == 40 and items.image_id.is_unique
    assert (merged.label == merged.src_label).all() and (merged.label == merged.weak_label).all()
    params = json.loads(ws.scalar("SELECT params FROM selections WHERE selection_id = ?", [agree.selection_id]))
    assert params["neighbours_searched"] in (4, 8)
    # every error image's nearest agreeing neighbour (brute force) is kept: the merge ranks among the kept
    d_ref, i_ref = brute_force_knn(pool, err, 300)
    weak = ws.df("SELECT weak_label FROM images WHERE split = 'pool' ORDER BY image_id").weak_label.to_numpy()
    first = {300 + j: int(i_ref[j][weak[i_ref[j]] == j % 2][0]) for j in range(len(err))}
    kept = set(items.image_id)
    assert all(first[s] in kept for s in first)


def test_baselines_and_status_changes(tmp_path):
    ws, _, _ = make_workspace(tmp_path)
    r1 = select_random(ws, n=25, seed=1)
    r2 = select_random(ws, n=25, seed=1)
    assert r1.items.image_id.tolist() == r2.items.image_id.tolist() and len(r1.items) == 25
    assert len(select_all_pool(ws).items) == 300
    es = select_error_sample(ws)
    assert len(es.items) == 12
    assert set(selection_items(ws, es.selection_id).split) == {"error_sample"}
    changed = set_status(ws, r1.selection_id, r1.items.image_id[:5].tolist(), "rejected")
    assert changed == 5
    assert len(selection_items(ws, r1.selection_id)) == 20
    assert len(selection_items(ws, r1.selection_id, include_rejected=True)) == 25


def test_large_pools_get_an_approximate_index_with_measured_recall():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32)).astype(np.float32) * 4
    vecs = (centers[rng.integers(50, size=6000)] + rng.normal(size=(6000, 32))).astype(np.float32)
    ids = np.arange(6000) + 1000
    index, info = build_index(vecs, ids, k=10, exact_max=5000)
    assert info.index_type.startswith("IVF") and info.nprobe is not None
    queries = vecs[rng.choice(6000, 100, replace=False)] + 0.01
    _, truth = exact_search(vecs, ids, queries, 10)
    _, found = search(index, queries, 10)
    measured = recall_at_k(found, truth)
    assert measured >= 0.9
    assert abs(measured - info.recall_at_k) < 0.1
    small_index, small_info = build_index(vecs[:100], ids[:100], k=10)
    assert small_info.index_type == "Flat" and small_info.recall_at_k == 1.0


def test_pool_index_is_persisted_and_reused(tmp_path):
    ws, _, _ = make_workspace(tmp_path)
    _, info = pool_index(ws, "emb")
    path = ws.artifacts / "indexes" / "emb-pool.faiss"
    assert path.exists()
    mtime = path.stat().st_mtime_ns
    _, info2 = pool_index(ws, "emb")
    assert path.stat().st_mtime_ns == mtime and info2 == info
    store_embeddings(ws, "emb", np.array([0]), np.zeros((1, 16), np.float32))  # same ids: still valid
    pool_index(ws, "emb")
    assert path.stat().st_mtime_ns == mtime
