"""Chunked execution: sizes given or chosen by measurement, the same results whatever the size, no call larger
than a chunk anywhere (attacks, checks, selection, sweeps, transfers)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from advkit import batching, registry
from advkit.batching import ChunkPlan, check_batch_size, step_rate
from advkit.constraints import LinfBall
from advkit.errors import ParameterError
from advkit.models import ModelAdapter
from advkit.runner import make_attack, run_attack
from tests.conftest import OneAtATime

PER_SAMPLE = [name for name in sorted(registry.attacks()) if registry.get_attack(name).obj.per_sample]


class Widest(nn.Module):
    """Records the most rows any forward pass saw (and any pass that builds a graph: an attack step)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.widest, self.widest_step = inner, 0, 0

    def forward(self, x):
        self.widest = max(self.widest, x.shape[0])
        if x.requires_grad:
            self.widest_step = max(self.widest_step, x.shape[0])
        return self.inner(x)


def adapter(module: nn.Module, like: ModelAdapter, name: str) -> ModelAdapter:
    return ModelAdapter(
        module, name=name, bounds=like.bounds, input_shape=like.input_shape, class_names=like.class_names
    )


@pytest.fixture
def small_sizes(monkeypatch):
    """``auto`` climbing from 2 samples on (12-sample batches are then measured, not attacked whole)."""
    monkeypatch.setattr(batching, "FIRST_SIZE", {"cpu": 2, "other": 2})
    monkeypatch.setattr(batching, "WHOLE_BELOW", 3)


def fast(name: str) -> dict:
    fields = {f.name for f in make_attack(name).param_fields()}
    return {"steps": 4} if "steps" in fields else {}


@pytest.mark.parametrize("name", PER_SAMPLE)
def test_results_do_not_depend_on_the_batch_size(tiny_model, tiny_batch, small_sizes, name):
    """Every per-sample attack gives the same per-sample results and pass counts whole, in chunks of 5 and in the
    chunks ``auto`` chooses (the model runs one sample at a time, so kernels give the same bits at any size), and the
    same clean verdicts (three labels are wrong: a zero start's first step is the clean check of its window's rows)."""
    x, y = tiny_batch
    y = y.clone()
    y[[0, 6, 11]] = (y[[0, 6, 11]] + 1) % 10
    target = (y + 3) % 10 if make_attack(name).targeted else None
    runs, widest = {}, {}
    for size in (12, 5, "auto"):
        recorder = Widest(OneAtATime(tiny_model.module))
        runs[size] = run_attack(
            adapter(recorder, tiny_model, "exact"),
            make_attack(name, **fast(name)),
            x,
            y,
            constraint=LinfBall(0.2),
            target=target,
            seed=3,
            batch_size=size,
        )  # fmt: skip
        widest[size] = recorder.widest_step if size == "auto" else recorder.widest
    whole = runs[12]
    assert widest[12] == 12 and widest[5] <= 5  # no pass (steps, checks) on more rows than the size given
    assert widest["auto"] < 12  # the climb really split the run's steps (its checks run at the inference size)
    windowed = make_attack(name).windowed
    assert runs[5].extra["batch_size"]["mode"] == ("window" if windowed else "chunks")
    if not windowed:
        assert runs[5].extra["batch_size"]["chunks"] == 3
    for size, other in runs.items():
        assert torch.equal(other.clean_correct, ~torch.isin(torch.arange(12), torch.tensor([0, 6, 11]))), size
        for field in ("x_adv", "success", "pred", "backward_counts"):
            a, b = getattr(other, field), getattr(whole, field)
            assert (a is None and b is None) or torch.equal(a, b), (size, field)
        assert (other.forward_passes, other.backward_passes) == (whole.forward_passes, whole.backward_passes), size


def test_a_given_size_bounds_every_forward_pass_of_the_run(tiny_model, tiny_batch):
    x, y = tiny_batch
    widest = Widest(tiny_model.module)
    model = adapter(widest, tiny_model, "widest")
    result = run_attack(model, "pgd", x, y, eps=0.1, steps=3, batch_size=4)
    assert widest.widest <= 4  # the clean check, the steps and the re-check
    assert result.extra["batch_size"] == {
        "requested": 4, "chosen": 4, "how": "given", "mode": "window", "chunks": 1, "steps": 9, "ms_per_sample_step": {}
    }  # fmt: skip


