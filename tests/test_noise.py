"""S8: the noise plugin uses exactly alpha = 1 / (d.std() + 1e-8) on d = dC/dnoise, C = logits[target]."""

from __future__ import annotations

import torch
from torch import nn

from advkit.constraints import LinfBall
from advkit.models import ModelAdapter
from advkit.runner import run_attack


def linear_model() -> ModelAdapter:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    return ModelAdapter(
        module, name="linear", bounds=(-100.0, 100.0), input_shape=(1, 4, 4), class_names=[str(i) for i in range(10)]
    )


def test_one_noise_step_is_the_s8_rule():
    model = linear_model()
    x = torch.zeros(3, 1, 4, 4)
    y = torch.tensor([0, 1, 2])
    target = torch.tensor([5, 6, 7])
    result = run_attack(model, "noise", x, y, constraint=LinfBall(50.0), target=target, steps=1, confidence=0.999)
    weight = model.module[1].weight.detach()
    for i, t in enumerate(target.tolist()):
        d = weight[t].view(1, 4, 4)  # dC/dnoise for C = logits[t] of a linear model
        expected = d / (d.std() + 1e-8)
        assert torch.allclose(result.x_adv[i] - x[i], expected, atol=1e-5)


def test_noise_raises_the_target_logit_and_stays_in_the_ball(zoo_cnn, mnist_test, correct_digits):
    x, y = correct_digits(zoo_cnn, mnist_test, 20)
    target = (y + 3) % 10
    result = run_attack(zoo_cnn, "noise", x, y, constraint=LinfBall(0.3), target=target, steps=30)
    with torch.no_grad():
        before = zoo_cnn.module(x).gather(1, target.view(-1, 1))
        after = zoo_cnn.module(result.x_adv).gather(1, target.view(-1, 1))
    assert (after > before).all()
    assert float((result.x_adv - x).abs().max()) <= 0.3 + 1e-6
    assert result.success.any()


def test_noise_study_cli(tmp_path):
    import json

    from click.testing import CliRunner

    from advkit.cli import cli

    result = CliRunner().invoke(
        cli, ["noise-study", "--model", "cnn", "--eps", "0.6", "--steps", "15", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    table = torch.tensor(s["table"])
    assert table.shape == (10, 10)
    assert sorted(s["fixed_labels"]) == list(range(10))
    # the base label's row carries no noise: those digits are correctly classified by construction
    assert table[s["base_label"]].tolist() == s["fixed_labels"]
    assert set(map(int, s["targets_reached"])) == set(range(10)) - {s["base_label"]}
    assert (tmp_path / "noise_study.png").stat().st_size > 10_000
