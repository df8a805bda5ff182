"""Model-zoo architectures: the S1 "Table 2" CNN, its binarized-activation twin and the S6 CNN.

Both nets take ``(N, 1, 28, 28)`` float32 inputs in ``[-1, 1]`` (``pixel / 127.5 - 1``, see
:mod:`advkit.data`) and return ``(N, num_classes)`` logits (no softmax: the loss or the
user applies it). Layer layout ("Table 2")::

    conv1  3x3,  32, stride 1, pad 1  -> act1   (28x28)
    conv2  3x3,  64, stride 2, pad 1  -> act2   (14x14)
    conv3  3x3, 128, stride 2, pad 1  -> act3   (7x7)
    conv4  3x3, 128, stride 2, pad 1  -> act4   (4x4)
    conv5  3x3, 128, stride 2, pad 1  -> act5   (2x2)
    flatten (512) -> fc1 100          -> act6
    fc2 10                                       (logits)

The activation is pluggable: :class:`Table2CNN` uses ReLU and
:class:`BinarizedTable2CNN` uses :class:`Sign` everywhere a ReLU was. Activations hold no
parameters or buffers, so both nets have identical ``state_dict`` keys
(``conv1.weight``, ``conv1.bias``, ..., ``fc2.bias``). The BNN binarizes activations
only; its weights stay real-valued. No BatchNorm is used: default PyTorch init keeps
pre-activations mostly within ``|x| <= 1`` where the straight-through estimator passes
gradient, and the plain BNN trains to the zoo's targets without it.

:class:`S6CNN` (names "s6" and, with BatchNorm, "s6bn") is the small S6 net::

    conv1  3x3, 32, stride 1, pad 1 [-> bn1] -> act1 -> pool1 (2x2 max)   (28x28 -> 14x14)
    conv2  3x3, 32, stride 1, pad 1 [-> bn2] -> act2 -> pool2 (2x2 max)   (14x14 -> 7x7)
    flatten (1568) -> fc1 500 -> act3
    fc2 10                                                              (logits)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "ARCHITECTURE_NAMES",
    "MODEL_NAMES",
    "S6_MODEL_NAMES",
    "BinarizedTable2CNN",
    "InputNoise",
    "MadryMNIST",
    "S6CNN",
    "Sign",
    "SignSTE",
    "SignZeroGrad",
    "Table2CNN",
    "build_model",
    "set_straight_through",
]


def _sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 (including 0 and -0.0), -1 elsewhere (NaN compares False, so it maps to -1)."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, one, -one)


class SignSTE(torch.autograd.Function):
    """Sign with a straight-through estimator.

    Forward: ``+1`` if ``x >= 0`` else ``-1`` (unlike :func:`torch.sign`, 0 maps to +1).
    Backward: passes the incoming gradient where ``|x| <= 1`` and zero elsewhere (the
    "hard-tanh" straight-through estimator of Hubara et al. / Courbariaux et al.).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


class SignZeroGrad(torch.autograd.Function):
    """Sign with its true derivative: the same forward as :class:`SignSTE`, zero gradient everywhere.

    The derivative of sign is 0 almost everywhere (undefined at 0), so gradients flowing
    through this function are exactly zero: a deliberate case of gradient masking.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return _sign(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(grad_output)


class Sign(nn.Module):
    """Sign activation (+1 for x >= 0, -1 otherwise).

    Args:
        straight_through: True (default) -> backward is the straight-through estimator of
            :class:`SignSTE` (gradient passed where ``|x| <= 1``); False -> the true
            derivative of sign, zero everywhere (:class:`SignZeroGrad`). The forward pass
            is the same either way. The flag is a plain attribute and may be changed later
            (see :func:`set_straight_through`).
    """

    def __init__(self, straight_through: bool = True) -> None:
        super().__init__()
        self.straight_through = bool(straight_through)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = SignSTE if self.straight_through else SignZeroGrad
        return fn.apply(x)

    def extra_repr(self) -> str:
        return f"straight_through={self.straight_through}"


class Table2CNN(nn.Module):
    """The S1 "Table 2" CNN for 1x28x28 inputs in [-1, 1]; outputs logits.

    Args:
        num_classes: number of output logits (10 for MNIST).
        activation: zero-argument factory for the hidden activations (default
            :class:`torch.nn.ReLU`); called once per hidden layer (6 times). Parameterless
            activations keep the ``state_dict`` keys unchanged.
    """

    def __init__(self, num_classes: int = 10, activation: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.act1 = activation()
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1)
        self.act2 = activation()
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, stride=2, padding=1)
        self.act3 = activation()
        self.conv4 = nn.Conv2d(128, 128, kernel_size=3, stride=2, padding=1)
        self.act4 = activation()
        self.conv5 = nn.Conv2d(128, 128, kernel_size=3, stride=2, padding=1)
        self.act5 = activation()
        self.fc1 = nn.Linear(128 * 2 * 2, 100)
        self.act6 = activation()
        self.fc2 = nn.Linear(100, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 100-dim penultimate activations (after ``act6``)."""
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.act3(self.conv3(x))
        x = self.act4(self.conv4(x))
        x = self.act5(self.conv5(x))
        x = torch.flatten(x, 1)
        return self.act6(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


class BinarizedTable2CNN(Table2CNN):
    """:class:`Table2CNN` with :class:`Sign` in place of every ReLU (binarized activations, real weights).

    Same layers and ``state_dict`` keys as the CNN; no BatchNorm.

    Args:
        num_classes: number of output logits.
        straight_through: backward of every Sign: straight-through estimator (True,
            used for training) or the true, everywhere-zero derivative (False: the
            input gradient is then exactly zero -- gradient masking).
    """

    def __init__(self, num_classes: int = 10, straight_through: bool = True) -> None:
        super().__init__(num_classes, activation=lambda: Sign(straight_through))

    @property
    def straight_through(self) -> bool:
        """The backward mode of the Sign activations (setting it updates all of them)."""
        return all(m.straight_through for m in self.modules() if isinstance(m, Sign))

    @straight_through.setter
    def straight_through(self, value: bool) -> None:
        set_straight_through(self, value)


class S6CNN(nn.Module):
    """The S6 CNN for 1x28x28 inputs in [-1, 1]; outputs logits.

    conv1 (3x3, 32) -> ReLU -> 2x2 max-pool -> conv2 (3x3, 32) -> ReLU -> 2x2 max-pool ->
    fc1 (1568 -> 500) -> ReLU -> fc2 (500 -> num_classes). Layers have readable names
    (``conv1``, ``bn1``, ``act1``, ``pool1``, ``conv2``, ..., ``fc1``, ``act3``, ``fc2``) so
    they can be picked by name (e.g. with :meth:`torch.nn.Module.get_submodule`).

    Args:
        num_classes: number of output logits (10 for MNIST).
        batchnorm: insert ``BatchNorm2d`` after each conv, before its ReLU (``bn1``, ``bn2``);
            without it those slots are ``nn.Identity`` (no parameters, no state_dict keys).
    """

    def __init__(self, num_classes: int = 10, batchnorm: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.batchnorm = bool(batchnorm)
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(32) if batchnorm else nn.Identity()
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 32, kernel_size=3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(32) if batchnorm else nn.Identity()
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 7 * 7, 500)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 500-dim penultimate activations (after ``act3``)."""
        x = self.pool1(self.act1(self.bn1(self.conv1(x))))
        x = self.pool2(self.act2(self.bn2(self.conv2(x))))
        return self.act3(self.fc1(torch.flatten(x, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


class MadryMNIST(nn.Module):
    """The MadryLab MNIST challenge architecture for 1x28x28 inputs in [-1, 1]; outputs logits.

    conv1 (5x5, 32, padding 2) -> ReLU -> 2x2 max-pool -> conv2 (5x5, 64, padding 2) -> ReLU -> 2x2 max-pool ->
    fc1 (3136 -> 1024) -> ReLU -> fc2 (1024 -> num_classes), as in Madry et al., 2018 (github.com/MadryLab/
    mnist_challenge, ``model.py``: "SAME" convolutions, so 28 -> 14 -> 7).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 7 * 7, 1024)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc2(self.act3(self.fc1(torch.flatten(x, 1))))


