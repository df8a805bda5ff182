"""The conformance suite every attack must pass, for plugin authors' own tests.

Each check runs the attack through :func:`advkit.runner.run_attack` on a small random model and
asserts one guarantee users rely on; a check that fails raises ``AssertionError`` naming the
attack and what broke. In the spirit of scikit-learn's ``parametrize_with_checks``::

    from advkit.testing import check_attack, parametrize_with_checks
    from my_plugin import MyAttack

    check_attack(MyAttack)                           # all checks, in one call

    @parametrize_with_checks([MyAttack])             # one pytest test per (attack, check)
    def test_my_attack(attack, check):
        check(attack)

The checks (:data:`CHECKS`):

* ``threat_model``: under L-inf, L-inf & x_adv >= x, L2 & L-inf and the model's box, every
  returned point is inside the set (checked by hand to 1e-6), finite, of the input's shape and
  dtype, and the input tensors are unchanged (an attack may refuse a set other than plain L-inf
  with a ``ValueError`` that says why, e.g. a binary attack given no L-inf radius);
* ``honest_success``: the reported success equals a fresh eval-mode forward pass, and the model's
  train mode is restored;
* ``same_seed``: the same seed gives the same result, and the global RNG is untouched;
* ``batch_equals_slices``: for attacks with ``per_sample = True``, a batch gives each sample the
  result its slices give it (random draws must be per sample: :meth:`advkit.engine.Problem.streams`
  or the engine's starts);
* ``declared_parameters``: every parameter's default passes its own declared check, and the
  docstring documents each parameter (``Parameters:`` with ``name (``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from advkit.attack import Attack
from advkit.constraints import Box, L2Ball, LinfBall, NonNegative
from advkit.models import ModelAdapter

__all__ = ["CHECKS", "check_attack", "parametrize_with_checks", "small_model"]

_TOL = 1e-6
_EPS = 0.3


class _OneAtATime(nn.Module):
    """Runs the wrapped module one sample at a time: the same numbers per sample whatever the batch size (batched
    kernels may differ in the last bits between batch sizes, which sign steps amplify)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.cat([self.inner(row) for row in x.split(1)])


def small_model(seed: int = 0, one_at_a_time: bool = False) -> ModelAdapter:
    """A 1x8x8 -> 10-class convolutional model in [-1, 1] with BatchNorm (so train vs eval mode shows), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    layers = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
    )
    with torch.no_grad():
        for p in layers.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    layers.eval()
    module = _OneAtATime(layers) if one_at_a_time else layers
    return ModelAdapter(
        module, name="advkit-testing-model", bounds=(-1.0, 1.0), input_shape=(1, 8, 8), class_names=list("0123456789")
    )


def _batch(model: ModelAdapter, n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=generator) * 1.6 - 0.8
    return x, model.predict(x).argmax(1)


def _attack(attack: type[Attack] | Attack, **params) -> Attack:
    """A fresh instance (shortened where the attack has steps: conformance is about guarantees, not strength)."""
    if isinstance(attack, Attack):
        return attack
    names = {f.name for f in attack.param_fields()}
    fast = {k: v for k, v in {"steps": 4, "restarts": 2}.items() if k in names}
    return attack(**{**fast, **params})


def _run(model, attack, x, y, constraint, seed=5):
    from advkit.runner import run_attack

    target = (y + 3) % 10 if attack.requires_target else None
    return run_attack(model, attack, x, y, constraint=constraint, target=target, seed=seed)


def _name(attack) -> str:
    return getattr(attack, "name", "") or type(attack).__name__


def check_threat_model(attack: type[Attack] | Attack) -> None:
    """Every returned point inside the set (by hand), finite, same shape and dtype; the inputs unchanged."""
    model = small_model()
    x, y = _batch(model)
    for label, constraint, parts in [
        ("linf", LinfBall(_EPS), {"linf"}),
        ("linf & nonneg", LinfBall(_EPS) & NonNegative(), {"linf", "nonneg"}),
        ("l2 & linf", L2Ball(1.0) & LinfBall(0.5), {"l2", "linf"}),
        ("box only", Box(-1.0, 1.0), set()),
    ]:
        x_before, y_before = x.clone(), y.clone()
        where = f"attack {_name(attack)!r} under {label}"
        try:
            result = _run(model, _attack(attack), x, y, constraint)
        except ValueError as error:  # an attack may refuse a set it cannot work in, if it says why (not plain L-inf)
            assert label != "linf" and str(error), f"{where}: refused ({error!r})"
            assert torch.equal(x, x_before) and torch.equal(y, y_before), f"{where}: the inputs were modified"
            continue
        assert torch.equal(x, x_before) and torch.equal(y, y_before), f"{where}: the inputs were modified"
        x_adv = result.x_adv
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype, f"{where}: shape or dtype changed"
        assert bool(torch.isfinite(x_adv).all()), f"{where}: NaN or inf in the result"
        delta = (x_adv - x).flatten(1)
        assert float(x_adv.min()) >= -1 - _TOL and float(x_adv.max()) <= 1 + _TOL, f"{where}: outside the box"
        if "linf" in parts:
            radius = 0.5 if "l2" in parts else _EPS
            assert float(delta.abs().max()) <= radius + _TOL, f"{where}: L-inf radius exceeded"
        if "nonneg" in parts:
            assert float(delta.min()) >= -_TOL, f"{where}: x_adv < x somewhere"
        if "l2" in parts:
            assert float(delta.norm(dim=1).max()) <= 1.0 + _TOL, f"{where}: L2 radius exceeded"


def check_honest_success(attack: type[Attack] | Attack) -> None:
    """The reported success is a fresh eval-mode forward pass; the model's train mode is restored."""
    model = small_model()
    x, y = _batch(model)
    instance = _attack(attack)
    model.module.train()
    try:
        result = _run(model, instance, x, y, LinfBall(_EPS))
        assert model.module.training, f"attack {_name(attack)!r}: the model's train mode was not restored"
    finally:
        model.module.eval()
    with torch.no_grad():
        probs = model.module(result.x_adv).softmax(1)
    confidence, pred = probs.max(1)
    level = float(result.criterion.split(">=")[1]) if ">=" in result.criterion else 0.0
    expected = ((pred == result.target) if result.target is not None else (pred != y)) & (confidence >= level)
    assert torch.equal(result.success, expected), f"attack {_name(attack)!r}: success is not a fresh re-check"


