"""Built-in plugin: the MNIST zoo models ``cnn`` and ``bnn`` with committed weights."""

from __future__ import annotations

import advkit
from advkit.models import ModelAdapter, ModelSpec

MNIST_BOUNDS = (-1.0, 1.0)
MNIST_SHAPE = (1, 28, 28)
DIGITS = [str(d) for d in range(10)]


def _adapter(name: str, description: str, **options) -> ModelAdapter:
    from advkit.zoo.weights import load_manifest, load_zoo_module

    module = load_zoo_module(name, **options)
    entry = load_manifest()[name]
    return ModelAdapter(
        module,
        name=name,
        bounds=MNIST_BOUNDS,
        input_shape=MNIST_SHAPE,
        class_names=DIGITS,
        dataset="mnist",
        description=description,
        metadata={"sha256": entry["sha256"], "clean_test_accuracy": entry["clean_test_accuracy"], **options},
    )


CNN_DESCRIPTION = "MNIST 'Table 2' CNN (S1), inputs in [-1, 1]"
BNN_DESCRIPTION = "Binarized 'Table 2' CNN: Sign activations with a straight-through gradient (S1), inputs in [-1, 1]"


def load_cnn() -> ModelAdapter:
    return _adapter("cnn", CNN_DESCRIPTION)


def load_bnn(straight_through: bool = True) -> ModelAdapter:
    """The BNN; ``straight_through=False`` gives Sign its true (zero) gradient, masking gradients."""
    adapter = _adapter("bnn", BNN_DESCRIPTION, straight_through=straight_through)
    if not straight_through:  # the same weights, another gradient: another fingerprint (a resume never mixes them)
        adapter.metadata["behaviour"] = {"straight_through": False}
    return adapter


@advkit.hookimpl
def register_models(register):
    register(ModelSpec(name="cnn", description=CNN_DESCRIPTION, load=load_cnn, dataset="mnist"))
    register(ModelSpec(name="bnn", description=BNN_DESCRIPTION, load=load_bnn, dataset="mnist"))
