"""ddn: Decoupled Direction and Norm against the closed-form L2 distance on linear models, its pass counts,
budget, early stop, units and per-sample independence.

On a linear model z = W x + b whose box never binds, the smallest L2 perturbation that moves x from class y
across the boundary with class j has norm |z_y - z_j| / ||w_y - w_j||_2; the smallest adversarial one is the
minimum over j, and no adversarial point is closer. With two classes the cross-entropy gradient points exactly
along w_j - w_y, so DDN should reach that distance; with more classes it does where the runner-up's boundary is
the nearest and the logits are large enough for the softmax to weigh only y and the runner-up. eps moves by 5% a
step, so reaching a distance d from eps_0 takes about ln(eps_0 / d) / 0.05 steps: the tests give it 200. The
models compute in float64 so the boundary is crisp.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advkit.constraints import Box, L2Ball
from advkit.models import ModelAdapter
from advkit.runner import run_attack
from tests.conftest import OneAtATime

pytestmark = pytest.mark.usefixtures("one_thread")

D = 20
BOUND = 5.0  # inputs lie in [-1, 1] and the optimal perturbations are far shorter than 4: the box never binds


class Affine(nn.Module):
    """u -> scale * u + shift: the same classifier read in other units."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, u):
        return u * self.scale + self.shift


def random_linear(k: int, seed: int, scale: float = 1.0, one_at_a_time: bool = False):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(D, k).double()
    with torch.no_grad():
        layer.weight.copy_(scale * torch.randn(k, D, generator=g, dtype=torch.float64))
        layer.bias.copy_(scale * torch.randn(k, generator=g, dtype=torch.float64))
    layer.eval()
    module = OneAtATime(layer) if one_at_a_time else layer
    model = ModelAdapter(
        module, name="linear", bounds=(-BOUND, BOUND), input_shape=(D,), class_names=[str(i) for i in range(k)]
    )
    return model, layer.weight.detach().clone()


def inputs(model: ModelAdapter, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, D, generator=g, dtype=torch.float64) * 2 - 1
    return x, model.predict(x).argmax(1)


def distances(model: ModelAdapter, weight: torch.Tensor, x, y) -> torch.Tensor:
    """(N, K): the closed-form L2 distance from each x to its boundary with each class (inf at y)."""
    z = model.predict(x)
    gaps = z.gather(1, y.view(-1, 1)) - z
    out = gaps / (weight[y].unsqueeze(1) - weight.unsqueeze(0)).norm(dim=2)
    return out.scatter(1, y.view(-1, 1), float("inf"))


def l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def run(model, x, y, **kw):
    constraint = kw.pop("constraint", Box(-BOUND, BOUND))
    return run_attack(model, "ddn", x, y, constraint=constraint, **kw)


# ------------------------------------------------------------------------------------------ closed forms


def test_two_classes_reach_the_closed_form_distance():
    model, weight = random_linear(2, seed=0)
    x, y = inputs(model, 16, seed=1)
    exact = distances(model, weight, x, y).amin(1)
    result = run(model, x, y, steps=200)
    ratio = result.artifacts["norm"] / exact
    assert bool(result.success.all())
    assert float(ratio.min()) >= 1 - 1e-9  # no adversarial point is closer than the boundary
    assert float(ratio.max()) <= 1.02, ratio


def test_many_classes_never_below_the_nearest_boundary_and_on_it_when_it_is_the_runner_ups():
    model, weight = random_linear(4, seed=2, scale=10.0)
    x, y = inputs(model, 32, seed=3)
    exact, nearest = distances(model, weight, x, y).min(1)
    result = run(model, x, y, steps=200)
    ratio = result.artifacts["norm"] / exact
    assert bool(result.success.all())
    assert float(ratio.min()) >= 1 - 1e-9
    follows = nearest == model.predict(x).scatter(1, y.view(-1, 1), float("-inf")).argmax(1)
    assert int(follows.sum()) >= 16
    assert float(ratio[follows].max()) <= 1.02, ratio[follows]


def test_targeted_reaches_the_targets_boundary():
    """Targeted at the third class: where the nearest point of the target's boundary with y is already classified
    as the target, that distance is the minimum; it is a lower bound everywhere."""
    model, weight = random_linear(4, seed=4, scale=10.0)
    x, y = inputs(model, 32, seed=5)
    z = model.predict(x)
    target = z.scatter(1, y.view(-1, 1), float("-inf")).argsort(1, descending=True)[:, 1]
    bound = distances(model, weight, x, y).gather(1, target.view(-1, 1)).squeeze(1)
    normal = weight[target] - weight[y]
    nearest = x + (bound / normal.norm(dim=1)).unsqueeze(1) * normal * (1 + 1e-9)
    exact = model.predict(nearest).argmax(1) == target
    result = run(model, x, y, target=target, steps=200)
    ratio = result.artifacts["norm"] / bound
    assert bool(result.success.all()) and torch.equal(result.pred, target)
    assert float(ratio.min()) >= 1 - 1e-9
    assert int(exact.sum()) >= 8
    assert float(ratio[exact].max()) <= 1.02, ratio[exact]


