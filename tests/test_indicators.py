"""Indicators of attack failure (advkit.indicators): each fires on a constructed case and stays silent on cnn; the
fixes they carry are the ones --adaptive runs, and the rerun clears them."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from advkit.attack import Attack
from advkit.cli import cli
from advkit.constraints import LinfBall
from advkit.engine import Problem
from advkit.gradients import TransferGradient
from advkit.indicators import INDICATORS, attack_indicators, blocking_modules, merge_fixes, probe
from advkit.models import ModelAdapter, load_model
from advkit.params import param
from advkit.runner import run_attack


def _correct(model, mnist_test, n=20):
    x, y = mnist_test.x[:200], mnist_test.y[:200]
    keep = model.predict(x).argmax(1) == y
    return x[keep][:n], y[keep][:n]


def _by_check(flags):
    return {f["check"]: f for f in flags}


@pytest.fixture(scope="module")
def cnn():
    return load_model("cnn")


@pytest.fixture(scope="module")
def masked_bnn():
    return load_model("bnn", straight_through=False)


@dataclass(kw_only=True)
class StepsBack(Attack):
    """Takes one sign step of the radius (adversarial on a linear model), then returns the clean input: a silent
    success by construction."""

    name = "steps_back"
    early_stop: bool = param(False, doc="unused: the attack always steps back")

    def run(self, problem: Problem) -> torch.Tensor:
        x = problem.x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(problem.model(x), problem.y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        radius = problem.constraint.linf_radius
        with torch.no_grad():
            problem.model(problem.x + problem.constraint.project(radius * grad.sign(), problem.x))
        return problem.x.clone()


def _linear(seed=0, classes=3, dim=6):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(dim, classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(classes, dim, generator=g))
        layer.bias.zero_()
    module = nn.Sequential(nn.Flatten(), layer).eval()
    return ModelAdapter(module, name=f"linear{seed}", bounds=(-1.0, 1.0), input_shape=(dim,),
                        class_names=[str(i) for i in range(classes)])  # fmt: skip


def _linear_data(model, n=12, dim=6):
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(n, dim, generator=g) - 0.5) * 0.2
    return x, model.predict(x).argmax(1)


def test_every_indicator_stays_silent_on_cnn(cnn, mnist_test):
    x, y = _correct(cnn, mnist_test)
    for attack, params in (("pgd", {"steps": 20}), ("apgd", {"steps": 30})):
        flags = attack_indicators(cnn, attack, x, y, constraint=LinfBall(0.2), params=params)
        assert [f["check"] for f in flags] == list(INDICATORS)
        assert not [f for f in flags if f["status"] == "flag"], flags
        assert all(f["fix"] is None for f in flags)


def test_silent_success_fires_on_an_attack_that_returns_less_than_it_found():
    model = _linear()
    x, y = _linear_data(model)
    flags = _by_check(attack_indicators(model, StepsBack(), x, y, constraint=LinfBall(1.0), only=("silent success",)))
    silent = flags["silent success"]
    assert silent["status"] == "flag" and "did not return" in silent["reason"]
    assert silent["fix"]["params"] == {"early_stop": True}
    # the same attack's path on a point it returns as found is silent: pgd keeps its best point
    ok = _by_check(attack_indicators(model, "pgd", x, y, constraint=LinfBall(1.0), params={"steps": 5}))
    assert ok["silent success"]["status"] == "ok"


def test_unavailable_gradients_and_unconstrained_failure_fire_on_the_masked_bnn_with_the_bpda_fix(
    masked_bnn, mnist_test
):
    x, y = _correct(masked_bnn, mnist_test, 10)
    flags = _by_check(attack_indicators(masked_bnn, "fgsm", x, y, constraint=LinfBall(0.2)))
    for check in ("unavailable gradients", "unconstrained attack failure"):
        assert flags[check]["status"] == "flag", flags[check]
        assert flags[check]["fix"]["gradient"] == "bpda:modules=Sign,surrogate=clip"
    # with the fix, the same attack's gradients are the straight-through ones and both clear
    fixed = _by_check(
        attack_indicators(
            masked_bnn, "fgsm", x, y, constraint=LinfBall(0.2), gradient="bpda:modules=Sign,surrogate=clip"
        )  # fmt: skip
    )
    assert fixed["unavailable gradients"]["status"] == "ok" and fixed["unconstrained attack failure"]["status"] == "ok"


def test_blocking_modules_names_the_sign_layers_only_when_they_block(cnn, masked_bnn, mnist_test):
    x, y = _correct(cnn, mnist_test, 4)
    assert blocking_modules(masked_bnn, x, y) == (["Sign"], True)
    assert blocking_modules(load_model("bnn"), x, y) == ([], False)  # the straight-through Sign passes gradients
    assert blocking_modules(cnn, x, y) == ([], False)


class _Noisy(nn.Module):
    """The wrapped net behind input noise of its own generator: random at every call."""

    def __init__(self, net, sigma=0.5):
        super().__init__()
        self.net, self.sigma = net, sigma
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn(x.shape, generator=self.generator))


def test_unstable_predictions_fire_on_a_randomized_model_with_the_eot_fix(cnn, mnist_test):
    x, y = _correct(cnn, mnist_test, 10)
    noisy = ModelAdapter(_Noisy(cnn.module), name="noisy", bounds=cnn.bounds, input_shape=cnn.input_shape,
                         class_names=cnn.class_names, metadata={"stochastic": True})  # fmt: skip
    flags = _by_check(attack_indicators(noisy, "pgd", x, y, constraint=LinfBall(0.2), params={"steps": 5},
                                        only=("unstable predictions",)))  # fmt: skip
    unstable = flags["unstable predictions"]
    assert unstable["status"] == "flag" and "randomized" in unstable["reason"]
    # one draw's verdict is not the point's: silent success is not judged on a randomized model
    silent = _by_check(attack_indicators(noisy, "pgd", x, y, constraint=LinfBall(0.2), params={"steps": 5},
                                         only=("silent success",)))["silent success"]  # fmt: skip
    assert silent["status"] == "skipped"
    assert unstable["fix"]["gradient"].startswith("eot:identity,samples=")


def test_incomplete_optimization_fires_when_the_steps_are_too_small_to_converge(cnn, mnist_test):
    x, y = _correct(cnn, mnist_test, 10)
    flags = _by_check(attack_indicators(cnn, "pgd", x, y, constraint=LinfBall(0.3), only=("incomplete optimization",),
                                        params={"steps": 10, "step_size": 0.002, "random_start": False}))  # fmt: skip
    incomplete = flags["incomplete optimization"]
    assert incomplete["status"] == "flag", incomplete
    assert incomplete["fix"]["params"] == {"steps": 20}


def test_transfer_failure_fires_when_the_surrogate_points_the_wrong_way():
    model = _linear()
    opposite = _linear()  # the same network with negated logits: its gradient points away from the model's boundary
    with torch.no_grad():
        opposite.module[1].weight.neg_()
    x, y = _linear_data(model)
    flags = _by_check(attack_indicators(model, "fgsm", x, y, constraint=LinfBall(0.5), only=("transfer failure",),
                                        gradient=TransferGradient(opposite)))  # fmt: skip
    assert flags["transfer failure"]["status"] == "flag", flags["transfer failure"]
    plain = _by_check(attack_indicators(model, "fgsm", x, y, constraint=LinfBall(0.5), only=("transfer failure",)))
    assert plain["transfer failure"]["status"] == "skipped"


def test_the_probe_splits_the_path_per_sample_and_changes_no_result(cnn, mnist_test):
    from advkit.indicators import traced_run

    x, y = _correct(cnn, mnist_test, 6)
    # tracing the first 3 of 6 watches only their rows: the others' are left out, none is given to a watched sample
    result, path = traced_run(cnn, "pgd", x, y, constraint=LinfBall(0.2), watch=3, params={"steps": 7})
    assert path.n == 3 and all(int((~torch.isnan(g)).sum()) == 7 for g in path.grad_norms)
    assert torch.equal(result.x_adv, run_attack(cnn, "pgd", x, y, eps=0.2, steps=7).x_adv)
    traced = probe(cnn, "pgd", x, y, constraint=LinfBall(0.2), params={"steps": 7, "random_start": False})
    plain = run_attack(cnn, "pgd", x, y, eps=0.2, steps=7, random_start=False)
    assert torch.equal(traced.success, plain.success) and torch.equal(traced.x_adv, plain.x_adv)
    for i in range(len(y)):
        steps = ~torch.isnan(traced.grad_norms[i])
        assert int(steps.sum()) == 7  # every differentiated call of sample i, and no other sample's


def test_merge_fixes_prefers_bpda_and_keeps_the_largest_parameter():
    merged = merge_fixes([
        {"gradient": "transfer:cnn", "params": {}, "text": "a"},
        {"gradient": "bpda:modules=Sign,surrogate=clip", "params": {"steps": 40}, "text": "b"},
        {"gradient": None, "params": {"steps": 80}, "text": "c"},
        None,
    ])  # fmt: skip
    assert merged["gradient"].startswith("bpda") and merged["params"] == {"steps": 80}
    assert merge_fixes([None, {"gradient": None, "params": {}, "text": "nothing to run"}]) is None


def test_attack_adaptive_fixes_the_masked_bnn_and_the_indicators_do_not_change_the_result(masked_bnn, mnist_test):
    from advkit.datasets import load_dataset
    from advkit.studies.attack import attack_study

    data = load_dataset("mnist")
    plain = attack_study(masked_bnn, data, "pgd", eps=0.2, n=12, steps=10, indicators=False)
    study = attack_study(masked_bnn, data, "pgd", eps=0.2, n=12, steps=10, adaptive=True)
    assert torch.equal(study.result.x_adv, plain.result.x_adv)
    assert study.result.backward_passes == plain.result.backward_passes  # the probe is not charged to the attack
    summary = study.summary()
    raised = {f["check"] for f in summary["indicators"] if f["status"] == "flag"}
    assert "unavailable gradients" in raised
    adaptive = summary["adaptive"]
    assert adaptive["rerun"] and adaptive["fix"]["gradient"] == "bpda:modules=Sign,surrogate=clip"
    ste = attack_study(load_model("bnn"), data, "pgd", eps=0.2, n=12, steps=10, indicators=False)
    assert torch.equal(study.adaptive_result.success, ste.result.success)  # BPDA clip is the zoo BNN's own STE
    after = {f["check"]: f["status"] for f in adaptive["indicators_after"]}
    assert after["unavailable gradients"] == "ok"


def test_cli_attack_prints_the_indicators_and_adaptive_rerun(tmp_path):
    out = CliRunner().invoke(cli, ["attack", "--model", "bnn:straight_through=false", "--eps", "0.2", "-n", "8",
                                   "--attack", "pgd", "--steps", "5", "--adaptive", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["adaptive"]["success_after"] > summary["success_rate"]
    text = CliRunner().invoke(cli, ["attack", "--model", "cnn", "--eps", "0.2", "-n", "8", "--attack", "pgd",
                                    "--steps", "5"])  # fmt: skip
    assert text.exit_code == 0 and "indicators     none raised" in text.output
    off = CliRunner().invoke(cli, ["attack", "--model", "cnn", "--eps", "0.2", "-n", "8", "--no-indicators", "--json"])
    assert off.exit_code == 0 and "indicators" not in json.loads(off.output)


def test_sweep_adaptive_brings_the_masked_bnn_to_the_ste_model_and_leaves_cnn_alone(tmp_path):
    args = ["sweep", "--model", "cnn", "--model", "bnn", "--model", "bnn:straight_through=false", "--attack", "pgd",
            "--eps", "0.2,0.3", "-n", "12", "-p", "pgd.steps=10", "--out", str(tmp_path), "--adaptive", "--json"]  # fmt: skip
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    masked = "bnn:straight_through=false"
    raised = [f for f in summary["flags"] if f["status"] == "flag"]
    assert not [f for f in raised if f["model"] == "cnn"], raised
    assert {f["check"] for f in raised if f["model"] == masked} >= {"zero/NaN gradients", "white-box >= transfer"}
    reruns = {(r["model"], r["attack"]): r for r in summary["adaptive"]}
    assert ("cnn", "pgd") not in reruns  # nothing flagged on cnn: nothing rerun
    rerun = reruns[(masked, "pgd")]
    assert rerun["fix"]["gradient"] == "bpda:modules=Sign,surrogate=clip"
    masking = {"zero/NaN gradients", "full-range eps", "white-box >= random noise", "white-box >= transfer"}
    assert not [f for f in rerun["flags_after"] if f["status"] == "flag" and f["check"] in masking]
    rows = [r for r in summary["adaptive_rows"] if r["model"] == masked]
    ste = {r["eps"]: r["success_rate"] for r in summary["rows"] if r["model"] == "bnn" and r["attack"] == "pgd"}
    for row in rows:
        assert row["success_before"] < row["success_after"] and abs(row["success_after"] - ste[row["eps"]]) <= 0.05
    page = (tmp_path / "index.html").read_text()
    assert "Adaptive reruns" in page and (tmp_path / rerun["folder"] / "index.html").exists()
    assert (tmp_path / "adaptive.csv").exists()
    (tmp_path / "index.html").unlink()  # `advkit report` rebuilds the page, adaptive section included, from files
    assert CliRunner().invoke(cli, ["report", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "index.html").read_text() == page
    again = CliRunner().invoke(cli, args)  # a rerun resumes every folder, the reruns' included
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["adaptive_rows"] == summary["adaptive_rows"]


def test_evaluate_adaptive_reruns_with_bpda_and_counts_a_sample_either_run_broke(masked_bnn, cnn, mnist_test, tmp_path):
    from advkit.evaluation import Stage, evaluate
    from advkit.evaluation_report import write_evaluation_report

    stages = [Stage("pgd", {"steps": 10})]
    x, y = _correct(masked_bnn, mnist_test, 12)
    result = evaluate(masked_bnn, x, y, eps=0.2, stages=stages, adaptive=True)
    summary = result.summary()
    adaptive = summary["adaptive"]
    assert adaptive["rerun"] and adaptive["fix"]["gradient"] == "bpda:modules=Sign,surrogate=clip"
    assert adaptive["robust_accuracy_after"] < summary["robust_accuracy"]
    both = result.robust & result.adaptive_result.robust
    assert adaptive["robust_accuracy_both"] == int(both.sum()) / len(both)
    after = {c["check"]: c["status"] for c in adaptive["checks_after"]}
    assert after["zero_gradients"] == "ok"  # checked through the estimator the rerun's stages used
    write_evaluation_report(result, tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert (
        "Adaptive rerun" in page and "unavailable gradients" in page and (tmp_path / "adaptive" / "index.html").exists()
    )
    clean = evaluate(cnn, *_correct(cnn, mnist_test, 12), eps=0.2, stages=stages, adaptive=True).summary()
    assert clean["adaptive"]["rerun"] is False
    assert not [f for f in [*clean["checks"], *clean["indicators"]] if f["status"] == "flag"]


def test_the_attack_summary_names_the_estimator_and_a_randomized_model():
    out = CliRunner().invoke(cli, ["attack", "--model", "s6_adv_rand", "--eps", "0.2", "-n", "3", "--attack", "pgd",
                                   "--steps", "2", "--gradient", "eot:identity,samples=2"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "gradient       eot:identity,samples=2" in out.output
    assert "randomized     the model's outputs are random: success is one draw per point" in out.output
    plain = CliRunner().invoke(cli, ["attack", "--model", "cnn", "--eps", "0.2", "-n", "3", "--no-indicators"])
    assert "randomized" not in plain.output and "gradient  " not in plain.output
