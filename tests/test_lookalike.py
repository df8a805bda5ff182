"""S7: look-alikes read as the target while staying closer to the original as beta grows."""

from __future__ import annotations

import torch

from advkit.runner import make_attack, run_attack


def test_beta_trades_closeness_for_the_target(zoo_cnn, mnist_test, correct_digits):
    x, y = correct_digits(zoo_cnn, mnist_test, 6, label=2)
    target = torch.full_like(y, 5)
    loose = run_attack(zoo_cnn, make_attack("lookalike", steps=40, beta=1e-4), x, y, eps=2.0, target=target)
    tight = run_attack(zoo_cnn, make_attack("lookalike", steps=40, beta=1e3), x, y, eps=2.0, target=target)
    assert loose.success.float().mean() >= 0.5  # "2"s read as "5"
    mse = lambda r: (r.x_adv - x).flatten(1).pow(2).mean(1)  # noqa: E731
    assert (mse(tight) <= mse(loose) + 1e-6).all() and (mse(tight) < mse(loose)).any()


def test_objective_matches_its_definition(zoo_cnn, mnist_test, correct_digits):
    """With a budget the active set shrinks; the penalty must still use each sample's own image."""
    x, y = correct_digits(zoo_cnn, mnist_test, 4)
    target = (y + 1) % 10
    result = run_attack(zoo_cnn, make_attack("lookalike", steps=5, beta=10.0), x, y, eps=0.5, target=target, budget=3)
    assert result.backward_passes <= 3 * len(x)
    assert float((result.x_adv - x).abs().max()) <= 0.5 + 1e-6


def test_lookalike_from_noise_raises_its_objective(zoo_cnn, mnist_test, correct_digits):
    x, y = correct_digits(zoo_cnn, mnist_test, 3)
    attack = make_attack("lookalike", steps=20, start="noise", stop_early=False)
    result = run_attack(zoo_cnn, attack, x, y, eps=2.0, target=(y + 1) % 10)
    assert attack.history_.shape == (20, 3) and (attack.history_[-1] > attack.history_[0]).all()
    assert not torch.allclose(result.x_adv, x)


def test_lookalike_cli_one_per_class(tmp_path):
    import json

    from click.testing import CliRunner

    from advkit.cli import cli

    result = CliRunner().invoke(cli, ["lookalike", "--model", "cnn", "--steps", "30", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["reference_classes"] == list(range(10))
    assert summary["targets"] == [(c + 3) % 10 for c in range(10)]
    assert sum(summary["reached"]) >= 8 and max(summary["mse_to_reference"]) < 0.3
    assert (tmp_path / "visualization.png").stat().st_size > 10_000
