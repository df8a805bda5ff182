"""Built-in plugin: projected gradient descent with random start and restarts."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import advkit
from advkit.attack import Attack, resolve_step_size
from advkit.engine import GradientStep, Problem, optimize
from advkit.objectives import objective_for
from advkit.params import MAX_RESTARTS, MAX_STEPS, param
from advkit.steps import STEP_RULES, get_step_rule


@dataclass(kw_only=True)
class PGD(Attack):
    """Projected gradient descent: random start, fixed sign steps, restarts, best result per sample.

    Each restart starts at a random point of the constraint set and takes ``steps`` steps of
    ``step_size`` (ascending the cross-entropy with the label, or descending it towards the
    target), projecting after each. Restarts run only on samples not yet fooled; per sample the
    best point over all steps and restarts is kept (fooled first, then highest loss). It does
    not stop early unless ``early_stop`` is set, so its cost is exactly restarts x steps.
    Madry et al., 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks", arXiv:1706.06083.

    Parameters:
        steps (int, 40): steps per restart.
        step_size (float | None, None): step in model units; default 2.5 * eps / steps.
        restarts (int, 1): random restarts.
        random_start (bool, True): start each restart at a random feasible point.
        step_rule (str, "sign"): "sign", "l2" or "std".
        early_stop (bool, False): let samples leave once fooled.
    """

    name = "pgd"
    windowed = True
    steps: int = param(40, ge=1, le=MAX_STEPS, doc="steps per restart")
    step_size: float | None = param(None, gt=0, doc="step in model units; default 2.5 * eps / steps")
    restarts: int = param(1, ge=1, le=MAX_RESTARTS, doc="random restarts")
    random_start: bool = param(True, doc="start each restart at a random feasible point")
    step_rule: str = param("sign", choices=lambda: STEP_RULES, doc="direction of a step")
    early_stop: bool = param(False, doc="let samples leave once fooled")

    def run(self, problem: Problem) -> Tensor:
        fraction = 2.5 / max(self.steps, 1)
        step = GradientStep(get_step_rule(self.step_rule), resolve_step_size(problem, self.step_size, fraction))
        return optimize(
            problem,
            update=step,
            objective=objective_for(problem.target is not None),
            steps=self.steps,
            init="random" if self.random_start else "zeros",
            restarts=self.restarts,
            early_stop=self.early_stop,
        ).x_adv


@advkit.hookimpl
def register_attacks(register):
    register(PGD)
