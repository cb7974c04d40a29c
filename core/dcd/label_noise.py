"""Which labels are wrong, from a label set and out-of-sample probabilities: the noise posterior.

The rule the label-issue job (core.dcd.label_issues) and DCD's teacher labels (core.dcd.debug_train) use,
on plain arrays (``labels`` of N images, ``pred_probs`` N x K), with cleanlab's vocabulary:

- :func:`estimate_noise`: each given label is a noisy copy of the image's true class; expectation-
  maximisation estimates one noise matrix ``P(given | true)`` for the set (:func:`noise_posterior`) and
  gives each image ``P(true | x, given)``. The true class's prior comes from the probabilities, read as
  :func:`true_class_prior` says (fitted on the very labels being checked, or on other, trusted labels);
- :func:`find_issues`: per image, the flag (more likely wrong than right, or one of cleanlab's rules), the
  score (the probability that the given label is right) and the suggested label.

How it compares with cleanlab's rules on the field's benchmark inputs: ``make bench`` (bench/label_bench.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: cleanlab's confident-learning methods (``cleanlab.filter.find_label_issues(filter_by=...)``).
CLEANLAB_FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")
#: How labels are flagged: ``posterior`` (more likely wrong than right, :func:`noise_posterior`) or cleanlab's.
FILTER_BY = ("posterior",) + CLEANLAB_FILTERS
DEFAULT_FILTER_BY = "posterior"
#: How the probabilities relate to the labels being checked (:func:`true_class_prior`): fitted on those very
#: labels (``given``, the field's way and the default for probabilities from elsewhere) or on other, trusted
#: labels (``trusted``, the project's heads).
FITTED_ON = ("given", "trusted")
DEFAULT_FITTED_ON = "given"
#: The exponent that sharpens probabilities fitted on the given labels into a prior of the true class.
SHARPEN_GIVEN = 5.0
NOISE_EM_MAX_ITER = 500
NOISE_EM_TOL = 1e-6


# -- which labels are wrong -------------------------------------------------------------------------

def true_class_prior(pred_probs: np.ndarray, *, fitted_on: str = DEFAULT_FITTED_ON) -> np.ndarray:
    """The prior of each image's true class (N x K) that the noise posterior starts from.

    ``fitted_on="trusted"``: the probabilities come from a model fitted on other, trusted labels (the
    project's heads, fitted on ``train``), so they estimate the true class as they are.
    ``fitted_on="given"``: they come from a model fitted on the very labels being checked (cross-validated,
    as cleanlab recommends and the field's benchmarks are made). Such a model has learnt the labels' noise:
    it spreads its probability over the classes those labels confuse, and read as the true class's, that
    spread explains every given label, so the noise the EM estimates collapses to none (CIFAR-10N ``aggre``,
    ResNet-18: 365 expected wrong labels for 4,505 wrong). The prior is then the probabilities raised to
    :data:`SHARPEN_GIVEN` and renormalised: the model's ranking of the classes is kept, most of the learnt
    spread is not, and the EM sees the noise again (measured on the label-bench inputs and on linear heads
    fitted on five CIFAR-10N label sets: docs/results.md, Label issues)."""
    if fitted_on not in FITTED_ON:
        raise ValueError(f"fitted_on must be one of {FITTED_ON}, got {fitted_on!r}")
    probs = np.clip(np.asarray(pred_probs, dtype=np.float64), 1e-12, None)
    if fitted_on == "given":
        probs = probs ** SHARPEN_GIVEN
    return probs / probs.sum(1, keepdims=True)


def noise_posterior(labels: np.ndarray, prior: np.ndarray, *, max_iter: int = NOISE_EM_MAX_ITER,
                    tol: float = NOISE_EM_TOL) -> tuple[np.ndarray, np.ndarray]:
    """(posterior, noise) of N images with given ``labels`` and a ``prior`` of their true class (N x K,
    :func:`true_class_prior`).

    Each given label is taken as a noisy copy of the image's true class ``t``: ``P(t | x)`` is the prior and
    ``noise[t, g] = P(given g | true t)`` is one matrix for all the images (class-conditional noise, as
    confident learning assumes). Expectation-maximisation estimates ``noise`` (the maximum-likelihood one
    for the given labels) and returns ``posterior`` (N x K), ``P(true t | x, given)``; its entry at the given
    label is the probability that the label is right. Unlike a count of confident disagreements, a
    disagreement the prior is unsure of weighs little, and one the noise makes likely (a pair of classes
    people confuse) weighs more."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.clip(np.asarray(prior, dtype=np.float64), 1e-12, None)
    n, k = probs.shape
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} rows of pred_probs")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got {labels.min()}..{labels.max()}")
    noise = np.full((k, k), 0.1 / max(k - 1, 1))
    np.fill_diagonal(noise, 0.9)
    posterior = probs
    for _ in range(max_iter):
        joint = probs * noise[:, labels].T  # P(t | x) P(given | t), N x K
        posterior = joint / joint.sum(1, keepdims=True)
        counts = np.zeros((k, k))  # counts[g, t]: expected images of true class t given label g
        np.add.at(counts, labels, posterior)
        updated = counts.T + 1e-9
        updated /= updated.sum(1, keepdims=True)
        converged = np.abs(updated - noise).max() < tol
        noise = updated
        if converged:
            break
    return posterior, noise


