"""Built-in plugin: look-alike images that read as another class (S7)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.engine import GradientStep, Problem, optimize
from advkit.objectives import target_logit
from advkit.steps import get_step_rule


@dataclass(kw_only=True)
class Lookalike(Attack):
    """Gradient ascent on C = logits[target] - beta * mse(x_adv, x) from the image itself (S7).

    The input image is both the start and the look-alike reference: the result keeps looking
    like it (the MSE term, mean over pixels) while the target logit rises, e.g. a "2" that the
    model reads as "5". Runs a fixed number of steps and keeps, per sample, the best point that
    reaches the target (else the highest C). Any constraint set applies on top.

    Parameters:
        beta (float, 1e-4): weight of the MSE to the reference image (about 1e-4 in S7; raise it to stay closer).
        steps (int, 100): gradient-ascent iterations.
        step_size (float, 0.02): step in model units.
        step_rule (str, "std"): "std", "raw", "l2" or "sign".
    """

    name = "lookalike"
    targeted = True
    beta: float = 1e-4
    steps: int = 100
    step_size: float = 0.02
    step_rule: str = "std"

    def run(self, problem: Problem) -> Tensor:
        beta = self.beta

        def objective(logits, y, target, x_adv, x):
            return target_logit(logits, y, target) - beta * (x_adv - x).flatten(1).pow(2).mean(1)

        step = GradientStep(get_step_rule(self.step_rule), self.step_size)
        return optimize(problem, update=step, objective=objective, steps=self.steps, early_stop=False).x_adv


@advkit.hookimpl
def register_attacks(register):
    register(Lookalike)
