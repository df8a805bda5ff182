"""fmn: the Fast Minimum-Norm attack against closed forms on linear models, its pass counts, budget, early stop
and per-sample independence.

On a linear model z = W x + b whose box never binds, the smallest perturbation in norm p that moves x from class y
across the boundary with class j has norm |z_y - z_j| / ||w_y - w_j||_q (q the dual norm of p), and the smallest
adversarial perturbation overall is the minimum over j: no adversarial point can be closer, and FMN, which
follows the logit difference with the runner-up class, should reach it where the runner-up's boundary is the
nearest one. The models compute in float64 so the boundary is crisp.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advkit.constraints import Box, L2Ball, LinfBall
from advkit.errors import ParameterError
from advkit.models import ModelAdapter
from advkit.plugins.builtin.fmn import FMN, keep_largest, lp_norm, project_l1_ball
from advkit.runner import run_attack
from advkit.testing import check_attack
from tests.conftest import OneAtATime

pytestmark = pytest.mark.usefixtures("one_thread")

D = 20
BOUND = 5.0  # inputs lie in [-1, 1] and the optimal perturbations are far shorter than 4: the box never binds
DUAL = {"linf": 1, "l2": 2, "l1": float("inf")}


def linear(weight: torch.Tensor, bias: torch.Tensor, *, bound: float = BOUND, one_at_a_time: bool = False):
    k, d = weight.shape
    layer = nn.Linear(d, k).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    layer.eval()
    module = OneAtATime(layer) if one_at_a_time else layer
    return ModelAdapter(
        module, name="linear", bounds=(-bound, bound), input_shape=(d,), class_names=[str(i) for i in range(k)]
    )


def random_linear(k: int, seed: int, scale: float = 1.0, **kw):
    g = torch.Generator().manual_seed(seed)
    weight = scale * torch.randn(k, D, generator=g, dtype=torch.float64)
    bias = scale * torch.randn(k, generator=g, dtype=torch.float64)
    return linear(weight, bias, **kw), weight


def inputs(model: ModelAdapter, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, D, generator=g, dtype=torch.float64) * 2 - 1
    return x, model.predict(x).argmax(1)


def distances(model: ModelAdapter, weight: torch.Tensor, x, y, norm: str) -> torch.Tensor:
    """(N, K): the closed-form distance in ``norm`` from each x to its boundary with each class (inf at y)."""
    z = model.predict(x)
    gaps = z.gather(1, y.view(-1, 1)) - z
    normals = weight[y].unsqueeze(1) - weight.unsqueeze(0)
    out = gaps / torch.linalg.vector_norm(normals, ord=DUAL[norm], dim=2)
    return out.scatter(1, y.view(-1, 1), float("inf"))


def runner_up(model: ModelAdapter, x, y) -> torch.Tensor:
    return model.predict(x).scatter(1, y.view(-1, 1), float("-inf")).argmax(1)


def run(model, x, y, **kw):
    constraint = kw.pop("constraint", Box(-BOUND, BOUND))
    return run_attack(model, "fmn", x, y, constraint=constraint, **kw)


# ------------------------------------------------------------------------------------------ closed forms


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_two_classes_reach_the_closed_form_distance(norm):
    model, weight = random_linear(2, seed=0)
    x, y = inputs(model, 16, seed=1)
    exact = distances(model, weight, x, y, norm).amin(1)
    result = run(model, x, y, norm=norm)
    ratio = result.artifacts["norm"] / exact
    assert bool(result.success.all())
    assert float(ratio.min()) >= 1 - 1e-9  # no adversarial point is closer than the boundary
    assert float(ratio.max()) <= 1.01, ratio


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_many_classes_never_below_the_nearest_boundary_and_on_it_when_it_is_the_runner_ups(norm):
    model, weight = random_linear(5, seed=2)
    x, y = inputs(model, 32, seed=3)
    exact, nearest = distances(model, weight, x, y, norm).min(1)
    result = run(model, x, y, norm=norm)
    ratio = result.artifacts["norm"] / exact
    assert bool(result.success.all())
    assert float(ratio.min()) >= 1 - 1e-9
    follows = nearest == runner_up(model, x, y)
    assert int(follows.sum()) >= 16
    assert float(ratio[follows].max()) <= 1.01, ratio[follows]


def test_targeted_reaches_the_targets_boundary():
    """Targeted at a class other than the runner-up: where the nearest point of the target's boundary with y is
    already classified as the target, that distance is the minimum; it is a lower bound everywhere."""
    model, weight = random_linear(4, seed=4, scale=3.0)
    x, y = inputs(model, 32, seed=5)
    z = model.predict(x)
    target = z.scatter(1, y.view(-1, 1), float("-inf")).argsort(1, descending=True)[:, 1]  # the third class
    bound = distances(model, weight, x, y, "l2").gather(1, target.view(-1, 1)).squeeze(1)
    normal = weight[target] - weight[y]
    nearest = x + (bound / normal.norm(dim=1)).unsqueeze(1) * normal * (1 + 1e-9)
    exact = model.predict(nearest).argmax(1) == target
    result = run(model, x, y, norm="l2", target=target, steps=200)
    ratio = result.artifacts["norm"] / bound
    assert bool(result.success.all()) and torch.equal(result.pred, target)
    assert float(ratio.min()) >= 1 - 1e-9
    assert int(exact.sum()) >= 8
    assert float(ratio[exact].max()) <= 1.01, ratio[exact]


def test_l0_changes_as_few_elements_as_the_greedy_optimum():
    """Two classes, a few heavy weights: the fewest elements that cross the boundary come greedily from the largest
    |w_i| x (room in the box along sign(w_i)); FMN-L0 finds an adversarial with that count or one more."""
    g = torch.Generator().manual_seed(6)
    normal = 0.02 * torch.randn(D, generator=g, dtype=torch.float64)
    normal[:5] = torch.tensor([1.0, -0.9, 0.8, -0.7, 0.6], dtype=torch.float64)
    weight = torch.stack([torch.zeros(D, dtype=torch.float64), normal])
    model = linear(weight, torch.tensor([3.0, 0.0], dtype=torch.float64), bound=2.0)
    x, y = inputs(model, 12, seed=7)
    x, y = x[y == 0], y[y == 0]
    margin = -(x @ normal)
    room = torch.where(normal > 0, 2.0 - x, x + 2.0)
    gains = (normal.abs() * room).sort(dim=1, descending=True).values.cumsum(1)
    fewest = (gains < (margin + 3.0).unsqueeze(1)).sum(1) + 1
    assert int(fewest.max()) >= 2  # not a one-element case everywhere
    result = run_attack(model, "fmn", x, y, constraint=Box(-2.0, 2.0), norm="l0")
    found = result.artifacts["norm"]
    assert bool(result.success.all())
    assert bool((found >= fewest).all()) and bool((found <= fewest + 1).all()), (found, fewest)
    assert torch.equal(lp_norm(result.x_adv - x, "l0"), found)


class Affine(nn.Module):
    """u -> scale * u + shift: the same classifier read in other units."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, u):
        return u * self.scale + self.shift


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_steps_are_in_units_of_the_range(norm):
    """The same (nonlinear) classifier read on [0, 1] (u = (x + 5) / 10) gives the same norms, in those units (eps
    follows the same decisions; the directions may drift apart by rounding):
    the step lengths are multiples of the range width."""
    mlp = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 3)).double().eval()
    g = torch.Generator().manual_seed(19)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    wide = ModelAdapter(mlp, name="mlp", bounds=(-BOUND, BOUND), input_shape=(D,), class_names=list("abc"))
    unit = ModelAdapter(
        nn.Sequential(Affine(2 * BOUND, -BOUND), mlp), name="unit", bounds=(0.0, 1.0), input_shape=(D,),
        class_names=list("abc"),
    )  # fmt: skip
    x, y = inputs(wide, 8, seed=20)
    a = run(wide, x, y, norm=norm, steps=40)
    b = run_attack(unit, "fmn", (x + BOUND) / (2 * BOUND), y, constraint=Box(0.0, 1.0), norm=norm, steps=40)
    assert torch.equal(a.success, b.success) and bool(a.success.all())
    assert torch.allclose(b.artifacts["norm"] * 2 * BOUND, a.artifacts["norm"], rtol=1e-6)


