"""Built-in plugin: the Fast Minimum-Norm attack (L-inf, L2, L1 or L0), and the per-sample bookkeeping it shares
with the other minimal-norm attack on its own loop (ddn)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.constraints import Box, Constraint, Intersection
from advkit.engine import Problem, select, zero_nonfinite_rows
from advkit.objectives import logit_margin
from advkit.params import MAX_STEPS, param

#: The norms fmn minimizes.
NORMS = ("linf", "l2", "l1", "l0")


# ----------------------------------------------------------------------------- norms and balls


def _rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def column(values: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1), broadcastable against ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of ``delta`` (N,): ``"linf"``, ``"l2"``, ``"l1"`` or ``"l0"`` (nonzero elements)."""
    flat = _rows(delta)
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return torch.linalg.vector_norm(flat, dim=1)
    if norm == "l1":
        return flat.abs().sum(1)
    if norm == "l0":
        return (flat != 0).sum(1).to(delta.dtype)
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def dual_norm(grad: Tensor, norm: str) -> Tensor:
    """Per-sample dual norm of ``grad``: L1 for L-inf, L2 for L2, L-inf for L1."""
    return lp_norm(grad, {"linf": "l1", "l2": "l2", "l1": "linf"}[norm])


def project_l1_ball(delta: Tensor, eps: Tensor) -> Tensor:
    """Euclidean projection of each row onto the L1 ball of radius ``eps`` (N,): soft thresholding at the level
    found by sorting the magnitudes (Duchi et al., 2008), for every row at once."""
    flat = _rows(delta)
    mag = flat.abs()
    ordered = mag.sort(dim=1, descending=True).values
    sums = ordered.cumsum(1)
    ranks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    kept = (ordered * ranks > sums - eps.unsqueeze(1)).sum(1).clamp_min(1)
    theta = ((sums.gather(1, (kept - 1).unsqueeze(1)).squeeze(1) - eps) / kept.to(flat.dtype)).clamp_min(0)
    shrunk = flat.sign() * (mag - theta.unsqueeze(1)).clamp_min(0)
    inside = (mag.sum(1) <= eps).unsqueeze(1)
    return torch.where(inside, flat, shrunk).reshape(delta.shape)


def keep_largest(delta: Tensor, k: Tensor) -> Tensor:
    """Each row with only its ``k`` (N,) largest-magnitude elements kept (ties broken by position), the rest 0."""
    flat = _rows(delta)
    order = flat.abs().argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return (flat * (ranks < k.unsqueeze(1))).reshape(delta.shape)


def project_ball(delta: Tensor, eps: Tensor, norm: str) -> Tensor:
    """``delta`` projected onto the ``norm`` ball of per-sample radius ``eps`` (N,) (L0: the top-eps elements)."""
    if norm == "linf":
        radius = column(eps, delta)
        return torch.maximum(torch.minimum(delta, radius), -radius)
    if norm == "l2":
        norms = lp_norm(delta, "l2")
        scale = torch.where(norms > eps, eps / norms.clamp_min(torch.finfo(delta.dtype).tiny), torch.ones_like(eps))
        return delta * column(scale, delta)
    if norm == "l1":
        return project_l1_ball(delta, eps)
    if norm == "l0":
        return keep_largest(delta, eps.long())
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


# ----------------------------------------------------------------------------- the threat model


def own_ball(part: Constraint, norm: str) -> bool:
    """Whether ``part`` bounds the perturbation in the attack's own norm (the adaptive eps replaces it)."""
    return (norm == "linf" and part.linf_radius is not None) or (norm == "l2" and part.l2_radius is not None)


def search_set(constraint: Constraint, bounds: tuple[float, float], norm: str) -> Constraint:
    """Where the iterates stay: the threat model without its balls in the attack's own norm and without its
    non-convex parts (e.g. binary values, which only the runner's projection applies), and the model's box."""
    parts = constraint.parts if isinstance(constraint, Intersection) else (constraint,)
    kept = [p for p in parts if p.convex and not own_ball(p, norm)]
    return Intersection(*kept, Box(*bounds))


def own_radius(constraint: Constraint, norm: str, like: Tensor) -> Tensor | None:
    """The threat model's radius in the attack's norm per sample (N,), in like's dtype, or None."""
    radius = constraint.linf_radius if norm == "linf" else constraint.l2_radius if norm == "l2" else None
    if radius is None:
        return None
    n = like.shape[0]
    if isinstance(radius, Tensor):
        radius = radius.to(device=like.device, dtype=like.dtype)
        return radius.expand(n).clone() if radius.dim() == 0 else radius.clone()
    return torch.full((n,), float(radius), device=like.device, dtype=like.dtype)


