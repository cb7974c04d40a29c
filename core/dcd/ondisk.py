"""Raw pool vectors kept on disk beside a compressed pool index, and the index that re-ranks from them.

When a pool's raw vectors do not fit the memory budget, only compressed codes stay in RAM (an IVF index
with 4-bit product-quantised codes, faiss "fast scan", over row numbers) and each query's candidates are
re-ranked exactly from the raw vectors in a *sidecar* pair of files next to the index:

- ``<stem>.f32``: the n x dim float32 vectors, row-major, no header, in the order they were added;
- ``<stem>.ids.npy``: the n int64 image ids of those rows (row -> id; id -> row is its argsort).

Memory: the sidecar is written with buffered writes and the re-rank rows are read with ``pread`` into a
fresh array, never through a mapping, so pages of a 15 GB file do not count in the process's resident
set (a read-only mapping gathers 150k rows ~3x faster, but the kernel's fault-around maps 64 kB per
fault: at 10M the selection's peak RSS reached 2.5 GB, against 0.9 GB with ``pread``). Only the ids file
is memory-mapped (8 bytes a row, only the pages of the rows found are read).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

PAD_DISTANCE = np.float32(np.finfo(np.float32).max)  # what faiss returns beside a -1 pad
READ_BLOCK_ROWS = 32_768  # candidate rows read at a time (48 MB at 384-d)
PAIR_ROWS = 16_384  # (query, candidate) pairs scored at a time (25 MB of differences at 384-d)
RESULT_BLOCK_BYTES = 256 * 2 ** 20  # bound on one query block's candidate lists (ids, distances, positions)
WRITE_BUFFER = 2 ** 20  # each of the two files: large enough for sequential writes


def sidecar_paths(stem: Path) -> tuple[Path, Path]:
    """(raw vectors file, ids file) of a sidecar stem."""
    return stem.with_name(stem.name + ".f32"), stem.with_name(stem.name + ".ids.npy")


class SidecarWriter:
    """Appends (ids, vectors) chunks to a sidecar pair with buffered writes, checking the row count."""

    def __init__(self, stem: Path, n: int, dim: int):
        self.stem, self.n, self.dim, self.rows = stem, n, dim, 0
        vec_path, ids_path = sidecar_paths(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        self._vec = open(vec_path, "wb", buffering=WRITE_BUFFER)
        self._ids = open(ids_path, "wb", buffering=WRITE_BUFFER)
        np.lib.format.write_array_header_1_0(self._ids, {"descr": "<i8", "fortran_order": False, "shape": (n,)})

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise ValueError(f"a chunk of shape {vectors.shape} with {len(ids)} ids does not fit a "
                             f"{self.dim}-d pool")
        if self.rows + len(ids) > self.n:
            raise ValueError(f"the source yielded more than the {self.n:,} vectors announced")
        self._vec.write(memoryview(vectors).cast("B"))
        self._ids.write(memoryview(np.ascontiguousarray(ids, "<i8")).cast("B"))
        self.rows += len(ids)

    def finish(self) -> None:
        """Flush and close; raises if fewer rows came than announced."""
        self._vec.close()
        self._ids.close()
        if self.rows != self.n:
            raise ValueError(f"the source yielded {self.rows:,} vectors, not the {self.n:,} announced")

    def abort(self) -> None:
        """Close and delete the partial files."""
        self._vec.close()
        self._ids.close()
        remove_sidecar(self.stem)


def remove_sidecar(stem: Path) -> None:
    for p in sidecar_paths(stem):
        p.unlink(missing_ok=True)


def remove_stale_sidecars(folder: Path, prefix: str, keep: str = "") -> None:
    """Delete the sidecars named ``<prefix>-<12 hex>`` in ``folder`` except ``keep`` (processes that still
    have one open keep reading it: the file lives on until they close it)."""
    pattern = re.compile(rf"({re.escape(prefix)}-[0-9a-f]{{12}})(\.f32|\.ids\.npy)$")
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m and m.group(1) != keep:
            p.unlink(missing_ok=True)


def iter_sidecar(stem: Path, dim: int, rows: int) -> Iterator[np.ndarray]:
    """The sidecar's vectors in order, ``rows`` at a time, read into one reused buffer (do not keep a
    yielded array past the next step)."""
    buf = np.empty((rows, dim), np.float32)
    view = memoryview(buf).cast("B")
    row_bytes = dim * 4
    path = sidecar_paths(stem)[0]
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(view)
            while got and got < len(view):  # a short read: fill the buffer or reach the end
                more = f.readinto(view[got:])
                if not more:
                    break
                got += more
            if got % row_bytes:
                raise ValueError(f"{path} ends mid-row")
            if not got:
                return
            yield buf[: got // row_bytes]


def read_rows(fd: int, rows: np.ndarray, dim: int) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of an open raw-vectors file, by ``pread`` (runs of consecutive rows
    in one call), announced to the kernel first so that cold reads overlap."""
    out = np.empty((len(rows), dim), np.float32)
    if not len(rows):
        return out
    row_bytes = dim * 4
    view = memoryview(out).cast("B")
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks]).tolist()
    ends = np.concatenate([breaks, [len(rows)]]).tolist()
    first = rows[starts].tolist()
    if hasattr(os, "posix_fadvise"):
        for r, a, b in zip(first, starts, ends):
            os.posix_fadvise(fd, r * row_bytes, (b - a) * row_bytes, os.POSIX_FADV_WILLNEED)
    for r, a, b in zip(first, starts, ends):
        want = (b - a) * row_bytes
        got = os.preadv(fd, [view[a * row_bytes:b * row_bytes]], r * row_bytes)
        if got != want:
            raise ValueError(f"short read of the pool's raw vectors at row {r} ({got} of {want} bytes)")
    return out


