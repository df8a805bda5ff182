"""The CLI end to end through click's CliRunner, including the bad-input table."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from advkit.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_main_command_json():
    result = invoke("attack", "--model", "bnn", "--eps", "0.1", "-n", "20", "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
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
        assert key in s
    assert s["model"] == "bnn" and s["attack"] == "untargeted" and s["n"] == 20
    assert s["bounds"] == [-1.0, 1.0] and s["eps_01"] == pytest.approx(0.05)
    assert s["max_linf"] <= 0.1 + 1e-6
    assert s["plugin"]["name"] == "untargeted" and s["plugin"]["version"]
    assert "box(" in s["constraints"] and "linf" in s["constraints"]
    assert s["backward_passes"] <= 100 * 20


def test_human_summary_states_eps_on_both_scales():
    result = invoke("attack", "--model", "bnn", "--eps", "0.1", "-n", "5")
    assert result.exit_code == 0, result.output
    assert "0.0500 on the 0-1 scale" in result.output
    assert "re-checked" in result.output


def test_out_writes_examples_and_grid(tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "attack",
        "--model",
        "cnn",
        "--eps",
        "0.3",
        "-n",
        "6",
        "--attack",
        "pgd",
        "--steps",
        "10",
        "--out",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.output
    tensors = load_file(str(out / "examples.safetensors"))
    assert set(tensors) == {"x", "x_adv", "y", "pred", "confidence", "success"}
    assert tensors["x_adv"].shape == (6, 1, 28, 28)
    assert (out / "examples.png").stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["n"] == 6


def test_targeted_with_class_and_label_and_constraints():
    result = invoke(
        "attack",
        "--model",
        "cnn",
        "--attack",
        "targeted",
        "--eps",
        "0.5",
        "--label",
        "1",
        "--target",
        "8",
        "--constraints",
        "linf,nonneg,box",
        "-n",
        "5",
        "--json",
    )
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["target"] == 8 and "nonneg" in s["constraints"]


def test_param_and_budget_options():
    result = invoke(
        "attack",
        "--model",
        "cnn",
        "--attack",
        "pgd",
        "--eps",
        "0.2",
        "-n",
        "4",
        "-p",
        "restarts=2",
        "--steps",
        "5",
        "--budget",
        "7",
        "--json",
    )
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["attack_params"]["restarts"] == 2 and s["backward_passes"] <= 7 * 4


def test_eps_fraction():
    result = invoke("attack", "--model", "cnn", "--eps", "16/255", "-n", "3", "--json")
    assert json.loads(result.output)["eps"] == pytest.approx(16 / 255)


BAD = [
    (["--model", "nope", "--eps", "0.1"], "valid models: bnn, cnn"),
    (["--model", "bnn", "--eps", "0.1", "--attack", "nope"], "valid attacks:"),
    (["--model", "bnn", "--eps", "-0.1"], "eps must be >= 0"),
    (["--model", "bnn", "--eps", "3"], "exceeds the range"),
    (["--model", "bnn", "--eps", "abc"], "not a number"),
    (["--model", "bnn", "--eps", "0.1", "--attack", "targeted", "--target", "10"], "out of range"),
    (
        ["--model", "bnn", "--eps", "0.1", "--attack", "targeted", "--target", "3", "--label", "3"],
        "equals the true label",
    ),
    (["--model", "bnn", "--eps", "0.1", "--attack", "targeted"], "give --target"),
    (["--model", "bnn", "--eps", "0.1", "-n", "0"], "Invalid value for '-n' / '--n': 0 is not in the range x>=1"),
    (["--model", "bnn", "--eps", "0.1", "--constraints", "linf,bogus"], "valid"),
    (["--model", "bnn", "--eps", "0.1", "-p", "nope=1"], "no parameter"),
    (["--model", "bnn", "--eps", "0.1", "-p", "steps=abc"], "cannot read"),
    (["--model", "bnn", "--eps", "0.1", "--budget", "0"], "Invalid value for '--budget': 0 is not in the range x>=1"),
    (["--model", "bnn", "--eps", "0.1", "--confidence", "1.5"], "confidence"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_gives_clear_error(args, message):
    result = CliRunner().invoke(cli, ["attack", *args])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = CliRunner().invoke(cli, ["attack", "--model", "bnn", "--eps", "0.1", "--out", str(locked / "x")])
    assert result.exit_code != 0 and "not writable" in result.output


def test_out_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    result = CliRunner().invoke(cli, ["attack", "--model", "bnn", "--eps", "0.1", "--out", str(blocker / "sub")])
    assert result.exit_code != 0 and "not writable" in result.output
    assert blocker.read_text() == "keep me"


def test_listings():
    attacks = json.loads(invoke("attacks", "--json").output)
    assert {a["name"] for a in attacks} >= {"untargeted", "targeted", "binary", "fgsm", "pgd"}
    assert all(a["description"] for a in attacks)
    models = invoke("models").output
    assert "bnn" in models and "cnn" in models
    plugins = json.loads(invoke("plugins", "--json").output)
    by_name = {p["name"]: p for p in plugins}
    assert by_name["pgd"]["hooks"] == ["register_attacks"] and by_name["pgd"]["builtin"]
    assert by_name["mnist_models"]["hooks"] == ["register_models"]
    assert all(p["version"] for p in plugins)
    assert "linf" in invoke("constraints").output


def test_default_digits_are_class_balanced(tmp_path):
    result = invoke("attack", "--model", "cnn", "--eps", "0.05", "-n", "30", "--out", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    y = load_file(str(tmp_path / "examples.safetensors"))["y"]
    assert sorted(y.tolist()) == sorted(list(range(10)) * 3)


@pytest.mark.parametrize("listing", ["attacks", "models", "constraints"])
def test_listings_put_every_description_in_one_column(listing):
    from advkit import registry

    items = {"attacks": registry.attacks, "models": registry.models, "constraints": registry.constraints}[listing]()
    lines = CliRunner().invoke(cli, [listing]).output.splitlines()
    assert len(lines) == len(items)
    starts = {line.index(item.description) for line, item in zip(lines, items.values())}
    assert len(starts) == 1 and starts.pop() > max(len(name) for name in items)


def test_a_script_next_to_a_clone_named_advkit_gets_a_message(tmp_path):
    """Running from the folder that holds the clone: `import advkit` finds the repository folder, not the package;
    it says so instead of a bare ImportError later."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "advkit").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    run = subprocess.run(
        [sys.executable, "-c", "from advkit.runner import run_attack"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "found the advkit repository folder" in run.stderr and "not the advkit package" in run.stderr
