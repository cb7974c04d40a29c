"""Embedding vectors in the workspace: one table of fixed-size ``FLOAT[d]`` arrays per embedder.

Vectors go in and come out through Arrow, so a million rows move without a Python loop and without an
extra copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.store.workspace import Workspace, quote_ident

STORE_MEMORY_LIMIT = "1GB"  # DuckDB's memory cap while storing vectors
SCAN_MEMORY_LIMIT = "256MB"  # and while streaming them out


class EmbeddingsMissingError(LookupError):
    pass


def embedding_table(ws: Workspace, embedder_id: str) -> tuple[str, int] | None:
    """(table name, dimension) of an embedder's vectors, or None if it has none yet."""
    row = ws.fetchone("SELECT table_name, dim FROM embedding_sets WHERE embedder_id = ?", [embedder_id])
    return (quote_ident(row[0]), int(row[1])) if row else None


def list_embedders(ws: Workspace) -> list[str]:
    return ws.df("SELECT embedder_id FROM embedding_sets ORDER BY created_at")["embedder_id"].tolist()


def vectors_to_arrow(image_ids: np.ndarray, vectors: np.ndarray) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.table({
        "image_id": pa.array(np.asarray(image_ids, dtype=np.int64)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    })


def arrow_to_vectors(table: pa.Table, column: str = "vector") -> np.ndarray:
    """An Arrow (fixed-size or variable) list column of equal-length float rows as an N x D array."""
    col = table.column(column).combine_chunks()
    n = len(col)
    flat = col.flatten() if isinstance(col, pa.ListArray) else col.values
    values = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(n, -1) if n else values.reshape(0, 0)


def _store_staged(con, embedder_id: str, dim: int, staging: str) -> str:
    """Insert the rows of the relation ``staging`` (image_id, vector) into the embedder's table."""
    row = con.execute("SELECT table_name, dim FROM embedding_sets WHERE embedder_id = ?",
                      [embedder_id]).fetchone()
    if row and int(row[1]) != dim:
        con.execute(f"DROP TABLE IF EXISTS {quote_ident(row[0])}")
        con.execute("DELETE FROM embedding_sets WHERE embedder_id = ?", [embedder_id])
        row = None
    if row is None:
        n_tables = con.execute("SELECT count(*) FROM embedding_sets").fetchone()[0]
        table = f"embeddings_{n_tables + 1}"
        while con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                          [table]).fetchone()[0]:
            table += "_"
        con.execute(f"CREATE TABLE {quote_ident(table)} (image_id BIGINT PRIMARY KEY, vector FLOAT[{int(dim)}] "
                    f"NOT NULL)")
        con.execute("INSERT INTO embedding_sets (embedder_id, table_name, dim, n) VALUES (?, ?, ?, 0)",
                    [embedder_id, table, dim])
    else:
        table = row[0]
    name, table = table, quote_ident(table)
    if row is not None:
        con.execute(f"DELETE FROM {table} WHERE image_id IN (SELECT image_id FROM {staging})")
    # Embedding floats barely compress (ALP saves ~10-25%) but compressing makes the insert ~2x and every
    # full read of the vectors (index builds) 2-4x slower; this connection closes after this transaction.
    con.execute("SET force_compression = 'uncompressed'")
    # Unlimited, DuckDB keeps ~2.7x the inserted bytes in memory until the commit; a cap makes it write
    # row groups out as it goes (same speed). The primary-key index must fit in it: 1 GB is ~20M rows.
    con.execute(f"SET memory_limit = '{STORE_MEMORY_LIMIT}'")
    con.execute(f"INSERT INTO {table} SELECT image_id, vector::FLOAT[{dim}] FROM {staging}")
    con.execute(f"UPDATE embedding_sets SET n = (SELECT count(*) FROM {table}), "
                f"created_at = current_timestamp WHERE embedder_id = ?", [embedder_id])
    return name


def store_embeddings(ws: Workspace, embedder_id: str, image_ids: np.ndarray, vectors: np.ndarray) -> str:
    """Store vectors for ``image_ids`` (replacing earlier vectors of those images) in one transaction."""
    if len(image_ids) != len(vectors):
        raise ValueError(f"{len(image_ids)} image ids but {len(vectors)} vectors")
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"vectors must be N x D, got shape {vectors.shape}")
    staging = vectors_to_arrow(image_ids, vectors)
    with ws.write() as con:
        con.register("staging_vectors", staging)
        table = _store_staged(con, embedder_id, int(vectors.shape[1]), "staging_vectors")
        con.unregister("staging_vectors")
    return table


