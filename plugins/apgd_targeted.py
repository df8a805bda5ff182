"""Built-in plugin: a stronger targeted attack (APGD-style) under the same budget (S10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.constraints import Constraint
from advkit.engine import Problem, optimize
from advkit.objectives import negative_target_cross_entropy


def target_margin(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """z_target - max_{j != target} z_j: positive exactly when the target is the top class."""
    if target is None:
        raise ValueError("the target-margin objective needs target classes")
    target_logit = logits.gather(1, target.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, target.view(-1, 1), float("-inf"))
    return target_logit - others.amax(1)


def target_ce_plus_margin(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """-CE(target) + target margin: CE's gradient far from the target, the margin's near the boundary."""
    return negative_target_cross_entropy(logits, y, target) + target_margin(logits, y, target)


class MomentumSignStep:
    """APGD's update: a sign step of per-sample size eta, then momentum 1 - alpha on the last move.

    z = P(d + eta * sign(g));  d' = P(d + alpha * (z - d) + (1 - alpha) * (d - d_prev)), and d' = z
    on a restart's first step.
    eta starts at ``initial`` and halves at the checkpoints (fractions of ``steps``).
    """

    def __init__(self, initial: Tensor | float, steps: int, alpha: float = 0.75,
                 checkpoints: tuple[float, ...] = (0.25, 0.5, 0.75)) -> None:
        self.initial, self.steps, self.alpha = initial, steps, alpha
        self.milestones = [max(1, int(round(c * steps))) for c in checkpoints]
        self.previous: Tensor | None = None
        self.count: Tensor | None = None

    def start(self, idx: Tensor, n: int) -> None:
        if self.count is None:
            self.count = torch.zeros(n, dtype=torch.long, device=idx.device)
        self.count[idx] = 0
        if self.previous is not None:
            self.previous[idx] = 0

    def _eta(self, idx: Tensor, like: Tensor) -> Tensor:
        halvings = sum((self.count[idx] >= m).long() for m in self.milestones)
        base = self.initial[idx] if isinstance(self.initial, Tensor) and self.initial.dim() else self.initial
        eta = base * torch.pow(0.5, halvings.to(like.dtype))
        return eta.view(-1, *([1] * (like.dim() - 1)))

    def __call__(self, delta: Tensor, grad: Tensor, x: Tensor, idx: Tensor, constraint: Constraint) -> Tensor:
        if self.previous is None:
            self.previous = torch.zeros((self.count.shape[0], *delta.shape[1:]), dtype=delta.dtype, device=delta.device)
        z = constraint.project(delta + self._eta(idx, delta) * grad.sign(), x)
        first = (self.count[idx] == 0).view(-1, *([1] * (delta.dim() - 1)))
        momentum = constraint.project(delta + self.alpha * (z - delta) + (1 - self.alpha) * (delta - self.previous[idx]), x)
        moved = torch.where(first, z, momentum)  # APGD's first step has no momentum
        self.previous[idx] = delta
        self.count[idx] += 1
        return moved


@dataclass(kw_only=True)
class APGDTargeted(Attack):
    """Targeted APGD-style attack: CE + logit-margin loss, momentum, step-size schedule, restarts (S10).

    Maximizes -CE(target) + (z_target - max_{j != target} z_j) with sign steps whose size starts
    at ``initial_step`` x eps and halves at 25%, 50% and 75% of each restart's steps, with
    momentum 0.25 on the previous move
    (alpha = 0.75). The budget is split over restarts: ``steps`` per restart; later restarts start
    at random points and run only on samples that have not reached the target. Per sample the
    best point is kept. Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", arXiv:2003.01690 (simplified schedule).

    Parameters:
        steps (int, 25): steps per restart.
        restarts (int, 4): restarts (total cost at most steps x restarts backward passes, 100 by default).
        initial_step (float, 1.0): first step size as a multiple of the L-inf radius.
        alpha (float, 0.75): weight of the new step against momentum.
        confidence (float, 0.0): success needs the target at probability >= this.
    """

    name = "apgd_targeted"
    targeted = True
    steps: int = 25
    restarts: int = 4
    initial_step: float = 1.0
    alpha: float = 0.75
    confidence: float = 0.0

    def run(self, problem: Problem) -> Tensor:
        radius = problem.constraint.linf_radius
        if radius is None:
            radius = problem.model.range_width / 10
        update = MomentumSignStep(self.initial_step * radius, self.steps, self.alpha)
        return optimize(problem, update=update, objective=target_ce_plus_margin, steps=self.steps, init="zeros",
                        restarts=self.restarts, early_stop=True).x_adv


@advkit.hookimpl
def register_attacks(register):
    register(APGDTargeted)
