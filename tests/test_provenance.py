"""Reports say how to reproduce them: every summary.json, a sweep's config.json and every index.html record the exact
command line (or Python call), versions, torch threads and device; attack parameters are discoverable."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from advkit.cli import cli


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def test_summary_json_records_the_command_line_versions_threads_and_device(tmp_path):
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        result = invoke(
            "attack", "--model", "cnn", "--eps", "0.2", "-n", "2", "--attack", "fgsm", "--threads", "1", "--out", out
        )
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1  # --threads reached torch
    finally:
        torch.set_num_threads(threads)
    record = json.loads((out / "summary.json").read_text())["provenance"]
    assert record["command"] == f"advkit attack --model cnn --eps 0.2 -n 2 --attack fgsm --threads 1 --out {out}"
    assert record["torch_threads"] == 1 and record["device"] == "cpu"
    assert record["torch"] == torch.__version__ and record["advkit"]


def test_sweep_config_and_index_record_how_to_reproduce_and_report_takes_json(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", "cnn", "--attack", "fgsm", "--eps", "0.1", "-n", "4", "--no-checks", "--out", out]
    assert invoke(*args).exit_code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["provenance"]["command"].startswith("advkit sweep --model cnn --attack fgsm")
    page = (out / "index.html").read_text()
    assert "<h2>Reproduce</h2>" in page and "advkit sweep --model cnn --attack fgsm" in page
    assert '<div class="wide">' in page and "max-width: 1180px" in page  # tables scroll inside a 1280-px window
    rebuilt = invoke("report", out, "--json")
    assert rebuilt.exit_code == 0 and json.loads(rebuilt.output)["folder"] == str(out)


def test_threads_from_the_environment(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = invoke("attacks", env={"ADVKIT_THREADS": "1"})
        assert result.exit_code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_attack_parameters_are_listed_with_types_defaults_and_ranges():
    listed = invoke("attacks", "pgd")
    assert listed.exit_code == 0
    assert "-p steps (int, default 40): an integer in [1, 1000000]; steps per restart" in listed.output
    assert "-p step_rule (str, default 'sign'): one of 'sign', 'l2', 'std', 'raw'" in listed.output
    everything = json.loads(invoke("attacks", "--json").output)
    pgd = next(row for row in everything if row["name"] == "pgd")
    steps = next(p for p in pgd["params"] if p["name"] == "steps")
    assert steps == {
        "name": "steps",
        "type": "int",
        "default": 40,
        "range": "[1, 1000000]",
        "valid": "an integer in [1, 1000000]",
        "doc": "steps per restart",
    }
    assert "-p confidence" in invoke("attacks", "--params").output
    unknown = invoke("attacks", "nope")
    assert unknown.exit_code == 2 and "unknown attack 'nope'" in unknown.output


def test_example_figures_show_unfooled_samples_too():
    from advkit.figures import pick_examples
    from advkit.result import AttackResult

    success = torch.tensor([True] * 9 + [False] * 3)
    result = AttackResult(
        model="m",
        attack="a",
        attack_params={},
        bounds=(-1.0, 1.0),
        constraints="",
        constraints_dict={},
        criterion="",
        eps=0.1,
        seed=0,
        x=torch.zeros(12, 1, 2, 2),
        x_adv=torch.zeros(12, 1, 2, 2),
        y=torch.zeros(12, dtype=torch.long),
        target=None,
        pred=torch.zeros(12, dtype=torch.long),
        confidence=torch.ones(12),
        success=success,
        forward_passes=0,
        backward_passes=0,
        budget=None,
        seconds=0.0,
        plugin={},
    )
    rows = pick_examples(result, 6)
    assert len(rows) == 6 and sum(not bool(success[i]) for i in rows) == 2  # a third of the rows are unfooled
    assert pick_examples(result, 6) == sorted(rows)