def test_auto_attacks_small_runs_whole_and_caches_what_it_measured(tiny_model, tiny_batch, small_sizes, monkeypatch):
    x, y = tiny_batch
    first = run_attack(tiny_model, "pgd", x, y, eps=0.1, steps=3)
    info = first.extra["batch_size"]
    assert info["requested"] == "auto" and info["how"] == "measured on this run's first steps"
    rates = {int(k): v for k, v in info["ms_per_sample_step"].items()}
    fastest = min(rates.values())
    # pgd runs in window mode: the smallest measured size within the tie margin of the fastest (ms are rounded to 4
    # places in the summary)
    assert info["mode"] == "window"
    assert info["chosen"] == min(k for k, v in rates.items() if v <= batching.TIE * fastest + 1e-4)
    assert batching.cached_batch_size(tiny_model) == info["chosen"]
    again = run_attack(tiny_model, "pgd", x, y, eps=0.1, steps=3)
    assert again.extra["batch_size"]["how"].startswith("cached") and again.extra["batch_size"]["chosen"] <= 12
    batching.clear_cache()
    monkeypatch.setattr(batching, "WHOLE_BELOW", 128)  # the default: 12 samples are too few to measure on
    whole = run_attack(tiny_model, "pgd", x, y, eps=0.1, steps=3)
    assert whole.extra["batch_size"]["chosen"] == 12 and whole.extra["batch_size"]["chunks"] == 1
    assert batching.cached_batch_size(tiny_model) is None


class SlowAbove(nn.Module):
    """Costs 10 ms per call plus 0.1 ms per sample up to ``knee`` rows per call, 10 ms per sample beyond (a cache that
    overflows), on a simulated clock: the time per sample falls with the rows until the knee, then jumps."""

    def __init__(self, inner: nn.Module, knee: int) -> None:
        super().__init__()
        self.inner, self.knee, self.now = inner, knee, 0.0

    def perf_counter(self) -> float:
        return self.now

    def forward(self, x):
        self.now += 0.01 + x.shape[0] * (0.0001 if x.shape[0] <= self.knee else 0.01)
        return self.inner(x)


