"""Built-in plugin: S8's optimized additive noise towards a target class."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.engine import GradientStep, Problem, optimize
from advkit.objectives import target_logit
from advkit.params import MAX_STEPS, param
from advkit.steps import std_step


@dataclass(kw_only=True)
class Noise(Attack):
    """Additive noise that raises the target class logit, with std-normalized steps (S8).

    noise starts at zeros; with C = logits[target] and d = dC/dnoise, each step is
    noise <- project(noise + step_size * d / (d.std() + 1e-8)), i.e. alpha = 1 / (d.std() + 1e-8)
    per sample for step_size 1. The user's constraint set (an L-inf ball by default) keeps the
    noise small. Stops a sample once the target has probability >= ``confidence``.

    Parameters:
        steps (int, 100): maximum steps (one forward + one backward pass each).
        step_size (float, 1.0): multiplier of the std-normalized gradient (S8 uses 1).
        confidence (float, 0.9): success needs the target at probability >= this.
    """

    name = "noise"
    windowed = True
    targeted = True
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="maximum steps")
    step_size: float = param(1.0, gt=0, doc="multiple of alpha = 1 / (std(d) + 1e-8)")
    confidence: float = param(0.9, ge=0, lt=1, doc="success needs the target at probability >= this")

    def run(self, problem: Problem) -> Tensor:
        step = GradientStep(std_step, self.step_size)
        return optimize(
            problem, update=step, objective=target_logit, steps=self.steps, init="zeros", early_stop=True
        ).x_adv


@advkit.hookimpl
def register_attacks(register):
    register(Noise)
