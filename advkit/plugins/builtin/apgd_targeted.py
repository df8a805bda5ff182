"""Built-in plugin: a stronger targeted attack (APGD-style) under the same budget (S10)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import advkit
from advkit.adaptive import step_for
from advkit.attack import Attack
from advkit.engine import Problem, optimize
from advkit.objectives import logit_margin, negative_target_cross_entropy
from advkit.params import MAX_RESTARTS, MAX_STEPS, param


def target_margin(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """z_target - max_{j != target} z_j: positive exactly when the target is the top class."""
    if target is None:
        raise ValueError("the target-margin objective needs target classes")
    return -logit_margin(logits, target)  # the untargeted margin with the target as the "label", negated


def target_ce_plus_margin(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """-CE(target) + target margin: CE's gradient far from the target, the margin's near the boundary."""
    return negative_target_cross_entropy(logits, y, target) + target_margin(logits, y, target)


def targeted_dlr(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """Croce & Hein's targeted DLR, maximized: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2); scale-invariant."""
    if target is None:
        raise ValueError("the targeted DLR objective needs target classes")
    if logits.shape[1] < 4:
        raise ValueError("the targeted DLR objective needs at least 4 classes")
    ordered = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    z_t = logits.gather(1, target.view(-1, 1)).squeeze(1)
    return -(z_y - z_t) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)


LOSSES = {
    "ce+margin": target_ce_plus_margin,
    "dlr": targeted_dlr,
    "ce": negative_target_cross_entropy,
    "margin": target_margin,
}


@dataclass(kw_only=True)
class APGDTargeted(Attack):
    """Targeted APGD: adaptive step size with momentum, a CE + logit-margin (or DLR) loss, restarts (S10).

    Maximizes -CE(target) + (z_target - max_{j != target} z_j) (``loss="dlr"``: the targeted
    DLR loss) with sign steps of size eta and momentum 0.25 on the previous move (alpha = 0.75).
    eta starts at ``initial_step`` x eps and halves at APGD's checkpoints (22%, 41%, 57%, ... of
    the steps) where the loss stalled; a halving sample restarts from its best point. The budget
    is ``steps`` x ``restarts`` backward passes; later restarts start at random points and run
    only on samples that have not reached the target. Per sample the best point is kept. Croce &
    Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", arXiv:2003.01690.

    Parameters:
        steps (int, 100): steps per restart.
        restarts (int, 1): restarts (total cost at most steps x restarts backward passes).
        initial_step (float, 2.0): first step size as a multiple of the L-inf radius (APGD uses 2).
        alpha (float, 0.75): weight of the new step against momentum.
        rho (float, 0.75): halve eta at a checkpoint if the loss rose in fewer than this share of steps.
        loss (str, "ce+margin"): "ce+margin", "dlr", "ce" or "margin".
        confidence (float, 0.0): success needs the target at probability >= this.
    """

    name = "apgd_targeted"
    windowed = True
    targeted = True
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="steps per restart")
    restarts: int = param(1, ge=1, le=MAX_RESTARTS, doc="restarts")
    initial_step: float = param(2.0, gt=0, doc="first step size as a multiple of the L-inf radius")
    alpha: float = param(0.75, gt=0, le=1, doc="weight of the new step against momentum")
    rho: float = param(
        0.75, ge=0, le=1, doc="halve the step at a checkpoint if the loss rose in fewer than this share of steps"
    )
    loss: str = param("ce+margin", choices=lambda: LOSSES, doc="the targeted loss descended")
    confidence: float = param(0.0, ge=0, lt=1, doc="success needs the target at probability >= this")

    def run(self, problem: Problem) -> Tensor:
        update = step_for(problem, self.initial_step, self.steps, self.alpha, self.rho)
        return optimize(
            problem,
            update=update,
            objective=LOSSES[self.loss],
            steps=self.steps,
            init="zeros",
            restarts=self.restarts,
            early_stop=True,
        ).x_adv


@advkit.hookimpl
def register_attacks(register):
    register(APGDTargeted)
