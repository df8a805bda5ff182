"""Built-in plugin: Square Attack, a score-based black-box attack (random search, forward passes only)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.constraints import Constraint
from advkit.engine import Problem, finite_rows, select
from advkit.errors import ParameterError
from advkit.params import MAX_STEPS, param

#: Iterations (on the reference's 10,000-query scale) after which the square's area halves.
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: Iterations whose random numbers are drawn per sample in one call (fixed by ``steps`` alone, never by the batch).
BLOCK = 64
NORMS = ("linf", "l2")
LOSSES = ("margin", "ce")


def p_schedule(p_init: float, i: int, steps: int) -> float:
    """The fraction of pixels the square covers at iteration ``i`` (0-based): ``p_init`` halved after each of the
    reference's checkpoints, rescaled from 10,000 iterations to ``steps``."""
    it = int(i / steps * 10000)
    return p_init / 2 ** sum(it > h for h in HALVINGS)


def square_loss(logits: Tensor, y: Tensor, target: Tensor | None, kind: str) -> Tensor:
    """The loss Square minimizes, per sample; NaN (non-finite logits) becomes +inf, never an improvement.

    Untargeted margin ``z_y - max_{j != y} z_j`` (CE: ``-CE(y)``); targeted margin ``max_{j != t} z_j - z_t``
    (CE: ``CE(t)``)."""
    label = y if target is None else target
    own = logits.gather(1, label.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, label.view(-1, 1), float("-inf")).amax(1)
    if kind == "margin":
        value = own - other if target is None else other - own
    else:
        ce = F.cross_entropy(logits, label, reduction="none")
        value = -ce if target is None else ce
    return torch.where(torch.isnan(value), torch.full_like(value, float("inf")), value)


