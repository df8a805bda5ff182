"""The attack engine: batched, projected optimization of a perturbation with per-sample bookkeeping.

One step is one forward and one backward pass for each *active* sample. Samples leave the
active set when they meet the success criterion (if the attack stops early) or exhaust their
budget of backward passes; restarts run again only on samples not yet successful. The engine
keeps, per sample, the best point seen (successful first, then highest objective).

Non-convex sets (binary perturbations) are handled by lazy projection: the engine optimizes a
latent perturbation in the set's convex relaxation and evaluates the model at its projection
onto the real set, so every point ever evaluated or returned is feasible.

Per-sample determinism: random starts ("random", "noise" and the random restarts) are drawn
per sample from :class:`advkit.rng.SampleStreams`, keyed by one base seed drawn from
``problem.generator`` per ``optimize()`` call, the restart and the sample's own content, so a
batch gives the same per-sample results as its slices (up to the floating-point differences
that batched kernels may show between batch sizes).

Non-finite values: a step whose logits or input gradient are NaN or inf for a sample is
counted in ``problem.nonfinite_counts``; that sample's gradient is set to zero for the step,
its point never counts as successful and its objective counts as -inf, so no such point is
ever kept as the best one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advkit.constraints import Constraint
from advkit.kernel import (  # re-exported: plugins import them from the engine
    NOISE_STD,
    START_TO_INIT,
    EngineResult,
    Final,
    GradientStep,
    Init,
    Problem,
    Update,
    Variable,
    finite_objective,
    finite_rows,
    finite_sums,
    select,
    starting_delta,
    stream_seed,
    zero_nonfinite_rows,
)
from advkit.objectives import Objective
from advkit.universal import optimize_universal

__all__ = [
    "NOISE_STD",
    "START_TO_INIT",
    "EngineResult",
    "Final",
    "GradientStep",
    "Init",
    "Problem",
    "Update",
    "Variable",
    "finite_objective",
    "finite_rows",
    "finite_sums",
    "optimize",
    "select",
    "starting_delta",
    "stream_seed",
    "zero_nonfinite_rows",
]


class _Best:
    """Best point per sample: successful beats unsuccessful, then higher objective wins."""

    def __init__(self, x: Tensor) -> None:
        n = x.shape[0]
        self.x = x.clone()
        # float64 holds float32 and float64 objectives alike (float64 models give float64 losses)
        self.objective = torch.full((n,), float("-inf"), dtype=torch.float64, device=x.device)
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
    variable: Variable = "perturbation",
    final: Final = "best",
    constraint: Constraint | None = None,
    **universal_options: Any,
) -> EngineResult:
    """Run up to ``restarts`` x ``steps`` projected steps of ``update`` on ``objective`` (maximized).

    Restarts after the first start at random feasible points and run only on samples that are
    not yet successful and still have budget. ``variable="image"`` optimizes whole images from
    ``init`` ("blank" or "noise"; the inputs are the regularizers' reference);
    ``variable="universal"`` optimizes one perturbation shared by the batch
    (:func:`advkit.universal.optimize_universal`, which takes ``universal_options``).
    ``final="last"`` returns each sample's last point without evaluating it (one forward pass
    less per sample, as FGSM-style one-step attacks define their output); those samples'
    ``success`` is False and ``best_objective`` -inf until the runner's re-check.
    ``constraint`` optimizes over a subset of ``problem.constraint`` (an attack that tightens the
    threat model, e.g. to binary perturbations); the per-sample bookkeeping stays on ``problem``.
    """
    if steps < 0 or restarts < 1:
        raise ValueError(f"steps must be >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    if variable == "universal":
        if constraint is not None:
            raise TypeError("constraint= does not apply to variable='universal' (its set is the problem's)")
        return optimize_universal(
            problem,
            update=update,
            objective=objective,
            steps=steps,
            init=init,
            early_stop=early_stop,
            record=record,
            **universal_options,
        )
    if universal_options:
        raise TypeError(f"options {sorted(universal_options)} only apply to variable='universal'")
    if final not in ("best", "last"):
        raise ValueError(f"unknown final {final!r}; valid: best, last")
    if variable not in ("perturbation", "image"):
        raise ValueError(f"unknown variable {variable!r}; valid: perturbation, image, universal")
    model, x, y, target = problem.model, problem.x, problem.y, problem.target
    feasible = problem.constraint if constraint is None else constraint
    search = feasible if feasible.convex else feasible.relaxed()
    n, device = problem.n, x.device
    forward = torch.zeros(n, dtype=torch.long, device=device)
    backward = torch.zeros(n, dtype=torch.long, device=device)
    best = _Best(x)
    budget = problem.budget
    history = torch.full((steps, n), float("nan"), device=device) if record else None
    if problem.backward_counts is None:
        problem.backward_counts = torch.zeros(n, dtype=torch.long, device=device)
    spent_before = problem.backward_counts.clone()  # passes of earlier optimize() calls count too
    backward += spent_before
    if problem.nonfinite_counts is None:
        problem.nonfinite_counts = torch.zeros(n, dtype=torch.long, device=device)
    nonfinite = torch.zeros(n, dtype=torch.long, device=device)
    seed = stream_seed(problem.generator)  # one draw per call, whatever the batch holds

    def evaluate(
        idx: Tensor,
        whole: bool,
        x_adv: Tensor,
        logits: Tensor,
        value: Tensor | None = None,
        finite: Tensor | None = None,
    ) -> Tensor:
        """Offer the points to the best-so-far; ``value`` and ``finite``, when given, are the step's own
        (already -inf where the logits were not finite)."""
        y_i = y if whole else y[idx]
        t_i = target if (whole or target is None) else target[idx]
        if finite is None:
            finite = finite_rows(logits)
        reached = problem.criterion.reached(logits, y_i, t_i) & finite
        if value is None:
            value = finite_objective(objective(logits, y_i, t_i, x_adv, x if whole else x[idx]), finite)
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
        if restart == 0 and problem.start is not None:
            delta = search_i.project((problem.start if whole else problem.start[idx]) - x_i, x_i)
        else:
            stream = None if seed is None else (seed, f"restart{restart}", (y_i, t_i))
            delta = starting_delta(problem, x_i, search_i, init if restart == 0 else "random", stream)
        if hasattr(update, "start"):
            update.start(idx, n)
        observe = getattr(update, "observe", None)
        pending: list[tuple[Tensor, Tensor, Constraint, Tensor]] = []  # points updated but not yet evaluated
        for step_index in range(steps):
            point = delta if feasible.convex else feasible_i.project(delta, x_i)
            x_adv = (x_i + point).requires_grad_(True)
            logits = model(x_adv)
            loss = objective(logits, y_i, t_i, x_adv, x_i)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            finite, bad = zero_nonfinite_rows(logits.detach(), grad)
            if whole:
                forward += 1
                backward += 1
                nonfinite += bad.long()
            else:
                forward[idx] += 1
                backward[idx] += 1
                nonfinite[idx] += bad.long()
            value = finite_objective(loss.detach(), finite)
            reached = evaluate(idx, whole, x_adv.detach(), logits.detach(), value, finite)
            if history is not None and restart == 0:
                history[step_index, idx] = loss.detach().to(history.dtype)
            if observe is not None:
                observe(idx, delta.detach(), value)
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
        # One forward pass for the last update of each sample that did not stop on success; a sample that
        # succeeded earlier (early_stop=False) keeps its best successful point, its last update unevaluated.
        idx = torch.cat([p[0] for p in pending])
        if idx.numel():
            x_adv = torch.cat([xs + (d if feasible.convex else c.project(d, xs)) for _, d, c, xs in pending])
            if final == "last":
                best.x[idx], best.success[idx] = x_adv, False
                best.objective[idx] = float("-inf")
                continue
            whole = len(pending) == 1 and whole
            unsolved = ~best.success[idx]
            if not bool(unsolved.all()):
                idx, x_adv, whole = idx[unsolved], x_adv[unsolved], False
                if idx.numel() == 0:
                    continue
            with torch.no_grad():
                logits = model(x_adv)
            if whole:
                forward += 1
            else:
                forward[idx] += 1
            evaluate(idx, whole, x_adv, logits)
    problem.backward_counts = backward.clone()
    problem.nonfinite_counts = problem.nonfinite_counts + nonfinite
    return EngineResult(
        x_adv=best.x,
        success=best.success,
        best_objective=best.objective,
        forward_counts=forward,
        backward_counts=backward - spent_before,
        history=history,
        nonfinite_counts=nonfinite,
    )
