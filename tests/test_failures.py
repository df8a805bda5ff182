"""Failures: NaN/inf logits and gradients are counted and never reported as success or robustness;
out-of-memory errors make the runner halve the batch and retry, with identical results."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from advkit.attack import Attack
from advkit.constraints import LinfBall
from advkit.devices import is_out_of_memory
from advkit.models import ModelAdapter
from advkit.runner import make_attack, run_attack
from tests.conftest import OneAtATime

pytestmark = pytest.mark.usefixtures("one_thread")


def adapter(module: nn.Module, like: ModelAdapter, name: str) -> ModelAdapter:
    return ModelAdapter(
        module, name=name, bounds=like.bounds, input_shape=like.input_shape, class_names=like.class_names
    )


# ---------------------------------------------------------------- NaN / inf


MARKED = torch.tensor([1, 4, 5])  # samples whose corner pixel is set to 0.9 (the models below misbehave on them)


def marked_batch(tiny_batch):
    x, y = tiny_batch
    x = x.clone()
    x[:, 0, 0, 0] = -0.9
    x[MARKED, 0, 0, 0] = 0.9
    return x, y


class NonFiniteLogits(nn.Module):
    """NaN (or inf) logits for inputs whose corner pixel is > 0.5."""

    def __init__(self, inner: nn.Module, value: float) -> None:
        super().__init__()
        self.inner, self.value = inner, value

    def forward(self, x):
        logits = self.inner(x)
        marked = (x[:, 0, 0, 0] > 0.5).view(-1, 1)
        return torch.where(marked, torch.full_like(logits, self.value), logits)


class _NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        marked = (x[:, 0, 0, 0] > 0.5).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(marked, torch.full_like(grad, float("nan")), grad)


class NaNGradient(nn.Module):
    """Finite logits, but a NaN input gradient for inputs whose corner pixel is > 0.5."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(_NaNGradient.apply(x))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", ["pgd", "untargeted", "apgd_targeted"])
def test_nonfinite_logits_are_counted_never_success_nor_robust(tiny_model, tiny_batch, name, value):
    x, y = marked_batch(tiny_batch)
    model = adapter(OneAtATime(NonFiniteLogits(tiny_model.module, value)), tiny_model, "nonfinite")
    clean = adapter(OneAtATime(tiny_model.module), tiny_model, "clean")
    attack = make_attack(name, steps=5)
    target = (y + 1) % 10 if attack.targeted else None
    result = run_attack(model, attack, x, y, constraint=LinfBall(0.05), target=target, seed=1)
    marked = torch.zeros(len(x), dtype=torch.bool)
    marked[MARKED] = True
    assert torch.equal(result.nonfinite, marked)
    assert not result.success[marked].any() and not result.robust[marked].any()
    assert torch.isfinite(result.x_adv).all()
    summary = result.summary()
    assert summary["nonfinite_logits"] == 3 and summary["nonfinite_gradients"] == 3
    assert summary["n_success"] == int((result.success & result.clean_correct).sum())
    assert summary["raw_success_rate"] == pytest.approx(float(result.success.float().mean()))
    assert summary["robust_accuracy"] == pytest.approx(float(result.robust.float().mean()))
    assert summary["misclassified_rate"] <= (len(x) - 3) / len(x)
    # The other samples are attacked exactly as if the misbehaving ones were not there.
    keep = ~marked
    alone = run_attack(
        clean,
        make_attack(name, steps=5),
        x[keep],
        y[keep],
        constraint=LinfBall(0.05),
        target=None if target is None else target[keep],
        seed=1,
    )
    assert torch.equal(result.x_adv[keep], alone.x_adv) and torch.equal(result.success[keep], alone.success)
    assert alone.extra["nonfinite_logits"] == 0 and alone.extra["nonfinite_gradients"] == 0


def test_nan_gradients_are_counted_and_make_no_step(tiny_model, tiny_batch):
    x, y = marked_batch(tiny_batch)
    model = adapter(NaNGradient(tiny_model.module), tiny_model, "nan_gradient")
    result = run_attack(model, "untargeted", x, y, constraint=LinfBall(0.05), steps=4, confidence=0.99)
    assert result.extra["nonfinite_gradients"] == 3 and result.extra["nonfinite_logits"] == 0
    assert torch.isfinite(result.x_adv).all()
    assert torch.equal(result.x_adv[MARKED], x[MARKED])  # zero gradient from a zero start: they never move


