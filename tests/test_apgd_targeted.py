"""The improved targeted attack: at least as successful as `targeted` at an equal budget; APGD's schedule."""

from __future__ import annotations

import pytest
import torch

from advkit.adaptive import AdaptiveMomentumStep, checkpoints
from advkit.constraints import LinfBall
from advkit.plugins.builtin.apgd_targeted import targeted_dlr
from advkit.runner import run_attack


@pytest.mark.parametrize("eps", [0.2, 0.25])
def test_at_least_as_strong_as_targeted_at_equal_budget(zoo_cnn, mnist_test, correct_digits, eps):
    x, y = correct_digits(zoo_cnn, mnist_test, 40, label=1)
    budget = 60
    plain = run_attack(zoo_cnn, "targeted", x, y, eps=eps, target=8, budget=budget, confidence=0.0)
    better = run_attack(zoo_cnn, "apgd_targeted", x, y, eps=eps, target=8, budget=budget, steps=60)
    assert better.summary()["max_backward_per_sample"] <= budget
    assert plain.summary()["max_backward_per_sample"] <= budget
    assert better.success_rate >= plain.success_rate


def test_checkpoints_follow_apgd():
    marks = checkpoints(100)
    assert marks[:3] == [0, 22, 41]
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    assert all(g >= 6 for g in gaps) and gaps == sorted(gaps, reverse=True)


def _step(steps=100):
    step = AdaptiveMomentumStep(0.5, steps=steps)
    step.start(torch.arange(3), 3)
    return step


def test_first_step_has_no_momentum_and_then_momentum_applies():
    step, x, c = _step(), torch.zeros(3, 2), LinfBall(1.0)
    step.observe(torch.arange(3), torch.zeros(3, 2), torch.zeros(3))
    d1 = step(torch.zeros(3, 2), torch.ones(3, 2), x, torch.arange(3), c)
    assert torch.allclose(d1, torch.full((3, 2), 0.5))
    step.observe(torch.tensor([2]), d1[[2]], torch.ones(1))
    d2 = step(d1[[2]], torch.ones(1, 2), x[[2]], torch.tensor([2]), c)
    # z = 1.0; moved = 0.5 + 0.75 * 0.5 + 0.25 * (0.5 - 0) = 1.0
    assert torch.allclose(d2, torch.ones(1, 2))
    step.start(torch.tensor([2]), 3)
    assert int(step.state["count"][2]) == 0
    # the restarted sample takes a zeroed row on its next step and makes a plain step, without momentum
    step.observe(torch.tensor([2]), d2, torch.zeros(1))
    d3 = step(d2, -torch.ones(1, 2), x[[2]], torch.tensor([2]), c)
    assert torch.allclose(d3, torch.full((1, 2), 0.5))
    assert torch.equal(step.rows["previous"][step.row_of[2]], d2[0])  # its row now holds the point it left


def test_apgd_keeps_input_sized_state_for_the_active_rows_only():
    """A window of 4 over 12 samples: the previous/best points and gradients take 4 rows, not 12, with the same
    results as the whole batch (the engine test checks the results)."""
    step = AdaptiveMomentumStep(0.5, steps=4)
    step.start(torch.arange(12), 12)
    c, x = LinfBall(1.0), torch.zeros(12, 2)
    for active in (torch.arange(4), torch.tensor([0, 1, 4, 5]), torch.tensor([4, 5, 6, 7])):
        fresh = step._waiting[active].clone()
        step.observe(active, torch.zeros(4, 2), torch.zeros(4))
        step(torch.zeros(4, 2), torch.ones(4, 2), x[active], active, c)
        rows = step.row_of[active]
        assert len(set(rows.tolist())) == 4 and not bool(step._waiting[active].any())
        assert bool(fresh.any()) or step.rows["previous"].shape[0] == 4
    assert all(t.shape[0] == 4 for t in step.rows.values())


