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

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from advkit.constraints import Constraint
from advkit.criteria import Criterion
from advkit.models import ModelAdapter
from advkit.objectives import Objective
from advkit.rng import SampleStreams, draw
from advkit.steps import StepRule

#: Where optimization starts. "zeros": the input itself (zero perturbation); "random": a random
#: feasible perturbation; "blank": the zero image of the model's units (clipped to the box);
#: "noise": Gaussian noise around the middle of the model's range (std 0.1 x range, clipped).
Init = Literal["zeros", "random", "blank", "noise"]
#: What is optimized: one perturbation per sample, a whole image per sample (the input is then
#: only the reference for regularizers such as beta * mse(x_adv, x)), or one perturbation
#: shared by every sample of the batch (see :mod:`advkit.universal`).
Variable = Literal["perturbation", "image", "universal"]
#: What a sample returns at the end: its best evaluated point, or its last point unevaluated.
Final = Literal["best", "last"]
NOISE_STD = 0.1
#: Starting points as image-optimizing attacks name them ("input": the images passed in).
START_TO_INIT = {"input": "zeros", "noise": "noise", "blank": "blank"}


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
    #: Per-sample backward passes spent by the engine, accumulated over every optimize() call
    #: on this problem (the runner reports the maximum and enforces the budget per sample).
    backward_counts: Tensor | None = None
    #: Tensors an attack wants to hand back besides x_adv (e.g. the universal perturbation).
    artifacts: dict[str, Any] = field(default_factory=dict)
    #: A warm start (e.g. the result of a smaller eps in a sweep): the first restart of every
    #: optimize() call starts at this point, projected onto the set, instead of its ``init``.
    start: Tensor | None = None
    #: Per-sample count of engine steps whose logits or input gradient had a NaN or inf,
    #: accumulated over every optimize() call on this problem (None until the engine runs).
    nonfinite_counts: Tensor | None = None

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
    #: The shared perturbation, shape (1, *x.shape[1:]), when ``variable="universal"``.
    shared: Tensor | None = None
    #: Per-sample steps of this call whose logits or input gradient were not finite.
    nonfinite_counts: Tensor | None = None


class Update(Protocol):
    """Turns the current (latent) perturbation and its gradient into the next one.

    ``idx`` holds the global indices of the active samples, so a stateful update (momentum,
    step-size schedules) can keep per-sample state. If it has a ``start(idx, n)`` method,
    the engine calls it at the beginning of every restart; if it has ``observe(idx, delta, loss)``,
    the engine reports each evaluated (latent) perturbation and its objective before asking for
    the next one (adaptive step-size schedules use this).
    """

    def __call__(self, delta: Tensor, grad: Tensor, x: Tensor, idx: Tensor, constraint: Constraint) -> Tensor: ...


def _per_sample(values: Tensor | float, idx: Tensor, like: Tensor) -> Tensor | float:
    """Per-sample values (e.g. step sizes from per-sample radii) for the active samples, in like's dtype."""
    if isinstance(values, Tensor) and values.dim() > 0:
        return values.to(device=like.device)[idx].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
    if isinstance(values, Tensor):
        return values.to(device=like.device, dtype=like.dtype)
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


def starting_delta(problem: Problem, x: Tensor, search: Constraint, init: str,
                   stream: tuple[int, str, tuple] | None = None) -> Tensor:
    """The first (latent) perturbation for inputs ``x``, projected onto the search set ``search``.

    With ``stream = (seed, label, tags)`` random starts are drawn per sample (see
    :class:`advkit.rng.SampleStreams`; ``tags``: per-sample labels and targets of ``x``'s rows):
    each sample's start depends only on the seed, the label and its own content. Without it they
    are drawn batch-wise from ``problem.generator``.
    """
    if init == "zeros":
        return torch.zeros_like(x)
    generator = problem.generator
    if stream is not None and init in ("random", "noise"):
        generator = SampleStreams(x, stream[0], f"{stream[1]}:{init}", stream[2])
    if init == "random":
        return search.random_start(x, generator)
    low, high = problem.model.bounds
    if init == "blank":
        start = torch.zeros_like(x).clamp(low, high)
    elif init == "noise":
        noise = draw("randn", x.shape, generator, dtype=x.dtype, device=x.device)
        start = ((low + high) / 2 + NOISE_STD * (high - low) * noise).clamp(low, high)
    else:
        raise ValueError(f"unknown init {init!r}; valid: zeros, random, blank, noise")
    return search.project(start - x, x)


def stream_seed(generator: torch.Generator | None) -> int | None:
    """One base seed for this optimize() call's per-sample streams, drawn from ``generator``
    (None without a generator: starts then come batch-wise from the global RNG, as before)."""
    if generator is None:
        return None
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)[0])


def finite_rows(t: Tensor) -> Tensor:
    """Per-sample: every element of the row is finite (bool (N,))."""
    return torch.isfinite(t.flatten(1)).all(1)


def finite_sums(t: Tensor) -> Tensor:
    """Per-sample: the row's sum is finite, i.e. no element is NaN or inf (one reduction instead of an
    elementwise check; a row of finite values whose sum overflows also counts as not finite).
    Half-precision rows are summed in float32."""
    wide = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype
    return torch.isfinite(t.flatten(1).sum(1, dtype=wide))


def zero_nonfinite_rows(logits: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample: were the logits finite, and did the step meet a NaN/inf (logits or input gradient)?
    The gradient rows of such samples are zeroed in place, so they make no step."""
    finite = finite_rows(logits)
    bad = ~(finite & finite_sums(grad))
    grad.masked_fill_(bad.view(-1, *([1] * (grad.dim() - 1))), 0.0)
    return finite, bad


def finite_objective(value: Tensor, finite: Tensor) -> Tensor:
    """The objective with -inf where the logits were not finite or the value is NaN."""
    return torch.where(finite & ~torch.isnan(value), value, torch.full_like(value, float("-inf")))


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
        from advkit.universal import optimize_universal

        if constraint is not None:
            raise TypeError("constraint= does not apply to variable='universal' (its set is the problem's)")
        return optimize_universal(problem, update=update, objective=objective, steps=steps, init=init,
                                  early_stop=early_stop, record=record, **universal_options)
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

    def evaluate(idx: Tensor, whole: bool, x_adv: Tensor, logits: Tensor, value: Tensor | None = None,
                 finite: Tensor | None = None) -> Tensor:
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
