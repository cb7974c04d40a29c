"""A synthetic 1M-image workspace for the scale benchmarks (retrieval, dashboard, memory).

Rows are inserted with SQL (pool paths are fake: nothing decodes them; the error sample and the test
split get small real JPEGs, which the pages show); vectors are clustered like real
embeddings (a mixture of Gaussian clusters on a low-dimensional manifold plus isotropic noise, non-negative
like pooled ReLU features), staged as Parquet parts and stored with the embed job's own
``store_embedding_files``. Predictions, a slice run with members, metrics and a selection make every
dashboard page have something to show.

    python -m bench.scale rows --root DIR [--n-pool 1000000] [--dim 384]   (rows, staged vectors)
    python -m bench.scale store --root DIR [--dim 384]    (store_embedding_files: the embed job's write)
    python -m bench.scale extras --root DIR               (predictions, attributions, slices)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.common import write_result

EMBEDDER_ID = "vit_small_patch16_224:bench-synthetic"
CLASSIFIER_ID = "classifier-bench"
N_CLASSES = 10
N_ERROR = 100
N_SLICES = 20
N_TEST = 10_000
FIRST_POOL = N_ERROR + N_TEST


class ClusteredVectors:
    """Vectors from ``n_clusters`` Gaussian clusters in a ``latent``-dimensional subspace, plus noise."""

    def __init__(self, dim: int, *, n_clusters: int = 2000, latent: int = 48, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.latent = dim, latent
        self.basis = rng.normal(0, 1 / np.sqrt(latent), (latent, dim)).astype(np.float32)
        self.centers = rng.normal(0, 1.0, (n_clusters, latent)).astype(np.float32)
        self.spread = rng.uniform(0.15, 0.45, n_clusters).astype(np.float32)
        self.weights = rng.dirichlet(np.full(n_clusters, 2.0))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        c = rng.choice(len(self.centers), n, p=self.weights)
        z = self.centers[c] + rng.standard_normal((n, self.latent), dtype=np.float32) * self.spread[c, None]
        x = z @ self.basis
        x += rng.standard_normal((n, self.dim), dtype=np.float32) * 0.03
        np.maximum(x, 0, out=x)
        return x


def _write_images(imgdir: Path, seed: int) -> None:
    """Small real JPEGs for the error sample and the test split (the pages show them: thumbnails, mosaics);
    the 1M pool paths stay fake (nothing decodes them here; pages show "image missing")."""
    from PIL import Image

    rng = np.random.default_rng(seed + 3)
    for split, ids in (("error_sample", range(N_ERROR)), ("test", range(N_ERROR, FIRST_POOL))):
        d = imgdir / split
        d.mkdir(parents=True, exist_ok=True)
        for i in ids:
            colour = rng.integers(0, 256, 3)
            img = np.tile(colour.astype(np.uint8), (64, 64, 1))
            y, x = rng.integers(8, 40, 2)
            img[y:y + 16, x:x + 16] = 255 - colour
            Image.fromarray(img).save(d / f"{i}.jpg", quality=85)


def build_rows(root: Path, *, n_pool: int, dim: int, seed: int = 0) -> dict:
    """Step 1: the workspace, its image rows, and the pool's vectors staged as Parquet parts."""
    from core.store.vectors import vectors_to_arrow
    from core.store.workspace import Workspace

    t0 = time.perf_counter()
    ws = Workspace.create(root)
    imgdir = (root / "images").resolve()
    with ws.write() as con:
        con.executemany("INSERT INTO classes VALUES (?, ?)", [(i, f"class_{i}") for i in range(N_CLASSES)])
        # ids: error_sample 0..99, test 100..(100+N_TEST-1), pool after that.
        con.execute(f"""INSERT INTO images (image_id, path, split, label, weak_label, group_name, true_label,
                        width, height, source)
            SELECT i, '{imgdir}/error_sample/' || i || '.jpg', 'error_sample', i % {N_CLASSES}, NULL, 'g' || (i % 4),
                   i % {N_CLASSES}, 224, 224, 'bench' FROM range({N_ERROR}) t(i)""")
        con.execute(f"""INSERT INTO images (image_id, path, split, label, weak_label, group_name, true_label,
                        width, height, source)
            SELECT i, '{imgdir}/test/' || i || '.jpg', 'test', i % {N_CLASSES}, NULL, 'g' || (i % 4), i % {N_CLASSES},
                   224, 224, 'bench' FROM range({N_ERROR}, {FIRST_POOL}) t(i)""")
        con.execute(f"""INSERT INTO images (image_id, path, split, label, weak_label, group_name, true_label,
                        width, height, source)
            SELECT i, 'pool/' || (i // 1000) || '/' || i || '.jpg', 'pool', NULL, hash(i) % {N_CLASSES},
                   'g' || (hash(i * 7) % 4), i % {N_CLASSES}, 500, 375, 'bench'
            FROM range({FIRST_POOL}, {FIRST_POOL + n_pool}) t(i)""")
    _write_images(imgdir, seed)
    t_rows = time.perf_counter()
    gen = ClusteredVectors(dim, seed=seed)
    rng = np.random.default_rng(seed + 1)
    ids = np.concatenate([np.arange(N_ERROR), np.arange(FIRST_POOL, FIRST_POOL + n_pool)]).astype(np.int64)
    parts_dir = root / "staged-parts"
    parts_dir.mkdir(exist_ok=True)
    step = 131_072
    for i, start in enumerate(range(0, len(ids), step)):
        sub = ids[start:start + step]
        pq.write_table(vectors_to_arrow(sub, gen.sample(len(sub), rng)), parts_dir / f"part-{i:05d}.parquet")
    return {"root": str(root), "n_pool": n_pool, "dim": dim, "seconds_rows": t_rows - t0,
            "seconds_generate": time.perf_counter() - t_rows}


