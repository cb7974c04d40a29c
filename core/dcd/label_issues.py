"""Label issues per image: out-of-sample probabilities on frozen embeddings, then how likely each label is right.

:func:`compute_label_issues` scores the ``train`` split against its ``label`` and the ``pool`` against its
``weak_label``, in one embedder's frozen feature space, and stores one row per image in ``label_issues``
(reading them back, decisions, and their use: core.dcd.label_review)::

    from core.dcd.label_issues import compute_label_issues
    summary = compute_label_issues(ws)              # default embedder, 5 folds, seed 0

How, and why:

- **Out-of-sample probabilities** (``pred_probs``, N x K) come from k-fold cross-validation of a
  multinomial logistic head (standardised features, L2, L-BFGS, CPU) over the scored images: each image is
  predicted by a head that never saw its label, so a wrong label cannot be memorised away.
- **What the folds fit on.** ``train`` labels are trusted, the pool's weak labels are noisy (30-40% wrong
  in the demos), so the heads fit on what is most trustworthy, in two stages (:func:`out_of_sample_probs`):
  first on the other folds of ``train`` alone, then on those plus the other folds' pool images whose weak
  labels stage 1 did not flag. A head fitted on the weak labels as they are learns their noise; the cleaned
  pool adds what ``train`` rarely shows (minority groups, corrupted images). ``train`` is in the fits even
  when only the pool is scored. Images of the other splits are never in a fit (they are evaluation data).
- **Which labels are flagged** (per split, since ``label`` and ``weak_label`` have different noise rates):
  by default (``filter_by="posterior"``) the ones more likely wrong than right. The rule is
  core.dcd.label_noise: :func:`estimate_noise`
  treats each given label as a noisy copy of the image's true class, estimates the split's noise matrix
  ``P(given | true)`` by expectation-maximisation (:func:`noise_posterior`), and gives each image the
  posterior probability that its given label is its true class; an image is flagged when that is below 0.5.
  The true class's prior comes from the probabilities, read as :func:`true_class_prior` says: as they are
  where the heads were fitted on trusted labels (the pool here: ``fitted_on="trusted"``), sharpened where
  they come from a model fitted on the very labels being checked (``fitted_on="given"``, the default for
  probabilities from elsewhere, as the field's benchmarks make them): such a model has learnt the labels'
  noise, and taken as it is, it leaves the EM no noise to find. Measured on the field's label-error
  benchmark inputs (``make bench``: bench/label_bench.py), this is within 0.01 of the best of cleanlab's
  rules on each and above it on average. Confident learning (``cleanlab.filter.find_label_issues``, by
  name: ``prune_by_noise_rate`` and the others) remains a choice, and always picks which weak labels the
  second fit leaves out. Why not by default here: with the project's heads it counts every confident
  mistake of a weak head as a label error (CIFAR-10N ``random_label1``, 3,467 of 20,000 wrong: 5,298
  flagged at precision 0.52, against 3,238 at 0.70 by the posterior, which estimates 3,610 wrong).
- **Score** per image: that posterior probability that the given label is right, in [0, 1], low = likely
  wrong. ``suggested_label`` is the most probable true class (for a flagged image, other than the given one).
  The split's noise matrix and its expected number of wrong labels are stored too (``label_noise``), for
  the Errors page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core.dcd.label_noise import (  # noqa: F401  (the rule's names are this module's vocabulary too)
    CLEANLAB_FILTERS,
    DEFAULT_FILTER_BY,
    FILTER_BY,
    FITTED_ON,
    LabelNoise,
    estimate_noise,
    find_issues,
    noise_posterior,
)
from core.models.softmax_head import fit_head
from core.progress import Progress, as_progress
from core.store.workspace import Workspace

SCORED_SPLITS = ("train", "pool")
#: How train's labels are read (compute_label_issues' ``train_labels``).
TRAIN_LABELS = ("trusted", "noisy")
#: Which column holds the label each scored split is checked against.
LABEL_COLUMN = {"train": "label", "pool": "weak_label"}
DEFAULT_FOLDS = 5
#: Which weak labels the second fit leaves out: generous (about as many as confident learning counts
#: wrong), since leaving a right label out of a fit costs little and keeping a wrong one teaches noise.
REFIT_FILTER_BY = "prune_by_noise_rate"
HEAD_WEIGHT_DECAY = 1e-2  # L2 on the head's weights (standardised features, mean cross-entropy)
HEAD_MAX_ITER = 100


@dataclass(frozen=True)
class LabelIssueResult:
    """One split's label issues: per image (in ``image_ids`` order) its given label, the suggested (most
    probable) label, the score (the probability that the given label is right) and the flag."""

    split: str
    image_ids: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    is_issue: np.ndarray

    def frame(self, embedder_id: str) -> pd.DataFrame:
        return pd.DataFrame({"image_id": self.image_ids.astype(np.int64), "embedder_id": embedder_id,
                             "given_label": self.given.astype(np.int32),
                             "suggested_label": self.suggested.astype(np.int32),
                             "score": self.score.astype(np.float32), "is_issue": self.is_issue.astype(bool)})


# -- the head and the folds -------------------------------------------------------------------------

def fit_softmax(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                weight_decay: float = HEAD_WEIGHT_DECAY, max_iter: int = HEAD_MAX_ITER):
    """A multinomial logistic head (core.models.softmax_head) on standardised ``features`` (N x D), from zero
    weights: returns ``predict(X) -> N x K`` probabilities (the fit set's mean and spread standardise ``X``
    too)."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    head = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    fit_head(head, x, y, weight_decay=weight_decay, max_iter=max_iter)

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = (torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)) - mean) / std
            return torch.softmax(head(t), 1).numpy().astype(np.float64)

    return predict


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number in ``[0, folds)`` per image: each class's images shuffled (seeded) and dealt round
    robin, so every fold holds about the same share of each class."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), np.int64)
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out[idx] = (np.arange(len(idx)) + start) % folds
        start += len(idx)  # the next class continues the deal, so small classes do not all land in fold 0
    return out


