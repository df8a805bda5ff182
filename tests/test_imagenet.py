"""ImageNet adapters, photos, the survival evaluator and ``advkit fool`` (S11, S12).

Most tests use a tiny ImageNet-shaped stand-in (3 x 224 x 224 -> 1000 classes, a few
thousand multiply-adds); a few run the real offline EfficientNet-Lite0, loaded once per module.
"""

from __future__ import annotations

import json
import types

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import advkit
from advkit import plugins
from advkit.cli import cli
from advkit.errors import WeightsLoadError
from advkit.images import (
    DEFAULT_SAMPLES,
    SAMPLES,
    ImageClassifier,
    ImageLoadError,
    Preprocessing,
    imagenet_adapter,
    imagenet_class_names,
    load_image,
    resolve_class,
    sample_names,
)
from advkit.models import ModelSpec, load_model
from advkit.survival import Survival
from advkit.transforms import apply_transform

SPACE_SHUTTLE = 812


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env=env)


def stand_in_net(seed: int = 0) -> nn.Module:
    """Pool 224 -> 32, one conv, a linear layer to 1000 logits (scaled up so a small eps moves them)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.AvgPool2d(7), nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 15 * 15, 1000)
    )
    with torch.no_grad():
        net[-1].weight.mul_(20)
    return net.eval()


def stand_in(name: str = "tiny_imagenet"):
    return imagenet_adapter(
        stand_in_net(),
        name=name,
        preprocessing=Preprocessing(crop_size=224, resize_size=256),
        description="tiny ImageNet-shaped stand-in",
    )


@pytest.fixture
def tiny_imagenet():
    """The stand-in registered as model ``tiny_imagenet`` for the CLI."""

    class StandInPlugin:
        @advkit.hookimpl
        def register_models(self, register):
            register(ModelSpec(name="tiny_imagenet", description="stand-in", load=stand_in, dataset="imagenet"))

    plugins.register_plugin(StandInPlugin(), name="tiny_imagenet_plugin")
    try:
        yield stand_in()
    finally:
        plugins.unregister_plugin("tiny_imagenet_plugin")


@pytest.fixture
def photo_files(tmp_path):
    """Two user photos (PNG and JPEG) with no declared class."""
    paths = []
    for name, fmt in (("cat.png", "PNG"), ("cup.jpg", "JPEG")):
        source = "chelsea" if name.startswith("cat") else "coffee"
        path = tmp_path / name
        SAMPLES[source].load().convert("RGB").resize((320, 240)).save(path, fmt)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


# ---------------------------------------------------------------- adapters


def test_models_lists_offline_default_and_torchvision_names():
    result = invoke("models", "--json")
    names = {row["name"]: row for row in json.loads(result.output)}
    for name in ["efficientnet_lite0", "resnet18", "resnet50", "vgg16", "mobilenet_v3_large", "mobilenet_v3_small"]:
        assert name in names and names[name]["plugin"] == "imagenet_models"
    assert "offline" in names["efficientnet_lite0"]["description"]


def test_every_registered_torchvision_model_names_real_weights():
    import torchvision.models as tvm

    from advkit.plugins.builtin.imagenet_models import TORCHVISION_MODELS

    for name, (weights_name, _) in TORCHVISION_MODELS.items():
        weights = tvm.get_weight(weights_name)
        assert weights in list(tvm.get_model_weights(name)), name
        assert len(weights.meta["categories"]) == 1000


def test_class_names_and_target_resolution():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[SPACE_SHUTTLE] == "space shuttle"
    for text in ["812", "space shuttle", "Space Shuttle", "shuttle"]:
        assert resolve_class(names, text) == SPACE_SHUTTLE
    assert resolve_class(names, "crane") == 517 and resolve_class(names, "crane bird") == 134
    assert resolve_class(names, "Cardigan") == 264 and resolve_class(names, "cardigan") == 474
    with pytest.raises(ValueError, match="matches 19 classes: 158 'toy terrier'"):
        resolve_class(names, "terrier")
    with pytest.raises(ValueError, match="no class is called"):
        resolve_class(names, "flux capacitor")
    with pytest.raises(ValueError, match="out of range"):
        resolve_class(names, "1000")


def test_image_classifier_normalizes_and_resizes_inside():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.flatten(1)[:, :1000]

    pre = Preprocessing(crop_size=32, resize_size=36, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    module = ImageClassifier(Probe(), pre)
    x = torch.rand(2, 3, 32, 32)
    module(x)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    assert torch.allclose(seen[-1], (x - mean) / std)
    module(torch.rand(1, 3, 64, 48))
    assert seen[-1].shape == (1, 3, 32, 32)
    adapter = imagenet_adapter(Probe(), name="probe", preprocessing=pre)
    assert adapter.bounds == (0.0, 1.0) and adapter.input_shape == (3, 32, 32)
    assert adapter.metadata["preprocessing"]["resize_size"] == 36


def test_missing_torchvision_weights_fail_with_the_path_to_put_them(tmp_path, monkeypatch):
    from advkit.plugins.builtin.imagenet_models import WeightsUnavailableError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("ADVKIT_OFFLINE", "1")
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("resnet18")
    message = str(info.value)
    assert str(expected) in message and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    result = invoke("fool", "--model", "resnet18", "--image", "chelsea")
    assert result.exit_code == 1
    assert "torchvision model 'resnet18'" in result.output and str(expected) in result.output
    assert "Traceback" not in result.output


def test_torchvision_weights_are_hash_checked_and_loaded_safely(tmp_path, monkeypatch):
    import torchvision.models as tvm

    from advkit.plugins.builtin.imagenet_models import WeightsUnavailableError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("ADVKIT_OFFLINE", "1")
    state = tvm.mobilenet_v3_small(weights=None).state_dict()
    # A file at the right place whose content does not match the hash in its name is refused.
    cached = tmp_path / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    with pytest.raises(WeightsUnavailableError, match="does not match its name"):
        load_model("mobilenet_v3_small")
    # An explicit file is read with weights_only=True into the exact architecture.
    own = tmp_path / "mine.pth"
    torch.save(state, own)
    model = load_model("mobilenet_v3_small", weights_path=str(own))
    assert model.input_shape == (3, 224, 224) and model.num_classes == 1000 and model.dataset == "imagenet"
    assert model.metadata["preprocessing"]["resize_size"] == 256
    assert torch.equal(model.module.net.classifier[-1].weight, state["classifier.3.weight"])
    # A pickle that is not a plain state dict is refused by weights_only=True.
    torch.save({"evil": types.SimpleNamespace(a=1)}, own)
    with pytest.raises(WeightsLoadError, match="only loads weights saved as safetensors or as a plain state dict"):
        load_model("mobilenet_v3_small", weights_path=str(own))


# ---------------------------------------------------------------- photos


def test_sample_photos_load_at_the_model_resolution():
    assert set(DEFAULT_SAMPLES) <= set(sample_names())
    pre = Preprocessing(crop_size=64, resize_size=73)
    for name in sample_names():
        x = load_image(name, pre)
        assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
        assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.std()) > 0.02


def test_user_photos_and_bad_sources(photo_files, tmp_path):
    model = stand_in()
    for path in photo_files:
        x = load_image(path, model)
        assert x.shape == (1, 3, 224, 224)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_image(not_an_image, model)
    with pytest.raises(ImageLoadError, match="samples: chelsea"):
        load_image("no_such_photo", model)


# ---------------------------------------------------------------- survival (S12)


def test_transforms_keep_shape_and_bounds():
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    bounds = (-1.0, 1.0)
    for name in ["flip", "crop", "rotate", "grayscale"]:
        y = apply_transform(name, x, bounds)
        assert y.shape == x.shape and float(y.min()) >= -1 and float(y.max()) <= 1
    assert torch.equal(apply_transform("flip", apply_transform("flip", x, bounds), bounds), x)
    gray = apply_transform("grayscale", x, bounds)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    assert torch.allclose(apply_transform("crop", x, bounds, crop_area=1.0), x)
    rotated = apply_transform("rotate", x, bounds, angle=30)
    assert float(rotated[0, :, 0, 0].max()) == -1.0  # corners filled with the low bound
    assert not torch.allclose(apply_transform("crop", x, bounds), x)
    with pytest.raises(ValueError, match="3-channel"):
        apply_transform("grayscale", x[:, :1], bounds)


def test_survival_evaluator_targeted_rows(tiny_imagenet):
    from advkit.runner import run_attack

    model = tiny_imagenet
    x = torch.cat([load_image(name, model) for name in ("chelsea", "coffee")])
    y = model.predict(x).argmax(1)
    result = run_attack(model, "targeted", x, y, eps=8 / 255, target=SPACE_SHUTTLE, steps=30, step_size=0.8 / 255)
    assert bool(result.success.all())
    frame = Survival().evaluate(model, result.x_adv, target=result.target, labels=y, x=x, names=["cat", "cup"])
    assert len(frame) == 2 * 5
    assert list(frame["transform"][:5]) == ["none", "flip", "crop", "rotate", "grayscale"]
    none = frame[frame["transform"] == "none"]
    assert none["survived"].all() and (none["pred"] == SPACE_SHUTTLE).all() and none["clean_correct"].all()
    assert (frame["still_fooled"] == (frame["pred"] == SPACE_SHUTTLE)).all()
    # survived: still the target AND the transformed clean photo still read correctly (else the transform alone fools)
    assert (frame["survived"] == (frame["still_fooled"] & frame["clean_correct"])).all()
    probs = model.predict(apply_transform("flip", result.x_adv, model.bounds)).softmax(1)
    flip = frame[frame["transform"] == "flip"]
    assert flip["probability"].tolist() == pytest.approx(probs.max(1).values.tolist(), abs=1e-5)
    table = Survival.table(frame)
    assert list(table.columns) == ["transform", "survival_rate", "still_fooled_rate", "clean_accuracy"]
    assert float(table.set_index("transform").loc["none", "survival_rate"]) == 1.0


def test_survival_evaluator_on_mnist_shaped_untargeted(tiny_model, tiny_batch):
    x, y = tiny_batch
    frame = Survival().evaluate(tiny_model, x, labels=y)
    assert set(frame["transform"]) == {"none", "flip", "crop", "rotate"}  # no grayscale for 1 channel
    assert not frame[frame["transform"] == "none"]["survived"].any()  # clean inputs: nothing to survive
    assert (frame["survived"] == (frame["pred"] != frame["label"])).all()  # no clean images given: the raw answer
    with pytest.raises(ValueError, match="target"):
        Survival().evaluate(tiny_model, x)


def test_survival_is_a_registered_evaluator():
    from advkit import registry

    item = registry.get_evaluator("survival")
    assert item.obj is Survival and item.plugin.name == "survival"


# ---------------------------------------------------------------- advkit fool


def test_fool_on_user_photos_writes_figures_and_table(tiny_imagenet, photo_files, tmp_path):
    out = tmp_path / "fool"
    args = [
        "fool",
        "--model",
        "tiny_imagenet",
        "--target",
        "space shuttle",
        "--eps",
        "8/255",
        "--steps",
        "30",
        "--step-size",
        "0.003",
        "--out",
        str(out),
        "--json",
    ]
    for path in photo_files:
        args += ["--image", str(path)]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["target"] == SPACE_SHUTTLE and s["target_name"] == "space shuttle" and s["eps_text"] == "8/255"
    assert [r["image"] for r in s["images"]] == ["cat.png", "cup.jpg"]
    for r in s["images"]:
        assert r["label_from"] == "top-1" and r["label"] == r["before"]["class"]
        assert r["success"] and r["after"]["class"] == SPACE_SHUTTLE and r["after"]["probability"] >= 0.9
        assert r["linf"] <= 8 / 255 + 1e-6 and r["steps"] <= 30
    assert s["n_success"] == 2
    rates = {row["transform"]: row["survival_rate"] for row in s["survival"]["table"]}
    assert set(rates) == {"none", "flip", "crop", "rotate", "grayscale"} and rates["none"] == 1.0
    for name in ["fool.png", "survival.png", "survival.csv", "summary.json"]:
        assert (out / name).stat().st_size > 500, name
    import pandas as pd

    csv = pd.read_csv(out / "survival.csv")
    assert len(csv) == 10 and set(csv["image"]) == {"cat.png", "cup.jpg"}


def test_fool_human_output_shows_before_and_after(tiny_imagenet, photo_files):
    result = invoke(
        "fool",
        "--model",
        "tiny_imagenet",
        "--image",
        str(photo_files[0]),
        "--target",
        "812",
        "--eps",
        "8/255",
        "--step-size",
        "0.003",
        "--steps",
        "30",
        "--no-survival",
    )
    assert result.exit_code == 0, result.output
    assert "-> space shuttle (p=" in result.output and "top-1 used as label" in result.output
    assert "fooled 1/1 photos" in result.output and "survival" not in result.output.split("fooled 1/1")[1]


def test_fool_refuses_a_sample_the_model_gets_wrong(tiny_imagenet):
    result = invoke("fool", "--model", "tiny_imagenet", "--image", "chelsea")
    assert result.exit_code == 1
    assert "classifies sample photo 'chelsea' as" in result.output and "281 'tabby'" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "terrier"], "give the class index"),
        (["--target", "1000"], "out of range"),
        (["--image", "no_such_photo"], "neither an image file nor a sample photo"),
        (["--eps", "0"], "--eps must lie in (0, 1]"),
        (["--attack", "untargeted"], "not a targeted attack"),
        (["--model", "cnn"], "not RGB photos"),
        (["--model", "nope"], "valid models:"),
        (["--steps", "0"], "parameter steps must be an integer in [1, 1000000], got 0"),
    ],
)
def test_fool_bad_input(tiny_imagenet, args, message):
    base = {"--model": "tiny_imagenet"}
    result = invoke("fool", *[a for k, v in base.items() if k not in args for a in (k, v)], *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_fool_device_cuda_without_cuda_is_a_usage_error(tiny_imagenet):
    result = invoke("fool", "--model", "tiny_imagenet", "--device", "cuda")
    assert result.exit_code == 2 and "CUDA is not available" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fool_on_cuda(tiny_imagenet, photo_files):  # pragma: no cover - runs where a GPU exists
    result = invoke(
        "fool",
        "--model",
        "tiny_imagenet",
        "--image",
        str(photo_files[0]),
        "--eps",
        "8/255",
        "--step-size",
        "0.003",
        "--steps",
        "30",
        "--device",
        "cuda",
        "--json",
    )
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["device"].startswith("cuda") and s["images"][0]["success"]


# ---------------------------------------------------------------- the real offline EfficientNet-Lite0


def test_lite0_is_offline_and_classifies_the_default_samples(lite0):
    assert lite0.input_shape == (3, 224, 224) and lite0.bounds == (0.0, 1.0) and lite0.num_classes == 1000
    assert lite0.metadata["sha256"] and lite0.metadata["preprocessing"]["interpolation"] == "bicubic"
    x = torch.cat([load_image(name, lite0) for name in DEFAULT_SAMPLES])
    pred = lite0.predict(x).argmax(1).tolist()
    for name, p in zip(DEFAULT_SAMPLES, pred):
        assert p in SAMPLES[name].expected, (name, p, lite0.class_names[p])


def test_lite0_targeted_attack_within_the_bound(lite0):
    from advkit.runner import run_attack

    x = load_image("coffee", lite0)
    x0 = x.clone()
    y = lite0.predict(x).argmax(1)
    assert lite0.class_names[int(y)] == "espresso"
    eps = 2 / 255
    result = run_attack(lite0, "targeted", x, y, eps=eps, target=SPACE_SHUTTLE, steps=60, step_size=eps / 10)
    assert bool(result.success[0]) and int(result.pred[0]) == SPACE_SHUTTLE and float(result.confidence[0]) >= 0.9
    assert float(result.linf()[0]) <= eps + 1e-6 and float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    assert torch.equal(x, x0)
    # Re-checked independently: a fresh forward pass reads "space shuttle".
    assert int(lite0.predict(result.x_adv).argmax(1)) == SPACE_SHUTTLE


def test_lite0_weights_are_hash_checked(tmp_path):
    from advkit.zoo.efficientnet_lite import load_lite0
    from advkit.zoo.weights import WeightsIntegrityError

    fake = tmp_path / "efficientnet-lite0.pth"
    torch.save({"_fc.bias": torch.zeros(1000)}, fake)
    with pytest.raises(WeightsIntegrityError, match="SHA-256"):
        load_lite0(fake)


def test_a_transform_that_fools_the_model_on_its_own_is_not_counted_as_survived(tiny_model, tiny_batch):
    """survival.png used to count an untargeted example as survived whenever the transformed image was misclassified,
    even where the transformed *clean* image was misclassified too: that proves nothing about the attack."""
    x, y = tiny_batch
    frame = Survival().evaluate(tiny_model, x, labels=y, x=x)  # "adversarial" = clean: any survival is the transform's
    assert frame["still_fooled"].any()  # the tiny model gets some flipped or rotated inputs wrong
    assert not frame["survived"].any()
    table = Survival.table(frame).set_index("transform")
    assert (table["survival_rate"] == 0).all() and (table["still_fooled_rate"] > 0).any()
