"""The memory layout a model's 4-D weights run in: PyTorch's default (contiguous, NCHW) or channels-last (NHWC).

On a CPU, oneDNN's convolutions ran faster on channels-last weights for most conv nets measured here (an input
gradient of `cnn` in 0.67-0.92x of the time, EfficientNet-Lite0 0.79-0.85x, MobileNetV2 0.75-0.79x) and slower for a
few at some sizes (`madry_adv` 0.88-1.09x). ``batch_size="auto"`` therefore measures both on the run's own first
steps (:mod:`advkit.batching`) and keeps the faster; the module's own layout is put back when the run ends.

A model's code may assume the default layout: a ``.view`` of a convolution's output raises on channels-last
activations, and code that reads memory through its pointer would compute something else. So before a model runs
channels-last, :func:`channels_last_refusal` compares its logits on a few of the run's inputs in both layouts; a
model that raises or disagrees keeps its own layout. Values never change with the layout, only the order of the
floating-point operations (last-bit differences, as between batch sizes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CHANNELS_LAST", "CONTIGUOUS", "LayoutSwitch", "channels_last_refusal", "has_4d_weights"]

CONTIGUOUS = "contiguous"
CHANNELS_LAST = "channels_last"
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


def channels_last_refusal(model, switch: LayoutSwitch, x: Tensor) -> str | None:
    """Why ``model`` must not run channels-last, or None: its logits on ``x`` (a few inputs, no gradients, outside
    the pass counter) in both layouts must agree. Leaves the module in its own layout either way."""
    switch.restore()
    try:
        reference = model.logits(x)
        switch.use(CHANNELS_LAST)
        moved = model.logits(x)
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
