"""Selection strategies: how a debug-train set is chosen (DCD and its baselines).

The failure's own labelled images (its query part: the ``error_sample`` split, a slice's, core.dcd.failure) are in every
debug-train set but ``all_pool``: they are the best-labelled examples of the failure a user has, and the
simplest fix is to fine-tune on them alone. Methods (:data:`STRATEGIES`, all reached through :func:`select`):

- ``dcd``: the failure's images plus the pool images retrieval adds: their nearest pool images (L2 in the
  embedder's space), merged round-robin by neighbour rank (every failure image gets its nearest first),
  de-duplicated (an image found for several keeps its closest). Under the default label policy ``teacher``
  (core.dcd.debug_train) the search goes as deep as the neighbours still resemble the failure, and each is
  labelled by the failure's teacher with its weak label, or left out where that label is unsure; under the
  other policies it is cut to ``budget``;
- ``random``: the failure's images plus ``budget`` pool images drawn uniformly, with their weak labels (the
  pipeline gives it as many as DCD retrieved: the fair baseline of retrieval);
- ``all_pool``: every pool image, with its weak label;
- ``error_sample_only``: the failure's images alone.

Label policies for retrieved pool images (``dcd`` only), :data:`LABEL_POLICIES`:

- ``teacher``: the most probable true class given the teacher's probabilities (the classifier fine-tuned on
  train plus the failure's images) and the weak label, kept where at least 0.9 likely
  (core.dcd.debug_train);
- ``weak``: the pool's weak label;
- ``source``: the label of the error image the candidate was retrieved for;
- ``agree``: keep only the candidates whose weak label *is* that error image's label, trained with it. Two
  independent labels that agree are rarely both wrong, so this drops most of the pool's label noise, and it
  drops neighbours of another class that were retrieved for what they share with the error image (its
  background, say) rather than for the failure itself. It keeps fewer neighbours per error image, so
  :func:`select_dcd` searches deeper until the budget is filled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from core.data.splits import split_counts
from core.dcd.debug_train import failure_items
from core.dcd.embed import embed_missing, search_embedder
from core.dcd.failure import Failure, from_slice_target, get_failure
from core.dcd.index import pool_index
from core.dcd.selection import Selection, save_selection
from core.dcd.slice_targets import parse_slice_ref, slice_target
from core.progress import Progress
from core.store.workspace import Workspace

LabelPolicy = Literal["teacher", "weak", "source", "agree"]
LABEL_POLICIES = ("teacher", "weak", "source", "agree")
DEFAULT_LABEL_POLICY: LabelPolicy = "teacher"


def with_failure(failure: pd.DataFrame | None, retrieved: pd.DataFrame) -> pd.DataFrame:
    """The failure's images (kind ``failure``) first, then ``retrieved`` (kind ``retrieved``), ranked anew."""
    parts = [] if failure is None else [failure]
    parts.append(retrieved.assign(kind="retrieved"))
    out = pd.concat(parts, ignore_index=True).drop_duplicates("image_id").reset_index(drop=True)
    out["rank"] = np.arange(len(out))
    return out


def select_random(ws: Workspace, *, n: int, seed: int = 0, name: str | None = None,
                  failure: pd.DataFrame | None = None, extra_params: dict | None = None) -> Selection:
    """``n`` pool images drawn uniformly, with their weak labels (after the ``failure`` items, if given)."""
    pool = ws.df("SELECT image_id, weak_label AS label FROM images WHERE split = 'pool' ORDER BY image_id")
    rng = np.random.default_rng(seed)
    take = pool.iloc[np.sort(rng.choice(len(pool), min(n, len(pool)), replace=False))].copy()
    items = with_failure(failure, take)
    return save_selection(ws, name or f"random-{len(take)}", "random", items,
                          params={"n": n, "seed": seed, "n_failure": 0 if failure is None else len(failure),
                                  **(extra_params or {})})


def select_all_pool(ws: Workspace, *, name: str | None = None, extra_params: dict | None = None) -> Selection:
    pool = ws.df("SELECT image_id, weak_label AS label FROM images WHERE split = 'pool' ORDER BY image_id")
    pool["rank"] = np.arange(len(pool))
    return save_selection(ws, name or "all-pool", "all_pool", pool.assign(kind="retrieved"),
                          params=dict(extra_params or {}))


def select_error_sample(ws: Workspace, *, name: str | None = None, source_ids: Sequence[int] | None = None,
                        extra_params: dict | None = None) -> Selection:
    """The error sample itself (or the images ``source_ids``, e.g. a slice's query part), with their labels."""
    ids, labels = failure_images(ws, source_ids)
    items = failure_items(ids, labels)
    items["rank"] = np.arange(len(items))
    return save_selection(ws, name or "error-sample-only", "error_sample_only", items, params=dict(extra_params or {}))


