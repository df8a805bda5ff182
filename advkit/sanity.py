"""Automatic sanity checks after a sweep (Carlini et al., 2019, "On Evaluating Adversarial Robustness").

Each check returns flags: ``{"check", "model", "attack", "status": "ok"|"flag"|"skipped", "reason"}``
with a one-line reason. A flag means the numbers should not be trusted as they stand (e.g.
gradient masking), not that the code failed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from advkit.sweep import SweepResult, sweep_constraint

#: Share of samples whose input gradient is exactly zero above which gradients look masked.
ZERO_GRADIENT_LIMIT = 0.10
#: Success expected at full-range eps (any image is reachable).
FULL_RANGE_SUCCESS = 0.90
#: Gain from doubling the steps that says the budget was too small.
MORE_STEPS_GAIN = 0.05
#: Samples used by the checks that run extra attacks.
CHECK_SAMPLES = 50


def _flag(check: str, model: str, attack: str | None, ok: bool, reason: str, skipped: bool = False) -> dict[str, Any]:
    status = "skipped" if skipped else ("ok" if ok else "flag")
    return {"check": check, "model": model, "attack": attack, "status": status, "reason": reason}


def check_monotone(result: SweepResult) -> list[dict]:
    """Per-sample success never drops as eps grows."""
    flags = []
    for ref in result.spec.models:
        for attack in result.spec.attacks:
            stack = torch.stack([result.cells[(ref, attack, e)].success for e in result.spec.eps])
            drops = (stack[:-1] & ~stack[1:]).any(0)
            count = int(drops.sum())
            flags.append(
                _flag(
                    "monotone in eps",
                    ref,
                    attack,
                    count == 0,
                    "per-sample success never drops as eps grows"
                    if count == 0
                    else f"{count} sample(s) fooled at a smaller eps but not at a larger one",
                )
            )
    return flags


def _run(result: SweepResult, ref: str, attack: str, eps: float, idx: Tensor, **params) -> Tensor:
    from advkit.runner import run_attack

    spec, model = result.spec, result.models[ref]
    device = model.device
    constraint = sweep_constraint(spec, eps, model)
    merged = {**spec.attack_params.get(attack, {}), **params}
    out = run_attack(
        model,
        attack,
        result.x[idx].to(device),
        result.y[idx].to(device),
        constraint=constraint,
        confidence=spec.confidence,
        budget=None if "steps" in params else spec.budget,
        seed=spec.seed,
        **merged,
    )
    return out.success.cpu()


def _attacked(result: SweepResult, ref: str, limit: int | None = CHECK_SAMPLES) -> Tensor:
    first = result.cells[(ref, result.spec.attacks[0], result.spec.eps[0])]
    idx = first.attacked.nonzero().squeeze(1)
    return idx if limit is None else idx[:limit]


def check_full_range(result: SweepResult) -> list[dict]:
    """At eps = the model's whole range, (nearly) every sample must be fooled."""
    flags = []
    for ref in result.spec.models:
        model = result.models[ref]
        idx = _attacked(result, ref)
        for attack in result.spec.attacks:
            fooled = int(_run(result, ref, attack, model.range_width, idx).sum()) if len(idx) else 0
            rate = fooled / len(idx) if len(idx) else 1.0
            flags.append(
                _flag(
                    "full-range eps",
                    ref,
                    attack,
                    rate >= FULL_RANGE_SUCCESS,
                    f"{fooled}/{len(idx)} fooled at eps = full range {model.range_width:g}"
                    + (
                        ""
                        if rate >= FULL_RANGE_SUCCESS
                        else f" (expected >= {FULL_RANGE_SUCCESS:.2f}: gradients may be masked)"
                    ),
                )
            )
    return flags


def check_iterative_beats_single_step(result: SweepResult) -> list[dict]:
    """An iterative attack fools at least as many samples as FGSM at every eps (FGSM is run if absent)."""
    flags = []
    iterative = [a for a in result.spec.attacks if a != "fgsm"]
    for ref in result.spec.models:
        idx = _attacked(result, ref, None)
        for attack in iterative:
            worse = []
            for eps in result.spec.eps:
                if "fgsm" in result.spec.attacks:
                    fgsm = result.cells[(ref, "fgsm", eps)].success[idx]
                else:
                    fgsm = _run(result, ref, "fgsm", eps, idx)
                mine = result.cells[(ref, attack, eps)].success[idx]
                if int(fgsm.sum()) > int(mine.sum()):
                    worse.append(f"eps {eps:g}: {int(mine.sum())} < FGSM {int(fgsm.sum())}")
            flags.append(
                _flag(
                    "iterative >= single-step",
                    ref,
                    attack,
                    not worse,
                    "at least as strong as FGSM at every eps" if not worse else "weaker than FGSM: " + "; ".join(worse),
                )
            )
    return flags


