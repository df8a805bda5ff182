"""fab: targeted Fast Adaptive Boundary against closed forms on linear models, its box-constrained projection, pass
counts, budget, early stop, restarts and per-sample independence.

On a linear model z = W x + b whose box never binds, the smallest perturbation in norm p that moves x from class y
across the boundary with class t has norm |z_y - z_t| / ||w_y - w_t||_q (q the dual norm of p), and the smallest
adversarial perturbation overall is the minimum over t. FAB's linearization is then exact: its first step lands
eta = 1.05 beyond the boundary, the backward step (beta = 0.9) and the pull towards the input's projection bring it
to within 0.6% of the boundary by the second step (the fixed point of those steps lies 0.84% beyond it), so a few
steps reach the closed form within 1%, and no adversarial point lies below it. With a binding box the minimum is
that of min ||delta|| s.t. w . delta >= c inside the box, found here by bisection on the multiplier. The models
compute in float64 so the boundary is crisp.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advkit.constraints import Box, LinfBall
from advkit.models import ModelAdapter
from advkit.plugins.builtin.fab import FAB, project_hyperplane_box
from advkit.plugins.builtin.fmn import lp_norm
from advkit.runner import run_attack
from advkit.testing import check_attack
from tests.conftest import OneAtATime

pytestmark = pytest.mark.usefixtures("one_thread")

D = 20
BOUND = 5.0  # inputs lie in [-1, 1] and the optimal perturbations are far shorter than 4: the box never binds
DUAL = {"linf": 1, "l2": 2, "l1": float("inf")}
NORMS = ["linf", "l2", "l1"]


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


def run(model, x, y, **kw):
    constraint = kw.pop("constraint", Box(-BOUND, BOUND))
    return run_attack(model, "fab", x, y, constraint=constraint, **kw)


# ------------------------------------------------------------------------------------------ the projection


def reference_projection(w, c, low, high, norm):
    """Independent solutions: bisection on the multiplier (L-inf, L2), the greedy order one row at a time (L1)."""
    sign = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w, c = w * sign.unsqueeze(1), c.abs()
    room = torch.where(w > 0, high, -low)
    mag = w.abs()
    if norm == "l1":
        out = torch.zeros_like(w)
        for i in range(w.shape[0]):
            left = float(c[i])
            for j in sorted(range(w.shape[1]), key=lambda j: -float(mag[i, j])):
                if left <= 0 or mag[i, j] == 0:
                    break
                move = min(float(room[i, j]), left / float(mag[i, j]))
                out[i, j] = move * float(w[i, j].sign())
                left -= move * float(mag[i, j])
        return out

    def moved(lam):
        scale = lam.unsqueeze(1) * (mag if norm == "l2" else torch.ones_like(mag))
        return torch.minimum(scale, room) * w.sign()

    lo, hi = torch.zeros_like(c), torch.full_like(c, 1e6)
    for _ in range(200):
        mid = (lo + hi) / 2
        short = (w * moved(mid)).sum(1) < c
        lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
    return moved(hi)


@pytest.mark.parametrize("norm", NORMS)
def test_the_projection_is_the_smallest_move_onto_the_hyperplane_in_the_box(norm):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 12, generator=g, dtype=torch.float64)
    w[:5, :4] = 0  # some coordinates the hyperplane does not see
    c = torch.randn(40, generator=g, dtype=torch.float64) * 2
    c[5] = 0.0
    low = -torch.rand(40, 12, generator=g, dtype=torch.float64)
    high = torch.rand(40, 12, generator=g, dtype=torch.float64)
    low[6:9], high[6:9] = low[6:9] * 0.05, high[6:9] * 0.05  # tight boxes: the hyperplane out of reach
    delta = project_hyperplane_box(w, c, low, high, norm)
    expected = reference_projection(w, c, low, high, norm)
    assert bool((delta >= low - 1e-12).all()) and bool((delta <= high + 1e-12).all())
    room = torch.where(w * c.sign().unsqueeze(1) > 0, high, -low)
    reachable = (w.abs() * room).sum(1) > c.abs()
    assert int((~reachable).sum()) >= 3 and int(reachable.sum()) >= 30
    assert torch.allclose((w * delta).sum(1)[reachable], c[reachable], atol=1e-10)  # on the hyperplane
    assert torch.allclose(lp_norm(delta, norm), lp_norm(expected, norm), atol=1e-8)  # of the smallest norm
    assert torch.allclose(delta, expected, atol=1e-6)
    assert float(delta[5].abs().max()) == 0.0 and bool((delta[:5, :4] == 0).all())


# ------------------------------------------------------------------------------------------ closed forms


def nearest_move(normal: torch.Tensor, distance: torch.Tensor, norm: str) -> torch.Tensor:
    """The shortest move in ``norm`` of length ``distance`` along which normal . move = distance ||normal||_dual."""
    if norm == "l2":
        return distance.unsqueeze(1) * normal / normal.norm(dim=1, keepdim=True)
    if norm == "linf":
        return distance.unsqueeze(1) * normal.sign()
    top = normal.abs().argmax(1, keepdim=True)
    return torch.zeros_like(normal).scatter(1, top, distance.unsqueeze(1) * normal.gather(1, top).sign())


@pytest.mark.parametrize("norm", NORMS)
def test_targeted_reaches_the_targets_boundary_in_a_few_steps(norm):
    """Targeted at the third class: where the nearest point of the target's boundary with y is already classified
    as the target, that distance is reached within 1% in 2 steps; it is a lower bound everywhere. (Where a third
    class wins beyond that boundary, FAB-T following z_t - z_y may never reach the target.)"""
    model, weight = random_linear(4, seed=4, scale=3.0)
    x, y = inputs(model, 32, seed=5)
    z = model.predict(x)
    target = z.scatter(1, y.view(-1, 1), float("-inf")).argsort(1, descending=True)[:, 1]
    bound = distances(model, weight, x, y, norm).gather(1, target.view(-1, 1)).squeeze(1)
    exact = model.predict(x + nearest_move(weight[target] - weight[y], bound, norm) * (1 + 1e-9)).argmax(1) == target
    assert int(exact.sum()) >= 8
    fast = run(model, x, y, norm=norm, target=target, steps=2)
    assert bool(fast.success[exact].all()) and torch.equal(fast.pred[fast.success], target[fast.success])
    assert bool(torch.isinf(fast.artifacts["norm"][~fast.success]).all())  # blocked by a third class: inf, x
    assert torch.equal(fast.x_adv[~fast.success], x[~fast.success])
    ratio = fast.artifacts["norm"] / bound
    assert float(ratio.min()) >= 1 - 1e-9  # no adversarial point is closer than the boundary
    assert float(ratio[exact].max()) <= 1.01, ratio[exact]


@pytest.mark.parametrize("norm", NORMS)
def test_untargeted_over_every_other_class_reaches_the_nearest_boundary(norm):
    k = 5
    model, weight = random_linear(k, seed=2)
    x, y = inputs(model, 32, seed=3)
    per_class = distances(model, weight, x, y, norm)
    exact = per_class.amin(1)
    one = run(model, x, y, norm=norm, top_k=k - 1, steps=1)  # one step: the projection of x, overshot by eta
    assert torch.allclose(one.artifacts["norm"], 1.05 * exact, rtol=1e-9)
    result = run(model, x, y, norm=norm, top_k=k - 1, steps=2)
    ratio = result.artifacts["norm"] / exact
    assert bool(result.success.all())
    assert float(ratio.min()) >= 1 - 1e-9 and float(ratio.max()) <= 1.01, ratio
    # only the top-logit class attacked: its own boundary's distance, which is not always the nearest one
    top = model.predict(x).scatter(1, y.view(-1, 1), float("-inf")).argmax(1)
    first = run(model, x, y, norm=norm, top_k=1, steps=2)
    ratio = first.artifacts["norm"] / per_class.gather(1, top.view(-1, 1)).squeeze(1)
    assert float(ratio.min()) >= 1 - 1e-9 and float(ratio.max()) <= 1.01
    assert bool((first.artifacts["norm"] > exact * 1.02).any())


def box_constrained_distance(w, c, room, norm):
    """min ||delta|| s.t. w . delta >= c, 0 <= sign(w) delta <= room (c > 0): bisection on the multiplier."""
    mag = w.abs()

    def reach(lam):
        return torch.minimum(lam.unsqueeze(1) * (mag if norm == "l2" else 1.0), room)

    lo, hi = torch.zeros_like(c), torch.full_like(c, 1e6)
    for _ in range(200):
        mid = (lo + hi) / 2
        short = (mag * reach(mid)).sum(1) < c
        lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
    return lp_norm(reach(hi), norm)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_binding_box_keeps_the_points_inside_and_adversarial_at_the_box_constrained_minimum(norm):
    """Inputs near the edges of a tight box: the unconstrained nearest boundary point lies outside it; FAB's
    projections are onto hyperplane and box, so it still reaches the box-constrained minimum."""
    g = torch.Generator().manual_seed(21)
    weight = torch.randn(2, D, generator=g, dtype=torch.float64)
    weight[1, :5] += torch.tensor([6.0, -6.0, 5.0, -5.0, 4.0], dtype=torch.float64)  # a few heavy coordinates
    bias = torch.tensor([8.0, 0.0], dtype=torch.float64)
    bound = 1.0
    model = linear(weight, bias, bound=bound)
    x, y = inputs(model, 40, seed=22)
    keep = y == 0
    x, y = x[keep], y[keep]
    w = weight[1] - weight[0]
    c = -(model.predict(x) @ torch.tensor([-1.0, 1.0], dtype=torch.float64))  # z_0 - z_1 > 0
    room = torch.where(w > 0, bound - x, x + bound)
    free = c / torch.linalg.vector_norm(w, ord=DUAL[norm])
    boxed = box_constrained_distance(w.expand_as(x), c, room, norm)
    feasible = (w.abs() * room).sum(1) > c * 1.001
    binding = feasible & (boxed > free * 1.01)
    assert int(binding.sum()) >= 4
    result = run_attack(model, "fab", x, y, constraint=Box(-bound, bound), norm=norm, steps=20)
    assert float(result.x_adv.min()) >= -bound and float(result.x_adv.max()) <= bound
    assert bool(result.success[feasible].all())
    ratio = result.artifacts["norm"][feasible] / boxed[feasible]
    assert float(ratio.min()) >= 1 - 1e-9 and float(ratio.max()) <= 1.01, ratio


class Affine(nn.Module):
    """u -> scale * u + shift: the same classifier read in other units."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, u):
        return u * self.scale + self.shift


