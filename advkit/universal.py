"""Universal perturbations: one perturbation shared by every input of a batch.

The shared perturbation ``u`` (shape ``(1, *x.shape[1:])``) lives in the input-independent part
of the constraint set (an L-inf or L2 ball, nonnegativity, binary values; see
:func:`shared_part`). Each input sees ``u`` projected onto its own full set, which for the
usual sets means ``x_adv = clip(x + u)`` to the model's box. One step is one forward and one
backward pass for every sample of the batch (or of the step's minibatch); the per-sample
gradients are summed and ``update`` moves ``u`` (sign steps give Shafahi et al.'s "universal
adversarial training" update, 2020, arXiv:1812.03705). The best ``u`` seen (most samples
successful, then the highest mean objective) is returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advkit.batching import chunked, inference_batch_size
from advkit.constraints import Box, Constraint, Intersection
from advkit.kernel import EngineResult, finite_objective, finite_rows, starting_delta, zero_nonfinite_rows
from advkit.objectives import Objective

if TYPE_CHECKING:
    from advkit.kernel import EngineResult, Problem, Update


def shared_part(constraint: Constraint) -> Constraint:
    """The parts of ``constraint`` that do not depend on the input (every part except boxes)."""
    parts = constraint.parts if isinstance(constraint, Intersection) else (constraint,)
    kept = [p for p in parts if not isinstance(p, Box)]
    for part in kept:
        for radius in (part.linf_radius, part.l2_radius):
            if isinstance(radius, Tensor) and radius.dim() > 0 and radius.numel() > 1:
                raise ValueError("a universal perturbation needs one radius for the whole batch, not per-sample radii")
    if not kept:
        return Intersection()
    return kept[0] if len(kept) == 1 else Intersection(*kept)


def apply_shared(perturbation: Tensor, x: Tensor, constraint: Constraint) -> Tensor:
    """``x + u`` for every input, with ``u`` projected onto each input's full set (e.g. clipped to the box)."""
    if perturbation.dim() != x.dim() or perturbation.shape[0] != 1 or perturbation.shape[1:] != x.shape[1:]:
        raise ValueError(f"perturbation shape {tuple(perturbation.shape)} does not fit inputs {tuple(x.shape)}")
    delta = perturbation.to(device=x.device, dtype=x.dtype).expand_as(x)
    return x + constraint.project(delta, x)


def fooling_rate(
    model, perturbation: Tensor, x: Tensor, y: Tensor, constraint: Constraint, target: Tensor | int | None = None
) -> tuple[float, Tensor]:
    """Share of inputs (and the per-sample mask) whose fresh prediction with the perturbation is
    wrong (untargeted) or the target class (targeted)."""
    with torch.no_grad():
        pred = chunked(
            lambda part: model(part).argmax(1), apply_shared(perturbation, x, constraint), inference_batch_size(model)
        )
    fooled = pred != y.to(pred.device) if target is None else pred == torch.as_tensor(target, device=pred.device)
    return float(fooled.float().mean()), fooled


