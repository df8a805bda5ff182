"""Run an attack under a threat model and report what really happened.

The runner owns the guarantees users trust, whatever the plugin does: the model is in eval
mode (its mode restored afterwards, also on exceptions), the attack works on a copy of the
input, the returned points are projected onto the constraint set and checked, pass counts
come from the model adapter, and success is re-checked by a fresh forward pass.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from advkit.attack import Attack
from advkit.constraints import Box, Constraint, LinfBall
from advkit.criteria import Criterion, criterion_for
from advkit.engine import Problem
from advkit.models import ModelAdapter, load_model
from advkit.registry import get_attack
from advkit.result import AttackResult
from advkit.validation import as_targets, check_inputs, check_labels


class ThreatModelViolation(RuntimeError):
    """An attack returned points that are not finite or that projection could not make feasible."""


class BudgetExceeded(RuntimeError):
    """An attack used more backward passes than the budget allows."""


def make_attack(attack: str | Attack, **params: Any) -> Attack:
    """An attack instance from a registered name and hyperparameters (or the instance itself)."""
    if isinstance(attack, Attack):
        if params:
            raise TypeError("pass hyperparameters either to the attack instance or to make_attack, not both")
        return attack
    cls = get_attack(attack).obj
    names = {f.name for f in cls.param_fields()}
    unknown = sorted(set(params) - names)
    if unknown:
        raise TypeError(f"attack {attack!r} has no parameter(s) {', '.join(unknown)}; its parameters: {', '.join(sorted(names))}")
    return cls(**params)


def attack_plugin(attack: Attack) -> dict:
    """Name and version of the plugin that registered this attack class (if registered)."""
    from advkit.registry import attacks

    for item in attacks().values():
        if item.obj is type(attack):
            return {"name": item.plugin.name, "distribution": item.plugin.distribution, "version": item.plugin.version}
    return {"name": None, "distribution": None, "version": None}


def threat_model(model: ModelAdapter, constraint: Constraint | None, eps: float | None) -> Constraint:
    """The user's constraint set (or an L-inf ball of radius eps), always intersected with the model's box."""
    if constraint is None:
        if eps is None:
            raise ValueError("give a constraint set or eps")
        constraint = LinfBall(eps)
    return constraint & Box(*model.bounds)


def run_attack(
    model: ModelAdapter | str,
    attack: Attack | str,
    x: Tensor,
    y: Tensor,
    *,
    constraint: Constraint | None = None,
    eps: float | None = None,
    target: int | Tensor | None = None,
    criterion: Criterion | None = None,
    confidence: float | None = None,
    budget: int | None = None,
    seed: int = 0,
    start: Tensor | None = None,
    **attack_params: Any,
) -> AttackResult:
    """Attack ``(x, y)`` on ``model`` and return an independently checked result.

    ``eps`` (model units) builds an L-inf ball when no ``constraint`` is given; the model's box
    always applies. ``confidence`` overrides the attack's default success confidence.
    ``budget`` caps backward passes per sample. ``seed`` seeds the attack's own generator; the
    global RNG is not touched. ``start`` warm-starts the attack (same shape as ``x``, e.g. the
    result of a smaller eps); attacks with ``warm_startable = False`` ignore it.
    """
    model = load_model(model) if isinstance(model, str) else model
    attack = make_attack(attack, **attack_params)
    check_inputs(model, x)
    check_labels(model, y, x.shape[0])
    if eps is not None and eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be >= 1 backward pass per sample, got {budget}")
    y = y.to(x.device)
    if attack.targeted and target is None:
        raise ValueError(f"attack {attack.name!r} is targeted: give a target class")
    targets = None if target is None else as_targets(model, target, y)
    if criterion is None:
        level = attack.success_confidence if confidence is None else confidence
        criterion = criterion_for(targets is not None, level)
    if criterion.targeted and targets is None:
        raise ValueError("a targeted criterion needs a target class")
    constraint = threat_model(model, constraint, eps)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    problem = Problem(
        model=model,
        x=x.detach().clone(),
        y=y,
        constraint=constraint,
        criterion=criterion,
        target=targets,
        budget=budget,
        generator=generator,
        start=_warm_start(attack, start, x),
    )
    forward0, backward0 = model.counter.snapshot()
    start = time.perf_counter()
    with model.eval_mode():
        x_adv = attack.run(problem)
        seconds = time.perf_counter() - start
        x_adv = _enforce_threat_model(x, x_adv, constraint)
        with torch.no_grad():
            logits = model.module(x_adv)
    forward = model.counter.forward - forward0
    backward = model.counter.backward - backward0
    per_sample = _per_sample_backward(problem, backward)
    if budget is not None and backward > budget * x.shape[0]:
        raise BudgetExceeded(f"attack {attack.name!r} used {backward} backward passes; budget {budget} x {x.shape[0]} samples")
    if budget is not None and per_sample is not None and int(per_sample.max()) > budget:
        raise BudgetExceeded(f"attack {attack.name!r} used {int(per_sample.max())} backward passes on one sample; budget {budget}")
    probs = logits.softmax(dim=1)
    confidence_adv, pred = probs.max(dim=1)
    success = criterion.reached(logits, y, targets)
    linf_radius = getattr(constraint, "linf_radius", None)
    return AttackResult(
        model=model.name,
        attack=attack.name,
        attack_params=attack.params(),
        bounds=model.bounds,
        constraints=constraint.describe(),
        constraints_dict=constraint.to_dict(),
        criterion=criterion.describe(),
        eps=eps if eps is not None else (float(linf_radius) if isinstance(linf_radius, (int, float)) else None),
        seed=seed,
        x=x.detach(),
        x_adv=x_adv,
        y=y,
        target=targets,
        pred=pred,
        confidence=confidence_adv,
        success=success,
        forward_passes=forward,
        backward_passes=backward,
        budget=budget,
        seconds=seconds,
        plugin=attack_plugin(attack),
        backward_counts=per_sample,
        artifacts=dict(problem.artifacts),
    )


def _warm_start(attack: Attack, start: Tensor | None, x: Tensor) -> Tensor | None:
    if start is None or not attack.warm_startable:
        return None
    if start.shape != x.shape:
        raise ValueError(f"start has shape {tuple(start.shape)}, expected {tuple(x.shape)}")
    return start.detach().to(device=x.device, dtype=x.dtype).clone()


def _per_sample_backward(problem: Problem, total: int) -> Tensor | None:
    """The engine's per-sample backward passes, if they account for every pass the model saw."""
    counts = problem.backward_counts
    if counts is None or int(counts.sum()) != total:
        return None  # the attack spent passes outside the engine: only the total is known
    return counts.detach().cpu()


def _enforce_threat_model(x: Tensor, x_adv: Tensor, constraint: Constraint) -> Tensor:
    """Project the attack's output onto the constraint set; refuse non-finite or wrongly shaped output."""
    if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        raise ThreatModelViolation(f"attack returned shape {getattr(x_adv, 'shape', None)}, expected {tuple(x.shape)}")
    x_adv = x_adv.detach().to(dtype=x.dtype, device=x.device)
    if not torch.isfinite(x_adv).all():
        raise ThreatModelViolation("attack returned NaN or inf")
    x_adv = x + constraint.project(x_adv - x, x)
    if not bool(constraint.contains(x_adv - x, x).all()):
        raise ThreatModelViolation("projected output is still outside the constraint set")
    return x_adv