def check_random_noise(result: SweepResult) -> list[dict]:
    """White-box attacks fool at least as many samples as random corner noise of the same size."""
    flags = []
    for ref in result.spec.models:
        model = result.models[ref]
        idx = _attacked(result, ref, None)
        x, y = result.x[idx].to(model.device), result.y[idx].to(model.device)
        generator = torch.Generator(device=x.device).manual_seed(result.spec.seed)
        for attack in result.spec.attacks:
            worse = []
            for eps in result.spec.eps:
                constraint = sweep_constraint(result.spec, eps, model)
                noise = eps * (torch.randint(0, 2, x.shape, generator=generator, device=x.device) * 2 - 1).to(x.dtype)
                with torch.no_grad():
                    fooled = model.predict(x + constraint.project(noise, x)).argmax(1) != y
                mine = result.cells[(ref, attack, eps)].success[idx]
                if int(fooled.sum()) > int(mine.sum()):
                    worse.append(f"eps {eps:g}: {int(mine.sum())} < noise {int(fooled.sum())}")
            flags.append(
                _flag(
                    "white-box >= random noise",
                    ref,
                    attack,
                    not worse,
                    "stronger than random noise of the same size"
                    if not worse
                    else "random noise does better: " + "; ".join(worse),
                )
            )
    return flags


def check_transfer(result: SweepResult) -> list[dict]:
    """White-box success on a model is at least the success of examples transferred from another model."""
    flags = []
    refs = result.spec.models
    if len(refs) < 2:
        return [_flag("white-box >= transfer", ref, None, True, "needs two models", skipped=True) for ref in refs]
    for target in refs:
        model = result.models[target]
        for attack in result.spec.attacks:
            worse = []
            for source in refs:
                if source == target or result.models[source].input_shape != model.input_shape:
                    continue
                for eps in result.spec.eps:
                    mine, theirs = result.cells[(target, attack, eps)], result.cells[(source, attack, eps)]
                    both = mine.attacked & theirs.attacked
                    with torch.no_grad():
                        fooled = model.predict(theirs.x_adv[both].to(model.device)).argmax(1).cpu() != result.y[both]
                    if int(fooled.sum()) > int(mine.success[both].sum()):
                        worse.append(
                            f"from {source} at eps {eps:g}: {int(fooled.sum())} > white-box {int(mine.success[both].sum())}"
                        )
            flags.append(
                _flag(
                    "white-box >= transfer",
                    target,
                    attack,
                    not worse,
                    "stronger than transfer from the other models"
                    if not worse
                    else "transfer does better: " + "; ".join(worse),
                )
            )
    return flags


def check_gradients(result: SweepResult) -> list[dict]:
    """Share of attacked samples whose input gradient of the loss is all zero or not finite."""
    flags = []
    for ref in result.spec.models:
        model = result.models[ref]
        idx = _attacked(result, ref, None)
        x = result.x[idx].to(model.device).requires_grad_(True)
        with model.eval_mode():
            loss = F.cross_entropy(model.module(x), result.y[idx].to(model.device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        flat = grad.flatten(1)
        zero = float((flat == 0).all(1).float().mean()) if len(idx) else 0.0
        bad = float((~torch.isfinite(flat)).any(1).float().mean()) if len(idx) else 0.0
        ok = zero <= ZERO_GRADIENT_LIMIT and bad == 0
        reason = f"{100 * zero:.0f}% of samples have an all-zero input gradient, {100 * bad:.0f}% a NaN/inf one"
        if not ok:
            reason += " - gradient masking: white-box numbers overstate robustness"
        flags.append(_flag("zero/NaN gradients", ref, None, ok, reason))
    return flags


def check_more_steps(result: SweepResult) -> list[dict]:
    """Doubling the steps at the largest eps that is not saturated changes success by less than 5 points."""
    from advkit.registry import get_attack

    flags = []
    for ref in result.spec.models:
        idx = _attacked(result, ref)
        for attack in result.spec.attacks:
            cls = get_attack(attack).obj
            params = {f.name: f.default for f in cls.param_fields()}
            params.update(result.spec.attack_params.get(attack, {}))
            if "steps" not in params or not isinstance(params["steps"], int):
                flags.append(_flag("more steps change little", ref, attack, True, "attack has no steps", skipped=True))
                continue
            open_eps = [
                e for e in result.spec.eps if float(result.cells[(ref, attack, e)].success[idx].float().mean()) < 0.99
            ]
            if not open_eps or not len(idx):
                flags.append(
                    _flag("more steps change little", ref, attack, True, "success saturated at every eps", skipped=True)
                )
                continue
            eps = open_eps[-1]
            base = float(_run(result, ref, attack, eps, idx, steps=params["steps"]).float().mean())
            more = float(_run(result, ref, attack, eps, idx, steps=2 * params["steps"]).float().mean())
            gain = more - base
            flags.append(
                _flag(
                    "more steps change little",
                    ref,
                    attack,
                    gain < MORE_STEPS_GAIN,
                    f"eps {eps:g}: success {base:.2f} with {params['steps']} steps, {more:.2f} with {2 * params['steps']}"
                    + ("" if gain < MORE_STEPS_GAIN else " - still rising: the budget was too small"),
                )
            )
    return flags


CHECKS = (
    check_monotone,
    check_full_range,
    check_iterative_beats_single_step,
    check_random_noise,
    check_transfer,
    check_gradients,
    check_more_steps,
)


def run_checks(result: SweepResult) -> list[dict]:
    """Every check on a finished sweep, flags in a flat list."""
    flags: list[dict] = []
    for check in CHECKS:
        flags.extend(check(result))
    return flags