def test_norms_are_in_the_models_units():
    """The same (nonlinear) classifier read on [0, 255] gives the same norms, in those units."""
    mlp = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 3)).double().eval()
    g = torch.Generator().manual_seed(19)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    wide = ModelAdapter(mlp, name="mlp", bounds=(-BOUND, BOUND), input_shape=(D,), class_names=list("abc"))
    pixels = ModelAdapter(
        nn.Sequential(Affine(2 * BOUND / 255, -BOUND), mlp), name="pixels", bounds=(0.0, 255.0), input_shape=(D,),
        class_names=list("abc"),
    )  # fmt: skip
    x, y = inputs(wide, 8, seed=20)
    a = run(wide, x, y, steps=15)
    b = run_attack(pixels, "fab", (x + BOUND) * 255 / (2 * BOUND), y, constraint=Box(0.0, 255.0), steps=15)
    assert torch.equal(a.success, b.success) and bool(a.success.all())
    assert torch.allclose(b.artifacts["norm"] * 2 * BOUND / 255, a.artifacts["norm"], rtol=1e-6)


# ------------------------------------------------------------------------------------------ what comes back


@pytest.mark.parametrize("norm", NORMS)
def test_returned_points_are_adversarial_with_the_reported_norm(norm):
    model, _ = random_linear(4, seed=8)
    x, y = inputs(model, 8, seed=9)
    y = y.clone()
    y[0] = (y[0] + 1) % 4  # misclassified already: norm 0, the clean input, no backward pass
    result = run(model, x, y, norm=norm, steps=10)
    found = result.artifacts["norm"]
    assert found.shape == (8,) and bool(torch.isfinite(found).all())
    assert float(found[0]) == 0 and torch.equal(result.x_adv[0], x[0]) and int(result.backward_counts[0]) == 0
    assert bool(result.success.all())
    assert torch.allclose(lp_norm(result.x_adv - x, norm), found, rtol=1e-12, atol=0)


