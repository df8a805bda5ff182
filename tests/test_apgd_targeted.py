"""The improved targeted attack is at least as successful as `targeted` at an equal budget."""

from __future__ import annotations

import pytest
import torch

from advkit.runner import run_attack


@pytest.mark.parametrize("eps", [0.2, 0.25])
def test_at_least_as_strong_as_targeted_at_equal_budget(zoo_cnn, mnist_test, correct_digits, eps):
    x, y = correct_digits(zoo_cnn, mnist_test, 40, label=1)
    budget = 60
    plain = run_attack(zoo_cnn, "targeted", x, y, eps=eps, target=8, budget=budget, confidence=0.0)
    better = run_attack(zoo_cnn, "apgd_targeted", x, y, eps=eps, target=8, budget=budget, steps=15, restarts=4)
    assert better.backward_passes <= budget * len(x) and plain.backward_passes <= budget * len(x)
    assert better.success_rate >= plain.success_rate


def test_momentum_state_is_per_sample_and_reset_per_restart():
    from advkit.constraints import LinfBall
    from advkit_plugins.apgd_targeted import MomentumSignStep

    step = MomentumSignStep(0.5, steps=100)  # no halving within these two steps
    step.start(torch.arange(3), 3)
    x = torch.zeros(3, 2)
    d1 = step(torch.zeros(3, 2), torch.ones(3, 2), x, torch.arange(3), LinfBall(1.0))
    assert torch.allclose(d1, torch.full((3, 2), 0.5))  # first step: no momentum yet
    d2 = step(d1[[2]], torch.ones(1, 2), x[[2]], torch.tensor([2]), LinfBall(1.0))
    # z = 1.0; moved = 0.5 + 0.75 * 0.5 + 0.25 * (0.5 - 0) = 1.0
    assert torch.allclose(d2, torch.ones(1, 2))
    step.start(torch.tensor([2]), 3)
    assert int(step.count[2]) == 0 and float(step.previous[2].abs().sum()) == 0
