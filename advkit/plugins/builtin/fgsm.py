"""Built-in plugin: the fast gradient sign method."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import advkit
from advkit.attack import Attack, resolve_step_size
from advkit.engine import GradientStep, Problem, optimize
from advkit.objectives import objective_for
from advkit.params import param
from advkit.steps import sign_step


@dataclass(kw_only=True)
class FGSM(Attack):
    """Fast gradient sign method: one sign step of size eps from the clean input.

    x_adv = project(x + eps * sign(grad loss)); untargeted ascends the cross-entropy with the
    label, targeted descends the cross-entropy with the target. One forward and one backward pass
    per sample (the runner's re-check adds one forward pass).
    Goodfellow et al., 2015, "Explaining and Harnessing Adversarial Examples", arXiv:1412.6572.

    Parameters:
        step_size (float | None, None): step in model units; default the L-inf radius eps.
    """

    name = "fgsm"
    windowed = True
    warm_startable = False
    step_size: float | None = param(None, gt=0, doc="step in model units; default the L-inf radius")

    def run(self, problem: Problem) -> Tensor:
        step = GradientStep(sign_step, resolve_step_size(problem, self.step_size, 1.0))
        objective = objective_for(problem.target is not None)
        return optimize(problem, update=step, objective=objective, steps=1, early_stop=False, final="last").x_adv


@advkit.hookimpl
def register_attacks(register):
    register(FGSM)