def cosine(start: float, end: float, step: int, steps: int) -> float:
    """A value cosine-annealed from ``start`` (step 0) towards ``end`` (step ``steps``)."""
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


# ----------------------------------------------------------------------------- shared per-sample bookkeeping


class MinNormRun:
    """What a minimal-norm attack on its own loop keeps per sample: the best (smallest-norm) adversarial point
    found so far, the backward passes spent and which samples still step.

    Every row only ever sees its own numbers: the model runs on the rows still stepping, and all state is per row.
    A sample stops when its best norm is 0 (the clean input is adversarial) or, with ``early_stop`` and a threat
    model with a radius in the attack's norm, once its best adversarial lies within that radius.
    """

    def __init__(self, problem: Problem, norm: str, steps: int, early_stop: bool) -> None:
        x = problem.x.detach()
        self.problem, self.x, self.norm = problem, x, norm
        self.low, self.high = problem.model.bounds
        self.search = search_set(problem.constraint, problem.model.bounds, norm)
        self.steps = steps if problem.budget is None else min(steps, problem.budget)
        self.radius = own_radius(problem.constraint, norm, x) if early_stop else None
        self.best_x = x.clone()
        self.best_norm = torch.full((x.shape[0],), math.inf, device=x.device, dtype=x.dtype)
        if problem.backward_counts is None:
            problem.backward_counts = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        self.counts = problem.backward_counts

    def farthest(self) -> Tensor:
        """Per sample, the norm of the farthest point of the box (no useful eps exceeds it)."""
        if self.norm == "l0":
            return torch.full_like(self.best_norm, float(self.x[0].numel()))
        return lp_norm(torch.maximum(self.x - self.low, self.high - self.x), self.norm)

    def evaluate(self, idx: Tensor, delta: Tensor, loss_fn) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One forward and one backward pass on rows ``idx`` at ``x + delta``, recording improvements.

        ``loss_fn(logits, y, target)`` gives the per-sample loss the attack ascends. Returns the loss, its input
        gradient (zeroed on rows whose logits or gradient were not finite), whether each row is adversarial (by the
        problem's criterion), each row's norm and which rows met a NaN or inf.
        """
        problem = self.problem
        x = self.x[idx]
        y = problem.y[idx]
        target = None if problem.target is None else problem.target[idx]
        point = (x + delta).clamp(self.low, self.high).detach().requires_grad_(True)
        logits = problem.model(point)
        loss = loss_fn(logits, y, target)
        (grad,) = torch.autograd.grad(loss.sum(), point)
        self.counts[idx] += 1
        logits = logits.detach()
        finite, bad = zero_nonfinite_rows(logits, grad)
        point = point.detach()
        adversarial = problem.criterion.reached(logits, y, target) & finite
        norms = lp_norm(point - x, self.norm)
        better = adversarial & (norms < self.best_norm[idx])
        self.best_norm[idx] = torch.where(better, norms, self.best_norm[idx])
        self.best_x[idx] = torch.where(column(better, point), point, self.best_x[idx])
        return loss.detach(), grad, adversarial, norms, bad

    def feasible(self, idx: Tensor, delta: Tensor) -> Tensor:
        """``delta`` (rows ``idx``) projected onto the search set and the box: the next point minus x."""
        x = self.x[idx]
        delta = select(self.search, idx).project(delta, x)
        return (x + delta).clamp(self.low, self.high) - x

    def stepping(self) -> Tensor:
        """Which samples keep stepping (bool (N,))."""
        done = self.best_norm == 0
        if self.radius is not None:
            done = done | (self.best_norm <= self.radius)
        return ~done

    def finish(self) -> Tensor:
        """The best adversarial points (the clean input where none was found); records ``artifacts["norm"]``."""
        self.problem.artifacts["norm"] = self.best_norm.clone()
        return self.best_x


# ----------------------------------------------------------------------------- the attack


def _logit_difference(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Positive exactly when the point is adversarial: max_{j != y} z_j - z_y, or z_t - max_{j != t} z_j."""
    return logit_margin(logits, y) if target is None else -logit_margin(logits, target)


@dataclass(kw_only=True)
class FMN(Attack):
    """Fast Minimum-Norm attack: normalized gradient steps inside an adaptive L-inf, L2, L1 or L0 ball.

    Each step takes one forward and one backward pass at the current point and ascends the logit difference
    (max_{j != y} z_j - z_y, or z_t - max_{j != t} z_j towards a target) along its L2-normalized gradient with a
    step alpha, cosine-annealed from ``alpha_init`` to ``alpha_final`` (both times the model's range width), then
    projects onto the ball of radius eps in ``norm`` (L-inf: clamp; L2: rescale; L1: sort-based soft
    thresholding; L0: keep the eps largest elements) and onto the box and the threat model's other sets. eps
    adapts per sample: where the current point is adversarial it shrinks to min(eps (1 - gamma), best norm);
    before any adversarial is found it jumps to the linearized boundary distance ||delta|| + |loss| /
    ||grad||_dual (at least (1 + gamma) ||delta||); otherwise it grows by (1 + gamma), with gamma
    cosine-annealed from ``gamma_init`` to ``gamma_final`` (L0 rounds eps to whole elements and moves it by at
    least one). Per sample the smallest-norm adversarial point is kept; its norm goes to ``artifacts["norm"]``
    (inf where none was found, and the clean input is returned). A sample stops when the clean input is
    adversarial, so the cost is at most ``steps`` (or the budget) backward passes per sample. The threat model's
    ball in ``norm`` does not bound the search (the runner projects a best point beyond it); its other convex
    sets (box, sign constraints, balls in other norms) do.
    Pintor et al., 2021, "Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints",
    arXiv:2102.12827.

    Parameters:
        norm (str, "l2"): the norm minimized, "linf", "l2", "l1" or "l0".
        steps (int, 100): steps (one forward and one backward pass each).
        alpha_init (float, 1.0): first step length (L2) as a multiple of the model's range width.
        alpha_final (float | None, None): last step length in the same units; default alpha_init / 100.
        gamma_init (float, 0.05): first relative change of eps.
        gamma_final (float, 0.001): last relative change of eps.
        early_stop (bool, False): stop a sample once it is adversarial within the threat model's radius in norm.
    """

    name = "fmn"
    warm_startable = False  # it starts at the clean input, with eps set by the first linearization
    norm: str = param("l2", choices=NORMS, doc="the norm minimized")
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="steps (one forward and one backward pass each)")
    alpha_init: float = param(1.0, gt=0, doc="first step length as a multiple of the model's range width")
    alpha_final: float | None = param(None, gt=0, doc="last step length; default alpha_init / 100")
    gamma_init: float = param(0.05, gt=0, lt=1, doc="first relative change of eps")
    gamma_final: float = param(0.001, gt=0, lt=1, doc="last relative change of eps")
    early_stop: bool = param(False, doc="stop a sample once it is adversarial within the threat model's radius")

    def run(self, problem: Problem) -> Tensor:
        run = MinNormRun(problem, self.norm, self.steps, self.early_stop)
        x, norm = run.x, self.norm
        width = problem.model.range_width
        alpha_init = self.alpha_init * width
        alpha_final = (self.alpha_init / 100 if self.alpha_final is None else self.alpha_final) * width
        farthest = run.farthest()
        delta = torch.zeros_like(x)
        eps = torch.ones_like(farthest) if norm == "l0" else farthest.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        tiny = torch.finfo(x.dtype).tiny
        stepping = run.stepping()
        for i in range(run.steps):
            alpha = cosine(alpha_init, alpha_final, i, run.steps)
            gamma = cosine(self.gamma_init, self.gamma_final, i, run.steps)
            idx = stepping.nonzero().squeeze(1)
            d, e = delta[idx], eps[idx]
            loss, grad, adversarial, norms, bad = run.evaluate(idx, d, _logit_difference)
            seen = found[idx] | adversarial
            found[idx] = seen
            best = run.best_norm[idx]
            if norm == "l0":
                shrink = torch.minimum(torch.minimum(e - 1, (e * (1 - gamma)).floor()), best)
                grow = torch.maximum(e + 1, (e * (1 + gamma)).floor())
                new = torch.where(adversarial, shrink, grow).clamp_min(0)
            else:
                # the linearized distance to the boundary, and at least (1 + gamma) beyond the current point (a
                # point that lands exactly on a linear boundary would otherwise stay there, never adversarial)
                boundary = torch.maximum(
                    norms + loss.abs() / dual_norm(grad, norm).clamp_min(tiny), norms * (1 + gamma)
                )
                new = torch.where(
                    adversarial, torch.minimum(e * (1 - gamma), best), torch.where(seen, e * (1 + gamma), boundary)
                )
            e = torch.where(bad, e, torch.minimum(new, farthest[idx]))
            step = grad / column(lp_norm(grad, "l2").clamp_min(tiny), grad)
            d = run.feasible(idx, project_ball(d + alpha * step, e, norm))
            delta[idx], eps[idx] = d, e
            stepping = run.stepping()
            if not bool(stepping.any()):
                break
        return run.finish()


@advkit.hookimpl
def register_attacks(register):
    register(FMN)
