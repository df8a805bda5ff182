"""advkit evaluate: the cascade never calls a fooled sample robust, resumes identically, and MALT ranks targets by the
linearized boundary distance."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from advkit.cli import cli
from advkit.constraints import LinfBall
from advkit.criteria import Misclassified
from advkit.errors import InputValidationError, ParameterError
from advkit.evaluation import EvaluationStoreError, Stage, evaluate
from advkit.kernel import Problem
from advkit.models import ModelAdapter
from advkit.runner import run_attack
from advkit.targets import rank_targets

pytestmark = pytest.mark.usefixtures("one_thread")

STAGES = [Stage("fgsm", {}), Stage("pgd", {"steps": 8, "restarts": 2})]


def test_no_sample_a_stage_fooled_is_robust(tiny_model, tiny_batch):
    import advkit

    assert advkit.evaluate is evaluate  # the public name
    x, y = tiny_batch
    result = evaluate(tiny_model, x, y, eps=0.02, stages=STAGES, seed=4)
    # stage 0 attacks every correctly classified sample: exactly an independent run with the stage's seed
    alone = run_attack(tiny_model, "fgsm", x, y, eps=0.02, seed=4)
    assert torch.equal(result.broken_by == 0, alone.success)
    assert not bool((result.robust & alone.success).any())
    assert not bool((result.robust & (result.broken_by >= 0)).any())
    assert bool((result.robust <= result.clean_correct).all())
    broken = result.broken_by >= 0
    assert 0 < int(broken.sum()) < len(y)  # both outcomes occur, so the checks above bite
    pred = tiny_model.predict(result.x_adv[broken]).argmax(1)
    assert bool((pred != y[broken]).all())
    assert float((result.x_adv - x).abs().amax()) <= 0.02 + 1e-6
    # the second stage ran only on what the first left
    assert result.stages[1]["attacked"] == int(result.clean_correct.sum()) - result.stages[0]["fooled"]
    assert result.version == "custom"  # its own stages, not a named cascade
    summary = result.summary()
    assert summary["n_robust"] == int(result.robust.sum())
    low, high = summary["robust_accuracy_95ci"]
    assert low <= summary["robust_accuracy"] <= high


def test_bad_input_is_refused_before_any_pass(tiny_model, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(InputValidationError, match="labels"):
        evaluate(tiny_model, x, y[:5], eps=0.02, stages=STAGES)
    with pytest.raises(ParameterError, match="eps"):
        evaluate(tiny_model, x, y, eps=-1.0, stages=STAGES)
    with pytest.raises(ParameterError, match="version"):
        evaluate(tiny_model, x, y, eps=0.02, version="huge")
    assert tiny_model.counter.forward == 0


def test_resume_after_a_kill_gives_identical_results(tiny_model, tiny_batch, tmp_path):
    x, y = tiny_batch
    first = evaluate(tiny_model, x, y, eps=0.02, stages=STAGES, seed=4, out=tmp_path)
    (tmp_path / "stages" / "01-pgd.safetensors").unlink()  # as if killed during the second stage
    again = evaluate(tiny_model, x, y, eps=0.02, stages=STAGES, seed=4, out=tmp_path)
    assert [s["resumed"] for s in again.stages] == [True, False]
    for field in ("robust", "broken_by", "x_adv", "clean_correct"):
        assert torch.equal(getattr(first, field), getattr(again, field)), field
    third = evaluate(tiny_model, x, y, eps=0.02, stages=STAGES, seed=4, out=tmp_path)
    assert [s["resumed"] for s in third.stages] == [True, True]
    assert torch.equal(third.x_adv, first.x_adv)
    with pytest.raises(EvaluationStoreError, match="another evaluation"):
        evaluate(tiny_model, x, y, eps=0.03, stages=STAGES, seed=4, out=tmp_path)


def test_a_tampered_stage_is_refused(tiny_model, tiny_batch, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    x, y = tiny_batch
    evaluate(tiny_model, x, y, eps=0.02, stages=STAGES, seed=4, out=tmp_path)
    path = tmp_path / "stages" / "00-fgsm.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["success"] = torch.ones_like(tensors["success"])  # claims every sample fooled
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(EvaluationStoreError, match="fresh check"):
        evaluate(tiny_model, x, y, eps=0.02, stages=STAGES, seed=4, out=tmp_path)


def linear_model(seed: int = 0) -> ModelAdapter:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Flatten(), nn.Linear(6, 5)).double()
    return ModelAdapter(module, name="linear", bounds=(-10.0, 10.0), input_shape=(6,), class_names=list("abcde"))


def test_malt_ranks_by_the_linear_boundary_distance():
    model = linear_model()
    x = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = model.predict(x).argmax(1)
    problem = Problem(model=model, x=x, y=y, constraint=LinfBall(0.5), criterion=Misclassified())
    ranked = rank_targets(problem, "malt", candidates=4)
    w, b = model.module[1].weight.detach(), model.module[1].bias.detach()
    z = x @ w.T + b
    for i in range(len(y)):
        others = [j for j in range(5) if j != int(y[i])]
        dist = {j: float((z[i, y[i]] - z[i, j]) / (w[y[i]] - w[j]).abs().sum()) for j in others}
        assert ranked[i].tolist() == sorted(others, key=dist.get)
    assert torch.equal(problem.backward_counts, torch.full((7,), 4))  # one backward per candidate, counted
    assert model.counter.backward == 4 * 7
    by_logits = rank_targets(
        Problem(model=model, x=x, y=y, constraint=LinfBall(0.5), criterion=Misclassified()), "logits", 4
    )
    assert torch.equal(by_logits, z.scatter(1, y.view(-1, 1), float("-inf")).argsort(1, descending=True)[:, :4])


def test_apgd_targeted_with_malt_targets_is_untargeted(zoo_cnn, mnist_test, correct_digits):
    x, y = correct_digits(zoo_cnn, mnist_test, 6)
    result = run_attack(zoo_cnn, "apgd_targeted", x, y, eps=0.3, targets="malt", top_k=2, steps=10)
    assert result.target is None and result.success.any()
    assert result.extra["batch_size"]["mode"] == "chunks"  # ranking is model work outside the engine
    assert int(result.backward_counts.max()) <= 9 + 2 * 10
    with pytest.raises(ParameterError, match="picks its own target"):
        run_attack(zoo_cnn, "apgd_targeted", x, y, eps=0.3, targets="malt", target=3, steps=2)


def test_evaluate_command_writes_the_report(tmp_path):
    out = tmp_path / "ev"
    result = CliRunner().invoke(
        cli, ["evaluate", "--model", "cnn", "--eps", "0.3", "--version", "fast", "-n", "6", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [s["label"] for s in summary["stages"]] == ["apgd", "apgd_targeted[malt]"]
    assert summary["n"] == 6 and 0 <= summary["robust_accuracy"] <= 1
    for name in ("samples.csv", "stages.csv", "summary.json", "robust_accuracy.png", "index.html"):
        assert (out / name).is_file(), name
    bad = CliRunner().invoke(cli, ["evaluate", "--model", "cnn", "--eps", "0.3", "--version", "huge"])
    assert bad.exit_code == 2 and "huge" in bad.output


def test_a_budget_caps_each_samples_backward_passes_over_the_cascade(tiny_model, tiny_batch, tmp_path):
    x, y = tiny_batch
    stages = [Stage("pgd", {"steps": 6}), Stage("pgd", {"steps": 6, "restarts": 2})]
    free = evaluate(tiny_model, x, y, eps=0.02, stages=stages, seed=1)
    assert int(free.backward_counts.max()) == 6 + 12  # a robust sample goes through both stages in full
    capped = evaluate(tiny_model, x, y, eps=0.02, stages=stages, seed=1, budget=9, out=tmp_path)
    counts = capped.backward_counts
    assert int(counts.max()) <= 9 and capped.summary()["max_backward_per_sample"] == int(counts.max())
    # stage 0 fits the budget, so it is the unbudgeted run; stage 1 gets the 3 passes stage 0 left each survivor
    assert torch.equal(capped.broken_by == 0, free.broken_by == 0)
    survivors = capped.robust | (capped.broken_by == 1)
    assert bool((counts[survivors] == 9).all())
    assert capped.stages[1]["backward_passes"] == 3 * capped.stages[1]["attacked"]
    again = evaluate(tiny_model, x, y, eps=0.02, stages=stages, seed=1, budget=9, out=tmp_path)  # resumed
    assert [s["resumed"] for s in again.stages] == [True, True] and torch.equal(again.backward_counts, counts)
    with pytest.raises(EvaluationStoreError, match="another evaluation"):  # the budget is part of the fingerprint
        evaluate(tiny_model, x, y, eps=0.02, stages=stages, seed=1, budget=8, out=tmp_path)
    with pytest.raises(ParameterError, match="budget"):
        evaluate(tiny_model, x, y, eps=0.02, stages=stages, budget=0)


class Noisy(nn.Module):
    """A randomized defense: noise on the input at every forward pass, in eval mode too."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