def test_no_adversarial_gives_the_clean_input_and_inf():
    """A class that wins everywhere in the box cannot be left: the clean input comes back, norm inf."""
    model, _ = random_linear(3, seed=10)
    with torch.no_grad():
        model.module.bias[1] = 1e3
    x, y = inputs(model, 4, seed=11)
    assert bool((y == 1).all())
    result = run(model, x, y, steps=10, restarts=1)
    assert bool(torch.isinf(result.artifacts["norm"]).all())
    assert torch.equal(result.x_adv, x) and not bool(result.success.any())


# ------------------------------------------------------------------------------------------ passes and budget


def test_pass_counts_are_exact():
    """Untargeted: one counted forward pass ranks the classes (and stops a misclassified sample), then one forward
    and one backward pass per step, target and restart. Targeted: one of each per step."""
    model, _ = random_linear(4, seed=12)
    x, y = inputs(model, 6, seed=13)
    y = y.clone()
    y[2] = (y[2] + 1) % 4
    result = run(model, x, y, steps=5, top_k=2, restarts=1)
    expected = torch.tensor([20, 20, 0, 20, 20, 20])
    assert torch.equal(result.backward_counts, expected)
    # per sample: the ranking, then 4 runs of 5 steps and a check of the last point; the misclassified one: 1
    assert result.backward_passes == 100 and result.forward_passes == 5 * (1 + 4 * 6) + 1
    target = (y + 1) % 4
    target[2] = (y[2] - 1) % 4  # its clean prediction: reached at the first step, which stops it
    targeted = run(model, x, y, steps=5, target=target, top_k=3)  # top_k plays no part with given targets
    assert torch.equal(targeted.backward_counts, torch.tensor([5, 5, 1, 5, 5, 5]))
    assert targeted.backward_passes == 26 and targeted.forward_passes == 5 * 6 + 1


