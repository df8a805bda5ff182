"""Built-in plugin: look-alike images that read as another class (S7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.engine import START_TO_INIT, GradientStep, Problem, optimize
from advkit.objectives import target_logit
from advkit.params import MAX_STEPS, param
from advkit.steps import STEP_RULES, get_step_rule


@dataclass(kw_only=True)
class Lookalike(Attack):
    """Gradient ascent on C = logits[target] - beta * mse(x_adv, x) from the image or from noise (S7).

    The input image is the look-alike reference and, by default, the start (``start="noise"``
    starts from mid-range Gaussian noise instead): the result keeps looking like it (the MSE term,
    mean over pixels) while the target logit rises, e.g. a "2" that the model reads as "5". Each
    sample stops once the model reads it as the target with probability >= ``confidence`` (so it
    changes no more than needed; ``stop_early=False`` runs every step), records C per step in
    ``history_`` and keeps, per sample, the best point that reaches the target (else the highest
    C). Any constraint set applies on top.

    Parameters:
        beta (float, 1e-4): weight of the MSE to the reference image (about 1e-4 in S7; raise it to stay closer).
        steps (int, 100): gradient-ascent iterations.
        step_size (float, 0.02): step in model units.
        step_rule (str, "std"): "std", "raw", "l2" or "sign".
        start (str, "input"): "input" (the reference image), "noise" or "blank".
        stop_early (bool, True): stop each sample once it reaches the target.
        confidence (float, 0.9): success needs the target at probability >= this.
    """

    name = "lookalike"
    windowed = True
    warm_startable = False
    targeted = True
    beta: float = param(1e-4, ge=0, doc="weight of the MSE to the reference image")
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="gradient-ascent iterations")
    step_size: float = param(0.02, gt=0, doc="step in model units")
    step_rule: str = param("std", choices=lambda: STEP_RULES, doc="direction of a step")
    start: str = param("input", choices=lambda: START_TO_INIT, doc="where the image starts")
    stop_early: bool = param(True, doc="stop each sample once it reaches the target")
    confidence: float = param(0.9, ge=0, lt=1, doc="success needs the target at probability >= this")
    history_: Tensor | None = field(default=None, init=False, repr=False)

    def run(self, problem: Problem) -> Tensor:
        beta = self.beta
        to_pixels = 255.0 / problem.model.range_width  # mse on the 0-255 pixel scale, as S7 tunes beta

        def objective(logits, y, target, x_adv, x):
            return target_logit(logits, y, target) - beta * ((x_adv - x) * to_pixels).flatten(1).pow(2).mean(1)

        step = GradientStep(get_step_rule(self.step_rule), self.step_size)
        result = optimize(
            problem,
            update=step,
            objective=objective,
            steps=self.steps,
            early_stop=self.stop_early,
            init=START_TO_INIT[self.start],
            variable="image",
            record=True,
        )
        self.history_ = result.history
        return result.x_adv


@advkit.hookimpl
def register_attacks(register):
    register(Lookalike)
