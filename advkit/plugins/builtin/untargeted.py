"""Built-in plugin: the S2 untargeted attack."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import advkit
from advkit.attack import Attack, resolve_step_size
from advkit.engine import GradientStep, Problem, optimize
from advkit.objectives import cross_entropy
from advkit.params import MAX_STEPS, param
from advkit.steps import STEP_RULES, get_step_rule


@dataclass(kw_only=True)
class Untargeted(Attack):
    """Untargeted sign-gradient attack from zero until a wrong class is confident (S2).

    Starts at the clean input (zero perturbation), ascends the cross-entropy with the true
    label by sign steps, projects onto the constraint set after every step, and stops each
    sample as soon as the model predicts a wrong class with probability >= ``confidence``
    or its budget ends. Basic iterative method (Kurakin et al., 2016, arXiv:1607.02533)
    with a confidence stop.

    Parameters:
        steps (int, 100): maximum steps (one forward + one backward pass each).
        step_size (float | None, None): step in model units; default eps / 20.
        step_rule (str, "sign"): "sign", "l2" or "std".
        confidence (float, 0.9): success needs the wrong class at probability >= this.
    """

    name = "untargeted"
    windowed = True
    accepts_target = False
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="maximum steps (one forward + one backward pass each)")
    step_size: float | None = param(None, gt=0, doc="step in model units; default eps / 20")
    step_rule: str = param("sign", choices=lambda: STEP_RULES, doc="direction of a step")
    confidence: float = param(0.9, ge=0, lt=1, doc="success needs the wrong class at probability >= this")

    def run(self, problem: Problem) -> Tensor:
        step = GradientStep(get_step_rule(self.step_rule), resolve_step_size(problem, self.step_size, 1 / 20))
        result = optimize(
            problem, update=step, objective=cross_entropy, steps=self.steps, init="zeros", early_stop=True
        )
        return result.x_adv


@advkit.hookimpl
def register_attacks(register):
    register(Untargeted)
