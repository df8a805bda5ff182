"""S6/S9: visualization raises its objective, on logits and on a named layer, from Python and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from advkit.cli import cli
from advkit.constraints import Box
from advkit.runner import make_attack, run_attack


@pytest.mark.parametrize(
    "options", [{}, {"l2_penalty": 0.01, "step_rule": "raw", "step_size": 0.01}, {"layer": "conv2", "channel": 5}]
)
def test_visualization_raises_its_objective(zoo_cnn, options):
    x = torch.zeros(4, 1, 28, 28)  # placeholders: the attack starts from its own noise
    target = torch.tensor([0, 3, 5, 8])
    attack = make_attack("visualize", steps=25, start="noise", **options)
    result = run_attack(zoo_cnn, attack, x, (target + 1) % 10, constraint=Box(-1, 1), target=target)
    history = attack.history_
    assert history.shape == (25, 4) and torch.isfinite(history).all()
    assert (history[-1] > history[0]).all()
    assert float(result.x_adv.abs().max()) <= 1 + 1e-6
    assert torch.equal(result.x, x)  # the input is untouched; only the returned image changed


def test_l2_penalty_enters_the_objective(zoo_cnn):
    x = (torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 0.2).clamp(-1, 1)
    target = torch.tensor([2, 7])
    plain, penalized = make_attack("visualize", steps=1), make_attack("visualize", steps=1, l2_penalty=0.5)
    run_attack(zoo_cnn, plain, x, (target + 1) % 10, constraint=Box(-1, 1), target=target)
    run_attack(zoo_cnn, penalized, x, (target + 1) % 10, constraint=Box(-1, 1), target=target)
    norms = x.flatten(1).pow(2).sum(1)
    assert torch.allclose(plain.history_[0] - penalized.history_[0], 0.5 * norms, rtol=1e-4)


def test_unknown_layer_is_named(zoo_cnn):
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ValueError, match="no layer 'nope'; layers: .*conv1"):
        run_attack(
            zoo_cnn,
            make_attack("visualize", steps=2, layer="nope"),
            x,
            torch.tensor([1]),
            constraint=Box(-1, 1),
            target=torch.tensor([0]),
        )


def test_visualize_cli(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "visualize",
            "--model",
            "cnn",
            "--classes",
            "1,7",
            "--steps",
            "20",
            "--start",
            "blank",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["classes"] == [1, 7]
    assert all(last > first for first, last in zip(summary["objective_first"], summary["objective_last"]))
    assert (tmp_path / "visualization.png").stat().st_size > 10_000
    bad = CliRunner().invoke(cli, ["visualize", "--model", "cnn", "--classes", "12"])
    assert bad.exit_code != 0 and "out of range" in bad.output
