"""Built-in plugin: class and feature visualization by gradient ascent (S6, S9)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

import advkit
from advkit.attack import Attack
from advkit.engine import START_TO_INIT, GradientStep, Problem, optimize
from advkit.errors import ParameterError
from advkit.objectives import target_logit
from advkit.params import MAX_STEPS, param
from advkit.steps import STEP_RULES, get_step_rule


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
    windowed = True
    warm_startable = False
    targeted = True
    steps: int = param(200, ge=1, le=MAX_STEPS, doc="gradient-ascent iterations")
    step_size: float = param(0.05, gt=0, doc="step in model units")
    step_rule: str = param("std", choices=lambda: STEP_RULES, doc="direction of a step")
    l2_penalty: float = param(0.0, ge=0, doc="lambda in J = C - lambda * ||x||^2")
    layer: str | None = param(None, doc="a named module to maximize instead of a logit")
    channel: int | None = param(None, ge=0, doc="channel (or unit) of layer; default the target class")
    neuron: tuple | None = param(None, doc="(h, w) of a single neuron in the channel")
    start: str = param("input", choices=lambda: START_TO_INIT, doc="where the image starts")
    history_: Tensor | None = field(default=None, init=False, repr=False)

    def _layer_objective(self, problem: Problem):
        modules = dict(problem.model.module.named_modules())
        if self.layer not in modules:
            names = ", ".join(name for name in modules if name)
            raise ParameterError(f"model {problem.model.name!r} has no layer {self.layer!r}; layers: {names}")
        captured: dict[str, Tensor] = {}
        handle = modules[self.layer].register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out))
        try:
            problem.model.logits(problem.x[:1])  # one probe, outside the pass counter: the layer's output shape
            self._check_unit(problem, captured["out"])
        except BaseException:
            handle.remove()
            raise

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

    def _check_unit(self, problem: Problem, act: Tensor) -> None:
        """The channel (or the targets standing in for it) and the neuron must exist in the layer's output."""
        where = f"layer {self.layer!r} of model {problem.model.name!r}"
        units = act.shape[1] if act.dim() >= 2 else 0
        wanted = [self.channel] if self.channel is not None else sorted(set(problem.target.tolist()))
        for unit in wanted:
            if not 0 <= unit < units:
                what = "channel" if self.channel is not None else "channel (= the target class, as no channel is given)"
                raise ParameterError(f"{what} {unit} is out of range: {where} has {units} channels (0..{units - 1})")
        if self.neuron is not None:
            if act.dim() != 4 or len(self.neuron) != 2:
                raise ParameterError(f"neuron={self.neuron!r} needs an (h, w) pair and a convolutional {where}")
            h, w = self.neuron
            if not (0 <= h < act.shape[2] and 0 <= w < act.shape[3]):
                raise ParameterError(
                    f"neuron {self.neuron!r} is outside the {act.shape[2]}x{act.shape[3]} map of {where}"
                )

    def run(self, problem: Problem) -> Tensor:
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
