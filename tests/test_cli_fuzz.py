"""Hypothesis over the CLI's options: whatever a user types, no traceback (not even one turned into an "internal
error" line), and never exit 0 with a result outside the threat model or a success counted on a non-finite value.

Deterministic (``derandomize``) and bounded to well under a minute: most drawn command lines fail fast with a usage
error, the rest attack at most 3 digits for at most 3 steps.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advkit.cli import cli

pytestmark = pytest.mark.usefixtures("one_thread")

#: Numbers as a user may type them: plain, huge, tiny, signed zero, nan, inf, fractions, garbage.
NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "0",
            "-0",
            "-0.0",
            "1e308",
            "1e-320",
            "5e-324",
            "nan",
            "-inf",
            "inf",
            "8/255",
            "1/0",
            "0/0",
            "0.1",
            "0.3",
            "2",
            "3",
            "-1",
            "1e400",
            "0x10",
            "",
            " ",
            "abc",
            "٣",
        ]
    ),
    st.integers(-10, 10).map(str),
    st.text(max_size=6),
)
COUNT = st.one_of(st.integers(-3, 4).map(str), st.sampled_from(["99999999999999999999", "2.5", "1e3", "", "x", "-0"]))
SEED = st.one_of(st.sampled_from(["0", "-1", str(2**64), str(2**64 - 1), "1.5", "s"]), st.integers(0, 5).map(str))
CONSTRAINTS = st.one_of(
    st.sampled_from(
        [
            "linf",
            "linf,box",
            "l2",
            "nonneg",
            "box",
            "",
            "linf,nonneg",
            "binary",
            "linf,binary",
            "bogus",
            "linf,,",
            ",",
            "linf,l2,nonneg,box,binary",
        ]
    ),
    st.text(max_size=8),
)
ATTACKS = st.sampled_from(
    ["untargeted", "targeted", "pgd", "fgsm", "apgd", "binary", "noise", "apgd_targeted", "nope", "universal"]
)
PARAM_KEYS = st.sampled_from(
    ["steps", "step_size", "restarts", "confidence", "random_start", "step_rule", "loss", "value", "nope", "", "steps "]
)
NAME = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=8
).filter(lambda t: t not in (".", ".."))


#: Each option of ``advkit attack`` with sensible values and hostile ones.
ATTACK_OPTIONS = {
    "--model": (st.sampled_from(["cnn", "bnn"]), st.sampled_from(["nope", "", "cnn:x=1"])),
    "--eps": (st.sampled_from(["0.1", "0.3", "8/255", "2", "0", "-0", "1e-320"]), NUMBER),
    "--attack": (
        st.sampled_from(["untargeted", "pgd", "fgsm", "apgd", "binary", "targeted", "apgd_targeted", "noise"]),
        ATTACKS | st.text(max_size=5),
    ),
    "-n": (st.sampled_from(["1", "2", "3"]), COUNT),
    "--constraints": (
        st.sampled_from(["linf", "linf,box", "l2", "linf,nonneg,box", "binary", "linf,binary"]),
        CONSTRAINTS,
    ),
    "--steps": (st.sampled_from(["1", "2", "3"]), COUNT),
    "--step-size": (st.sampled_from(["0.01", "1/255", "0.5"]), NUMBER),
    "--seed": (st.sampled_from(["0", "7", str(2**64 - 1)]), SEED),
    "--budget": (st.sampled_from(["1", "3"]), COUNT),
    "--confidence": (st.sampled_from(["0", "0.5", "0.99"]), NUMBER),
    "--target": (st.sampled_from(["3", "7", "eight"]), NUMBER),
    "--label": (st.sampled_from(["1", "4"]), COUNT),
    "-p": (
        st.sampled_from(["restarts=1", "step_rule=sign", "random_start=false", "confidence=0.5"]),
        st.tuples(PARAM_KEYS, NUMBER).map("=".join),
    ),
}
#: Options always given (the rest only sometimes).
ALWAYS = ("--model", "--eps", "--attack", "-n", "--steps")


@st.composite
def attack_command(draw) -> tuple[list[str], Path | None]:
    """A sensible command line with up to two options hostile, some left out, --unbounded now and then."""
    hostile = draw(st.sets(st.sampled_from(sorted(ATTACK_OPTIONS)), max_size=2))
    args = ["attack", "--json"]
    for option, (good, bad) in ATTACK_OPTIONS.items():
        if option in ALWAYS or option in hostile or draw(st.integers(0, 3)) == 0:
            if option == "--eps" and option not in hostile and draw(st.integers(0, 5)) == 0:
                args.append("--unbounded")
                continue
            args += [option, draw(bad if option in hostile else good)]
    out = None
    if draw(st.booleans()):
        out = Path(tempfile.mkdtemp(prefix="advkit fuzz ")) / draw(NAME)
        args += ["--out", str(out)]
    return args, out


def assert_clean_failure_or_honest_success(result, args, out: Path | None) -> None:
    command = " ".join(map(repr, args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (command, repr(result.exception))
    assert "Traceback" not in result.output, command
    assert "internal error" not in result.output, (command, result.output)
    if result.exit_code != 0:
        assert "Error" in result.output, (command, result.output)
        return
    summary = json.loads(result.output)
    numbers = [summary[k] for k in ("mean_linf", "max_linf", "mean_l2", "mean_confidence", "raw_success_rate")]
    assert all(math.isfinite(v) for v in numbers), (command, numbers)
    eps = summary["eps"]
    detail = summary["constraints_detail"]
    if "linf" in detail:
        assert eps is not None and summary["max_linf"] <= float(detail["linf"]["eps"]) + 1e-6, command
    if eps is not None:
        assert "linf" in detail or "l2" in detail or "binary" in detail, command  # eps always bounds something
        assert eps == pytest.approx(_number(args[args.index("--eps") + 1])), command  # the radius enforced
    assert summary["n_success"] <= summary["n"] - summary["nonfinite_logits"], command
    if out is not None:
        from safetensors.torch import load_file

        tensors = load_file(str(out / "examples.safetensors"))
        delta = tensors["x_adv"] - tensors["x"]
        assert bool(((tensors["x_adv"] >= -1 - 1e-6) & (tensors["x_adv"] <= 1 + 1e-6)).all()), command
        if "linf" in detail:
            assert float(delta.abs().max()) <= float(detail["linf"]["eps"]) + 1e-6, command
        if "nonneg" in detail:
            assert float(delta.min()) >= -1e-6, command


def _number(text: str) -> float:
    from fractions import Fraction

    return float(Fraction(text)) if "/" in text else float(text)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(command=attack_command())
def test_attack_command_line_fuzz(command):
    args, out = command
    result = CliRunner().invoke(cli, args)
    assert_clean_failure_or_honest_success(result, args, out)


@st.composite
def sweep_command(draw) -> list[str]:
    """A small sweep with up to one hostile part."""
    hostile = draw(st.sampled_from([None, "eps", "model", "attack", "n", "constraints", "param"]))
    eps = draw(st.lists(st.sampled_from(["0.1", "0.2", "8/255", "0"]), min_size=1, max_size=3, unique=True))
    if hostile == "eps":
        eps[draw(st.integers(0, len(eps) - 1))] = draw(NUMBER | st.sampled_from(["8/255,0.0313725", "0.1,0.1"]))
    model = (
        draw(st.sampled_from(["cnn:bogus=1", "bnn:straight_through=maybe", "bnn:a=1,a=2", "nope", "cnn,cnn"]))
        if hostile == "model"
        else draw(st.sampled_from(["cnn", "bnn:straight_through=false"]))
    )
    attack = draw(ATTACKS) if hostile == "attack" else draw(st.sampled_from(["fgsm", "pgd"]))
    out = Path(tempfile.mkdtemp(prefix="advkit fuzz ")) / draw(NAME)
    args = [
        "sweep",
        "--model",
        model,
        "--attack",
        attack,
        "--eps",
        ",".join(eps),
        "--no-checks",
        "--out",
        str(out),
        "--json",
        "-n",
        draw(COUNT) if hostile == "n" else "2",
    ]
    if hostile == "constraints" or draw(st.booleans()):
        args += ["--constraints", draw(CONSTRAINTS) if hostile == "constraints" else "linf"]
    if attack == "pgd":
        args += ["-p", f"steps={draw(COUNT) if hostile == 'param' else '1'}"]
    return args


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(args=sweep_command())
def test_sweep_command_line_fuzz(args):
    result = CliRunner().invoke(cli, args)
    command = " ".join(map(repr, args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (command, repr(result.exception))
    assert "Traceback" not in result.output and "internal error" not in result.output, (command, result.output)
    if result.exit_code == 0:
        summary = json.loads(result.output)
        for row in summary["rows"]:
            assert 0 <= row["success_rate"] <= 1 or math.isnan(row["success_rate"]), command