def store_embedding_files(ws: Workspace, embedder_id: str, parts: Sequence[str | Path], *, dim: int,
                          also: Callable[[Any], None] | None = None) -> str:
    """Store vectors staged in Parquet files (columns image_id, vector) in one transaction.

    DuckDB reads the files itself, so the vectors never pass through Python memory. ``also(con)`` runs in
    the same transaction (the embed job records its embedder there, so no embedder exists without vectors).
    """
    if not parts:
        raise ValueError("no staged Parquet parts to store")
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    files = [str(Path(p).resolve()) for p in parts]
    with ws.write() as con:
        con.read_parquet(files).create_view("staging_vectors", replace=True)
        table = _store_staged(con, embedder_id, dim, "staging_vectors")
        con.execute("DROP VIEW staging_vectors")
        if also is not None:
            also(con)
    return table


def _relation(con, sql: str, params: list):
    """A relation (its Arrow output is not copied again, unlike a DB-API result's)."""
    return con.sql(sql, params=params) if params else con.sql(sql)


def _table_in(con, ws: Workspace, embedder_id: str) -> tuple[str, int]:
    """(table, dim) of an embedder, looked up on an open connection (saves opening another)."""
    row = con.execute("SELECT table_name, dim FROM embedding_sets WHERE embedder_id = ?", [embedder_id]).fetchall()
    if not row:
        known = [r[0] for r in con.execute("SELECT embedder_id FROM embedding_sets ORDER BY created_at").fetchall()]
        raise EmbeddingsMissingError(
            f"no embeddings for embedder {embedder_id!r} in {ws.root}; run `python -m jobs.embed "
            f"--workspace {ws.root} --embedder ...` first (known: {known or 'none'})")
    return quote_ident(row[0][0]), int(row[0][1])


