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


def test_dlr_on_too_few_classes_is_refused_before_any_pass_in_python_and_on_the_cli(tmp_path):
    from click.testing import CliRunner
    from torch import nn

    from advkit.cli import cli
    from advkit.errors import ParameterError
    from advkit.models import ModelAdapter
    from advkit.runner import run_attack

    two = ModelAdapter(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), name="two", bounds=(0.0, 1.0),
                       input_shape=(4,), class_names=["a", "b"])  # fmt: skip
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
    y = two.predict(x).argmax(1)
    with pytest.raises(ParameterError, match="DLR loss needs at least 3 classes, the model has 2"):
        run_attack(two, "apgd", x, y, eps=0.1, loss="dlr")
    with pytest.raises(ParameterError, match="targeted DLR loss needs at least 4 classes"):
        run_attack(two, "apgd_targeted", x, y, eps=0.1, target=1, loss="dlr")
    assert two.counter.forward == 0 and two.counter.backward == 0
    assert run_attack(two, "apgd", x, y, eps=0.1, loss="ce", steps=2).n == 6  # the other losses still work
    model_file = tmp_path / "two.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\nfrom advkit.models import ModelAdapter\n\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return ModelAdapter(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), name='two', bounds=(0.0, 1.0), "
        "input_shape=(4,), class_names=['a', 'b'])\n"
    )
    data = tmp_path / "d.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.rand(8, 4), "y": torch.tensor([0, 1] * 4), "bounds": torch.tensor([0.0, 1.0])}, str(data))
    out = CliRunner().invoke(cli, ["attack", "--model", f"{model_file}:make", "--data", f"tensors:{data}",
                                   "--attack", "apgd", "-p", "loss=dlr", "--eps", "0.1", "-n", "2"])  # fmt: skip
    assert out.exit_code != 0 and "Traceback" not in out.output, out.output
    assert "the DLR loss needs at least 3 classes" in out.output
