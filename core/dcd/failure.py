"""A failure: the images that show what the classifier gets wrong, split into DCD's query and held-out parts.

Every fix in DCD Studio is for a **failure**: its **query part** is DCD's ``E_sample`` (retrieval searches the
pool for its neighbours; every debug-train set but ``all_pool`` holds it), its **held-out part** is an eval
set never searched with nor trained on, where each fix is measured. Four kinds, one :class:`Failure`:

- ``error_sample``: the ``error_sample`` split, held out ``error_heldout`` (a curated sample, given at ingest);
- ``slice``: a slice ``RUN:RANK`` found by AttributionScanner, its misclassified members split
  (core.dcd.slice_targets; stored in ``slice_targets``, eval set ``slice:RUN:RANK``);
- ``cell``: a confusion cell of a classifier on evaluation splits (``test``, ``error_heldout``; never
  ``train``, which it fit, nor the pool, which DCD draws from): the images labelled ``true`` it predicts as
  ``pred``, e.g. waterbirds taken for landbirds on test;
- ``picked``: images a person picked (labelled, not pool);
- ``uploaded``: image files a person uploaded with the label they should have (core.data.uploads), ingested
  as the ``uploaded`` split: all of them in the query part, **no held-out part** (a few photos of a failure
  seen elsewhere are too few to split), so its fixes are measured on test only, and its name says so.

The last three are stored in ``failures`` and ``failure_members`` (schema 6; ``uploaded`` since 7), a cell's
and picked images split exactly as a slice's failures are (:func:`core.dcd.slice_targets.split_members`),
the held-out part the eval set ``failure:<id>``. New tables rather than the slice target tables generalized: a slice target is keyed by
its run and slice (a unique constraint DuckDB cannot drop in place), and old workspaces upgrade by adding
tables, no row rewritten. A failure is made once per source (a cell of a classifier on its splits, a set of
picked images) and reused, so DCD and its baselines are measured on the same images; asking for the same
source with another seed or held-out share is refused, as for a slice: its held-out part is what earlier
models were measured on.

A **failure reference** a user types: ``error_sample``, a slice ``RUN:RANK`` (``latest:1``), or a stored
failure's id (``f1``, printed when it is made)::

    f = failure_from_cell(ws, model_id, "waterbird", "landbird")
    f.query_ids, f.heldout_ids, f.eval_set            # get_failure(ws, f.failure_id) reads it back
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.dcd.slice_targets import (
    DEFAULT_HELDOUT_SHARE,
    SliceRefError,
    SliceTarget,
    parse_slice_ref,
    slice_target,
    split_members,
    write_parts,
)
from core.progress import Progress
from core.store.workspace import Workspace

KINDS = ("error_sample", "slice", "cell", "picked", "uploaded")
EVAL_SET_PREFIX = "failure:"
#: The splits a confusion cell may be read on: the classifier never trained on them, and they are not the pool.
CELL_SPLITS = ("test", "error_heldout")
ERROR_SAMPLE = "error_sample"
#: What an uploaded failure's name says: it has no held-out part.
NO_HELDOUT = "no held-out part: measured on test only"


class FailureRefError(ValueError):
    """A failure reference that names no failure of the workspace."""


@dataclass(frozen=True)
class Failure:
    failure_id: str  # "error_sample", "<run_id>:<rank>" for a slice, "f<n>" for a stored cell, picked or uploaded
    kind: str  # one of KINDS
    name: str  # human: "waterbird taken for landbird on test (by <model>)", "12 picked images"
    # the held-out part is empty for uploaded images (no eval set: measured on test only)
    query_ids: tuple[int, ...]
    heldout_ids: tuple[int, ...]
    eval_set: str  # the held-out part's eval set in metrics: error_heldout, slice:RUN:RANK, failure:<id>
    seed: int | None = None
    heldout_share: float | None = None
    source: dict = field(default_factory=dict)  # where it came from: the slice, the cell, the picked ids

    def describe(self) -> dict:
        """What a selection made for this failure records under ``params["failure"]`` (a slice's also under
        ``params["from_slice"]``, as before failures had kinds)."""
        return {"failure_id": self.failure_id, "kind": self.kind, "name": self.name, "n_query": len(self.query_ids),
                "n_heldout": len(self.heldout_ids), "eval_set": self.eval_set if self.heldout_ids else None,
                "measured_on": self.measured_on, "seed": self.seed, "heldout_share": self.heldout_share, **self.source}

    @property
    def measured_on(self) -> str:
        """Where its fixes are measured: "its held-out part (eval set failure:f1)", or test only."""
        return f"its held-out part (eval set {self.eval_set})" if self.heldout_ids else f"test only ({NO_HELDOUT})"


def from_slice_target(target: SliceTarget) -> Failure:
    """A slice target as a failure (its describe() holds the slice target's fields)."""
    return Failure(target.target_id, "slice", f"slice {target.rank} of {target.run_id}", target.query_ids,
                   target.heldout_ids, target.eval_set, target.seed, target.heldout_share,
                   {"target_id": target.target_id, "run_id": target.run_id, "slice_id": target.slice_id,
                    "rank": target.rank})


def error_sample_failure(ws: Workspace) -> Failure:
    """The ``error_sample`` split as a failure, held out ``error_heldout``."""
    df = ws.df("SELECT image_id, split FROM images WHERE split IN ('error_sample', 'error_heldout') ORDER BY image_id")
    query = tuple(int(i) for i in df.image_id[df.split == "error_sample"])
    if not query:
        raise FailureRefError("the workspace has no error_sample split; name a slice (RUN:RANK, e.g. latest:1 "
                              "after `python -m jobs.slices`) or make a failure with `python -m jobs.failure`")
    return Failure(ERROR_SAMPLE, ERROR_SAMPLE, "the error_sample split", query,
                   tuple(int(i) for i in df.image_id[df.split == "error_heldout"]), "error_heldout")


def class_index(ws: Workspace, value: str | int) -> int:
    """A class given by name or index -> its index, or a ValueError listing the classes."""
    names = ws.class_names()
    text = str(value).strip()
    if text in names:
        return names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return int(text)
    raise ValueError(f"no class {value!r}; the classes are {', '.join(names)} (by name, or index 0 to "
                     f"{len(names) - 1})")


def _source_key(source: dict) -> str:
    return hashlib.sha1(json.dumps(source, sort_keys=True).encode()).hexdigest()


def _stored(ws: Workspace, where: str, params: list) -> Failure | None:
    row = ws.df(f"SELECT * FROM failures WHERE {where}", params)
    if row.empty:
        return None
    r = row.iloc[0]
    parts = ws.df("SELECT image_id, part FROM failure_members WHERE failure_id = ? ORDER BY image_id",
                  [r.failure_id])
    return Failure(str(r.failure_id), str(r.kind), str(r["name"]),
                   tuple(int(i) for i in parts.image_id[parts.part == "query"]),
                   tuple(int(i) for i in parts.image_id[parts.part == "heldout"]),
                   EVAL_SET_PREFIX + str(r.failure_id), int(r.seed), float(r.heldout_share), json.loads(r.source))


def _store(ws: Workspace, kind: str, name: str, source: dict, image_ids: np.ndarray, *, seed: int,
           heldout_share: float) -> Failure:
    """The failure of ``source`` (made and stored with its eval set the first time, reused after); a
    ``heldout_share`` of 0: every image in the query part (uploaded images)."""
    key = _source_key(source)
    found = _stored(ws, "source_key = ?", [key])
    if found is not None:
        if (found.seed, round(found.heldout_share or 0, 6)) != (seed, round(heldout_share, 6)):
            raise ValueError(f"failure {found.failure_id} ({found.name}) already has a query/held-out split (seed "
                             f"{found.seed}, held-out share {found.heldout_share:g}) that earlier models were "
                             f"measured on; use those settings, or --failure {found.failure_id}")
        return found
    if heldout_share == 0:
        if not len(image_ids):
            raise ValueError(f"{name}: no image to search with")
        query, heldout = np.sort(np.asarray(image_ids, np.int64)), np.zeros(0, np.int64)
    elif len(image_ids) < 2:
        raise ValueError(f"{name}: {len(image_ids)} image(s); a failure needs at least 2 (one to search with, "
                         f"one to measure on)")
    else:
        query, heldout = split_members(image_ids, heldout_share=heldout_share, seed=seed)
    n = int(ws.scalar("SELECT count(*) FROM failures") or 0) + 1
    while _stored(ws, "failure_id = ?", [f"f{n}"]) is not None:
        n += 1
    failure_id = f"f{n}"
    with ws.write() as con:
        con.execute("INSERT INTO failures (failure_id, kind, name, source, source_key, seed, heldout_share) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", [failure_id, kind, name, json.dumps(source), key, seed,
                                                     heldout_share])
        write_parts(con, "failure_members", failure_id, query, heldout, EVAL_SET_PREFIX + failure_id,
                    f"held-out part of failure {failure_id}: {name}")
    return _stored(ws, "failure_id = ?", [failure_id])  # type: ignore[return-value]


def failure_from_cell(ws: Workspace, model_id: str | None, true_class: str | int, pred_class: str | int, *,
                      splits: Sequence[str] = ("test",), seed: int = 0,
                      heldout_share: float = DEFAULT_HELDOUT_SHARE, name: str | None = None) -> Failure:
    """The failure of a confusion cell: the images of ``splits`` labelled ``true_class`` that classifier
    ``model_id`` (None: the current one) predicts as ``pred_class`` (classes by name or index)."""
    from core.models.catalog import get_model, require_classifier

    model_id = get_model(ws, require_classifier(ws, model_id, purpose="read a confusion cell of")).model_id
    splits = tuple(dict.fromkeys(splits))
    bad = [s for s in splits if s not in CELL_SPLITS]
    if bad or not splits:
        raise ValueError(f"a confusion cell is read on {' or '.join(CELL_SPLITS)}, not {bad or 'no split'}: the "
                         f"classifier trained on train, and DCD draws from the pool")
    true, pred = class_index(ws, true_class), class_index(ws, pred_class)
    if true == pred:
        raise ValueError("a failure's confusion cell needs two different classes (the label and what the "
                         "classifier takes it for); the diagonal holds what it gets right")
    n_pred = ws.scalar("SELECT count(*) FROM predictions p JOIN images i USING (image_id) WHERE p.model_id = ? "
                       "AND i.split IN (SELECT unnest(?::VARCHAR[]))", [model_id, list(splits)])
    if not n_pred:
        raise ValueError(f"classifier {model_id} has no predictions on {', '.join(splits)}; run `python -m "
                         f"jobs.predict --workspace {ws.root} --classifier-id {model_id}` first")
    ids = ws.df("SELECT i.image_id FROM images i JOIN predictions p ON p.image_id = i.image_id AND p.model_id = ? "
                "WHERE i.split IN (SELECT unnest(?::VARCHAR[])) AND i.label = ? AND p.pred = ? ORDER BY i.image_id",
                [model_id, list(splits), true, pred]).image_id.to_numpy(np.int64)
    names = ws.class_names()
    name = name or f"{names[true]} taken for {names[pred]} on {' + '.join(splits)} (by {model_id})"
    source = {"model_id": model_id, "true_class": true, "pred_class": pred, "splits": sorted(set(splits))}
    return _store(ws, "cell", name, source, ids, seed=seed, heldout_share=heldout_share)


def cell_failure(ws: Workspace, model_id: str, true_class: int, pred_class: int, *,
                 splits: Sequence[str] = ("test",)) -> Failure | None:
    """The stored failure of a confusion cell (classes by index), or None: what the Errors page offers to fix."""
    source = {"model_id": model_id, "true_class": int(true_class), "pred_class": int(pred_class),
              "splits": sorted(set(splits))}
    return _stored(ws, "source_key = ?", [_source_key(source)])


def picking_problem(ws: Workspace, image_ids: Sequence[int]) -> str | None:
    """Why these images cannot be picked as a failure (not in the workspace, pool images, unlabelled), or
    None: what :func:`failure_from_images` refuses, for a page to say before it launches the job."""
    ids = sorted({int(i) for i in image_ids})
    df = ws.df("SELECT image_id, split, label FROM images WHERE image_id IN (SELECT unnest(?::BIGINT[]))", [ids])
    missing = sorted(set(ids) - set(df.image_id.astype(int)))
    if missing:
        return f"no image {', '.join(map(str, missing[:10]))} in the workspace"
    pool = df.image_id[df.split == "pool"].astype(int).tolist()
    if pool:
        return (f"image(s) {', '.join(map(str, pool[:10]))} are pool images: DCD draws its fixes from the pool, and "
                f"a pool label is weak; pick labelled images of train, test or the error splits")
    unlabelled = df.image_id[df.label.isna()].astype(int).tolist()
    if unlabelled:
        return (f"image(s) {', '.join(map(str, unlabelled[:10]))} have no label: a failure's images are trained "
                f"on and measured with their labels; label them first")
    return None


def failure_from_images(ws: Workspace, image_ids: Sequence[int], *, name: str | None = None, seed: int = 0,
                        heldout_share: float = DEFAULT_HELDOUT_SHARE) -> Failure:
    """The failure of images a person picked: labelled, not pool (a pool image's label is weak, and DCD draws
    from the pool)."""
    ids = sorted({int(i) for i in image_ids})
    problem = picking_problem(ws, ids)
    if problem:
        raise ValueError(problem)
    source = {"image_ids": ids}
    return _store(ws, "picked", name or f"{len(ids)} picked images", source, np.asarray(ids, np.int64), seed=seed,
                  heldout_share=heldout_share)


def picked_failure(ws: Workspace, image_ids: Sequence[int]) -> Failure | None:
    """The stored failure of these picked images, or None: what the Errors page offers to fix."""
    return _stored(ws, "source_key = ?", [_source_key({"image_ids": sorted({int(i) for i in image_ids})})])


def failure_from_upload(ws: Workspace, folder: str | Path, label: str | int, *, name: str | None = None,
                        progress: Progress | None = None) -> tuple[Failure, dict[str, str]]:
    """The failure of the image files in ``folder`` (an upload, core.data.uploads.save_uploads), each of class
    ``label`` (name or index): ingested as labelled images of the ``uploaded`` split, all in the query part,
    no held-out part (measured on test only, as its name says). Returns it and {file name: why} for the files
    that could not be ingested (not an image, too large); none ingested is a ValueError listing each file's."""
    from core.constants import UPLOADED
    from core.data.ingest import ingest_rows
    from core.data.uploads import upload_files

    files = upload_files(folder)
    if not files:
        raise ValueError(f"the upload folder {folder} holds no file")
    folder = files[0].parent
    cls = ws.class_names()[class_index(ws, label)]
    rows = pd.DataFrame({"path": [str(f) for f in files], "label": cls, "split": UPLOADED})
    report = ingest_rows(ws, rows, source=f"upload {folder.name}", base_dir=folder, root_name="the upload folder",
                         progress=progress)
    refused = {files[int(r.row) - 1].name: str(r.message) for r in report.rejected.itertuples()
               if r.reason != "duplicate_path"}  # a file ingested before (the job run again) is no problem
    paths = [str(f.resolve()) for f in files]
    stored = ws.df("SELECT image_id, path, split, label FROM images WHERE path IN (SELECT unnest(?::VARCHAR[]))",
                   [paths])
    elsewhere = stored[(stored.split != UPLOADED) | (stored.label != class_index(ws, cls))]
    if len(elsewhere):
        raise ValueError(f"{len(elsewhere)} file(s) of {folder} are in the workspace already, in split "
                         f"{', '.join(sorted(set(elsewhere.split)))} or with another label (e.g. "
                         f"{elsewhere.path.iloc[0]}): name images already in the workspace with --images")
    if stored.empty:
        said = "; ".join(refused.values()) or "none was ingested"
        raise ValueError(f"no file of the upload could be used: {said}")
    ids = np.sort(stored.image_id.to_numpy(np.int64))
    name = f"{name or f'{len(ids)} uploaded image(s) of {cls}'} ({NO_HELDOUT})"
    source = {"upload": folder.name, "label": class_index(ws, cls), "image_ids": ids.tolist()}
    return _store(ws, "uploaded", name, source, ids, seed=0, heldout_share=0.0), refused


def get_failure(ws: Workspace, ref: str, *, seed: int = 0, heldout_share: float = DEFAULT_HELDOUT_SHARE) -> Failure:
    """The failure a reference names: ``error_sample``, a stored failure's id, or a slice ``RUN:RANK`` (its
    target made with ``seed`` and ``heldout_share`` the first time, core.dcd.slice_targets.slice_target)."""
    ref = str(ref).strip()
    if ref == ERROR_SAMPLE:
        return error_sample_failure(ws)
    found = _stored(ws, "failure_id = ?", [ref])
    if found is not None:
        return found
    try:
        run_id, rank = parse_slice_ref(ref)
    except SliceRefError:
        known = ", ".join(ws.df("SELECT failure_id FROM failures ORDER BY created_at DESC LIMIT 5").failure_id)
        raise FailureRefError(f"no failure {ref!r}: name error_sample, a slice RUN:RANK (e.g. latest:1) or a "
                              f"stored failure ({known or 'none yet: make one with `python -m jobs.failure`'})"
                              ) from None
    return from_slice_target(slice_target(ws, run_id, rank, seed=seed, heldout_share=heldout_share))


def list_failures(ws: Workspace) -> list[Failure]:
    """The workspace's failures: stored ones and slice targets, newest first, then the ``error_sample``
    split if there is one."""
    from core.dcd.slice_targets import get_target

    rows = ws.df("SELECT failure_id AS ref, 'stored' AS what, created_at FROM failures UNION ALL "
                 "SELECT target_id, 'slice', created_at FROM slice_targets ORDER BY created_at DESC, ref")
    out = [(_stored(ws, "failure_id = ?", [r.ref]) if r.what == "stored" else from_slice_target(get_target(ws, r.ref)))
           for r in rows.itertuples(index=False)]
    if ws.scalar("SELECT count(*) FROM images WHERE split = 'error_sample'"):
        out.append(error_sample_failure(ws))
    return out  # type: ignore[return-value]