class InputNoise(nn.Module):
    """A randomized defense: ``net`` applied to the input plus Gaussian noise of std ``sigma`` (model units), drawn
    anew at every call, in eval mode too.

    The noise comes from the module's own ``generator`` (a ``torch.Generator`` on the input's device, seeded with
    ``seed``), never from torch's global RNG, so calling the model leaves the caller's random state untouched while
    two calls on the same input differ. ``advkit evaluate`` seeds ``generator`` per stage (and restores it), so an
    evaluation, and its resume, are reproducible. ``sigma`` and ``seed`` are buffers: they are in the state dict, so
    another ``sigma`` is another model fingerprint.
    """

    def __init__(self, net: nn.Module, sigma: float, seed: int = 0) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("sigma", torch.tensor(float(sigma)))
        self.register_buffer("seed", torch.tensor(int(seed), dtype=torch.int64))
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator.device != x.device:  # moved to another device: a stream there, from the same seed
            self.generator = torch.Generator(device=x.device).manual_seed(int(self.seed))
        noise = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        return self.net(x + self.sigma.to(x.dtype) * noise)

    def extra_repr(self) -> str:
        return f"sigma={float(self.sigma):g}"


def set_straight_through(model: nn.Module, straight_through: bool) -> nn.Module:
    """Set the backward mode of every :class:`Sign` in ``model`` (in place); returns ``model``."""
    for m in model.modules():
        if isinstance(m, Sign):
            m.straight_through = bool(straight_through)
    return model


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "cnn": Table2CNN,
    "bnn": BinarizedTable2CNN,
    "s6": S6CNN,
    "s6bn": lambda **kw: S6CNN(batchnorm=True, **kw),
    "madry": MadryMNIST,
}
#: The S1 zoo models ("cnn", "bnn"), each with committed weights of the same name.
MODEL_NAMES: tuple[str, ...] = ("cnn", "bnn")
#: The S6 architectures ("s6", "s6bn"); weights names such as "s6_adv" map to one of them in the manifest.
S6_MODEL_NAMES: tuple[str, ...] = ("s6", "s6bn")
#: Every name accepted by :func:`build_model`.
ARCHITECTURE_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a fresh (randomly initialised) zoo architecture by name.

    ``"cnn"`` -> :class:`Table2CNN`, ``"bnn"`` -> :class:`BinarizedTable2CNN`, ``"s6"`` ->
    :class:`S6CNN`, ``"s6bn"`` -> :class:`S6CNN` with ``batchnorm=True``, ``"madry"`` -> :class:`MadryMNIST`; ``kwargs`` go to
    the constructor (e.g. ``num_classes``, or ``straight_through`` for "bnn").
    Initialisation uses torch's global RNG (seed it with :func:`torch.manual_seed`).
    """
    try:
        builder = _BUILDERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model name {name!r}; valid names: {', '.join(map(repr, ARCHITECTURE_NAMES))}"
        ) from None
    return builder(**kwargs)
