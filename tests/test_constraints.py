"""Property-based tests for advkit.constraints: feasibility, idempotence, optimality, bookkeeping."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from advkit.constraints import (
    CONSTRAINT_TYPES,
    Binary,
    Box,
    Constraint,
    Intersection,
    Interval,
    L2Ball,
    LinfBall,
    NonNegative,
    build_constraints,
    constraint_from_dict,
)

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TINY = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONVEX = ["linf", "l2", "nonneg", "box", "linf&box", "linf&nonneg&box", "l2&box", "l2&linf&nonneg&box"]
BINARY = ["binary", "binary&nonneg&box", "binary&l2&box", "binary&linf&nonneg&box"]
ALL = CONVEX + BINARY


def make(spec: str, *, eps: float | torch.Tensor, bounds: tuple[float, float], value: float) -> Constraint:
    """Build e.g. 'l2&linf&nonneg&box' with the given parameters (a single name gives the bare set)."""
    factories = {
        "linf": lambda: LinfBall(eps),
        "l2": lambda: L2Ball(eps),
        "nonneg": lambda: NonNegative(),
        "box": lambda: Box(*bounds),
        "binary": lambda: Binary(value),
    }
    parts = [factories[name]() for name in spec.split("&")]
    out = parts[0]
    for part in parts[1:]:
        out = out & part
    return out


@st.composite
def problems(draw, max_side: int = 6, min_side: int = 3, per_sample_eps: bool = True):
    """A batch x inside a box, a perturbation delta (any size), eps (float or per-sample) and a binary value."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n = draw(st.integers(1, 4))
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    bounds = draw(st.sampled_from([(-1.0, 1.0), (0.0, 1.0)]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    low, high = bounds
    x = low + (high - low) * torch.rand(n, 1, h, w, generator=g, dtype=dtype)
    # some pixels exactly at the bounds
    edge = torch.rand(n, 1, h, w, generator=g, dtype=dtype)
    x = torch.where(edge < 0.1, torch.full_like(x, low), torch.where(edge > 0.9, torch.full_like(x, high), x))
    scale = draw(st.sampled_from([0.0, 1e-3, 0.05, 0.5, 1.0, 3.0, 1e3, 1e8]))
    delta = scale * torch.randn(n, 1, h, w, generator=g, dtype=dtype)
    value = draw(st.floats(0.05, 1.0)) * draw(st.sampled_from([1.0, -1.0]))
    kind = draw(st.sampled_from(["uniform", "multiple", "per-sample"] if per_sample_eps else ["uniform", "multiple"]))
    if kind == "uniform":
        eps: float | torch.Tensor = draw(st.floats(0.0, 2.0))
    elif kind == "multiple":  # eps exactly sqrt(k) |value|: the binary count boundary
        eps = abs(value) * math.sqrt(draw(st.integers(0, h * w)))
    else:
        eps = torch.tensor(draw(st.lists(st.floats(0.0, 2.0), min_size=n, max_size=n)), dtype=dtype)
    return x, delta, eps, bounds, value


def radius_b(eps: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(eps, torch.Tensor):
        return eps.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
    return eps


def interval_by_hand(spec: str, x: torch.Tensor, eps, bounds) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = torch.full_like(x, -math.inf), torch.full_like(x, math.inf)
    names = spec.split("&")
    if "linf" in names:
        r = radius_b(eps, x)
        lo, hi = torch.maximum(lo, -r * torch.ones_like(x)), torch.minimum(hi, r * torch.ones_like(x))
    if "nonneg" in names:
        lo = lo.clamp_min(0)
    if "box" in names:
        lo, hi = torch.maximum(lo, bounds[0] - x), torch.minimum(hi, bounds[1] - x)
    return lo, hi


def assert_feasible_by_hand(
    spec: str, p: torch.Tensor, x: torch.Tensor, eps, bounds, value, atol: float = 1e-6
) -> None:
    names = spec.split("&")
    if "linf" in names:
        assert bool((p.abs() <= radius_b(eps, p) + atol).all())
    if "l2" in names:
        norms = p.flatten(1).norm(dim=1)
        r = eps.to(p.dtype) if isinstance(eps, torch.Tensor) else eps
        assert bool((norms <= r + atol).all()), (norms, r)
    if "nonneg" in names:
        assert bool((p >= -atol).all())
    if "box" in names:
        assert bool(((x + p) >= bounds[0] - atol).all()) and bool(((x + p) <= bounds[1] + atol).all())
    if "binary" in names:
        assert bool(((p.abs() <= atol) | ((p - value).abs() <= atol)).all())


# ----------------------------------------------------------------------------- feasibility and basics


@pytest.mark.parametrize("spec", ALL)
@FAST
@given(problem=problems())
def test_projection_feasible_idempotent_and_pure(spec, problem):
    x, delta, eps, bounds, value = problem
    c = make(spec, eps=eps, bounds=bounds, value=value)
    x0, d0 = x.clone(), delta.clone()
    p = c.project(delta, x)
    assert torch.equal(x, x0) and torch.equal(delta, d0), "inputs modified"
    assert p.shape == delta.shape and p.dtype == delta.dtype and p.device == delta.device
    assert bool(torch.isfinite(p).all())
    assert c.contains(p, x).dtype == torch.bool and c.contains(p, x).shape == (x.shape[0],)
    assert bool(c.contains(p, x).all())
    assert_feasible_by_hand(spec, p, x, eps, bounds, value)
    again = c.project(p, x)
    assert torch.allclose(again, p, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", ALL)
@FAST
@given(problem=problems(), seed=st.integers(0, 2**31 - 1))
def test_random_start_feasible_and_reproducible(spec, problem, seed):
    x, _, eps, bounds, value = problem
    c = make(spec, eps=eps, bounds=bounds, value=value)
    x0 = x.clone()
    a = c.random_start(x, torch.Generator().manual_seed(seed))
    b = c.random_start(x, torch.Generator().manual_seed(seed))
    assert torch.equal(x, x0)
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert bool(c.contains(a, x).all())
    assert_feasible_by_hand(spec, a, x, eps, bounds, value)
    assert bool(c.contains(c.random_start(x), x).all())  # no generator


def test_random_start_is_random_and_fills_the_set():
    x = torch.zeros(2, 1, 8, 8)
    c = LinfBall(0.5) & Box(-1, 1)
    a = c.random_start(x, torch.Generator().manual_seed(0))
    b = c.random_start(x, torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    assert a.abs().max() > 0.4 and a.min() < 0 < a.max()
    ball = L2Ball(2.0).random_start(torch.zeros(256, 3), torch.Generator().manual_seed(0))
    norms = ball.norm(dim=1)
    assert bool((norms <= 2.0 + 1e-6).all()) and float(norms.median()) > 1.2  # uniform: radius ~ U^(1/3)
    bits = Binary(-0.25).random_start(torch.zeros(4, 100), torch.Generator().manual_seed(0))
    frac = float((bits == -0.25).double().mean())
    assert 0.35 < frac < 0.65 and bool(((bits == 0) | (bits == -0.25)).all())
    nonneg = NonNegative().random_start(torch.zeros(3, 50), torch.Generator().manual_seed(0))
    assert bool((nonneg >= 0).all()) and float(nonneg.max()) > 0


# ----------------------------------------------------------------------------- optimality


def breakpoint_reference(z: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps) -> torch.Tensor:
    """Exact projection onto {lo <= d <= hi} ∩ {||d|| <= eps} (0 in [lo, hi]) in float64, sample by sample.

    KKT: d = clamp(s z, lo, hi) with s in (0, 1]. f(s) = ||d(s)||^2 = C + s^2 A between consecutive
    breakpoints (where an element hits its bound), so walk the sorted breakpoints and solve exactly.
    """
    out = []
    for i in range(z.shape[0]):
        zi, li, hi_ = (t.double().flatten().tolist() for t in (z[i], lo[i], hi[i]))
        r = float(eps[i]) if isinstance(eps, torch.Tensor) else float(eps)
        caps, breaks = [], []
        for zz, a, b in zip(zi, li, hi_):
            cap = b if zz > 0 else -a  # |d| saturates at cap once s |z| >= cap
            caps.append(cap)
            breaks.append(cap / abs(zz) if zz != 0 else math.inf)
        full = sum(min(abs(zz), c) ** 2 for zz, c in zip(zi, caps))
        if full <= r * r:
            s_star = 1.0
        else:
            order = sorted(range(len(zi)), key=lambda j: breaks[j])
            capped_sq, free_sq = 0.0, sum(zz * zz for zz in zi)
            s_prev, s_star = 0.0, None
            for j in order + [None]:
                s_next = breaks[j] if j is not None else math.inf
                if free_sq > 0:
                    s = math.sqrt(max(r * r - capped_sq, 0.0) / free_sq)
                    if s_prev <= s <= s_next:
                        s_star = s
                        break
                if j is None:
                    break
                capped_sq += caps[j] ** 2
                free_sq -= zi[j] ** 2
                s_prev = s_next
            assert s_star is not None
        d = torch.tensor(zi, dtype=torch.float64) * s_star
        out.append(torch.clamp(d, torch.tensor(li, dtype=torch.float64), torch.tensor(hi_, dtype=torch.float64)))
    return torch.stack(out).view(z.shape)


def assert_variational_inequality(delta, p, qs, tol):
    """<delta - p, q - p> <= tol * (1 + ||delta - p|| ||q - p||) for feasible q (p is the projection)."""
    d, pp = delta.double().flatten(1), p.double().flatten(1)
    for q in qs:
        qq = q.double().flatten(1)
        inner = ((d - pp) * (qq - pp)).sum(dim=1)
        scale = 1 + (d - pp).norm(dim=1) * (qq - pp).norm(dim=1)
        assert bool((inner <= tol * scale).all()), (inner, scale)


@pytest.mark.parametrize("spec", CONVEX)
@FAST
@given(problem=problems(max_side=4), seed=st.integers(0, 1000))
def test_convex_projection_is_nearest_point(spec, problem, seed):
    x, delta, eps, bounds, value = problem
    c = make(spec, eps=eps, bounds=bounds, value=value)
    p = c.project(delta, x)
    names = spec.split("&")
    lo, hi = interval_by_hand(spec, x, eps, bounds)
    if "l2" not in names:
        ref = torch.minimum(torch.maximum(delta, lo), hi)  # separable: per-element nearest point
        assert torch.allclose(p, ref, rtol=0, atol=1e-7)
    elif names == ["l2"]:
        norms = delta.flatten(1).norm(dim=1)
        factor = torch.where(norms > 0, (radius_b(eps, norms) / norms).clamp(max=1), torch.ones_like(norms))
        ref = delta * factor.view(-1, 1, 1, 1)
        assert torch.allclose(p, ref, rtol=1e-5, atol=1e-6)
    else:
        ref = breakpoint_reference(delta, lo, hi, eps)
        tol = 1e-5 if p.dtype == torch.float32 else 1e-10
        assert torch.allclose(p.double(), ref, rtol=0, atol=tol), (p - ref).abs().max()
    g = torch.Generator().manual_seed(seed)
    qs = [torch.zeros_like(x)] + [c.random_start(x, g) for _ in range(2)]
    qs += [c.project(100 * torch.randn(x.shape, generator=g, dtype=x.dtype), x) for _ in range(2)]
    assert_variational_inequality(delta, p, qs, 1e-5 if p.dtype == torch.float32 else 1e-10)


def binary_reference(delta, x, eps, bounds, value, spec) -> torch.Tensor:
    """Minimum distance from delta to the binary set (with the spec's extra parts), by enumerating all 2^n points."""
    n_el = delta[0].numel()
    names = spec.split("&")
    assignments = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n_el)), dtype=torch.float64)  # (2^n, n)
    points = assignments * value  # (2^n, n)
    d = delta.double().flatten(1)  # (N, n)
    feasible = torch.ones(delta.shape[0], points.shape[0], dtype=torch.bool)
    lo, hi = interval_by_hand(spec, x, eps, bounds)
    lo, hi = lo.flatten(1), hi.flatten(1)
    pts = points.to(x.dtype)  # bounds are compared in the data's dtype (value rounded like the output)
    ok_el = (pts[None] >= lo[:, None]) & (pts[None] <= hi[:, None])  # (N, 2^n, n)
    feasible &= ok_el.all(dim=2)
    if "l2" in names:
        r = (
            eps.double()
            if isinstance(eps, torch.Tensor)
            else torch.full((delta.shape[0],), float(eps), dtype=torch.float64)
        )
        k = torch.floor((r / abs(value)) ** 2 + 1e-9)
        feasible &= assignments.sum(dim=1)[None] <= k[:, None]
    dist = ((d[:, None, :] - points[None]) ** 2).sum(dim=2)
    return dist.masked_fill(~feasible, math.inf).amin(dim=1)


@pytest.mark.parametrize("spec", BINARY)
@TINY
@given(problem=problems(max_side=3, min_side=1))
def test_binary_projection_matches_exhaustive_search(spec, problem):
    x, delta, eps, bounds, value = problem
    assume(delta[0].numel() <= 8)
    c = make(spec, eps=eps, bounds=bounds, value=value)
    p = c.project(delta, x)
    best = binary_reference(delta, x, eps, bounds, value, spec)
    got = ((delta.double() - p.double()) ** 2).flatten(1).sum(dim=1)
    assert bool(torch.isfinite(best).all())  # 0 is always feasible
    assert torch.allclose(got, best, rtol=1e-6, atol=1e-9), (got, best)


def test_binary_ties_go_to_zero_and_negative_values():
    c = Binary(-0.5)
    delta = torch.tensor([[-0.25, -0.26, -0.24, 0.3, -2.0]])
    assert torch.equal(c.project(delta, torch.zeros_like(delta)), torch.tensor([[0.0, -0.5, 0.0, 0.0, -0.5]]))
    box = Binary(0.5) & Box(0, 1)  # x + 0.5 must stay <= 1
    x = torch.tensor([[0.2, 0.5, 0.7]])
    out = box.project(torch.full_like(x, 0.5), x)
    assert torch.equal(out, torch.tensor([[0.5, 0.5, 0.0]]))


def test_binary_l2_keeps_the_largest_gains():
    c = Binary(1.0) & L2Ball(math.sqrt(2))
    delta = torch.tensor([[0.9, 0.6, 1.0, 0.2, 0.7]])
    assert torch.equal(c.project(delta, torch.zeros_like(delta)), torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0]]))
    # float rounding: (0.3 / 0.1)^2 = 8.999999999999998 still allows 9 elements
    out = (Binary(0.1) & L2Ball(0.3)).project(
        torch.ones(1, 12, dtype=torch.float64), torch.zeros(1, 12, dtype=torch.float64)
    )
    assert int((out != 0).sum()) == 9


