"""A found slice as DCD's target: its failure becomes the ``E_sample`` to retrieve for, and its proof.

A workspace rarely comes with an ``error_sample`` split: users have a model and its data, not a curated
sample of its failure. AttributionScanner finds the failure instead (a slice run, core.scanner.runs), and a
slice is turned into a **slice target**: its misclassified members that the classifier never trained on
(``test``, ``error_heldout``; not ``train``, nor the pool, which DCD draws from) are split, seeded, into

- the **query** part: DCD searches the pool for their neighbours, as it does for ``E_sample``;
- the **held-out** part: never searched with and never trained on; it is the named eval set
  ``slice:<run_id>:<rank>`` (``eval_sets``), so every evaluated model reports accuracy on it next to
  ``test`` and ``error_heldout``. Its members were all misclassified by the slice run's model, so that
  model scores 0 on it by construction; the random baseline of the same budget is the honest comparison.

Why not its ``train`` failures: the failure to fix is what the classifier gets wrong on images it has not
seen. A train image it gets wrong is a label it could not fit (often a wrong one: see label issues) or
unfinished training; held out, it measures the latter, and as a query it pulls in its look-alikes. On the
CIFAR-10 scenario 111 of a fog slice's 213 query images were clean train images, and DCD's selection held
12.5% fog images; without them, 20%.

A slice is named ``RUN:RANK`` (rank 1 = the worst slice of that run; ``latest`` for the newest run). The
split is made once per slice and reused, so that DCD and its baselines are measured on the same images::

    target = slice_target(ws, *parse_slice_ref("latest:1"))
    target.query_ids, target.heldout_ids, target.eval_set
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.store.workspace import Workspace

DEFAULT_HELDOUT_SHARE = 0.5
EVAL_SET_PREFIX = "slice:"


class SliceRefError(ValueError):
    """A ``RUN:RANK`` that names no slice of the workspace."""


@dataclass(frozen=True)
class SliceTarget:
    target_id: str  # "<run_id>:<rank>"
    run_id: str
    slice_id: int
    rank: int
    seed: int
    heldout_share: float
    query_ids: tuple[int, ...]
    heldout_ids: tuple[int, ...]

    @property
    def eval_set(self) -> str:
        """The held-out part's eval set name in ``metrics``."""
        return EVAL_SET_PREFIX + self.target_id

    def describe(self) -> dict:
        """What a selection made for this target records under ``params["from_slice"]``."""
        return {"target_id": self.target_id, "run_id": self.run_id, "slice_id": self.slice_id, "rank": self.rank,
                "n_query": len(self.query_ids), "n_heldout": len(self.heldout_ids), "eval_set": self.eval_set,
                "seed": self.seed, "heldout_share": self.heldout_share}


def parse_slice_ref(ref: str) -> tuple[str, int]:
    """``"RUN:RANK"`` -> ``(run_id, rank)``; RUN may be ``latest``. The run is resolved by :func:`slice_target`."""
    run_id, sep, rank = str(ref).strip().rpartition(":")
    if not sep or not run_id or not rank.strip().lstrip("-").isdigit():
        raise SliceRefError(f"a slice is named RUN:RANK (e.g. latest:1, rank 1 = the worst slice), got {ref!r}")
    return run_id.strip(), int(rank)


def resolve_slice(ws: Workspace, run_id: str, rank: int) -> tuple[str, int]:
    """``(run_id, slice_id)`` of the slice ranked ``rank`` in ``run_id`` (``latest``: the newest run), or a
    :class:`SliceRefError` listing what exists."""
    runs = ws.df("SELECT run_id, n_slices FROM slice_runs ORDER BY created_at DESC")
    if runs.empty:
        raise SliceRefError(f"the workspace has no slice run; run `python -m jobs.slices --workspace {ws.root}` "
                            f"first")
    if run_id == "latest":
        run_id = str(runs.run_id.iloc[0])
    if run_id not in set(runs.run_id):
        raise SliceRefError(f"no slice run {run_id!r}; the runs are {', '.join(runs.run_id.head(5))} "
                            f"(newest first), or use latest")
    slice_id = ws.scalar("SELECT slice_id FROM slices WHERE run_id = ? AND rank = ?", [run_id, int(rank)])
    if slice_id is None:
        n = int(runs.loc[runs.run_id == run_id, "n_slices"].iloc[0])
        raise SliceRefError(f"run {run_id!r} has slices ranked 1 to {n}, not {rank}")
    return run_id, int(slice_id)


