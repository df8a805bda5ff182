"""Built-in plugin: a stronger targeted attack (APGD-style) under the same budget (S10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.constraints import Constraint
from advkit.engine import Problem, optimize
from advkit.objectives import negative_target_cross_entropy


def target_margin(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """z_target - max_{j != target} z_j: positive exactly when the target is the top class."""
    if target is None:
        raise ValueError("the target-margin objective needs target classes")
    target_logit = logits.gather(1, target.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, target.view(-1, 1), float("-inf"))
    return target_logit - others.amax(1)


def target_ce_plus_margin(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """-CE(target) + target margin: CE's gradient far from the target, the margin's near the boundary."""
    return negative_target_cross_entropy(logits, y, target) + target_margin(logits, y, target)


def targeted_dlr(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """Croce & Hein's targeted DLR, maximized: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2); scale-invariant."""
    if target is None:
        raise ValueError("the targeted DLR objective needs target classes")
    if logits.shape[1] < 4:
        raise ValueError("the targeted DLR objective needs at least 4 classes")
    ordered = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    z_t = logits.gather(1, target.view(-1, 1)).squeeze(1)
    return -(z_y - z_t) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)


LOSSES = {"ce+margin": target_ce_plus_margin, "dlr": targeted_dlr, "ce": negative_target_cross_entropy,
          "margin": target_margin}


def checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints w_j = ceil(p_j * steps): p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = sorted({min(steps, int(-(-q * steps // 1))) for q in p if q <= 1})
    return [w for w in marks if w < steps] if steps else [0]


class AdaptiveMomentumStep:
    """APGD's update: sign steps with momentum and a step size that halves when progress stalls.

    z = P(d + eta * sign(g));  d' = P(d + alpha * (z - d) + (1 - alpha) * (d - d_prev))
    (d' = z on a restart's first step). At each checkpoint w_j (see :func:`checkpoints`) a
    sample's eta halves if its objective rose in fewer than ``rho`` of the steps since w_{j-1},
    or if neither eta nor its best objective changed since w_{j-1}; a halving sample restarts
    from its best point (and that point's gradient), without momentum. The engine reports each
    evaluated point's objective through :meth:`observe`. All state is per sample.
    """

    def __init__(self, initial: Tensor | float, steps: int, alpha: float = 0.75, rho: float = 0.75) -> None:
        self.initial, self.steps, self.alpha, self.rho = initial, steps, alpha, rho
        marks = checkpoints(steps)
        self.is_checkpoint = torch.zeros(steps + 1, dtype=torch.bool)
        self.span = torch.ones(steps + 1)
        for previous, mark in zip(marks, marks[1:]):
            self.is_checkpoint[mark] = True
            self.span[mark] = mark - previous
        self.state: dict[str, Tensor] = {}
        self._improved: Tensor | None = None

    def _allocate(self, n: int, like: Tensor) -> None:
        shape, device = (n, *like.shape[1:]), like.device
        self.is_checkpoint, self.span = self.is_checkpoint.to(device), self.span.to(device)
        for key in ("previous", "best_delta", "best_grad"):
            self.state[key] = torch.zeros(shape, dtype=like.dtype, device=device)

    def start(self, idx: Tensor, n: int) -> None:
        """Reset the state of samples ``idx`` (of ``n``) for a new restart."""
        s = self.state
        if "count" not in s:
            device = idx.device
            s["count"] = torch.zeros(n, dtype=torch.long, device=device)
            s["eta"] = torch.zeros(n, device=device)
            for key in ("increases", "eta_at_mark"):
                s[key] = torch.zeros(n, device=device)
            for key in ("best_loss", "last_loss", "best_at_mark"):  # float64 holds float32 and float64 losses
                s[key] = torch.zeros(n, dtype=torch.float64, device=device)
        initial = self.initial[idx] if isinstance(self.initial, Tensor) and self.initial.dim() else self.initial
        s["count"][idx] = 0
        s["increases"][idx] = 0
        s["eta"][idx] = torch.as_tensor(initial, dtype=s["eta"].dtype, device=idx.device)
        s["eta_at_mark"][idx] = s["eta"][idx]
        s["best_loss"][idx] = float("-inf")
        s["best_at_mark"][idx] = float("-inf")
        if "previous" in s:
            s["previous"][idx] = 0

    def observe(self, idx: Tensor, delta: Tensor, loss: Tensor) -> None:
        """Record the objective of the point just evaluated (counts rises, keeps the best point)."""
        s = self.state
        if "previous" not in s:
            self._allocate(s["count"].shape[0], delta)
        loss = loss.to(s["last_loss"].dtype)  # float64 models give float64 losses
        rose = (loss > s["last_loss"][idx]) & (s["count"][idx] > 0)
        s["increases"][idx] += rose.to(s["increases"].dtype)
        s["last_loss"][idx] = loss
        improved = loss > s["best_loss"][idx]
        s["best_loss"][idx] = torch.where(improved, loss, s["best_loss"][idx])
        s["best_delta"][idx] = torch.where(_rows(improved, delta), delta, s["best_delta"][idx])
        self._improved = improved

    def _halve_at_checkpoint(self, idx: Tensor) -> Tensor:
        """Apply the checkpoint rule to samples ``idx``; returns which of them halved."""
        s = self.state
        count = s["count"][idx].clamp(max=self.steps)
        at_mark = self.is_checkpoint[count]
        stalled = s["increases"][idx] < self.rho * self.span[count]
        frozen = (s["eta_at_mark"][idx] == s["eta"][idx]) & (s["best_at_mark"][idx] == s["best_loss"][idx])
        halve = at_mark & (stalled | frozen)
        s["eta"][idx] = torch.where(halve, s["eta"][idx] / 2, s["eta"][idx])
        s["eta_at_mark"][idx] = torch.where(at_mark, s["eta"][idx], s["eta_at_mark"][idx])
        s["best_at_mark"][idx] = torch.where(at_mark, s["best_loss"][idx], s["best_at_mark"][idx])
        s["increases"][idx] = torch.where(at_mark, torch.zeros_like(s["increases"][idx]), s["increases"][idx])
        return halve

    def __call__(self, delta: Tensor, grad: Tensor, x: Tensor, idx: Tensor, constraint: Constraint) -> Tensor:
        s = self.state
        if "previous" not in s:
            self._allocate(s["count"].shape[0], delta)
        improved = self._improved if self._improved is not None else torch.ones(len(idx), dtype=torch.bool, device=delta.device)
        s["best_grad"][idx] = torch.where(_rows(improved, grad), grad, s["best_grad"][idx])
        self._improved = None
        halve = self._halve_at_checkpoint(idx)
        base = torch.where(_rows(halve, delta), s["best_delta"][idx], delta)
        direction = torch.where(_rows(halve, grad), s["best_grad"][idx], grad).sign()
        eta = s["eta"][idx].to(delta.dtype).view(-1, *([1] * (delta.dim() - 1)))
        z = constraint.project(base + eta * direction, x)
        no_momentum = _rows((s["count"][idx] == 0) | halve, delta)
        momentum = constraint.project(base + self.alpha * (z - base) + (1 - self.alpha) * (base - s["previous"][idx]), x)
        s["previous"][idx] = base
        s["count"][idx] += 1
        return torch.where(no_momentum, z, momentum)


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


@dataclass(kw_only=True)
class APGDTargeted(Attack):
    """Targeted APGD: adaptive step size with momentum, a CE + logit-margin (or DLR) loss, restarts (S10).

    Maximizes -CE(target) + (z_target - max_{j != target} z_j) (``loss="dlr"``: the targeted
    DLR loss) with sign steps of size eta and momentum 0.25 on the previous move (alpha = 0.75).
    eta starts at ``initial_step`` x eps and halves at APGD's checkpoints (22%, 41%, 57%, ... of
    the steps) where the loss stalled; a halving sample restarts from its best point. The budget
    is ``steps`` x ``restarts`` backward passes; later restarts start at random points and run
    only on samples that have not reached the target. Per sample the best point is kept. Croce &
    Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", arXiv:2003.01690.

    Parameters:
        steps (int, 100): steps per restart.
        restarts (int, 1): restarts (total cost at most steps x restarts backward passes).
        initial_step (float, 2.0): first step size as a multiple of the L-inf radius (APGD uses 2).
        alpha (float, 0.75): weight of the new step against momentum.
        rho (float, 0.75): halve eta at a checkpoint if the loss rose in fewer than this share of steps.
        loss (str, "ce+margin"): "ce+margin", "dlr", "ce" or "margin".
        confidence (float, 0.0): success needs the target at probability >= this.
    """

    name = "apgd_targeted"
    targeted = True
    steps: int = 100
    restarts: int = 1
    initial_step: float = 2.0
    alpha: float = 0.75
    rho: float = 0.75
    loss: str = "ce+margin"
    confidence: float = 0.0

    def run(self, problem: Problem) -> Tensor:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        radius = problem.constraint.linf_radius
        if radius is None:
            radius = problem.model.range_width / 10
        update = AdaptiveMomentumStep(self.initial_step * radius, self.steps, self.alpha, self.rho)
        return optimize(problem, update=update, objective=LOSSES[self.loss], steps=self.steps, init="zeros",
                        restarts=self.restarts, early_stop=True).x_adv


@advkit.hookimpl
def register_attacks(register):
    register(APGDTargeted)