# ------------------------------------------------------------------------------------------ what comes back


@pytest.mark.parametrize("norm", ["linf", "l2", "l1", "l0"])
def test_returned_points_are_adversarial_with_the_reported_norm(norm):
    model, _ = random_linear(4, seed=8)
    x, y = inputs(model, 8, seed=9)
    y = y.clone()
    y[0] = (y[0] + 1) % 4  # misclassified already: norm 0, the clean input
    result = run(model, x, y, norm=norm, steps=30)
    found = result.artifacts["norm"]
    assert found.shape == (8,) and bool(torch.isfinite(found).all())
    assert float(found[0]) == 0 and torch.equal(result.x_adv[0], x[0])
    assert bool(result.success.all())
    assert torch.allclose(lp_norm(result.x_adv - x, norm), found, rtol=1e-12, atol=0)


def test_no_adversarial_gives_the_clean_input_and_inf():
    """A class that wins everywhere in the box cannot be left: the clean input comes back, norm inf."""
    model, _ = random_linear(3, seed=10)
    with torch.no_grad():
        model.module.bias[1] = 1e3
    x, y = inputs(model, 4, seed=11)
    assert bool((y == 1).all())
    result = run(model, x, y, norm="l2", steps=20)
    assert bool(torch.isinf(result.artifacts["norm"]).all())
    assert torch.equal(result.x_adv, x) and not bool(result.success.any())


# ------------------------------------------------------------------------------------------ passes and budget


def test_pass_counts_are_exact():
    """One forward and one backward pass per stepping sample and step; a misclassified sample stops at once."""
    model, _ = random_linear(3, seed=12)
    x, y = inputs(model, 6, seed=13)
    y = y.clone()
    y[2] = (y[2] + 1) % 3
    result = run(model, x, y, norm="linf", steps=25)
    expected = torch.tensor([25, 25, 1, 25, 25, 25])
    assert torch.equal(result.backward_counts, expected)
    assert result.backward_passes == int(expected.sum()) == result.forward_passes