def test_auto_measures_inside_the_attack_and_stops_below_the_knee(tiny_model, small_sizes, monkeypatch):
    """The climb (2, 3, 4, 6, 9, ...) stops at the first size that is slower per sample and keeps the best. The window's
    clock is the model's simulated one, so what the climb sees is exactly the model's cost, whatever else runs."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 8, 8, generator=g) * 1.6 - 0.8
    y = tiny_model.predict(x).argmax(1)
    slow = SlowAbove(tiny_model.module, knee=6)
    monkeypatch.setattr(batching, "time", slow)  # batching's only use of time: perf_counter in step_began
    model = adapter(slow, tiny_model, "knee")
    result = run_attack(model, "pgd", x, y, eps=0.1, steps=12, early_stop=False)  # every row keeps its steps
    info = result.extra["batch_size"]
    assert info["chosen"] == 6 and max(int(k) for k in info["ms_per_sample_step"]) == 9, info["ms_per_sample_step"]
    rates = {int(k): v for k, v in info["ms_per_sample_step"].items()}
    for rows, rate in rates.items():  # one model call per step: 10 ms per call plus the rows' own cost, per row
        assert rate == pytest.approx(1000 * (0.01 / rows + (0.0001 if rows <= 6 else 0.01)), rel=1e-3), rates


def test_step_rate_is_the_median_time_per_row_between_calls():
    calls = [(0.0, 10), (1.0, 10), (2.0, 10), (30.0, 5), (30.5, 5)]  # one stall of 28 s
    assert step_rate(calls) == pytest.approx(0.1)
    assert step_rate(calls[:2]) is None


def test_auto_climbs_from_64_rows_by_half_on_a_cpu_and_from_32_by_doubling_elsewhere(tiny_model, monkeypatch):
    plan = ChunkPlan(tiny_model, "auto", 1000, mode="window")
    assert plan.measuring and plan.window_size() == 64
    plan.observe(64, 1.0)
    assert plan.window_size() == 96
    monkeypatch.setattr(type(tiny_model), "device", property(lambda self: torch.device("meta")))
    other = ChunkPlan(tiny_model, "auto", 1000, mode="window")
    assert other.window_size() == 32
    other.observe(32, 1.0)
    assert other.window_size() == 64


def test_chunk_plan_climbs_settles_and_halves(tiny_model, small_sizes):
    plan = ChunkPlan(tiny_model, "auto", 100)
    assert plan.measuring and plan.next_size(100) == 2
    for rows, rate in [(2, 1.0), (3, 0.5), (4, 0.4), (6, 0.45)]:
        assert plan.next_size(100) == rows
        plan.observe(rows, rate)
    assert not plan.measuring and plan.size == 4 and batching.cached_batch_size(tiny_model) == 4
    assert plan.next_size(5) == 5  # a short tail goes along with the last chunk
    plan.out_of_memory(4)
    assert plan.size == 2 and batching.cached_batch_size(tiny_model) == 2
    halved = ChunkPlan(tiny_model, "auto", 100)
    halved.out_of_memory(12)
    assert halved.size == 2 and halved.next_size(2) == 2
    batching.remember_batch_size(tiny_model, 12)
    cached = ChunkPlan(tiny_model, "auto", 100)
    cached.out_of_memory(12)  # 12 rows did not fit: 6 from now on
    assert cached.next_size(8) == 6  # a tail never takes a chunk past a size that ran out of memory
    given = ChunkPlan(tiny_model, 4, 100)
    assert given.next_size(5) == 4  # a given size is never exceeded
    coupled = ChunkPlan(tiny_model, 4, 100, splittable=False)
    assert coupled.next_size(100) == 100


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("AUTO", "auto"), ("64", 64), (7, 7)])
def test_batch_size_values(value, expected):
    assert check_batch_size(value) == expected


@pytest.mark.parametrize("value", [0, -1, "0", "x", 2.5, True, None, "1e3", "\u00b2", "\u0661\u0662"])
def test_bad_batch_sizes_are_refused(tiny_model, tiny_batch, value):
    with pytest.raises(ParameterError, match="batch_size must be 'auto' or an integer >= 1"):
        check_batch_size(value)
    with pytest.raises(ParameterError, match="batch_size must be 'auto' or an integer >= 1"):
        run_attack(tiny_model, "pgd", *tiny_batch, eps=0.1, steps=1, batch_size=value)


def test_predict_and_selection_use_the_chunk_size(tiny_model):
    from advkit.datasets import Dataset

    g = torch.Generator().manual_seed(2)
    x = torch.rand(30, 1, 8, 8, generator=g) * 1.6 - 0.8
    widest = Widest(tiny_model.module)
    model = adapter(widest, tiny_model, "widest")
    y = model.predict(x, batch_size=7).argmax(1)
    assert widest.widest == 7
    widest.widest = 0
    batching.remember_batch_size(model, 5)
    model.predict(x)  # auto: the size the model's attacks use
    assert widest.widest == 5
    widest.widest = 0
    data = Dataset.from_tensors(x, y, bounds=(-1.0, 1.0), class_names=model.class_names, name="t")
    _, xs, _ = data.select(model, 20, batch_size=6)
    assert len(xs) == 20 and widest.widest == 6


def test_sweep_and_transfer_chunk_every_pass(tiny_model):
    """A sweep's attacks, clean predictions and carried-point checks, and a transfer's attacks and target
    predictions, never send more rows at once than the batch size."""
    from advkit.sweep import SweepSpec, run_sweep
    from advkit.transfer import transfer_matrix

    g = torch.Generator().manual_seed(3)
    x = torch.rand(24, 1, 8, 8, generator=g) * 1.6 - 0.8
    widest = Widest(tiny_model.module)
    model = adapter(widest, tiny_model, "widest")
    y = tiny_model.predict(x).argmax(1)
    spec = SweepSpec(
        models=["widest"], attacks=["pgd"], eps=[0.05, 0.1, 0.2], n=24, attack_params={"pgd": {"steps": 3}}
    )
    result = run_sweep(spec, progress=False, models={"widest": model}, data=(x, y, "test"), batch_size=5)
    assert widest.widest <= 5 and result.cells[("widest", "pgd", 0.2)].carried > 0
    other = adapter(Widest(tiny_module_copy(tiny_model)), tiny_model, "other")
    widest.widest = 0
    transfer_matrix([model], [other], x, y, attack="pgd", eps=0.2, n=None, steps=3, batch_size=5)
    assert widest.widest <= 5 and other.module.widest <= 5


def tiny_module_copy(tiny_model: ModelAdapter) -> nn.Module:
    import copy

    return copy.deepcopy(tiny_model.module)


def test_cli_batch_size_is_recorded_and_checked(tmp_path):
    from advkit.cli import cli

    out = tmp_path / "run"
    done = CliRunner().invoke(
        cli,
        [
            "attack",
            "--model",
            "cnn",
            "--eps",
            "0.1",
            "-n",
            "20",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ],
    )
    assert done.exit_code == 0, done.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["batch_size"]["requested"] == 8 and summary["batch_size"]["chosen"] == 8
    assert summary["batch_size"]["mode"] == "window" and summary["batch_size"]["steps"] >= 3 * 20 / 8
    bad = CliRunner().invoke(cli, ["attack", "--model", "cnn", "--eps", "0.1", "--batch-size", "0"])
    assert bad.exit_code == 2 and "--batch-size must be 'auto' or an integer >= 1, got '0'" in bad.output


def test_the_threat_model_is_enforced_chunk_by_chunk_with_each_samples_own_radius(tiny_model, tiny_batch):
    """An attack that returns points far outside the set gets them projected per sample, in chunks of the batch size,
    each chunk onto its own samples' radii (a chunk must not take another chunk's radii)."""
    from dataclasses import dataclass

    from advkit.attack import Attack

    @dataclass(kw_only=True)
    class Overshoot(Attack):
        name = "overshoot"
        windowed = True  # the runner hands it the whole batch and enforces the set in chunks afterwards

        def run(self, problem):
            return problem.x + 5.0

    x, y = tiny_batch
    radii = torch.linspace(0.01, 0.3, x.shape[0])
    result = run_attack(tiny_model, Overshoot(), x, y, constraint=LinfBall(radii), batch_size=5)
    reached = (result.x_adv - x).flatten(1).abs().amax(1)
    expected = torch.minimum(radii, (1.0 - x).flatten(1).amax(1))  # the box [-1, 1] may cut the step first
    assert torch.allclose(reached, expected, atol=1e-6)
