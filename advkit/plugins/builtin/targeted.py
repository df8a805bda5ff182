"""Built-in plugin: the S3 targeted attack."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import advkit
from advkit.attack import Attack, resolve_step_size
from advkit.engine import GradientStep, Problem, optimize
from advkit.objectives import negative_target_cross_entropy
from advkit.params import MAX_STEPS, param
from advkit.steps import STEP_RULES, get_step_rule


@dataclass(kw_only=True)
class Targeted(Attack):
    """Targeted sign-gradient descent on the cross-entropy towards a target class (S3).

    Starts at zero perturbation, takes sign steps that lower the cross-entropy with the target
    class, projects onto the constraint set after every step, and stops each sample once the
    model predicts the target with probability >= ``confidence`` or its budget ends.
    Iterative target class method (Kurakin et al., 2016, arXiv:1607.02533).

    Parameters:
        steps (int, 100): maximum steps (one forward + one backward pass each).
        step_size (float | None, None): step in model units; default eps / 20.
        step_rule (str, "sign"): "sign", "l2" or "std".
        confidence (float, 0.9): success needs the target at probability >= this.
    """

    name = "targeted"
    windowed = True
    targeted = True
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="maximum steps")
    step_size: float | None = param(None, gt=0, doc="step in model units; default eps / 20")
    step_rule: str = param("sign", choices=lambda: STEP_RULES, doc="direction of a step")
    confidence: float = param(0.9, ge=0, lt=1, doc="success needs the target at probability >= this")

    def run(self, problem: Problem) -> Tensor:
        step = GradientStep(get_step_rule(self.step_rule), resolve_step_size(problem, self.step_size, 1 / 20))
        result = optimize(
            problem,
            update=step,
            objective=negative_target_cross_entropy,
            steps=self.steps,
            init="zeros",
            early_stop=True,
        )
        return result.x_adv


@advkit.hookimpl
def register_attacks(register):
    register(Targeted)
