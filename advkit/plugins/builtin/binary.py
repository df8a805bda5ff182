"""Built-in plugin: the S4 binary-perturbation attack."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.constraints import Binary
from advkit.engine import GradientStep, Problem, optimize
from advkit.objectives import objective_for
from advkit.params import MAX_STEPS, param
from advkit.steps import STEP_RULES, get_step_rule


@dataclass(kw_only=True)
class BinaryPerturbation(Attack):
    """Sign-gradient attack whose perturbation is binary: every pixel changes by 0 or by one fixed value (S4).

    Adds ``Binary(value)`` to the user's constraint set unless it has one (value defaults to
    the L-inf radius eps),
    then optimizes a latent perturbation in the set's convex relaxation with sign steps while the
    model is always evaluated at the latent's projection onto the binary set (lazy projection,
    as in BinaryConnect, Courbariaux et al., 2015). A pixel switches on once its latent passes
    value / 2. Stops each sample when a wrong class (or the target) reaches ``confidence``.

    Parameters:
        value (float | None, None): the nonzero perturbation value; default the L-inf radius eps.
        steps (int, 100): maximum steps (one forward + one backward pass each).
        step_size (float | None, None): latent step; default value / 4.
        step_rule (str, "sign"): "sign", "l2" or "std".
        confidence (float, 0.9): success needs the wrong class (or the target) at probability >= this.
    """

    name = "binary"
    windowed = True
    value: float | None = param(None, gt=0, doc="the one non-zero value of the perturbation; default the L-inf radius")
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="maximum steps")
    step_size: float | None = param(None, gt=0, doc="step in model units")
    step_rule: str = param("sign", choices=lambda: STEP_RULES, doc="direction of a step")
    confidence: float = param(0.9, ge=0, lt=1, doc="success needs the wrong/target class at probability >= this")

    def binary_value(self, problem: Problem) -> float:
        existing = [
            part for part in getattr(problem.constraint, "parts", [problem.constraint]) if isinstance(part, Binary)
        ]
        if existing:
            if self.value is not None and self.value != existing[0].value:
                raise ValueError(
                    f"value={self.value} conflicts with the constraint set's binary(value={existing[0].value})"
                )
            return existing[0].value
        if self.value is not None:
            if self.value == 0:
                raise ValueError("the binary perturbation value must be nonzero")
            return float(self.value)
        radius = problem.constraint.linf_radius
        if radius is None or not isinstance(radius, (int, float)):
            raise ValueError("binary attack: give value=..., or an L-inf ball with one radius for the default")
        return float(radius)

    def run(self, problem: Problem) -> Tensor:
        value = self.binary_value(problem)
        step_size = self.step_size if self.step_size is not None else abs(value) / 4
        step = GradientStep(get_step_rule(self.step_rule), step_size)
        objective = objective_for(problem.target is not None)
        return optimize(
            problem,
            update=step,
            objective=objective,
            steps=self.steps,
            init="zeros",
            early_stop=True,
            constraint=problem.constraint & Binary(value),
        ).x_adv


@advkit.hookimpl
def register_attacks(register):
    register(BinaryPerturbation)
