"""Composable constraint sets on a perturbation ``delta`` (the attack's ``x_adv = x + delta``).

A constraint is a set of feasible perturbations for a batch ``x`` (batch dimension 0, any
trailing shape). Every operation is batched and pure torch: no NumPy, no ``.item()``, no Python
loops over samples, no data-dependent Python control flow; dtype and device are kept and inputs
are never modified in place. Every set contains ``delta = 0`` whenever ``x`` lies in the box, so
intersections are never empty.

Sets compose with ``&``::

    c = LinfBall(8 / 255) & NonNegative() & Box(0.0, 1.0)
    delta = c.project(delta, x)        # exact Euclidean projection, per sample
    c.describe()                       # 'linf(eps=0.0313725) & nonneg & box(0, 1)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any, ClassVar

import torch
from torch import Tensor

from advkit.errors import ParameterError, ThreatModelError
from advkit.rng import draw

__all__ = [
    "CONSTRAINT_TYPES",
    "Binary",
    "Box",
    "Constraint",
    "Intersection",
    "Interval",
    "IntervalConstraint",
    "L2Ball",
    "LinfBall",
    "NonNegative",
    "build_constraints",
    "constraint_from_dict",
]

Radius = Tensor | float

#: Bisection iterations for the L2-and-interval projection (enough for float64).
BISECTION_STEPS = 60
#: Iterations of Dykstra's algorithm / cyclic projections when custom sets are intersected.
DYKSTRA_STEPS = 100


# ----------------------------------------------------------------------------- helpers


def _flat(t: Tensor) -> Tensor:
    """(N, ...) -> (N, D)."""
    return t.reshape(t.shape[0], -1)


def _norms(t: Tensor) -> Tensor:
    """Per-sample L2 norms over all non-batch dims, shape (N,)."""
    return torch.linalg.vector_norm(_flat(t), dim=1)


def _safe_norms(t: Tensor) -> Tensor:
    """Per-sample L2 norms without overflow or underflow of the squares (scaled by the max element)."""
    flat = _flat(t)
    top = flat.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)
    return torch.linalg.vector_norm(flat / top, dim=1) * top.squeeze(1)


def _bcast(values: Tensor, like: Tensor) -> Tensor:
    """(N,) or () -> broadcastable against ``like`` (N, 1, ..., 1), with like's dtype and device."""
    values = values.to(dtype=like.dtype, device=like.device)
    if values.dim() == 0:
        return values
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def _check_radius(eps: Any, what: str) -> Radius:
    """Validate a radius: a finite float >= 0, or a tensor of shape () or (N,)."""
    if isinstance(eps, Tensor):
        if eps.dim() > 1:
            raise ValueError(f"{what}: a per-sample radius must have shape (N,), got {tuple(eps.shape)}")
        if not eps.is_floating_point():
            eps = eps.to(torch.get_default_dtype())
        bad = ~(torch.isfinite(eps) & (eps >= 0))
        if bool(bad.any()):
            first = int(bad.reshape(-1).nonzero()[0, 0])
            raise ParameterError(
                f"{what}: radius must be finite and >= 0 for every sample; entry {first} is "
                f"{float(eps.reshape(-1)[first])} ({int(bad.sum())} bad entries)"
            )
        return eps.detach()
    if isinstance(eps, (list, tuple)):
        return _check_radius(torch.tensor(eps, dtype=torch.float64), what)
    if not isinstance(eps, Real) or isinstance(eps, bool):
        raise ParameterError(f"{what}: radius must be a float or a tensor, got {type(eps).__name__}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ParameterError(f"{what}: radius must be finite and >= 0, got {eps}")
    return eps


def _per_sample_radius(eps: Radius, like: Tensor) -> Radius:
    """A radius as a float or as a tensor of shape (N,) (or ()) on like's device, in like's dtype."""
    if isinstance(eps, Tensor):
        if eps.dim() == 1 and eps.shape[0] != like.shape[0]:
            raise ValueError(f"per-sample radius has {eps.shape[0]} entries for a batch of {like.shape[0]}")
        return eps.to(dtype=like.dtype, device=like.device)
    return eps


def _min_radius(a: Radius | None, b: Radius | None) -> Radius | None:
    """Elementwise minimum of two optional radii (floats or tensors)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.minimum(a, b.to(device=a.device, dtype=torch.promote_types(a.dtype, b.dtype)))
    if isinstance(a, Tensor):
        return a.clamp(max=b)
    if isinstance(b, Tensor):
        return b.clamp(max=a)
    return min(a, b)


def _fmt(value: Radius) -> str:
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return f"{float(value):g}"
        values = value.detach().cpu().tolist()
        if len(values) <= 4:
            return "[" + ", ".join(f"{v:g}" for v in values) + "]"
        return f"per-sample[{len(values)}: {min(values):g}..{max(values):g}]"
    return f"{value:g}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    return value


def _select(value: Radius, idx: Tensor) -> Radius:
    if isinstance(value, Tensor) and value.dim() > 0:
        return value[idx.to(value.device)]
    return value


# ----------------------------------------------------------------------------- base class


class Constraint:
    """A set of feasible perturbations ``delta`` for a batch ``x``; subclasses implement ``project``.

    Plugin authors may subclass this with only ``project`` (and ideally ``contains``); such sets
    still compose with ``&`` (the intersection then falls back to Dykstra's algorithm and is
    marked ``exact = False``). Subclassing :class:`IntervalConstraint` (per-element bounds) gives
    exact projections of intersections instead.
    """

    name: ClassVar[str] = ""
    convex: ClassVar[bool] = True
    #: Whether ``project`` is the exact Euclidean projection (False for Dykstra fall-backs).
    exact: bool = True

    # -- geometry

    def project(self, delta: Tensor, x: Tensor) -> Tensor:
        """The Euclidean projection of ``delta`` onto the set, per sample (a new tensor)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement project()")

    def contains(self, delta: Tensor, x: Tensor, atol: float = 1e-6) -> Tensor:
        """Per-sample membership, a bool tensor (N,). Default: projecting moves no element by more than atol."""
        moved = (self.project(delta, x) - delta).abs()
        return _flat(moved).amax(dim=1) <= atol

    def random_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A random feasible delta for ``x``, projected onto the set.

        Known sets sample uniformly in the L-inf/interval part (unbounded sides cut at distance 1)
        or, with an L2 ball, uniformly in the ball; Binary(v) samples ``v * U(0, 1)`` per element,
        whose projection switches each allowed element on with probability 1/2. Custom sets
        start from zeros. Reproducible with a seeded ``generator`` (on x's device); with an
        :class:`advkit.rng.SampleStreams` each sample's start depends only on its own stream.
        """
        raw = _sample([self], x, generator)
        return self.project(torch.zeros_like(x) if raw is None else raw, x)

    def relaxed(self) -> Constraint:
        """A convex relaxation of the set: the set itself when it is convex."""
        if self.convex:
            return self
        raise NotImplementedError(f"{type(self).__name__} is not convex and has no relaxation")

    def select(self, idx: Tensor) -> Constraint:
        """The set restricted to the samples ``idx`` (per-sample radii are indexed); itself by default."""
        return self

    @property
    def linf_radius(self) -> Radius | None:
        """The L-inf radius of the set if it has one (attacks use it to pick step sizes), else None."""
        return None

    @property
    def l2_radius(self) -> Radius | None:
        """The L2 radius of the set if it has one, else None."""
        return None

    # -- description

    def params(self) -> dict[str, Any]:
        """Constructor keyword arguments that rebuild this set (tensors allowed)."""
        return {}

    def describe(self) -> str:
        """Short human-readable description, e.g. ``linf(eps=0.1)``."""
        params = self.params()
        if not params:
            return self.name or type(self).__name__
        return f"{self.name}(" + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) + ")"

    def to_dict(self) -> dict:
        """JSON-able description, e.g. ``{"linf": {"eps": 0.1}}``."""
        return {self.name or type(self).__name__: {k: _jsonable(v) for k, v in self.params().items()}}

    def _key(self) -> tuple | None:
        """A hashable identity for de-duplication in intersections (None when params hold tensors)."""
        params = self.params()
        if any(isinstance(v, Tensor) for v in params.values()):
            return None
        return (type(self), tuple(sorted(params.items())))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in self.params().items()) + ")"

    # -- composition and construction

    def __and__(self, other: Constraint) -> Intersection:
        """The intersection of both sets (nested intersections are flattened)."""
        if not isinstance(other, Constraint):
            return NotImplemented
        return Intersection(self, other)

    @classmethod
    def from_options(cls, *, eps: float, bounds: tuple[float, float]) -> Constraint:
        """Build the set from the CLI's ``--eps`` and the model's ``bounds``; default: ``cls()``."""
        return cls()


# ----------------------------------------------------------------------------- separable sets


class IntervalConstraint(Constraint):
    """A separable set given by per-element bounds ``lo <= delta <= hi`` (see :meth:`interval`)."""

    def interval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-element bounds ``(lo, hi)`` on delta, each shaped like ``x`` (may be expanded views)."""
        raise NotImplementedError

    def project(self, delta: Tensor, x: Tensor) -> Tensor:
        """Clamp every element into its interval (exact)."""
        return _project_known([self], delta, x)

    def contains(self, delta: Tensor, x: Tensor, atol: float = 1e-6) -> Tensor:
        """Every element within ``atol`` of its interval."""
        lo, hi = self.interval(x)
        ok = (delta >= lo.to(delta.dtype) - atol) & (delta <= hi.to(delta.dtype) + atol)
        return _flat(ok).all(dim=1)


class LinfBall(IntervalConstraint):
    """L-inf ball: |delta_i| <= eps for every element (eps: a float or a per-sample tensor of shape (N,))."""

    name = "linf"
    convex = True

    def __init__(self, eps: float | Tensor) -> None:
        self.eps: Radius = _check_radius(eps, "LinfBall")

    def interval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[-eps, eps]`` for every element."""
        if isinstance(self.eps, Tensor):
            eps = _bcast(_per_sample_radius(self.eps, x), x).expand_as(x)
            return -eps, eps
        return torch.full_like(x, -self.eps), torch.full_like(x, self.eps)

    def select(self, idx: Tensor) -> LinfBall:
        return LinfBall(_select(self.eps, idx))

    @property
    def linf_radius(self) -> Radius:
        return self.eps

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps}

    @classmethod
    def from_options(cls, *, eps: float, bounds: tuple[float, float]) -> LinfBall:
        """``LinfBall(eps)``."""
        return cls(eps)


class NonNegative(IntervalConstraint):
    """Non-negative: delta >= 0, pixels only increase (x_adv >= x, no erasing)."""

    name = "nonneg"
    convex = True

    def interval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[0, inf)`` for every element."""
        return torch.zeros_like(x), torch.full_like(x, math.inf)


class Box(IntervalConstraint):
    """Box: low <= x + delta <= high, absolute pixel bounds (e.g. the model's [-1, 1])."""

    name = "box"
    convex = True

    def __init__(self, low: float, high: float) -> None:
        low, high = float(low), float(high)
        if math.isnan(low) or math.isnan(high) or low > high:
            raise ValueError(f"Box needs low <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def interval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[low - x, high - x]`` per element."""
        return self.low - x, self.high - x

    def params(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}

    def describe(self) -> str:
        return f"box({self.low:g}, {self.high:g})"

    @classmethod
    def from_options(cls, *, eps: float, bounds: tuple[float, float]) -> Box:
        """``Box(*bounds)``."""
        return cls(*bounds)


class Interval(IntervalConstraint):
    """Interval: low <= delta <= high per element (0 must lie in [low, high]); the relaxation of Binary."""

    name = "interval"
    convex = True

    def __init__(self, low: float, high: float) -> None:
        low, high = float(low), float(high)
        if not (low <= 0.0 <= high):
            raise ValueError(f"Interval needs low <= 0 <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def interval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[low, high]`` for every element."""
        return torch.full_like(x, self.low), torch.full_like(x, self.high)

    @property
    def linf_radius(self) -> float | None:
        radius = max(-self.low, self.high)
        return radius if math.isfinite(radius) else None

    def params(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}

    def describe(self) -> str:
        return f"interval({self.low:g}, {self.high:g})"

    @classmethod
    def from_options(cls, *, eps: float, bounds: tuple[float, float]) -> Interval:
        """``Interval(-eps, eps)``."""
        return cls(-eps, eps)


# ----------------------------------------------------------------------------- other known sets


class L2Ball(Constraint):
    """L2 ball: ||delta||_2 <= eps per sample, over all non-batch dims (eps: a float or an (N,) tensor)."""

    name = "l2"
    convex = True

    def __init__(self, eps: float | Tensor) -> None:
        self.eps: Radius = _check_radius(eps, "L2Ball")

    def project(self, delta: Tensor, x: Tensor) -> Tensor:
        """Scale each sample by ``min(1, eps / ||delta||)`` (exact)."""
        return _project_known([self], delta, x)

    def contains(self, delta: Tensor, x: Tensor, atol: float = 1e-6) -> Tensor:
        """``||delta|| <= eps + atol`` per sample."""
        return _norms(delta) <= _per_sample_radius(self.eps, delta) + atol

    def select(self, idx: Tensor) -> L2Ball:
        return L2Ball(_select(self.eps, idx))

    @property
    def l2_radius(self) -> Radius:
        return self.eps

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps}

    @classmethod
    def from_options(cls, *, eps: float, bounds: tuple[float, float]) -> L2Ball:
        """``L2Ball(eps)``."""
        return cls(eps)


class Binary(Constraint):
    """Binary: every element of delta is 0 or exactly value (one fixed nonzero float, may be negative).

    Projection: per element, the nearest of ``{0, value}``; ties (``delta == value / 2``) go to 0.
    Not convex; :meth:`relaxed` is the interval between 0 and ``value``. In an intersection the
    allowed values per element become ``{0} ∪ ({value} if lo <= value <= hi)`` and an L2 ball of
    radius eps allows at most ``floor((eps / |value|)^2)`` nonzero elements (see
    :class:`Intersection`).
    """

    name = "binary"
    convex = False

    def __init__(self, value: float) -> None:
        value = float(value)
        if value == 0 or not math.isfinite(value):
            raise ValueError(f"Binary needs a finite nonzero value, got {value}")
        self.value = value

    def project(self, delta: Tensor, x: Tensor) -> Tensor:
        """Nearest of {0, value} per element (ties -> 0)."""
        return _project_known([self], delta, x)

    def contains(self, delta: Tensor, x: Tensor, atol: float = 1e-6) -> Tensor:
        """Every element within atol of 0 or of value."""
        ok = (delta.abs() <= atol) | ((delta - self.value).abs() <= atol)
        return _flat(ok).all(dim=1)

    def relaxed(self) -> Interval:
        """The interval between 0 and value."""
        return Interval(min(0.0, self.value), max(0.0, self.value))

    @property
    def linf_radius(self) -> float:
        return abs(self.value)

    def params(self) -> dict[str, Any]:
        return {"value": self.value}

    @classmethod
    def from_options(cls, *, eps: float, bounds: tuple[float, float]) -> Binary:
        """``Binary(eps)``."""
        return cls(eps)


_KNOWN = (IntervalConstraint, L2Ball, Binary)
#: Built-in classes whose params() describe them fully (equal ones are kept once in an intersection).
_SIMPLE = (LinfBall, L2Ball, NonNegative, Box, Interval, Binary)


# ----------------------------------------------------------------------------- exact projections


def _intersect_intervals(
    parts: Sequence[IntervalConstraint], like: Tensor, x: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """Elementwise max of the lows and min of the highs, in like's dtype and device."""
    lo = hi = None
    for part in parts:
        a, b = part.interval(x)
        a, b = a.to(dtype=like.dtype, device=like.device), b.to(dtype=like.dtype, device=like.device)
        lo = a if lo is None else torch.maximum(lo, a)
        hi = b if hi is None else torch.minimum(hi, b)
    return lo, hi


def _clamp(t: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    if lo is None and hi is None:
        return t.clone()
    return torch.clamp(t, lo, hi)


def _ball_factor(d: Tensor, eps: Radius) -> Tensor:
    """``min(1, eps / ||d||)`` per sample, shape (N,)."""
    return (eps / _safe_norms(d).clamp_min(torch.finfo(d.dtype).tiny)).clamp(max=1.0)


def _scale_into_ball(d: Tensor, eps: Radius) -> Tensor:
    """``d * min(1, eps / ||d||)`` per sample."""
    return d * _bcast(_ball_factor(d, eps), d)


def _project_l2_interval(z: Tensor, lo: Tensor | None, hi: Tensor | None, eps: Radius) -> Tensor:
    """Exact projection onto ``{lo <= d <= hi, ||d|| <= eps}`` (0 in [lo, hi]) by bisection on t.

    The projection is ``clamp(t z, lo, hi)`` for the largest ``t`` in (0, 1] with norm <= eps.
    The bracket starts at ``[min(1, eps / ||z||), 1]`` (the lower end is feasible since clamping
    toward an interval that holds 0 never increases the norm) and is halved geometrically, so
    the relative precision of t does not depend on how large delta is; the bisection returns
    the feasible end of its bracket.
    """
    if lo is None and hi is None:
        return _scale_into_ball(z, eps)
    t_lo = _ball_factor(z, eps)
    t_hi = torch.ones_like(t_lo)
    for _ in range(BISECTION_STEPS):
        t = t_lo.sqrt() * t_hi.sqrt()
        ok = _norms(_clamp(_bcast(t, z) * z, lo, hi)) <= eps
        t_lo = torch.where(ok, t, t_lo)
        t_hi = torch.where(ok, t_hi, t)
    full = _clamp(z, lo, hi)
    t = torch.where(_norms(full) <= eps, t_hi.new_ones(()), t_lo)
    return _scale_into_ball(_clamp(_bcast(t, z) * z, lo, hi), eps)


def _max_count(eps: Radius, value: float, like: Tensor) -> Radius:
    """``floor((eps / |value|)^2 + 1e-9)``: how many elements may be ``value`` inside the L2 ball."""
    if not isinstance(eps, Tensor):
        return float(math.floor((eps / abs(value)) ** 2 + 1e-9))
    wide = eps.to(device=like.device, dtype=like.dtype if like.device.type == "mps" else torch.float64)
    return torch.floor((wide / abs(value)) ** 2 + 1e-9)


def _project_binary(
    z: Tensor, lo: Tensor | None, hi: Tensor | None, values: Sequence[float], eps: Radius | None, eps_raw: Radius | None
) -> Tensor:
    """Exact projection onto the binary set intersected with intervals and an optional L2 ball."""
    value = values[0]
    zero = z.new_zeros(())
    if any(v != value for v in values):  # {0, v1} ∩ {0, v2} = {0}
        return torch.zeros_like(z)
    allowed = torch.ones_like(z, dtype=torch.bool)
    if lo is not None:
        allowed = allowed & (lo <= value)
    if hi is not None:
        allowed = allowed & (hi >= value)
    gain = value * (2 * z - value)  # z^2 - (z - value)^2
    choose = allowed & (gain > 0)
    if eps is not None:
        k = _max_count(eps_raw if isinstance(eps_raw, Tensor) else eps, value, z)
        scores = _flat(gain.masked_fill(~choose, -math.inf))
        order = scores.argsort(dim=1, descending=True, stable=True)
        positions = torch.arange(scores.shape[1], device=z.device).expand_as(order)
        rank = torch.zeros_like(order).scatter(1, order, positions)
        if isinstance(k, Tensor) and k.dim() > 0:
            k = k.reshape(-1, 1)
        choose = choose & (rank < k).reshape(z.shape)
    return torch.where(choose, z.new_tensor(value), zero)


def _project_known(parts: Sequence[Constraint], delta: Tensor, x: Tensor) -> Tensor:
    """Exact projection onto the intersection of known sets (intervals, L2 balls, binary)."""
    intervals = [p for p in parts if isinstance(p, IntervalConstraint)]
    balls = [p for p in parts if isinstance(p, L2Ball)]
    binaries = [p for p in parts if isinstance(p, Binary)]
    lo, hi = _intersect_intervals(intervals, delta, x)
    eps_raw: Radius | None = None
    for ball in balls:
        eps_raw = _min_radius(eps_raw, ball.eps)
    eps = None if eps_raw is None else _per_sample_radius(eps_raw, delta)
    if binaries:
        return _project_binary(delta, lo, hi, [b.value for b in binaries], eps, eps_raw)
    if eps is None:
        return _clamp(delta, lo, hi)
    return _project_l2_interval(delta, lo, hi, eps)


def _sample(parts: Sequence[Constraint], x: Tensor, generator: torch.Generator | None) -> Tensor | None:
    """A raw random point for the known parts, to be projected afterwards (None if none are known).

    Binary(v): ``v * U`` with U uniform in [0, 1] per element (its projection switches each
    allowed element on with probability 1/2, a random subset if an L2 ball caps the count).
    Else an L2 ball: uniform in the smallest ball. Else uniform in the intersected interval,
    with unbounded sides cut at distance 1 (0 always lies in the interval). With a
    :class:`advkit.rng.SampleStreams` as ``generator`` each sample's numbers come from its own stream.
    """
    known = [p for p in parts if isinstance(p, _KNOWN)]
    if not known:
        return None
    binaries = [p for p in known if isinstance(p, Binary)]
    kw = {"dtype": x.dtype, "device": x.device}
    if binaries:
        return binaries[0].value * draw("rand", x.shape, generator, **kw)
    eps: Radius | None = None
    for ball in (p for p in known if isinstance(p, L2Ball)):
        eps = _min_radius(eps, ball.eps)
    if eps is not None:
        direction = draw("randn", x.shape, generator, **kw)
        direction = direction / _bcast(_norms(direction).clamp_min(torch.finfo(x.dtype).tiny), x)
        dim = max(1, math.prod(x.shape[1:]))
        radius = draw("rand", x.shape[:1], generator, **kw) ** (1.0 / dim) * _per_sample_radius(eps, x)
        return direction * _bcast(radius, x)
    lo, hi = _intersect_intervals([p for p in known if isinstance(p, IntervalConstraint)], x, x)
    assert lo is not None and hi is not None
    lo = torch.where(torch.isinf(lo), torch.full_like(lo, -1.0), lo)
    hi = torch.where(torch.isinf(hi), torch.full_like(hi, 1.0), hi)
    return lo + (hi - lo) * draw("rand", x.shape, generator, **kw)


# ----------------------------------------------------------------------------- intersection


class Intersection(Constraint):
    """The AND of several sets; ``a & b & c`` builds one flat intersection (equal simple parts kept once).

    Known parts (recognized by isinstance: :class:`IntervalConstraint` subclasses, ``L2Ball``,
    ``Binary``) are projected jointly and exactly; other parts only through their ``project``.

    Exact projection of known parts:

    1. Separable parts (``LinfBall``, ``NonNegative``, ``Box``, any :class:`IntervalConstraint`)
       give per-element bounds; intersect them: ``lo = max(lows)``, ``hi = min(highs)``.
    2. No L2 ball, no Binary: ``clamp(delta, lo, hi)``.
    3. L2 balls (smallest radius eps), no Binary: by KKT the projection is
       ``d(t) = clamp(t * delta, lo, hi)`` for the largest t in (0, 1] with ``||d(t)|| <= eps``
       (``||d(t)||`` is nondecreasing in t). t = 1 if feasible, else a fixed-length batched
       bisection on t per sample keeping the feasible end; a final rescale by
       ``min(1, eps / ||d||)`` removes rounding excess (scaling toward 0 stays in the interval).
    4. Binary(v): per element the allowed values are ``{0} ∪ ({v} if lo <= v <= hi)``. Without
       an L2 ball, the nearest allowed value (ties -> 0). With one, at most
       ``k = floor((eps / |v|)^2 + 1e-9)`` elements may be v: take the allowed elements with the
       largest positive gains ``z^2 - (z - v)^2``, at most k per sample (a top-k by rank). Exact.
       Several Binary parts with different values leave only 0.
    5. Custom sets (only ``project`` known): Dykstra's algorithm (cyclic projections when a part
       is not convex) over the custom parts and the exact projection onto the known parts, for
       ``DYKSTRA_STEPS`` rounds, ending with the known parts; ``exact`` is then False.
    """

    name = "intersection"

    def __init__(self, *parts: Constraint) -> None:
        flat: list[Constraint] = []
        seen: set = set()
        for part in parts:
            for p in part.parts if isinstance(part, Intersection) else (part,):
                if not isinstance(p, Constraint):
                    raise TypeError(f"Intersection parts must be Constraints, got {type(p).__name__}")
                key = p._key() if type(p) in _SIMPLE else None
                if key is not None:
                    if key in seen:
                        continue
                    seen.add(key)
                flat.append(p)
        self.parts: tuple[Constraint, ...] = tuple(flat)

    def _split(self) -> tuple[list[Constraint], list[Constraint]]:
        known = [p for p in self.parts if isinstance(p, _KNOWN)]
        custom = [p for p in self.parts if not isinstance(p, _KNOWN)]
        return known, custom

    @property
    def convex(self) -> bool:  # type: ignore[override]
        return all(p.convex for p in self.parts)

    @property
    def exact(self) -> bool:  # type: ignore[override]
        known, custom = self._split()
        if not custom:
            return True
        return not known and len(custom) == 1 and bool(getattr(custom[0], "exact", True))

    def __iter__(self):
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    def project(self, delta: Tensor, x: Tensor) -> Tensor:
        """Projection onto the intersection (exact for known sets; see the class docstring)."""
        known, custom = self._split()
        if not custom:
            return _project_known(known, delta, x)
        if not known and len(custom) == 1:
            return custom[0].project(delta, x)
        projections = [p.project for p in custom]
        if known:
            projections.append(lambda d, x_: _project_known(known, d, x_))
        dykstra = self.convex
        y = delta
        increments = [torch.zeros_like(delta) for _ in projections]
        for _ in range(DYKSTRA_STEPS):
            for i, proj in enumerate(projections):
                before = y + increments[i] if dykstra else y
                y = proj(before, x)
                if dykstra:
                    increments[i] = before - y
        return y

    def contains(self, delta: Tensor, x: Tensor, atol: float = 1e-6) -> Tensor:
        """All parts contain delta (per sample)."""
        ok = torch.ones(delta.shape[0], dtype=torch.bool, device=delta.device)
        for part in self.parts:
            ok = ok & part.contains(delta, x, atol)
        return ok

    def random_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample for the known parts as in :meth:`Constraint.random_start` (a custom part's own start if all are custom), then project."""
        known, custom = self._split()
        raw = _sample(known, x, generator)
        if raw is None:
            raw = custom[0].random_start(x, generator) if custom else torch.zeros_like(x)
        return self.project(raw, x)

    def relaxed(self) -> Intersection:
        """The intersection of the parts' relaxations."""
        return Intersection(*(p.relaxed() for p in self.parts))

    def select(self, idx: Tensor) -> Intersection:
        return Intersection(*(p.select(idx) for p in self.parts))

    @property
    def linf_radius(self) -> Radius | None:
        radius = None
        for p in self.parts:
            radius = _min_radius(radius, p.linf_radius)
        return radius

    @property
    def l2_radius(self) -> Radius | None:
        radius = None
        for p in self.parts:
            radius = _min_radius(radius, p.l2_radius)
        return radius

    def describe(self) -> str:
        return " & ".join(p.describe() for p in self.parts) or "unconstrained"

    def to_dict(self) -> dict:
        """Parts merged into one dict by name; a name used more than once maps to a list of parameter dicts."""
        out: dict[str, Any] = {}
        for part in self.parts:
            for name, params in part.to_dict().items():
                if name not in out:
                    out[name] = params
                elif isinstance(out[name], list):
                    out[name].append(params)
                else:
                    out[name] = [out[name], params]
        return out

    def __repr__(self) -> str:
        return "Intersection(" + ", ".join(repr(p) for p in self.parts) + ")"


# ----------------------------------------------------------------------------- construction by name

#: CLI names -> classes.
CONSTRAINT_TYPES: dict[str, type[Constraint]] = {
    "linf": LinfBall,
    "l2": L2Ball,
    "nonneg": NonNegative,
    "box": Box,
    "binary": Binary,
}


def _lookup(name: str, registry: Mapping[str, Any]) -> type[Constraint]:
    if name not in registry:
        raise ParameterError(
            f"--constraints: unknown constraint {name!r}; valid constraints: {', '.join(sorted(registry))}"
        )
    entry = registry[name]
    return getattr(entry, "obj", entry)  # also accepts advkit.registry.Registered entries


def build_constraints(
    names: Sequence[str],
    *,
    eps: float | None,
    bounds: tuple[float, float],
    registry: Mapping[str, type[Constraint]] | None = None,
) -> Intersection:
    """The intersection of the named sets (each built by ``from_options``) and always the model's ``Box(*bounds)``.

    ``eps`` must bound something: when it is given, a set without a radius (no L-inf or L2 ball, no binary value:
    e.g. ``"nonneg"``, ``"box"`` or no name at all) is refused with :class:`~advkit.errors.ThreatModelError`, since
    the perturbation could then reach anywhere in the box while the run reports eps. ``eps=None`` asks explicitly
    for a set without a radius (a set that needs one is then refused). Unknown names raise ``ValueError`` listing
    the valid ones; repeated names count once.
    """
    registry = CONSTRAINT_TYPES if registry is None else registry
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    parts: list[Constraint] = []
    seen: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name or name in seen:
            continue
        seen.append(name)
        cls = _lookup(name, registry)
        if eps is None:
            try:
                parts.append(cls.from_options(eps=None, bounds=bounds))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ThreatModelError(
                    f"constraint {name!r} needs an eps (its radius); give eps, or leave "
                    f"{name!r} out of an unbounded run"
                ) from None
        else:
            parts.append(cls.from_options(eps=eps, bounds=bounds))
    result = Intersection(*parts, Box(*bounds))
    if eps is not None and result.linf_radius is None and result.l2_radius is None:
        given = f"constraint set {','.join(seen)!r}" if seen else "an empty constraint set"
        rest = [n for n in seen if n != "box"]
        only = f"{','.join(rest)!r} and the box" if rest else "the box"
        raise ThreatModelError(
            f"{given} has no ball using eps (no linf, l2 or binary; a plugin's set that eps bounds says so through its "
            f"linf_radius or l2_radius), so eps {eps:g} would bound nothing: the "
            "perturbation could reach anywhere in the model's box. Sets add up: ask for a ball too, e.g. "
            f"'{','.join(['linf', *seen])}' (the default is 'linf,box'); for a run bounded only by {only}, ask for "
            "it explicitly (eps=None; on the command line --unbounded instead of --eps)"
        )
    return result


def constraint_from_dict(data: Mapping[str, Any], registry: Mapping[str, type[Constraint]] | None = None) -> Constraint:
    """Rebuild a set from :meth:`Constraint.to_dict` output (one part: that set; else an Intersection)."""
    registry = {**CONSTRAINT_TYPES, "interval": Interval} if registry is None else registry
    parts: list[Constraint] = []
    for name, params in data.items():
        cls = _lookup(name, registry)
        for p in params if isinstance(params, list) else [params]:
            parts.append(cls(**p))
    return parts[0] if len(parts) == 1 else Intersection(*parts)
