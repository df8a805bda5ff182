"""Bad inputs get precise errors (Python API)."""

from __future__ import annotations

import pytest
import torch

from advkit.runner import run_attack
from advkit.validation import InputValidationError


def bad_cases(x, y):
    return [
        ("outside bounds", x + 1.5, y, {}, "expects \\[-1, 1\\]"),
        ("0-255 data", (x + 1) * 127.5, y, {}, "0-255"),
        ("channels-last", x.permute(0, 2, 3, 1), y, {}, "channels-last"),
        ("integer inputs", (x > 0).long(), y, {}, "floating-point"),
        ("NaN inputs", torch.where(x > 0.5, torch.nan, x), y, {}, "NaN"),
        ("float labels", x, y.float(), {}, "int64"),
        ("one-hot labels", x, torch.nn.functional.one_hot(y, 10), {}, "one-hot"),
        ("labels wrong shape", x, y[:-1], {}, "shape"),
        ("labels out of range", x, y + 10, {}, "lie in \\[0, 9\\]"),
        ("target out of range", x, y, {"target": 10}, "out of range"),
        ("target equals label", x, y, {"target": y.clone()}, "equals the true label"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_bad_input_table(tiny_model, tiny_batch, case):
    x, y = tiny_batch
    name, xb, yb, kwargs, message = bad_cases(x, y)[case]
    attack = "targeted" if "target" in kwargs else "fgsm"
    with pytest.raises(InputValidationError, match=message):
        run_attack(tiny_model, attack, xb, yb, eps=0.1, **kwargs)


def test_other_bad_arguments(tiny_model, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ValueError, match="eps must be >= 0"):
        run_attack(tiny_model, "fgsm", x, y, eps=-0.1)
    with pytest.raises(ValueError, match="targeted"):
        run_attack(tiny_model, "targeted", x, y, eps=0.1)
    with pytest.raises(ValueError, match="budget"):
        run_attack(tiny_model, "pgd", x, y, eps=0.1, budget=0)
    with pytest.raises(KeyError, match="valid attacks: .*pgd"):
        run_attack(tiny_model, "nope", x, y, eps=0.1)
    with pytest.raises(TypeError, match="no parameter"):
        run_attack(tiny_model, "pgd", x, y, eps=0.1, stepz=3)
