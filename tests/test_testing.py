"""advkit.testing, the conformance suite plugin authors run: every registered attack and the README's example plugin
pass it, and an attack that breaks a guarantee fails the check that guards it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from advkit import registry
from advkit.attack import Attack
from advkit.testing import CHECKS, check_attack, parametrize_with_checks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "advkit-random-sign"))
from advkit_random_sign import RandomSign  # noqa: E402  (the example plugin, as its own tests import it)

ATTACKS = [item.obj for _, item in sorted(registry.attacks().items())] + [RandomSign]


@parametrize_with_checks(ATTACKS)
def test_every_attack_passes_the_conformance_suite(attack, check):
    check(attack)


@dataclass(kw_only=True)
class BatchWiseNoise(Attack):
    """Random sign noise drawn batch-wise from problem.generator: a sample's noise depends on its position.

    Parameters:
        scale (float, 1.0): noise scale.
    """

    name = "batch_wise_noise"
    scale: float = 1.0

    def run(self, problem):
        noise = torch.randn(problem.x.shape, generator=problem.generator).sign()
        return problem.x + problem.constraint.project(self.scale * noise, problem.x)


@dataclass(kw_only=True)
class GlobalNoise(BatchWiseNoise):
    """Random noise from the global RNG: not reproducible from the seed.

    Parameters:
        scale (float, 1.0): noise scale.
    """

    name = "global_noise"

    def run(self, problem):
        noise = torch.randn(problem.x.shape).sign()
        return problem.x + problem.constraint.project(self.scale * noise, problem.x)


@dataclass(kw_only=True)
class Undocumented(Attack):
    name = "undocumented"
    steps: int = 3

    def run(self, problem):
        return problem.x


@pytest.mark.parametrize(
    "attack, check, message",
    [
        (
            BatchWiseNoise,
            "batch_equals_slices",
            "a batch and its slices gave different points; draw random numbers per sample",
        ),
        (GlobalNoise, "same_seed", "drew from the global RNG"),
        (Undocumented, "declared_parameters", "parameter steps is not in its docstring"),
    ],
)
def test_a_broken_attack_fails_the_check_that_guards_it(attack, check, message):
    with pytest.raises(AssertionError, match=message):
        CHECKS[check](attack)


def test_check_attack_runs_every_check():
    check_attack(RandomSign)
    with pytest.raises(AssertionError):
        check_attack(BatchWiseNoise)
