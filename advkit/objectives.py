"""Per-sample objectives that an attack *maximizes*.

An objective is called as ``objective(logits, y, target, x_adv, x)`` (x: the clean inputs of
the same rows) and returns one value per sample. Regularized objectives use ``x_adv`` and
``x``: a class logit minus lambda * ||x_adv||^2, or minus beta * mse(x_adv, x).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

Objective = Callable[..., Tensor]


def cross_entropy(
    logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv: Tensor | None = None, x: Tensor | None = None
) -> Tensor:
    """Cross-entropy with the true label (untargeted: push away from y)."""
    return F.cross_entropy(logits, y, reduction="none")


def negative_target_cross_entropy(
    logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv: Tensor | None = None, x: Tensor | None = None
) -> Tensor:
    """Minus the cross-entropy with the target (targeted: pull towards the target)."""
    if target is None:
        raise ValueError("a targeted objective needs target classes")
    return -F.cross_entropy(logits, target, reduction="none")


def target_logit(
    logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv: Tensor | None = None, x: Tensor | None = None
) -> Tensor:
    """C = logits[target], before the softmax (S6, S8)."""
    if target is None:
        raise ValueError("the target-logit objective needs target classes")
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


def objective_for(targeted: bool) -> Objective:
    """Cross-entropy away from the label, or towards the target."""
    return negative_target_cross_entropy if targeted else cross_entropy


def logit_margin(
    logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv: Tensor | None = None, x: Tensor | None = None
) -> Tensor:
    """max_{j != y} z_j - z_y: positive exactly when the input is misclassified (Carlini & Wagner's margin)."""
    true_logit = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return others.amax(1) - true_logit


def dlr(
    logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv: Tensor | None = None, x: Tensor | None = None
) -> Tensor:
    """Croce & Hein's untargeted DLR, maximized: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3); scale-invariant."""
    if logits.shape[1] < 3:
        raise ValueError("the DLR objective needs at least 3 classes")
    ordered = logits.sort(dim=1, descending=True).values
    return logit_margin(logits, y) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def cross_entropy_plus_margin(
    logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv: Tensor | None = None, x: Tensor | None = None
) -> Tensor:
    """CE with the label plus the logit margin: CE's gradient far from the boundary, the margin's near it."""
    return cross_entropy(logits, y) + logit_margin(logits, y)


#: Untargeted losses by name (maximized).
UNTARGETED_LOSSES: dict[str, Objective] = {
    "ce": cross_entropy,
    "margin": logit_margin,
    "dlr": dlr,
    "ce+margin": cross_entropy_plus_margin,
}