def test_stalled_sample_halves_at_checkpoint_and_restarts_from_its_best_point():
    steps = 10
    mark = checkpoints(steps)[1]
    step, c = _step(steps), LinfBall(10.0)
    idx, x = torch.arange(3), torch.zeros(3, 2)
    delta = torch.zeros(3, 2)
    best = None
    for k in range(mark):
        # Sample 0 improves every step; samples 1 and 2 peak at step 0 and then only fall.
        loss = torch.tensor([float(k), -float(k), -float(k)])
        step.observe(idx, delta, loss)
        if k == 0:
            best = delta.clone()
        delta = step(delta, torch.ones(3, 2), x, idx, c)
    step.observe(idx, delta, torch.tensor([float(mark), -10.0, -10.0]))
    out = step(delta, -torch.ones(3, 2), x, idx, c)
    eta = step.state["eta"]
    assert float(eta[0]) == 0.5 and float(eta[1]) == 0.25 and float(eta[2]) == 0.25
    # Halved samples restart from their best point with the best point's gradient (+1), no momentum.
    assert torch.allclose(out[1:], best[1:] + 0.25)


def test_targeted_dlr_is_scale_invariant_and_positive_only_past_the_true_class():
    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0, -2.0], [0.0, 4.0, 1.0, -1.0, -2.0]])
    y, t = torch.tensor([0, 2]), torch.tensor([1, 1])
    value = targeted_dlr(logits, y, t)
    assert torch.allclose(targeted_dlr(3 * logits, y, t), value)
    assert value[0] < 0 < value[1]


def test_targets_at_once_fool_exactly_what_targets_in_turn_fool_whatever_the_batch_size(
    tiny_model, tiny_batch, monkeypatch
):
    """schedule="parallel" attacks each sample's 3 MALT targets as one group of rows: the same samples are fooled as
    in turn (the same steps per target), a robust sample spends the same passes (MALT's 9 and 3 x 4 steps), and whole,
    in windows of 12 and 5 rows, in a window of 2 (narrower than a group: stepped in pieces) and with ``auto``, every
    per-sample result and pass count is the same and no model call sees more rows than the window."""
    from advkit import batching
    from tests.conftest import OneAtATime
    from tests.test_batching import Widest, adapter

    # auto climbs from 2 rows on 36 (not attacked whole)
    monkeypatch.setattr(batching, "FIRST_SIZE", {"cpu": 2, "other": 2})
    monkeypatch.setattr(batching, "WHOLE_BELOW", 3)
    x, y = tiny_batch
    options = dict(constraint=LinfBall(0.02), seed=3, targets="malt", top_k=3, steps=4, loss="dlr")
    in_turn = run_attack(adapter(OneAtATime(tiny_model.module), tiny_model, "exact"), "apgd_targeted", x, y, **options)
    assert 0 < int(in_turn.success.sum()) < 12
    runs, widest = {}, {}
    for size in (12, 5, 2, "auto"):
        recorder = Widest(OneAtATime(tiny_model.module))
        model = adapter(recorder, tiny_model, "exact")
        runs[size] = run_attack(model, "apgd_targeted", x, y, schedule="parallel", batch_size=size, **options)
        widest[size] = recorder.widest_step if size == "auto" else recorder.widest
        assert runs[size].extra["batch_size"]["mode"] == "window"
    assert widest[12] <= 12 and widest[5] <= 5 and widest[2] <= 2 and widest["auto"] < 36
    assert len(runs["auto"].extra["batch_size"]["ms_per_sample_step"]) >= 2  # full windows are whole groups of rows
    first = runs[12]
    assert torch.equal(first.success, in_turn.success)
    robust = ~in_turn.success
    assert torch.equal(first.backward_counts[robust], in_turn.backward_counts[robust])
    assert int(first.backward_counts[robust].max()) == 9 + 3 * 4
    for size, other in runs.items():
        for field in ("x_adv", "success", "pred", "backward_counts"):
            assert torch.equal(getattr(other, field), getattr(first, field)), (size, field)
        assert (other.forward_passes, other.backward_passes) == (first.forward_passes, first.backward_passes), size


def test_targets_at_once_share_a_budget_equally(tiny_model, tiny_batch):
    """Under a per-sample budget each of a sample's targets gets an equal share of what MALT left: 16 - 9 = 7
    passes give each of 3 targets 2 steps."""
    x, y = tiny_batch
    result = run_attack(
        tiny_model, "apgd_targeted", x, y, eps=0.005, targets="malt", top_k=3, steps=10, budget=16, schedule="parallel"
    )
    assert 0 < int(result.success.sum()) < 12
    assert torch.equal(result.backward_counts[~result.success], torch.full((int((~result.success).sum()),), 9 + 3 * 2))
    assert int(result.backward_counts.max()) <= 16