@dataclass(frozen=True)
class LabelNoise:
    """The noise estimated in one set of labels: ``noise[t, g] = P(given g | true t)`` (K x K), each image's
    ``posterior`` ``P(true | x, given)`` (N x K), and how the probabilities were read (``fitted_on``)."""

    labels: np.ndarray
    noise: np.ndarray
    posterior: np.ndarray
    fitted_on: str

    @property
    def p_right(self) -> np.ndarray:
        """Per image, the probability that its given label is its true class."""
        return self.posterior[np.arange(len(self.labels)), self.labels]

    @property
    def n_wrong(self) -> float:
        """The expected number of wrong labels."""
        return float((1.0 - self.p_right).sum())


def estimate_noise(labels: np.ndarray, pred_probs: np.ndarray, *, fitted_on: str = DEFAULT_FITTED_ON) -> LabelNoise:
    """The labels' noise and each label's posterior, from out-of-sample ``pred_probs`` read as ``fitted_on``
    says (:func:`true_class_prior`, :func:`noise_posterior`)."""
    labels = np.asarray(labels, dtype=np.int64)
    posterior, noise = noise_posterior(labels, true_class_prior(pred_probs, fitted_on=fitted_on))
    return LabelNoise(labels, noise, posterior, fitted_on)


def find_issues(labels: np.ndarray, pred_probs: np.ndarray, *, filter_by: str = DEFAULT_FILTER_BY,
                fitted_on: str = DEFAULT_FITTED_ON, noise: LabelNoise | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is_issue, score, suggested) of N images from their given ``labels`` and out-of-sample
    ``pred_probs`` (N x K).

    - ``score``: the posterior probability that the given label is right (:func:`estimate_noise`, with the
      probabilities read as ``fitted_on`` says; low = likely wrong);
    - ``is_issue``: by ``filter_by`` (one of :data:`FILTER_BY`): ``posterior`` flags the labels more likely
      wrong than right (score below 0.5); cleanlab's methods flag by confident learning on ``pred_probs``;
    - ``suggested``: the most probable true class, for a flagged image the most probable other one.

    ``noise``: the estimate already made for these labels and probabilities (not made again)."""
    if filter_by not in FILTER_BY:
        raise ValueError(f"filter_by must be one of {FILTER_BY}, got {filter_by!r}")
    labels = np.asarray(labels, dtype=np.int64)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if len(np.unique(labels)) < 2:
        return np.zeros(len(labels), bool), pred_probs[np.arange(len(labels)), labels], pred_probs.argmax(1)
    noise = noise or estimate_noise(labels, pred_probs, fitted_on=fitted_on)
    score = noise.p_right
    if filter_by == "posterior":
        is_issue = score < 0.5
    else:
        from cleanlab.filter import find_label_issues

        is_issue = np.asarray(find_label_issues(labels, pred_probs, filter_by=filter_by, n_jobs=1), bool)
    others = noise.posterior.copy()
    others[np.arange(len(labels)), labels] = -1.0
    suggested = np.where(is_issue, others.argmax(1), noise.posterior.argmax(1))  # a flagged label's alternative
    return is_issue, score, suggested
