"""The one softmax head fit: a linear layer on fixed features, multinomial logistic regression by L-BFGS.

Used where features are frozen: the classifier's linear probe (core.models.training.fit_linear_head) and the
heads of label-issue finding and of the failure's resemblance (core.dcd.label_issues.fit_softmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fit_head(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, *, weight_decay: float,
             max_iter: int) -> nn.Linear:
    """Fit ``head`` in place on ``features`` (N x D, float) and ``labels`` (N, int64): mean cross-entropy
    plus ``weight_decay`` x the squared L2 norm of its weights (not its bias), by L-BFGS with a strong-Wolfe
    line search from the head's current weights. Returns ``head``."""
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"need N x D features and N labels, got {tuple(features.shape)} and {len(labels)}")
    opt = torch.optim.LBFGS(head.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(features), labels) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head
