"""Built-in plugin: the Carlini-Wagner L2 attack (tanh box, Adam, binary search on the constant)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.engine import Problem, finite_rows
from advkit.objectives import logit_margin
from advkit.params import MAX_STEPS, param

#: Adam's moment decays and denominator guard (Kingma & Ba's defaults, as Carlini & Wagner use them).
BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
#: Inputs are pulled this much inside the box before atanh, so the box's faces map to finite latents.
TANH_SHRINK = 0.999999


def _column(values: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1), broadcastable against ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def _l2_radius(problem: Problem) -> Tensor | None:
    """The threat model's L2 radius per sample (N,), or None."""
    radius = problem.constraint.l2_radius
    if radius is None:
        return None
    x = problem.x
    if isinstance(radius, Tensor):
        radius = radius.to(device=x.device, dtype=x.dtype)
        return radius.expand(x.shape[0]).clone() if radius.dim() == 0 else radius.clone()
    return torch.full((x.shape[0],), float(radius), device=x.device, dtype=x.dtype)


def _margin(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Non-positive exactly when the point is adversarial: z_y - max_{j != y} z_j, or max_{j != t} z_j - z_t."""
    return -logit_margin(logits, y) if target is None else logit_margin(logits, target)


@dataclass(kw_only=True)
class CW(Attack):
    """Carlini-Wagner L2: Adam on ||x_adv - x||_2^2 + c * max(margin, -kappa) in tanh space, binary search on c.

    The adversarial point is x_adv = center + half-width * tanh(w) inside the model's box, so w is unconstrained.
    For a constant c per sample, Adam (learning rate ``lr``, its own state per sample) minimizes ||x_adv - x||_2^2
    + c * max(z_y - max_{j != y} z_j, -kappa) (towards a target t: max(max_{j != t} z_j - z_t, -kappa)) for
    ``steps`` steps from w at the clean input, one forward and one backward pass each. Every evaluated point that
    meets the problem's criterion with a margin of at least kappa is a hit; per sample the hit of smallest L2 norm
    over all search steps is kept. After each search step c is bisected per sample between the largest constant
    that failed and the smallest that hit (multiplied by 10 while none hit), starting at ``initial_const``
    (1e-2: squared distances in a [-1, 1] box are 4 times those in [0, 1], so this is about foolbox's 1e-3 there).
    ``lr`` defaults to 0.1, not the paper's 0.01: with 100 steps instead of its 10,000, w moves too little at 0.01
    (a [-1, 1] MNIST CNN: 7 of 10 digits fooled at 0.01, all 10 at 0.1, within 2% of 1,000 steps at 0.01).
    With ``abort_early`` a sample ends a search step when its loss fell by less than 0.01% over a tenth of the
    steps. The cost is at most ``steps`` x ``binary_search_steps`` backward passes per sample (or the budget); a
    sample whose clean input is adversarial costs none. The best point is returned (the clean input where none
    was found); its L2 norm goes to ``artifacts["norm"]`` (inf where none) and the smallest constant that hit to
    ``artifacts["const"]`` (inf where none). Only the box bounds the search; the threat model applies through the
    runner's projection. Carlini & Wagner, 2017, "Towards Evaluating the Robustness of Neural Networks",
    arXiv:1608.04644.

    Parameters:
        steps (int, 100): Adam steps per search step (one forward and one backward pass each).
        binary_search_steps (int, 9): search steps on the constant c.
        initial_const (float, 0.01): the first c of every sample.
        lr (float, 0.1): Adam's learning rate, in tanh space (Carlini & Wagner's 0.01 is for 10,000 steps).
        kappa (float, 0.0): the logit margin a hit needs (Carlini & Wagner's confidence).
        abort_early (bool, True): end a sample's search step when its loss stalls.
        early_stop (bool, False): let a sample stop once it has an adversarial within the threat model's L2 radius.
    """

    name = "cw"
    warm_startable = False  # every search step starts at the clean input
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="Adam steps per search step")
    binary_search_steps: int = param(9, ge=1, le=1000, doc="search steps on the constant c")
    initial_const: float = param(1e-2, gt=0, doc="the first c of every sample")
    lr: float = param(0.1, gt=0, doc="Adam's learning rate, in tanh space")
    kappa: float = param(0.0, ge=0, doc="the logit margin a hit needs")
    abort_early: bool = param(True, doc="end a sample's search step when its loss stalls")
    early_stop: bool = param(False, doc="stop a sample once it is adversarial within the threat model's L2 radius")

    def run(self, problem: Problem) -> Tensor:
        model, criterion = problem.model, problem.criterion
        x, y, target = problem.x.detach(), problem.y, problem.target
        n, low, high = x.shape[0], *model.bounds
        center, half = (high + low) / 2, (high - low) / 2
        if problem.backward_counts is None:
            problem.backward_counts = torch.zeros(n, dtype=torch.int64, device=x.device)
        counts = problem.backward_counts
        radius = _l2_radius(problem) if self.early_stop else None
        period = max(1, math.ceil(self.steps / 10))

        with torch.no_grad():
            logits = model(x)
        clean = criterion.reached(logits, y, target) & finite_rows(logits)
        best_x = x.clone()
        best_norm = torch.where(clean, 0.0, math.inf).to(x.dtype)
        w0 = torch.atanh(((x - center) / half).clamp(-1, 1) * TANH_SHRINK)
        const = torch.full((n,), self.initial_const, dtype=x.dtype, device=x.device)
        lower, upper = torch.zeros_like(const), torch.full_like(const, math.inf)
        searching = ~clean  # samples still in the binary search
        for _ in range(self.binary_search_steps):
            if problem.budget is not None:
                searching &= counts < problem.budget
            if not bool(searching.any()):
                break
            ran = searching.clone()
            w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
            t = torch.zeros_like(const)
            previous = torch.full_like(const, math.inf)
            hit = torch.zeros_like(ran)
            running = searching.clone()  # samples still optimizing in this search step
            for i in range(self.steps):
                if problem.budget is not None:
                    running &= counts < problem.budget
                if not bool(running.any()):
                    break
                idx = running.nonzero().squeeze(1)
                x_i, y_i = x[idx], y[idx]
                t_i = None if target is None else target[idx]
                latent = w[idx].requires_grad_(True)
                point = (center + half * torch.tanh(latent)).clamp(low, high)
                z = model(point)
                dist = (point - x_i).flatten(1).pow(2).sum(1)
                margin = _margin(z, y_i, t_i)
                loss = dist + const[idx] * margin.clamp_min(-self.kappa)
                (grad,) = torch.autograd.grad(loss.sum(), latent)
                counts[idx] += 1
                z, loss, margin, point = z.detach(), loss.detach(), margin.detach(), point.detach()
                finite = finite_rows(z)
                ok = criterion.reached(z, y_i, t_i) & finite & (margin <= -self.kappa)
                norms = dist.detach().sqrt()
                better = ok & (norms < best_norm[idx])
                best_norm[idx] = torch.where(better, norms, best_norm[idx])
                best_x[idx] = torch.where(_column(better, point), point, best_x[idx])
                hit[idx] |= ok
                # Adam, per sample (a row whose gradient is not finite does not move)
                grad = torch.where(_column(finite_rows(grad), grad), grad, 0.0)
                step = t[idx] + 1
                t[idx] = step
                m_i = BETA1 * m[idx] + (1 - BETA1) * grad
                v_i = BETA2 * v[idx] + (1 - BETA2) * grad * grad
                m_hat = m_i / _column(1 - BETA1**step, m_i)
                v_hat = v_i / _column(1 - BETA2**step, v_i)
                m[idx], v[idx] = m_i, v_i
                w[idx] = latent.detach() - self.lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
                if self.abort_early and i % period == 0:
                    stalled = ~(loss <= 0.9999 * previous[idx])
                    previous[idx] = loss
                    running[idx] &= ~stalled
                if radius is not None:
                    inside = best_norm[idx] <= radius[idx]
                    running[idx] &= ~inside
                    searching[idx] &= ~inside
            # bisect c between the largest constant that failed and the smallest that hit (x10 while none hit)
            upper = torch.where(ran & hit, torch.minimum(upper, const), upper)
            lower = torch.where(ran & ~hit, torch.maximum(lower, const), lower)
            const = torch.where(ran, torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2), const)
        problem.artifacts["norm"] = best_norm
        problem.artifacts["const"] = upper
        return best_x


@advkit.hookimpl
def register_attacks(register):
    register(CW)
