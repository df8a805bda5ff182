"""The attack engine: batched, projected optimization of a perturbation with per-sample bookkeeping.

One step is one forward and one backward pass for each *active* sample. Samples leave the
active set when they meet the success criterion (if the attack stops early) or exhaust their
budget of backward passes; restarts run again only on samples not yet successful. The engine
keeps, per sample, the best point seen (successful first, then highest objective).

The batch is a window (``problem.window`` rows; all of them by default) over a queue of (sample, restart) pairs:
each row carries its own step counter, and a row that leaves (fooled, out of budget, done with its steps) is
replaced by the next waiting pair at once, so every step runs on a full batch; a sample's next restart joins the
queue once its last point has been evaluated. Which rows share a step changes no sample's result. Rows may come in
groups (``problem.group_size`` consecutive rows attacking one sample several ways, e.g. one per target class): a
group is admitted whole, steps in lockstep and, with early stopping, leaves at the step one of its rows succeeds; a
group wider than the window is stepped in pieces of the window's size.

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

from collections import deque
from typing import Any

import torch
from torch import Tensor

from advkit.batching import chunked
from advkit.constraints import Constraint
from advkit.kernel import (  # re-exported: plugins import them from the engine
    NOISE_STD,
    START_TO_INIT,
    CleanLogits,
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
    "CleanLogits",
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
    per_group = problem.group_size  # rows per group (see Problem.group_size): admitted, stepped and stopped together
    if per_group < 1 or n % per_group:
        raise ValueError(f"group_size must be >= 1 and divide the {n} rows, got {per_group}")
    evaluations = torch.zeros(n, dtype=torch.long, device=device)  # forward passes without a step (settle())
    backward = torch.zeros(n, dtype=torch.long, device=device)  # steps: one forward and one backward pass each
    best = _Best(x)
    budget = problem.budget
    history = torch.full((steps, n), float("nan"), device=device) if record else None
    if problem.backward_counts is None:
        problem.backward_counts = torch.zeros(n, dtype=torch.long, device=device)
    spent_before = problem.backward_counts.clone()  # passes of earlier optimize() calls count too
    if per_group > 1 and budget is not None and not bool((spent_before.view(-1, per_group).diff(dim=1) == 0).all()):
        raise ValueError("the rows of a group must start with the same backward counts (they step together)")
    backward += spent_before
    if problem.nonfinite_counts is None:
        problem.nonfinite_counts = torch.zeros(n, dtype=torch.long, device=device)
    nonfinite = torch.zeros(n, dtype=torch.long, device=device)
    seed = stream_seed(problem.generator)  # one draw per call, whatever the batch holds
    window = _Window(problem.window, n)
    observe = getattr(update, "observe", None)
    clean = problem.clean if problem.clean is not None and problem.clean.accepts(model, x) else None
    look_for_x = False  # rows of a first restart were just admitted: a step may evaluate x itself (see CleanLogits)
    queue: deque[tuple[Tensor, int]] = deque()  # (samples, restart) waiting for a place in the window

    def enqueue(idx: Tensor, restart: int) -> None:
        if budget is not None:
            idx = idx[backward[idx] < budget]
        if idx.numel():
            queue.append((idx, restart))

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

    def starts(idx: Tensor, restart: int) -> Tensor:
        """The first (latent) perturbation of restart ``restart`` for samples ``idx``."""
        x_i = x[idx]
        if restart == 0 and problem.start is not None:
            return select(search, idx).project(problem.start[idx] - x_i, x_i)
        t_i = None if target is None else target[idx]
        stream = None if seed is None else (seed, f"restart{restart}", (y[idx], t_i))
        return starting_delta(problem, x_i, select(search, idx), init if restart == 0 else "random", stream)

    pending: list[tuple[Tensor, Tensor, Tensor]] = []  # (samples, latent point, restart): updated, not evaluated
    pending_rows = 0

    def settle() -> None:
        """One forward pass for the last update of each sample that left without stopping on success (a sample that
        succeeded earlier, with early_stop=False, keeps its best successful point, its last update unevaluated);
        samples still unsuccessful with restarts left join the queue again."""
        nonlocal pending_rows
        if not pending:
            return
        idx = torch.cat([p[0] for p in pending])
        delta = torch.cat([p[1] for p in pending])
        restart_of = torch.cat([p[2] for p in pending])
        pending.clear()
        pending_rows = 0
        x_i = x[idx]
        x_adv = x_i + (delta if feasible.convex else select(feasible, idx).project(delta, x_i))
        if final == "last":
            best.x[idx], best.success[idx] = x_adv, False
            best.objective[idx] = float("-inf")
        else:
            unsolved = ~best.success[idx]
            if not bool(unsolved.all()):
                idx_u, x_u = idx[unsolved], x_adv[unsolved]
            else:
                idx_u, x_u = idx, x_adv
            if idx_u.numel():
                with torch.no_grad():  # in pieces of at most the window (rows that left over two steps may exceed it)
                    logits = chunked(model, x_u, window.size())
                evaluations[idx_u] += 1
                evaluate(idx_u, False, x_u, logits)
        if restarts > 1:
            again = ~_any_in_group(best.success[idx], per_group) & (restart_of + 1 < restarts)
            if bool(again.any()):
                idx, restart_of = idx[again], restart_of[again] + 1
                for r in range(1, restarts):
                    enqueue(idx[restart_of == r], r)

    enqueue(torch.arange(n, device=device), 0)
    # The active rows: global sample indices, their inputs, labels, targets, latent points, steps taken and restart.
    idx = torch.zeros(0, dtype=torch.long, device=device)
    x_i, y_i, t_i = x[:0], y[:0], None if target is None else target[:0]
    delta = x[:0].clone()
    taken = torch.zeros(0, dtype=torch.long, device=device)
    restart_of_row = torch.zeros(0, dtype=torch.long, device=device)
    first_restart_only = True  # every active row is in its first restart (the history records those)
    whole = False  # the active rows are the whole batch in order: skip gathers and scatters
    finishing: set[int] = set()  # iterations after which rows admitted together have taken their last step
    iteration = 0
    feasible_i = search_i = feasible
    while True:
        free = window.size() - idx.numel()
        if per_group > 1:  # whole groups only; an empty window takes one group even if it is wider (stepped in pieces)
            free = max(free - free % per_group, 0 if idx.numel() else per_group)
        if free > 0 and queue:
            groups: list[tuple[Tensor, int]] = []
            while free > 0 and queue:
                group, restart = queue.popleft()
                if group.numel() > free:
                    queue.appendleft((group[free:], restart))
                    group = group[:free]
                free -= group.numel()
                groups.append((group, restart))
            new_idx = groups[0][0] if len(groups) == 1 else torch.cat([g for g, _ in groups])
            new_delta = torch.cat([starts(g, r) for g, r in groups])
            new_restart = torch.cat([torch.full_like(g, r) for g, r in groups])
            if hasattr(update, "start"):
                update.start(new_idx, n)
            whole = idx.numel() == 0 and new_idx.numel() == n and groups[0][1] == 0 and len(groups) == 1
            first_restart_only = first_restart_only and all(r == 0 for _, r in groups)
            if whole:
                x_i, y_i, t_i = x, y, target
            else:  # the rows already in the window keep their gathered inputs; the new ones join at the end
                x_i, y_i = torch.cat([x_i, x[new_idx]]), torch.cat([y_i, y[new_idx]])
                t_i = None if target is None else torch.cat([t_i, target[new_idx]])
            idx = torch.cat([idx, new_idx])
            delta = torch.cat([delta, new_delta])
            taken = torch.cat([taken, torch.zeros_like(new_idx)])
            restart_of_row = torch.cat([restart_of_row, new_restart])
            feasible_i, search_i = (feasible, search) if whole else (select(feasible, idx), select(search, idx))
            finishing.add(iteration + steps)
            look_for_x = clean is not None and any(r == 0 for _, r in groups)
        if idx.numel() == 0 or steps == 0:
            if steps == 0 and idx.numel():  # no step to take: every admitted row is evaluated as it stands
                pending.append((idx, delta, restart_of_row))
                idx = idx[:0]
                delta, taken, restart_of_row = delta[:0], taken[:0], restart_of_row[:0]
            settle()
            if queue:
                continue
            break
        window.began(idx.numel())
        point = delta if feasible.convex else feasible_i.project(delta, x_i)
        limit = window.size()  # only a group wider than the window is stepped in pieces
        limit = limit if per_group > limit else idx.numel()
        x_adv, logits, loss, grad = _forward_backward(model, objective, x_i + point, y_i, t_i, x_i, limit)
        finite, bad = zero_nonfinite_rows(logits, grad)
        if look_for_x:  # the first step of a zero start evaluates x itself: its logits are the clean check's
            clean.record(idx, x_adv, logits)
            look_for_x = False
        if whole:
            backward += 1
            nonfinite += bad.long()
        else:
            backward.index_add_(0, idx, torch.ones_like(idx))
            nonfinite.index_add_(0, idx, bad.long())
        value = finite_objective(loss, finite)
        reached = evaluate(idx, whole, x_adv, logits, value, finite)
        if history is not None:
            if first_restart_only:
                history[taken, idx] = loss.to(history.dtype)
            else:
                first = restart_of_row == 0
                history[taken[first], idx[first]] = loss[first].to(history.dtype)
        if observe is not None:
            observe(idx, delta.detach(), value)
        delta = update(delta.detach(), grad, x_i, idx, search_i)
        taken += 1
        iteration += 1
        # Rows leave on success (early_stop), out of budget, or after their last step; the last two are evaluated later.
        finished = iteration in finishing
        leave = _any_in_group(reached, per_group) if early_stop else None  # a group's rows leave together
        unevaluated = None
        if budget is not None:
            out_of_budget = backward[idx] >= budget
            unevaluated = out_of_budget if leave is None else out_of_budget & ~leave
            leave = out_of_budget if leave is None else leave | out_of_budget
        if finished:
            finishing.discard(iteration)
            done = taken >= steps
            last = done if leave is None else done & ~leave
            unevaluated = last if unevaluated is None else unevaluated | last
            leave = done if leave is None else leave | done
        if unevaluated is not None:
            pending.append((idx[unevaluated], delta[unevaluated], restart_of_row[unevaluated]))
            pending_rows += pending[-1][0].numel()
        if leave is not None:
            keep = (~leave).nonzero().squeeze(1)  # one sync; no gather at all when every row stays
            if keep.numel() < idx.numel():
                idx, x_i, y_i, delta = idx[keep], x_i[keep], y_i[keep], delta[keep]
                taken, restart_of_row = taken[keep], restart_of_row[keep]
                t_i = None if t_i is None else t_i[keep]
                feasible_i, search_i = select(feasible, idx), select(search, idx)
                whole = False
        # Evaluate the rows that left in batches (now, when a next restart waits on them or nothing else is left).
        if pending_rows and (pending_rows >= window.size() or (restarts > 1 and not queue) or idx.numel() == 0):
            settle()
    problem.backward_counts = backward.clone()
    problem.nonfinite_counts = problem.nonfinite_counts + nonfinite
    return EngineResult(
        x_adv=best.x,
        success=best.success,
        best_objective=best.objective,
        forward_counts=backward - spent_before + evaluations,
        backward_counts=backward - spent_before,
        history=history,
        nonfinite_counts=nonfinite,
    )


def _forward_backward(
    model, objective: Objective, x_adv: Tensor, y: Tensor, target: Tensor | None, x: Tensor, limit: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step's passes: the points, their logits, the objective per row and its input gradient (all detached).
    More rows than ``limit`` (a group wider than the window) go through the model in pieces of at most ``limit``."""
    rows = x_adv.shape[0]
    if rows <= limit:
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        loss = objective(logits, y, target, x_adv, x)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return x_adv.detach(), logits.detach(), loss.detach(), grad
    parts = [
        _forward_backward(
            model, objective, x_adv[i : i + limit], y[i : i + limit],
            None if target is None else target[i : i + limit], x[i : i + limit], limit,
        )
        for i in range(0, rows, limit)
    ]  # fmt: skip
    return tuple(torch.cat(part) for part in zip(*parts))  # type: ignore[return-value]


def _any_in_group(flags: Tensor, group: int) -> Tensor:
    """Per row: does any row of its group have the flag? (Rows are whole groups of ``group`` consecutive rows.)"""
    if group == 1:
        return flags
    return flags.view(-1, group).any(1).repeat_interleave(group)


class _Window:
    """How many rows the engine steps at once: ``problem.window`` (None: every sample; an int; or an object with
    ``window_size()`` and ``step_began(rows)``, e.g. :class:`advkit.batching.ChunkPlan`, which measures sizes)."""

    def __init__(self, window: Any, n: int) -> None:
        self.plan = window if hasattr(window, "window_size") else None
        self.fixed = n if window is None or self.plan is not None else max(1, int(window))

    def size(self) -> int:
        return max(1, self.plan.window_size()) if self.plan is not None else self.fixed

    def began(self, rows: int) -> None:
        if self.plan is not None:
            self.plan.step_began(rows)
