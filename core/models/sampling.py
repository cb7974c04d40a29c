"""How a fine-tuning run draws its images: the added (debug-train) images' share of every batch.

A few hundred targeted images beside thousands of train images would be seen too rarely to matter if every
image were drawn alike; :func:`share_weights` gives them a fixed share of the draws instead
(core.models.schedules' ``added_share``, ``added_mix``).
"""

from __future__ import annotations

import numpy as np


def share_weights(is_added: np.ndarray, added_share: float | None, labels: np.ndarray | None = None
                  ) -> np.ndarray | None:
    """Per-image sampling weights (summing to 1) giving the added images ``added_share`` of the draws (None:
    uniform).

    With ``labels`` the share is taken within each class: every class keeps the share of the draws it has
    among the other images (train's class mix), and of a class's draws its added images get ``added_share``
    (none where it has no added image). So added images of one or two classes change how those classes are
    seen, not how often they are answered. A class that only added images hold gets the share of the draws
    it has among the added images, times ``added_share``."""
    if added_share is None:
        return None
    if not 0.0 < added_share < 1.0:
        raise ValueError(f"added_share must be between 0 and 1 (exclusive), got {added_share}")
    is_added = np.asarray(is_added, bool)
    n_added = int(is_added.sum())
    n_rest = len(is_added) - n_added
    if n_added == 0 or n_rest == 0:
        return None
    if labels is None:
        return np.where(is_added, added_share / n_added, (1.0 - added_share) / n_rest)
    labels = np.asarray(labels)
    weights = np.zeros(len(labels))
    for c in np.unique(labels):
        added, rest = is_added & (labels == c), ~is_added & (labels == c)
        n_a, n_r = int(added.sum()), int(rest.sum())
        mass = n_r / n_rest if n_r else added_share * n_a / n_added
        if n_a and n_r:
            weights[added], weights[rest] = mass * added_share / n_a, mass * (1.0 - added_share) / n_r
        elif n_a:
            weights[added] = mass / n_a
        else:
            weights[rest] = mass / n_r
    return weights / weights.sum()
