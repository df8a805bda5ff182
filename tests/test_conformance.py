"""One conformance suite, run over every registered attack (built-in or third-party)."""

from __future__ import annotations

import pytest
import torch

from advkit import registry
from advkit.constraints import Box, L2Ball, LinfBall, NonNegative
from advkit.runner import make_attack, run_attack

ATTACKS = sorted(registry.attacks())
THREAT_MODELS = {
    "linf": lambda: LinfBall(0.3),
    "linf+nonneg": lambda: LinfBall(0.3) & NonNegative(),
    "l2+linf": lambda: L2Ball(2.0) & LinfBall(0.5),
}


def fast(name: str) -> dict:
    """Keep each attack short; conformance is about guarantees, not strength."""
    fields = {f.name for f in make_attack(name).param_fields()}
    return {"steps": 10} if "steps" in fields else {}


@pytest.fixture(scope="module")
def digits(zoo_cnn, mnist_test, correct_digits):
    return correct_digits(zoo_cnn, mnist_test, 8)


@pytest.mark.parametrize("threat", sorted(THREAT_MODELS))
@pytest.mark.parametrize("name", ATTACKS)
def test_attack_conformance(name, threat, zoo_cnn, digits):
    x, y = digits
    x_before = x.clone()
    attack = make_attack(name, **fast(name))
    target = (y + 1) % 10 if attack.targeted else None
    constraint = THREAT_MODELS[threat]()
    zoo_cnn.module.train()  # the runner must switch to eval and back
    try:
        result = run_attack(zoo_cnn, attack, x, y, constraint=constraint, target=target, seed=3)
        assert zoo_cnn.module.training, "model mode not restored"
    finally:
        zoo_cnn.module.eval()

    # constraints hold to 1e-6 (checked by hand, not by the constraint's own contains)
    delta = result.x_adv - x
    if threat.startswith("linf"):
        assert float(delta.abs().max()) <= 0.3 + 1e-6
    if threat == "linf+nonneg":
        assert float(delta.min()) >= -1e-6
    if threat == "l2+linf":
        assert float(delta.flatten(1).norm(dim=1).max()) <= 2.0 + 1e-6
        assert float(delta.abs().max()) <= 0.5 + 1e-6
    assert float(result.x_adv.min()) >= -1 - 1e-6 and float(result.x_adv.max()) <= 1 + 1e-6
    assert bool((constraint & Box(-1, 1)).contains(delta, x).all())
    # input unmodified; output finite, same shape and dtype
    assert torch.equal(x, x_before)
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert torch.isfinite(result.x_adv).all()
    # reported success equals an independent re-check
    with torch.no_grad():
        probs = zoo_cnn.module(result.x_adv).softmax(1)
    conf, pred = probs.max(1)
    level = attack.success_confidence
    expected = ((pred == target) if target is not None else (pred != y)) & (conf >= level)
    assert torch.equal(result.success, expected)
    # same seed, same result
    again = run_attack(
        zoo_cnn, make_attack(name, **fast(name)), x, y, constraint=THREAT_MODELS[threat](), target=target, seed=3
    )
    assert torch.equal(again.x_adv, result.x_adv)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_docstring_shape(name):
    """Every attack documents what it does and its parameters with defaults."""
    cls = registry.get_attack(name).obj
    doc = cls.__doc__ or ""
    assert doc.strip().splitlines()[0], "first line describes the attack"
    params = [f.name for f in cls.param_fields()]
    if params:
        assert "Parameters:" in doc
        for param in params:
            assert f"{param} (" in doc, f"parameter {param} undocumented"
