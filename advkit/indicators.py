"""Indicators of attack failure (Pintor et al., NeurIPS 2022, arXiv:2106.09947), each with the fix advkit can run.

A sample an attack did not fool counts as robust; these indicators say when that verdict comes from the attack
failing rather than from the model being robust. They look at the attack's own path on a few samples, recorded by
an adapter (:class:`Traced`) that gives every point the attack queries to the watched sample whose clean input is
nearest and keeps the logits the attack saw, the real model's logits and the norm of the input gradient it received:
:func:`traced_run` records a run as it happens (``advkit attack``), :func:`probe` reruns the attack on a few samples
(per-sample random streams make that the very run those samples had in the whole batch). From that:

* **silent success**: a queried point inside the threat model fooled the model, yet the attack returned a point that
  does not (fix: let the attack stop on success, ``early_stop=True``, where it has that parameter);
* **unavailable gradients**: the input gradient is all zero (or not finite) on most of the steps before the first
  adversarial point (fix: BPDA through the module types whose backward pass zeroes a non-zero gradient, found by
  :func:`blocking_modules`);
* **unstable predictions**: the model's outputs change between two evaluations of the same point (a randomized
  model), or its prediction changes within a tiny neighbourhood of the clean inputs (fix: EOT gradients, over the
  model's own randomness or over small noise);
* **incomplete optimization**: on samples not fooled, the attack's objective was still rising over the last fifth of
  its steps (fix: twice the steps);
* **transfer failure**: with a surrogate's gradient (``transfer:MODEL``), points that fool the surrogate do not fool
  the model (fix: more steps on the surrogate); in sweeps, also white-box attacks beaten by examples transferred
  from another model (fix: that model's gradient, see :mod:`advkit.sanity`);
* **unconstrained attack failure**: the attack, given the model's whole range as its radius, fails to fool nearly
  every sample, which any working attack does (fix: BPDA where modules block gradients).

Every flag is a dict ``{"check", "indicator", "model", "attack", "status": "ok"|"flag"|"skipped", "reason", "fix"}``
where ``fix`` is None or ``{"gradient": spec or None, "params": {...}, "text": ...}``; :func:`merge_fixes` combines
the fixes of one (model, attack) into the rerun ``--adaptive`` performs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advkit.constraints import Constraint
from advkit.criteria import Criterion
from advkit.models import ModelAdapter

__all__ = [
    "INDICATORS",
    "Probe",
    "attack_indicators",
    "blocking_modules",
    "format_indicators",
    "indicators_from",
    "input_gradient",
    "make_fix",
    "merge_fixes",
    "probe",
    "traced_run",
]

#: Pintor et al.'s six indicators, in the order reports list them.
INDICATORS = (
    "silent success",
    "unavailable gradients",
    "unstable predictions",
    "incomplete optimization",
    "transfer failure",
    "unconstrained attack failure",
)
#: The indicators read off the attack's path alone (sweeps check the other two their own way: the share of zero
#: gradients per model, and success at full-range eps).
PATH_INDICATORS = ("silent success", "unstable predictions", "incomplete optimization", "transfer failure")
#: Samples whose path the indicators read.
PROBE_SAMPLES = 20
#: Share of probed samples above which an indicator fires (silent success fires on any sample).
SHARE_LIMIT = 0.10
#: The same for incomplete optimization, whose per-sample trend is a noisier measurement.
RISING_SHARE_LIMIT = 0.20
#: Share of a sample's steps (before its first adversarial point) with an all-zero gradient that marks it.
ZERO_STEPS = 0.5
#: Rise of the objective's mean from the fifth of the steps before the last to the last fifth, relative to its whole
#: span, that marks a sample's optimization as incomplete.
STILL_RISING = 0.10
#: Success expected of an attack whose radius is the model's whole range.
UNCONSTRAINED_SUCCESS = 0.90
#: Neighbours of each point the stability check evaluates, and their L-inf distance as a share of the range width.
NEIGHBOURS, NEIGHBOUR_RADIUS = 8, 1e-3
#: Draws an EOT fix averages over.
EOT_SAMPLES = 16
#: Steps an attack's path needs before its trend is judged.
MIN_STEPS = 10


# ----------------------------------------------------------------------------- fixes


def make_fix(text: str, *, gradient: str | None = None, params: dict | None = None) -> dict:
    """A fix advkit can run: a gradient estimator spec and/or attack parameters, with one line saying what it does."""
    return {"gradient": gradient, "params": dict(params or {}), "text": text}


#: Which estimator wins when several flags of one (model, attack) ask for one: the root cause first.
_GRADIENT_PRIORITY = ("bpda", "eot", "transfer")


def merge_fixes(fixes: list[dict]) -> dict | None:
    """One rerun for several fixes: the estimator of the highest priority (BPDA, then EOT, then transfer) and every
    parameter (the largest value where two fixes set the same number); None when there is nothing to run."""
    fixes = [f for f in fixes if f and (f.get("gradient") or f.get("params"))]
    if not fixes:
        return None
    gradients = [f["gradient"] for f in fixes if f.get("gradient")]
    gradients.sort(key=lambda g: _GRADIENT_PRIORITY.index(g.partition(":")[0]) if g.partition(":")[0] in
                   _GRADIENT_PRIORITY else len(_GRADIENT_PRIORITY))  # fmt: skip
    params: dict[str, Any] = {}
    for f in fixes:
        for key, value in f.get("params", {}).items():
            old = params.get(key)
            both_numbers = (
                isinstance(old, (int, float)) and not isinstance(old, bool) and isinstance(value, (int, float))
            )
            params[key] = max(old, value) if both_numbers else value
    texts = list(dict.fromkeys(f["text"] for f in fixes))
    return make_fix("; ".join(texts), gradient=gradients[0] if gradients else None, params=params)


def flag(
    check: str, indicator: str | None, model: str, attack: str | None, ok: bool, reason: str, *,
    skipped: bool = False, fix: dict | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One check's verdict; a fix is kept only on a raised flag."""
    status = "skipped" if skipped else ("ok" if ok else "flag")
    return {
        "check": check, "indicator": indicator, "model": model, "attack": attack, "status": status, "reason": reason,
        "fix": fix if status == "flag" else None,
    }  # fmt: skip


