"""The memory layout a model's 4-D weights run in during an attack: PyTorch's default (NCHW) or channels-last (NHWC).

On a CPU, oneDNN's convolutions ran faster on channels-last weights for every conv net measured here (a forward pass
and input gradient, ``benchmarks/bench_layout.py``: the zoo's `cnn` in 0.68-0.88x of the time, `bnn` 0.84-0.93x,
`s6_adv` 0.59-0.82x, `madry_adv` 0.88-0.94x at 4 to 144 rows; EfficientNet-Lite0 0.77x, MobileNetV2 0.76x, ResNet-18
0.91x at 8 rows). So every run (:func:`advkit.runner.run_attack`) on a CPU runs a conv net channels-last, and gives
the module back its very own tensors when it ends (:func:`layout_for_run`). The choice is a rule, not a measurement,
so the same command gives the same numbers run after run, whatever the machine's timing.

A model's code may assume the default layout: a ``.view`` of a convolution's output raises on channels-last
activations, and code that reads memory through its pointer would compute something else. So before a model first
runs channels-last, :func:`channels_last_refusal` compares its logits on a few of the run's inputs in both layouts; a
model that raises or disagrees keeps its own layout, and the run's ``extra["layout"]`` says why. Values never change
with the layout, only the order of floating-point operations (last-bit differences, as between batch sizes on some
CPUs).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from advkit.models import ModelAdapter

__all__ = [
    "CHANNELS_LAST",
    "CHANNELS_LAST_ON",
    "CHECK_ROWS",
    "CONTIGUOUS",
    "LayoutSwitch",
    "channels_last_refusal",
    "has_4d_weights",
    "layout_for_run",
]

CONTIGUOUS = "contiguous"
CHANNELS_LAST = "channels_last"
#: Device types on which runs use channels-last (measured faster on a CPU; not measured on a GPU).
CHANNELS_LAST_ON = ("cpu",)
#: How many of a run's inputs the layout check compares logits on.
CHECK_ROWS = 4
#: Logits in the two layouts agree if within this relative tolerance (of the largest logit magnitude) and argmax.
AGREEMENT = 1e-3


def has_4d_weights(module: nn.Module) -> bool:
    """Whether the module has a 4-D parameter or buffer (a 2-D convolution's weights): the only ones the layout moves."""
    return any(t.dim() == 4 for t in (*module.parameters(), *module.buffers()))


class LayoutSwitch:
    """Moves a module's 4-D parameters and buffers to channels-last and back to the very tensors it had.

    :meth:`use` converts in place (``tensor.data``, so the parameters stay the same objects); :meth:`restore` puts
    the original tensors back, with their own strides and values.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._originals: list[tuple[Tensor, Tensor]] | None = None

    @property
    def current(self) -> str:
        return CONTIGUOUS if self._originals is None else CHANNELS_LAST

    def use(self, layout: str) -> None:
        """Run the module in ``layout`` (:data:`CONTIGUOUS`: the module's own tensors)."""
        if layout == CONTIGUOUS:
            self.restore()
        elif layout == CHANNELS_LAST:
            if self._originals is None:
                tensors = [t for t in (*self.module.parameters(), *self.module.buffers()) if t.dim() == 4]
                self._originals = [(t, t.data) for t in tensors]
                with torch.no_grad():  # .to, not .contiguous: a 1-channel weight counts as channels-last already,
                    for tensor, data in self._originals:  # and oneDNN would run that layer in the default layout
                        tensor.data = data.to(memory_format=torch.channels_last)
        else:
            raise ValueError(f"unknown layout {layout!r}; valid: {CONTIGUOUS}, {CHANNELS_LAST}")

    def restore(self) -> None:
        """Give the module back its own tensors."""
        if self._originals is not None:
            for tensor, data in self._originals:
                tensor.data = data
            self._originals = None


def channels_last_refusal(model: ModelAdapter, switch: LayoutSwitch, x: Tensor) -> str | None:
    """Why ``model`` must not run channels-last, or None: its logits on ``x`` (a few inputs, one per call, no
    gradients, outside the pass counter) in both layouts must agree. Leaves the module in its own layout either way."""
    switch.restore()

    def logits() -> Tensor:  # one input per call: no call exceeds a run's batch size
        return torch.cat([model.logits(row) for row in x.split(1)])

    try:
        reference = logits()
        switch.use(CHANNELS_LAST)
        moved = logits()
    except Exception as error:  # a .view of a channels-last activation, a layout-specific custom op, ...
        return f"the model failed in channels-last ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    finally:
        switch.restore()
    if moved.shape != reference.shape:
        return f"its logits' shape changed in channels-last ({tuple(reference.shape)} -> {tuple(moved.shape)})"
    scale = float(reference.abs().nan_to_num(0.0, 0.0, 0.0).max()) if reference.numel() else 0.0
    close = torch.allclose(moved, reference, rtol=AGREEMENT, atol=AGREEMENT * max(scale, 1e-6), equal_nan=True)
    if not close or not torch.equal(moved.argmax(1), reference.argmax(1)):
        return "its logits differ in channels-last (code that assumes the default memory layout)"
    return None


_VERDICTS: weakref.WeakKeyDictionary[nn.Module, str | None] = weakref.WeakKeyDictionary()  # module -> refusal or None


@contextlib.contextmanager
def layout_for_run(model: ModelAdapter, x: Tensor) -> Iterator[dict]:
    """Run ``model`` channels-last inside the block where the rule says so (a CPU, 4-D weights, a deterministic model
    whose logits on the first :data:`CHECK_ROWS` inputs of ``x`` agree in both layouts: checked once per module and
    process); the module gets its own tensors back at the end, also on errors. Yields what the run's
    ``extra["layout"]`` reports: ``{"chosen": ..., "how": ...}``, and ``"check_forward_passes"`` (one per input and
    layout, outside the pass counter) on the run that checked the module."""
    module = getattr(model, "module", None)
    info = {"chosen": CONTIGUOUS, "how": "the module's own"}
    switch = None
    if not isinstance(module, nn.Module) or not has_4d_weights(module):
        info["how"] = "the module's own (no 4-D weights to move)"
    elif model.device.type not in CHANNELS_LAST_ON:
        info["how"] = f"the module's own (channels-last is used on {', '.join(CHANNELS_LAST_ON) or 'no device'} only)"
    elif model.metadata.get("stochastic"):
        info["how"] = "the module's own (a stochastic model's logits cannot be compared between layouts)"
    elif not len(x):
        info["how"] = "the module's own (no inputs to check channels-last on)"
    else:
        switch = LayoutSwitch(module)
        if module not in _VERDICTS:
            _VERDICTS[module] = channels_last_refusal(model, switch, x[:CHECK_ROWS])
            info["check_forward_passes"] = 2 * len(x[:CHECK_ROWS])  # outside the pass counter, once per module
        refusal = _VERDICTS[module]
        if refusal is None:
            switch.use(CHANNELS_LAST)
            info |= {"chosen": CHANNELS_LAST, "how": "a conv net on a CPU; its logits agreed in both layouts"}
        else:
            info["how"] = f"the module's own: {refusal}"
    try:
        yield info
    finally:
        if switch is not None:
            switch.restore()