def failure_images(ws: Workspace, source_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, labels) of the failure's images: the ``error_sample`` split, or ``source_ids``."""
    if source_ids is None:
        df = ws.df("SELECT image_id, label FROM images WHERE split = 'error_sample' ORDER BY image_id")
    else:
        df = ws.df("SELECT image_id, label FROM images WHERE image_id IN (SELECT unnest(?::BIGINT[])) "
                   "ORDER BY image_id", [[int(i) for i in source_ids]])
    if df.label.isna().any():
        raise ValueError(f"{int(df.label.isna().sum())} of the failure's images have no label; label them first")
    return df.image_id.to_numpy(np.int64), df.label.to_numpy(np.int64)


#: Candidates per failure image in a default budget, and the share of the pool a default budget is capped at.
#: The budget is the most DCD retrieves: under the ``teacher`` policy it takes what resembles the failure.
PER_FAILURE_IMAGE, POOL_SHARE_CAP = 50, 0.25
#: Fewest neighbours searched per failure image by default.
MIN_NEIGHBOURS = 5


@dataclass(frozen=True)
class SearchSize:
    """How much DCD retrieves for a failure: at most ``budget`` pool images, searching the ``neighbours``
    nearest of each failure image (deeper where a rule leaves too few, core.dcd.retrieval.fill_budget);
    ``why`` says how the budget came out, :attr:`note` both."""

    budget: int
    neighbours: int
    why: str  # "50 per failure image x 8 failure images", "given", ...

    @property
    def note(self) -> str:
        return f"budget {self.budget} ({self.why}); {self.neighbours} neighbours per failure image"


def search_size(n_failure: int, n_pool: int, *, budget: int | None = None,
                neighbours: int | None = None) -> SearchSize:
    """The one place DCD's budget and neighbours are decided, from the user's (None: the default).

    Default budget: 50 candidates per failure image, at most a quarter of the pool. Default neighbours: enough
    per failure image to fill the budget after de-duplication (2x headroom), at least 5."""
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    if neighbours is not None and neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    n_failure, n_pool = max(1, int(n_failure)), int(n_pool)
    asked = PER_FAILURE_IMAGE * n_failure
    if budget is not None:
        why = "given"
    else:
        budget = max(1, min(asked, int(n_pool * POOL_SHARE_CAP) or n_pool))
        why = (f"{PER_FAILURE_IMAGE} per failure image would be {asked}, capped at a quarter of the pool "
               f"({n_pool:,} images); give --budget to choose" if budget < asked else
               f"{PER_FAILURE_IMAGE} per failure image x {n_failure} failure images")
    if neighbours is None:
        neighbours = max(MIN_NEIGHBOURS, math.ceil(2 * budget / n_failure))
    return SearchSize(int(budget), int(neighbours), why)


#: What DCD does with the pool's flagged label issues (SelectionRequest.label_issues).
LABEL_ISSUE_CHOICES = ("auto", "drop", "keep")


def check_label_issues_choice(value: str) -> None:
    """A :class:`ValueError` unless ``value`` is one of :data:`LABEL_ISSUE_CHOICES`."""
    if value not in LABEL_ISSUE_CHOICES:
        raise ValueError(f"label_issues must be one of {LABEL_ISSUE_CHOICES}, got {value!r}")


def drops_label_issues(label_issues: str, label_policy: str, *, named: bool) -> bool:
    """Whether DCD's selection leaves out the pool's flagged label issues (:class:`SelectionRequest`'s
    ``label_issues``), for a named failure or the ``error_sample`` split: known before the failure is found."""
    return label_issues == "drop" or (label_issues == "auto" and named and label_policy != "teacher")


