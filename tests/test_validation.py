"""Bad input gets a precise error, never a silent wrong number: every user-facing error of the
Python API in one table (the CLI's own table is in test_cli.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from advkit.attack import Attack
from advkit.constraints import LinfBall
from advkit.criteria import TargetReached
from advkit.models import ModelAdapter
from advkit.registry import UnknownNameError
from advkit.runner import BudgetExceeded, ThreatModelViolation, run_attack
from advkit.validation import InputValidationError


@dataclass(kw_only=True)
class ReturnsNaN(Attack):
    name = "returns_nan"

    def run(self, problem):
        return torch.full_like(problem.x, float("nan"))


@dataclass(kw_only=True)
class DropsASample(Attack):
    name = "drops_a_sample"

    def run(self, problem):
        return problem.x[1:]


@dataclass(kw_only=True)
class ThreeBackward(Attack):
    name = "three_backward"

    def run(self, problem):
        x = problem.x.clone().requires_grad_(True)
        for _ in range(3):
            problem.model(x).sum().backward()
        return problem.x


def wrapped(model: ModelAdapter, head: nn.Module, name: str) -> ModelAdapter:
    return ModelAdapter(nn.Sequential(model.module, head), name=name, bounds=model.bounds,
                        input_shape=model.input_shape, class_names=model.class_names)


class FirstFive(nn.Module):
    def forward(self, z):
        return z[:, :5]


class Pair(nn.Module):
    def forward(self, z):
        return z, z


def _probs(m):
    return wrapped(m, nn.Softmax(dim=1), "softmaxed")


def _five(m):
    return wrapped(m, FirstFive(), "five_outputs")


#: (id, build(model, x, y) -> (model, x, y, keyword arguments), exception, message pattern)
CASES = [
    # inputs
    ("outside bounds", lambda m, x, y: (m, x + 1.5, y, {}), InputValidationError, "expects \\[-1, 1\\]"),
    ("0-255 data", lambda m, x, y: (m, (x + 1) * 127.5, y, {}), InputValidationError, "0-255"),
    ("channels-last", lambda m, x, y: (m, x.permute(0, 2, 3, 1), y, {}), InputValidationError, "channels-last"),
    ("wrong shape", lambda m, x, y: (m, x[:, :, :4], y, {}), InputValidationError, "must have shape \\(N, 1, 8, 8\\)"),
    ("integer inputs", lambda m, x, y: (m, (x > 0).long(), y, {}), InputValidationError, "floating-point"),
    ("NaN inputs", lambda m, x, y: (m, torch.where(x > 0.5, torch.nan, x), y, {}), InputValidationError, "NaN"),
    ("empty batch", lambda m, x, y: (m, x[:0], y[:0], {}), InputValidationError, "empty"),
    ("not a tensor", lambda m, x, y: (m, x.numpy(), y, {}), InputValidationError, "torch.Tensor"),
    # labels and targets
    ("float labels", lambda m, x, y: (m, x, y.float(), {}), InputValidationError, "int64"),
    ("one-hot labels", lambda m, x, y: (m, x, nn.functional.one_hot(y, 10), {}), InputValidationError, "one-hot"),
    ("labels wrong shape", lambda m, x, y: (m, x, y[:-1], {}), InputValidationError, "shape"),
    ("labels out of range", lambda m, x, y: (m, x, y + 10, {}), InputValidationError, "lie in \\[0, 9\\]"),
    ("target out of range", lambda m, x, y: (m, x, y, {"attack": "targeted", "target": 10}), InputValidationError,
     "out of range"),
    ("target equals label", lambda m, x, y: (m, x, y, {"attack": "targeted", "target": y.clone()}),
     InputValidationError, "equals the true label"),
    ("targeted without target", lambda m, x, y: (m, x, y, {"attack": "targeted"}), ValueError,
     "targeted: give a target class"),
    ("targeted criterion without target", lambda m, x, y: (m, x, y, {"criterion": TargetReached()}), ValueError,
     "targeted criterion needs a target"),
    # the model
    ("model returns probabilities", lambda m, x, y: (_probs(m), x, y, {}), InputValidationError,
     "probabilities.*remove the final softmax"),
    ("model returns a tuple", lambda m, x, y: (wrapped(m, Pair(), "pair"), x, y, {}), InputValidationError,
     "must return a tensor of logits, got tuple"),
    ("model output has the wrong shape", lambda m, x, y: (_five(m), x, y, {}), InputValidationError,
     "returned shape \\(2, 5\\).*expected logits of shape \\(2, 10\\)"),
    # arguments
    ("negative eps", lambda m, x, y: (m, x, y, {"eps": -0.1}), ValueError, "eps must be >= 0"),
    ("no eps and no constraint", lambda m, x, y: (m, x, y, {"eps": None}), ValueError, "give a constraint set or eps"),
    ("zero budget", lambda m, x, y: (m, x, y, {"budget": 0}), ValueError, "budget must be >= 1"),
    ("unknown attack", lambda m, x, y: (m, x, y, {"attack": "nope"}), UnknownNameError, "valid attacks: .*pgd"),
    ("unknown parameter", lambda m, x, y: (m, x, y, {"attack": "pgd", "stepz": 3}), TypeError, "no parameter.*stepz"),
    ("start of the wrong shape", lambda m, x, y: (m, x, y, {"attack": "pgd", "start": x[:1]}), ValueError,
     "start has shape"),
    # what the runner refuses from an attack
    ("attack returns NaN", lambda m, x, y: (m, x, y, {"attack": ReturnsNaN()}), ThreatModelViolation, "NaN or inf"),
    ("attack returns the wrong shape", lambda m, x, y: (m, x, y, {"attack": DropsASample()}), ThreatModelViolation,
     "attack returned shape"),
    ("attack exceeds its budget", lambda m, x, y: (m, x, y, {"attack": ThreeBackward(), "budget": 2}), BudgetExceeded,
     "used 36 backward passes; budget 2 x 12 samples"),
]


@pytest.mark.parametrize("build, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_table(tiny_model, tiny_batch, build, error, message):
    model, xb, yb, kwargs = build(tiny_model, *tiny_batch)
    kwargs = {"attack": "fgsm", "eps": 0.1, **kwargs}
    attack = kwargs.pop("attack")
    model.module.train()  # whatever fails, the model's mode is left as it was
    try:
        with pytest.raises(error, match=message):
            run_attack(model, attack, xb, yb, **kwargs)
        assert model.module.training and all(m.training for m in model.module.modules())
    finally:
        model.module.eval()


def test_log_probabilities_are_accepted(tiny_model, tiny_batch):
    """log-softmax outputs are valid logits (their softmax is the probabilities)."""
    x, y = tiny_batch
    model = wrapped(tiny_model, nn.LogSoftmax(dim=1), "log_probs")
    result = run_attack(model, "fgsm", x, y, constraint=LinfBall(0.1))
    assert result.n == len(x)


def test_output_check_is_outside_the_pass_counter(tiny_model, tiny_batch):
    x, y = tiny_batch
    result = run_attack(tiny_model, "fgsm", x, y, eps=0.1)
    assert result.forward_passes == 2 * len(x) and result.backward_passes == len(x)