# ----------------------------------------------------------------------------- gradients and the modules blocking them


@contextlib.contextmanager
def _without_counting(model: ModelAdapter) -> Iterator[None]:
    """Restores the model's pass counter after a check's passes (checks are not part of any attack's cost)."""
    saved = model.counter.snapshot()
    try:
        yield
    finally:
        model.counter.forward, model.counter.backward = saved


def input_gradient(model: ModelAdapter, x: Tensor, y: Tensor) -> Tensor:
    """The input gradient of the summed cross-entropy, through ``model`` as attacks see it (its gradient estimator
    included), in eval mode, outside the pass counter."""
    with model.eval_mode(), _without_counting(model):
        point = x.detach().clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(point), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, point)
    return grad


def blocking_modules(model: ModelAdapter, x: Tensor, y: Tensor) -> tuple[list[str], bool]:
    """The types of leaf modules whose backward pass returns an all-zero input gradient for a non-zero incoming one
    on at least 90% of the samples at every use (the non-differentiable layers BPDA should go around), and whether
    they only output values in [-1, 1] (sign-like: BPDA's ``clip`` surrogate, the hard-tanh straight-through
    estimator, suits them). A model whose layers cannot be hooked (in-place tricks) gives none."""
    module = getattr(model, "module", None)
    if not isinstance(module, nn.Module) or not len(x):
        return [], False
    uses: dict[str, list[dict[str, Tensor]]] = {}  # per module type, per call: the gradient's size out of and into it
    bounded: dict[str, bool] = {}

    def keeper(record: dict[str, Tensor], side: str):
        def keep(grad: Tensor) -> None:
            record[side] = grad.detach().flatten(1).abs().amax(1)

        return keep

    def hook(layer: nn.Module, inputs: tuple, output: Any) -> None:
        source = inputs[0] if inputs else None
        if not (isinstance(source, Tensor) and isinstance(output, Tensor)):
            return
        if not (source.requires_grad and output.requires_grad) or source.shape[0] != output.shape[0]:
            return
        name = type(layer).__name__
        bounded[name] = bounded.get(name, True) and bool((output.detach().abs() <= 1).all())
        record: dict[str, Tensor] = {}
        uses.setdefault(name, []).append(record)
        output.register_hook(keeper(record, "out"))
        source.register_hook(keeper(record, "in"))

    leaves = [m for m in module.modules() if not list(m.children())]
    with model.eval_mode(), _without_counting(model):
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            point = x.detach().clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(module(point), y, reduction="sum")
            torch.autograd.grad(loss, point, allow_unused=True)
        except RuntimeError:  # e.g. a hook on a tensor a layer changes in place
            return [], False
        finally:
            for handle in handles:
                handle.remove()
    blocking = []
    for name, records in uses.items():
        shares = []
        for record in records:
            if "out" not in record:
                continue
            incoming = record["out"] > 0
            passed = record["in"] > 0 if "in" in record else torch.zeros_like(incoming)
            if bool(incoming.any()):
                shares.append(float((incoming & ~passed).sum() / incoming.sum()))
        if shares and min(shares) >= 0.9:
            blocking.append(name)
    return blocking, bool(blocking) and all(bounded.get(name, False) for name in blocking)