@dataclass(frozen=True)
class SelectionRequest:
    """What a strategy is asked for. ``budget``: most images (``random``: exactly that many); ``neighbours``:
    DCD's search depth per failure image (both None: the defaults of :func:`search_size`);
    ``embedder_id``: DCD's feature space; ``seed``: ``random``'s draw and a slice target's split;
    ``index_memory_gb``: the pool index's memory budget (default: core.dcd.index_build.default_memory_gb);
    ``failure``: a failure reference (core.dcd.failure: ``error_sample``, a slice ``RUN:RANK``, a stored
    failure's id), retrieve for its query part (default: the ``error_sample`` split); ``from_slice``: the
    older spelling for a slice ``RUN:RANK`` (core.dcd.slice_targets; its held-out part becomes an eval set);
    ``label_issues``: ``"drop"`` never
    selects pool images flagged as label issues (core.dcd.label_issues, found first if none are stored)
    unless a person kept them, ``"keep"`` does, ``"auto"`` drops them for a named failure under a pair label policy
    (whose agreeing wrong labels the loop would otherwise take) and keeps them otherwise: under ``teacher``
    each weak label is judged by the teacher's posterior anyway (:data:`LABEL_ISSUE_CHOICES`);
    ``teacher_id``: the classifier fine-tuned on train plus the failure's images that labels DCD's retrieved
    images under ``teacher`` (default: one is fine-tuned from the current classifier and registered as the
    ``error_sample_only`` fix); ``rest_of_pool``: under ``teacher``, DCD's selection also holds the rest of
    the pool the teacher labels with confidence (kind ``rest``, drawn with train when fine-tuning;
    core.dcd.debug_train)."""

    budget: int | None = None
    neighbours: int | None = None
    embedder_id: str | None = None
    label_policy: LabelPolicy = DEFAULT_LABEL_POLICY
    seed: int = 0
    name: str | None = None
    index_memory_gb: float | None = None
    from_slice: str | None = None
    failure: str | None = None
    heldout_share: float = 0.5
    label_issues: str = "auto"
    teacher_id: str | None = None
    rest_of_pool: bool = False

    def __post_init__(self) -> None:
        check_label_issues_choice(self.label_issues)
        if self.label_policy not in LABEL_POLICIES:
            raise ValueError(f"label_policy must be one of {LABEL_POLICIES}, got {self.label_policy!r}")
        if self.from_slice and self.failure:
            raise ValueError("name the failure once: --failure REF (a slice RUN:RANK is one) or --from-slice "
                             "RUN:RANK, not both")

    def drops_label_issues(self) -> bool:
        return drops_label_issues(self.label_issues, self.label_policy,
                                  named=(self.from_slice or self.failure) not in (None, "error_sample"))

    def target(self, ws: Workspace) -> Failure | None:
        """The failure this request retrieves for (None: the ``error_sample`` split, read as before)."""
        if self.failure:
            found = get_failure(ws, self.failure, seed=self.seed, heldout_share=self.heldout_share)
            return None if found.kind == "error_sample" else found
        if not self.from_slice:
            return None
        return from_slice_target(slice_target(ws, *parse_slice_ref(self.from_slice), seed=self.seed,
                                              heldout_share=self.heldout_share))

    # ``target``: the request's failure when the caller has resolved it already (one lookup per selection)

    def n_error_images(self, ws: Workspace, target: Failure | None = None) -> int:
        target = target or self.target(ws)
        return len(target.query_ids) if target else split_counts(ws)["error_sample"]

    def size(self, ws: Workspace, target: Failure | None = None) -> SearchSize:
        """The budget and neighbours this request resolves to on ``ws`` (:func:`search_size`)."""
        return search_size(self.n_error_images(ws, target), split_counts(ws)["pool"], budget=self.budget,
                           neighbours=self.neighbours)

    def recorded(self, ws: Workspace, target: Failure | None = None) -> dict:
        """Params every selection of this request records: the failure it was made for (a slice's also under
        ``from_slice``, as the app's reports read it)."""
        target = target or self.target(ws)
        if target is None:
            return {}
        return {"failure": target.describe(), **({"from_slice": target.describe()} if target.kind == "slice" else {})}


def _flagged(ws: Workspace, req: SelectionRequest, progress: Progress | None) -> set[int]:
    if not req.drops_label_issues():
        return set()
    from core.dcd.label_issues import ensure_label_issues
    from core.dcd.label_review import flagged_pool_ids

    ensure_label_issues(ws, seed=req.seed, progress=progress)
    return flagged_pool_ids(ws)


def _failure(ws: Workspace, target: Failure | None) -> pd.DataFrame:
    """The failure's images as debug-train items: its query part, or the ``error_sample`` split."""
    ids, labels = failure_images(ws, target.query_ids if target else None)
    return failure_items(ids, labels)


def failure_only_fix(ws: Workspace, req: SelectionRequest, target: Failure | None, *,
                     progress: Progress | None = None) -> str:
    """The current classifier fine-tuned on train plus the failure's images (the ``error_sample_only``
    selection and fix, registered): the teacher DCD's retrieved images are labelled by."""
    from core.dcd.fine_tune import retrain
    from core.models.catalog import require_classifier

    base = require_classifier(ws, purpose="fine-tune on the failure's images (DCD's teacher)")
    sel = select_error_sample(ws, source_ids=target.query_ids if target else None, extra_params=req.recorded(ws, target))
    print(f"fine-tuning {base} on the failure's {len(sel.items)} images: the teacher that labels DCD's "
          f"retrieved images", flush=True)
    return retrain(ws, base_model_id=base, selection_id=sel.selection_id, method="error_sample_only",
                   progress=progress)


