"""Bad input gets a precise error, never a silent wrong number: every user-facing error of the
Python API in one table (the CLI's own table is in test_cli.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from advkit.attack import Attack
from advkit.constraints import Constraint, L2Ball, LinfBall, NonNegative
from advkit.criteria import TargetReached
from advkit.errors import ParameterError, ThreatModelError
from advkit.models import ModelAdapter
from advkit.registry import UnknownNameError
from advkit.runner import BudgetExceeded, ThreatModelViolation, make_attack, run_attack
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


@dataclass(kw_only=True)
class ReturnsInput(Attack):
    name = "returns_input"

    def run(self, problem):
        return problem.x


class Unsatisfiable(Constraint):
    """A plugin set whose projection does nothing and that contains nothing."""

    name = "unsatisfiable"

    def project(self, delta, x):
        return delta.clone()

    def contains(self, delta, x, atol=1e-6):
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)


def wrapped(model: ModelAdapter, head: nn.Module, name: str) -> ModelAdapter:
    return ModelAdapter(
        nn.Sequential(model.module, head),
        name=name,
        bounds=model.bounds,
        input_shape=model.input_shape,
        class_names=model.class_names,
    )


class FirstFive(nn.Module):
    def forward(self, z):
        return z[:, :5]


class Pair(nn.Module):
    def forward(self, z):
        return z, z


class IntLogits(nn.Module):
    def forward(self, z):
        return z.argmax(1, keepdim=True).expand(-1, 10).long()


class AlwaysDropout(nn.Module):
    """Dropout on the logits that ignores eval mode (``training=True`` hard-coded)."""

    def forward(self, z):
        return nn.functional.dropout(z, 0.5, training=True)


def _other(y):
    return (y + 1) % 10


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
    ("inf inputs", lambda m, x, y: (m, torch.where(x > 0.5, torch.inf, x), y, {}), InputValidationError, "NaN or inf"),
    # labels and targets
    ("float labels", lambda m, x, y: (m, x, y.float(), {}), InputValidationError, "int64"),
    ("one-hot labels", lambda m, x, y: (m, x, nn.functional.one_hot(y, 10), {}), InputValidationError, "one-hot"),
    ("labels wrong shape", lambda m, x, y: (m, x, y[:-1], {}), InputValidationError, "shape"),
    ("labels out of range", lambda m, x, y: (m, x, y + 10, {}), InputValidationError, "lie in \\[0, 9\\]"),
    (
        "labels not a tensor",
        lambda m, x, y: (m, x, y.tolist(), {}),
        InputValidationError,
        "labels must be a torch.Tensor, got list",
    ),
    (
        "target of the wrong type",
        lambda m, x, y: (m, x, y, {"attack": "targeted", "target": 2.5}),
        InputValidationError,
        "target must be a class index or an int64 tensor, got float",
    ),
    (
        "float targets",
        lambda m, x, y: (m, x, y, {"attack": "targeted", "target": _other(y).float()}),
        InputValidationError,
        "targets must be class indices of dtype torch.int64",
    ),
    (
        "one-hot targets",
        lambda m, x, y: (m, x, y, {"attack": "targeted", "target": nn.functional.one_hot(_other(y), 10)}),
        InputValidationError,
        "targets look one-hot",
    ),
    (
        "targets out of range",
        lambda m, x, y: (m, x, y, {"attack": "targeted", "target": torch.full_like(y, 10)}),
        InputValidationError,
        "targets must lie in \\[0, 9\\]",
    ),
    (
        "targets wrong shape",
        lambda m, x, y: (m, x, y, {"attack": "targeted", "target": _other(y)[:-1]}),
        InputValidationError,
        "targets must have shape \\(12,\\)",
    ),
    (
        "target out of range",
        lambda m, x, y: (m, x, y, {"attack": "targeted", "target": 10}),
        InputValidationError,
        "out of range",
    ),
    (
        "target equals label",
        lambda m, x, y: (m, x, y, {"attack": "targeted", "target": y.clone()}),
        InputValidationError,
        "equals the true label",
    ),
    (
        "targeted without target",
        lambda m, x, y: (m, x, y, {"attack": "targeted"}),
        ValueError,
        "targeted: give a target class",
    ),
    (
        "targeted criterion without target",
        lambda m, x, y: (m, x, y, {"criterion": TargetReached()}),
        ValueError,
        "targeted criterion needs a target",
    ),
    # the model
    (
        "model returns probabilities",
        lambda m, x, y: (_probs(m), x, y, {}),
        InputValidationError,
        "probabilities.*remove the final softmax",
    ),
    (
        "model returns a tuple",
        lambda m, x, y: (wrapped(m, Pair(), "pair"), x, y, {}),
        InputValidationError,
        "must return a tensor of logits, got tuple",
    ),
    (
        "model output has the wrong shape",
        lambda m, x, y: (_five(m), x, y, {}),
        InputValidationError,
        "returned shape \\(2, 5\\).*expected logits of shape \\(2, 10\\)",
    ),
    (
        "model noisy in eval mode (dropout forced on)",
        lambda m, x, y: (wrapped(m, AlwaysDropout(), "always_dropout"), x, y, {}),
        InputValidationError,
        "model 'always_dropout' gives different outputs for the same input in eval mode.*dropout",
    ),
    ("unknown model name", lambda m, x, y: ("nope", x, y, {}), UnknownNameError, "valid models: .*cnn"),
    # arguments
    (
        "negative eps",
        lambda m, x, y: (m, x, y, {"eps": -0.1}),
        ParameterError,
        "eps must be a finite number >= 0, got -0.1",
    ),
    (
        "eps as a string",
        lambda m, x, y: (m, x, y, {"eps": "0.1"}),
        ParameterError,
        "eps must be a finite number >= 0, got '0.1'",
    ),
    (
        "eps nan",
        lambda m, x, y: (m, x, y, {"eps": float("nan")}),
        ParameterError,
        "eps must be a finite number >= 0, got nan",
    ),
    (
        "no eps and no constraint",
        lambda m, x, y: (m, x, y, {"eps": None}),
        ParameterError,
        "give a constraint set or eps",
    ),
    (
        "constraint given by name",
        lambda m, x, y: (m, x, y, {"eps": None, "constraint": "linf"}),
        ParameterError,
        "constraint must be an advkit Constraint \\(e.g. LinfBall\\(0.1\\).*got str 'linf'",
    ),
    (
        "eps next to a set of another radius",
        lambda m, x, y: (m, x, y, {"eps": 0.5, "constraint": LinfBall(0.1)}),
        ThreatModelError,
        "eps 0.5 is not the radius of the constraint set linf\\(eps=0.1\\)",
    ),
    (
        "eps next to a set with no ball",
        lambda m, x, y: (m, x, y, {"eps": 0.1, "constraint": NonNegative()}),
        ThreatModelError,
        "eps 0.1 bounds nothing in the constraint set nonneg",
    ),
    (
        "eps beyond the model's range",
        lambda m, x, y: (m, x, y, {"eps": 3.0}),
        ThreatModelError,
        "eps 3 exceeds the range of model 'tiny' \\(\\[-1, 1\\], width 2\\)",
    ),
    (
        "zero budget",
        lambda m, x, y: (m, x, y, {"budget": 0}),
        ParameterError,
        "budget \\(backward passes per sample\\) must be an integer >= 1, or None, got 0",
    ),
    (
        "fractional budget",
        lambda m, x, y: (m, x, y, {"budget": 2.5}),
        ParameterError,
        "budget .* must be an integer >= 1.*2.5",
    ),
    (
        "negative seed",
        lambda m, x, y: (m, x, y, {"seed": -1}),
        ParameterError,
        "seed must be an integer in \\[0, 2\\*\\*64 - 1\\], got -1",
    ),
    ("seed beyond 2**64", lambda m, x, y: (m, x, y, {"seed": 2**64}), ParameterError, "seed must be an integer in"),
    (
        "target for an untargeted attack",
        lambda m, x, y: (m, x, y, {"attack": "untargeted", "target": _other(y)}),
        ParameterError,
        "attack 'untargeted' is untargeted: it ignores target classes",
    ),
    ("unknown attack", lambda m, x, y: (m, x, y, {"attack": "nope"}), UnknownNameError, "valid attacks: .*pgd"),
    (
        "unknown parameter",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "stepz": 3}),
        ParameterError,
        "no parameter.*stepz",
    ),
    (
        "parameters next to an attack instance",
        lambda m, x, y: (m, x, y, {"attack": make_attack("fgsm"), "step_size": 0.1}),
        ParameterError,
        "either to the attack instance or to make_attack, not both",
    ),
    (
        "confidence out of range",
        lambda m, x, y: (m, x, y, {"confidence": 1.0}),
        ParameterError,
        "confidence must be a finite number in \\[0, 1\\), or None, got 1.0",
    ),
    (
        "non-positive step size",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "step_size": -0.1}),
        ParameterError,
        "attack 'pgd': parameter step_size must be a finite number > 0, or None, got -0.1",
    ),
    (
        "NaN step size",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "step_size": float("nan")}),
        ParameterError,
        "attack 'pgd': parameter step_size must be a finite number > 0, or None, got nan",
    ),
    (
        "inf step size",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "step_size": float("inf")}),
        ParameterError,
        "parameter step_size must be a finite number > 0, or None, got inf",
    ),
    (
        "steps beyond the maximum",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "steps": 99999999999999999999}),
        ParameterError,
        "parameter steps must be an integer in \\[1, 1000000\\], got 99999999999999999999",
    ),
    (
        "fractional steps",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "steps": 2.5}),
        ParameterError,
        "parameter steps must be an integer in \\[1, 1000000\\], got 2.5",
    ),
    (
        "steps as a string",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "steps": "2"}),
        ParameterError,
        "parameter steps must be an integer in \\[1, 1000000\\], got '2'",
    ),
    (
        "unknown step rule",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "step_rule": "nope"}),
        ParameterError,
        "parameter step_rule must be one of 'sign', 'l2', 'std', 'raw', got 'nope'",
    ),
    (
        "zero restarts",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "restarts": 0}),
        ParameterError,
        "parameter restarts must be an integer in \\[1, 10000\\], got 0",
    ),
    (
        "unknown loss",
        lambda m, x, y: (m, x, y, {"attack": "apgd_targeted", "loss": "nope", "target": _other(y)}),
        ParameterError,
        "parameter loss must be one of 'ce\\+margin'",
    ),
    (
        "NaN l2 penalty",
        lambda m, x, y: (m, x, y, {"attack": "visualize", "l2_penalty": float("nan"), "target": _other(y)}),
        ParameterError,
        "attack 'visualize': parameter l2_penalty must be a finite number >= 0, got nan",
    ),
    (
        "inf beta",
        lambda m, x, y: (m, x, y, {"attack": "lookalike", "beta": float("inf"), "target": _other(y)}),
        ParameterError,
        "attack 'lookalike': parameter beta must be a finite number >= 0, got inf",
    ),
    (
        "negative channel",
        lambda m, x, y: (m, x, y, {"attack": "visualize", "layer": "0", "channel": -1, "target": _other(y)}),
        ParameterError,
        "parameter channel must be an integer >= 0, or None, got -1",
    ),
    (
        "channel beyond the layer",
        lambda m, x, y: (m, x, y, {"attack": "visualize", "layer": "0", "channel": 999, "target": _other(y)}),
        ParameterError,
        "channel 999 is out of range: layer '0' of model 'tiny' has 4 channels \\(0..3\\)",
    ),
    (
        "binary attack without a value",
        lambda m, x, y: (m, x, y, {"attack": "binary", "eps": None, "constraint": L2Ball(1.0)}),
        ValueError,
        "binary attack: give value=..., or an L-inf ball",
    ),
    (
        "universal attack with per-sample radii",
        lambda m, x, y: (m, x, y, {"attack": "universal", "eps": None, "constraint": LinfBall(torch.full((12,), 0.1))}),
        ValueError,
        "one radius for the whole batch",
    ),
    (
        "universal batch size 0",
        lambda m, x, y: (m, x, y, {"attack": "universal", "minibatch": 0}),
        ParameterError,
        "parameter minibatch must be an integer >= 1, or None, got 0",
    ),
    (
        "visualize an unknown layer",
        lambda m, x, y: (m, x, y, {"attack": "visualize", "layer": "nope", "steps": 1, "target": _other(y)}),
        ValueError,
        "model 'tiny' has no layer 'nope'; layers: 0, 1",
    ),
    (
        "start of the wrong shape",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "start": x[:1]}),
        ParameterError,
        "start has shape",
    ),
    (
        "NaN warm start",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "start": torch.full_like(x, float("nan"))}),
        ParameterError,
        "start contains NaN or inf",
    ),
    (
        "inf warm start",
        lambda m, x, y: (m, x, y, {"attack": "pgd", "start": torch.full_like(x, float("inf"))}),
        ParameterError,
        "start contains NaN or inf",
    ),
    (
        "float64 inputs to a float32 model",
        lambda m, x, y: (m, x.double(), y, {}),
        InputValidationError,
        "inputs are torch.float64 but model 'tiny' computes in torch.float32; convert them \\(x.float\\(\\)\\)",
    ),
    (
        "float16 inputs to a float32 model",
        lambda m, x, y: (m, x.half(), y, {}),
        InputValidationError,
        "inputs are torch.float16 but model 'tiny' computes in torch.float32",
    ),
    (
        "model returning int64 logits",
        lambda m, x, y: (wrapped(m, IntLogits(), "int_logits"), x, y, {}),
        InputValidationError,
        "model 'int_logits' returned torch.int64 outputs; advkit needs floating-point logits",
    ),
    # what the runner refuses from an attack
    ("attack returns NaN", lambda m, x, y: (m, x, y, {"attack": ReturnsNaN()}), ThreatModelViolation, "NaN or inf"),
    (
        "attack returns the wrong shape",
        lambda m, x, y: (m, x, y, {"attack": DropsASample()}),
        ThreatModelViolation,
        "attack returned shape",
    ),
    (
        "projection cannot satisfy the set",
        lambda m, x, y: (m, x, y, {"attack": ReturnsInput(), "eps": None, "constraint": Unsatisfiable()}),
        ThreatModelViolation,
        "projected output is still outside the constraint set",
    ),
    (
        "attack exceeds its budget",
        lambda m, x, y: (m, x, y, {"attack": ThreeBackward(), "budget": 2}),
        BudgetExceeded,
        "used 36 backward passes; budget 2 x 12 samples",
    ),
]


@pytest.mark.parametrize("build, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_table(tiny_model, tiny_batch, build, error, message):
    model, xb, yb, kwargs = build(tiny_model, *tiny_batch)
    kwargs = {"attack": "fgsm", "eps": 0.1, **kwargs}
    attack = kwargs.pop("attack")
    module = model.module if isinstance(model, ModelAdapter) else tiny_model.module
    module.train()  # whatever fails, the model's mode is left as it was
    try:
        with pytest.raises(error, match=message):
            run_attack(model, attack, xb, yb, **kwargs)
        assert module.training and all(m.training for m in module.modules())
    finally:
        module.eval()


def test_log_probabilities_are_accepted(tiny_model, tiny_batch):
    """log-softmax outputs are valid logits (their softmax is the probabilities)."""
    x, y = tiny_batch
    model = wrapped(tiny_model, nn.LogSoftmax(dim=1), "log_probs")
    result = run_attack(model, "fgsm", x, y, constraint=LinfBall(0.1))
    assert result.n == len(x)


def test_output_check_is_outside_the_pass_counter(tiny_model, tiny_batch):
    x, y = tiny_batch
    result = run_attack(tiny_model, "fgsm", x, y, eps=0.1)
    assert result.forward_passes == len(x) and result.backward_passes == len(x)  # one step; the re-check is apart


def test_model_given_in_train_mode_with_dropout_is_attacked_deterministically_in_eval_mode():
    """Dropout and BatchNorm in train mode: the runner attacks in eval mode (no dropout draw, no running-stat
    update, the same result twice) and hands the model back in train mode."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)
    )
    model = ModelAdapter(
        module, name="dropout_mlp", bounds=(-1.0, 1.0), input_shape=(1, 8, 8), class_names=[str(i) for i in range(10)]
    )
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8
    y = model.predict(x).argmax(1)
    module.train()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    first = run_attack(model, "pgd", x, y, eps=0.2, steps=3, seed=0)
    assert module.training and all(m.training for m in module.modules())
    second = run_attack(model, "pgd", x, y, eps=0.2, steps=3, seed=0)
    assert module.training and all(m.training for m in module.modules())
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.success, second.success)
    assert torch.equal(torch.get_rng_state(), rng)  # no dropout mask was ever drawn
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())  # BatchNorm statistics untouched
    with torch.no_grad():
        module.eval()
        expected = module(first.x_adv).argmax(1)
        module.train()
    assert torch.equal(first.pred, expected)  # the success re-check is an eval-mode pass


def test_a_model_random_on_purpose_can_opt_out_of_the_determinism_check(tiny_model, tiny_batch):
    x, y = tiny_batch
    model = wrapped(tiny_model, AlwaysDropout(), "randomized_defense")
    model.metadata["stochastic"] = True
    result = run_attack(model, "fgsm", x, y, eps=0.1)
    assert result.n == len(x)


@pytest.mark.parametrize("ball", [LinfBall, L2Ball])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_per_sample_radius_with_a_bad_entry_is_refused_when_the_set_is_made(ball, bad):
    """Refused before any attack runs (not blamed on the attack afterwards), naming the entry."""
    with pytest.raises(ParameterError, match=f"radius must be finite and >= 0 for every sample; entry 11 is {bad}"):
        ball(torch.tensor([0.1] * 11 + [bad]))
