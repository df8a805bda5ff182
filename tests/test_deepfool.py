"""DeepFool against closed forms on affine classifiers (one step reaches the nearest boundary exactly), its pass
counts, the budget, and per-sample independence."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from advkit.constraints import Box, L2Ball, LinfBall
from advkit.engine import Problem
from advkit.errors import ParameterError
from advkit.models import ModelAdapter
from advkit.plugins.builtin.deepfool import DeepFool
from advkit.runner import run_attack
from tests.conftest import OneAtATime

pytestmark = pytest.mark.usefixtures("one_thread")

BOUNDS = (-50.0, 50.0)  # wide: the box never binds


def linear(d: int, k: int, seed: int = 0) -> tuple[ModelAdapter, nn.Linear]:
    torch.manual_seed(seed)
    layer = nn.Linear(d, k).double()
    model = ModelAdapter(layer, name="linear", bounds=BOUNDS, input_shape=(d,), class_names=[str(i) for i in range(k)])
    return model, layer


def inputs(model: ModelAdapter, n: int, d: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, model.predict(x).argmax(1)


def distances(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """(N, K): the distance from each x to the hyperplane z_j = z_y, in ``norm`` (dual: L2 or L1); inf at j = y."""
    w, b = layer.weight.detach(), layer.bias.detach()
    z = x @ w.T + b
    margin = z.gather(1, y.view(-1, 1)) - z  # (N, K) >= 0
    diff = w[y].unsqueeze(1) - w.unsqueeze(0)  # (N, K, D): w_y - w_j
    dual = diff.norm(dim=2) if norm == "l2" else diff.abs().sum(2)
    out = margin / dual
    return out.scatter(1, y.view(-1, 1), float("inf"))


@dataclass(frozen=True)
class TieCounts:
    """Adversarial when another logit is at least the label's, up to 1e-9: the exact boundary counts."""

    confidence: float = 0.0
    targeted = False

    def reached(self, logits, y, target=None):
        z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
        others = logits.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
        return others >= z_y - 1e-9


def test_without_overshoot_one_step_lands_on_the_boundary_of_an_affine_binary_classifier():
    model, layer = linear(6, 2)
    x, y = inputs(model, 5, 6)
    constraint = L2Ball(100.0) & Box(*BOUNDS)
    problem = Problem(model=model, x=x.clone(), y=y, constraint=constraint, criterion=TieCounts())
    x_adv = DeepFool(overshoot=0.0).run(problem)
    expected = distances(layer, x, y, "l2")[torch.arange(5), 1 - y]
    norms = (x_adv - x).norm(dim=1)
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(problem.artifacts["norm"], norms, rtol=1e-12, atol=0)
    z = model.logits(x_adv)
    assert float((z[:, 0] - z[:, 1]).abs().max()) <= 1e-9 * float(z.abs().max())  # on the boundary
    assert problem.backward_counts.tolist() == [1] * 5  # one candidate class, one step
    assert model.counter.forward == 5 + 5 + 5  # the clean check, the linearization and the point judged


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_overshoot_crosses_the_boundary_by_its_share_of_the_closed_form_distance(norm):
    model, layer = linear(6, 2)
    x, y = inputs(model, 5, 6)
    constraint = L2Ball(100.0) if norm == "l2" else LinfBall(40.0)
    result = run_attack(model, "deepfool", x, y, constraint=constraint, norm=norm, overshoot=0.02)
    expected = 1.02 * distances(layer, x, y, norm)[torch.arange(5), 1 - y]
    delta = result.x_adv - x
    measured = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
    torch.testing.assert_close(measured, expected, rtol=1e-9, atol=0)
    torch.testing.assert_close(result.artifacts["norm"], measured, rtol=1e-12, atol=0)
    assert bool(result.success.all())
    if norm == "linf":  # the L-inf step is a signed constant: every element moves by the radius
        torch.testing.assert_close(delta.abs(), expected.view(-1, 1).expand_as(delta), rtol=1e-9, atol=0)
    assert result.backward_counts.tolist() == [1] * 5 and result.backward_passes == 5


