"""The base class every attack plugin subclasses.

An attack is a keyword-only dataclass of hyperparameters (stored unchanged, repr for free)
with one method, ``run(problem) -> Tensor``, that returns adversarial inputs. Each field declares
its type and range (:func:`advkit.params.param`); construction checks them, so a bad value is
refused before any work whichever way it came in. An attack does not check its own work: the
runner projects the result onto the threat model, counts passes at the model and re-checks
success with a fresh forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from torch import Tensor

from advkit.engine import Problem
from advkit.errors import ParameterError
from advkit.params import ParamSpec, param_specs, validate


@dataclasses.dataclass(kw_only=True)
class Attack:
    """Base class for attacks; subclasses are keyword-only dataclasses."""

    name: ClassVar[str] = ""
    #: Does the attack need target classes?
    targeted: ClassVar[bool] = False
    #: Can the attack aim at target classes when given them? (An attack that ignores targets must say False:
    #: its success would otherwise be judged against a target it never aimed at.)
    accepts_target: ClassVar[bool] = True
    #: May a sweep start it from the result of a smaller eps? (False where the start defines
    #: the attack, e.g. FGSM's single step from the clean input.)
    warm_startable: ClassVar[bool] = True
    #: Is each sample's result independent of the other samples of the batch? The runner may then
    #: split a batch that runs out of memory (False for attacks that couple samples, e.g. universal).
    per_sample: ClassVar[bool] = True
    #: Does ``run`` do all its model work through :func:`advkit.engine.optimize`? The runner then hands it the
    #: whole batch with ``problem.window`` set, and the engine keeps a window of rows stepping, admitting the next
    #: samples as others finish (every step's batch full). Otherwise (the default, for an attack with its own loop)
    #: the runner attacks consecutive chunks.
    windowed: ClassVar[bool] = False

    def __post_init__(self) -> None:
        validate(self)  # every field's declared type and range, whichever way the values came in

    @property
    def requires_target(self) -> bool:
        """Does this configured attack need target classes? ``targeted``, unless a parameter makes it pick its own
        (``apgd_targeted`` with ``targets="malt"`` attacks untargeted, choosing its targets per sample)."""
        return self.targeted

    @property
    def success_confidence(self) -> float:
        """Probability the predicted (wrong or target) class needs for success; an attack's
        ``confidence`` field sets it, otherwise any misclassification counts."""
        return float(getattr(self, "confidence", 0.0))

    def rows_per_sample(self, model: Any) -> int:
        """Rows a windowed attack's engine steps per sample (:attr:`advkit.kernel.Problem.group_size`): more than 1
        for an attack that attacks each sample several ways at once; the runner sizes windows in rows. Default 1."""
        return 1

    def check_model(self, model: Any) -> None:
        """Refuse (:class:`~advkit.errors.ParameterError`) a model this configured attack cannot work on, before any
        pass (the runner calls it; e.g. the DLR loss needs 3 classes). The default accepts every model."""

    def run(self, problem: Problem) -> Tensor:
        """Return adversarial inputs for ``problem`` (same shape and dtype as ``problem.x``)."""
        raise NotImplementedError

    @classmethod
    def param_fields(cls) -> list[dataclasses.Field]:
        """The attack's hyperparameters."""
        return [f for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def param_specs(cls) -> list[ParamSpec]:
        """The attack's hyperparameters with their types, defaults and valid ranges."""
        return param_specs(cls)

    def params(self) -> dict[str, Any]:
        """Hyperparameters as a JSON-able dict."""
        return {f.name: getattr(self, f.name) for f in self.param_fields()}

    @classmethod
    def summary(cls) -> str:
        """One line describing the attack (the docstring's first line)."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else cls.name


def resolve_step_size(problem: Problem, step_size: float | None, fraction: float) -> Tensor | float:
    """An explicit step size, else ``fraction`` of the L-inf radius (or of the L2 radius / sqrt(dim),
    or of the model's range if the set has no radius)."""
    if step_size is not None:
        if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
            raise ParameterError(f"step_size must be a finite number > 0, got {step_size!r}")
        return step_size
    constraint = problem.constraint
    if constraint.linf_radius is not None:
        return fraction * constraint.linf_radius
    if constraint.l2_radius is not None:
        dim = problem.x[0].numel()
        return fraction * constraint.l2_radius / dim**0.5
    return fraction * problem.model.range_width
