"""Untargeted APGD and the untargeted margin / DLR losses."""

from __future__ import annotations

import pytest
import torch

from advkit.objectives import UNTARGETED_LOSSES, dlr, logit_margin
from advkit.runner import run_attack


def test_margin_is_positive_exactly_when_misclassified():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.5, 2.0, 1.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 0, 0])
    assert torch.allclose(logit_margin(logits, y), torch.tensor([-2.0, 1.5, 0.0]))


def test_dlr_is_invariant_to_scaling_and_shifting_the_logits():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    assert torch.allclose(dlr(3.0 * logits + 7.0, y), dlr(logits, y), atol=1e-5)
    assert bool(((dlr(logits, y) > 0) == (logits.argmax(1) != y)).all())


def test_unknown_loss_names_the_valid_ones(tiny_model, tiny_batch):
    with pytest.raises(
        ValueError, match="parameter loss must be one of 'ce', 'margin', 'dlr', 'ce\\+margin', got 'hinge'"
    ):
        run_attack(tiny_model, "apgd", *tiny_batch, eps=0.1, loss="hinge")


@pytest.mark.parametrize("loss", sorted(UNTARGETED_LOSSES))
def test_budget_holds_and_restarts_run_only_on_unfooled_samples(tiny_model, tiny_batch, loss):
    x, y = tiny_batch
    result = run_attack(tiny_model, "apgd", x, y, eps=0.05, steps=10, restarts=3, loss=loss, budget=30)
    assert result.summary()["max_backward_per_sample"] <= 30
    assert float((result.x_adv - x).abs().max()) <= 0.05 + 1e-6
    fooled_early = result.backward_counts < 30
    assert bool(result.success[fooled_early].all())  # only a fooled sample leaves before the budget ends


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_apgd_matches_pgd_at_an_equal_budget(zoo_cnn, mnist_test, correct_digits, loss):
    """On the plain CNN both reach about what is reachable; a broken schedule or loss would fall far behind."""
    x, y = correct_digits(zoo_cnn, mnist_test, 60)
    eps = 0.2  # model units ([-1, 1]): 0.1 on the 0-1 scale
    pgd = run_attack(zoo_cnn, "pgd", x, y, eps=eps, steps=40, seed=0)
    apgd = run_attack(zoo_cnn, "apgd", x, y, eps=eps, steps=40, loss=loss, seed=0, budget=40)
    assert pgd.success_rate > 0.2
    assert int(apgd.success.sum()) >= int(pgd.success.sum()) - 1  # random starts differ: one sample of luck either way