# ----------------------------------------------------------------------------- per-sample radii


@pytest.mark.parametrize("spec", ["linf&box", "l2&box", "l2&linf&nonneg&box", "binary&l2&box", "linf", "l2"])
@FAST
@given(problem=problems(per_sample_eps=False), data=st.data())
def test_per_sample_eps_matches_one_sample_at_a_time(spec, problem, data):
    x, delta, _, bounds, value = problem
    n = x.shape[0]
    radii = data.draw(st.lists(st.floats(0.0, 2.0), min_size=n, max_size=n))
    eps = torch.tensor(radii, dtype=x.dtype)
    batched = make(spec, eps=eps, bounds=bounds, value=value).project(delta, x)
    for i, r in enumerate(radii):
        single = make(spec, eps=float(torch.tensor(r, dtype=x.dtype)), bounds=bounds, value=value)
        one = single.project(delta[i : i + 1], x[i : i + 1])
        assert torch.allclose(batched[i : i + 1], one, rtol=1e-6, atol=1e-6)
    c = make(spec, eps=eps, bounds=bounds, value=value)
    assert bool(c.contains(batched, x).all())
    idx = torch.arange(n).flip(0)
    assert torch.allclose(c.select(idx).project(delta[idx], x[idx]), batched[idx], rtol=1e-6, atol=1e-6)