@pytest.mark.parametrize("budget, spent", [(7, 7), (40, 25)])
def test_the_budget_caps_every_sample(budget, spent):
    model, _ = random_linear(3, seed=12)
    x, y = inputs(model, 6, seed=13)
    result = run(model, x, y, norm="l2", steps=25, budget=budget)
    assert torch.equal(result.backward_counts, torch.full((6,), spent))
    assert bool(result.success.all()) and bool(torch.isfinite(result.artifacts["norm"]).all())


@pytest.mark.parametrize("norm, ball", [("l2", L2Ball), ("linf", LinfBall)])
def test_early_stop_and_the_threat_models_radius(norm, ball):
    """Within the radius the best point comes back unprojected and adversarial; with early_stop such samples stop
    early. Beyond it the search still goes on (the radius does not bound it) and the runner projects the result."""
    model, weight = random_linear(2, seed=14)
    x, y = inputs(model, 12, seed=15)
    exact = distances(model, weight, x, y, norm).amin(1)
    radius = float(exact.median())
    inside = exact < radius * 0.98
    far = exact > radius * 1.02
    assert int(inside.sum()) >= 3 and int(far.sum()) >= 3
    full = run(model, x, y, norm=norm, steps=60, constraint=ball(radius) & Box(-BOUND, BOUND))
    early = run(model, x, y, norm=norm, steps=60, constraint=ball(radius) & Box(-BOUND, BOUND), early_stop=True)
    for result in (full, early):
        found = result.artifacts["norm"]
        judged = inside | far
        assert torch.equal(result.success[judged], (found <= radius)[judged])
        assert bool(result.success[inside].all()) and not bool(result.success[far].any())
        assert torch.allclose(lp_norm(result.x_adv - x, norm)[inside], found[inside], rtol=1e-12, atol=0)
        assert bool((lp_norm(result.x_adv - x, norm) <= radius * (1 + 1e-9)).all())
    assert bool((full.artifacts["norm"][far] <= exact[far] * 1.01).all())  # the search went past the radius
    assert torch.equal(full.backward_counts, torch.full((12,), 60))
    assert bool((early.backward_counts[inside] < 60).all()) and bool((early.backward_counts[far] == 60).all())


# ------------------------------------------------------------------------------------------ independence


@pytest.mark.parametrize("norm", ["linf", "l2", "l1", "l0"])
def test_a_batch_gives_what_its_slices_and_a_shuffle_give(norm):
    model, _ = random_linear(4, seed=16, one_at_a_time=True)
    x, y = inputs(model, 6, seed=17)
    y = y.clone()
    y[4] = (y[4] + 1) % 4  # one sample that stops at once
    whole = run(model, x, y, norm=norm, steps=20)
    order = torch.tensor([4, 1, 5, 0, 3, 2])
    parts = [(run(model, x[order], y[order], norm=norm, steps=20), order)]
    parts += [(run(model, x[s], y[s], norm=norm, steps=20), torch.arange(6)[s]) for s in (slice(0, 1), slice(1, 6))]
    for other, rows in parts:
        assert torch.equal(other.x_adv, whole.x_adv[rows])
        assert torch.equal(other.artifacts["norm"], whole.artifacts["norm"][rows])
        assert torch.equal(other.backward_counts, whole.backward_counts[rows])


@pytest.mark.parametrize("norm", ["linf", "l1", "l0"])
def test_the_conformance_checks_hold_for_every_norm(norm):
    check_attack(FMN(norm=norm, steps=4))


# ------------------------------------------------------------------------------------------ pieces


def test_l1_projection_is_the_euclidean_projection():
    g = torch.Generator().manual_seed(18)
    v = torch.randn(5, 30, generator=g, dtype=torch.float64)
    eps = torch.tensor([0.0, 0.5, 2.0, 10.0, 100.0], dtype=torch.float64)
    p = project_l1_ball(v, eps)
    assert torch.allclose(p.abs().sum(1), torch.minimum(eps, v.abs().sum(1)), atol=1e-12)
    assert torch.equal(p[4], v[4])  # already inside
    # optimality (KKT): on the support, |v - p| is one common threshold; off it, |v| is at most that threshold
    for row in range(1, 4):
        moved = (v[row] - p[row]).abs()
        support = p[row] != 0
        theta = moved[support]
        assert torch.allclose(theta, theta[0].expand_as(theta), atol=1e-12)
        assert bool((v[row][~support].abs() <= theta[0] + 1e-12).all())
        assert bool((torch.sign(p[row][support]) == torch.sign(v[row][support])).all())


def test_keep_largest_keeps_exactly_k_elements():
    v = torch.tensor([[3.0, -1.0, 2.0, -5.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.equal(keep_largest(v, torch.tensor([2, 3])), torch.tensor([[3.0, 0, 0, -5.0], [1.0, 1, 1, 0]]))


def test_unknown_norms_are_refused():
    with pytest.raises(ParameterError, match="norm"):
        FMN(norm="l3")
