"""Automatic sanity checks after a sweep (Carlini et al., 2019, "On Evaluating Adversarial Robustness"), and the
indicators of attack failure of Pintor et al. (2022) (:mod:`advkit.indicators`) on each model and attack.

Each check returns flags: ``{"check", "indicator", "model", "attack", "status": "ok"|"flag"|"skipped", "reason",
"fix"}`` with a one-line reason, the Pintor et al. indicator the check stands for (or None) and, on a raised flag,
the fix advkit can run (``advkit sweep --adaptive`` reruns the flagged cells with it). A flag means the numbers should
not be trusted as they stand (e.g. gradient masking), not that the code failed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advkit.indicators import bpda_fix, flag, input_gradient, make_fix
from advkit.sweep import SweepResult, sweep_constraint

#: Share of samples whose input gradient is exactly zero above which gradients look masked.
ZERO_GRADIENT_LIMIT = 0.10
#: Success expected at full-range eps (any image is reachable).
FULL_RANGE_SUCCESS = 0.90
#: Gain from doubling the steps that says the budget was too small.
MORE_STEPS_GAIN = 0.05
#: Samples used by the checks that run extra attacks.
CHECK_SAMPLES = 50


def _flag(
    check: str, model: str, attack: str | None, ok: bool, reason: str, skipped: bool = False, *,
    indicator: str | None = None, fix: dict | None = None,
) -> dict[str, Any]:  # fmt: skip
    return flag(check, indicator, model, attack, ok, reason, skipped=skipped, fix=fix)


def _masking_fix(result: SweepResult, ref: str, why: str) -> dict | None:
    """BPDA around the modules that block ``ref``'s gradient (None when none does)."""
    idx = _attacked(result, ref)
    model = result.models[ref]
    return bpda_fix(model, result.x[idx].to(model.device), result.y[idx].to(model.device), why)


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
            ok = rate >= FULL_RANGE_SUCCESS
            flags.append(
                _flag(
                    "full-range eps",
                    ref,
                    attack,
                    ok,
                    f"{fooled}/{len(idx)} fooled at eps = full range {model.range_width:g}"
                    + (
                        ""
                        if rate >= FULL_RANGE_SUCCESS
                        else f" (expected >= {FULL_RANGE_SUCCESS:.2f}: gradients may be masked)"
                    ),
                    indicator="unconstrained attack failure",
                    fix=None if ok else _masking_fix(result, ref, "the unconstrained attack fails"),
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
                    fix=_masking_fix(result, ref, "random noise beats the attack") if worse else None,
                )
            )
    return flags


def check_transfer(result: SweepResult, others: SweepResult | None = None) -> list[dict]:
    """White-box success on a model is at least the success of examples transferred from another model (of the sweep,
    or of ``others``, a sweep of the same samples: the one an adaptive rerun fixes)."""
    flags = []
    refs = result.spec.models
    sources = {ref: result for ref in refs}
    if others is not None:
        sources.update({ref: others for ref in others.spec.models if ref not in sources})
    if len(sources) < 2:
        return [_flag("white-box >= transfer", ref, None, True, "needs two models", skipped=True) for ref in refs]
    for target in refs:
        model = result.models[target]
        for attack in result.spec.attacks:
            worse, gains = [], {}
            for source, owner in sources.items():
                if source == target or owner.models[source].input_shape != model.input_shape:
                    continue
                if attack not in owner.spec.attacks:
                    continue
                for eps in result.spec.eps:
                    if (source, attack, eps) not in owner.cells:
                        continue
                    mine, theirs = result.cells[(target, attack, eps)], owner.cells[(source, attack, eps)]
                    both = mine.attacked & theirs.attacked
                    with torch.no_grad():
                        fooled = model.predict(theirs.x_adv[both].to(model.device)).argmax(1).cpu() != result.y[both]
                    if int(fooled.sum()) > int(mine.success[both].sum()):
                        gains[source] = gains.get(source, 0) + int(fooled.sum()) - int(mine.success[both].sum())
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
                    indicator="transfer failure",
                    fix=_transfer_fix(gains),
                )
            )
    return flags