def test_step_and_norm_are_in_units_of_the_range():
    """The same (nonlinear) classifier read on [0, 1] (u = (x + 5) / 10) gives the same norms, in those units (eps
    follows the same decisions; the directions may drift apart by rounding):
    alpha and init_norm are multiples of the range width."""
    mlp = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 3)).double().eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    wide = ModelAdapter(mlp, name="mlp", bounds=(-BOUND, BOUND), input_shape=(D,), class_names=list("abc"))
    unit = ModelAdapter(
        nn.Sequential(Affine(2 * BOUND, -BOUND), mlp), name="unit", bounds=(0.0, 1.0), input_shape=(D,),
        class_names=list("abc"),
    )  # fmt: skip
    x, y = inputs(wide, 8, seed=7)
    a = run(wide, x, y, steps=60)
    b = run_attack(unit, "ddn", (x + BOUND) / (2 * BOUND), y, constraint=Box(0.0, 1.0), steps=60)
    assert torch.equal(a.success, b.success) and bool(a.success.all())
    assert torch.allclose(b.artifacts["norm"] * 2 * BOUND, a.artifacts["norm"], rtol=1e-6)


# ------------------------------------------------------------------------------------------ what comes back


def test_returned_points_are_adversarial_with_the_reported_norm():
    model, _ = random_linear(4, seed=8)
    x, y = inputs(model, 8, seed=9)
    y = y.clone()
    y[0] = (y[0] + 1) % 4  # misclassified already: norm 0, the clean input
    result = run(model, x, y, steps=60)
    found = result.artifacts["norm"]
    assert found.shape == (8,) and bool(torch.isfinite(found).all())
    assert float(found[0]) == 0 and torch.equal(result.x_adv[0], x[0])
    assert bool(result.success.all())
    assert torch.allclose(l2(result.x_adv - x), found, rtol=1e-12, atol=0)


def test_no_adversarial_gives_the_clean_input_and_inf():
    model, _ = random_linear(3, seed=10)
    with torch.no_grad():
        model.module.bias[1] = 1e3
    x, y = inputs(model, 4, seed=11)
    assert bool((y == 1).all())
    result = run(model, x, y, steps=20)
    assert bool(torch.isinf(result.artifacts["norm"]).all())
    assert torch.equal(result.x_adv, x) and not bool(result.success.any())


# ------------------------------------------------------------------------------------------ passes and budget


def test_pass_counts_are_exact():
    model, _ = random_linear(3, seed=12)
    x, y = inputs(model, 6, seed=13)
    y = y.clone()
    y[2] = (y[2] + 1) % 3
    result = run(model, x, y, steps=25)
    expected = torch.tensor([25, 25, 1, 25, 25, 25])
    assert torch.equal(result.backward_counts, expected)
    assert result.backward_passes == int(expected.sum()) == result.forward_passes


@pytest.mark.parametrize("budget, spent", [(7, 7), (40, 25)])
def test_the_budget_caps_every_sample(budget, spent):
    model, _ = random_linear(3, seed=12)
    x, y = inputs(model, 6, seed=13)
    result = run(model, x, y, steps=25, budget=budget)
    assert torch.equal(result.backward_counts, torch.full((6,), spent))


def test_early_stop_and_the_threat_models_radius():
    """Within the radius the best point comes back unprojected and adversarial; with early_stop such samples stop
    early. Beyond it the search still goes on (the radius does not bound it) and the runner projects the result."""
    model, weight = random_linear(2, seed=14)
    x, y = inputs(model, 12, seed=15)
    exact = distances(model, weight, x, y).amin(1)
    radius = float(exact.median())
    inside, far = exact < radius * 0.97, exact > radius * 1.03
    assert int(inside.sum()) >= 3 and int(far.sum()) >= 3
    threat = L2Ball(radius) & Box(-BOUND, BOUND)
    full = run(model, x, y, steps=150, constraint=threat)
    early = run(model, x, y, steps=150, constraint=threat, early_stop=True)
    for result in (full, early):
        found = result.artifacts["norm"]
        judged = inside | far
        assert torch.equal(result.success[judged], (found <= radius)[judged])
        assert bool(result.success[inside].all()) and not bool(result.success[far].any())
        assert torch.allclose(l2(result.x_adv - x)[inside], found[inside], rtol=1e-12, atol=0)
        assert bool((l2(result.x_adv - x) <= radius * (1 + 1e-9)).all())
    assert bool((full.artifacts["norm"][far] <= exact[far] * 1.02).all())  # the search went past the radius
    assert torch.equal(full.backward_counts, torch.full((12,), 150))
    assert bool((early.backward_counts[inside] < 150).all()) and bool((early.backward_counts[far] == 150).all())


# ------------------------------------------------------------------------------------------ independence


def test_a_batch_gives_what_its_slices_and_a_shuffle_give():
    model, _ = random_linear(4, seed=16, one_at_a_time=True)
    x, y = inputs(model, 6, seed=17)
    y = y.clone()
    y[4] = (y[4] + 1) % 4
    whole = run(model, x, y, steps=20)
    order = torch.tensor([4, 1, 5, 0, 3, 2])
    parts = [(run(model, x[order], y[order], steps=20), order)]
    parts += [(run(model, x[s], y[s], steps=20), torch.arange(6)[s]) for s in (slice(0, 1), slice(1, 6))]
    for other, rows in parts:
        assert torch.equal(other.x_adv, whole.x_adv[rows])
        assert torch.equal(other.artifacts["norm"], whole.artifacts["norm"][rows])
        assert torch.equal(other.backward_counts, whole.backward_counts[rows])
