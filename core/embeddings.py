"""Embedding vectors in the workspace: one table of fixed-size ``FLOAT[d]`` arrays per embedder.

Vectors go in and come out through Arrow, so a million rows move without a Python loop and without an
extra copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from core.workspace import Workspace


class EmbeddingsMissingError(LookupError):
    pass


def embedding_table(ws: Workspace, embedder_id: str) -> tuple[str, int] | None:
    """(table name, dimension) of an embedder's vectors, or None if it has none yet."""
    row = ws.fetchone("SELECT table_name, dim FROM embedding_sets WHERE embedder_id = ?", [embedder_id])
    return (row[0], int(row[1])) if row else None


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


def store_embeddings(ws: Workspace, embedder_id: str, image_ids: np.ndarray, vectors: np.ndarray) -> str:
    """Store vectors for ``image_ids`` (replacing earlier vectors of those images) in one transaction."""
    if len(image_ids) != len(vectors):
        raise ValueError(f"{len(image_ids)} image ids but {len(vectors)} vectors")
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"vectors must be N x D, got shape {vectors.shape}")
    dim = int(vectors.shape[1])
    staging = vectors_to_arrow(image_ids, vectors)
    with ws.write() as con:
        found = con.execute("SELECT table_name, dim FROM embedding_sets WHERE embedder_id = ?",
                            [embedder_id]).fetchall()
        row = found[0] if found else None
        if row and int(row[1]) != dim:
            con.execute(f"DROP TABLE IF EXISTS {row[0]}")
            con.execute("DELETE FROM embedding_sets WHERE embedder_id = ?", [embedder_id])
            row = None
        if row is None:
            n_tables = con.execute("SELECT count(*) FROM embedding_sets").fetchall()[0][0]
            table = f"embeddings_{n_tables + 1}"
            while con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                              [table]).fetchall()[0][0]:
                table += "_"
            con.execute(f"CREATE TABLE {table} (image_id BIGINT PRIMARY KEY, vector FLOAT[{dim}] NOT NULL)")
            con.execute("INSERT INTO embedding_sets (embedder_id, table_name, dim, n) VALUES (?, ?, ?, 0)",
                        [embedder_id, table, dim])
        else:
            table = row[0]
        con.register("staging_vectors", staging)
        con.execute(f"DELETE FROM {table} WHERE image_id IN (SELECT image_id FROM staging_vectors)")
        con.execute(f"INSERT INTO {table} SELECT image_id, vector::FLOAT[{dim}] FROM staging_vectors")
        con.unregister("staging_vectors")
        con.execute(f"UPDATE embedding_sets SET n = (SELECT count(*) FROM {table}), "
                    f"created_at = current_timestamp WHERE embedder_id = ?", [embedder_id])
    return table


def load_embeddings(ws: Workspace, embedder_id: str, *, splits: Sequence[str] | None = None,
                    image_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids, N x D float32 vectors) of an embedder, optionally only some splits or images."""
    found = embedding_table(ws, embedder_id)
    if found is None:
        raise EmbeddingsMissingError(
            f"no embeddings for embedder {embedder_id!r} in {ws.root}; run `python -m jobs.embed "
            f"--workspace {ws.root} --embedder ...` first (known: {list_embedders(ws) or 'none'})")
    table, dim = found
    where, params = [], []
    if splits is not None:
        where.append(f"i.split IN ({', '.join('?' * len(splits))})")
        params += list(splits)
    with ws.read() as con:
        if image_ids is not None:
            con.register("wanted_ids", pa.table({"image_id": pa.array(np.asarray(image_ids, np.int64))}))
            where.append("e.image_id IN (SELECT image_id FROM wanted_ids)")
        sql = (f"SELECT e.image_id, e.vector FROM {table} e JOIN images i USING (image_id) "
               f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY e.image_id")
        tbl = con.sql(sql, params=params).to_arrow_table() if params else con.sql(sql).to_arrow_table()
    ids = tbl.column("image_id").to_numpy()
    vecs = arrow_to_vectors(tbl) if len(ids) else np.zeros((0, dim), np.float32)
    return ids, vecs