def _transfer_fix(gains: dict[str, int]) -> dict | None:
    """The gradient of the source whose examples beat the white-box attack by the most samples."""
    if not gains:
        return None
    best = max(gains, key=lambda source: gains[source])
    return make_fix(
        f"examples from {best} fool more: rerun with transfer:{best} (its gradient, success judged on the model)",
        gradient=f"transfer:{best}",
    )


def check_gradients(result: SweepResult) -> list[dict]:
    """Share of attacked samples whose input gradient of the loss is all zero or not finite."""
    flags = []
    for ref in result.spec.models:
        model = result.models[ref]
        idx = _attacked(result, ref, None)
        # through the gradient estimator the sweep's attacks used, if any: the gradient they saw
        grad = input_gradient(model, result.x[idx].to(model.device), result.y[idx].to(model.device))
        flat = grad.flatten(1)
        zero = float((flat == 0).all(1).float().mean()) if len(idx) else 0.0
        bad = float((~torch.isfinite(flat)).any(1).float().mean()) if len(idx) else 0.0
        ok = zero <= ZERO_GRADIENT_LIMIT and bad == 0
        reason = f"{100 * zero:.0f}% of samples have an all-zero input gradient, {100 * bad:.0f}% a NaN/inf one"
        if not ok:
            reason += " - gradient masking: white-box numbers overstate robustness"
        fix = None if ok else _masking_fix(result, ref, "zero gradients")
        flags.append(_flag("zero/NaN gradients", ref, None, ok, reason, indicator="unavailable gradients", fix=fix))
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
                    indicator="incomplete optimization",
                    fix=make_fix(
                        f"rerun with twice the steps ({2 * params['steps']})", params={"steps": 2 * params["steps"]}
                    ),  # fmt: skip
                )
            )
    return flags


def check_attack_paths(result: SweepResult) -> list[dict]:
    """Pintor et al.'s indicators that need the attack's path (silent success, unstable predictions, incomplete
    optimization, transfer failure; :mod:`advkit.indicators`), from a probe of each model and attack at the largest
    eps where success is not saturated (else the largest)."""
    from advkit.indicators import PATH_INDICATORS, PROBE_SAMPLES, attack_indicators

    flags = []
    for ref in result.spec.models:
        model = result.models[ref]
        idx = _attacked(result, ref, PROBE_SAMPLES)
        for attack in result.spec.attacks:
            rates = [float(result.cells[(ref, attack, e)].success[idx].float().mean()) for e in result.spec.eps]
            open_eps = [e for e, rate in zip(result.spec.eps, rates) if rate < 0.99]
            eps = (open_eps or result.spec.eps)[-1]
            found = attack_indicators(
                model, attack, result.x[idx].to(model.device), result.y[idx].to(model.device),
                constraint=sweep_constraint(result.spec, eps, model), params=result.spec.attack_params.get(attack, {}),
                confidence=result.spec.confidence, budget=result.spec.budget, seed=result.spec.seed,
                only=PATH_INDICATORS,
            )  # fmt: skip
            for f in found:
                f["reason"] = f"eps {eps:g}: {f['reason']}"
            flags.extend(found)
    return flags


CHECKS = (
    check_monotone,
    check_full_range,
    check_iterative_beats_single_step,
    check_random_noise,
    check_transfer,
    check_gradients,
    check_more_steps,
    check_attack_paths,
)


def run_checks(result: SweepResult, others: SweepResult | None = None) -> list[dict]:
    """Every check on a finished sweep, flags in a flat list (``others``: see :func:`check_transfer`)."""
    flags: list[dict] = []
    for check in CHECKS:
        flags.extend(check(result, others) if check is check_transfer else check(result))
    return flags