def bpda_fix(model: ModelAdapter, x: Tensor, y: Tensor, why: str) -> dict | None:
    """BPDA around the modules that block the gradient (None if no module type does: the masking happens elsewhere)."""
    base = model.base if hasattr(model, "estimator") else model
    modules, sign_like = blocking_modules(base, x, y)
    if not modules:
        return None
    surrogate = "clip" if sign_like else "identity"
    spec = f"bpda:modules={'+'.join(modules)},surrogate={surrogate}"
    return make_fix(f"{why}: rerun with {spec} (the backward pass of {', '.join(modules)} replaced)", gradient=spec)


# ----------------------------------------------------------------------------- the traced probe


def fresh_attack(attack: Any, params: dict | None = None) -> Any:
    """A new attack object: a registered name with ``params``, or a copy of an instance with ``params`` changed."""
    import dataclasses

    from advkit.attack import Attack
    from advkit.runner import make_attack

    if isinstance(attack, Attack):
        return dataclasses.replace(attack, **(params or {}))
    return make_attack(attack, **(params or {}))


class Traced(ModelAdapter):
    """``inner`` as the attack uses it, recording every call per row: which watched sample it belongs to (the
    nearest of the watched clean inputs ``x``, if the row lies in that sample's threat model; -1 otherwise: another
    sample's row), the logits the attack saw, the real model's logits (the same tensor unless a gradient estimator
    stands between) and, once the attack differentiates the call, the norm of the input gradient. Points are not kept:
    memory stays O(calls x classes). The run itself is unchanged: every call returns ``inner``'s output."""

    def __init__(self, inner: ModelAdapter, x: Tensor, threat: Constraint) -> None:
        super().__init__(
            inner.module, name=inner.name, bounds=inner.bounds, input_shape=inner.input_shape,
            class_names=inner.class_names, dataset=inner.dataset, description=inner.description,
            metadata=inner.metadata,
        )  # fmt: skip
        self.inner, self.base, self.x, self.threat = inner, getattr(inner, "base", inner), x, threat
        self.counter = inner.counter
        self.backward_per_call = getattr(inner, "backward_per_call", 1)
        self.calls_are_logits = getattr(inner, "calls_are_logits", False)
        if hasattr(inner, "estimator"):
            self.estimator = inner.estimator
        self.rows: dict[str, list[Tensor]] = {"owner": [], "seen": [], "real": [], "grad": []}

    def __call__(self, x: Tensor) -> Tensor:
        if self.call_times is not None:  # the runner times calls to size its chunks
            self.call_times.append((time.perf_counter(), x.shape[0]))
        out = self.inner(x)
        point = x.detach()
        owner = _owners(point, self.x)
        inside = self.threat.select(owner).contains(point - self.x[owner], self.x[owner])
        keep = inside.nonzero().squeeze(1)
        record = self.rows
        record["owner"].append(owner[keep])
        record["seen"].append(out.detach()[keep].clone())
        if len(keep):
            real = out.detach()[keep].clone() if self.inner is self.base else self._real_logits(point[keep])
        else:
            real = out.new_zeros((0, *out.shape[1:]))
        record["real"].append(real)
        norms = torch.full((len(keep),), float("nan"), device=x.device)
        record["grad"].append(norms)
        if len(keep) and x.requires_grad and out.requires_grad:

            def note(grad: Tensor) -> None:
                norms.copy_(grad.detach()[keep].flatten(1).norm(dim=1).nan_to_num(nan=float("inf")))

            x.register_hook(note)
        return out

    def _real_logits(self, points: Tensor) -> Tensor:
        """The model's own logits, drawn without touching any random stream (torch's, or a ``generator`` a module
        of a randomized model holds): the traced run draws exactly what an untraced one would."""
        own = [
            (m.generator, m.generator.get_state())
            for m in self.base.module.modules()
            if isinstance(getattr(m, "generator", None), torch.Generator)
        ]
        with torch.random.fork_rng(devices=[points.device] if points.device.type == "cuda" else []):
            logits = self.base.logits(points)
        for generator, state in own:
            generator.set_state(state)
        return logits

    def probe(
        self, result: Any, y: Tensor, target: Tensor | None, criterion: Criterion, constraint: Constraint
    ) -> Probe:
        """The recorded path of the watched samples (the first ``len(self.x)`` of ``result``), split per sample."""
        n = len(self.x)
        empty = self.x.new_zeros(0)
        rows = {key: torch.cat(values) if values else None for key, values in self.rows.items()}
        if rows["owner"] is None:
            rows = {"owner": torch.zeros(0, dtype=torch.long, device=self.x.device), "grad": empty,
                    "seen": empty.view(0, self.num_classes), "real": empty.view(0, self.num_classes)}  # fmt: skip
        owner, real = rows["owner"], rows["real"]
        y, target = y[:n], None if target is None else target[:n]
        hit = criterion.reached(real, y[owner], None if target is None else target[owner]) & torch.isfinite(real).all(1)
        groups = [(owner == i).nonzero().squeeze(1) for i in range(n)]
        return Probe(
            model=self.name, attack=result.attack, x=self.x, y=y, target=target,
            seen=[rows["seen"][g] for g in groups], adversarial=[hit[g] for g in groups],
            grad_norms=[rows["grad"][g] for g in groups], success=result.success[:n], x_adv=result.x_adv[:n],
            criterion=criterion, constraint=constraint, estimator=getattr(self.inner, "estimator", None),
        )  # fmt: skip


