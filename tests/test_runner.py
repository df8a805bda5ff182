"""The runner's guarantees hold whatever the attack plugin does."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from advkit.attack import Attack
from advkit.constraints import LinfBall, NonNegative
from advkit.models import ModelAdapter
from advkit.runner import BudgetExceeded, ThreatModelViolation, run_attack


@dataclass(kw_only=True)
class AddTen(Attack):
    """Misbehaving: returns x + 10, far outside any threat model."""

    name = "add_ten"

    def run(self, problem):
        return problem.x + 10


@dataclass(kw_only=True)
class Boom(Attack):
    """Raises half-way, after switching the model to train mode."""

    name = "boom"

    def run(self, problem):
        problem.model.module.train()
        raise RuntimeError("boom")


@dataclass(kw_only=True)
class InPlace(Attack):
    """Overwrites its input in place and returns it."""

    name = "in_place"

    def run(self, problem):
        problem.x.add_(0.01)
        return problem.x


@dataclass(kw_only=True)
class ReturnsNaN(Attack):
    """Returns NaN."""

    name = "returns_nan"

    def run(self, problem):
        return torch.full_like(problem.x, float("nan"))


@dataclass(kw_only=True)
class GreedyForBackward(Attack):
    """Uses 3 backward passes per sample whatever the budget."""

    name = "greedy"

    def run(self, problem):
        x = problem.x.clone().requires_grad_(True)
        for _ in range(3):
            problem.model(x).sum().backward()
        return problem.x


def test_output_outside_threat_model_is_projected_not_reported(tiny_model, tiny_batch):
    x, y = tiny_batch
    result = run_attack(tiny_model, AddTen(), x, y, constraint=LinfBall(0.1) & NonNegative())
    delta = result.x_adv - x
    assert float(delta.abs().max()) <= 0.1 + 1e-6
    assert float(delta.min()) >= -1e-6
    assert float(result.x_adv.max()) <= 1 + 1e-6  # the model's box always applies
    # success is the fresh forward pass on the projected point
    with torch.no_grad():
        expected = tiny_model.module(result.x_adv).argmax(1) != y
    assert torch.equal(result.success, expected)


def test_model_mode_restored_even_on_exceptions(tiny_model, tiny_batch):
    x, y = tiny_batch
    tiny_model.module.train()
    with pytest.raises(RuntimeError, match="boom"):
        run_attack(tiny_model, Boom(), x, y, eps=0.1)
    assert tiny_model.module.training
    assert all(m.training for m in tiny_model.module.modules())
    tiny_model.module.eval()
    with pytest.raises(RuntimeError, match="boom"):
        run_attack(tiny_model, Boom(), x, y, eps=0.1)
    assert not any(m.training for m in tiny_model.module.modules())


def test_attack_runs_in_eval_mode(tiny_model, tiny_batch):
    x, y = tiny_batch
    seen = []

    @dataclass(kw_only=True)
    class Spy(Attack):
        name = "spy"

        def run(self, problem):
            seen.append(any(m.training for m in problem.model.module.modules()))
            return problem.x

    tiny_model.module.train()
    run_attack(tiny_model, Spy(), x, y, eps=0.1)
    assert seen == [False]
    assert tiny_model.module.training


def test_input_tensor_is_never_modified(tiny_model, tiny_batch):
    x, y = tiny_batch
    before = x.clone()
    run_attack(tiny_model, InPlace(), x, y, eps=0.1)
    assert torch.equal(x, before)


def test_non_finite_output_is_rejected(tiny_model, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ThreatModelViolation, match="NaN"):
        run_attack(tiny_model, ReturnsNaN(), x, y, eps=0.1)


def test_budget_overrun_is_refused(tiny_model, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(BudgetExceeded):
        run_attack(tiny_model, GreedyForBackward(), x, y, eps=0.1, budget=2)
    result = run_attack(tiny_model, GreedyForBackward(), x, y, eps=0.1, budget=3)
    assert result.backward_passes == 3 * len(x)


def test_pass_counts_come_from_the_model(tiny_model, tiny_batch):
    x, y = tiny_batch
    seen = []
    hook = tiny_model.module.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    try:
        result = run_attack(tiny_model, "pgd", x, y, eps=0.1, steps=5)
    finally:
        hook.remove()
    assert result.backward_passes == 5 * len(x)
    # 5 steps, plus the last update of each sample not fooled before it; the module also saw the runner's
    # output probe (2 x 2 rows), its clean check and its re-check (one pass per sample each), which are not the
    # attack's passes, and the layout check (one pass per input and layout, on the module's first run: advkit.layout),
    # which the result reports.
    assert 5 * len(x) + int((~result.success).sum()) <= result.forward_passes <= 6 * len(x)
    assert result.extra["layout"]["check_forward_passes"] == 8
    assert sum(seen) == result.forward_passes + 2 * 2 + 2 * len(x) + 8


def test_global_rng_untouched_and_seed_reproducible(tiny_model, tiny_batch):
    x, y = tiny_batch
    state = torch.get_rng_state()
    a = run_attack(tiny_model, "pgd", x, y, eps=0.2, steps=3, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = run_attack(tiny_model, "pgd", x, y, eps=0.2, steps=3, seed=7)
    c = run_attack(tiny_model, "pgd", x, y, eps=0.2, steps=3, seed=8)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_result_summary_fields(tiny_model, tiny_batch):
    x, y = tiny_batch
    summary = run_attack(tiny_model, "fgsm", x, y, eps=0.1).summary()
    for key in [
        "model",
        "attack",
        "eps",
        "bounds",
        "n",
        "success_rate",
        "mean_confidence",
        "mean_linf",
        "max_linf",
        "mean_l2",
        "forward_passes",
        "backward_passes",
        "seconds",
        "seed",
        "constraints",
        "plugin",
    ]:
        assert key in summary
    assert summary["eps_01"] == pytest.approx(0.05)
    assert summary["plugin"]["name"] == "fgsm"
    assert summary["backward_passes"] == len(x)


def test_box_defaults_to_model_bounds(tiny_model, tiny_batch):
    x, y = tiny_batch
    result = run_attack(tiny_model, "pgd", x, y, eps=1.5, steps=3)
    assert float(result.x_adv.min()) >= -1 - 1e-6 and float(result.x_adv.max()) <= 1 + 1e-6
    assert "box" in result.constraints


def test_fgsm_returns_its_one_step_with_one_forward_pass_per_sample(tiny_model, tiny_batch):
    x, y = tiny_batch
    result = run_attack(tiny_model, "fgsm", x, y, eps=0.1)
    x_grad = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(tiny_model.module(x_grad), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_grad)
    expected = (x + 0.1 * grad.sign()).clamp(-1, 1)
    assert torch.allclose(result.x_adv, expected, atol=1e-6)
    assert result.forward_passes == len(x) and result.backward_passes == len(x)


def test_a_model_that_works_in_place_cannot_touch_the_callers_tensors(tiny_model, tiny_batch):
    """nn.ReLU(inplace=True) as the first layer used to rewrite rows 0-1 of the caller's x (the output probe ran on a
    view), and the determinism check then blamed dropout. Every model call now gets advkit's own copy."""
    from torch import nn

    from advkit.models import ModelAdapter

    x, y = tiny_batch
    module = nn.Sequential(nn.ReLU(inplace=True), tiny_model.module)
    model = ModelAdapter(
        module, name="in_place", bounds=(-1.0, 1.0), input_shape=(1, 8, 8), class_names=[str(i) for i in range(10)]
    )
    y = model.predict(x).argmax(1)
    before, labels = x.clone(), y.clone()
    for attack in ("pgd", "fgsm", "untargeted"):
        result = run_attack(model, attack, x, y, eps=0.2, seed=0, **({"steps": 3} if attack != "fgsm" else {}))
        assert torch.equal(x, before) and torch.equal(y, labels), attack
        assert result.x.data_ptr() != x.data_ptr() and result.y.data_ptr() != y.data_ptr()
        assert float((result.x_adv - x).abs().max()) <= 0.2 + 1e-6  # no point moved by the model itself
        with torch.no_grad():
            assert torch.equal(result.pred, module(result.x_adv.clone()).argmax(1)), attack


def test_samples_the_model_already_gets_wrong_are_reported_as_such(tiny_model, tiny_batch):
    """Misclassified inputs succeed without an attack: the result says which (clean_correct) and the success rate is
    over the correctly classified ones, next to the raw rate."""
    x, y = tiny_batch
    wrong = y.clone()
    wrong[:4] = (y[:4] + 1) % 10
    result = run_attack(tiny_model, "fgsm", x, wrong, eps=0.01, seed=0)
    assert torch.equal(result.clean_correct, torch.arange(len(y)) >= 4)
    assert bool(result.success[:4].all())  # a wrong class from the start
    summary = result.summary()
    correct = result.clean_correct
    assert summary["n_clean_correct"] == 8 and summary["clean_accuracy"] == pytest.approx(8 / 12)
    assert summary["success_rate"] == pytest.approx(float(result.success[correct].float().mean()))
    assert summary["raw_success_rate"] == pytest.approx(float(result.success.float().mean()))
    assert summary["n_success"] == int(result.success[correct].sum())
    assert summary["robust_accuracy"] == pytest.approx(float(result.robust.float().mean()))


def _module_rows(model):
    """The rows the model's module sees (a list that fills while the hook is on) and the hook."""
    seen: list[int] = []
    hook = model.module.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    return seen, hook


def test_a_zero_start_takes_its_clean_check_from_its_own_first_step(tiny_model, tiny_batch):
    """The first step of a zero start evaluates x itself: its logits are the clean check's, so the module sees one
    pass per sample less than with a random start, and the clean predictions are the model's own."""
    x, y = tiny_batch
    wrong = y.clone()
    wrong[:3] = (y[:3] + 1) % 10  # three samples the model gets wrong from the start
    extra = {}
    for random_start in (False, True):
        seen, hook = _module_rows(tiny_model)
        try:
            result = run_attack(tiny_model, "pgd", x, wrong, eps=0.1, steps=3, random_start=random_start)
        finally:
            hook.remove()
        assert torch.equal(result.clean_correct, torch.arange(len(y)) >= 3)
        # the runner's own passes: probe, clean check, re-check (and the layout check on the module's first run)
        extra[random_start] = sum(seen) - result.forward_passes - result.extra["layout"].get("check_forward_passes", 0)
    assert extra[True] - extra[False] == len(y)


@dataclass(kw_only=True)
class ZeroesItsInputsThenSteps(Attack):
    """Overwrites its inputs with zeros, then runs one zero-start engine step on them."""

    name = "zeroes_then_steps"

    def run(self, problem):
        from advkit.engine import GradientStep, optimize
        from advkit.objectives import cross_entropy
        from advkit.steps import sign_step

        problem.x.zero_()
        update = GradientStep(sign_step, 0.01)
        return optimize(problem, update=update, objective=cross_entropy, steps=1, init="zeros").x_adv


def test_the_clean_check_is_of_the_callers_inputs_whatever_the_attack_evaluates(tiny_model, tiny_batch):
    """An attack that evaluates other points than the inputs (here: it zeroed its copy first) gives no clean logits:
    clean_correct is still the model's verdict on the caller's x."""
    x, y = tiny_batch
    on_zeros = tiny_model.predict(torch.zeros_like(x)).argmax(1) == y
    assert not bool(on_zeros.all())  # the zeroed inputs would give another verdict
    result = run_attack(tiny_model, ZeroesItsInputsThenSteps(), x, y, eps=0.1)
    assert bool(result.clean_correct.all())


class _NegatedCalls(ModelAdapter):
    """An adapter whose counted calls are not its logits (as a gradient estimator's average is not)."""

    calls_are_logits = False

    def __call__(self, x):
        return -super().__call__(x)


def test_a_model_whose_calls_are_not_its_logits_gets_its_own_clean_check(tiny_model, tiny_batch):
    x, y = tiny_batch
    model = _NegatedCalls(
        tiny_model.module, name="negated", bounds=tiny_model.bounds, input_shape=tiny_model.input_shape,
        class_names=tiny_model.class_names,
    )  # fmt: skip
    seen, hook = _module_rows(model)
    try:
        result = run_attack(model, "pgd", x, y, eps=0.1, steps=2, random_start=False)
    finally:
        hook.remove()
    assert bool(result.clean_correct.all())  # the model's own logits, not the negated calls'
    checked = result.extra["layout"]["check_forward_passes"]  # the layout check's (advkit.layout)
    assert sum(seen) - result.forward_passes - checked == 2 * 2 + 2 * len(y)  # probe, clean check and re-check


def test_a_randomized_model_gets_its_clean_check_before_the_attack(tiny_model, tiny_batch):
    """A randomized model's clean check stays one pass of its own, before the attack (its draws come in that order)."""
    x, y = tiny_batch
    model = ModelAdapter(
        tiny_model.module, name="declared_random", bounds=tiny_model.bounds, input_shape=tiny_model.input_shape,
        class_names=tiny_model.class_names, metadata={"stochastic": True},
    )  # fmt: skip
    order: list[str] = []
    hook = model.module.register_forward_hook(
        lambda module, args, out: order.append("grad" if torch.is_grad_enabled() else "no_grad")
    )
    try:
        run_attack(model, "pgd", x, y, eps=0.1, steps=2, random_start=False)
    finally:
        hook.remove()
    first_step = order.index("grad")
    assert order[:first_step] == ["no_grad"] * 3  # the output probe twice, then the clean check
