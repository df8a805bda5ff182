"""Built-in plugin: class and feature visualization by gradient ascent (S6, S9)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.engine import START_TO_INIT, GradientStep, Problem, optimize
from advkit.objectives import target_logit
from advkit.steps import get_step_rule


@dataclass(kw_only=True)
class Visualize(Attack):
    """Gradient ascent on a class logit, or on a layer's channel or neuron, from the given images (S6, S9).

    Maximizes J(x) = C(x) - l2_penalty * ||x||_2^2, where C is logits[target] (before the
    softmax) or, with ``layer``, the mean activation of channel ``channel`` of that named
    module (or one neuron of it with ``neuron=(h, w)``; for a linear layer, unit ``channel``).
    The weights never change; the whole image is optimized. Starts from Gaussian noise around the
    middle of the model's range (``start="noise"``, S6), the zero image (``"blank"``, S9) or the
    images passed in (``"input"``), runs a fixed number of steps and records J per step in
    ``history_`` (steps x samples). Simonyan et al., 2014, "Deep Inside Convolutional Networks",
    arXiv:1312.6034.

    Parameters:
        steps (int, 200): gradient-ascent iterations.
        step_size (float, 0.05): step in model units.
        step_rule (str, "std"): "raw" (x + step * dJ/dx), "std", "l2" or "sign".
        l2_penalty (float, 0.0): lambda in J = C - lambda * ||x||^2.
        layer (str | None, None): name of a module (see ``model.module.named_modules()``) to maximize instead of a logit.
        channel (int | None, None): channel (or unit) of ``layer``; default the target class index.
        neuron (tuple | None, None): (h, w) position of a single neuron in ``layer``'s channel.
        start (str, "input"): "noise" (mid-range Gaussian, std 0.1 x range), "blank" (zero image) or "input".
    """

    name = "visualize"
    warm_startable = False
    targeted = True
    steps: int = 200
    step_size: float = 0.05
    step_rule: str = "std"
    l2_penalty: float = 0.0
    layer: str | None = None
    channel: int | None = None
    neuron: tuple | None = None
    start: str = "input"
    history_: Tensor | None = field(default=None, init=False, repr=False)

    def _layer_objective(self, problem: Problem):
        modules = dict(problem.model.module.named_modules())
        if self.layer not in modules:
            names = ", ".join(name for name in modules if name)
            raise ValueError(f"model {problem.model.name!r} has no layer {self.layer!r}; layers: {names}")
        captured: dict[str, Tensor] = {}
        handle = modules[self.layer].register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out))

        def objective(logits: Tensor, y: Tensor, target: Tensor | None, x_adv=None, x=None) -> Tensor:
            act = captured["out"]
            index = target if self.channel is None else torch.full_like(target, self.channel)
            rows = torch.arange(act.shape[0], device=act.device)
            if act.dim() == 2:
                return act[rows, index]
            chosen = act[rows, index]
            if self.neuron is not None:
                h, w = self.neuron
                return chosen[:, h, w]
            return chosen.flatten(1).mean(1)

        return objective, handle

    def run(self, problem: Problem) -> Tensor:
        if self.start not in START_TO_INIT:
            raise ValueError(f"unknown start {self.start!r}; valid: {', '.join(START_TO_INIT)}")
        handle = None
        base = target_logit
        if self.layer is not None:
            base, handle = self._layer_objective(problem)
        penalty = self.l2_penalty

        def objective(logits, y, target, x_adv=None, x=None):
            value = base(logits, y, target, x_adv)
            if penalty and x_adv is not None:
                value = value - penalty * x_adv.flatten(1).pow(2).sum(1)
            return value

        try:
            result = optimize(
                problem,
                update=GradientStep(get_step_rule(self.step_rule), self.step_size),
                objective=objective,
                steps=self.steps,
                init=START_TO_INIT[self.start],
                early_stop=False,
                record=True,
                variable="image",
            )
        finally:
            if handle is not None:
                handle.remove()
        self.history_ = result.history
        return result.x_adv


@advkit.hookimpl
def register_attacks(register):
    register(Visualize)
