"""Built-in plugin: untargeted APGD (adaptive step schedule, momentum, CE / margin / DLR loss, restarts)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import advkit
from advkit.adaptive import step_for
from advkit.attack import Attack
from advkit.engine import Problem, optimize
from advkit.errors import ParameterError
from advkit.objectives import UNTARGETED_LOSSES
from advkit.params import MAX_RESTARTS, MAX_STEPS, param


@dataclass(kw_only=True)
class APGD(Attack):
    """Untargeted APGD: adaptive step size with momentum, a CE, margin or DLR loss, restarts.

    Maximizes the loss with sign steps of size eta and momentum 0.25 on the previous move
    (alpha = 0.75). eta starts at ``initial_step`` x eps and halves at APGD's checkpoints (22%,
    41%, 57%, ... of the steps) where the loss stalled; a halving sample restarts from its best
    point. Each restart starts at a random point of the set (the first at the input with
    ``random_start=False``) and runs only on samples not yet fooled, which leave as soon as they
    are (so the cost is at most ``steps`` x ``restarts`` backward passes per sample). Per sample
    the best point is kept. ``loss="margin"`` (max_{j != y} z_j - z_y) or ``"dlr"`` (the margin
    divided by z_pi1 - z_pi3) do not saturate as CE does on confidently classified inputs.
    Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", arXiv:2003.01690.

    Parameters:
        steps (int, 100): steps per restart.
        restarts (int, 1): restarts (total cost at most steps x restarts backward passes).
        loss (str, "ce"): "ce", "margin", "dlr" or "ce+margin".
        random_start (bool, True): start the first restart at a random feasible point.
        initial_step (float, 2.0): first step size as a multiple of the L-inf radius (APGD uses 2).
        alpha (float, 0.75): weight of the new step against momentum.
        rho (float, 0.75): halve eta at a checkpoint if the loss rose in fewer than this share of steps.
    """

    name = "apgd"
    windowed = True
    accepts_target = False
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="steps per restart")
    restarts: int = param(1, ge=1, le=MAX_RESTARTS, doc="restarts (at most steps x restarts backward passes)")
    loss: str = param("ce", choices=lambda: UNTARGETED_LOSSES, doc="the loss ascended")
    random_start: bool = param(True, doc="start the first restart at a random feasible point")
    initial_step: float = param(2.0, gt=0, doc="first step size as a multiple of the L-inf radius")
    alpha: float = param(0.75, gt=0, le=1, doc="weight of the new step against momentum")
    rho: float = param(
        0.75, ge=0, le=1, doc="halve the step at a checkpoint if the loss rose in fewer than this share of steps"
    )

    def check_model(self, model) -> None:
        if self.loss == "dlr" and model.num_classes < 3:
            raise ParameterError(
                f"apgd: the DLR loss needs at least 3 classes, the model has {model.num_classes}; use loss=ce"
            )

    def run(self, problem: Problem) -> Tensor:
        update = step_for(problem, self.initial_step, self.steps, self.alpha, self.rho)
        return optimize(
            problem,
            update=update,
            objective=UNTARGETED_LOSSES[self.loss],
            steps=self.steps,
            init="random" if self.random_start else "zeros",
            restarts=self.restarts,
            early_stop=True,
        ).x_adv


@advkit.hookimpl
def register_attacks(register):
    register(APGD)