def test_per_sample_linf_radius_and_contains():
    c = LinfBall(torch.tensor([0.1, 0.5])) & Box(-1, 1)
    delta = torch.full((2, 3), 0.3)
    x = torch.zeros(2, 3)
    assert c.contains(delta, x).tolist() == [False, True]
    assert torch.allclose(c.project(delta, x), torch.tensor([[0.1] * 3, [0.3] * 3]))
    assert torch.equal(c.linf_radius, torch.tensor([0.1, 0.5]))
    assert torch.equal((c & LinfBall(0.2)).linf_radius, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="per-sample radius"):
        LinfBall(torch.tensor([0.1, 0.2, 0.3])).project(delta, x)


# ----------------------------------------------------------------------------- composition, description, building


def test_intersection_flattens_and_deduplicates():
    a, b, c, d = LinfBall(0.1), NonNegative(), L2Ball(1.0), Box(-1, 1)
    inter = (a & b) & (c & d)
    assert isinstance(inter, Intersection) and inter.parts == (a, b, c, d)
    assert len(a & b & c & d) == 4 and list(a & b & c & d) == [a, b, c, d]
    assert (inter & Box(-1, 1)).parts == inter.parts  # the runner adds the model's box again
    assert inter.exact and inter.convex
    assert not (inter & Binary(0.1)).convex and (inter & Binary(0.1)).exact
    with pytest.raises(TypeError):
        Intersection(a, "linf")  # type: ignore[arg-type]


