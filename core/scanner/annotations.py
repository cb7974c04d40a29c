"""Slice annotations and spuriousness propagation (AttributionScanner, phase 2).

A person looks at a slice's mosaic and annotates it with one of ``ANNOTATION_KINDS``: ``core`` (the model
looks at the right thing), ``spurious`` (it relies on a spurious feature), ``mislabeled`` (the slice holds
noisy labels), ``other``; with a free note, the annotator's name and, for mislabeled slices, optionally the
class to relabel to. A slice carries two independent findings: what the model relies on there (``core``,
``spurious`` or ``other``: the latest of these counts) and whether its labels are wrong (``mislabeled``), so
a slice can be spurious *and* mislabeled at once. A slice's **current** annotations are its latest one of
each (:data:`FINDING_OF`); a later ``core`` replaces an earlier ``spurious``, and a ``mislabeled`` finding
stands until its annotation is deleted (:func:`delete_annotation`).

Propagation (:func:`propagation_suggestions`): an unannotated slice whose centroid is among the
``neighbours`` nearest (cosine) of an annotated slice's centroid, with similarity at least
``min_similarity``, is suggested to receive that annotation; the person confirms
(:func:`confirm_suggestion`, which stores an annotation noting its source) or dismisses it
(:func:`dismiss_suggestion`, remembered per run in the ``meta`` table).
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd

from core.constants import ANNOTATION_KINDS
from core.store.workspace import Workspace

#: The finding each annotation kind speaks to: a slice's latest annotation of each finding is current.
FINDING_OF = {"core": "reliance", "spurious": "reliance", "other": "reliance", "mislabeled": "labels"}


def _check_slice(ws: Workspace, run_id: str, slice_id: int) -> None:
    if not ws.scalar("SELECT count(*) FROM slices WHERE run_id = ? AND slice_id = ?", [run_id, int(slice_id)]):
        raise ValueError(f"run {run_id!r} has no slice {slice_id}; see `core.scanner.runs.get_slices`")


def annotate(ws: Workspace, run_id: str, slice_id: int, kind: str, *, note: str | None = None,
             annotator: str | None = None, relabel_to: int | None = None) -> str:
    """Store an annotation of a slice and return its id. ``kind``: one of ``ANNOTATION_KINDS``."""
    if kind not in ANNOTATION_KINDS:
        raise ValueError(f"annotation kind must be one of {list(ANNOTATION_KINDS)}, got {kind!r}")
    if relabel_to is not None and kind != "mislabeled":
        raise ValueError("relabel_to only applies to 'mislabeled' annotations")
    if relabel_to is not None:
        n = int(ws.scalar("SELECT count(*) FROM classes"))
        if not 0 <= int(relabel_to) < n:
            raise ValueError(f"relabel_to must be a class id in 0..{n - 1}, got {relabel_to}")
    _check_slice(ws, run_id, slice_id)
    annotation_id = f"ann-{uuid.uuid4().hex[:10]}"
    with ws.write() as con:
        con.execute("INSERT INTO annotations (annotation_id, run_id, slice_id, kind, note, annotator, relabel_to) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [annotation_id, run_id, int(slice_id), kind, (note or "").strip() or None,
                     (annotator or "").strip() or None, None if relabel_to is None else int(relabel_to)])
    return annotation_id


def delete_annotation(ws: Workspace, annotation_id: str) -> None:
    with ws.write() as con:
        con.execute("DELETE FROM annotations WHERE annotation_id = ?", [annotation_id])


def list_annotations(ws: Workspace, run_id: str | None = None) -> pd.DataFrame:
    """All annotations (of one run, or all), newest first, with the slice's rank."""
    where, params = ("WHERE a.run_id = ?", [run_id]) if run_id else ("", [])
    return ws.df(f"SELECT a.annotation_id, a.run_id, a.slice_id, s.rank, a.kind, a.note, a.annotator, "
                 f"a.relabel_to, a.created_at FROM annotations a LEFT JOIN slices s "
                 f"ON s.run_id = a.run_id AND s.slice_id = a.slice_id {where} "
                 f"ORDER BY a.created_at DESC, a.annotation_id", params)


def current_annotations(ws: Workspace, run_id: str) -> pd.DataFrame:
    """The current annotations of a run, newest first: per annotated slice, its latest annotation of each
    finding (:data:`FINDING_OF`), so a slice annotated spurious and mislabeled has two rows."""
    df = list_annotations(ws, run_id)
    finding = df.kind.map(FINDING_OF).fillna(df.kind)
    return df[~pd.DataFrame({"s": df.slice_id, "f": finding}).duplicated()].reset_index(drop=True)


