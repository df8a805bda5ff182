"""Hyperparameters are validated once, from the attack's own declaration, on every path: the CLI's -p, its named
options and Python keyword arguments give the same refusal, naming the parameter and its valid range."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from advkit import registry
from advkit.attack import Attack
from advkit.cli import cli
from advkit.errors import ParameterError
from advkit.params import MAX_STEPS, param, param_specs, parse_params
from advkit.runner import make_attack, run_attack

ATTACK = ["attack", "--model", "cnn", "--eps", "0.1", "-n", "1"]


@pytest.mark.parametrize("value, shown", [("nan", "nan"), ("inf", "inf"), ("-0.1", "-0.1"), ("0", "0.0")])
def test_step_size_is_refused_alike_by_p_by_the_named_option_and_in_python(tiny_model, tiny_batch, value, shown):
    expected = f"attack 'pgd': parameter step_size must be a finite number > 0, or None, got {shown}"
    by_p = CliRunner().invoke(cli, [*ATTACK, "--attack", "pgd", "-p", f"step_size={value}"])
    assert by_p.exit_code == 2 and expected in by_p.output
    with pytest.raises(ParameterError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run_attack(tiny_model, "pgd", *tiny_batch, eps=0.1, step_size=float(value))
    if float(value) > 0 or value == "nan":  # the named option's own type refuses negatives before the declaration
        named = CliRunner().invoke(cli, [*ATTACK, "--attack", "pgd", "--step-size", value])
        assert named.exit_code == 2 and ("must be a finite number" in named.output or expected in named.output)


@pytest.mark.parametrize(
    "raw, message",
    [
        ("99999999999999999999", f"parameter steps must be an integer in [1, {MAX_STEPS}], got 99999999999999999999"),
        ("2.5", "parameter steps must be an integer in [1, 1000000]; cannot read '2.5'"),
        ("0", "parameter steps must be an integer in [1, 1000000], got 0"),
    ],
)
def test_steps_out_of_range_or_not_an_integer(raw, message):
    result = CliRunner().invoke(cli, [*ATTACK, "--attack", "pgd", "-p", f"steps={raw}"])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("extra", [["-p", "steps=3", "--steps", "5"], ["-p", "steps=3", "-p", "steps=4"]])
def test_a_parameter_set_twice_is_refused_not_silently_resolved(extra):
    result = CliRunner().invoke(cli, [*ATTACK, "--attack", "pgd", *extra])
    assert result.exit_code == 2, result.output
    assert "both set steps; give it once" in result.output or "parameter steps is given twice" in result.output


def test_python_kwargs_of_the_wrong_type_are_refused_before_any_work(tiny_model, tiny_batch):
    calls = []
    original = tiny_model.module.forward
    tiny_model.module.forward = lambda x: calls.append(1) or original(x)
    try:
        for kwargs in ({"steps": 2.5}, {"steps": "2"}, {"steps": True}, {"restarts": 0}, {"random_start": "yes"}):
            with pytest.raises(ParameterError, match="attack 'pgd': parameter "):
                run_attack(tiny_model, "pgd", *tiny_batch, eps=0.1, **kwargs)
        for kwargs in ({"budget": 2.5}, {"budget": 0}, {"seed": -1}, {"seed": 2**64}, {"seed": 1.0}):
            with pytest.raises(ParameterError, match="budget|seed"):
                run_attack(tiny_model, "fgsm", *tiny_batch, eps=0.1, **kwargs)
    finally:
        del tiny_model.module.forward
    assert calls == []  # refused before the model saw a single input


def test_every_builtin_attack_declares_its_parameters_and_defaults_pass_their_own_check():
    for name, item in registry.attacks().items():
        specs = item.obj.param_specs()
        for spec in specs:
            assert spec.check(spec.default) == spec.default, (name, spec.name)
            assert spec.describe(), (name, spec.name)
        make_attack(name)  # the defaults construct


def test_a_plugins_plain_fields_still_get_the_type_check():
    @dataclass(kw_only=True)
    class Plain(Attack):
        name = "plain"
        trials: int = 10
        scale: float = 1.0
        bounded: float = param(0.5, ge=0, le=1, doc="a share")

        def run(self, problem):
            return problem.x

    assert Plain(trials=3).trials == 3
    for bad in ({"trials": 2.5}, {"scale": float("nan")}, {"bounded": 1.5}, {"trials": "3"}):
        with pytest.raises(ParameterError, match="attack 'plain': parameter"):
            Plain(**bad)
    assert parse_params(Plain, [("trials", "4"), ("bounded", "1/2")]) == {"trials": 4, "bounded": 0.5}
    assert [s.to_dict()["valid"] for s in param_specs(Plain)] == [
        "an integer",
        "a finite number",
        "a finite number in [0, 1]",
    ]
