"""Model adapters: a classifier plus what attacks must know about it (bounds, shape, classes).

Every forward pass through an adapter and every backward pass to its input is counted,
so reported pass counts are exact whatever the attack code does. Every call hands the module
advkit's own copy of its input, so a model that works in place (``nn.ReLU(inplace=True)`` as
its first layer) can neither change the caller's tensors nor the attack's state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class PassCounter:
    """Samples sent forward through the model and samples whose input gradient was computed."""

    forward: int = 0
    backward: int = 0

    def snapshot(self) -> tuple[int, int]:
        return self.forward, self.backward


class _CountBackward(torch.autograd.Function):
    """Identity whose backward adds the batch size to ``counter.backward``."""

    @staticmethod
    def forward(ctx, x: Tensor, counter: PassCounter) -> Tensor:  # type: ignore[override]
        ctx.counter = counter
        return x.clone()  # a copy, not a view: the module may work on it in place

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        ctx.counter.backward += grad.shape[0]
        return grad, None


class ModelAdapter:
    """A classifier that maps inputs in ``bounds`` with shape ``input_shape`` to logits over ``class_names``.

    Preprocessing (normalization, resizing) belongs inside ``module``: attacks only ever see
    inputs in the declared bounds.
    """

    #: A counted call returns what :meth:`logits` returns (so the runner may take a zero start's first step as its
    #: clean check); a subclass whose calls compute something else (a gradient estimator's average) sets it False.
    calls_are_logits: bool = True

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str,
        bounds: tuple[float, float],
        input_shape: Sequence[int],
        class_names: Sequence[str],
        dataset: str | None = None,
        description: str = "",
        metadata: dict | None = None,
    ) -> None:
        low, high = float(bounds[0]), float(bounds[1])
        if not low < high:
            raise ValueError(f"bounds must satisfy low < high, got {bounds}")
        self.module = module
        self.name = name
        self.bounds = (low, high)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.class_names = list(class_names)
        self.dataset = dataset
        self.description = description
        self.metadata = dict(metadata or {})
        self.counter = PassCounter()
        #: When a list, every counted call appends ``(time.perf_counter(), rows)`` (the runner measures chunk sizes).
        self.call_times: list[tuple[float, int]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def range_width(self) -> float:
        return self.bounds[1] - self.bounds[0]

    @property
    def device(self) -> torch.device:
        for tensor in self.module.parameters():
            return tensor.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> ModelAdapter:
        self.module.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        """Logits for ``x``; counts one forward pass per sample (and one backward per sample if differentiated)."""
        self.counter.forward += x.shape[0]
        if self.call_times is not None:
            self.call_times.append((time.perf_counter(), x.shape[0]))
        if x.requires_grad:
            return self.module(_CountBackward.apply(x, self.counter))
        return self.module(x.clone())

    def logits(self, x: Tensor) -> Tensor:
        """Logits for a copy of ``x`` in the module's current mode, without gradients and outside the pass counter
        (the runner's re-check and the output probes)."""
        with torch.no_grad():
            return self.module(x.clone())

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int | str = "auto") -> Tensor:
        """Logits in eval mode, without gradients and outside the pass counter (for checks and data selection), in
        chunks of ``batch_size`` samples (``"auto"``: the size the model's attacks use, see
        :func:`advkit.batching.inference_batch_size`)."""
        from advkit.batching import inference_batch_size

        size = inference_batch_size(self, batch_size)
        with self.eval_mode(), torch.no_grad():
            if not len(x):
                return x.new_zeros(0, self.num_classes)
            return torch.cat([self.module(chunk.clone()) for chunk in x.split(size)])

    @property
    def dtype(self) -> torch.dtype | None:
        """The floating-point dtype the module computes in (of its first floating parameter or buffer), if any."""
        for tensor in [*self.module.parameters(), *self.module.buffers()]:
            if tensor.is_floating_point():
                return tensor.dtype
        return None

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[ModelAdapter]:
        """Put every submodule in eval mode; restore each one's own mode afterwards, also on exceptions."""
        modes = [(module, module.training) for module in self.module.modules()]
        self.module.eval()
        try:
            yield self
        finally:
            for module, training in modes:
                module.training = training

    def __repr__(self) -> str:
        return f"ModelAdapter(name={self.name!r}, bounds={self.bounds}, input_shape={self.input_shape}, classes={self.num_classes})"


def input_space_mismatch(a: ModelAdapter, b: ModelAdapter, dataset: bool = True) -> str | None:
    """What makes inputs of ``a`` and ``b`` not interchangeable (the dataset they name, unless ``dataset=False``;
    input shape, classes, bounds), or None."""
    for what, left, right in (
        ("dataset", a.dataset if dataset else None, b.dataset if dataset else None),
        ("input shape", a.input_shape, b.input_shape),
        ("number of classes", a.num_classes, b.num_classes),
        ("input bounds", a.bounds, b.bounds),
    ):
        if left != right:
            return f"{what} ({left} vs {right})"
    return None


@dataclass(frozen=True)
class ModelSpec:
    """What a plugin registers for a model: a name, one line of description and a loader."""

    name: str
    description: str
    load: Callable[..., ModelAdapter] = field(repr=False)
    dataset: str | None = None


def load_model(name: str, device: str | torch.device = "cpu", **options) -> ModelAdapter:
    """Load a registered model by name, in eval mode, on ``device``."""
    from advkit.registry import get_model_spec

    adapter = get_model_spec(name).obj.load(**options)
    return adapter.to(device)
