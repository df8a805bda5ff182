"""Built-in plugin: one universal perturbation shared by every input (S8's extension)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

import advkit
from advkit.attack import Attack, resolve_step_size
from advkit.engine import GradientStep, Problem, optimize
from advkit.params import MAX_STEPS, param
from advkit.steps import STEP_RULES, get_step_rule

#: Targeted inputs stop pulling once CE(target) < this (target probability about 0.95).
TARGET_CE_FLOOR = 0.05


def clamped_objective(targeted: bool, clamp: float):
    """Cross-entropy away from the label capped at ``clamp`` (or minus the CE towards the target,
    capped at -TARGET_CE_FLOOR), so inputs already fooled stop dominating the shared gradient."""

    def objective(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
        if targeted:
            return (-F.cross_entropy(logits, target, reduction="none")).clamp(max=-TARGET_CE_FLOOR)
        return F.cross_entropy(logits, y, reduction="none").clamp(max=clamp)

    return objective


@dataclass(kw_only=True)
class Universal(Attack):
    """One perturbation shared by the whole batch, untargeted or towards a target class.

    Optimizes a single ``u`` (shape ``(1, C, H, W)``) in the input-independent part of the
    constraint set (e.g. the L-inf ball, nonnegativity, binary values); every input sees
    ``x + u`` projected onto its own set (clipped to the model's box). Each step sums the
    per-input gradients of a clamped cross-entropy (max(CE) = ``clamp``, so fooled inputs stop
    pulling) over the batch or a minibatch and takes a sign step of ``step_size``. Keeps the
    ``u`` that fools the most inputs; it is in ``result.artifacts["perturbation"]``. Shafahi et
    al., 2020, "Universal adversarial training", arXiv:1812.03705; Moosavi-Dezfooli et al.,
    2017, "Universal adversarial perturbations", arXiv:1610.08401.

    Parameters:
        steps (int, 100): steps (each one forward + one backward pass per input of the step's batch).
        step_size (float | None, None): step in model units; default eps / 20.
        step_rule (str, "sign"): "sign", "l2", "std" or "raw" on the summed gradient.
        minibatch (int | None, None): inputs per step; None uses the whole batch.
        clamp (float, 5.0): cap of the per-input cross-entropy (untargeted attacks).
        stop_rate (float, 1.0): stop once this share of the batch is fooled.
    """

    name = "universal"
    warm_startable = False
    per_sample = False
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="steps")
    step_size: float | None = param(None, gt=0, doc="step in model units; default eps / 20")
    step_rule: str = param("sign", choices=lambda: STEP_RULES, doc="direction of a step")
    minibatch: int | None = param(None, ge=1, doc="images per step (None: all)")
    clamp: float = param(5.0, gt=0, doc="cross-entropy clamp")
    stop_rate: float = param(1.0, gt=0, le=1, doc="stop once this share of the batch is fooled")

    def run(self, problem: Problem) -> Tensor:
        targeted = problem.target is not None
        objective = clamped_objective(targeted, self.clamp)
        step = GradientStep(get_step_rule(self.step_rule), resolve_step_size(problem, self.step_size, 1 / 20))
        result = optimize(
            problem,
            update=step,
            objective=objective,
            steps=self.steps,
            variable="universal",
            minibatch=self.minibatch,
            stop_rate=self.stop_rate,
        )
        problem.artifacts["perturbation"] = result.shared.detach()
        return result.x_adv


@advkit.hookimpl
def register_attacks(register):
    register(Universal)