def split_members(image_ids: np.ndarray, *, heldout_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, held-out) ids: a seeded shuffle, the held-out part ``round(share * n)`` images, both parts
    non-empty when there are at least two members."""
    if not 0.0 < heldout_share < 1.0:
        raise ValueError(f"the held-out share must be between 0 and 1 (exclusive), got {heldout_share}")
    ids = np.sort(np.asarray(image_ids, np.int64))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_held = min(len(ids) - 1, max(1, round(heldout_share * len(ids)))) if len(ids) >= 2 else 0
    return np.sort(ids[order[n_held:]]), np.sort(ids[order[:n_held]])


#: A run's failures: members the run's model got wrong, train and pool images left out (see the module doc).
_FAILURES = ("FROM slice_members m JOIN slice_runs r USING (run_id) JOIN images i ON i.image_id = m.image_id "
             "JOIN predictions p ON p.image_id = m.image_id AND p.model_id = r.model_id "
             "WHERE m.run_id = ? AND i.split NOT IN ('pool', 'train') AND p.correct = false")


def _failures(ws: Workspace, run_id: str, slice_id: int) -> pd.DataFrame:
    """The slice's members that the run's model got wrong, train and pool images left out."""
    return ws.df(f"SELECT m.image_id {_FAILURES} AND m.slice_id = ? ORDER BY m.image_id", [run_id, int(slice_id)])


def failure_counts(ws: Workspace, run_id: str) -> dict[int, int]:
    """Misclassified members per slice of ``run_id`` (train and pool images left out), as the split counts them."""
    df = ws.df(f"SELECT m.slice_id, count(*) AS n {_FAILURES} GROUP BY m.slice_id", [run_id])
    return dict(zip(df.slice_id.astype(int), df.n.astype(int)))


def coherent_failures(ws: Workspace, run_id: str) -> dict[int, int]:
    """Per slice of ``run_id``: how many of its failures go one way, the most of them either taken for one
    class or carrying one label (train and pool images left out, as :func:`failure_counts`). A slice whose
    failures go one way is a failure a targeted fix can address ("stamped photos taken for horses"); one whose
    failures scatter over many confusions is the classifier's general error, which no one query set stands
    for."""
    df = ws.df(f"SELECT m.slice_id, i.label, p.pred {_FAILURES}", [run_id])
    if df.empty:
        return {}
    taken_for = df.groupby(["slice_id", "pred"]).size().groupby(level=0).max()
    of_label = df.groupby(["slice_id", "label"]).size().groupby(level=0).max()
    most = pd.concat([taken_for, of_label], axis=1).max(axis=1)
    return {int(k): int(v) for k, v in most.items()}


def get_target(ws: Workspace, target_id: str) -> SliceTarget | None:
    """A stored slice target, or None."""
    row = ws.df("SELECT * FROM slice_targets WHERE target_id = ?", [target_id])
    if row.empty:
        return None
    parts = ws.df("SELECT image_id, part FROM slice_target_members WHERE target_id = ? ORDER BY image_id",
                  [target_id])
    r = row.iloc[0]
    return SliceTarget(str(r.target_id), str(r.run_id), int(r.slice_id), int(r["rank"]), int(r.seed),
                       float(r.heldout_share),
                       tuple(int(i) for i in parts.image_id[parts.part == "query"]),
                       tuple(int(i) for i in parts.image_id[parts.part == "heldout"]))


def slice_target(ws: Workspace, run_id: str, rank: int, *, seed: int = 0,
                 heldout_share: float = DEFAULT_HELDOUT_SHARE) -> SliceTarget:
    """The target of slice ``rank`` of ``run_id``: made (and stored, with its eval set) the first time,
    reused after. A different ``seed`` or share for a slice that already has a target is refused: its
    held-out part is what earlier models were measured on."""
    run_id, slice_id = resolve_slice(ws, run_id, rank)
    target_id = f"{run_id}:{int(rank)}"
    found = get_target(ws, target_id)
    if found is not None:
        if (found.seed, round(found.heldout_share, 6)) != (seed, round(heldout_share, 6)):
            raise ValueError(f"slice {target_id} already has a query/held-out split (seed {found.seed}, held-out "
                             f"share {found.heldout_share:g}) that earlier models were measured on; use those "
                             f"settings, or slice again (a new run) for a new split")
        return found
    failures = _failures(ws, run_id, slice_id).image_id.to_numpy(np.int64)
    if len(failures) < 2:
        raise ValueError(f"slice {target_id} has {len(failures)} misclassified member(s) outside train and the "
                         f"pool; DCD needs at least 2 (one to search with, one to measure on). Pick a slice with "
                         f"more errors (a lower rank)")
    query, heldout = split_members(failures, heldout_share=heldout_share, seed=seed)
    with ws.write() as con:
        con.execute("INSERT INTO slice_targets (target_id, run_id, slice_id, rank, seed, heldout_share) "
                    "VALUES (?, ?, ?, ?, ?, ?)", [target_id, run_id, slice_id, int(rank), seed, heldout_share])
        write_parts(con, "slice_target_members", target_id, query, heldout, EVAL_SET_PREFIX + target_id,
                    f"held-out misclassified members of slice {rank} of {run_id}")
    return get_target(ws, target_id)  # type: ignore[return-value]


def write_parts(con, members_table: str, key: str, query: np.ndarray, heldout: np.ndarray, eval_set: str,
                description: str) -> None:
    """Store a failure's query and held-out parts as rows (key, image_id, part) of ``members_table``, and
    its held-out part as the eval set ``eval_set``, inside the caller's write transaction ``con``."""
    members = pd.DataFrame({"key": key, "image_id": np.concatenate([query, heldout]),
                            "part": ["query"] * len(query) + ["heldout"] * len(heldout)})
    evals = pd.DataFrame({"eval_set": eval_set, "image_id": heldout, "description": description})
    con.register("staging_members", members)
    con.execute(f"INSERT INTO {members_table} SELECT key, image_id, part FROM staging_members")
    con.unregister("staging_members")
    if not len(heldout):  # uploaded images: no held-out part, no eval set
        return
    con.register("staging_evals", evals)
    con.execute("INSERT INTO eval_sets SELECT eval_set, image_id, description FROM staging_evals")
    con.unregister("staging_evals")