def test_describe_to_dict_round_trip():
    c = LinfBall(0.1) & NonNegative() & Box(-1, 1)
    assert c.describe() == "linf(eps=0.1) & nonneg & box(-1, 1)"
    assert c.to_dict() == {"linf": {"eps": 0.1}, "nonneg": {}, "box": {"low": -1.0, "high": 1.0}}
    for cons in [
        c,
        L2Ball(torch.tensor([0.5, 1.0])) & Binary(-0.2) & Box(0, 1),
        LinfBall(0.1) & LinfBall(0.2),
        Binary(0.3).relaxed() & L2Ball(2.0),
        NonNegative(),
    ]:
        text = json.dumps(cons.to_dict())
        back = constraint_from_dict(json.loads(text))
        assert back.to_dict() == cons.to_dict() and back.describe() == cons.describe()
        assert isinstance(cons.describe(), str) and cons.describe()


def test_relaxed_and_radii():
    assert Binary(0.3).relaxed().describe() == "interval(0, 0.3)"
    assert Binary(-0.3).relaxed().describe() == "interval(-0.3, 0)"
    assert Binary(0.3).linf_radius == 0.3 and Binary(-0.3).relaxed().linf_radius == 0.3
    c = LinfBall(0.1) & Binary(0.05) & L2Ball(1.0) & Box(-1, 1)
    r = c.relaxed()
    assert r.convex and not c.convex
    assert c.linf_radius == 0.05 and c.l2_radius == 1.0
    assert LinfBall(0.1).relaxed() is not None and L2Ball(0.5).linf_radius is None and Box(0, 1).l2_radius is None
    x = torch.rand(3, 1, 4, 4)
    p = r.project(torch.randn(3, 1, 4, 4), x)
    assert bool(((p >= 0) & (p <= 0.05)).all())


