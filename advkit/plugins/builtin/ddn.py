"""Built-in plugin: Decoupled Direction and Norm (a minimal-L2 attack)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.engine import Problem
from advkit.params import MAX_STEPS, param
from advkit.plugins.builtin.fmn import MinNormRun, column, cosine, lp_norm


def _cross_entropy_ascent(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """The cross-entropy with the label (untargeted), or minus the cross-entropy with the target."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


@dataclass(kw_only=True)
class DDN(Attack):
    """Decoupled Direction and Norm: L2-normalized cross-entropy steps, rescaled to an adaptive norm eps.

    Each step takes one forward and one backward pass at the current point, moves the perturbation by alpha along
    the L2-normalized gradient of the cross-entropy (up from the label, or down to a target), with alpha
    cosine-annealed from ``alpha`` to alpha / 100 (times the model's range width), then rescales it to L2 norm
    eps and clips it to the box and the threat model's other sets. eps starts at ``init_norm`` times the range
    width and, per sample, is multiplied by (1 - gamma) where the current point is adversarial and by (1 +
    gamma) where it is not (never beyond the farthest point of the box), so direction and norm are searched
    separately. Per sample the smallest-L2 adversarial point is kept; its norm goes to ``artifacts["norm"]``
    (inf where none was found, and the clean input is returned). A sample stops when the clean input is
    adversarial, so the cost is at most ``steps`` (or the budget) backward passes per sample. The threat model's
    L2 ball does not bound the search (the runner projects a best point beyond it); its other convex sets do.
    Rony et al., 2019, "Decoupling Direction and Norm for Efficient Gradient-Based L2 Adversarial Attacks and
    Defenses", arXiv:1811.09600.

    Parameters:
        steps (int, 100): steps (one forward and one backward pass each).
        alpha (float, 1.0): first step length (L2) as a multiple of the model's range width; annealed to alpha / 100.
        gamma (float, 0.05): relative change of eps per step.
        init_norm (float, 1.0): first eps as a multiple of the model's range width.
        early_stop (bool, False): stop a sample once it is adversarial within the threat model's L2 radius.
    """

    name = "ddn"
    warm_startable = False  # it starts at the clean input with eps = init_norm
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="steps (one forward and one backward pass each)")
    alpha: float = param(1.0, gt=0, doc="first step length as a multiple of the model's range width")
    gamma: float = param(0.05, gt=0, lt=1, doc="relative change of eps per step")
    init_norm: float = param(1.0, gt=0, doc="first eps as a multiple of the model's range width")
    early_stop: bool = param(False, doc="stop a sample once it is adversarial within the threat model's L2 radius")

    def run(self, problem: Problem) -> Tensor:
        run = MinNormRun(problem, "l2", self.steps, self.early_stop)
        x = run.x
        width = problem.model.range_width
        alpha_init = self.alpha * width
        farthest = run.farthest()
        delta = torch.zeros_like(x)
        eps = torch.full_like(farthest, self.init_norm * width).minimum(farthest)
        tiny = torch.finfo(x.dtype).tiny
        stepping = run.stepping()
        for i in range(run.steps):
            alpha = cosine(alpha_init, alpha_init / 100, i, run.steps)
            idx = stepping.nonzero().squeeze(1)
            d, e = delta[idx], eps[idx]
            _, grad, adversarial, _, bad = run.evaluate(idx, d, _cross_entropy_ascent)
            d = d + alpha * grad / column(lp_norm(grad, "l2").clamp_min(tiny), grad)
            e = torch.where(bad, e, torch.where(adversarial, e * (1 - self.gamma), e * (1 + self.gamma)))
            e = torch.minimum(e, farthest[idx])
            norms = lp_norm(d, "l2")
            d = d * column(torch.where(norms > 0, e / norms.clamp_min(tiny), torch.ones_like(e)), d)
            d = run.feasible(idx, d)
            delta[idx], eps[idx] = d, e
            stepping = run.stepping()
            if not bool(stepping.any()):
                break
        return run.finish()


@advkit.hookimpl
def register_attacks(register):
    register(DDN)
