"""Carlini-Wagner L2 against the closed-form distance of an affine binary classifier, its binary search on c, pass
counts, the budget, early stopping, targets, and per-sample independence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advkit.constraints import L2Ball, LinfBall
from advkit.models import ModelAdapter
from advkit.runner import run_attack
from tests.conftest import OneAtATime

pytestmark = pytest.mark.usefixtures("one_thread")


def affine_binary(n: int = 6, d: int = 8) -> tuple[ModelAdapter, torch.Tensor, torch.Tensor, torch.Tensor]:
    """z = (u.x / 2, -u.x / 2) in [-3, 3]^d, and n inputs of class 0 at L2 distances 1.0, 1.2, ..., 2.0 from the
    boundary u.x = 0 (the box does not bind near them)."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    layer = nn.Linear(d, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.stack([u / 2, -u / 2]))
        layer.bias.zero_()
    model = ModelAdapter(layer, name="affine", bounds=(-3.0, 3.0), input_shape=(d,), class_names=["a", "b"])
    unit = u / u.norm()
    distance = torch.linspace(1.0, 2.0, n, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.3
    x = x - (x @ unit).unsqueeze(1) * unit + distance.unsqueeze(1) * unit
    y = model.predict(x).argmax(1)
    assert bool((y == 0).all())
    return model, x, y, distance


def exact(model: ModelAdapter) -> ModelAdapter:
    return ModelAdapter(
        OneAtATime(model.module), name="tiny-1x1", bounds=model.bounds,
        input_shape=model.input_shape, class_names=model.class_names,
    )  # fmt: skip


def test_the_l2_norm_is_just_above_the_closed_form_distance_and_adversarial():
    model, x, y, distance = affine_binary()
    result = run_attack(model, "cw", x, y, constraint=L2Ball(5.0))
    norms = result.artifacts["norm"]
    assert bool(result.success.all())
    torch.testing.assert_close(norms, (result.x_adv - x).norm(dim=1), rtol=1e-12, atol=0)
    assert bool((norms >= distance * (1 - 1e-9)).all())  # nothing adversarial lies closer
    assert bool((norms <= distance * 1.05).all()), norms / distance
    assert bool(torch.isfinite(result.artifacts["const"]).all())


def test_targeting_the_other_class_of_a_binary_classifier_is_the_untargeted_attack():
    model, x, y, _ = affine_binary(n=3)
    untargeted = run_attack(model, "cw", x, y, constraint=L2Ball(5.0), steps=20, binary_search_steps=3)
    targeted = run_attack(model, "cw", x, y, constraint=L2Ball(5.0), target=1 - y, steps=20, binary_search_steps=3)
    assert torch.equal(targeted.x_adv, untargeted.x_adv)
    assert torch.equal(targeted.artifacts["norm"], untargeted.artifacts["norm"])


def test_the_binary_search_raises_c_for_samples_not_yet_adversarial():
    """At c = 1e-4 with a small learning rate nothing is reached; the search multiplies c by 10 until it is."""
    model, x, y, distance = affine_binary()
    params = {"initial_const": 1e-4, "lr": 0.01, "abort_early": False, "steps": 50}
    once = run_attack(model, "cw", x, y, constraint=L2Ball(5.0), binary_search_steps=1, **params)
    assert not bool(once.success.any()) and torch.equal(once.x_adv, x)
    assert bool(torch.isinf(once.artifacts["norm"]).all()) and bool(torch.isinf(once.artifacts["const"]).all())
    searched = run_attack(model, "cw", x, y, constraint=L2Ball(5.0), binary_search_steps=7, **params)
    assert bool(searched.success.all())
    assert bool((searched.artifacts["const"] >= 1e-2).all())  # raised by at least two decades
    assert bool((searched.artifacts["norm"] >= distance * (1 - 1e-9)).all())
    assert searched.backward_counts.tolist() == [50 * 7] * 6


def test_pass_counts_are_exact_and_the_budget_holds(tiny_model, tiny_batch):
    x, y = tiny_batch
    full = run_attack(tiny_model, "cw", x, y, eps=0.5, steps=5, binary_search_steps=3, abort_early=False)
    assert full.backward_counts.tolist() == [15] * 12 and full.backward_passes == 180
    assert full.forward_passes == 12 + 180  # the clean check, then one forward pass per step
    stalling = run_attack(tiny_model, "cw", x, y, eps=0.5, steps=20, binary_search_steps=3)
    assert int(stalling.backward_counts.max()) <= 60 and stalling.backward_passes == int(stalling.backward_counts.sum())
    assert stalling.forward_passes == 12 + stalling.backward_passes
    capped = run_attack(tiny_model, "cw", x, y, eps=0.5, steps=5, binary_search_steps=3, abort_early=False, budget=7)
    assert capped.backward_counts.tolist() == [7] * 12 and capped.backward_passes == 84


def test_early_stop_ends_a_sample_once_it_is_adversarial_within_the_l2_radius(tiny_model, tiny_batch):
    x, y = tiny_batch
    params = {"steps": 10, "binary_search_steps": 4, "abort_early": False, "initial_const": 1.0}
    full = run_attack(tiny_model, "cw", x, y, constraint=L2Ball(3.0), **params)
    early = run_attack(tiny_model, "cw", x, y, constraint=L2Ball(3.0), early_stop=True, **params)
    assert full.backward_counts.tolist() == [40] * 12
    inside = early.artifacts["norm"] <= 3.0
    assert bool(inside.any()) and bool((early.backward_counts[inside] < 40).all())
    assert torch.equal(early.backward_counts[~inside], full.backward_counts[~inside])
    assert torch.equal(early.success, early.success | inside)  # within the radius means a success at eps 3
    same = run_attack(tiny_model, "cw", x, y, constraint=LinfBall(0.5), early_stop=True, **params)
    assert torch.equal(same.x_adv, full.x_adv)  # no L2 radius: nothing to stop at


def test_targeted_points_reach_their_targets(tiny_model, tiny_batch):
    x, y = tiny_batch[0][:6], tiny_batch[1][:6]
    target = (y + 3) % 10
    result = run_attack(tiny_model, "cw", x, y, eps=1.0, target=target, steps=30, binary_search_steps=4)
    found = torch.isfinite(result.artifacts["norm"])
    assert int(found.sum()) >= 4
    assert torch.equal(tiny_model.predict(result.x_adv[found]).argmax(1), target[found])


def test_a_batch_gives_each_sample_what_its_slices_give_it(tiny_model, tiny_batch):
    model = exact(tiny_model)
    x, y = tiny_batch[0][:6], tiny_batch[1][:6]
    params = {"steps": 8, "binary_search_steps": 3, "initial_const": 0.1, "early_stop": True}
    whole = run_attack(model, "cw", x, y, constraint=L2Ball(1.5), **params)
    order = torch.tensor([4, 1, 5, 0, 3, 2])
    shuffled = run_attack(model, "cw", x[order], y[order], constraint=L2Ball(1.5), **params)
    for key in ("norm", "const"):
        assert torch.equal(shuffled.artifacts[key], whole.artifacts[key][order]), key
    assert torch.equal(shuffled.x_adv, whole.x_adv[order])
    assert torch.equal(shuffled.backward_counts, whole.backward_counts[order])
    chunked = run_attack(model, "cw", x, y, constraint=L2Ball(1.5), batch_size=4, **params)
    assert torch.equal(chunked.x_adv, whole.x_adv) and torch.equal(chunked.backward_counts, whole.backward_counts)
    assert (chunked.forward_passes, chunked.backward_passes) == (whole.forward_passes, whole.backward_passes)