def test_from_options_and_build_constraints():
    bounds = (-1.0, 1.0)
    assert LinfBall.from_options(eps=0.2, bounds=bounds).eps == 0.2
    assert L2Ball.from_options(eps=0.2, bounds=bounds).eps == 0.2
    assert Binary.from_options(eps=0.2, bounds=bounds).value == 0.2
    box = Box.from_options(eps=0.2, bounds=bounds)
    assert (box.low, box.high) == bounds
    assert isinstance(NonNegative.from_options(eps=0.2, bounds=bounds), NonNegative)
    assert set(CONSTRAINT_TYPES) == {"linf", "l2", "nonneg", "box", "binary"}

    c = build_constraints(["linf", "nonneg"], eps=0.1, bounds=(0.0, 1.0))
    assert isinstance(c, Intersection)
    assert c.describe() == "linf(eps=0.1) & nonneg & box(0, 1)"
    assert build_constraints([], eps=None, bounds=(0.0, 1.0)).describe() == "box(0, 1)"  # unbounded, asked for
    assert build_constraints(["nonneg"], eps=None, bounds=(0.0, 1.0)).describe() == "nonneg & box(0, 1)"
    assert (
        build_constraints(["box", "linf", "linf"], eps=0.1, bounds=(0.0, 1.0)).describe() == "box(0, 1) & linf(eps=0.1)"
    )
    with pytest.raises(ValueError) as err:
        build_constraints(["linf", "l3"], eps=0.1, bounds=(0.0, 1.0))
    for name in CONSTRAINT_TYPES:
        assert name in str(err.value)
    assert "'l3'" in str(err.value)
    custom = build_constraints(["half"], eps=0.1, bounds=(0.0, 1.0), registry={"half": HalfLinf})
    assert custom.describe() == "half(eps=0.05) & box(0, 1)"