def test_autoattacks_runtime_checks_fire_on_constructed_cases_and_not_on_a_plain_model():
    x = torch.randn(12, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plain = linear_model()
    y = plain.predict(x).argmax(1)
    stages = [Stage("pgd", {"steps": 2})]

    def flags(module, classes=5):
        model = ModelAdapter(
            module, name="m", bounds=(-10.0, 10.0), input_shape=(6,), class_names=list("abcde")[:classes]
        )
        model.metadata["stochastic"] = isinstance(module, Noisy)  # random on purpose: the runner lets it through
        result = evaluate(model, x, y.clamp_max(classes - 1), eps=0.1, stages=stages)
        return {c["check"] for c in result.checks if c["status"] == "flag"}

    assert flags(plain.module) == set()
    assert flags(Noisy(plain.module)) == {"deterministic_outputs"}
    with pytest.raises(InputValidationError, match="probabilities"):  # AutoAttack warns; advkit refuses
        flags(nn.Sequential(plain.module, nn.Softmax(dim=1)))
    two = ModelAdapter(
        nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).double(), name="m2", bounds=(-10.0, 10.0), input_shape=(6,),
        class_names=list("ab"),
    )  # fmt: skip
    y2 = two.predict(x).argmax(1)
    with pytest.raises(ParameterError, match="DLR loss needs at least 3 classes"):
        evaluate(two, x, y2, eps=0.1, stages=[Stage("apgd", {"steps": 2, "loss": "dlr"})])
    assert two.counter.forward == 0  # refused before any pass
    wide = evaluate(two, x, y2, eps=0.1, stages=[Stage("apgd_targeted", {"steps": 2, "targets": "malt", "top_k": 3})])
    assert {c["check"]: c["status"] for c in wide.checks}["enough_classes"] == "flag"
