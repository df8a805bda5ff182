"""Built-in plugin: DeepFool, the minimal-norm attack that steps to the nearest linearized decision boundary."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.constraints import Box, Constraint, Intersection
from advkit.engine import Problem, finite_rows, select
from advkit.params import MAX_STEPS, param

#: The norms deepfool minimizes.
NORMS = ("linf", "l2")


def _column(values: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1), broadcastable against ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def _norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm (N,): ``"linf"``, ``"l2"`` or ``"l1"``."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return torch.linalg.vector_norm(flat, dim=1)
    return flat.abs().sum(1)


def _search_set(constraint: Constraint, bounds: tuple[float, float], norm: str) -> Constraint:
    """Where the iterates stay: the threat model's convex parts other than its ball in ``norm`` (which the attack
    minimizes rather than obeys), and the model's box."""
    parts = constraint.parts if isinstance(constraint, Intersection) else (constraint,)
    own = (lambda p: p.linf_radius is not None) if norm == "linf" else (lambda p: p.l2_radius is not None)
    return Intersection(*[p for p in parts if p.convex and not own(p)], Box(*bounds))


@dataclass(kw_only=True)
class DeepFool(Attack):
    """DeepFool: steps to the nearest boundary of the linearized classifier, L2 or L-inf, untargeted.

    Each step linearizes f_j = z_j - z_y at the current point x + r for the ``candidates`` - 1 classes j != y with
    the highest clean logits (one backward pass per candidate and sample), picks the class with the smallest
    linearized distance |f_j| / ||w_j||_dual (w_j the gradient of f_j; the dual norm is L2 for L2 and L1 for L-inf)
    and adds the step that reaches its boundary, |f_j| / ||w_j||_2^2 w_j (L2) or |f_j| / ||w_j||_1 sign(w_j)
    (L-inf), to r; x + r stays in the box and the threat model's other convex sets (projected). The point judged
    is x + (1 + ``overshoot``) r (projected likewise; one forward pass): the overshoot, a share of the whole
    perturbation, carries it past a boundary the steps only approach. A sample stops at its first adversarial point
    (by the problem's criterion), when x + r no longer moves, or when it cannot afford a full step within the
    budget, so the cost is at most ``steps`` x (``candidates`` - 1) backward passes per sample. That point is
    returned (the clean input where none was found) and its norm goes to ``artifacts["norm"]`` (inf where none).
    The threat model's ball in ``norm`` does not bound the search. Moosavi-Dezfooli, Fawzi & Frossard, 2016,
    "DeepFool: a simple and accurate method to fool deep neural networks", arXiv:1511.04599.

    Parameters:
        norm (str, "l2"): the norm minimized, "l2" or "linf".
        steps (int, 50): the most linearization steps per sample.
        candidates (int, 10): classes considered, the label included: the top ones by clean logit (at most all).
        overshoot (float, 0.02): the perturbation is scaled by 1 + overshoot, to land past the boundary.
        early_stop (bool, False): accepted like the other minimal-norm attacks'; DeepFool stops at its first adversarial point anyway.
    """

    name = "deepfool"
    accepts_target = False
    warm_startable = False  # it starts at the clean input
    norm: str = param("l2", choices=NORMS, doc="the norm minimized")
    steps: int = param(50, ge=1, le=MAX_STEPS, doc="the most linearization steps per sample")
    candidates: int = param(10, ge=2, le=1_000_000, doc="classes considered (the label included), by clean logit")
    overshoot: float = param(0.02, ge=0, le=10, doc="the perturbation is scaled by 1 + overshoot")
    early_stop: bool = param(False, doc="no effect: DeepFool stops at its first adversarial point")

    def run(self, problem: Problem) -> Tensor:
        model, criterion = problem.model, problem.criterion
        x, y = problem.x.detach(), problem.y
        n, low, high = x.shape[0], *model.bounds
        if problem.backward_counts is None:
            problem.backward_counts = torch.zeros(n, dtype=torch.int64, device=x.device)
        counts = problem.backward_counts
        search = _search_set(problem.constraint, model.bounds, self.norm)
        dual = "l1" if self.norm == "linf" else "l2"
        tiny = torch.finfo(x.dtype).tiny
        scale = 1.0 + self.overshoot

        with torch.no_grad():
            logits = model(x)
        finite = finite_rows(logits)
        adversarial = criterion.reached(logits, y, None) & finite
        best_x = x.clone()
        best_norm = torch.where(adversarial, 0.0, math.inf).to(x.dtype)
        k = min(self.candidates, logits.shape[1]) - 1  # candidate classes besides the label; k backward per step
        others = torch.nan_to_num(logits.detach(), nan=-math.inf).scatter(1, y.view(-1, 1), -math.inf)
        classes = others.topk(k, dim=1).indices  # (N, k): the highest clean logits other than the label's
        point = x.clone()
        stepping = finite & ~adversarial
        for _ in range(self.steps):
            if problem.budget is not None:
                stepping &= counts + k <= problem.budget
            if not bool(stepping.any()):
                break
            idx = stepping.nonzero().squeeze(1)
            x_i, y_i, start = x[idx], y[idx], point[idx]
            p = start.clone().requires_grad_(True)
            z = model(p)
            f = z.gather(1, classes[idx]) - z.gather(1, y_i.view(-1, 1))  # (m, k): z_j - z_y per candidate
            # the nearest linearized boundary, one candidate (one backward pass per row) at a time
            best_dist = torch.full((len(idx),), math.inf, dtype=x.dtype, device=x.device)
            best_f, best_dual = torch.zeros_like(best_dist), torch.zeros_like(best_dist)
            best_w = torch.zeros_like(start)
            for j in range(k):
                (w,) = torch.autograd.grad(f[:, j].sum(), p, retain_graph=j < k - 1)
                counts[idx] += 1
                f_j = f[:, j].detach().abs()
                d_j = _norm(w, dual)
                dist = f_j / d_j.clamp_min(tiny)
                dist = torch.where(torch.isfinite(dist) & finite_rows(w), dist, math.inf)
                closer = dist < best_dist
                best_dist = torch.where(closer, dist, best_dist)
                best_f, best_dual = torch.where(closer, f_j, best_f), torch.where(closer, d_j, best_dual)
                best_w = torch.where(_column(closer, w), w, best_w)
            ratio = best_f / best_dual.clamp_min(tiny)
            if self.norm == "l2":
                step = _column(ratio / best_dual.clamp_min(tiny), best_w) * best_w
            else:
                step = _column(ratio, best_w) * best_w.sign()
            usable = torch.isfinite(best_dist) & (best_dual > 0) & finite_rows(step)
            step = torch.where(_column(usable, step), step, 0.0)
            # the next linearization point x + r (r: the steps so far) and the point judged, x + (1 + overshoot) r
            x_s = select(search, idx)
            new = (x_i + x_s.project(start - x_i + step, x_i)).clamp(low, high).detach()
            judged = new if self.overshoot == 0 else (x_i + x_s.project(scale * (new - x_i), x_i)).clamp(low, high)
            point[idx] = new
            with torch.no_grad():
                logits = model(judged)
            adv = criterion.reached(logits, y_i, None) & finite_rows(logits)
            best_norm[idx] = torch.where(adv, _norm(judged - x_i, self.norm), best_norm[idx])
            best_x[idx] = torch.where(_column(adv, judged), judged, best_x[idx])
            moved = (new != start).flatten(1).any(1)
            stepping[idx] = ~adv & moved
        problem.artifacts["norm"] = best_norm
        return best_x


@advkit.hookimpl
def register_attacks(register):
    register(DeepFool)
