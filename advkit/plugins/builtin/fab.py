"""Built-in plugin: targeted Fast Adaptive Boundary (a minimal-norm attack), run over the top-logit classes
(AutoAttack's FAB-T) when no target is given."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.engine import Problem, finite_rows
from advkit.params import MAX_RESTARTS, MAX_STEPS, param
from advkit.plugins.builtin.fmn import MinNormRun, column, lp_norm, own_radius
from advkit.rng import SampleStreams

#: The norms fab minimizes.
NORMS = ("linf", "l2", "l1")


# ----------------------------------------------------------------------------- the box-constrained projection


def _level(weight: Tensor, reach: Tensor, c: Tensor) -> Tensor:
    """Per row, the smallest lam >= 0 with sum_i weight_i min(lam, reach_i) >= c (weight, reach >= 0; c >= 0), or
    inf where even lam = max reach falls short. The sum is piecewise linear and nondecreasing in lam with kinks at
    the reaches: sort them, evaluate it at every kink with prefix sums, and solve on the segment where it crosses c."""
    order = reach.argsort(dim=1)
    r = reach.gather(1, order)
    a = weight.gather(1, order)
    zero = a.new_zeros(a.shape[0], 1)
    below = (a * r).cumsum(1)  # sum over the kinks up to k of a_j r_j (those coordinates are saturated)
    rest = a.flip(1).cumsum(1).flip(1)  # sum over j >= k of a_j (the coordinates still growing with lam)
    at_kinks = below + r * torch.cat([rest[:, 1:], zero], 1)
    k = (at_kinks < c.unsqueeze(1)).sum(1, keepdim=True)  # kinks below c: lam lies on segment k
    saturated = torch.cat([zero, below], 1).gather(1, k).squeeze(1)
    slope = torch.cat([rest, zero], 1).gather(1, k).squeeze(1)
    lam = ((c - saturated) / slope.clamp_min(torch.finfo(a.dtype).tiny)).clamp_min(0)
    return torch.where(k.squeeze(1) == a.shape[1], torch.full_like(lam, math.inf), lam)


def project_hyperplane_box(w: Tensor, c: Tensor, low: Tensor, high: Tensor, norm: str) -> Tensor:
    """Per row of ``w`` (N, D): the smallest ``delta`` in ``norm`` with w . delta = c (N,) and low <= delta <= high
    (low <= 0 <= high elementwise), exactly, for all rows at once; where the box does not reach the hyperplane, the
    point of the box that goes farthest towards it (each coordinate moved as far as it may along +-w).

    With c >= 0 (else w and c change sign, which leaves the hyperplane as it is) each coordinate moves along
    sign(w_i) by at most its room u_i in the box. L-inf: delta_i = sign(w_i) min(lam, u_i); L2 (the KKT
    conditions): delta_i = sign(w_i) min(lam |w_i|, u_i); in both the multiplier lam is the smallest at which
    w . delta reaches c (:func:`_level`, sorting). L1: fill coordinates in decreasing order of |w_i| up to their
    room until w . delta = c (the last one partly).
    """
    flip = torch.where(c < 0, -torch.ones_like(c), torch.ones_like(c))
    w = w * flip.unsqueeze(1)
    c = c.abs()
    room = torch.where(w > 0, high, -low).clamp_min(0)
    mag = w.abs()
    direction = w.sign()
    tiny = torch.finfo(w.dtype).tiny
    if norm == "linf":
        valid = mag > 0
        lam = _level(torch.where(valid, mag, 0), torch.where(valid, room, 0), c).unsqueeze(1)
        step = torch.minimum(lam, room)
    elif norm == "l2":
        weight = mag * mag
        reach = room / mag.clamp_min(tiny)
        valid = (weight > 0) & torch.isfinite(reach)
        lam = _level(torch.where(valid, weight, 0), torch.where(valid, reach, 0), c).unsqueeze(1)
        step = torch.minimum(lam * mag, room)
    elif norm == "l1":
        valid = mag > 0
        order = mag.argsort(dim=1, descending=True, stable=True)
        gained = (mag * room).gather(1, order).cumsum(1)
        k = (gained < c.unsqueeze(1)).sum(1, keepdim=True)  # coordinates filled completely
        before = torch.cat([gained.new_zeros(gained.shape[0], 1), gained], 1).gather(1, k)
        positions = torch.arange(w.shape[1], device=w.device).expand_as(order)
        ranks = torch.empty_like(order).scatter_(1, order, positions)
        partial = torch.minimum((c.unsqueeze(1) - before).clamp_min(0) / mag.clamp_min(tiny), room)
        step = torch.where(ranks < k, room, torch.where(ranks == k, partial, torch.zeros_like(room)))
    else:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    return torch.where(valid, direction * step, torch.zeros_like(step))


def _target_gap(target: Tensor):
    """z_t - z_y (positive beyond the boundary between y and the target t) as a loss for MinNormRun.evaluate."""

    def gap(logits: Tensor, y: Tensor, _given: Tensor | None) -> Tensor:
        return logits.gather(1, target.view(-1, 1)).squeeze(1) - logits.gather(1, y.view(-1, 1)).squeeze(1)

    return gap


# ----------------------------------------------------------------------------- the attack


@dataclass(kw_only=True)
class FAB(Attack):
    """Targeted Fast Adaptive Boundary: steps to the linearized boundary with a target, biased towards the input.

    Each step takes one forward and one backward pass at the current point p, linearizing the boundary between the
    label y and the target t as {q : h(p) + grad h(p) . (q - p) = 0} with h = z_t - z_y, and projects both the
    current point and the clean input x onto that hyperplane intersected with the model's box, exactly and in
    ``norm`` (sorting for the Lagrange multiplier: L-inf and L2; greedy filling for L1). With the projections' moves
    d_p and d_x, alpha = min(|d_p| / (|d_p| + |d_x|), ``alpha_max``) and the next point is (1 - alpha) (p + eta d_p)
    + alpha (x + eta d_x), clipped to the box and the threat model's other convex sets. Where p is adversarial (by
    the run's criterion) it is recorded if its norm is the smallest so far and the step starts instead from the
    backward step x + beta (p - x); one more forward pass checks the last step's point. Given targets it attacks
    them; without (an untargeted run) it attacks the ``top_k`` classes with the largest clean logits (ranked with one
    forward pass, which also stops the samples misclassified already), one after the other, any misclassification
    counting, each ``1 + restarts`` times (restart 0 from x, the others from a random point on the sphere of radius
    min(best norm, threat model's radius in ``norm``, else the box's farthest point) / 2 around x). Per sample the
    smallest adversarial point over all targets and restarts is kept; its norm goes to ``artifacts["norm"]`` (inf
    where none was found, and the clean input is returned). The cost is at most ``steps`` x ``top_k`` x (1 +
    ``restarts``) backward passes per sample (or the budget, over all of them together), with one forward pass more
    per run and one for the ranking. The threat model's ball in ``norm`` does not bound the search (the runner
    projects a best point beyond it); its other convex sets do. Croce & Hein, 2020, "Minimally distorted Adversarial
    Examples with a Fast Adaptive Boundary Attack", arXiv:1907.02044; the targeted form (FAB-T) of "Reliable
    evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks", arXiv:2003.01690.

    Parameters:
        norm (str, "linf"): the norm minimized, "linf", "l2" or "l1".
        steps (int, 100): steps per target and restart (one forward and one backward pass each).
        top_k (int, 3): without given targets, how many top-logit wrong classes are attacked in turn.
        alpha_max (float, 0.1): largest weight of the step from the clean input.
        eta (float, 1.05): overshoot of both projections.
        beta (float, 0.9): backward step: from an adversarial p the next step starts at x + beta (p - x).
        restarts (int, 0): extra runs per target from random points around x.
        early_stop (bool, False): stop a sample once it is adversarial within the threat model's radius in norm.
    """

    name = "fab"
    # untargeted by default (an evaluation's usual call, FAB-T over the top_k classes); given targets it aims at them
    targeted = False
    warm_startable = False  # it starts at the clean input (or random points around it)
    norm: str = param("linf", choices=NORMS, doc="the norm minimized")
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="steps per target and restart (one forward and backward each)")
    top_k: int = param(3, ge=1, le=9, doc="without given targets, how many top-logit wrong classes are attacked")
    alpha_max: float = param(0.1, ge=0, le=1, doc="largest weight of the step from the clean input")
    eta: float = param(1.05, ge=1, doc="overshoot of both projections")
    beta: float = param(0.9, gt=0, le=1, doc="backward step towards the clean input from an adversarial point")
    restarts: int = param(0, ge=0, le=MAX_RESTARTS, doc="extra runs per target from random points around x")
    early_stop: bool = param(False, doc="stop a sample once it is adversarial within the threat model's radius")

    def run(self, problem: Problem) -> Tensor:
        run = MinNormRun(problem, self.norm, self.steps, self.early_stop)
        if problem.n == 0:
            return run.finish()
        if problem.target is not None:
            targets = problem.target.view(-1, 1)
        else:
            targets = self._rank(run)
        streams = problem.streams("fab") if self.restarts else None
        spread = own_radius(problem.constraint, self.norm, run.x)
        spread = run.farthest() if spread is None else torch.minimum(spread, run.farthest())
        for rank in range(targets.shape[1]):
            for restart in range(self.restarts + 1):
                rows = self._eligible(run).nonzero().squeeze(1)
                if not len(rows):
                    return run.finish()  # a sample that stops never steps again
                start = torch.zeros_like(run.x[rows])
                if restart:
                    start = self._random_start(run, streams, spread, rows)
                self._descend(run, rows, targets[rows, rank], start)
        return run.finish()

    def _rank(self, run: MinNormRun) -> Tensor:
        """The top_k wrong classes by clean logit (one forward pass); misclassified samples get norm 0."""
        problem = run.problem
        with torch.no_grad():
            logits = problem.model(run.x)
        k = min(self.top_k, logits.shape[1] - 1)
        wrong = logits.scatter(1, problem.y.view(-1, 1), float("-inf"))
        clean = problem.criterion.reached(logits, problem.y, None) & finite_rows(logits)
        run.best_norm.masked_fill_(clean, 0.0)
        return wrong.topk(k, dim=1).indices

    def _eligible(self, run: MinNormRun) -> Tensor:
        """Samples still stepping and within their budget (bool (N,))."""
        live = run.stepping()
        if run.problem.budget is not None:
            live = live & (run.counts < run.problem.budget)
        return live

    def _random_start(self, run: MinNormRun, streams: SampleStreams, spread: Tensor, rows: Tensor) -> Tensor:
        """A random point on the sphere of radius min(best norm, spread) / 2 around x in norm, made feasible. Every
        sample draws at every restart (the rows not stepping too), so each one's stream is its own."""
        x = run.x
        if self.norm == "linf":
            noise = streams.rand(x.shape, dtype=x.dtype, device=x.device) * 2 - 1
        else:
            noise = streams.randn(x.shape, dtype=x.dtype, device=x.device)
        noise = noise[rows]
        radius = torch.minimum(run.best_norm[rows], spread[rows]) / 2
        scale = radius / lp_norm(noise, self.norm).clamp_min(torch.finfo(x.dtype).tiny)
        return run.feasible(rows, noise * column(scale, noise))

    def _descend(self, run: MinNormRun, rows: Tensor, target: Tensor, delta: Tensor) -> None:
        """One FAB run towards ``target`` on samples ``rows`` from x + ``delta``, recording adversarial points."""
        budget = run.problem.budget
        tiny = torch.finfo(run.x.dtype).tiny
        stepped = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        for _ in range(self.steps):
            live = run.stepping()[rows]
            if budget is not None:
                live = live & (run.counts[rows] < budget)
            if not bool(live.any()):
                break
            loc = live.nonzero().squeeze(1)
            idx = rows[loc]
            d = delta[loc]
            gap, grad, adversarial, _, bad = run.evaluate(idx, d, _target_gap(target[loc]))
            x = run.x[idx]
            # the backward step: from an adversarial point the step starts closer to x
            start = torch.where(column(adversarial, d), self.beta * d, d)
            w = grad.flatten(1)
            # the linearized boundary in delta = q - x: w . delta = w . d - h(p)
            level = (w * d.flatten(1)).sum(1) - torch.where(bad, torch.zeros_like(gap), gap)
            s = start.flatten(1)
            low, high = (run.low - x).flatten(1), (run.high - x).flatten(1)
            moves = project_hyperplane_box(
                torch.cat([w, w]),
                torch.cat([level - (w * s).sum(1), level]),
                torch.cat([low - s, low]),
                torch.cat([high - s, high]),
                self.norm,
            )
            m = len(idx)
            from_start, from_x = moves[:m], moves[m:]
            size_start, size_x = lp_norm(from_start, self.norm), lp_norm(from_x, self.norm)
            alpha = (size_start / (size_start + size_x).clamp_min(tiny)).clamp(max=self.alpha_max).unsqueeze(1)
            new = (1 - alpha) * (s + self.eta * from_start) + alpha * (self.eta * from_x)
            delta[loc] = run.feasible(idx, new.view_as(d))
            stepped[loc] = True
        # the last step's points (of the samples still searching) get a forward pass of their own
        last = (stepped & run.stepping()[rows]).nonzero().squeeze(1)
        if len(last):
            self._check(run, rows[last], delta[last])

    def _check(self, run: MinNormRun, idx: Tensor, delta: Tensor) -> None:
        """A forward pass (no backward) at x + delta on rows ``idx``, recording adversarial points that are the
        smallest so far."""
        problem = run.problem
        x, y = run.x[idx], problem.y[idx]
        given = None if problem.target is None else problem.target[idx]
        point = (x + delta).clamp(run.low, run.high)
        with torch.no_grad():
            logits = problem.model(point)
        adversarial = problem.criterion.reached(logits, y, given) & finite_rows(logits)
        norms = lp_norm(point - x, self.norm)
        better = adversarial & (norms < run.best_norm[idx])
        run.best_norm[idx] = torch.where(better, norms, run.best_norm[idx])
        run.best_x[idx] = torch.where(column(better, point), point, run.best_x[idx])


@advkit.hookimpl
def register_attacks(register):
    register(FAB)
