"""Image transformations that an adversarial example may or may not survive (S12).

Each transform maps a batch ``(N, C, H, W)`` in a model's ``bounds`` to a batch of the same
shape in the same bounds, using ``torchvision.transforms.v2.functional``:

* ``flip``: horizontal flip.
* ``crop``: the central crop keeping ``crop_area`` of the image area (default 0.8, i.e. 89% of
  each side), resized back to H x W.
* ``rotate``: rotation by ``angle`` degrees (default 30) about the center, bilinear; the
  corners are filled with the low bound (black).
* ``grayscale``: ITU-R 601 luma, replicated to 3 channels (3-channel inputs only).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

__all__ = ["TRANSFORMS", "applicable_transforms", "apply_transform", "describe"]

Transform = Callable[..., Tensor]


def _flip(x: Tensor, bounds: tuple[float, float], **_) -> Tensor:
    import torchvision.transforms.v2.functional as TF

    return TF.horizontal_flip(x)


def _crop(x: Tensor, bounds: tuple[float, float], crop_area: float = 0.8, **_) -> Tensor:
    import torchvision.transforms.v2.functional as TF

    if not 0 < crop_area <= 1:
        raise ValueError(f"crop_area must lie in (0, 1], got {crop_area}")
    height, width = x.shape[-2:]
    side = math.sqrt(crop_area)
    crop = [max(1, round(height * side)), max(1, round(width * side))]
    return TF.resize(TF.center_crop(x, crop), [height, width], antialias=True)


def _rotate(x: Tensor, bounds: tuple[float, float], angle: float = 30.0, **_) -> Tensor:
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    return TF.rotate(x, angle, interpolation=InterpolationMode.BILINEAR, fill=float(bounds[0]))


def _grayscale(x: Tensor, bounds: tuple[float, float], **_) -> Tensor:
    import torchvision.transforms.v2.functional as TF

    if x.shape[1] != 3:
        raise ValueError(f"grayscale needs 3-channel inputs, got {x.shape[1]} channel(s)")
    return TF.rgb_to_grayscale(x, num_output_channels=3)


#: name -> (function, one-line description)
TRANSFORMS: dict[str, tuple[Transform, str]] = {
    "flip": (_flip, "horizontal flip"),
    "crop": (_crop, "central crop of {crop_area:.0%} of the area, resized back"),
    "rotate": (_rotate, "rotation by {angle:g} degrees"),
    "grayscale": (_grayscale, "grayscale replicated to 3 channels"),
}


def applicable_transforms(names: list[str] | tuple[str, ...], channels: int) -> list[str]:
    """The transforms of ``names`` that make sense for inputs with ``channels`` channels."""
    return [name for name in names if not (name == "grayscale" and channels != 3)]


def apply_transform(name: str, x: Tensor, bounds: tuple[float, float], **options) -> Tensor:
    """``x`` under transform ``name`` (options: crop_area, angle), clamped to ``bounds``."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; transforms: {', '.join(TRANSFORMS)}")
    if x.dim() != 4:
        raise ValueError(f"transforms take a batch (N, C, H, W), got shape {tuple(x.shape)}")
    fn, _ = TRANSFORMS[name]
    return fn(x, bounds, **options).clamp(bounds[0], bounds[1]).contiguous()


def describe(name: str, **options) -> str:
    """A short description of transform ``name`` with its options filled in."""
    defaults = {"crop_area": 0.8, "angle": 30.0}
    return TRANSFORMS[name][1].format(**{**defaults, **options})
