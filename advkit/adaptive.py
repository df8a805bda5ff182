"""APGD's adaptive step: sign steps with momentum and a step size that halves when progress stalls.

Shared by the APGD attacks (``apgd`` untargeted, ``apgd_targeted``). Croce & Hein, 2020,
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", arXiv:2003.01690.
"""

from __future__ import annotations

import torch
from torch import Tensor

from advkit.constraints import Constraint

__all__ = ["AdaptiveMomentumStep", "checkpoints", "step_for"]


def checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints w_j = ceil(p_j * steps): p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = sorted({min(steps, int(-(-q * steps // 1))) for q in p if q <= 1})
    return [w for w in marks if w < steps] if steps else [0]


class AdaptiveMomentumStep:
    """APGD's update: sign steps with momentum and a step size that halves when progress stalls.

    z = P(d + eta * sign(g));  d' = P(d + alpha * (z - d) + (1 - alpha) * (d - d_prev))
    (d' = z on a restart's first step). At each checkpoint w_j (see :func:`checkpoints`) a
    sample's eta halves if its objective rose in fewer than ``rho`` of the steps since w_{j-1},
    or if neither eta nor its best objective changed since w_{j-1}; a halving sample restarts
    from its best point (and that point's gradient), without momentum. The engine reports each
    evaluated point's objective through :meth:`observe`. All state is per sample.
    """

    def __init__(self, initial: Tensor | float, steps: int, alpha: float = 0.75, rho: float = 0.75) -> None:
        self.initial, self.steps, self.alpha, self.rho = initial, steps, alpha, rho
        marks = checkpoints(steps)
        self.is_checkpoint = torch.zeros(steps + 1, dtype=torch.bool)
        self.span = torch.ones(steps + 1)
        for previous, mark in zip(marks, marks[1:]):
            self.is_checkpoint[mark] = True
            self.span[mark] = mark - previous
        self.state: dict[str, Tensor] = {}
        self._improved: Tensor | None = None

    def _allocate(self, n: int, like: Tensor) -> None:
        shape, device = (n, *like.shape[1:]), like.device
        self.is_checkpoint, self.span = self.is_checkpoint.to(device), self.span.to(device)
        for key in ("previous", "best_delta", "best_grad"):
            self.state[key] = torch.zeros(shape, dtype=like.dtype, device=device)

    def start(self, idx: Tensor, n: int) -> None:
        """Reset the state of samples ``idx`` (of ``n``) for a new restart."""
        s = self.state
        if "count" not in s:
            device = idx.device
            s["count"] = torch.zeros(n, dtype=torch.long, device=device)
            s["eta"] = torch.zeros(n, device=device)
            for key in ("increases", "eta_at_mark"):
                s[key] = torch.zeros(n, device=device)
            for key in ("best_loss", "last_loss", "best_at_mark"):  # float64 holds float32 and float64 losses
                s[key] = torch.zeros(n, dtype=torch.float64, device=device)
        initial = self.initial[idx] if isinstance(self.initial, Tensor) and self.initial.dim() else self.initial
        s["count"][idx] = 0
        s["increases"][idx] = 0
        s["eta"][idx] = torch.as_tensor(initial, dtype=s["eta"].dtype, device=idx.device)
        s["eta_at_mark"][idx] = s["eta"][idx]
        s["best_loss"][idx] = float("-inf")
        s["best_at_mark"][idx] = float("-inf")
        if "previous" in s:
            s["previous"][idx] = 0

    def observe(self, idx: Tensor, delta: Tensor, loss: Tensor) -> None:
        """Record the objective of the point just evaluated (counts rises, keeps the best point)."""
        s = self.state
        if "previous" not in s:
            self._allocate(s["count"].shape[0], delta)
        loss = loss.to(s["last_loss"].dtype)  # float64 models give float64 losses
        rose = (loss > s["last_loss"][idx]) & (s["count"][idx] > 0)
        s["increases"][idx] += rose.to(s["increases"].dtype)
        s["last_loss"][idx] = loss
        improved = loss > s["best_loss"][idx]
        s["best_loss"][idx] = torch.where(improved, loss, s["best_loss"][idx])
        s["best_delta"][idx] = torch.where(_rows(improved, delta), delta, s["best_delta"][idx])
        self._improved = improved

    def _halve_at_checkpoint(self, idx: Tensor) -> Tensor:
        """Apply the checkpoint rule to samples ``idx``; returns which of them halved."""
        s = self.state
        count = s["count"][idx].clamp(max=self.steps)
        at_mark = self.is_checkpoint[count]
        stalled = s["increases"][idx] < self.rho * self.span[count]
        frozen = (s["eta_at_mark"][idx] == s["eta"][idx]) & (s["best_at_mark"][idx] == s["best_loss"][idx])
        halve = at_mark & (stalled | frozen)
        s["eta"][idx] = torch.where(halve, s["eta"][idx] / 2, s["eta"][idx])
        s["eta_at_mark"][idx] = torch.where(at_mark, s["eta"][idx], s["eta_at_mark"][idx])
        s["best_at_mark"][idx] = torch.where(at_mark, s["best_loss"][idx], s["best_at_mark"][idx])
        s["increases"][idx] = torch.where(at_mark, torch.zeros_like(s["increases"][idx]), s["increases"][idx])
        return halve

    def __call__(self, delta: Tensor, grad: Tensor, x: Tensor, idx: Tensor, constraint: Constraint) -> Tensor:
        s = self.state
        if "previous" not in s:
            self._allocate(s["count"].shape[0], delta)
        improved = (
            self._improved
            if self._improved is not None
            else torch.ones(len(idx), dtype=torch.bool, device=delta.device)
        )
        s["best_grad"][idx] = torch.where(_rows(improved, grad), grad, s["best_grad"][idx])
        self._improved = None
        halve = self._halve_at_checkpoint(idx)
        base = torch.where(_rows(halve, delta), s["best_delta"][idx], delta)
        direction = torch.where(_rows(halve, grad), s["best_grad"][idx], grad).sign()
        eta = s["eta"][idx].to(delta.dtype).view(-1, *([1] * (delta.dim() - 1)))
        z = constraint.project(base + eta * direction, x)
        no_momentum = _rows((s["count"][idx] == 0) | halve, delta)
        momentum = constraint.project(
            base + self.alpha * (z - base) + (1 - self.alpha) * (base - s["previous"][idx]), x
        )
        s["previous"][idx] = base
        s["count"][idx] += 1
        return torch.where(no_momentum, z, momentum)


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def step_for(problem, initial_step: float, steps: int, alpha: float, rho: float) -> AdaptiveMomentumStep:
    """APGD's update for ``problem``: the first step is ``initial_step`` x the L-inf radius (or x a tenth of
    the model's range when the set has no L-inf radius)."""
    radius = problem.constraint.linf_radius
    if radius is None:
        radius = problem.model.range_width / 10
    return AdaptiveMomentumStep(initial_step * radius, steps, alpha, rho)