def _dcd(ws: Workspace, req: SelectionRequest, progress: Progress | None) -> Selection:
    from core.dcd.debug_train import build_debug_train
    from core.dcd.retrieval import fill_budget, query_vectors
    from core.models.catalog import load_classifier
    from core.models.schedules import schedule_of

    target = req.target(ws)
    if target is None and split_counts(ws)["error_sample"] == 0:
        raise ValueError("the workspace has no error_sample split: name the failure instead (--failure REF: a "
                         "slice RUN:RANK, e.g. latest:1 after `python -m jobs.slices`, or one made with "
                         "`python -m jobs.failure`)")
    embedder_id = req.embedder_id or search_embedder(ws, progress=progress)
    failure = _failure(ws, target)
    embed_missing(ws, embedder_id, failure.image_id.tolist(), progress=progress)
    size = req.size(ws, target)
    budget = size.budget
    name = req.name or f"dcd-{_short(target)}b{budget}"
    exclude = _flagged(ws, req, progress)
    params = {**req.recorded(ws, target), "budget": budget, "label_policy": req.label_policy,
              "embedder_id": embedder_id, "n_excluded": len(exclude),
              **({"n_label_issues_left_out": len(exclude)} if exclude else {})}
    if req.label_policy == "teacher":
        teacher_id = req.teacher_id or failure_only_fix(ws, req, target, progress=progress)
        teacher, data_config = load_classifier(ws, teacher_id)
        made = build_debug_train(ws, embedder_id=embedder_id, failure_ids=failure.image_id.tolist(),
                                 failure_labels=failure.label.tolist(), teacher=teacher, data_config=data_config,
                                 budget=budget, exclude=exclude, rest_of_pool=req.rest_of_pool, seed=req.seed,
                                 index_memory_gb=req.index_memory_gb,
                                 teacher_trainable_stages=schedule_of(ws, teacher_id).trainable_stages,
                                 progress=progress)
        params.update({"teacher_id": teacher_id, "rest_of_pool": req.rest_of_pool, **made.info})
        return save_selection(ws, name, "dcd", made.items, params=params, index_info=made.index_info)
    index, info = pool_index(ws, embedder_id, memory_gb=req.index_memory_gb, progress=progress)
    src, queries = query_vectors(ws, embedder_id, failure.image_id.tolist())
    retrieved, depth = fill_budget(ws, index, src, queries, neighbours=size.neighbours, budget=budget,
                                   label_policy=req.label_policy, exclude=exclude)
    params.update({"neighbours": size.neighbours, "neighbours_searched": depth, "n_failure": len(failure),
                   "n_retrieved": len(retrieved)})
    return save_selection(ws, name, "dcd", with_failure(failure, retrieved), params=params, index_info=info)


def _short(target: Failure | None) -> str:
    """A failure in a selection's default name: ``slice2-``, ``f3-``, or nothing for ``error_sample``."""
    if target is None:
        return ""
    return f"slice{target.source['rank']}-" if target.kind == "slice" else f"{target.failure_id}-"


def _random(ws: Workspace, req: SelectionRequest, progress: Progress | None) -> Selection:
    target = req.target(ws)
    return select_random(ws, n=req.size(ws, target).budget, seed=req.seed, name=req.name,
                         failure=_failure(ws, target), extra_params=req.recorded(ws, target))


def _error_sample_only(ws: Workspace, req: SelectionRequest, progress: Progress | None) -> Selection:
    target = req.target(ws)
    return select_error_sample(ws, name=req.name, source_ids=target.query_ids if target else None,
                               extra_params=req.recorded(ws, target))


STRATEGIES: dict[str, Callable[[Workspace, SelectionRequest, Progress | None], Selection]] = {
    "dcd": _dcd,
    "random": _random,
    "all_pool": lambda ws, req, progress: select_all_pool(ws, name=req.name, extra_params=req.recorded(ws)),
    "error_sample_only": _error_sample_only,
}
METHODS = tuple(STRATEGIES)


def select(ws: Workspace, method: str, request: SelectionRequest = SelectionRequest(), *,
           progress: Progress | None = None) -> Selection:
    """Make and store a selection with one of :data:`METHODS`."""
    if method not in STRATEGIES:
        raise ValueError(f"unknown selection method {method!r}; choose one of {list(METHODS)}")
    return STRATEGIES[method](ws, request, progress)
