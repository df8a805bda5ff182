"""Model specs (advkit.model_specs): one string for any model, each form on its real code path.

Every model and weights file is made by the test itself (nothing is downloaded): registered names with options,
your own file and package factories with safetensors / state-dict weights, normalization and class names, untrained
torchvision and timm networks, the offline errors of their pretrained weights, and RobustBench's checkpoint layout
(with a stand-in robustbench package the test writes, since the real one needs no network to be tested this way).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from advkit.errors import ModelLoadError, ParameterError, WeightsLoadError
from advkit.files import sha256_file
from advkit.model_specs import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    SPEC_FORMS,
    MissingDependencyError,
    describe_specs,
    load_model,
    parse_spec,
    resolve_classes,
    robustbench_checkpoint_path,
    wrap,
)
from advkit.registry import UnknownNameError

MODEL_FILE = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def make_wide(width=4, bias=True):
    return nn.Sequential(nn.Flatten(), nn.Linear(12, width, bias=bias))


def make_adapter():
    import advkit.model_specs

    return advkit.model_specs.wrap(make(), input_shape=(3, 2, 2), classes=["a", "b", "c"], name="mine")


def not_a_model():
    return "a string"


def broken():
    raise RuntimeError("no GPU here")
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my model ü.py"  # a space and a non-ASCII letter in the path
    path.write_text(MODEL_FILE, encoding="utf-8")
    return path


def _grad(model, x, y):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    return x.grad


# ----------------------------------------------------------------------------- registered names


def test_registered_name_with_and_without_options():
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    y = torch.arange(4)
    plain = load_model("bnn")
    masked = load_model("bnn:straight_through=false")
    assert plain.name == "bnn" and masked.name == "bnn:straight_through=false"
    assert masked.bounds == (-1.0, 1.0) and masked.input_shape == (1, 28, 28) and masked.num_classes == 10
    assert masked.metadata["spec"] == "bnn:straight_through=false" and masked.metadata["straight_through"] is False
    assert _grad(plain, x, y).abs().sum() > 0
    assert torch.count_nonzero(_grad(masked, x, y)) == 0  # Sign's true gradient: gradient masking


def test_registered_options_are_checked_against_the_loader():
    with pytest.raises(ParameterError, match=r"model 'bnn' has no option 'straight'.*did you mean 'straight_through'"):
        load_model("bnn:straight=false")
    with pytest.raises(ParameterError, match=r"its options: \(none\)"):
        load_model("cnn:bogus=1")
    with pytest.raises(ParameterError, match="true or false, got 1"):
        load_model("bnn:straight_through=1")
    with pytest.raises(ParameterError, match="given twice"):
        load_model("bnn:straight_through=true,straight_through=false")
    with pytest.raises(ParameterError, match="not key=value"):
        load_model("bnn:straight_through")
    with pytest.raises(ParameterError, match="takes no weights file"):
        load_model("cnn", weights="w.safetensors")
    with pytest.raises(ParameterError, match="bounds, input_shape only apply to your own nn.Module"):
        load_model("cnn", bounds=(0, 1), input_shape=(1, 28, 28))
    with pytest.raises(ParameterError, match="3 class names for model 'cnn', which has 10 classes"):
        load_model("cnn", classes=["a", "b", "c"])
    renamed = load_model("cnn", classes=[f"digit {d}" for d in range(10)])
    assert renamed.class_names[3] == "digit 3"


def test_an_unknown_name_lists_the_registered_ones_and_the_spec_forms():
    with pytest.raises(UnknownNameError, match=r"unknown model 'nope'; valid models: .*bnn.*; or a spec: torchvision"):
        load_model("nope")
    with pytest.raises(UnknownNameError, match="unknown model 'nope'"):
        load_model("nope:x=1")


def test_parse_spec_tells_the_forms_apart(tmp_path):
    assert parse_spec("bnn").kind == "registered"
    assert parse_spec("bnn:straight_through=false").options == {"straight_through": False}
    assert parse_spec("torchvision:resnet18:none").parts == ("none",)
    assert parse_spec("robustbench:Standard:cifar100:L2").parts == ("cifar100", "L2")
    found = parse_spec(f"{tmp_path}/a b.py:make:width=3,bias=false")
    assert (found.kind, found.target, found.factory) == ("file", f"{tmp_path}/a b.py", "make")
    assert found.options == {"width": 3, "bias": False}
    module = parse_spec("my_pkg.models:build:width=2")
    assert (module.kind, module.target, module.factory, module.options) == (
        "module",
        "my_pkg.models",
        "build",
        {"width": 2},
    )
    # options are separated by ',' or ':', as in data set specs; a list value keeps its commas, a path its colon
    assert parse_spec(f"{tmp_path}/a b.py:make:width=3:bias=false").options == {"width": 3, "bias": False}
    listed = parse_spec("net.py:make:weights=C:/w.safetensors,input_shape=1,28,28:bounds=0,1,lr=1e-3")
    assert listed.options == {"weights": "C:/w.safetensors", "input_shape": "1,28,28", "bounds": "0,1", "lr": 1e-3}
    with pytest.raises(ParameterError, match=r"no factory in it: write net\.py:make"):
        parse_spec("net.py")
    with pytest.raises(ParameterError, match="names no model"):
        parse_spec("torchvision:")
    with pytest.raises(ParameterError, match=r"not of the form timm:NAME\[:none\]"):
        parse_spec("timm:a:b:c")
    with pytest.raises(ParameterError, match="non-empty string"):
        parse_spec("  ")


def test_describe_specs_lists_every_form_and_importing_it_does_not_import_torch():
    text = describe_specs()
    for form, _ in SPEC_FORMS:
        assert form in text
    assert "weights=FILE" in text and "input_shape" in text
    code = "import sys, advkit.model_specs as m; m.describe_specs(); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == "False"


# ----------------------------------------------------------------------------- your own file and module


def test_a_model_file_with_spaces_and_unicode_in_its_path(model_file):
    model = load_model(f"{model_file}:make", input_shape=(3, 2, 2))
    assert model.input_shape == (3, 2, 2) and model.bounds == (0.0, 1.0)
    assert model.class_names == ["0", "1", "2"]  # inferred: one probe forward on zeros
    assert model.name == f"{model_file}:make" and model.metadata["source"] == "file"
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(5, 3, 2, 2)
    assert torch.allclose(model(x), reference(x))
    assert not model.module.training

    wide = load_model(f"{model_file}:make_wide:width=7,bias=false", input_shape="3,2,2", bounds="-1,1")
    assert wide.num_classes == 7 and wide.module[1].bias is None and wide.bounds == (-1.0, 1.0)
    with pytest.raises(ParameterError, match=r"has no option 'depth'.*; its options: width, bias"):
        load_model(f"{model_file}:make_wide:depth=2", input_shape=(3, 2, 2))


def test_weights_from_safetensors_and_from_a_state_dict_are_loaded_strictly_with_their_sha256(model_file, tmp_path):
    torch.manual_seed(123)
    trained = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    st = tmp_path / "trained.safetensors"
    save_file(trained.state_dict(), str(st))
    pt = tmp_path / "trained.pt"
    torch.save(trained.state_dict(), pt)
    x = torch.rand(4, 3, 2, 2)
    for path in (st, pt):
        model = load_model(f"{model_file}:make", weights=path, input_shape=(3, 2, 2))
        assert torch.allclose(model(x), trained(x))
        assert model.metadata["weights"] == str(path)
        assert model.metadata["weights_sha256"] == sha256_file(path)
    adapter = load_model(f"{model_file}:make_adapter", weights=st, classes=["x", "y", "z"])
    assert torch.allclose(adapter(x), trained(x)) and adapter.class_names == ["x", "y", "z"]
    assert adapter.metadata["weights_sha256"] == sha256_file(st)

    other = tmp_path / "other.safetensors"
    save_file(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).state_dict(), str(other))
    with pytest.raises(WeightsLoadError, match=r"does not fit .*different shapes for 1\.weight"):
        load_model(f"{model_file}:make", weights=other, input_shape=(3, 2, 2))
    with pytest.raises(WeightsLoadError, match="no weights file at"):
        load_model(f"{model_file}:make", weights=tmp_path / "missing.safetensors", input_shape=(3, 2, 2))


def test_a_pickled_whole_module_as_weights_is_refused(model_file, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), path)
    with pytest.raises(WeightsLoadError, match="holds a pickled Python object"):
        load_model(f"{model_file}:make", weights=path, input_shape=(3, 2, 2))


def test_one_spec_string_carries_weights_shape_bounds_and_classes(model_file, tmp_path):
    """What a sweep's repeatable --model needs: advkit's own options inside a factory spec, list values keeping
    their commas; the factory still gets its own options, and nothing can be said twice."""
    torch.manual_seed(5)
    trained = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    weights = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(weights))
    spec = f"{model_file}:make:weights={weights},input_shape=3,2,2,bounds=-1,1,mean=0.5,0.4,0.3,classes=a,b,c"
    model = load_model(spec)
    x = torch.rand(4, 3, 2, 2) * 2 - 1
    normalized = (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 1.0
    assert torch.allclose(model(x), trained(normalized), atol=1e-6)
    assert model.input_shape == (3, 2, 2) and model.bounds == (-1.0, 1.0) and model.class_names == ["a", "b", "c"]
    assert model.metadata["weights_sha256"] == sha256_file(weights)
    wide = load_model(f"{model_file}:make_wide:width=5,input_shape=3x2x2")
    assert wide.num_classes == 5
    with pytest.raises(ParameterError, match="input_shape is given twice .*in the spec and as an option"):
        load_model(f"{model_file}:make:input_shape=3,2,2", input_shape=(3, 2, 2))
    with pytest.raises(ParameterError, match="not key=value"):
        load_model(f"{model_file}:make:3,2,2")


def test_a_sweep_does_not_resume_on_edited_model_code(model_file):
    """Editing the factory's file (an activation, say) changes the results without changing a weight: the model's
    fingerprint covers the code, so a sweep refuses to reuse the cells of the old network."""
    from advkit.sweep import model_fingerprint

    before = load_model(f"{model_file}:make", input_shape=(3, 2, 2))
    assert before.metadata["code_sha256"] == sha256_file(model_file)
    same = load_model(f"{model_file}:make", input_shape=(3, 2, 2))
    assert model_fingerprint(same) == model_fingerprint(before)
    model_file.write_text(MODEL_FILE.replace("nn.Linear(12, 3))", "nn.Linear(12, 3), nn.Tanh())"), encoding="utf-8")
    after = load_model(f"{model_file}:make", input_shape=(3, 2, 2))
    assert after.module.state_dict().keys() == before.module.state_dict().keys()  # the same weights...
    assert model_fingerprint(after) != model_fingerprint(before)  # ...another network
    wider_box = load_model(f"{model_file}:make", input_shape=(3, 2, 2), bounds=(-1, 1))
    assert model_fingerprint(wider_box) != model_fingerprint(after)


def test_factory_errors_are_precise(model_file, tmp_path):
    with pytest.raises(ParameterError, match=r"returned a bare nn.Module: give its input_shape"):
        load_model(f"{model_file}:make")
    with pytest.raises(ParameterError, match=r"has no 'mkae'.*did you mean make"):
        load_model(f"{model_file}:mkae", input_shape=(3, 2, 2))
    with pytest.raises(ModelLoadError, match="returned a str; it must return an nn.Module or a ModelAdapter"):
        load_model(f"{model_file}:not_a_model")
    with pytest.raises(ModelLoadError, match="raised RuntimeError: no GPU here"):
        load_model(f"{model_file}:broken")
    with pytest.raises(ParameterError, match="only apply to a bare nn.Module"):
        load_model(f"{model_file}:make_adapter", input_shape=(3, 2, 2))
    with pytest.raises(ParameterError, match="fails on an input of shape \\(1, 3, 4, 4\\).*check input_shape"):
        load_model(f"{model_file}:make", input_shape=(3, 4, 4))
    with pytest.raises(ParameterError, match="no model file at"):
        load_model(f"{tmp_path}/absent.py:make", input_shape=(3, 2, 2))
    bad = tmp_path / "bad.py"
    bad.write_text("def make(:\n")
    with pytest.raises(ModelLoadError, match=r"importing model file .*bad\.py failed: SyntaxError"):
        load_model(f"{bad}:make", input_shape=(3, 2, 2))


def test_a_package_module_factory(tmp_path, monkeypatch):
    package = tmp_path / "spec_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            from .layers import width_of


            def build(width=4):
                return nn.Sequential(nn.Flatten(), nn.Linear(6, width_of(width)))
            """
        )
    )
    (package / "layers.py").write_text("def width_of(w):\n    return w\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        model = load_model("spec_test_pkg.nets:build:width=5", input_shape=(6,), classes=5)
        assert model.num_classes == 5 and model.input_shape == (6,) and model.metadata["source"] == "module"
        assert model(torch.zeros(2, 6)).shape == (2, 5)
        with pytest.raises(ParameterError, match="cannot import module 'spec_test_pkg.absent'"):
            load_model("spec_test_pkg.absent:build", input_shape=(6,))
    finally:
        for name in [m for m in sys.modules if m.startswith("spec_test_pkg")]:
            del sys.modules[name]


# ----------------------------------------------------------------------------- wrap, normalization, classes


def test_normalization_happens_inside_the_adapter(model_file):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    mean, std = torch.tensor([0.5, 0.25, 0.1]), torch.tensor([0.2, 0.5, 1.0])
    model = wrap(net, mean=mean.tolist(), std=std.tolist(), input_shape=(3, 2, 2), name="mine")
    x = torch.rand(6, 3, 2, 2)
    expected = net((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert model.bounds == (0.0, 1.0) and model.name == "mine"
    assert model.metadata["normalization"] == {"mean": mean.tolist(), "std": std.tolist()}
    # the same from a spec, options as the command line gives them; and the module pickles (workers, copies)
    loaded = load_model(f"{model_file}:make", mean="0.5,0.25,0.1", std="0.2 0.5 1", input_shape="3x2x2")
    assert torch.allclose(loaded(x), expected, atol=1e-6)
    assert torch.allclose(pickle.loads(pickle.dumps(loaded.module))(x), expected, atol=1e-6)
    # one value for all channels; only mean (std 1)
    assert torch.allclose(wrap(net, mean=0.5, input_shape=(3, 2, 2))(x), net(x - 0.5), atol=1e-6)


def test_wrap_refuses_nonsense():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ParameterError, match="std must be positive for every channel, got 0 for channel 1"):
        wrap(net, std=[1, 0, 1], input_shape=(3, 2, 2))
    with pytest.raises(ParameterError, match="mean has 2 values but the input has 3 channels"):
        wrap(net, mean=[0.5, 0.5], input_shape=(3, 2, 2))
    with pytest.raises(ParameterError, match=r"low < high, got \(1, 0\)"):
        wrap(net, bounds=(1, 0), input_shape=(3, 2, 2))
    with pytest.raises(ParameterError, match="two numbers"):
        wrap(net, bounds=(0, 1, 2), input_shape=(3, 2, 2))
    with pytest.raises(ParameterError, match="finite"):
        wrap(net, mean=float("nan"), input_shape=(3, 2, 2))
    with pytest.raises(ParameterError, match="input_shape is required for a bare nn.Module"):
        wrap(net)
    with pytest.raises(ParameterError, match="positive sizes"):
        wrap(net, input_shape=(3, 0, 2))
    with pytest.raises(ParameterError, match="takes an nn.Module"):
        wrap(lambda x: x, input_shape=(3, 2, 2))
    with pytest.raises(ParameterError, match="returns shape \\(1, 3, 4\\).*logits of shape \\(N, classes\\)"):
        wrap(nn.Identity(), input_shape=(3, 4))


def test_classes_from_a_list_a_file_a_json_file_a_number_or_the_outputs(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    lines = tmp_path / "names.txt"
    lines.write_text("cat\n dog \n\nbird\n", encoding="utf-8")
    listed = tmp_path / "names.json"
    listed.write_text(json.dumps(["ä", "b", "c"]), encoding="utf-8")
    assert wrap(net, input_shape=(3, 2, 2), classes=["x", "y", "z"]).class_names == ["x", "y", "z"]
    assert wrap(net, input_shape=(3, 2, 2), classes=lines).class_names == ["cat", "dog", "bird"]
    assert wrap(net, input_shape=(3, 2, 2), classes=str(listed)).class_names == ["ä", "b", "c"]
    assert wrap(net, input_shape=(3, 2, 2), classes=3).class_names == ["0", "1", "2"]
    assert wrap(net, input_shape=(3, 2, 2), classes="3").class_names == ["0", "1", "2"]
    assert wrap(net, input_shape=(3, 2, 2)).class_names == ["0", "1", "2"]
    with pytest.raises(ParameterError, match="no class-names file at"):
        resolve_classes(tmp_path / "absent.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ParameterError, match="is empty"):
        resolve_classes(empty)
    with pytest.raises(ParameterError, match="must be positive"):
        resolve_classes(0)
    with pytest.raises(ParameterError, match="the classes list is empty"):
        resolve_classes([])


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_untrained_resizes_and_normalizes_inside():
    model = load_model("torchvision:resnet18:none")
    assert model.input_shape == (3, 224, 224) and model.bounds == (0.0, 1.0)
    assert model.num_classes == 1000 and model.class_names[0] == "tench" and model.dataset == "imagenet"
    assert model.metadata["preprocessing"]["resize_size"] == 256 and not model.module.training
    net = model.module.net
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 100, 100)
    resized = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        assert torch.allclose(model.logits(x), net((resized - mean) / std), atol=1e-5)


def test_torchvision_with_your_own_weights_and_classes(tmp_path):
    import torchvision

    torch.manual_seed(1)
    trained = torchvision.models.resnet18(num_classes=4).eval()
    path = tmp_path / "fine tuned.safetensors"
    save_file(trained.state_dict(), str(path))
    model = load_model("torchvision:resnet18:none", weights=path, classes=["a", "b", "c", "d"])
    assert model.class_names == ["a", "b", "c", "d"] and model.dataset is None
    assert model.metadata["weights_sha256"] == sha256_file(path)
    x = torch.rand(1, 3, 224, 224)
    assert torch.allclose(model.module.net(x), trained(x), atol=1e-5)
    with pytest.raises(WeightsLoadError, match=r"different shapes for fc\.weight.*pass classes=K"):
        load_model("torchvision:resnet18:none", weights=path)


def test_torchvision_pretrained_offline_names_the_cache_path(tmp_path, monkeypatch):
    from advkit.plugins.builtin.imagenet_models import WeightsUnavailableError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch home"))
    monkeypatch.setenv("ADVKIT_OFFLINE", "1")
    expected = tmp_path / "torch home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsUnavailableError, match="put the file at") as info:
        load_model("torchvision:resnet18")
    assert str(expected) in str(info.value) and isinstance(info.value, WeightsLoadError)
    with pytest.raises(WeightsUnavailableError, match="resnet18-f37072fd.pth"):
        load_model("torchvision:resnet18:IMAGENET1K_V1")


def test_torchvision_spec_errors():
    with pytest.raises(ParameterError, match="no classification model 'resnet19'.*did you mean resnet18"):
        load_model("torchvision:resnet19")
    with pytest.raises(ParameterError, match="has no weights 'NOPE'.*IMAGENET1K_V1, DEFAULT, or none"):
        load_model("torchvision:resnet18:NOPE")
    with pytest.raises(ParameterError, match="only apply to your own nn.Module"):
        load_model("torchvision:resnet18:none", mean=[0.5, 0.5, 0.5])


# ----------------------------------------------------------------------------- timm


def test_timm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'advkit\[timm\]'") as info:
        load_model("timm:resnet18:none")
    assert isinstance(info.value, ModuleNotFoundError) and isinstance(info.value, ParameterError)


def test_timm_untrained_builds_with_its_normalization_inside():
    pytest.importorskip("timm")
    model = load_model("timm:resnet18:none")
    assert model.input_shape == (3, 224, 224) and model.num_classes == 1000 and model.bounds == (0.0, 1.0)
    pre = model.metadata["preprocessing"]
    assert pre["interpolation"] == "bicubic" and pre["mean"] == [0.485, 0.456, 0.406]
    assert model.predict(torch.rand(2, 3, 224, 224)).shape == (2, 1000)
    small = load_model("timm:resnet18:none", classes=10)
    assert small.num_classes == 10 and small.predict(torch.rand(1, 3, 224, 224)).shape == (1, 10)
    with pytest.raises(ParameterError, match="timm has no model 'resnet18x'"):
        load_model("timm:resnet18x:none")
    with pytest.raises(ParameterError, match="after the name comes 'none'"):
        load_model("timm:resnet18:imagenet")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "hf"


def test_timm_pretrained_offline_names_what_to_put_where(empty_caches):
    pytest.importorskip("timm")
    with pytest.raises(WeightsLoadError, match="advkit never downloads them") as info:
        load_model("timm:resnet18")
    message = str(info.value)
    assert str(empty_caches / "models--timm--resnet18.a1_in1k") in message
    assert "model.safetensors" in message and "--model timm:resnet18:none --weights" in message


def test_timm_pretrained_from_the_local_hugging_face_cache(empty_caches):
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    snapshot = empty_caches / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    (empty_caches / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (empty_caches / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("0" * 40)
    model = load_model("timm:resnet18")
    assert model.metadata["file"] == str(snapshot / "model.safetensors")
    assert model.metadata["sha256"] == sha256_file(snapshot / "model.safetensors")
    assert "state_dict" not in model.module.net.pretrained_cfg
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.module.net(x), reference(x), atol=1e-5)


# ----------------------------------------------------------------------------- RobustBench

FAKE_ROBUSTBENCH_ZOO = """
from collections import OrderedDict

from torch import nn

from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        self.register_buffer("mu", torch_zeros())

    def forward(self, x):
        return self.body(x - self.mu)


def torch_zeros():
    import torch

    return torch.zeros(1, 3, 1, 1)


model_dicts = OrderedDict(
    [
        (BenchmarkDataset.cifar_10, OrderedDict([(ThreatModel.Linf, OrderedDict([
            ("Tiny2024", {"model": TinyNet, "gdrive_id": "abc"}),
            ("Ensemble2024", {"model": TinyNet, "gdrive_id": ["a", "b"]}),
        ]))])),
    ]
)
"""

FAKE_ROBUSTBENCH_ENUMS = """
from enum import Enum


class BenchmarkDataset(Enum):
    cifar_10 = "cifar10"
    cifar_100 = "cifar100"
    imagenet = "imagenet"


class ThreatModel(Enum):
    Linf = "Linf"
    L2 = "L2"
    corruptions = "corruptions"
    corruptions_3d = "corruptions_3d"
"""


@pytest.fixture
def fake_robustbench(tmp_path, monkeypatch):
    """A stand-in robustbench package with RobustBench's model-zoo layout (model_dicts, enums), on sys.path."""
    root = tmp_path / "site"
    zoo = root / "robustbench" / "model_zoo"
    zoo.mkdir(parents=True)
    (root / "robustbench" / "__init__.py").write_text("")
    (zoo / "__init__.py").write_text(FAKE_ROBUSTBENCH_ZOO)
    (zoo / "enums.py").write_text(FAKE_ROBUSTBENCH_ENUMS)
    for name in [m for m in sys.modules if m.split(".")[0] == "robustbench"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(root))
    yield
    for name in [m for m in sys.modules if m.split(".")[0] == "robustbench"]:
        del sys.modules[name]


def test_robustbench_not_installed_names_the_checkpoint_path(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROBUSTBENCH_MODELS", raising=False)
    with pytest.raises(MissingDependencyError, match="pip install robustbench") as info:
        load_model("robustbench:Carmon2019Unlabeled")
    assert str(tmp_path / "models" / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in str(info.value)
    with pytest.raises(ParameterError, match="unknown dataset 'mnist'"):
        load_model("robustbench:Carmon2019Unlabeled:mnist")
    with pytest.raises(ParameterError, match="unknown threat model 'L3'"):
        load_model("robustbench:Carmon2019Unlabeled:cifar10:L3")


def test_robustbench_checkpoint_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROBUSTBENCH_MODELS", raising=False)
    assert robustbench_checkpoint_path("M") == tmp_path / "models" / "cifar10" / "Linf" / "M.pt"
    assert (
        robustbench_checkpoint_path("M", "cifar100", "corruptions_3d") == tmp_path / "models/cifar100/corruptions/M.pt"
    )
    monkeypatch.setenv("ROBUSTBENCH_MODELS", str(tmp_path / "zoo"))
    assert robustbench_checkpoint_path("M", "imagenet", "L2") == tmp_path / "zoo" / "imagenet" / "L2" / "M.pt"
    assert len(CIFAR10_CLASSES) == 10 and len(CIFAR100_CLASSES) == len(set(CIFAR100_CLASSES)) == 100


def test_robustbench_missing_checkpoint_then_a_wrapped_checkpoint(tmp_path, monkeypatch, fake_robustbench):
    monkeypatch.setenv("ROBUSTBENCH_MODELS", str(tmp_path / "rb models"))
    path = tmp_path / "rb models" / "cifar10" / "Linf" / "Tiny2024.pt"
    with pytest.raises(WeightsLoadError, match="advkit never downloads it") as info:
        load_model("robustbench:Tiny2024")
    assert str(path) in str(info.value)

    torch.manual_seed(3)
    body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    path.parent.mkdir(parents=True)
    # a training checkpoint as RobustBench's files are: a wrapped state dict with DataParallel's prefix
    torch.save({"state_dict": {f"module.body.{k}": v for k, v in body.state_dict().items()}, "epoch": 7}, path)
    model = load_model("robustbench:Tiny2024:cifar10:Linf")
    assert model.input_shape == (3, 32, 32) and model.bounds == (0.0, 1.0) and model.dataset == "cifar10"
    assert model.class_names == list(CIFAR10_CLASSES) and model.metadata["sha256"] == sha256_file(path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), body(x), atol=1e-6)

    with pytest.raises(ParameterError, match="no cifar10 Linf model 'Tiny2023'.*did you mean Tiny2024"):
        load_model("robustbench:Tiny2023")
    with pytest.raises(ParameterError, match="ensemble"):
        (path.parent / "Ensemble2024.pt").write_bytes(path.read_bytes())
        load_model("robustbench:Ensemble2024")
    torch.save(body, path)  # a pickled module: refused by the safe loader
    with pytest.raises(WeightsLoadError, match="holds a pickled Python object"):
        load_model("robustbench:Tiny2024")