def annotated_slices(ws: Workspace, run_id: str, kind: str) -> list[int]:
    """Slices with a current annotation ``kind`` (whatever else they carry)."""
    cur = current_annotations(ws, run_id)
    return sorted({int(s) for s in cur.loc[cur.kind == kind, "slice_id"]})


def slice_findings(ws: Workspace, run_id: str) -> dict[int, list[str]]:
    """Each annotated slice's current kinds, newest first: ``{slice_id: ["spurious", "mislabeled"]}``."""
    cur = current_annotations(ws, run_id)
    out: dict[int, list[str]] = {}
    for sid, kind in zip(cur.slice_id.astype(int), cur.kind):
        out.setdefault(sid, []).append(str(kind))
    return out


# -- propagation ----------------------------------------------------------------------------------------

def _dismissed_key(run_id: str) -> str:
    return f"propagation_dismissed:{run_id}"


def dismissed(ws: Workspace, run_id: str) -> set[tuple[int, int]]:
    """(slice_id, source_slice_id) pairs whose suggestion was dismissed."""
    raw = ws.scalar("SELECT value FROM meta WHERE key = ?", [_dismissed_key(run_id)])
    return {(int(a), int(b)) for a, b in json.loads(raw)} if raw else set()


def dismiss_suggestion(ws: Workspace, run_id: str, slice_id: int, source_slice_id: int) -> None:
    pairs = dismissed(ws, run_id) | {(int(slice_id), int(source_slice_id))}
    with ws.write() as con:
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_dismissed_key(run_id), json.dumps(sorted(pairs))])


def propagation_suggestions(ws: Workspace, run_id: str, *, neighbours: int = 2,
                            min_similarity: float = 0.5) -> pd.DataFrame:
    """Unannotated slices close to an annotated one: slice_id, rank, kind, source_slice_id, similarity.

    A slice is suggested when an annotated slice is among its ``neighbours`` nearest slices by centroid
    cosine similarity and the similarity is at least ``min_similarity``; the closest annotated source wins.
    Dismissed suggestions are left out. Sorted by similarity, highest first.
    """
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    cols = ["slice_id", "rank", "kind", "source_slice_id", "source_rank", "similarity"]
    cur = current_annotations(ws, run_id)
    if cur.empty:
        return pd.DataFrame(columns=cols)
    sl = ws.df("SELECT slice_id, rank, centroid FROM slices WHERE run_id = ? ORDER BY slice_id", [run_id])
    c = np.stack([np.asarray(v, np.float32) for v in sl.centroid])
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    sim = c @ c.T
    np.fill_diagonal(sim, -np.inf)
    ids = sl.slice_id.astype(int).to_numpy()
    rank_of = dict(zip(ids, sl["rank"].astype(int)))
    newest = cur.drop_duplicates("slice_id", keep="first")  # a slice's newest finding is what it suggests
    kind_of = dict(zip(newest.slice_id.astype(int), newest.kind))
    gone = dismissed(ws, run_id)
    rows = []
    for i, sid in enumerate(ids):
        if sid in kind_of:
            continue
        order = np.argsort(-sim[i])[:neighbours]
        for j in order:
            src = int(ids[j])
            if src in kind_of and sim[i, j] >= min_similarity and (int(sid), src) not in gone:
                rows.append({"slice_id": int(sid), "rank": rank_of[sid], "kind": kind_of[src],
                             "source_slice_id": src, "source_rank": rank_of[src],
                             "similarity": round(float(sim[i, j]), 4)})
                break
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values("similarity", ascending=False).reset_index(drop=True)


def confirm_suggestion(ws: Workspace, run_id: str, slice_id: int, source_slice_id: int, *,
                       annotator: str | None = None) -> str:
    """Accept a propagation suggestion: annotate ``slice_id`` like ``source_slice_id``, noting the source."""
    cur = current_annotations(ws, run_id)
    src = cur[cur.slice_id == int(source_slice_id)]
    if src.empty:
        raise ValueError(f"slice {source_slice_id} of run {run_id!r} has no annotation to propagate")
    s = src.iloc[0]
    return annotate(ws, run_id, slice_id, str(s.kind), annotator=annotator,
                    note=f"propagated from slice {int(source_slice_id)}",
                    relabel_to=None if pd.isna(s.relabel_to) else int(s.relabel_to))
