"""Property-based checks of the threat model (hypothesis): every registered attack, every constraint set.

Whatever the attack plugin returns, the runner's result lies in the constraint set (checked by
hand to 1e-6, not with the set's own ``contains``), is finite, has the input's shape and dtype,
leaves the input tensor unchanged, reports success only from a fresh forward pass and records
the plugin that produced it. A deliberately misbehaving plugin is projected or rejected.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import advkit
from advkit import plugins, registry
from advkit.attack import Attack
from advkit.constraints import Binary, Box, Intersection, L2Ball, LinfBall, NonNegative, build_constraints
from advkit.models import ModelAdapter
from advkit.runner import ThreatModelViolation, make_attack, run_attack

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-6
CONSTRAINT_NAMES = sorted(registry.constraints())
COMBINATIONS = [c for r in range(1, len(CONSTRAINT_NAMES) + 1) for c in itertools.combinations(CONSTRAINT_NAMES, r)]
BUILTIN_SETS = {"linf", "l2", "nonneg", "box", "binary"}


# ---------------------------------------------------------------- a misbehaving plugin


@dataclass(kw_only=True)
class AddTen(Attack):
    """Returns x + 10, far outside any threat model and the model's box."""

    name = "test_add_ten"

    def run(self, problem):
        return problem.x + 10


@dataclass(kw_only=True)
class SignFlood(Attack):
    """Returns x + 3 * sign(noise) in float64, with requires_grad, modifying problem.x in place first."""

    name = "test_sign_flood"

    def run(self, problem):
        noise = torch.randn(problem.x.shape, generator=problem.generator, device=problem.x.device)
        problem.x.add_(0.5)
        return (problem.x + 3 * noise.sign()).double().requires_grad_(True)


@dataclass(kw_only=True)
class ReturnsInf(Attack):
    """Returns inf for the first sample: must be rejected, never projected into a 'success'."""

    name = "test_returns_inf"

    def run(self, problem):
        out = problem.x.clone()
        out[0] = float("inf")
        return out


@dataclass(kw_only=True)
class WrongShape(Attack):
    """Drops the last sample."""

    name = "test_wrong_shape"

    def run(self, problem):
        return problem.x[:-1] if len(problem.x) > 1 else problem.x[:, :, :-1]


MISBEHAVING = (AddTen, SignFlood, ReturnsInf, WrongShape)
REJECTED = {"test_returns_inf", "test_wrong_shape"}
PLUGIN = "misbehaving_test_plugin"


class MisbehavingPlugin:
    @advkit.hookimpl
    def register_attacks(self, register):
        for cls in MISBEHAVING:
            register(cls)


@pytest.fixture(scope="module", autouse=True)
def misbehaving_plugin():
    """The misbehaving attacks, registered through the plugin manager like any third-party plugin."""
    plugins.register_plugin(MisbehavingPlugin(), name=PLUGIN, version="6.6.6")
    yield
    plugins.unregister_plugin(PLUGIN)


ATTACKS = sorted(registry.attacks()) + [cls.name for cls in MISBEHAVING]


# ---------------------------------------------------------------- helpers


def model_in(dtype: torch.dtype, model: ModelAdapter) -> ModelAdapter:
    if dtype == torch.float32:
        return model
    module = copy.deepcopy(model.module).to(dtype)
    return ModelAdapter(
        module,
        name=f"{model.name}-{dtype}",
        bounds=model.bounds,
        input_shape=model.input_shape,
        class_names=model.class_names,
    )


def fast_params(name: str, names: tuple[str, ...], eps: float, restarts: int = 2) -> dict:
    """Short runs that still exercise random restarts; the binary attack gets its value when the set has none."""
    fields = {f.name for f in registry.get_attack(name).obj.param_fields()}
    params = {"steps": 3} if "steps" in fields else {}
    if "restarts" in fields:
        params["restarts"] = restarts
    if name == "binary" and "binary" not in names:
        params["value"] = eps
    return params


def build(names: tuple[str, ...], eps: float | torch.Tensor, bounds: tuple[float, float]):
    """The named sets at radius eps (a float, or per-sample radii for the balls) and the model's box."""
    if not isinstance(eps, torch.Tensor):
        bounded = any(n in names for n in ("linf", "l2", "binary"))  # eps bounds something, or the run is unbounded
        return build_constraints(
            list(names), eps=eps if bounded else None, bounds=bounds, registry=registry.constraints()
        )
    parts = {
        "linf": lambda: LinfBall(eps),
        "l2": lambda: L2Ball(eps),
        "nonneg": NonNegative,
        "box": lambda: Box(*bounds),
        "binary": lambda: Binary(float(eps.max())),
    }
    return Intersection(*(parts[n]() for n in names), Box(*bounds))


def assert_in_threat_model(x, x_adv, names, eps, bounds, label=""):
    """Membership checked by hand, element by element, to 1e-6."""
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype, label
    assert bool(torch.isfinite(x_adv).all()), label
    assert not x_adv.requires_grad, label
    delta = (x_adv - x).flatten(1)
    radius = eps if isinstance(eps, torch.Tensor) else torch.full((len(x),), float(eps), dtype=x.dtype)
    radius = radius.to(x.dtype)
    low, high = bounds
    assert float(x_adv.min()) >= low - TOL and float(x_adv.max()) <= high + TOL, label
    if "linf" in names:
        assert bool((delta.abs().amax(1) <= radius + TOL).all()), label
    if "l2" in names:
        assert bool((delta.norm(dim=1) <= radius + TOL).all()), label
    if "nonneg" in names:
        assert float(delta.min()) >= -TOL, label
    if "binary" in names:
        value = float(radius.max())
        assert bool(((delta.abs() <= TOL) | ((delta - value).abs() <= TOL)).all()), label


def assert_honest(result, model, x, y, target, label=""):
    """Success is a fresh eval-mode forward pass on x_adv; the result names its plugin."""
    with torch.no_grad():
        logits = model.module(result.x_adv)
    probs = logits.softmax(1)
    confidence, pred = probs.max(1)
    reached = (pred == target) if target is not None else (pred != y)
    expected = reached & (confidence >= result_confidence(result)) & torch.isfinite(logits).all(1)
    assert torch.equal(result.success, expected), label
    info = registry.get_attack(result.attack).plugin
    assert result.plugin == {"name": info.name, "distribution": info.distribution, "version": info.version}, label
    assert result.plugin["name"] and (result.plugin["version"] or result.plugin["name"] == PLUGIN), label


def result_confidence(result) -> float:
    return float(result.criterion.split(">=")[1]) if ">=" in result.criterion else 0.0


def attack_or_reject(model, name, x, y, names, eps, seed=0, restarts=2):
    """Run ``name``; a misbehaving attack may be rejected (ThreatModelViolation), never reported as a success."""
    target = (y + 1 + seed % 9) % 10 if make_attack(name).targeted else None
    constraint = build(names, eps, model.bounds)
    x_before = x.clone()
    try:
        result = run_attack(
            model,
            name,
            x,
            y,
            constraint=constraint,
            target=target,
            seed=seed,
            **fast_params(name, names, float(eps.max()) if isinstance(eps, torch.Tensor) else eps, restarts),
        )
    except ThreatModelViolation:
        assert name in REJECTED, f"{name} rejected under {names}"
        return None
    except ValueError as error:
        # Refusals that name the problem: one radius needed (universal, binary's default value).
        assert isinstance(eps, torch.Tensor) and "radius" in str(error), f"{name} under {names}: {error}"
        return None
    finally:
        assert torch.equal(x, x_before), f"{name} modified its input"
    assert name not in REJECTED, f"{name} should have been rejected"
    return result, target


# ---------------------------------------------------------------- every attack x every combination


def test_every_attack_in_every_constraint_combination(tiny_model, tiny_batch):
    """Exhaustive and deterministic: 31 combinations of the CLI's sets x every registered attack."""
    x, y = tiny_batch[0][:3], tiny_batch[1][:3]
    assert BUILTIN_SETS <= set(CONSTRAINT_NAMES)
    for names in COMBINATIONS:
        for name in ATTACKS:
            label = f"{name} under {'&'.join(names)}"
            out = attack_or_reject(tiny_model, name, x, y, names, 0.3, restarts=1)
            if out is None:
                continue
            result, target = out
            assert_in_threat_model(x, result.x_adv, names, 0.3, tiny_model.bounds, label)
            assert_honest(result, tiny_model, x, y, target, label)


# ---------------------------------------------------------------- hypothesis: random data, radii, seeds, dtypes


@st.composite
def batches(draw):
    """Inputs in [-1, 1] with some elements exactly on the bounds, labels right or wrong."""
    n = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    edge = draw(st.sampled_from([0.0, 0.3, 1.0]))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    on_edge = torch.rand(n, 1, 8, 8, generator=g) < edge
    x = torch.where(on_edge, torch.sign(x), x)
    random_labels = draw(st.booleans())
    return x, random_labels, seed


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.sampled_from(COMBINATIONS),
    eps=st.floats(0.01, 1.3),
    batch=batches(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    per_sample=st.booleans(),
)
@pytest.mark.parametrize("name", ATTACKS)
def test_threat_model_holds(tiny_model, name, names, eps, batch, dtype, per_sample):
    x, random_labels, seed = batch
    model = model_in(dtype, tiny_model)
    x = x.to(dtype)
    y = (
        torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(seed))
        if random_labels
        else model.predict(x).argmax(1)
    )
    radius = (
        eps * (0.5 + torch.rand(len(x), generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64))
        if per_sample
        else eps
    )
    model.module.train()  # the runner switches to eval and restores the mode
    try:
        out = attack_or_reject(model, name, x, y, names, radius, seed)
        assert model.module.training and all(m.training for m in model.module.modules())
    finally:
        model.module.eval()
    if out is None:
        return
    result, target = out
    label = f"{name} under {'&'.join(names)}, eps {radius}, {dtype}"
    assert_in_threat_model(x, result.x_adv, names, radius, model.bounds, label)
    assert_honest(result, model, x, y, target, label)


def test_misbehaving_plugin_is_registered_like_any_other():
    for cls in MISBEHAVING:
        item = registry.get_attack(cls.name)
        assert item.plugin.name == PLUGIN and item.plugin.version == "6.6.6" and not item.plugin.builtin


def test_out_of_model_output_is_projected_never_a_free_success(tiny_model, tiny_batch):
    """x + 10 lands on the box corner; its success is whatever the projected point really does."""
    x, y = tiny_batch
    result = run_attack(tiny_model, "test_add_ten", x, y, constraint=LinfBall(0.05))
    assert float((result.x_adv - x).abs().max()) <= 0.05 + TOL
    assert torch.equal(result.x_adv, (x + 0.05).clamp(max=1.0))
    assert result.plugin == {"name": PLUGIN, "distribution": None, "version": "6.6.6"}
    assert result.summary()["plugin"]["version"] == "6.6.6"
