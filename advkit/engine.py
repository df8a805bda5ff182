"""The attack engine: batched, projected optimization of a perturbation with per-sample bookkeeping.

One step is one forward and one backward pass for each *active* sample. Samples leave the
active set when they meet the success criterion (if the attack stops early) or exhaust their
budget of backward passes; restarts run again only on samples not yet successful. The engine
keeps, per sample, the best point seen (successful first, then highest objective).

Non-convex sets (binary perturbations) are handled by lazy projection: the engine optimizes a
latent perturbation in the set's convex relaxation and evaluates the model at its projection
onto the real set, so every point ever evaluated or returned is feasible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from advkit.constraints import Constraint
from advkit.criteria import Criterion
from advkit.models import ModelAdapter
from advkit.objectives import Objective
from advkit.steps import StepRule

Init = Literal["zeros", "random"]


@dataclass
class Problem:
    """What to attack: a model, a batch, a threat model, a success criterion and a budget."""

    model: ModelAdapter
    x: Tensor
    y: Tensor
    constraint: Constraint
    criterion: Criterion
    target: Tensor | None = None
    budget: int | None = None  # backward passes per sample, over all steps and restarts
    generator: torch.Generator | None = None

    @property
    def n(self) -> int:
        return self.x.shape[0]


@dataclass
class EngineResult:
    """The engine's output. Its ``success`` is the engine's own claim; the runner re-checks it."""

    x_adv: Tensor
    success: Tensor
    best_objective: Tensor
    forward_counts: Tensor
    backward_counts: Tensor
    #: objective per step (rows) and sample (columns) of the first restart, NaN where a sample
    #: was not active; only when ``optimize(record=True)``.
    history: Tensor | None = None


class Update(Protocol):
    """Turns the current (latent) perturbation and its gradient into the next one.

    ``idx`` holds the global indices of the active samples, so a stateful update (momentum,
    step-size schedules) can keep per-sample state. If it has a ``start(idx, n)`` method,
    the engine calls it at the beginning of every restart.
    """

    def __call__(self, delta: Tensor, grad: Tensor, x: Tensor, idx: Tensor, constraint: Constraint) -> Tensor: ...


def _per_sample(values: Tensor | float, idx: Tensor, like: Tensor) -> Tensor | float:
    if isinstance(values, Tensor) and values.dim() > 0:
        return values[idx].view(-1, *([1] * (like.dim() - 1)))
    return values


def select(constraint: Constraint, idx: Tensor) -> Constraint:
    """The constraint restricted to the samples ``idx`` (per-sample radii are indexed)."""
    return constraint.select(idx) if hasattr(constraint, "select") else constraint


@dataclass
class GradientStep:
    """delta <- project(delta + step_size * rule(grad)); ``step_size`` is a float or a per-sample tensor."""

    rule: StepRule
    step_size: Tensor | float

    def __call__(self, delta: Tensor, grad: Tensor, x: Tensor, idx: Tensor, constraint: Constraint) -> Tensor:
        step = _per_sample(self.step_size, idx, delta)
        return constraint.project(delta + step * self.rule(grad), x)


class _Best:
    """Best point per sample: successful beats unsuccessful, then higher objective wins."""

    def __init__(self, x: Tensor) -> None:
        n = x.shape[0]
        self.x = x.clone()
        self.objective = torch.full((n,), float("-inf"), device=x.device)
        self.success = torch.zeros(n, dtype=torch.bool, device=x.device)

    def offer(self, idx: Tensor | None, x_adv: Tensor, objective: Tensor, success: Tensor) -> None:
        """Offer points for samples ``idx`` (None: the whole batch, without gathers)."""
        if idx is None:
            better = (success & ~self.success) | ((success == self.success) & (objective > self.objective))
            self.x = torch.where(better.view(-1, *([1] * (x_adv.dim() - 1))), x_adv, self.x)
            self.objective = torch.where(better, objective, self.objective)
            self.success |= success
            return
        old_success, old_objective = self.success[idx], self.objective[idx]
        better = (success & ~old_success) | ((success == old_success) & (objective > old_objective))
        self.x[idx] = torch.where(better.view(-1, *([1] * (x_adv.dim() - 1))), x_adv, self.x[idx])
        self.objective[idx] = torch.where(better, objective, old_objective)
        self.success[idx] = old_success | success


def optimize(
    problem: Problem,
    *,
    update: Update,
    objective: Objective,
    steps: int,
    init: Init = "zeros",
    restarts: int = 1,
    early_stop: bool = True,
    record: bool = False,
) -> EngineResult:
    """Run up to ``restarts`` x ``steps`` projected steps of ``update`` on ``objective`` (maximized).

    Restarts after the first start at random feasible points and run only on samples that are
    not yet successful and still have budget.
    """
    if steps < 0 or restarts < 1:
        raise ValueError(f"steps must be >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    model, x, y, target = problem.model, problem.x, problem.y, problem.target
    feasible = problem.constraint
    search = feasible if feasible.convex else feasible.relaxed()
    n, device = problem.n, x.device
    forward = torch.zeros(n, dtype=torch.long, device=device)
    backward = torch.zeros(n, dtype=torch.long, device=device)
    best = _Best(x)
    budget = problem.budget
    history = torch.full((steps, n), float("nan"), device=device) if record else None

    def evaluate(idx: Tensor, whole: bool, x_adv: Tensor, logits: Tensor, value: Tensor | None = None) -> Tensor:
        y_i = y if whole else y[idx]
        t_i = target if (whole or target is None) else target[idx]
        reached = problem.criterion.reached(logits, y_i, t_i)
        value = objective(logits, y_i, t_i, x_adv, x if whole else x[idx]) if value is None else value
        best.offer(None if whole else idx, x_adv, value, reached)
        return reached

    for restart in range(restarts):
        idx = torch.arange(n, device=device) if restart == 0 else (~best.success).nonzero().squeeze(1)
        if budget is not None:
            idx = idx[backward[idx] < budget]
        if idx.numel() == 0:
            break
        whole = idx.numel() == n  # the whole batch is active: skip gathers and scatters
        x_i = x if whole else x[idx]
        y_i = y if whole else y[idx]
        t_i = target if (whole or target is None) else target[idx]
        feasible_i, search_i = select(feasible, idx), select(search, idx)
        start = init if restart == 0 else "random"
        delta = torch.zeros_like(x_i) if start == "zeros" else search_i.random_start(x_i, problem.generator)
        if hasattr(update, "start"):
            update.start(idx, n)
        pending: list[tuple[Tensor, Tensor, Constraint, Tensor]] = []  # points updated but not yet evaluated
        for step_index in range(steps):
            point = delta if feasible.convex else feasible_i.project(delta, x_i)
            x_adv = (x_i + point).requires_grad_(True)
            logits = model(x_adv)
            loss = objective(logits, y_i, t_i, x_adv, x_i)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            if whole:
                forward += 1
                backward += 1
            else:
                forward[idx] += 1
                backward[idx] += 1
            reached = evaluate(idx, whole, x_adv.detach(), logits.detach(), loss.detach())
            if history is not None and restart == 0:
                history[step_index, idx] = loss.detach()
            delta = update(delta.detach(), grad, x_i, idx, search_i)
            keep = ~reached if early_stop else None
            if budget is not None:
                out_of_budget = backward[idx] >= budget
                leaving = out_of_budget if keep is None else out_of_budget & keep
                pending.append((idx[leaving], delta[leaving], select(feasible, idx[leaving]), x_i[leaving]))
                keep = ~out_of_budget if keep is None else keep & ~out_of_budget
            if keep is not None:
                idx, x_i, y_i, delta = idx[keep], x_i[keep], y_i[keep], delta[keep]
                t_i = None if t_i is None else t_i[keep]
                feasible_i, search_i = select(feasible, idx), select(search, idx)
                whole = False
                if idx.numel() == 0:
                    break
        pending.append((idx, delta, feasible_i, x_i))
        # One forward pass for the last update of each sample that did not stop on success.
        idx = torch.cat([p[0] for p in pending])
        if idx.numel():
            x_adv = torch.cat([xs + (d if feasible.convex else c.project(d, xs)) for _, d, c, xs in pending])
            with torch.no_grad():
                logits = model(x_adv)
            whole = len(pending) == 1 and whole
            if whole:
                forward += 1
            else:
                forward[idx] += 1
            evaluate(idx, whole, x_adv, logits)
    return EngineResult(
        x_adv=best.x,
        success=best.success,
        best_objective=best.objective,
        forward_counts=forward,
        backward_counts=backward,
        history=history,
    )