@dataclass
class Probe:
    """What a probe recorded per sample, in call order, of the points it queried inside its threat model: the logits
    the attack saw, whether the real model calls the point adversarial, the gradient norms (NaN: not differentiated);
    and the run's own result."""

    model: str
    attack: str
    x: Tensor
    y: Tensor
    target: Tensor | None
    seen: list[Tensor]
    adversarial: list[Tensor]
    grad_norms: list[Tensor]
    success: Tensor
    x_adv: Tensor
    criterion: Criterion
    constraint: Constraint
    #: the gradient estimator the attack differentiated through (:mod:`advkit.gradients`), None: the model's own
    estimator: Any = None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def objective(self, i: int) -> Tensor:
        """Sample i's margin at each differentiated call, from the logits the attack saw (> 0: adversarial side)."""
        steps = ~torch.isnan(self.grad_norms[i])
        logits = self.seen[i][steps].double()
        return _margin(logits, self.y[i], None if self.target is None else self.target[i])


def _margin(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """max_{j != y} z_j - z_y (untargeted) or z_t - max_{j != t} z_j (targeted), per row."""
    label = y if target is None else target
    others = logits.clone()
    others[:, int(label)] = float("-inf")
    best_other = others.amax(1)
    own = logits[:, int(label)]
    return best_other - own if target is None else own - best_other


def _owners(points: Tensor, x: Tensor) -> Tensor:
    """For each queried point, the watched sample whose clean input is nearest in L-inf (the attack's rows carry no
    index; a point lies in its own sample's threat model, far closer to it than to another sample's input)."""
    flat_x = x.flatten(1)
    rows = max(1, (1 << 22) // max(1, flat_x.shape[0] * flat_x.shape[1]))
    owners = [
        (chunk.flatten(1).unsqueeze(1) - flat_x.unsqueeze(0)).abs().amax(2).argmin(1) for chunk in points.split(rows)
    ]
    return torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long, device=x.device)


def traced_run(
    model: ModelAdapter, attack: Any, x: Tensor, y: Tensor, *, constraint: Constraint, watch: int = PROBE_SAMPLES,
    params: dict | None = None, target: Tensor | None = None, confidence: float | None = None,
    budget: int | None = None, seed: int = 0, gradient: Any = None, batch_size: Any = "auto",
) -> tuple[Any, Probe]:  # fmt: skip
    """``run_attack`` of ``attack`` on ``(x, y)``, its path recorded for the first ``watch`` samples: the result
    (exactly the untraced run's) and their :class:`Probe`."""
    from advkit.criteria import criterion_for
    from advkit.gradients import with_gradient
    from advkit.runner import run_attack, threat_model

    configured = fresh_attack(attack, params)
    level = configured.success_confidence if confidence is None else confidence
    criterion = criterion_for(target is not None, level)
    inner = with_gradient(model, gradient) if gradient is not None and not hasattr(model, "estimator") else model
    traced = Traced(inner, x[:watch], threat_model(model, constraint, None))
    result = run_attack(
        traced, configured, x, y, constraint=constraint, target=target, confidence=confidence, budget=budget,
        seed=seed, batch_size=batch_size,
    )  # fmt: skip
    return result, traced.probe(result, y, result.target, criterion, constraint)


def probe(model: ModelAdapter, attack: Any, x: Tensor, y: Tensor, **run: Any) -> Probe:
    """Rerun ``attack`` on ``(x, y)`` recording every sample's path (see :func:`traced_run`)."""
    return traced_run(model, attack, x, y, watch=len(y), **run)[1]


# ----------------------------------------------------------------------------- the indicators


def silent_success(p: Probe, attack_has: set[str], randomized: bool = False) -> dict:
    """Samples with an adversarial point on their path whose returned point is not adversarial (not judged on a
    randomized model, where a point that fooled one draw need not fool the next: unstable predictions covers it)."""
    if randomized:
        return flag("silent success", "silent success", p.model, p.attack, True,
                    "not judged on a randomized model (one draw's verdict is not the point's)", skipped=True)  # fmt: skip
    silent = [i for i in range(p.n) if bool(p.adversarial[i].any()) and not bool(p.success[i])]
    fix = make_fix("keep the first adversarial point: rerun with early_stop=true", params={"early_stop": True}) if (
        "early_stop" in attack_has) else None  # fmt: skip
    reason = (
        f"{len(silent)} of {p.n} probed samples reached an adversarial point inside the threat model that the attack "
        "did not return" + ("" if fix else " (the attack has no early_stop: report it to its author)")
        if silent
        else f"every adversarial point found on {p.n} probed paths was returned"
    )
    return flag("silent success", "silent success", p.model, p.attack, not silent, reason, fix=fix)


def unavailable_gradients(p: Probe, model: ModelAdapter) -> dict:
    """Samples whose input gradient is all zero (or not finite) on most steps before their first adversarial point."""
    marked, judged = 0, 0
    for i in range(p.n):
        norms = p.grad_norms[i]
        steps = ~torch.isnan(norms)
        first = p.adversarial[i].nonzero()
        before = steps.clone()
        if len(first):
            before[int(first[0, 0]) :] = False
        if not bool(before.any()):
            continue
        judged += 1
        dead = (norms[before] == 0) | ~torch.isfinite(norms[before])
        marked += int(float(dead.float().mean()) >= ZERO_STEPS)
    if not judged:
        return flag("unavailable gradients", "unavailable gradients", p.model, p.attack, True,
                    "the attack differentiated no point (a score-based attack)", skipped=True)  # fmt: skip
    share = marked / judged
    ok = share <= SHARE_LIMIT
    fix = None if ok else bpda_fix(model, p.x, p.y, "zero gradients")
    reason = (
        f"{marked} of {judged} probed samples had an all-zero or non-finite input gradient on most steps before any "
        "adversarial point"
        + ("" if ok else " (gradient masking)" + ("" if fix else "; no module blocks it: try a score-based attack"))
    )
    return flag("unavailable gradients", "unavailable gradients", p.model, p.attack, ok, reason, fix=fix)


def unstable_predictions(p: Probe, model: ModelAdapter) -> dict:
    """A model whose outputs differ for the same input (a randomized model), or whose prediction flips within a tiny
    neighbourhood of the clean inputs (a landscape too jagged for gradients; far from the decision boundary, where
    the attack's own points are not)."""
    with model.eval_mode():
        first, again = model.logits(p.x), model.logits(p.x)
        random_outputs = not torch.allclose(first, again, atol=1e-5, rtol=1e-4) or bool(
            model.metadata.get("stochastic")
        )
        low, high = model.bounds
        radius = NEIGHBOUR_RADIUS * (high - low)
        g = torch.Generator(device="cpu").manual_seed(0)
        noise = (torch.rand((NEIGHBOURS, *p.x.shape), generator=g, dtype=p.x.dtype) * 2 - 1).to(p.x.device)
        near = (p.x.unsqueeze(0) + radius * noise).clamp(low, high).flatten(0, 1)
        near_pred = torch.cat([model.logits(chunk) for chunk in near.split(256)]).argmax(1)
    flips = (near_pred.view(NEIGHBOURS, -1) != first.argmax(1)).any(0)
    share = float(flips.float().mean()) if len(flips) else 0.0
    ok = not random_outputs and share <= SHARE_LIMIT
    if random_outputs:
        reason = "two evaluations of the same points differ: the model is randomized"
        fix = make_fix(
            f"average the model's randomness: rerun with eot:identity,samples={EOT_SAMPLES}",
            gradient=f"eot:identity,samples={EOT_SAMPLES}",
        )
    else:
        reason = (
            f"the prediction changes within L-inf {radius:.2g} of the clean input for {int(flips.sum())} of "
            f"{len(flips)} probed samples"
        )
        sigma = 0.01
        fix = make_fix(
            f"smooth the loss: rerun with eot:noise,sigma={sigma},samples={EOT_SAMPLES}",
            gradient=f"eot:noise,sigma={sigma},samples={EOT_SAMPLES}",
        )
    return flag("unstable predictions", "unstable predictions", p.model, p.attack, ok, reason, fix=fix)


def _steps_of(params: dict[str, Any]) -> int | None:
    """An attack's ``steps`` parameter when it has a positive integer one, else None."""
    steps = params.get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def incomplete_optimization(p: Probe, attack_has: dict[str, Any]) -> dict:
    """On samples the attack did not fool, the objective's mean over the last fifth of the steps exceeds its mean
    over the fifth before by more than ``STILL_RISING`` of its whole span: a trend, not the noise of a plateau. An
    attack with ``steps`` is judged on its last ``steps`` differentiated calls: its last restart, target or search
    round (each of which starts afresh)."""
    last = _steps_of(attack_has)
    marked, judged = 0, 0
    for i in range(p.n):
        if bool(p.success[i]):
            continue
        m = p.objective(i)
        m = m[torch.isfinite(m)]
        if last is not None:
            m = m[-last:]
        if len(m) < MIN_STEPS:
            continue
        judged += 1
        tail = max(2, len(m) // 5)
        span = float(m.max() - m.min())
        rise = float(m[-tail:].mean() - m[-2 * tail : -tail].mean())
        marked += int(span > 0 and rise > STILL_RISING * span)
    if not judged:
        return flag("incomplete optimization", "incomplete optimization", p.model, p.attack, True,
                    f"no probed sample left unfooled after at least {MIN_STEPS} steps", skipped=True)  # fmt: skip
    share = marked / judged
    ok = share <= RISING_SHARE_LIMIT
    fix = None
    if not ok:
        if isinstance(attack_has.get("steps"), int):
            fix = make_fix(f"rerun with twice the steps ({2 * attack_has['steps']})",
                           params={"steps": 2 * attack_has["steps"]})  # fmt: skip
        elif isinstance(attack_has.get("restarts"), int):
            fix = make_fix(f"rerun with more restarts ({2 * attack_has['restarts']})",
                           params={"restarts": 2 * attack_has["restarts"]})  # fmt: skip
    reason = (
        f"the objective was still rising over the last fifth of the steps on {marked} of {judged} probed samples the "
        "attack did not fool" + ("" if ok else ": the budget was too small")
    )
    return flag("incomplete optimization", "incomplete optimization", p.model, p.attack, ok, reason, fix=fix)


def transfer_failure(p: Probe, model: ModelAdapter, attack_has: dict[str, Any]) -> dict:
    """With a surrogate's gradient: returned points that fool the surrogate but not the model."""
    from advkit.gradients import TransferGradient

    estimator = p.estimator
    if not isinstance(estimator, TransferGradient):
        return flag("transfer failure", "transfer failure", p.model, p.attack, True,
                    "the attack used the model's own gradient", skipped=True)  # fmt: skip
    surrogate = estimator.surrogate
    with surrogate.eval_mode():
        fools_surrogate = p.criterion.reached(surrogate.logits(p.x_adv), p.y, p.target)
    failed = fools_surrogate & ~p.success
    share = float(failed.float().mean()) if len(failed) else 0.0
    ok = share <= SHARE_LIMIT
    fix = None
    if not ok and isinstance(attack_has.get("steps"), int):
        fix = make_fix("push further past the surrogate's boundary: rerun with twice the steps",
                       params={"steps": 2 * attack_has["steps"]})  # fmt: skip
    reason = f"{int(failed.sum())} of {len(failed)} probed points fool the surrogate {surrogate.name} but not the model"
    return flag("transfer failure", "transfer failure", p.model, p.attack, ok, reason, fix=fix)


def unconstrained_failure(
    model: ModelAdapter, attack: Any, x: Tensor, y: Tensor, *, params: dict | None, target: Tensor | None,
    confidence: float | None, seed: int, gradient: Any, batch_size: Any = "auto",
) -> dict:  # fmt: skip
    """The attack with the model's whole range as its L-inf radius must fool nearly every sample."""
    from advkit.constraints import L2Ball, LinfBall
    from advkit.runner import run_attack

    configured = fresh_attack(attack, params)
    # the whole range as radius, in the attack's own norm (an L2 attack refuses an L-inf ball)
    whole = L2Ball(model.range_width * x[0].numel() ** 0.5) if getattr(configured, "norm", "linf") == "l2" else (
        LinfBall(model.range_width))  # fmt: skip
    result = run_attack(
        model, configured, x, y, constraint=whole, target=target, confidence=confidence, seed=seed,
        gradient=gradient, batch_size=batch_size,
    )  # fmt: skip
    fooled = int(result.success.sum())
    rate = fooled / len(y) if len(y) else 1.0
    ok = rate >= UNCONSTRAINED_SUCCESS
    fix = None if ok else bpda_fix(model, x, y, "the unconstrained attack fails")
    steps = _steps_of(configured.params())
    if not ok and fix is None and steps is not None:
        fix = make_fix(f"no layer blocks the gradient: rerun with twice the steps ({2 * steps})",
                       params={"steps": 2 * steps})  # fmt: skip
    reason = f"{fooled}/{len(y)} fooled with the whole range {model.range_width:g} as radius" + (
        "" if ok else f" (expected >= {UNCONSTRAINED_SUCCESS:.0%}: the attack cannot follow the model's gradient)"
    )
    return flag("unconstrained attack failure", "unconstrained attack failure", model.name, configured.name, ok,
                reason, fix=fix)  # fmt: skip


def attack_indicators(
    model: ModelAdapter, attack: Any, x: Tensor, y: Tensor, *, constraint: Constraint, params: dict | None = None,
    target: Tensor | None = None, confidence: float | None = None, budget: int | None = None, seed: int = 0,
    gradient: Any = None, samples: int = PROBE_SAMPLES, only: tuple[str, ...] = INDICATORS,
) -> list[dict]:  # fmt: skip
    """The indicators ``only`` (default: all six) for ``attack`` on ``model`` from a probe of the first ``samples``
    of ``(x, y)`` (pass samples the model classifies correctly). ``attack``: a registered name with ``params``, or
    an attack instance (its copy with ``params`` changed). ``gradient``: the estimator the attack runs through
    (unless ``model`` is behind one already)."""
    gradient = None if hasattr(model, "estimator") else gradient  # a model behind an estimator keeps it
    x, y = x[:samples], y[:samples]
    target = None if target is None else target[:samples]
    configured = fresh_attack(attack, params)
    if not len(y):
        return [flag(name, name, model.name, configured.name, True, "no sample to probe", skipped=True)
                for name in INDICATORS]  # fmt: skip
    p = probe(
        model, attack, x, y, constraint=constraint, params=params, target=target, confidence=confidence,
        budget=budget, seed=seed, gradient=gradient,
    )  # fmt: skip
    return indicators_from(p, model, configured, confidence=confidence, seed=seed, gradient=gradient, only=only)


def indicators_from(
    p: Probe, model: ModelAdapter, attack: Any, *, confidence: float | None = None, seed: int = 0,
    gradient: Any = None, only: tuple[str, ...] = INDICATORS,
) -> list[dict]:  # fmt: skip
    """The indicators ``only`` from a recorded path ``p`` of the configured ``attack`` (the unconstrained check runs
    the attack once more on ``p``'s samples, with the model's whole range as radius)."""
    values = attack.params()
    checks = {
        "silent success": lambda: silent_success(p, set(values), bool(model.metadata.get("stochastic"))),
        "unavailable gradients": lambda: unavailable_gradients(p, model),
        "unstable predictions": lambda: unstable_predictions(p, model),
        "incomplete optimization": lambda: incomplete_optimization(p, values),
        "transfer failure": lambda: transfer_failure(p, model, values),
        "unconstrained attack failure": lambda: unconstrained_failure(
            model,
            attack,
            p.x,
            p.y,
            params=None,
            target=p.target,
            confidence=confidence,
            seed=seed,
            gradient=None if hasattr(model, "estimator") else gradient,
        ),
    }
    return [checks[name]() for name in INDICATORS if name in only]


def rerun_spec(flags: list[dict]) -> dict | None:
    """The merged fix of the raised flags (None: nothing to rerun)."""
    return merge_fixes([f.get("fix") for f in flags if f.get("status") == "flag"])


def describe_fix(fix: dict | None) -> str:
    """``gradient bpda:...; steps=40`` for a merged fix ('' for none)."""
    if not fix:
        return ""
    parts = [f"gradient {fix['gradient']}"] if fix.get("gradient") else []
    parts += [f"{k}={v}" for k, v in fix.get("params", {}).items()]
    return ", ".join(parts)


def format_indicators(flags: list[dict], consequence: str = "the success rate may be too low") -> list[str]:
    """One line saying how many indicators were checked, then one per raised flag with its fix."""
    raised = [f for f in flags if f["status"] == "flag"]
    checked = [f for f in flags if f["status"] != "skipped"]
    if not raised:
        return [f"  indicators     none raised ({len(checked)} of 6 indicators of attack failure applied)"]
    lines = [f"  indicators     {len(raised)} raised (of {len(checked)} applied): {consequence}"]
    for f in raised:
        lines.append(f"    {f['check']}: {f['reason']}")
        if f.get("fix"):
            lines.append(f"      fix (--adaptive): {f['fix']['text']}")
    return lines