@pytest.mark.parametrize("budget, spent, runs", [(7, 7, 2), (40, 30, 6)])
def test_the_budget_caps_every_sample_over_all_targets_and_restarts(budget, spent, runs):
    model, _ = random_linear(4, seed=12)
    x, y = inputs(model, 6, seed=13)
    result = run(model, x, y, steps=5, top_k=3, restarts=1, budget=budget)
    assert torch.equal(result.backward_counts, torch.full((6,), spent))
    assert result.forward_passes == 6 * (1 + spent + runs)  # the ranking, the steps, each run's last check
    assert bool(result.success.all()) and bool(torch.isfinite(result.artifacts["norm"]).all())


def test_early_stop_and_the_threat_models_radius():
    """Within the radius the best point comes back unprojected and adversarial; with early_stop such samples stop
    early (after the first target). Beyond it the search goes on (the radius does not bound it)."""
    model, weight = random_linear(3, seed=14)
    x, y = inputs(model, 16, seed=15)
    exact = distances(model, weight, x, y, "linf").amin(1)
    radius = float(exact.median())
    inside, far = exact < radius * 0.98, exact > radius * 1.02
    assert int(inside.sum()) >= 3 and int(far.sum()) >= 3
    threat = LinfBall(radius) & Box(-BOUND, BOUND)
    full = run(model, x, y, steps=10, top_k=2, constraint=threat)
    early = run(model, x, y, steps=10, top_k=2, constraint=threat, early_stop=True)
    assert torch.equal(full.success, early.success)
    for result in (full, early):
        found = result.artifacts["norm"]
        judged = inside | far
        assert torch.equal(result.success[judged], (found <= radius)[judged])
        assert bool(result.success[inside].all()) and not bool(result.success[far].any())
        assert torch.allclose(lp_norm(result.x_adv - x, "linf")[inside], found[inside], rtol=1e-12, atol=0)
        assert bool((lp_norm(result.x_adv - x, "linf") <= radius * (1 + 1e-9)).all())
    assert bool((full.artifacts["norm"][far] <= exact[far] * 1.01).all())  # the search went past the radius
    assert torch.equal(full.backward_counts, torch.full((16,), 20))
    assert bool((early.backward_counts[inside] < 20).all()) and bool((early.backward_counts[far] == 20).all())


# ------------------------------------------------------------------------------------------ independence


@pytest.mark.parametrize("norm", NORMS)
def test_a_batch_gives_what_its_slices_and_a_shuffle_give(norm):
    model, _ = random_linear(4, seed=16, one_at_a_time=True)
    x, y = inputs(model, 6, seed=17)
    y = y.clone()
    y[4] = (y[4] + 1) % 4  # one sample that stops at once
    kw = dict(norm=norm, steps=6, restarts=1, seed=3)
    whole = run(model, x, y, **kw)
    order = torch.tensor([4, 1, 5, 0, 3, 2])
    parts = [(run(model, x[order], y[order], **kw), order)]
    parts += [(run(model, x[s], y[s], **kw), torch.arange(6)[s]) for s in (slice(0, 1), slice(1, 6))]
    for other, rows in parts:
        assert torch.equal(other.x_adv, whole.x_adv[rows])
        assert torch.equal(other.artifacts["norm"], whole.artifacts["norm"][rows])
        assert torch.equal(other.backward_counts, whole.backward_counts[rows])
    again = run(model, x, y, **kw)
    assert torch.equal(again.x_adv, whole.x_adv)


def test_restarts_start_around_the_input_and_never_do_worse():
    """On a nonlinear model restarts from random points can only lower each sample's best norm."""
    mlp = nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, 5)).double().eval()
    g = torch.Generator().manual_seed(23)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    model = ModelAdapter(mlp, name="mlp", bounds=(-BOUND, BOUND), input_shape=(D,), class_names=list("abcde"))
    x, y = inputs(model, 12, seed=24)
    one = run(model, x, y, steps=20)
    more = run(model, x, y, steps=20, restarts=2)
    assert bool((more.artifacts["norm"] <= one.artifacts["norm"]).all())
    assert torch.equal(more.backward_counts, 3 * one.backward_counts)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_the_conformance_checks_hold_for_every_norm(norm):
    check_attack(FAB(norm=norm, steps=4))


def test_targets_are_optional_and_honoured():
    assert not FAB.targeted and FAB.accepts_target and not FAB().requires_target
