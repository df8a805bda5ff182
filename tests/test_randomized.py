"""Randomized models: the zoo's s6_adv_rand is random per call but leaves the global RNG alone, and ``evaluate
--version rand`` averages gradients over K draws, counts every pass, and calls a sample robust only if it survived
k re-evaluations (reproducibly, also on resume)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import advkit.evaluation as evaluation
from advkit import layout
from advkit.cli import cli
from advkit.errors import ParameterError
from advkit.evaluation import EvaluationStoreError, Stage, cascade, evaluate
from advkit.gradients import with_gradient
from advkit.models import ModelAdapter
from advkit.zoo.architectures import InputNoise
from tests.conftest import tiny_module

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = [str(i) for i in range(10)]


def adapter(module: nn.Module, stochastic: bool = False, name: str = "tiny") -> ModelAdapter:
    module.eval()
    return ModelAdapter(
        module, name=name, bounds=(-1.0, 1.0), input_shape=(1, 8, 8), class_names=DIGITS,
        metadata={"stochastic": True} if stochastic else {},
    )  # fmt: skip


def batch(model: ModelAdapter, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    return x, model.predict(x).argmax(1)


def test_the_randomized_zoo_model_differs_between_calls_and_leaves_the_global_rng_alone():
    from advkit.model_specs import load_model
    from advkit.runner import run_attack
    from advkit.sweep import model_fingerprint

    state = torch.get_rng_state()  # loading too leaves it alone (a zoo net is initialized under a forked RNG)
    model, again = load_model("s6_adv_rand"), load_model("s6_adv_rand")
    x = torch.zeros(3, 1, 28, 28)
    first, second = model.logits(x), model.logits(x)
    assert not torch.allclose(first, second) and model.metadata["stochastic"] is True
    assert torch.equal(again.logits(x), first)  # a fresh load starts its own stream again
    result = run_attack(model, "pgd", x, torch.tensor([0, 1, 2]), eps=0.1, steps=2)  # the runner accepts it
    assert result.forward_passes > 0
    assert torch.equal(torch.get_rng_state(), state)  # every draw came from the module's own generator
    fingerprints = {model_fingerprint(load_model(s)) for s in ("s6_adv", "s6_adv_rand", "s6_adv_rand:sigma=0.5")}
    assert len(fingerprints) == 3  # another sigma is another model: a resume never mixes them
    with pytest.raises(ParameterError, match="sigma must be a number > 0"):
        load_model("s6_adv_rand:sigma=0")


def stage_counts(monkeypatch, module: nn.Module) -> list[tuple[int, int]]:
    """Rows the module itself saw forward and backward during each stage and the re-evaluation (independent of the
    adapter's counter that the records come from)."""
    seen = {"forward": 0, "backward": 0}

    def count(_, inputs, output):
        seen["forward"] += inputs[0].shape[0]
        if inputs[0].requires_grad:
            inputs[0].register_hook(lambda g: seen.__setitem__("backward", seen["backward"] + g.shape[0]))

    module.register_forward_hook(count)
    deltas = []

    def measured(function):
        def wrapper(*args, **kwargs):
            before = dict(seen)
            out = function(*args, **kwargs)
            deltas.append((seen["forward"] - before["forward"], seen["backward"] - before["backward"]))
            return out

        return wrapper

    monkeypatch.setattr(evaluation, "_run_stage", measured(evaluation._run_stage))
    monkeypatch.setattr(evaluation, "_reevaluate", measured(evaluation._reevaluate))
    return deltas


def test_rand_passes_are_k_eot_draws_per_step_plus_the_reevaluations(monkeypatch):
    module = tiny_module()
    model = adapter(module)
    x, y = batch(model)
    deltas = stage_counts(monkeypatch, module)
    runs = {  # (the indicators' own passes, which the records do not count, are left out)
        K: evaluate(model, x, y, eps=1e-5, version="rand", eot_samples=K, reevaluations=4, indicators=False)
        for K in (1, 3)
    }
    for K, result in runs.items():
        apgd, dlr, again = result.stages
        assert [s["label"] for s in result.stages] == ["apgd", "apgd[dlr]", "worst-of-4"]
        assert result.gradient == f"eot:identity,samples={K}" and (result.eot_samples, result.reevaluations) == (K, 4)
        for record in (apgd, dlr):  # nothing fooled at this eps: every sample takes all 100 steps, each K passes
            assert record["fooled"] == 0 and record["attacked"] == len(y)
            assert record["backward_passes"] == K * 100 * len(y)
            assert record["forward_passes"] == K * 101 * len(y)  # and one evaluation of the last step
        # the re-evaluation: k passes on each stage's final point of every sample still robust, no backward
        assert again["forward_passes"] == 4 * 2 * len(y) and again["backward_passes"] == 0
        summary = result.summary()
        assert summary["clean_forward_passes"] == 4 * len(y)  # worst-of-k clean check
        assert summary["forward_passes"] == sum(s["forward_passes"] for s in result.stages)
        assert f"EOT over {K} draws" in summary["evaluated"] and "all 4 re-evaluations" in summary["evaluated"]
    # what the module saw: each stage's records plus the runner's uncounted passes (its output probe of 2 x 2 rows,
    # clean check and re-check of every row; on the module's first run, the layout check: advkit.layout); backward
    # exactly the records'; the re-evaluation exactly its record
    records = [s for K in (1, 3) for s in runs[K].stages]
    assert len(deltas) == len(records)
    for i, ((forward, backward), record) in enumerate(zip(deltas, records)):
        overhead = 0 if record["attack"] == "reevaluate" else 2 * 2 + 2 * record["attacked"]
        overhead += 2 * layout.CHECK_ROWS if i == 0 else 0
        assert (forward, backward) == (record["forward_passes"] + overhead, record["backward_passes"])


def test_a_deterministic_model_under_rand_with_one_draw_is_its_cascade_plus_a_reevaluation_that_breaks_nothing(
    tiny_model, tiny_batch
):
    x, y = tiny_batch
    plain = evaluate(tiny_model, x, y, eps=0.02, stages=cascade("rand", "linf"), seed=3)
    rand = evaluate(tiny_model, x, y, eps=0.02, version="rand", eot_samples=1, reevaluations=5, seed=3)
    assert 0 < int(plain.robust.sum()) < len(y)  # both outcomes occur
    for field in ("robust", "broken_by", "x_adv", "clean_correct"):
        assert torch.equal(getattr(plain, field), getattr(rand, field)), field
    assert [s["backward_passes"] for s in plain.stages] == [s["backward_passes"] for s in rand.stages[:2]]
    assert rand.stages[2]["fooled"] == 0  # the same logits five times: nothing more to find
    assert rand.version == "rand" and plain.version == "custom"


class Flaky(nn.Module):
    """Correct on clean inputs, but on any other input a wrong class wins with probability p per call (its own
    generator); records the rows it flipped while ``recording``."""

    def __init__(self, inner: nn.Module, clean: torch.Tensor, p: float) -> None:
        super().__init__()
        self.inner, self.clean, self.p = inner, clean.flatten(1), p
        self.generator = torch.Generator().manual_seed(0)
        self.recording, self.flipped = False, []

    def forward(self, x):
        z = self.inner(x)
        is_clean = (x.detach().flatten(1)[:, None, :] == self.clean[None]).all(2).any(1)
        flip = (torch.rand(x.shape[0], generator=self.generator) < self.p) & ~is_clean
        if self.recording:
            self.flipped.append(x[flip].detach().clone())
        return torch.where(flip[:, None], z.roll(1, dims=1), z)


def test_a_sample_any_reevaluation_fooled_is_never_robust(monkeypatch):
    inner = tiny_module()
    x, y = batch(adapter(inner), n=16)
    flaky = Flaky(inner, x, p=0.15)
    model = adapter(flaky, stochastic=True)
    original = evaluation._reevaluate

    def recorded(*args, **kwargs):
        flaky.recording = True
        try:
            return original(*args, **kwargs)
        finally:
            flaky.recording = False

    monkeypatch.setattr(evaluation, "_reevaluate", recorded)
    stages = [Stage("pgd", {"steps": 2})]
    result = evaluate(model, x, y, eps=1e-3, stages=stages, eot_samples=2, reevaluations=6)
    flipped = torch.cat(flaky.flipped)
    owner = torch.cdist(flipped.flatten(1), x.flatten(1), p=float("inf")).argmin(1)  # points lie within eps of x
    fooled = torch.zeros(len(y), dtype=torch.bool)
    fooled[owner] = True
    assert bool(fooled.any())  # the case bites: some sample the stage left robust was fooled by a re-evaluation
    assert not bool((result.robust & fooled).any())
    assert torch.equal(result.broken_by == 1, fooled)  # and each such sample is charged to the re-evaluation
    assert result.stages[1]["fooled"] == int(fooled.sum())
    assert bool(result.clean_correct.all())  # clean inputs are never flipped: the worst-of-k clean check agrees


def test_standard_on_a_randomized_model_is_flagged_and_rand_is_not(tiny_model, tiny_batch):
    x, y = tiny_batch
    noisy = adapter(InputNoise(tiny_model.module, 0.05), stochastic=True, name="noisy")
    stages = [Stage("pgd", {"steps": 3})]
    plain = evaluate(noisy, x, y, eps=0.05, stages=stages)
    check = {c["check"]: c for c in plain.checks}["deterministic_outputs"]
    assert check["status"] == "flag" and "--version rand" in check["reason"]
    assert plain.randomized and "may be too high" in plain.summary()["evaluated"]
    rand = evaluate(noisy, x, y, eps=0.05, stages=stages, eot_samples=2, reevaluations=3)
    assert {c["check"]: c["status"] for c in rand.checks}["deterministic_outputs"] == "ok"
    assert "EOT over 2 draws" in rand.summary()["evaluated"]


def test_rand_reproduces_resumes_identically_and_leaves_the_global_rng_alone(tiny_model, tiny_batch, tmp_path):
    x, y = tiny_batch

    class GlobalNoise(nn.Module):  # a user's randomized model drawing from torch's global RNG
        def forward(self, x):
            return tiny_model.module(x + 0.02 * torch.randn_like(x))

    for module in (InputNoise(tiny_model.module, 0.02), GlobalNoise()):
        model = adapter(module, stochastic=True, name=type(module).__name__)
        stages = [Stage("pgd", {"steps": 4}), Stage("apgd", {"steps": 4, "loss": "dlr"})]
        args = dict(eps=0.02, stages=stages, eot_samples=2, reevaluations=3, seed=2)
        state = torch.get_rng_state()
        first = evaluate(model, x, y, out=tmp_path / model.name, **args)
        assert torch.equal(torch.get_rng_state(), state)
        assert int(first.robust.sum()) > 0 and all(s["fooled"] > 0 for s in first.stages)  # every part counts
        (tmp_path / model.name / "stages" / "01-apgd.safetensors").unlink()  # as if killed in the second stage
        again = evaluate(model, x, y, out=tmp_path / model.name, **args)
        assert [s["resumed"] for s in again.stages] == [True, False, False]
        fresh = evaluate(model, x, y, **args)  # no store at all
        for other in (again, fresh):
            for field in ("robust", "broken_by", "x_adv", "clean_correct"):
                assert torch.equal(getattr(first, field), getattr(other, field)), (model.name, field)
            assert [s["fooled"] for s in other.stages] == [s["fooled"] for s in first.stages]
        with pytest.raises(EvaluationStoreError, match="another evaluation"):  # k is part of the fingerprint
            evaluate(model, x, y, out=tmp_path / model.name, **{**args, "reevaluations": 4})


def test_a_budget_counts_every_eot_pass_and_a_sample_with_less_than_one_step_left_is_not_attacked(tiny_model):
    x, y = batch(tiny_model)
    noisy = adapter(InputNoise(tiny_model.module, 0.02), stochastic=True, name="noisy")
    result = evaluate(noisy, x, y, eps=0.02, version="rand", eot_samples=4, reevaluations=2, budget=50)
    assert int(result.backward_counts.max()) == 48  # 12 steps of 4 passes; the 2 left are less than a step
    assert result.stages[1]["backward_passes"] % 4 == 0  # and no stage was handed a budget below one step


def test_bad_values_are_refused_before_any_pass(tiny_model, tiny_batch):
    x, y = tiny_batch
    for kwargs, message in [
        ({"reevaluations": 0}, "reevaluations"),
        ({"reevaluations": 2.5}, "reevaluations"),
        ({"eot_samples": 0}, "eot_samples"),
        ({"eot_samples": True}, "eot_samples"),
        ({"eot_samples": 5000}, "eot_samples"),
    ]:
        with pytest.raises(ParameterError, match=message):
            evaluate(tiny_model, x, y, eps=0.02, version="rand", **kwargs)
    with pytest.raises(ParameterError, match="already differentiates through bpda"):
        evaluate(with_gradient(tiny_model, "bpda:modules=ReLU"), x, y, eps=0.02, version="rand")
    assert tiny_model.counter.forward == 0


def test_the_cli_runs_rand_and_refuses_bad_values_in_one_line(tmp_path):
    out = tmp_path / "rand"
    args = ["evaluate", "--model", "s6_adv_rand", "--eps", "0.4", "--version", "rand", "-n", "2"]
    result = CliRunner().invoke(
        cli, [*args, "--eot-samples", "2", "--reevaluations", "2", "--out", str(out), "--json", "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [s["label"] for s in summary["stages"]] == ["apgd", "apgd[dlr]", "worst-of-2"]
    assert (summary["version"], summary["eot_samples"], summary["reevaluations"]) == ("rand", 2, 2)
    assert summary["gradient"] == "eot:identity,samples=2" and "all 2 re-evaluations" in summary["evaluated"]
    assert summary["clean_forward_passes"] == 2 * 2
    assert json.loads((out / "summary.json").read_text())["reevaluations"] == 2
    assert "Evaluated: EOT over 2 draws" in (out / "index.html").read_text()
    for extra, words in [
        (["--reevaluations", "0"], "--reevaluations"),
        (["--eot-samples", "0"], "--eot-samples"),
        (["--eot-samples", "abc"], "--eot-samples"),
        (["--gradient", "bpda"], "drop --gradient"),
    ]:
        bad = CliRunner().invoke(cli, [*args, *extra])
        assert bad.exit_code == 2 and "Traceback" not in bad.output, bad.output
        assert bad.output.strip().splitlines()[-1].startswith("Error:") and words in bad.output.splitlines()[-1]
    other = CliRunner().invoke(cli, ["evaluate", "--model", "cnn", "--eps", "0.3", "--reevaluations", "3"])
    assert other.exit_code == 2 and "belongs to --version rand" in other.output