def optimize_universal(
    problem: Problem,
    *,
    update: Update,
    objective: Objective,
    steps: int,
    init: str = "zeros",
    early_stop: bool = True,
    record: bool = False,
    minibatch: int | None = None,
    stop_rate: float = 1.0,
) -> EngineResult:
    """Optimize one perturbation shared by the batch for ``steps`` steps (each capped by the budget).

    ``minibatch`` samples that many inputs per step (cycling through a seeded permutation); with
    ``early_stop`` the loop ends once a share ``stop_rate`` of the batch is successful.
    """

    model, x, y, target = problem.model, problem.x, problem.y, problem.target
    n, device = problem.n, x.device
    feasible = problem.constraint
    shared = shared_part(feasible)
    search = shared if shared.convex else shared.relaxed()
    size = n if minibatch is None else max(1, min(minibatch, n))
    if problem.backward_counts is None:
        problem.backward_counts = torch.zeros(n, dtype=torch.long, device=device)
    spent_before = problem.backward_counts.clone()
    if problem.nonfinite_counts is None:
        problem.nonfinite_counts = torch.zeros(n, dtype=torch.long, device=device)
    nonfinite = torch.zeros(n, dtype=torch.long, device=device)
    forward = torch.zeros(n, dtype=torch.long, device=device)
    backward = spent_before.clone()
    budget = problem.budget
    order = torch.randperm(n, generator=problem.generator, device=device) if size < n else None
    all_idx = torch.arange(n, device=device)
    reference = x[:1]
    u = starting_delta(problem, reference, search, init if init in ("zeros", "random") else "zeros")
    if hasattr(update, "start"):
        update.start(torch.zeros(1, dtype=torch.long, device=device), 1)
    history = torch.full((steps, n), float("nan"), device=device) if record else None

    zero_idx = torch.zeros(1, dtype=torch.long, device=device)  # the update's state index for u
    epoch = -(-n // size)  # steps per pass over the batch
    best = {
        "u": u,
        "success": torch.zeros(n, dtype=torch.bool, device=device),
        "value": torch.full((n,), float("-inf"), device=device),
        "count": torch.tensor(-1, device=device),
        "mean": torch.tensor(float("-inf"), device=device),
    }

    def feasible_point(latent: Tensor) -> Tensor:
        return latent if shared.convex else shared.project(latent, reference)

    def offer(u_point: Tensor, success: Tensor, value: Tensor, logits: Tensor) -> None:
        """Keep ``u_point`` if it fools more samples (ties: higher mean objective); NaN/inf logits never count."""
        finite = finite_rows(logits)
        success, value = success & finite, finite_objective(value, finite)
        count = success.sum()
        mean = value.masked_fill(~finite, 0.0).sum() / finite.sum().clamp_min(1)  # over samples with finite logits
        better = (count > best["count"]) | ((count == best["count"]) & (mean > best["mean"]))
        best["u"] = torch.where(better, u_point, best["u"])
        best["success"] = torch.where(better, success, best["success"])
        best["value"] = torch.where(better, value, best["value"])
        best["count"], best["mean"] = torch.where(better, count, best["count"]), torch.where(better, mean, best["mean"])

    def offer_fresh(u_point: Tensor) -> None:
        """Evaluate ``u_point`` on the whole batch (one forward pass each) and offer it."""
        with torch.no_grad():
            x_adv = apply_shared(u_point, x, feasible)
            logits = model(x_adv)
        forward.add_(1)
        offer(u_point, problem.criterion.reached(logits, y, target), objective(logits, y, target, x_adv, x), logits)

    evaluated_last = False
    for step_index in range(steps):
        if early_stop and bool(best["success"].float().mean() >= stop_rate):
            break
        idx = all_idx if order is None else order[(step_index * size + torch.arange(size, device=device)) % n]
        if budget is not None:
            idx = idx[backward[idx] < budget]
            if idx.numel() == 0:
                if bool((backward >= budget).all()):
                    break
                continue
        full = idx.numel() == n
        point = feasible_point(u)
        x_i, y_i = (x, y) if full else (x[idx], y[idx])
        t_i = None if target is None else (target if full else target[idx])
        x_adv = apply_shared(point, x_i, feasible).detach().requires_grad_(True)
        logits = model(x_adv)
        loss = objective(logits, y_i, t_i, x_adv, x_i)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        _, bad = zero_nonfinite_rows(logits.detach(), grad)  # NaN/inf rows do not move u
        forward[idx] += 1
        backward[idx] += 1
        nonfinite[idx] += bad.long()
        if history is not None:
            history[step_index, idx] = loss.detach().to(history.dtype)
        if full:  # the step's own forward pass evaluates the point for every sample
            offer(point, problem.criterion.reached(logits.detach(), y, target), loss.detach(), logits.detach())
        u = update(u.detach(), grad.sum(0, keepdim=True), reference, zero_idx, search)
        evaluated_last = False
        if not full and (step_index + 1) % epoch == 0:
            offer_fresh(feasible_point(u))
            evaluated_last = True
    if not evaluated_last:
        offer_fresh(feasible_point(u))
    best_u = best["u"]
    problem.backward_counts = backward.clone()
    problem.nonfinite_counts = problem.nonfinite_counts + nonfinite
    return EngineResult(
        x_adv=apply_shared(best_u, x, feasible),
        success=best["success"],
        best_objective=best["value"],
        forward_counts=forward,
        backward_counts=backward - spent_before,
        history=history,
        shared=best_u,
        nonfinite_counts=nonfinite,
    )