def test_only_the_top_candidates_by_clean_logit_are_considered():
    """10 classes: the step goes to the nearest boundary among the candidates (one backward pass per candidate)."""
    model, layer = linear(8, 10, seed=2)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.2, 3.0, 10, dtype=torch.float64).view(-1, 1))  # distances spread apart
    x, y = inputs(model, 12, 8, seed=3)
    dist = distances(layer, x, y, "l2")
    top = model.predict(x).scatter(1, y.view(-1, 1), float("-inf")).topk(3, dim=1).indices
    near_top3 = dist.gather(1, top).amin(1)
    nearest = dist.amin(1)
    assert bool((near_top3 > nearest * 1.001).any())  # the case is not trivial: the candidates matter
    for candidates, expected, cost in ((4, near_top3, 3), (10, nearest, 9)):
        result = run_attack(model, "deepfool", x, y, constraint=L2Ball(100.0), candidates=candidates)
        torch.testing.assert_close(result.artifacts["norm"], 1.02 * expected, rtol=1e-9, atol=0)
        assert bool(result.success.all())
        assert result.backward_counts.tolist() == [cost] * 12 and result.backward_passes == 12 * cost
        assert result.forward_passes == 12 + 2 * 12


def test_pass_counts_and_the_budget_on_a_nonlinear_model(tiny_model, tiny_batch):
    x, y = tiny_batch
    free = run_attack(tiny_model, "deepfool", x, y, constraint=L2Ball(4.0), overshoot=0.0)
    steps = free.backward_counts // 9  # nine candidates per step
    assert torch.equal(free.backward_counts, steps * 9) and int(steps.max()) > 1  # some take several steps
    assert free.backward_passes == int(free.backward_counts.sum())
    assert free.forward_passes == 12 + 2 * int(steps.sum())
    found = torch.isfinite(free.artifacts["norm"])
    torch.testing.assert_close(free.artifacts["norm"][found], (free.x_adv - x)[found].flatten(1).norm(dim=1))
    capped = run_attack(tiny_model, "deepfool", x, y, constraint=L2Ball(4.0), overshoot=0.0, budget=10)
    assert torch.equal(capped.backward_counts, torch.clamp(free.backward_counts, max=9))  # one full step fits in 10
    none = run_attack(tiny_model, "deepfool", x, y, constraint=L2Ball(4.0), budget=8)  # no full step fits
    assert none.backward_passes == 0 and torch.equal(none.x_adv, x)
    assert bool(torch.isinf(none.artifacts["norm"]).all())


def test_a_batch_gives_each_sample_what_its_slices_give_it(tiny_model, tiny_batch):
    model = ModelAdapter(
        OneAtATime(tiny_model.module), name="tiny-1x1", bounds=tiny_model.bounds,
        input_shape=tiny_model.input_shape, class_names=tiny_model.class_names,
    )  # fmt: skip
    x, y = tiny_batch[0][:6], tiny_batch[1][:6]
    for params in ({"norm": "l2"}, {"norm": "linf", "candidates": 4}):
        whole = run_attack(model, "deepfool", x, y, constraint=LinfBall(1.0), **params)
        order = torch.tensor([4, 1, 5, 0, 3, 2])
        shuffled = run_attack(model, "deepfool", x[order], y[order], constraint=LinfBall(1.0), **params)
        assert torch.equal(shuffled.x_adv, whole.x_adv[order])
        assert torch.equal(shuffled.backward_counts, whole.backward_counts[order])
        assert torch.equal(shuffled.artifacts["norm"], whole.artifacts["norm"][order])
        chunked = run_attack(model, "deepfool", x, y, constraint=LinfBall(1.0), batch_size=4, **params)
        assert torch.equal(chunked.x_adv, whole.x_adv) and torch.equal(
            chunked.artifacts["norm"], whole.artifacts["norm"]
        )
        assert (chunked.forward_passes, chunked.backward_passes) == (whole.forward_passes, whole.backward_passes)


def test_deepfool_refuses_a_target(tiny_model, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ParameterError, match="untargeted"):
        run_attack(tiny_model, "deepfool", x, y, eps=0.1, target=(y + 1) % 10)