class HalfLinf(Constraint):
    """A custom set that only implements project: ||delta||_inf <= eps / 2."""

    name = "half"

    def __init__(self, eps: float) -> None:
        self.eps = eps / 2

    def project(self, delta, x):
        return delta.clamp(-self.eps, self.eps)

    def params(self):
        return {"eps": self.eps}

    @property
    def linf_radius(self):  # how a plugin set says that eps bounds it
        return self.eps

    @classmethod
    def from_options(cls, *, eps, bounds):
        return cls(eps)


class SumAtMost(Constraint):
    """A custom half-space sum(delta) <= s per sample (only project implemented)."""

    name = "sum"

    def __init__(self, s: float) -> None:
        self.s = s

    def project(self, delta, x):
        flat = delta.flatten(1)
        excess = (flat.sum(dim=1) - self.s).clamp_min(0) / flat.shape[1]
        return delta - excess.view(-1, *([1] * (delta.dim() - 1)))


def test_custom_constraint_falls_back_to_dykstra():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 4, 4)
    delta = torch.randn(3, 1, 4, 4)
    c = SumAtMost(0.5) & LinfBall(0.2) & Box(0, 1)
    assert not c.exact and c.convex
    p = c.project(delta, x)
    assert bool(c.contains(p, x, atol=1e-4).all())
    assert bool((p.abs() <= 0.2 + 1e-6).all())  # the exact part is projected last
    # Dykstra converges to the true projection: check the variational inequality with feasible points
    qs = [
        torch.zeros_like(x),
        c.project(torch.randn(3, 1, 4, 4), x),
        c.random_start(x, torch.Generator().manual_seed(1)),
    ]
    assert_variational_inequality(delta, p, qs, 1e-3)
    alone = Intersection(SumAtMost(0.5))
    assert torch.equal(alone.project(delta, x), SumAtMost(0.5).project(delta, x))
    assert bool(alone.contains(alone.random_start(x), x).all())


def test_validation_errors():
    with pytest.raises(ValueError):
        LinfBall(-0.1)
    with pytest.raises(ValueError):
        L2Ball(float("nan"))
    with pytest.raises(ValueError):
        Binary(0.0)
    with pytest.raises(ValueError):
        Box(1.0, -1.0)
    with pytest.raises(ValueError):
        Interval(0.1, 0.2)


def test_l2_projection_of_huge_deltas():
    x = torch.zeros(2, 4, dtype=torch.float64)
    delta = torch.tensor([[1e30, -1e30, 1e-3, 0.0], [1e200, 1e200, 1e200, 1e200]], dtype=torch.float64)
    for c, expected in [
        (L2Ball(1.0), [[2**-0.5, -(2**-0.5), 0.0, 0.0], [0.5] * 4]),
        (L2Ball(1.0) & NonNegative() & Box(-1, 1), [[1.0, 0.0, 0.0, 0.0], [0.5] * 4]),  # d2 = 1e-33 exactly
        (L2Ball(0.5) & LinfBall(0.3), [[0.3, -0.3, 1e-3, 0.0], [0.25] * 4]),
    ]:
        p = c.project(delta, x)
        assert torch.allclose(p, torch.tensor(expected, dtype=torch.float64), atol=1e-7)  # sqrt(float eps)


def test_float64_and_zero_radius():
    x = torch.rand(2, 5, dtype=torch.float64)
    d = torch.randn(2, 5, dtype=torch.float64)
    for c in [LinfBall(0.0) & Box(0, 1), L2Ball(0.0) & Box(0, 1), Binary(0.1) & L2Ball(0.0)]:
        p = c.project(d, x)
        assert p.dtype == torch.float64 and bool((p == 0).all())