class RerankedIndex:
    """A compressed IVF index over row numbers whose candidates are re-ranked exactly from the sidecar.

    ``search(queries, k)`` asks the compressed index for ``rerank * k`` candidates per query, reads their
    raw vectors from disk and returns the ``k`` nearest by exact squared L2, as image ids (faiss's
    contract: -1 and ``PAD_DISTANCE`` where the pool ran out). ``ntotal`` and ``nprobe`` as a faiss IVF.
    """

    def __init__(self, codes: faiss.Index, stem: Path, rerank: int, *, owned_dir: Path | None = None):
        if rerank < 1:
            raise ValueError(f"rerank must be at least 1, not {rerank}")
        self.codes, self.stem, self.rerank, self.d = codes, stem, int(rerank), int(codes.d)
        self._owned_dir = owned_dir  # a temporary folder holding the sidecar, removed on close
        self._fd = -1
        vec_path, ids_path = sidecar_paths(stem)
        self.ids = np.load(ids_path, mmap_mode="r")
        self._fd = os.open(vec_path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        if len(self.ids) != codes.ntotal or size != codes.ntotal * self.d * 4:
            self.close()
            raise ValueError(f"the raw vectors beside the index ({vec_path.name}: {size:,} bytes, "
                             f"{len(self.ids):,} ids) do not match its {codes.ntotal:,} x {self.d} codes")

    @property
    def ntotal(self) -> int:
        return int(self.codes.ntotal)

    @property
    def nprobe(self) -> int:
        return int(faiss.extract_index_ivf(self.codes).nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        faiss.extract_index_ivf(self.codes).nprobe = int(value)

    def move_to(self, folder: Path) -> None:
        """Put the sidecar in ``folder`` (a rename; a streamed copy across file systems). The open file
        stays valid either way."""
        if self.stem.parent.resolve() == folder.resolve():
            return
        new = folder / self.stem.name
        for src, dst in zip(sidecar_paths(self.stem), sidecar_paths(new)):
            try:
                os.replace(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        self.stem = new

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared L2 distances, image ids), each len(queries) x k, exact among the candidates."""
        q = np.ascontiguousarray(queries, np.float32).reshape(-1, self.d)
        dist = np.full((len(q), k), PAD_DISTANCE, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        if len(q) == 0 or k <= 0 or self.ntotal == 0:
            return dist, ids
        depth = min(self.ntotal, k * self.rerank)
        block = max(1, RESULT_BLOCK_BYTES // (depth * 48))
        for s in range(0, len(q), block):
            d, rows = self._rerank(q[s:s + block], depth, k)
            keep = rows >= 0
            dist[s:s + len(d), :d.shape[1]] = np.where(keep, d, PAD_DISTANCE)
            ids[s:s + len(d), :d.shape[1]] = np.where(keep, self.ids[np.where(keep, rows, 0)], -1)
        return dist, ids

    def _rerank(self, q: np.ndarray, depth: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact distances of the compressed index's ``depth`` candidates; the ``k`` best (rows)."""
        _, cand = self.codes.search(q, depth)
        flat = cand.reshape(-1)
        valid = np.flatnonzero(flat >= 0)
        uniq = np.unique(flat[valid])
        pos = np.searchsorted(uniq, flat[valid])  # where each valid candidate's row is among those read
        query = valid // depth
        exact = np.full(flat.shape, np.inf, np.float32)
        order = np.argsort(pos, kind="stable")  # candidates grouped by the read block holding their row
        edges = np.searchsorted(pos[order], np.arange(0, len(uniq) + READ_BLOCK_ROWS, READ_BLOCK_ROWS))
        for b, start in enumerate(range(0, len(uniq), READ_BLOCK_ROWS)):
            x = read_rows(self._fd, uniq[start:start + READ_BLOCK_ROWS], self.d)
            mine = order[edges[b]:edges[b + 1]]
            for p in range(0, len(mine), PAIR_ROWS):
                sel = mine[p:p + PAIR_ROWS]
                diff = x[pos[sel] - start]
                diff -= q[query[sel]]
                exact[valid[sel]] = np.einsum("ij,ij->i", diff, diff)
        exact = exact.reshape(cand.shape)
        top = np.argsort(exact, axis=1, kind="stable")[:, :min(k, depth)]
        d = np.take_along_axis(exact, top, 1)
        rows = np.where(np.isfinite(d), np.take_along_axis(cand, top, 1), -1)
        return d, rows

    def close(self) -> None:
        """Close the raw-vectors file (and remove a temporary sidecar folder)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass
