"""The engine: active set, budgets, exact pass counts, best-so-far, restarts, step rules."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from advkit import engine
from advkit.constraints import Binary, Box, LinfBall, NonNegative
from advkit.criteria import Misclassified
from advkit.engine import GradientStep, Problem, optimize
from advkit.objectives import cross_entropy
from advkit.steps import l2_step, sign_step, std_step


def make_problem(model, x, y, eps=0.5, confidence=0.0, budget=None, constraint=None, seed=0):
    constraint = constraint if constraint is not None else LinfBall(eps) & Box(*model.bounds)
    return Problem(
        model=model,
        x=x,
        y=y,
        constraint=constraint,
        criterion=Misclassified(confidence),
        budget=budget,
        generator=torch.Generator().manual_seed(seed),
    )


def test_samples_leave_once_successful_and_counts_are_exact(tiny_model, tiny_batch):
    x, y = tiny_batch
    problem = make_problem(tiny_model, x, y, eps=0.5)
    f0, b0 = tiny_model.counter.snapshot()
    out = optimize(problem, update=GradientStep(sign_step, 0.015), objective=cross_entropy, steps=30, early_stop=True)
    # Per-sample counts add up to exactly what the model saw.
    assert int(out.forward_counts.sum()) == tiny_model.counter.forward - f0
    assert int(out.backward_counts.sum()) == tiny_model.counter.backward - b0
    # Some samples finished early (fewer backward passes than steps), and those are successful.
    early = out.backward_counts < 30
    assert early.any()
    assert out.success[early].all()
    # A successful sample stopped at its first successful point: it did exactly one forward per backward.
    assert torch.equal(out.forward_counts[early], out.backward_counts[early])


def test_without_early_stop_everyone_runs_every_step(tiny_model, tiny_batch):
    x, y = tiny_batch
    out = optimize(
        make_problem(tiny_model, x, y, eps=0.05),
        update=GradientStep(sign_step, 0.01),
        objective=cross_entropy,
        steps=7,
        early_stop=False,
    )
    assert torch.all(out.backward_counts == 7)
    # 7 steps, plus an evaluation of the last update for the samples none of points 0..6 fooled (the others keep their
    # best point); a 6-step run evaluates exactly points 0..6 (zero start and sign steps: the same path).
    before_last = optimize(
        make_problem(tiny_model, x, y, eps=0.05),
        update=GradientStep(sign_step, 0.01),
        objective=cross_entropy,
        steps=6,
        early_stop=False,
    ).success
    assert before_last.any() and not before_last.all()
    assert torch.equal(out.forward_counts, 7 + (~before_last).long())


@pytest.mark.parametrize("restarts", [1, 3])
def test_budget_is_never_exceeded(tiny_model, tiny_batch, restarts):
    x, y = tiny_batch
    problem = make_problem(tiny_model, x, y, eps=0.05, confidence=0.99, budget=5)
    _, b0 = tiny_model.counter.snapshot()
    out = optimize(
        problem,
        update=GradientStep(sign_step, 0.01),
        objective=cross_entropy,
        steps=20,
        restarts=restarts,
        init="random",
    )
    assert int(out.backward_counts.max()) <= 5
    assert tiny_model.counter.backward - b0 <= 5 * len(x)


def test_restarts_run_only_on_samples_not_yet_fooled(tiny_model, tiny_batch):
    x, y = tiny_batch
    problem = make_problem(tiny_model, x, y, eps=0.06)
    out = optimize(
        problem,
        update=GradientStep(sign_step, 0.02),
        objective=cross_entropy,
        steps=4,
        restarts=3,
        early_stop=False,
        init="random",
    )
    first_only = out.backward_counts == 4
    # Whoever got a second restart had not been fooled by the first; every restart runs whole.
    assert torch.all(out.backward_counts % 4 == 0)
    assert first_only.any() and (~first_only).any()
    assert out.success[first_only].all()


def test_best_point_is_feasible_and_returned_for_binary_sets(tiny_model, tiny_batch):
    x, y = tiny_batch
    feasible = NonNegative() & Binary(0.25) & Box(*tiny_model.bounds)
    problem = make_problem(tiny_model, x, y, constraint=feasible)
    out = optimize(problem, update=GradientStep(sign_step, 0.0625), objective=cross_entropy, steps=15)
    delta = out.x_adv - x
    assert bool(feasible.contains(delta, x).all())
    values = delta.unique()
    assert all(torch.isclose(v, torch.tensor(0.0)) or torch.isclose(v, torch.tensor(0.25)) for v in values)


def test_step_rules():
    g = torch.randn(3, 1, 5, 5) * torch.tensor([1.0, 10.0, 0.01]).view(3, 1, 1, 1)
    assert torch.equal(sign_step(g), g.sign())
    assert torch.allclose(l2_step(g).flatten(1).norm(dim=1), torch.ones(3))
    # S8's rule: alpha = 1 / (d.std() + 1e-8) per sample
    expected = torch.stack([gi / (gi.std() + 1e-8) for gi in g])
    assert torch.allclose(std_step(g), expected)


def test_no_numpy_or_item_in_the_step_loop():
    source = inspect.getsource(engine.optimize)
    assert ".item(" not in source and "numpy" not in source and ".tolist(" not in source
    # APGD's per-step update: no host sync either (bool(t), int(t) and float(t) read a tensor back like .item())
    from advkit.adaptive import AdaptiveMomentumStep

    for method in (
        AdaptiveMomentumStep.__call__,
        AdaptiveMomentumStep.observe,
        AdaptiveMomentumStep._halve_at_checkpoint,
    ):
        source = inspect.getsource(method)
        assert ".item(" not in source and "numpy" not in source and ".tolist(" not in source, method.__name__
        assert not re.search(r"\b(bool|int|float)\(", source), method.__name__


def test_per_sample_step_size_is_indexed_by_active_sample():
    step_sizes = torch.tensor([0.1, 0.2, 0.3, 0.4])
    step = GradientStep(sign_step, step_sizes)
    x = torch.zeros(2, 1, 2, 2)
    grad = torch.ones(2, 1, 2, 2)
    idx = torch.tensor([3, 1])  # the active samples are global samples 3 and 1
    out = step(torch.zeros_like(x), grad, x, idx, LinfBall(1.0))
    assert torch.allclose(out.flatten(1).amax(1), torch.tensor([0.4, 0.2]))


def test_budget_counts_across_optimize_calls(tiny_model, tiny_batch):
    """An attack that calls the engine twice still gets at most ``budget`` passes per sample."""
    x, y = tiny_batch
    problem = make_problem(tiny_model, x, y, eps=0.01, confidence=0.99, budget=6)
    first = optimize(problem, update=GradientStep(sign_step, 0.001), objective=cross_entropy, steps=4)
    second = optimize(problem, update=GradientStep(sign_step, 0.001), objective=cross_entropy, steps=4)
    assert torch.all(first.backward_counts == 4) and torch.all(second.backward_counts == 2)
    assert torch.all(problem.backward_counts == 6)


@pytest.mark.parametrize("init", ["blank", "noise"])
def test_image_starts_are_feasible_and_as_declared(tiny_model, tiny_batch, init):
    x, y = tiny_batch
    problem = make_problem(tiny_model, x, y, constraint=Box(*tiny_model.bounds))
    out = optimize(
        problem,
        update=GradientStep(sign_step, 0.0),
        objective=cross_entropy,
        steps=1,
        init=init,
        early_stop=False,
        variable="image",
    )
    if init == "blank":
        assert torch.all(out.x_adv == 0)  # the zero image of the model's units, whatever x was
    else:
        assert abs(float(out.x_adv.mean())) < 0.1 and 0.05 < float(out.x_adv.std()) < 0.4
        assert float(out.x_adv.min()) >= -1 and float(out.x_adv.max()) <= 1


def test_engine_reports_each_evaluated_point_to_observe(tiny_model, tiny_batch):
    x, y = tiny_batch
    seen = []

    class Recording(GradientStep):
        def observe(self, idx, delta, loss):
            seen.append((idx.clone(), loss.clone()))

    problem = make_problem(tiny_model, x, y)
    out = optimize(
        problem, update=Recording(sign_step, 0.01), objective=cross_entropy, steps=3, early_stop=False, record=True
    )
    assert len(seen) == 3
    for step, (idx, loss) in enumerate(seen):
        assert torch.equal(idx, torch.arange(len(x)))
        assert torch.allclose(loss, out.history[step])


def test_unknown_variable_and_init_are_refused(tiny_model, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ValueError, match="unknown variable"):
        optimize(
            make_problem(tiny_model, x, y),
            update=GradientStep(sign_step, 0.1),
            objective=cross_entropy,
            steps=1,
            variable="pixels",
        )
    with pytest.raises(ValueError, match="unknown init"):
        optimize(
            make_problem(tiny_model, x, y),
            update=GradientStep(sign_step, 0.1),
            objective=cross_entropy,
            steps=1,
            init="gray",
        )


def test_a_tighter_set_is_optimized_over_while_the_bookkeeping_stays_on_the_problem(tiny_model, tiny_batch):
    """optimize(constraint=...) searches a subset (here binary perturbations) and counts on the caller's problem."""
    from advkit.constraints import Binary

    x, y = tiny_batch
    problem = make_problem(tiny_model, x, y, eps=0.2)
    out = optimize(
        problem,
        update=GradientStep(sign_step, 0.015),
        objective=cross_entropy,
        steps=4,
        early_stop=False,
        constraint=problem.constraint & Binary(0.2),
    )
    delta = out.x_adv - x
    assert bool(((delta.abs() < 1e-6) | ((delta - 0.2).abs() < 1e-6)).all())  # every pixel moved by 0 or by 0.2
    assert torch.equal(problem.backward_counts, torch.full((len(x),), 4))
    with pytest.raises(TypeError, match="does not apply to variable='universal'"):
        optimize(
            problem,
            update=GradientStep(sign_step, 0.015),
            objective=cross_entropy,
            steps=1,
            variable="universal",
            constraint=problem.constraint,
        )


def test_binary_attack_reports_per_sample_passes(tiny_model, tiny_batch):
    from advkit.runner import run_attack

    x, y = tiny_batch
    result = run_attack(tiny_model, "binary", x, y, eps=0.2, steps=5, budget=5)
    assert result.backward_counts is not None and int(result.backward_counts.max()) <= 5
    assert int(result.backward_counts.sum()) == result.backward_passes


class RowsPerCall(torch.nn.Module):
    """Records the rows of every step (a forward pass that builds a graph), one sample at a time inside."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.step_rows = inner, []

    def forward(self, x):
        if x.requires_grad:
            self.step_rows.append(x.shape[0])
        return torch.cat([self.inner(row) for row in x.split(1)])


@pytest.mark.parametrize("adaptive", [False, True])
def test_a_window_refills_as_rows_leave_and_changes_no_result(tiny_model, tiny_batch, adaptive):
    """With early stopping, restarts and a budget, a window of 4 rows gives every sample the same point, success and
    passes as stepping all 12 at once, and every step but the last few runs on a full window."""
    from advkit.adaptive import AdaptiveMomentumStep
    from advkit.models import ModelAdapter

    x, y = tiny_batch
    results, rows = {}, {}
    for window in (None, 4):
        recorder = RowsPerCall(tiny_model.module)
        model = ModelAdapter(
            recorder, name="rows", bounds=(-1.0, 1.0), input_shape=(1, 8, 8), class_names=tiny_model.class_names
        )
        problem = make_problem(model, x, y, eps=0.05, budget=10)
        problem.window = window
        update = AdaptiveMomentumStep(0.1, 6) if adaptive else GradientStep(sign_step, 0.015)
        results[window] = optimize(
            problem, update=update, objective=cross_entropy, steps=6, init="random", restarts=3, early_stop=True
        )
        rows[window] = recorder.step_rows
    whole, windowed = results[None], results[4]
    assert 0 < int(whole.success.sum()) < 12  # some samples leave early, some use their restarts
    assert int(whole.backward_counts.max()) == 10  # the budget binds across restarts
    for field in ("x_adv", "success", "best_objective", "forward_counts", "backward_counts"):
        assert torch.equal(getattr(windowed, field), getattr(whole, field)), field
    assert max(rows[4]) == 4 and sum(rows[4]) == int(whole.backward_counts.sum())
    # the window stays full while samples wait: short steps only where a restart's queue ran dry (at most the 6 steps
    # of each of the 3 restarts' tails), not a shrinking chunk per 4 samples
    short = sum(r < 4 for r in rows[4])
    assert short <= 3 * 6 and len(rows[4]) - short >= 5


@pytest.mark.parametrize("window", [None, 6, 2])
def test_a_group_steps_together_and_stops_at_its_first_success(tiny_model, tiny_batch, window):
    """Rows in groups of 3 (Problem.group_size) take the steps each would take alone until one of the group succeeds:
    then every row of the group leaves at that step (no evaluation of the others); a group stops only on its own
    rows. A window of 6 admits whole groups; a window of 2, narrower than a group, steps each group in pieces of 2
    rows. None of this changes a row's points."""
    from advkit.models import ModelAdapter

    x, y = tiny_batch
    alone = optimize(
        make_problem(tiny_model, x, y, eps=0.05), update=GradientStep(sign_step, 0.01), objective=cross_entropy,
        steps=8, early_stop=True,
    )  # fmt: skip
    recorder = RowsPerCall(tiny_model.module)
    model = ModelAdapter(
        recorder, name="rows", bounds=(-1.0, 1.0), input_shape=(1, 8, 8), class_names=tiny_model.class_names
    )
    problem = make_problem(model, x, y, eps=0.05)
    problem.group_size, problem.window = 3, window
    grouped = optimize(problem, update=GradientStep(sign_step, 0.01), objective=cross_entropy, steps=8, early_stop=True)
    solo_steps = alone.backward_counts.view(4, 3)
    solo_success = alone.success.view(4, 3)
    assert solo_success.any(1).sum() >= 2 and not solo_success.all()  # groups that stop early and ones that do not
    stop = torch.where(solo_success, solo_steps, torch.full_like(solo_steps, 8)).min(1).values
    assert torch.equal(grouped.backward_counts.view(4, 3), stop.view(4, 1).expand(4, 3))  # in step, stopped together
    reached = solo_success & (solo_steps == stop.view(4, 1))  # the rows that succeeded at their group's stop
    assert torch.equal(grouped.success.view(4, 3), reached)
    assert torch.equal(grouped.x_adv[reached.flatten()], alone.x_adv[reached.flatten()])
    # the rows of a group that stopped on another row's success are not evaluated again; the others once at the end
    evaluated = grouped.forward_counts - grouped.backward_counts
    assert torch.equal(evaluated.view(4, 3), (~solo_success.any(1)).long().view(4, 1).expand(4, 3))
    assert max(recorder.step_rows) == {None: 12, 6: 6, 2: 2}[window]
    if window == 6:
        assert all(rows % 3 == 0 for rows in recorder.step_rows)  # whole groups only


def test_group_size_must_divide_the_rows(tiny_model, tiny_batch):
    x, y = tiny_batch
    problem = make_problem(tiny_model, x, y)
    problem.group_size = 5
    with pytest.raises(ValueError, match="group_size"):
        optimize(problem, update=GradientStep(sign_step, 0.01), objective=cross_entropy, steps=2)


class WidestCall(torch.nn.Module):
    """Records the most rows of any call (steps and evaluations), one sample at a time inside."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.widest = inner, 0

    def forward(self, x):
        self.widest = max(self.widest, x.shape[0])
        return torch.cat([self.inner(row) for row in x.split(1)])


@pytest.mark.parametrize("eps", [0.02, 0.05])
def test_no_evaluation_is_wider_than_the_window(tiny_model, eps):
    """Rows that leave unevaluated over several steps (done with a restart, not fooled) are evaluated together once
    they fill a window: in pieces of the window's size, never in one call of up to twice as many rows."""
    from advkit.models import ModelAdapter

    recorder = WidestCall(tiny_model.module)
    model = ModelAdapter(
        recorder, name="widest", bounds=(-1.0, 1.0), input_shape=(1, 8, 8), class_names=tiny_model.class_names
    )
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    y = model.predict(x).argmax(1)
    recorder.widest = 0
    problem = make_problem(model, x, y, eps=eps)
    problem.window = 4
    out = optimize(
        problem, update=GradientStep(sign_step, 0.01), objective=cross_entropy, steps=6, init="random", restarts=3
    )
    assert 0 < int(out.success.sum()) < 40
    assert recorder.widest == 4


@pytest.mark.parametrize("early_stop", [True, False])
def test_a_group_restarts_only_if_none_of_its_rows_succeeded(tiny_model, tiny_batch, early_stop):
    """With 2 restarts, a group that one row broke in the first restart stops there (all rows at that step, or after
    its steps without early stopping), and every other group runs its second restart whole: a group's rows always
    spend the same passes."""
    x, y = tiny_batch

    def run(restarts: int):
        problem = make_problem(tiny_model, x, y, eps=0.02)
        problem.group_size = 3
        return optimize(
            problem, update=GradientStep(sign_step, 0.01), objective=cross_entropy, steps=4, init="random",
            restarts=restarts, early_stop=early_stop,
        )  # fmt: skip

    once, twice = run(1), run(2)
    counts = twice.backward_counts.view(4, 3)
    assert torch.equal(counts, counts[:, :1].expand(4, 3))  # in lockstep through both restarts
    broken_first = once.success.view(4, 3).any(1)
    assert 0 < int(broken_first.sum()) < 4
    assert torch.equal(counts[broken_first], once.backward_counts.view(4, 3)[broken_first])  # no second restart
    assert bool((counts[~broken_first] > 4).all())  # the others restarted