def check_same_seed(attack: type[Attack] | Attack) -> None:
    """The same seed gives the same points; the global RNG is left as it was."""
    model = small_model()
    x, y = _batch(model)
    state = torch.get_rng_state()
    a = _run(model, _attack(attack), x, y, LinfBall(_EPS), seed=11)
    b = _run(model, _attack(attack), x, y, LinfBall(_EPS), seed=11)
    assert torch.equal(torch.get_rng_state(), state), f"attack {_name(attack)!r} drew from the global RNG"
    assert torch.equal(a.x_adv, b.x_adv), f"attack {_name(attack)!r}: the same seed gave another result"


def check_batch_equals_slices(attack: type[Attack] | Attack) -> None:
    """A batch gives each sample what its slices give it (attacks with ``per_sample = True``)."""
    if not getattr(attack, "per_sample", True):
        return
    model = small_model(one_at_a_time=True)
    x, y = _batch(model, n=4)
    whole = _run(model, _attack(attack), x, y, LinfBall(_EPS))
    halves = [_run(model, _attack(attack), x[s], y[s], LinfBall(_EPS)) for s in (slice(0, 2), slice(2, 4))]
    assert torch.equal(torch.cat([h.x_adv for h in halves]), whole.x_adv), (
        f"attack {_name(attack)!r}: a batch and its slices gave different points; draw random numbers per sample "
        "(problem.streams(label).rand/randn) instead of from problem.generator or the global RNG"
    )


def check_declared_parameters(attack: type[Attack] | Attack) -> None:
    """Every default passes its own declared check; the docstring documents each parameter."""
    cls = attack if isinstance(attack, type) else type(attack)
    doc = cls.__doc__ or ""
    assert doc.strip(), f"attack {_name(attack)!r} has no docstring"
    specs = cls.param_specs()
    for spec in specs:
        if spec.default is not None or "None" in spec.type_name:
            spec.check(spec.default)
        assert f"{spec.name} (" in doc, f"attack {_name(attack)!r}: parameter {spec.name} is not in its docstring"
    if specs:
        assert "Parameters:" in doc, f"attack {_name(attack)!r}: the docstring has no 'Parameters:' section"


#: Every check, by name.
CHECKS: dict[str, Callable[[type[Attack] | Attack], None]] = {
    "threat_model": check_threat_model,
    "honest_success": check_honest_success,
    "same_seed": check_same_seed,
    "batch_equals_slices": check_batch_equals_slices,
    "declared_parameters": check_declared_parameters,
}


def check_attack(attack: type[Attack] | Attack, checks: Iterable[str] | None = None) -> None:
    """Run the conformance checks (all, or the named ones) on an attack class or instance."""
    for name in checks or CHECKS:
        CHECKS[name](attack)


def parametrize_with_checks(attacks: Iterable[type[Attack] | Attack]):
    """A pytest ``parametrize`` decorator giving a test ``(attack, check)`` for every attack and check."""
    import pytest

    cases = [(a, check) for a in attacks for check in CHECKS.values()]
    ids = [f"{_name(a)}-{check.__name__.removeprefix('check_')}" for a, check in cases]
    return pytest.mark.parametrize("attack, check", cases, ids=ids)
