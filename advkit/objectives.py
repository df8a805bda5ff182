"""Per-sample objectives that an attack *maximizes*."""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

Objective = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def cross_entropy(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Cross-entropy with the true label (untargeted: push away from y)."""
    return F.cross_entropy(logits, y, reduction="none")


def negative_target_cross_entropy(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Minus the cross-entropy with the target (targeted: pull towards the target)."""
    if target is None:
        raise ValueError("a targeted objective needs target classes")
    return -F.cross_entropy(logits, target, reduction="none")


def objective_for(targeted: bool) -> Objective:
    """Cross-entropy away from the label, or towards the target."""
    return negative_target_cross_entropy if targeted else cross_entropy