def _fold_of(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified folds within each group (split), so every fold holds its share of each split and class."""
    fold = np.empty(len(labels), np.int64)
    for g in np.unique(groups):
        where = np.flatnonzero(groups == g)
        fold[where] = stratified_folds(labels[where], folds, seed)
    return fold


def cross_val_probs(features: np.ndarray, labels: np.ndarray, num_classes: int, fold: np.ndarray,
                    fit_mask: np.ndarray, *, weight_decay: float = HEAD_WEIGHT_DECAY,
                    progress: Progress | None = None) -> np.ndarray:
    """``pred_probs`` (N x K): the images of each fold predicted by a head fitted on the images of the other
    folds that ``fit_mask`` allows (so never on their own label)."""
    progress = as_progress(progress)
    folds = int(fold.max()) + 1
    probs = np.zeros((len(labels), num_classes))
    for f in range(folds):
        held = fold == f
        fit = ~held & fit_mask
        if len(np.unique(labels[fit])) < 2:
            raise ValueError(f"fold {f + 1} of {folds} has fewer than 2 classes to fit on; add labelled images or "
                             f"use fewer --folds")
        probs[held] = fit_softmax(features[fit], labels[fit], num_classes, weight_decay=weight_decay)(features[held])
        progress.report((f + 1) / folds, f"fold {f + 1}/{folds}")
    return probs


def out_of_sample_probs(features: np.ndarray, labels: np.ndarray, is_trusted: np.ndarray, num_classes: int, *,
                        folds: int = DEFAULT_FOLDS, seed: int = 0, weight_decay: float = HEAD_WEIGHT_DECAY,
                        refit_filter_by: str = REFIT_FILTER_BY, progress: Progress | None = None) -> np.ndarray:
    """``pred_probs`` (N x K) of every image, out of sample, in two stages.

    ``is_trusted`` marks the images whose labels are trusted (``train``); the others (the pool) carry weak
    labels. Folds are stratified by class within each of the two parts.

    1. Each fold's images are predicted by a head fitted on the trusted images of the other folds only.
    2. ``refit_filter_by`` on those probabilities flags, in each part, the labels that look wrong; then each
       fold's images are predicted again by a head fitted on the other folds' images, trusted and weak, whose
       labels were not flagged.

    Why: a head fitted on weak labels as they are (30-40% wrong) learns the noise (on the Waterbirds-like
    demo it found the pool's flips at precision 0.51, against 0.85 for a head fitted on ``train`` alone),
    but the pool is several times ``train`` and covers what ``train`` rarely shows (minority groups,
    corrupted images), so stage 2 adds its weak labels that the trusted head agrees with. ``train``'s own
    flagged labels are left out of stage 2 too: a head fitted on wrong labels gives ``P(given | x)``, not
    ``P(true | x)``, and :func:`noise_posterior` would count the noise twice (on the Waterbirds-like demo,
    60 planted train mislabels, recall 0.53 with them in the fit, 0.78 without). Without trusted images,
    stage 1 fits on all the other folds.
    """
    progress = as_progress(progress)
    labels = np.asarray(labels, dtype=np.int64)
    is_trusted = np.asarray(is_trusted, bool)
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    for part, n in (("train", int(is_trusted.sum())), ("pool", int((~is_trusted).sum()))):
        if 0 < n < folds:
            raise ValueError(f"{n} {part} image(s) cannot be split into {folds} folds; use fewer --folds")
    fold = _fold_of(labels, is_trusted, folds, seed)
    trusted_fit = is_trusted if len(np.unique(labels[is_trusted])) >= 2 else np.ones(len(labels), bool)
    probs = cross_val_probs(features, labels, num_classes, fold, trusted_fit, weight_decay=weight_decay,
                            progress=progress.span(0, 0.5))
    flagged = np.zeros(len(labels), bool)
    for part in (is_trusted, ~is_trusted):  # each part has its own noise rate
        rows = np.flatnonzero(part)
        if len(rows):
            flagged[rows] = find_issues(labels[rows], probs[rows], filter_by=refit_filter_by)[0]
    return cross_val_probs(features, labels, num_classes, fold, ~flagged, weight_decay=weight_decay,
                           progress=progress.span(0.5, 1.0))


# -- the workspace -----------------------------------------------------------------------------------

def scored_images(ws: Workspace, splits: Sequence[str], *, strict: bool = True) -> pd.DataFrame:
    """image_id, split, given (the label each image is checked against) of the scored ``splits``, with a
    :class:`ValueError` saying what is missing (``strict=False``: images without a label are left out)."""
    from core.data.splits import images_df

    bad = [s for s in splits if s not in SCORED_SPLITS]
    if bad or (strict and not splits):
        raise ValueError(f"label issues are found for the splits {list(SCORED_SPLITS)}, not {bad or 'none'}")
    df = images_df(ws, list(splits))
    if df.empty and strict:
        raise ValueError(f"the workspace has no {' or '.join(splits)} images to check; ingest a manifest first")
    df["given"] = df.label.where(df.split == "train", df.weak_label)
    missing = df[df.given.isna()]
    if not strict:
        df = df.drop(missing.index)
    elif len(missing):
        counts = missing.split.value_counts().to_dict()
        raise ValueError(f"{len(missing)} image(s) have no label to check ({counts}; train needs `label`, pool "
                         f"`weak_label`); re-ingest them with labels")
    df["given"] = df.given.astype(np.int64)
    return df[["image_id", "split", "given"]].reset_index(drop=True)


def _features(ws: Workspace, embedder_id: str, image_ids: np.ndarray, progress: Progress) -> np.ndarray:
    """The embedder's vectors of ``image_ids`` (in that order), embedding the ones it lacks first."""
    from core.dcd.embed import embed_missing
    from core.store.vectors import load_embeddings

    embed_missing(ws, embedder_id, image_ids.tolist(), progress=progress)
    ids, vecs = load_embeddings(ws, embedder_id, image_ids=image_ids.tolist())
    pos = pd.Series(np.arange(len(ids)), index=ids)
    lacking = np.setdiff1d(image_ids, ids)
    if len(lacking):
        raise LookupError(f"{len(lacking)} image(s) still have no vector for {embedder_id!r} after embedding; "
                          f"run `python -m jobs.embed --workspace {ws.root} --splits train pool --only-missing`")
    return vecs[pos.loc[image_ids].to_numpy()]


def compute_label_issues(ws: Workspace, *, embedder_id: str | None = None, splits: Sequence[str] = SCORED_SPLITS,
                         folds: int = DEFAULT_FOLDS, seed: int = 0, filter_by: str = DEFAULT_FILTER_BY,
                         train_labels: str = "trusted", weight_decay: float = HEAD_WEIGHT_DECAY,
                         progress: Progress | None = None) -> dict:
    """Find the label issues of ``splits`` (``train`` and/or ``pool``) and store them, with the noise each
    split's labels are estimated to have (``label_noise``); returns a summary (embedder, per split: scored,
    flagged, estimated wrong). Every train and pool image takes part in the fits (embedded first if the
    embedder lacks it); only ``splits`` are stored. Earlier rows of those images are replaced in one
    transaction; a person's decision on an image is kept while its given label is the same.

    The pool's probabilities come from heads fitted on trusted labels, so they are read as the true class's
    (``fitted_on="trusted"``). ``train_labels`` says how to read train's, whose heads were fitted on train's
    own labels (:data:`TRAIN_LABELS`): ``"trusted"`` (the default: train's labels are the ones the project
    trusts, and a label is flagged only where the heads are confident against it) or ``"noisy"`` (train's
    labels are themselves noisy: the heads have learnt their noise, ``fitted_on="given"``)."""
    from core.dcd.embed import EmbedderSpec, default_search_embedder
    from core.dcd.label_review import store_label_issues
    from core.store.vectors import list_embedders

    progress = as_progress(progress)
    splits = tuple(dict.fromkeys(splits))
    if filter_by not in FILTER_BY:
        raise ValueError(f"filter_by must be one of {FILTER_BY}, got {filter_by!r}")
    if train_labels not in TRAIN_LABELS:
        raise ValueError(f"train_labels must be one of {TRAIN_LABELS}, got {train_labels!r}")
    wanted = scored_images(ws, splits)  # says what is missing in the splits asked for
    others = [s for s in SCORED_SPLITS if s not in splits]  # in the fits, not stored
    images = pd.concat([wanted, scored_images(ws, others, strict=False)] if others else [wanted], ignore_index=True)
    if embedder_id is None:  # with no embeddings at all, the default embedder (its vectors are made below)
        embedder_id = default_search_embedder(ws) if list_embedders(ws) else EmbedderSpec().embedder_id(ws)
    ids, given = images.image_id.to_numpy(np.int64), images.given.to_numpy(np.int64)
    feats = _features(ws, embedder_id, ids, progress.span(0, 0.4))
    probs = out_of_sample_probs(feats, given, (images.split == "train").to_numpy(), len(ws.class_names()),
                                folds=folds, seed=seed, weight_decay=weight_decay, progress=progress.span(0.4, 0.95))
    results, noises = [], {}
    for split in splits:
        rows = (images.split == split).to_numpy()
        fitted_on = "given" if split == "train" and train_labels == "noisy" else "trusted"
        noises[split] = estimate_noise(given[rows], probs[rows], fitted_on=fitted_on)
        is_issue, score, suggested = find_issues(given[rows], probs[rows], filter_by=filter_by, noise=noises[split])
        results.append(LabelIssueResult(split, ids[rows], given[rows], suggested, score, is_issue))
    store_label_issues(ws, pd.concat([r.frame(embedder_id) for r in results], ignore_index=True),
                       noise_rows=[_noise_row(r, noises[r.split], embedder_id) for r in results])
    progress.report(1.0, "label issues stored", force=True)
    return {"embedder_id": embedder_id, "folds": folds, "seed": seed, "filter_by": filter_by,
            "train_labels": train_labels,
            "splits": {r.split: {"n_scored": int(len(r.image_ids)), "n_flagged": int(r.is_issue.sum()),
                                 "n_wrong_estimated": round(noises[r.split].n_wrong, 1),
                                 "fitted_on": noises[r.split].fitted_on} for r in results}}


def _noise_row(result: LabelIssueResult, noise: LabelNoise, embedder_id: str) -> dict:
    """A ``label_noise`` row: the split's estimated noise matrix and counts."""
    return {"split": result.split, "embedder_id": embedder_id, "fitted_on": noise.fitted_on,
            "n_scored": int(len(result.image_ids)), "n_wrong_estimated": noise.n_wrong,
            "n_flagged": int(result.is_issue.sum()), "noise": json.dumps(np.round(noise.noise, 5).tolist())}


def ensure_label_issues(ws: Workspace, *, seed: int = 0, progress: Progress | None = None) -> dict:
    """The pool's label issues, for DCD to leave the flagged ones out: ``{"stored": True}`` when stored
    already, else found now (train and pool) with the pretrained default backbone and their summary.

    Not in the classifier's own feature space: where the classifier learnt a shortcut, a minority image's
    right label looks wrong there (on the Waterbirds-like demo the classifier's space flagged the pool at
    precision 0.76 and left DCD nothing of the failure to select; the backbone's, 0.91)."""
    from core.dcd.embed import EmbedderSpec
    from core.dcd.label_review import count_label_issues

    if count_label_issues(ws, splits=["pool"]):
        return {"stored": True}
    summary = compute_label_issues(ws, embedder_id=EmbedderSpec().embedder_id(ws), seed=seed, progress=progress)
    pool = summary["splits"].get("pool", {})
    print(f"label issues ({summary['embedder_id']}): {pool.get('n_flagged', 0)} of {pool.get('n_scored', 0)} pool "
          f"labels flagged, left out of DCD's selection", flush=True)
    return summary
