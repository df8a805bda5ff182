"""Every advkit hook, in one module.

Registration hooks hand the plugin a ``register`` callback; a plugin calls it once per
class or spec it provides. Hook calls are keyword-only and an implementation may accept
fewer arguments than its spec, so these specs can grow without breaking plugins.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("advkit")


@hookspec
def register_attacks(register: Callable[[type], None]) -> None:
    """Register attack classes: call ``register(AttackClass)`` (a subclass of ``advkit.Attack``)."""


@hookspec
def register_models(register: Callable[..., None]) -> None:
    """Register model adapters: call ``register(ModelSpec(name=..., description=..., load=...))``."""


@hookspec
def register_constraints(register: Callable[[type], None]) -> None:
    """Register constraint classes: call ``register(ConstraintClass)`` (a subclass of ``advkit.constraints.Constraint``)."""


@hookspec
def register_evaluators(register: Callable[[type], None]) -> None:
    """Register evaluator classes: call ``register(EvaluatorClass)``; each has a ``name`` and a docstring."""


@hookspec
def register_datasets(register: Callable[..., None]) -> None:
    """Register data sets: call ``register(DatasetSpec(name=..., description=..., load=...))`` (see ``advkit.datasets``)."""


@hookspec
def register_transforms(register: Callable[..., None]) -> None:
    """Register random transforms for EOT gradients: call ``register(EOTTransform(name=..., apply=..., draws=...,
    description=...))`` (see ``advkit.gradients``); ``--gradient eot:NAME`` then draws them."""
