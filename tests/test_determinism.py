"""Determinism: same seed, same result; a batch equals its slices per sample; the global RNG is untouched.

Per-sample results can only match between a batch and its slices if the model itself gives each
sample the same numbers whatever the batch size. Batched CPU/GPU kernels may differ in the last
bits between batch sizes (sign steps can amplify that), so the slice tests use a wrapper that
runs the tiny model one sample at a time: what is tested is advkit's own per-sample determinism
(random starts and restarts drawn per sample, see :mod:`advkit.rng`).
"""

from __future__ import annotations

import pytest
import torch

from advkit import registry
from advkit.constraints import L2Ball, LinfBall, NonNegative
from advkit.models import ModelAdapter
from advkit.rng import SampleStreams
from advkit.runner import make_attack, run_attack
from tests.conftest import OneAtATime

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def exact_model(tiny_model):
    return ModelAdapter(
        OneAtATime(tiny_model.module),
        name="tiny-1x1",
        bounds=tiny_model.bounds,
        input_shape=tiny_model.input_shape,
        class_names=tiny_model.class_names,
    )


ATTACKS = sorted(registry.attacks())
PER_SAMPLE = [name for name in ATTACKS if registry.get_attack(name).obj.per_sample]
#: Configurations where randomness matters: random starts, random restarts, noise starts, budgets.
CONFIGS = {
    "pgd-restarts": ("pgd", {"steps": 4, "restarts": 3}, lambda: LinfBall(0.1)),
    "pgd-l2": ("pgd", {"steps": 4, "restarts": 2, "step_rule": "l2"}, lambda: L2Ball(0.5) & NonNegative()),
    "pgd-budget": ("pgd", {"steps": 4, "restarts": 3, "early_stop": True}, lambda: LinfBall(0.1)),
    "apgd-restarts": ("apgd_targeted", {"steps": 5, "restarts": 3}, lambda: LinfBall(0.05)),
    "fgsm": ("fgsm", {}, lambda: LinfBall(0.1)),
    "untargeted": ("untargeted", {"steps": 6}, lambda: LinfBall(0.2)),
    "binary": ("binary", {"steps": 6}, lambda: LinfBall(0.2)),
    "visualize-noise": ("visualize", {"steps": 3, "start": "noise"}, lambda: LinfBall(2.0)),
    "lookalike-noise": ("lookalike", {"steps": 3, "start": "noise"}, lambda: LinfBall(2.0)),
}


def fast(name: str) -> dict:
    fields = {f.name for f in make_attack(name).param_fields()}
    return {"steps": 4} if "steps" in fields else {}


def run(model, name, params, constraint, x, y, seed=5, budget=None):
    attack = make_attack(name, **params)
    target = (y + 3) % 10 if attack.targeted else None
    return run_attack(model, attack, x, y, constraint=constraint(), target=target, seed=seed, budget=budget)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_batch_gives_the_same_per_sample_results_as_its_slices(exact_model, tiny_batch, config):
    name, params, constraint = CONFIGS[config]
    x, y = tiny_batch[0][:6], tiny_batch[1][:6]
    budget = 6 if config == "pgd-budget" else None
    whole = run(exact_model, name, params, constraint, x, y, budget=budget)
    order = torch.tensor([4, 1, 5, 0, 3, 2])
    shuffled = run(exact_model, name, params, constraint, x[order], y[order], budget=budget)
    pieces = [
        run(exact_model, name, params, constraint, x[s], y[s], budget=budget)
        for s in (slice(0, 1), slice(1, 3), slice(3, 6))
    ]
    for other, rows in [(shuffled, order)] + [
        (p, torch.arange(6)[s]) for p, s in zip(pieces, (slice(0, 1), slice(1, 3), slice(3, 6)))
    ]:
        assert torch.equal(other.x_adv, whole.x_adv[rows]), config
        assert torch.equal(other.success, whole.success[rows])
        if whole.backward_counts is not None:
            assert torch.equal(other.backward_counts, whole.backward_counts[rows])


@pytest.mark.parametrize("name", PER_SAMPLE)
def test_every_per_sample_attack_matches_its_slices(exact_model, tiny_batch, name):
    x, y = tiny_batch[0][:4], tiny_batch[1][:4]
    constraint = lambda: LinfBall(0.2)  # noqa: E731
    whole = run(exact_model, name, fast(name), constraint, x, y)
    halves = [run(exact_model, name, fast(name), constraint, x[s], y[s]) for s in (slice(0, 2), slice(2, 4))]
    assert torch.equal(torch.cat([h.x_adv for h in halves]), whole.x_adv)


def test_identical_samples_get_identical_results(exact_model, tiny_batch):
    """Random starts come from each sample's content, so duplicates in one batch start alike."""
    x, y = tiny_batch
    x, y = torch.cat([x[:2], x[:2]]), torch.cat([y[:2], y[:2]])
    result = run(exact_model, "pgd", {"steps": 2, "restarts": 2}, lambda: LinfBall(0.1), x, y)
    assert torch.equal(result.x_adv[:2], result.x_adv[2:])


@pytest.mark.parametrize("name", ATTACKS)
def test_same_seed_same_result_and_the_global_rng_untouched(tiny_model, tiny_batch, name):
    x, y = tiny_batch
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = run(tiny_model, name, fast(name), lambda: LinfBall(0.2), x, y, seed=11)
    assert torch.equal(torch.get_rng_state(), state), f"{name} used the global RNG"
    b = run(tiny_model, name, fast(name), lambda: LinfBall(0.2), x, y, seed=11)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name, params", [("pgd", {"steps": 2}), ("visualize", {"steps": 2, "start": "noise"})])
def test_another_seed_draws_other_random_starts(tiny_model, tiny_batch, name, params):
    x, y = tiny_batch
    a = run(tiny_model, name, params, lambda: LinfBall(0.2), x, y, seed=1)
    b = run(tiny_model, name, params, lambda: LinfBall(0.2), x, y, seed=2)
    assert not torch.equal(a.x_adv, b.x_adv)


def test_sample_streams_depend_only_on_seed_stream_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 4, generator=g)
    labels = torch.arange(5)
    full = SampleStreams(x, 7, "a", (labels,)).rand((5, 6))
    part = SampleStreams(x[2:4], 7, "a", (labels[2:4],)).rand((2, 6))
    assert torch.equal(full[2:4], part)
    assert not torch.equal(SampleStreams(x, 8, "a", (labels,)).rand((5, 6)), full)  # another seed
    assert not torch.equal(SampleStreams(x, 7, "b", (labels,)).rand((5, 6)), full)  # another stream
    assert not torch.equal(SampleStreams(x, 7, "a", (labels + 1,)).rand((5, 6))[0], full[0])  # another label
    streams = SampleStreams(x, 7, "a")
    first, second = streams.randn((5, 2)), streams.randn((5, 2))
    assert not torch.equal(first, second)  # each sample's stream moves on
    # A SampleStreams is a torch.Generator too: code that draws batch-wise still works, reproducibly.
    assert torch.equal(
        torch.rand(3, generator=SampleStreams(x, 7, "a")), torch.rand(3, generator=SampleStreams(x, 7, "a"))
    )
    with pytest.raises(ValueError, match="per-sample draws"):
        streams.rand((4, 2))
