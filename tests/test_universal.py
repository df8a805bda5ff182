"""Universal perturbations: one tensor shared by the batch, budgets, held-out fooling rate."""

from __future__ import annotations

import pytest
import torch

from advkit.constraints import Binary, Box, L2Ball, LinfBall, NonNegative
from advkit.criteria import Misclassified
from advkit.engine import GradientStep, Problem, optimize
from advkit.plugins.builtin.universal import clamped_objective
from advkit.runner import run_attack
from advkit.steps import sign_step
from advkit.universal import apply_shared, fooling_rate, shared_part


def test_shared_part_drops_only_the_box():
    c = LinfBall(0.1) & NonNegative() & Box(-1, 1)
    assert shared_part(c).describe() == "linf(eps=0.1) & nonneg"
    assert shared_part(Box(0, 1)).describe() == "unconstrained"
    with pytest.raises(ValueError, match="one radius"):
        shared_part(LinfBall(torch.tensor([0.1, 0.2])))


@pytest.mark.parametrize(
    "constraint", [LinfBall(0.3), L2Ball(1.5), LinfBall(0.3) & NonNegative(), Binary(0.25) & NonNegative()]
)
def test_one_perturbation_is_shared_by_the_whole_batch(tiny_model, tiny_batch, constraint):
    x, y = tiny_batch
    result = run_attack(tiny_model, "universal", x, y, constraint=constraint, steps=10, seed=3)
    u = result.artifacts["perturbation"]
    assert u.shape == (1, *x.shape[1:])
    full = constraint & Box(*tiny_model.bounds)
    # Every input sees the same u, clipped to its own box: x_adv = clip(x + u).
    assert torch.allclose(result.x_adv, apply_shared(u, x, full), atol=1e-6)
    if constraint.convex:
        assert torch.allclose(result.x_adv, (x + u).clamp(-1, 1), atol=1e-6)
    else:  # binary: each pixel moves by u or, where x + u would leave the box, by 0
        moved = result.x_adv - x
        assert torch.all(torch.isclose(moved, u.expand_as(x)) | (moved == 0))
    assert bool(shared_part(full).contains(u, x[:1]).all())


def test_universal_fools_more_than_nothing_and_reports_held_out_rate(tiny_model):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(64, 1, 8, 8, generator=g) * 1.6 - 0.8
    y = tiny_model.predict(x).argmax(1)
    train, held = slice(0, 32), slice(32, 64)
    result = run_attack(tiny_model, "universal", x[train], y[train], eps=0.5, steps=30)
    u = result.artifacts["perturbation"]
    assert result.success_rate > 0.3
    rate, fooled = fooling_rate(tiny_model, u, x[held], y[held], LinfBall(0.5) & Box(-1, 1))
    assert fooled.shape == (32,) and rate == float(fooled.float().mean())
    assert rate > 0.2  # a shared perturbation transfers to inputs it never saw
    assert fooling_rate(tiny_model, torch.zeros_like(u), x[held], y[held], Box(-1, 1))[0] == 0.0


def test_targeted_universal_pulls_towards_the_target(tiny_model, tiny_batch):
    x, y = tiny_batch
    keep = y != 3
    x, y = x[keep], y[keep]
    result = run_attack(tiny_model, "universal", x, y, eps=0.8, target=3, steps=40)
    assert result.success_rate > 0.5  # none of these inputs is a 3 before the attack


@pytest.mark.parametrize("minibatch", [None, 5])
def test_universal_budget_is_never_exceeded(tiny_model, tiny_batch, minibatch):
    x, y = tiny_batch
    result = run_attack(tiny_model, "universal", x, y, eps=0.05, steps=50, budget=7, minibatch=minibatch)
    assert result.backward_counts is not None
    assert int(result.backward_counts.max()) <= 7
    assert result.summary()["max_backward_per_sample"] <= 7
    assert result.backward_passes == int(result.backward_counts.sum())


def test_minibatches_visit_every_sample(tiny_model, tiny_batch):
    x, y = tiny_batch
    problem = Problem(
        model=tiny_model,
        x=x,
        y=y,
        constraint=LinfBall(0.01) & Box(-1, 1),
        criterion=Misclassified(0.99),
        generator=torch.Generator().manual_seed(0),
    )
    out = optimize(
        problem,
        update=GradientStep(sign_step, 0.001),
        objective=clamped_objective(False, 5.0),
        steps=6,
        variable="universal",
        minibatch=4,
    )
    assert torch.all(out.backward_counts == 2)  # 12 samples, 4 per step, 6 steps: two passes each
    assert out.shared.shape == (1, 1, 8, 8)


def test_universal_cli_reports_train_and_held_out_rates(tmp_path):
    import json

    from click.testing import CliRunner

    from advkit.cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "universal",
            "--model",
            "cnn",
            "--eps",
            "0.5",
            "--train",
            "60",
            "--steps",
            "5",
            "--minibatch",
            "30",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["n_train"] == 60 and summary["n_heldout"] > 900  # 60 correctly classified training digits
    assert 0 <= summary["heldout_fooling_rate"] <= 1 and summary["max_backward_per_sample"] <= 5
    assert summary["perturbation_linf"] <= 0.5 + 1e-6
    assert (tmp_path / "universal.png").stat().st_size > 10_000
    few = CliRunner().invoke(
        cli, ["universal", "--model", "cnn", "--eps", "0.5", "--train", "20", "--steps", "2", "-n", "50", "--json"]
    )
    assert few.exit_code == 0, few.output
    assert json.loads(few.output)["n_heldout"] == 50  # -n: the first 50 held-out digits it classifies correctly
    bad = CliRunner().invoke(cli, ["universal", "--model", "cnn", "--eps", "0.5", "--steps", "0"])
    assert bad.exit_code == 2 and "parameter steps must be an integer in [1, 1000000], got 0" in bad.output