def _batch_arrays(batch: pa.RecordBatch, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = batch.column(0).to_numpy()
    vecs = arrow_to_vectors(pa.table([batch.column(1)], names=["vector"])) if len(ids) else \
        np.zeros((0, dim), np.float32)
    return ids, vecs


_stats_cache: dict[tuple, tuple[str, int, tuple[int, int, int]]] = {}


def pool_fingerprint(ws: Workspace, embedder_id: str, *, splits: Sequence[str] | None = None
                     ) -> tuple[str, int, tuple[int, int, int]]:
    """(table, dim, (count, sum of image ids, max image id)) of an embedder's vectors in ``splits``, read
    in one connection without reading the vectors: a cheap fingerprint of which images have vectors.
    Remembered in this process until the workspace's files change (``Workspace.data_version``)."""
    key = (str(ws.root), embedder_id, tuple(splits) if splits is not None else None, ws.data_version())
    hit = _stats_cache.get(key)
    if hit is not None:
        return hit
    where, params = "WHERE image_id IN (SELECT image_id FROM images)", []
    if splits is not None:
        where = f"WHERE image_id IN (SELECT image_id FROM images WHERE split IN ({', '.join('?' * len(splits))}))"
        params = list(splits)
    with ws.read() as con:
        table, dim = _table_in(con, ws, embedder_id)
        n, total, top = con.execute(f"SELECT count(*), coalesce(sum(image_id), 0), coalesce(max(image_id), 0) "
                                    f"FROM {table} {where}", params).fetchall()[0]
    out = (table, dim, (int(n), int(total), int(top)))
    _remember(key, out)
    return out


def source_fingerprint(ws: Workspace, embedder_id: str, split: str) -> tuple[str, int, str]:
    """(table, dim, fingerprint) where the fingerprint (count, sum, max of the ids of the embedder's table
    and of the split's images, each aggregated alone: no join, milliseconds at 1M) changes whenever either
    set of ids changes. Equal fingerprints mean the same vectors' ids in that split. Remembered in this
    process until the workspace's files change."""
    key = ("source", str(ws.root), embedder_id, split, ws.data_version())
    hit = _stats_cache.get(key)
    if hit is not None:
        return hit
    with ws.read() as con:
        table, dim = _table_in(con, ws, embedder_id)
        agg = "count(*), coalesce(sum(image_id), 0), coalesce(max(image_id), 0)"
        a = con.execute(f"SELECT {agg} FROM {table}").fetchall()[0]
        b = con.execute(f"SELECT {agg} FROM images WHERE split = ?", [split]).fetchall()[0]
    out = (table, dim, f"{a[0]}:{a[1]}:{a[2]}|{split}:{b[0]}:{b[1]}:{b[2]}")
    _remember(key, out)
    return out


def _remember(key: tuple, value) -> None:
    if len(_stats_cache) > 64:
        _stats_cache.clear()
    _stats_cache[key] = value


def embedding_stats(ws: Workspace, embedder_id: str, *, splits: Sequence[str] | None = None) -> tuple[int, int, int]:
    """(count, sum of image ids, max image id) of an embedder's vectors in ``splits`` (see
    :func:`pool_fingerprint`)."""
    return pool_fingerprint(ws, embedder_id, splits=splits)[2]


def _wanted_ids(con, splits: Sequence[str] | None, image_ids: Sequence[int] | None) -> np.ndarray:
    """Sorted ids of the images asked for (of ``splits``, or all images), intersected with ``image_ids``."""
    if splits is None:
        wanted = con.sql("SELECT image_id FROM images ORDER BY image_id").fetchnumpy()["image_id"]
    else:
        wanted = con.sql(f"SELECT image_id FROM images WHERE split IN ({', '.join('?' * len(splits))}) "
                         f"ORDER BY image_id", params=list(splits)).fetchnumpy()["image_id"]
    wanted = np.asarray(wanted, np.int64)
    if image_ids is not None:
        wanted = np.intersect1d(wanted, np.asarray(image_ids, np.int64))
    return wanted


def _batches(con, table: str, dim: int, wanted: np.ndarray, batch_rows: int, *,
             few: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of ``table`` rows whose id is in sorted ``wanted``, batch by batch.

    Many ids: a plain scan of the table filtered in numpy (a DuckDB join would push every 1.5 kB vector
    through its hash join, several times slower). Few ids: DuckDB looks them up.
    """
    if few:
        con.register("wanted_ids", pa.table({"image_id": pa.array(wanted)}))
        rel = con.sql(f"SELECT image_id, vector FROM {table} WHERE image_id IN (SELECT image_id FROM wanted_ids)")
        for batch in rel.to_arrow_reader(batch_rows):
            yield _batch_arrays(batch, dim)
        con.unregister("wanted_ids")
        return
    for batch in con.sql(f"SELECT image_id, vector FROM {table}").to_arrow_reader(batch_rows):
        ids, vecs = _batch_arrays(batch, dim)
        pos = np.searchsorted(wanted, ids)
        keep = (pos < len(wanted)) & (wanted[np.minimum(pos, len(wanted) - 1)] == ids) if len(wanted) else \
            np.zeros(len(ids), bool)
        if keep.all():
            yield ids, vecs
        elif keep.any():
            yield ids[keep], vecs[keep]


FEW_IDS = 50_000  # below this many wanted ids, DuckDB fetches them; above, a filtered full scan


def iter_embeddings(ws: Workspace, embedder_id: str, *, splits: Sequence[str] | None = None,
                    batch_rows: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (image_ids, vectors) batches of an embedder (in table order, not sorted), holding at most
    one batch in Python memory. A read connection stays open while the stream is consumed."""
    with ws.read() as con:
        table, dim = _table_in(con, ws, embedder_id)
        # A full scan would otherwise leave the whole table in DuckDB's buffer pool (1.5 GB at 1M x 384)
        # beside whatever the caller builds from the stream; this read-only connection closes after.
        con.execute(f"SET memory_limit = '{SCAN_MEMORY_LIMIT}'")
        wanted = _wanted_ids(con, splits, None)
        yield from _batches(con, table, dim, wanted, batch_rows, few=len(wanted) < FEW_IDS)


def load_embeddings(ws: Workspace, embedder_id: str, *, splits: Sequence[str] | None = None,
                    image_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids, N x D float32 vectors) of an embedder, optionally only some splits or images.

    Rows are sorted by image id. The vectors are copied once, from DuckDB's record batches into one
    preallocated array (no Arrow table of the whole result beside it).
    """
    with ws.read() as con:
        table, dim = _table_in(con, ws, embedder_id)
        wanted = _wanted_ids(con, splits, image_ids)
        few = len(wanted) < FEW_IDS
        if few:
            parts = list(_batches(con, table, dim, wanted, 65_536, few=True))
            ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
            vecs = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, dim), np.float32)
        else:
            con.register("wanted_ids", pa.table({"image_id": pa.array(wanted)}))
            n = con.sql(f"SELECT count(*) FROM {table} WHERE image_id IN (SELECT image_id FROM wanted_ids)"
                        ).fetchall()[0][0]
            con.unregister("wanted_ids")
            ids = np.empty(n, np.int64)
            vecs = np.empty((n, dim), np.float32)
            i = 0
            for b_ids, b_vecs in _batches(con, table, dim, wanted, 65_536, few=False):
                m = min(len(b_ids), n - i)
                ids[i:i + m], vecs[i:i + m] = b_ids[:m], b_vecs[:m]
                i += m
            ids, vecs = ids[:i], vecs[:i]
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        order = np.argsort(ids, kind="stable")
        ids, vecs = ids[order], vecs[order]
    return ids, vecs