def _rectangle(rows: int, cols: int, like: Tensor) -> Tensor:
    """Concentric rectangles around the centre, weight sum_{k >= d} 1 / (k + 1)^2 at Chebyshev distance d; unit L2."""
    if rows == 0:
        return like.new_zeros(0, cols)
    top = max(rows // 2, cols // 2)
    weights = 1.0 / (torch.arange(top + 1, dtype=like.dtype, device=like.device) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum of the weights from k to top
    r = (torch.arange(rows, device=like.device) - rows // 2).abs()
    c = (torch.arange(cols, device=like.device) - cols // 2).abs()
    out = tail[torch.maximum(r[:, None], c[None, :])]
    return out / out.norm().clamp_min(torch.finfo(like.dtype).tiny)


def pulse(s: int, like: Tensor) -> Tensor:
    """The paper's L2 window of side ``s``: a positive and a negative half of concentric rectangles, unit L2 norm,
    stacked with its transpose (shape (2, s, s); a sample picks one at random)."""
    out = torch.cat([_rectangle(s // 2, s, like), -_rectangle(s - s // 2, s, like)])
    out = out / out.norm().clamp_min(torch.finfo(like.dtype).tiny)
    return torch.stack([out, out.T])


def _window(start: Tensor, s: int, size: int) -> tuple[Tensor, Tensor]:
    """Per sample: which of ``size`` positions the window ``[start, start + s)`` covers (bool (a, size)) and each
    position's offset inside the window (clamped to [0, s - 1] outside it)."""
    pos = torch.arange(size, device=start.device)[None, :] - start[:, None]
    return (pos >= 0) & (pos < s), pos.clamp(0, s - 1)


def _starts(u: Tensor, s: int, size: int) -> Tensor:
    """Uniform numbers in [0, 1) -> window starts uniform in {0, ..., size - s}."""
    return (u * (size - s + 1)).long().clamp(0, size - s)


def _signs(u: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.where(u < 0.5, -1.0, 1.0).to(dtype)


def _l2(t: Tensor) -> Tensor:
    """Per-sample L2 norm over all non-batch dims, shape (a, 1, 1, 1)."""
    return t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def search_radius(constraint: Constraint, norm: str, dim: int, width: float) -> Tensor | float:
    """The radius Square searches in its own norm: the threat model's radius in that norm; without one, the
    smallest ball of that norm holding the set's other ball (L2 r inside L-inf r; L-inf r inside L2 r sqrt(dim)),
    else the model's whole range (the box binds). Candidates are projected onto the set either way."""
    linf, l2 = constraint.linf_radius, constraint.l2_radius
    if norm == "linf":
        return linf if linf is not None else (l2 if l2 is not None else width)
    if l2 is not None:
        return l2
    return (linf if linf is not None else width) * math.sqrt(dim)


@dataclass(kw_only=True)
class Square(Attack):
    """Square Attack: score-based random search with square-shaped updates, forward passes only.

    Starts at vertical stripes of +-eps (L-inf) or at a grid of the paper's L2 windows (two halves of
    concentric rectangles with random signs, scaled to norm eps), then proposes one change per iteration
    and keeps it if the loss (``margin``: z_y - max_{j != y} z_j, or max_{j != t} z_j - z_t toward a target;
    ``ce``: -CE(y) or CE(t)) went down or the point is adversarial. L-inf: a random square of side
    sqrt(p x H x W) set to +-eps per channel (signs flipped where the square would stay as it is); L2: a
    random window of the current perturbation is replaced by itself plus a new signed pulse, a second window
    is emptied, and the perturbation is rescaled to norm eps. p starts at ``p_init`` and halves at iterations
    10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000, rescaled to ``steps``. Every candidate is
    projected onto the threat model and clipped to the box; eps is the set's radius in ``norm`` (without one:
    the set's other radius, or the model's range). Each sample draws its own squares and signs
    (``problem.streams``), stops once adversarial by the run's criterion, and costs at most ``steps`` + 1
    forward passes and no backward pass (``artifacts["queries"]`` per sample). Andriushchenko, Croce,
    Flammarion & Hein, 2020, "Square Attack: a query-efficient black-box adversarial attack via random
    search", arXiv:1912.00049.

    Parameters:
        steps (int, 5000): queries per sample after the initial one (at most steps + 1 forward passes).
        norm (str, "linf"): "linf" or "l2", the norm of the ball searched.
        p_init (float, 0.8): fraction of the pixels the first squares cover (halved on the schedule).
        loss (str, "margin"): "margin" or "ce", the loss minimized.
    """

    name = "square"
    steps: int = param(5000, ge=1, le=MAX_STEPS, doc="queries per sample after the initial one")
    norm: str = param("linf", choices=NORMS, doc="the norm of the ball searched")
    p_init: float = param(0.8, gt=0, le=1, doc="fraction of the pixels the first squares cover")
    loss: str = param("margin", choices=LOSSES, doc="the loss minimized")

    @torch.no_grad()
    def run(self, problem: Problem) -> Tensor:
        x, n = problem.x, problem.n
        device = x.device
        if problem.backward_counts is None:
            problem.backward_counts = torch.zeros(n, dtype=torch.int64, device=device)
        queries = torch.zeros(n, dtype=torch.int64, device=device)
        problem.artifacts["queries"] = queries
        if n == 0:
            return x.clone()
        if x.dim() < 2:
            raise ParameterError(f"square needs a batch of inputs (N, ...), got shape {tuple(x.shape)}")
        images = _image_shape(x)
        _, c, h, w = images
        xi = x.reshape(images)
        low, high = problem.model.bounds
        radius = search_radius(problem.constraint, self.norm, c * h * w, problem.model.range_width)
        eps = torch.as_tensor(radius, dtype=x.dtype, device=device).expand(n).reshape(n, 1, 1, 1)
        streams = problem.streams("square")
        y, target, criterion = problem.y, problem.target, problem.criterion

        def feasible(delta: Tensor, rows: Tensor | None) -> Tensor:
            """x + delta projected onto the threat model, clipped to the box (image shape)."""
            x_rows = x if rows is None else x[rows]
            constraint = problem.constraint if rows is None else select(problem.constraint, rows)
            moved = constraint.project(delta.reshape(x_rows.shape), x_rows)
            return (x_rows + moved).clamp(low, high).reshape(delta.shape)

        def query(points: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor]:
            logits = problem.model(points.reshape(-1, *x.shape[1:]))
            labels = y if rows is None else y[rows]
            aims = None if target is None else (target if rows is None else target[rows])
            if rows is None:
                queries.add_(1)
            else:
                queries[rows] += 1
            reached = criterion.reached(logits, labels, aims) & finite_rows(logits)
            return square_loss(logits, labels, aims, self.loss), reached

        # the start: the paper's init (or a warm start), one query per sample
        if self.norm == "linf":
            signs = _signs(streams.rand((n, c * w), device=device), x.dtype).view(n, c, 1, w)
            delta = (eps * signs).expand(images)
        else:
            delta = self._l2_init(streams, xi, eps)
        if problem.start is not None:
            delta = problem.start.reshape(images) - xi
        x_best = feasible(delta, None)
        best_loss, done = query(x_best, None)

        draws = 2 + c if self.norm == "linf" else 5 + c
        pulses: dict[int, Tensor] = {}
        block = None
        for i in range(self.steps):
            if i % BLOCK == 0:  # every sample's numbers for the next iterations, whichever samples still run
                block = streams.rand((n, min(BLOCK, self.steps - i), draws), device=device)
            active = ~done & (queries <= self.steps)  # the query budget: steps + 1 per sample
            idx = active.nonzero().squeeze(1)
            if not len(idx):  # one synchronization per iteration
                break
            u = block[idx, i % BLOCK].to(x.dtype)
            p = p_schedule(self.p_init, i, self.steps)
            if self.norm == "linf":
                s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
                candidate = self._linf_step(xi[idx], x_best[idx], eps[idx], u, s, partial(feasible, rows=idx))
            else:
                s = max(round(math.sqrt(p * h * w)), 3)
                s = min(s + 1 if s % 2 == 0 else s, h, w)
                if s not in pulses:
                    pulses[s] = pulse(s, xi)
                delta = self._l2_step(x_best[idx] - xi[idx], eps[idx], u, s, pulses[s])
                candidate = feasible(delta, idx)
            loss, reached = query(candidate, idx)
            keep = (loss < best_loss[idx]) | reached
            best_loss[idx] = torch.where(keep, loss, best_loss[idx])
            x_best[idx] = torch.where(keep.view(-1, 1, 1, 1), candidate, x_best[idx])
            done[idx] = reached
        return x_best.reshape(x.shape)

    @staticmethod
    def _linf_step(x: Tensor, best: Tensor, eps: Tensor, u: Tensor, s: int, feasible) -> Tensor:
        """A random square of side s set to +-eps per channel; where that leaves the point as it is, the other signs."""
        _, c, h, w = x.shape
        rows, _ = _window(_starts(u[:, 0], s, h), s, h)
        cols, _ = _window(_starts(u[:, 1], s, w), s, w)
        square = (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)
        signs = _signs(u[:, 2 : 2 + c], x.dtype).view(-1, c, 1, 1)
        candidate = feasible(torch.where(square, x + eps * signs, best) - x)
        flipped = feasible(torch.where(square, x - eps * signs, best) - x)
        same = (candidate == best).flatten(1).all(1).view(-1, 1, 1, 1)
        return torch.where(same, flipped, candidate)

    @staticmethod
    def _l2_step(delta: Tensor, eps: Tensor, u: Tensor, s: int, pulses: Tensor) -> Tensor:
        """The paper's L2 proposal: window 1 becomes its normalized self plus a signed pulse, holding the norm of
        both windows plus what eps leaves; window 2 is emptied; the whole is rescaled to norm eps."""
        _, c, h, w = delta.shape
        rows1, lr = _window(_starts(u[:, 0], s, h), s, h)
        cols1, lc = _window(_starts(u[:, 1], s, w), s, w)
        rows2, _ = _window(_starts(u[:, 2], s, h), s, h)
        cols2, _ = _window(_starts(u[:, 3], s, w), s, w)
        first = (rows1[:, :, None] & cols1[:, None, :]).unsqueeze(1)
        second = (rows2[:, :, None] & cols2[:, None, :]).unsqueeze(1)
        signs = _signs(u[:, 4 : 4 + c], delta.dtype).view(-1, c, 1, 1)
        transposed = (u[:, 4 + c] < 0.5).long()
        shape = pulses[transposed[:, None, None], lr[:, :, None], lc[:, None, :]].unsqueeze(1) * first
        old = delta * first
        old = old / (old.square().sum((-2, -1), keepdim=True).sqrt() + 1e-12)
        new = shape * signs + old
        room = (eps.square() - _l2(delta).square()).clamp_min(0) / c + _l2(delta * (first | second)).square()
        new = new / (new.square().sum((-2, -1), keepdim=True).sqrt() + 1e-12) * room.sqrt()
        delta = torch.where(first, new, torch.where(second, torch.zeros_like(delta), delta))
        return eps * delta / (_l2(delta) + 1e-12)

    @staticmethod
    def _l2_init(streams, x: Tensor, eps: Tensor) -> Tensor:
        """A grid of L2 windows of side H // 5 (at least 1), centred, each with random signs per channel and a
        random orientation, scaled to norm eps."""
        n, c, h, w = x.shape
        t = max(h // 5, 1)
        th, tw = h // t, w // t
        if tw == 0:  # narrower than a window: random signs per element
            signs = _signs(streams.rand((n, c * h * w), device=x.device), x.dtype).view(x.shape)
            return eps * signs / math.sqrt(c * h * w)
        u = streams.rand((n, th * tw * (c + 1)), device=x.device).view(n, th, tw, c + 1)
        signs = _signs(u[..., :c], x.dtype)  # (n, th, tw, c)
        transposed = (u[..., c] < 0.5).long()  # (n, th, tw)
        windows = pulse(t, x)
        off_h, off_w = (h - t * th) // 2, (w - t * tw) // 2
        r = torch.arange(h, device=x.device) - off_h
        q = torch.arange(w, device=x.device) - off_w
        inside = ((r >= 0) & (r < t * th))[:, None] & ((q >= 0) & (q < t * tw))[None, :]
        ti, tj = (r.clamp(0, t * th - 1) // t), (q.clamp(0, t * tw - 1) // t)
        lr, lc = r.clamp(0, t * th - 1) % t, q.clamp(0, t * tw - 1) % t
        bits = transposed[:, ti[:, None], tj[None, :]]  # (n, h, w)
        values = windows[bits, lr[None, :, None], lc[None, None, :]]
        sign_map = signs[:, ti[:, None], tj[None, :], :].permute(0, 3, 1, 2)  # (n, c, h, w)
        delta = values.unsqueeze(1) * sign_map * inside
        return eps * delta / (_l2(delta) + 1e-12)


def _image_shape(x: Tensor) -> tuple[int, int, int, int]:
    """(N, C, H, W) for the inputs: (N, D) -> (N, 1, 1, D), (N, H, W) -> (N, 1, H, W), extra leading dims join C."""
    shape = tuple(x.shape)
    if len(shape) == 2:
        return shape[0], 1, 1, shape[1]
    if len(shape) == 3:
        return shape[0], 1, shape[1], shape[2]
    return shape[0], math.prod(shape[1:-2]), shape[-2], shape[-1]


@advkit.hookimpl
def register_attacks(register):
    register(Square)
