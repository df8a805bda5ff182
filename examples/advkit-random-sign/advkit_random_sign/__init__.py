"""An advkit attack plugin in one file: random corners of the threat model, best one kept."""

from dataclasses import dataclass

import torch

import advkit
from advkit.attack import Attack
from advkit.engine import Problem
from advkit.params import param


@dataclass(kw_only=True)
class RandomSign(Attack):
    """Gradient-free baseline: random sign noise at the L-inf radius, best of ``trials`` kept.

    Draws ``trials`` perturbations eps * sign(N(0, 1)), projects each onto the user's
    constraint set and keeps, per sample, the first one that succeeds (else the last).
    Uses forward passes only. A white-box attack weaker than this is broken. The noise comes
    from per-sample streams (``problem.streams``), so a batch gives each sample what its slices
    give it.

    Parameters:
        trials (int, 10): random draws per sample.
    """

    name = "random_sign"
    trials: int = param(10, ge=1, le=10_000, doc="random draws per sample")

    def run(self, problem: Problem) -> torch.Tensor:
        x, radius = problem.x, problem.constraint.linf_radius
        radius = problem.model.range_width if radius is None else radius
        if isinstance(radius, torch.Tensor):  # per-sample radii: one per row
            radius = radius.to(x).view(-1, *[1] * (x.dim() - 1))
        best = x.clone()
        done = torch.zeros(problem.n, dtype=torch.bool, device=x.device)
        streams = problem.streams("random_sign")  # row i depends only on the seed and sample i
        for _ in range(self.trials):
            noise = streams.randn(x.shape, dtype=x.dtype).sign()
            candidate = x + problem.constraint.project(radius * noise, x)
            with torch.no_grad():
                fooled = problem.criterion.reached(problem.model(candidate), problem.y, problem.target)
            take = (~done).view(-1, *[1] * (x.dim() - 1))
            best = torch.where(take, candidate, best)
            done |= fooled
        return best


@advkit.hookimpl
def register_attacks(register):
    register(RandomSign)
