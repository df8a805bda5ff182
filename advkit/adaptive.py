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
    evaluated point's objective through :meth:`observe`. All state is per sample: scalars in ``state`` (one entry
    per sample), and the input-sized points (the previous point, the best point and its gradient) in ``rows``, one
    row per *active* sample, so they take the engine window's size, not the batch's: a sample admitted by
    :meth:`start` takes a free row on its first step (the rows of samples absent from that step are free).
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
        self.rows: dict[str, Tensor] = {}  # input-sized state, one row per active sample (see row_of)
        self.row_of: Tensor | None = None  # per sample: its row in ``rows``, -1 until its first step after start()
        self._waiting: Tensor | None = None  # per sample: started, no row yet
        self._unplaced = 0  # how many samples are waiting for a row
        self._improved: Tensor | None = None

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
            self.row_of = torch.full((n,), -1, dtype=torch.long, device=device)
            self._waiting = torch.zeros(n, dtype=torch.bool, device=device)
        initial = self.initial[idx] if isinstance(self.initial, Tensor) and self.initial.dim() else self.initial
        s["count"][idx] = 0
        s["increases"][idx] = 0
        s["eta"][idx] = torch.as_tensor(initial, dtype=s["eta"].dtype, device=idx.device)
        s["eta_at_mark"][idx] = s["eta"][idx]
        s["best_loss"][idx] = float("-inf")
        s["best_at_mark"][idx] = float("-inf")
        self.row_of[idx] = -1  # a fresh (zeroed) row on its first step
        self._waiting[idx] = True
        self._unplaced = int(self._waiting.sum())  # once per admission, not per step

    def _rows_of(self, idx: Tensor, like: Tensor) -> Tensor:
        """The state rows of the active samples ``idx`` (every sample the engine steps now), assigning zeroed free
        rows to samples just admitted; the row count grows to the most samples ever active at once."""
        if self._unplaced:
            self.is_checkpoint, self.span = self.is_checkpoint.to(like.device), self.span.to(like.device)
            rows = self.row_of[idx]
            new = self._waiting[idx]
            waiting = int(new.sum())
            if waiting:
                capacity = self.rows["previous"].shape[0] if self.rows else 0
                taken = torch.zeros(capacity, dtype=torch.bool, device=like.device)
                taken[rows[~new]] = True
                free = (~taken).nonzero().squeeze(1)
                if free.numel() < waiting:
                    grow = waiting - free.numel()
                    for key in ("previous", "best_delta", "best_grad"):
                        more = torch.zeros((grow, *like.shape[1:]), dtype=like.dtype, device=like.device)
                        self.rows[key] = torch.cat([self.rows[key], more]) if key in self.rows else more
                    free = torch.cat([free, torch.arange(capacity, capacity + grow, device=like.device)])
                chosen = free[:waiting]
                for key in ("previous", "best_delta", "best_grad"):
                    self.rows[key][chosen] = 0
                self.row_of[idx[new]] = chosen
                self._waiting[idx[new]] = False
                self._unplaced -= waiting
        return self.row_of[idx]

    def observe(self, idx: Tensor, delta: Tensor, loss: Tensor) -> None:
        """Record the objective of the point just evaluated (counts rises, keeps the best point)."""
        s, r = self.state, self.rows
        rows = self._rows_of(idx, delta)
        loss = loss.to(s["last_loss"].dtype)  # float64 models give float64 losses
        rose = (loss > s["last_loss"][idx]) & (s["count"][idx] > 0)
        s["increases"][idx] += rose.to(s["increases"].dtype)
        s["last_loss"][idx] = loss
        improved = loss > s["best_loss"][idx]
        s["best_loss"][idx] = torch.where(improved, loss, s["best_loss"][idx])
        r["best_delta"][rows] = torch.where(_rows(improved, delta), delta, r["best_delta"][rows])
        self._improved = improved

    def _halve_at_checkpoint(self, idx: Tensor, count: Tensor) -> Tensor:
        """Apply the checkpoint rule to samples ``idx`` (``count``: their steps so far); returns which of them halved.
        Computed on every step, with no host sync: whether any row is at a checkpoint is not known on the host."""
        s = self.state
        count = count.clamp(max=self.steps)
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
        s, r = self.state, self.rows
        rows = self._rows_of(idx, delta)
        improved = (
            self._improved
            if self._improved is not None
            else torch.ones(len(idx), dtype=torch.bool, device=delta.device)
        )
        r["best_grad"][rows] = torch.where(_rows(improved, grad), grad, r["best_grad"][rows])
        self._improved = None
        count = s["count"][idx]
        halve = self._halve_at_checkpoint(idx, count)
        base = torch.where(_rows(halve, delta), r["best_delta"][rows], delta)
        direction = torch.where(_rows(halve, grad), r["best_grad"][rows], grad).sign()
        fresh = (count == 0) | halve
        eta = s["eta"][idx].to(delta.dtype).view(-1, *([1] * (delta.dim() - 1)))
        z = constraint.project(base + eta * direction, x)
        momentum = constraint.project(
            base + self.alpha * (z - base) + (1 - self.alpha) * (base - r["previous"][rows]), x
        )
        r["previous"][rows] = base
        s["count"][idx] = count + 1
        return torch.where(_rows(fresh, delta), z, momentum)


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def step_for(problem, initial_step: float, steps: int, alpha: float, rho: float) -> AdaptiveMomentumStep:
    """APGD's update for ``problem``: the first step is ``initial_step`` x the L-inf radius (or x a tenth of
    the model's range when the set has no L-inf radius)."""
    radius = problem.constraint.linf_radius
    if radius is None:
        radius = problem.model.range_width / 10
    return AdaptiveMomentumStep(initial_step * radius, steps, alpha, rho)