def test_universal_ignores_nonfinite_samples(tiny_model, tiny_batch):
    x, y = marked_batch(tiny_batch)
    model = adapter(NonFiniteLogits(tiny_model.module, float("nan")), tiny_model, "nonfinite")
    result = run_attack(model, "universal", x, y, constraint=LinfBall(0.3), steps=4)
    assert torch.isfinite(result.x_adv).all() and result.extra["nonfinite_logits"] == 3
    assert not result.success[MARKED].any()


@dataclass(kw_only=True)
class Noop(Attack):
    """Returns its input without calling the engine."""

    name = "noop"

    def run(self, problem):
        return problem.x


def test_attack_that_bypasses_the_engine_reports_unknown_gradients(tiny_model, tiny_batch):
    """Gradient failures are only known for the engine's steps; None says 'not known', not 'none'."""
    x, y = tiny_batch
    result = run_attack(tiny_model, Noop(), x, y, eps=0.1)
    assert result.extra["nonfinite_gradients"] is None and result.extra["nonfinite_logits"] == 0


# ---------------------------------------------------------------- out of memory


class RaisesOOM(nn.Module):
    """Raises an out-of-memory error when a forward pass sees more than ``limit`` samples."""

    def __init__(self, inner: nn.Module, limit: int, kind: str) -> None:
        super().__init__()
        self.inner, self.limit, self.kind = inner, limit, kind
        self.raised = 0

    def forward(self, x):
        if x.shape[0] > self.limit:
            self.raised += 1
            if self.kind == "cuda":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried "
                "to allocate 1234 bytes. out of memory"
            )
        return self.inner(x)


OOM_CASES = {
    "pgd-restarts": ("pgd", {"steps": 4, "restarts": 3}),
    "apgd": ("apgd_targeted", {"steps": 5, "restarts": 2}),
    "untargeted": ("untargeted", {"steps": 6}),
    "visualize-noise": ("visualize", {"steps": 3, "start": "noise"}),
}


@pytest.mark.parametrize("kind", ["cuda", "runtime"])
@pytest.mark.parametrize("case", sorted(OOM_CASES))
def test_out_of_memory_halves_the_batch_with_identical_results(tiny_model, tiny_batch, case, kind):
    x, y = tiny_batch
    name, params = OOM_CASES[case]
    exact = OneAtATime(tiny_model.module)
    reference_model = adapter(exact, tiny_model, "exact")
    oom = RaisesOOM(exact, limit=3, kind=kind)
    flaky = adapter(oom, tiny_model, "flaky")
    target = (y + 2) % 10 if make_attack(name).targeted else None
    reference_attack, attack = make_attack(name, **params), make_attack(name, **params)
    reference = run_attack(reference_model, reference_attack, x, y, constraint=LinfBall(0.1), target=target, seed=4)
    flaky.module.train()
    result = run_attack(flaky, attack, x, y, constraint=LinfBall(0.1), target=target, seed=4)
    assert flaky.module.training  # mode restored after the retries
    flaky.module.eval()
    assert oom.raised > 0 and result.extra["oom_retries"] >= 2  # 12 -> 6 -> 3
    for field in ("x_adv", "success", "pred", "confidence", "backward_counts"):
        assert torch.equal(getattr(result, field), getattr(reference, field)), field
    assert (result.forward_passes, result.backward_passes) == (reference.forward_passes, reference.backward_passes)
    if hasattr(reference_attack, "history_"):
        assert torch.equal(attack.history_.nan_to_num(-1), reference_attack.history_.nan_to_num(-1))


def test_out_of_memory_on_a_single_sample_is_raised(tiny_model, tiny_batch):
    x, y = tiny_batch
    flaky = adapter(RaisesOOM(tiny_model.module, limit=0, kind="cuda"), tiny_model, "flaky")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_attack(flaky, "fgsm", x, y, eps=0.1)


def test_batch_coupled_attack_is_not_split(tiny_model, tiny_batch):
    x, y = tiny_batch
    flaky = adapter(RaisesOOM(tiny_model.module, limit=3, kind="cuda"), tiny_model, "flaky")
    with pytest.raises(torch.cuda.OutOfMemoryError) as info:
        run_attack(flaky, "universal", x, y, eps=0.1, steps=2)
    assert "cannot split" in "".join(getattr(info.value, "__notes__", []))


def test_other_errors_are_not_retried(tiny_model, tiny_batch):
    x, y = tiny_batch

    class Boom(nn.Module):
        calls = 0

        def forward(self, x):
            Boom.calls += 1
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_attack(adapter(Boom(), tiny_model, "boom"), "fgsm", x, y, eps=0.1)
    assert Boom.calls == 1  # the output probe; no retry
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x")) and is_out_of_memory(RuntimeError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("boom")) and not is_out_of_memory(MemoryError())