def store_parts(root: Path, *, dim: int) -> dict:
    """Step 2: the embed job's write phase at full scale: ``store_embedding_files`` of the staged parts."""
    import shutil

    from core.models.catalog import register_model
    from core.store.vectors import store_embedding_files
    from core.store.workspace import Workspace

    ws = Workspace.open(root)
    parts = sorted((root / "staged-parts").glob("part-*.parquet"))
    register_model(ws, model_id=EMBEDDER_ID, role="embedder", arch="vit_small_patch16_224", embed_dim=dim,
                   config={"weights": None, "hub": False, "synthetic": True})
    t = time.perf_counter()
    store_embedding_files(ws, EMBEDDER_ID, parts, dim=dim)
    secs = time.perf_counter() - t
    shutil.rmtree(root / "staged-parts", ignore_errors=True)
    return {"seconds_store": secs, "n_parts": len(parts)}


def add_extras(root: Path, *, seed: int = 0) -> dict:
    """Step 3: a classifier with predictions on every image, metrics, attributions of the test split and a
    slice run over it (slices are found on train/test/held-out images, never on the pool)."""
    from core.models.catalog import register_model, set_current_classifier
    from core.store.workspace import Workspace

    t0 = time.perf_counter()
    ws = Workspace.open(root)
    register_model(ws, model_id=CLASSIFIER_ID, role="classifier", arch="resnet18", num_classes=N_CLASSES,
                   method="baseline", config={"synthetic": True})
    set_current_classifier(ws, CLASSIFIER_ID)
    with ws.write() as con:
        con.execute(f"""INSERT INTO predictions
            SELECT '{CLASSIFIER_ID}', image_id, p, conf, probs, -ln(conf), p = coalesce(label, true_label)
            FROM (SELECT image_id, label, true_label,
                         CASE WHEN hash(image_id * 3) % 100 < 80 THEN true_label
                              ELSE (hash(image_id) % {N_CLASSES})::INTEGER END AS p,
                         (0.3 + (hash(image_id * 5) % 700) / 1000.0)::FLOAT AS conf,
                         list_transform(range({N_CLASSES}), lambda k: ((hash(image_id + k) % 1000) / 10000.0)::FLOAT)
                             AS probs
                  FROM images)""")
        con.executemany("INSERT INTO metrics (model_id, eval_set, metric, value, n) VALUES (?,?,?,?,?)",
                        [(CLASSIFIER_ID, s, "accuracy", a, n) for s, a, n in
                         [("test", 0.8, N_TEST), ("error_heldout", 0.3, 0), ("error_sample", 0.0, N_ERROR)]])
        con.execute(f"""INSERT INTO attributions
            SELECT '{CLASSIFIER_ID}', image_id, 'gradcam', 7,
                   list_transform(range(49), lambda j: ((hash(image_id + j) % 1000) / 1000.0)::FLOAT),
                   list_transform(range(512), lambda j: (((hash(image_id % 37 + j) % 1000) / 1000.0)
                                                        + ((hash(image_id + j) % 100) / 1000.0))::FLOAT)
            FROM images WHERE split = 'test'""")
        run_id = "slices-bench"
        con.execute("INSERT INTO slice_runs VALUES (?, ?, ?, ?, current_timestamp)",
                    [run_id, CLASSIFIER_ID, N_SLICES, json.dumps({"synthetic": True})])
        srng = np.random.default_rng(seed + 2)
        for s in range(N_SLICES):
            conf = srng.integers(0, 100, (N_CLASSES, N_CLASSES)).tolist()
            con.execute("INSERT INTO slices VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL)",
                        [run_id, s, s, 0, float(srng.uniform(0.3, 0.95)), None, float(srng.uniform(0, 1)),
                         int(s % N_CLASSES), int((s + 1) % N_CLASSES), json.dumps(conf),
                         srng.normal(size=512).astype(np.float32).tolist()])
        con.execute(f"""INSERT INTO slice_members SELECT '{run_id}', (hash(image_id * 11) % {N_SLICES})::INTEGER,
                        image_id, ((hash(image_id) % 1000) / 1000.0)::FLOAT FROM images WHERE split = 'test'""")
        con.execute("""UPDATE slices SET size = m.n, error_rate = 1 - accuracy FROM
                       (SELECT slice_id, count(*) AS n FROM slice_members GROUP BY slice_id) m
                       WHERE slices.slice_id = m.slice_id""")
    return {"seconds_extras": time.perf_counter() - t0, "db_bytes": (root / "workspace.duckdb").stat().st_size,
            "embedder_id": EMBEDDER_ID, "classifier_id": CLASSIFIER_ID}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["rows", "store", "extras"])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--n-pool", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--result", default=None)
    args = p.parse_args(argv)
    if args.step == "rows":
        res = build_rows(args.root, n_pool=args.n_pool, dim=args.dim)
    elif args.step == "store":
        res = store_parts(args.root, dim=args.dim)
    else:
        res = add_extras(args.root)
    write_result(args.result, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
