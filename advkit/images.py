"""Photos for ImageNet models: loading, preprocessing, built-in sample photos and class names.

An ImageNet adapter takes RGB in ``[0, 1]`` at its own resolution, ``(N, 3, S, S)``; the
normalization (mean/std) lives inside its module (:class:`ImageClassifier`), so attacks and
their L-inf bounds work on plain pixels. :func:`load_image` turns a JPEG/PNG path, or the name
of a built-in sample photo, into such a tensor, preprocessed as the model expects
(:class:`Preprocessing`: resize the shorter side, center crop).

Sample photos ship with scikit-image and matplotlib, so everything works offline. Each
declares the ImageNet classes that count as a correct answer, so a command can check that a
model gets a photo right before attacking it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.classes import resolve_class  # re-exported: the one class-name resolver
from advkit.errors import DataLoadError
from advkit.models import ModelAdapter

__all__ = [
    "SAMPLES",
    "ImageClassifier",
    "ImageLoadError",
    "Preprocessing",
    "SamplePhoto",
    "imagenet_adapter",
    "imagenet_class_names",
    "load_image",
    "load_pil",
    "preprocess",
    "preprocessing_of",
    "resolve_class",
    "sample_names",
]


class ImageLoadError(DataLoadError):
    """An image that cannot be found or read, or is too large to decode safely; the message says what to do.

    An :class:`advkit.errors.DataLoadError`, hence a ``ValueError`` as before.
    """


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants a photo: shorter side resized to ``resize_size``, center crop of ``crop_size``,
    then (inside the model) ``(x - mean) / std``."""

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            crop_size=int(d["crop_size"]),
            resize_size=int(d["resize_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d.get("interpolation", "bilinear")),
        )


class ImageClassifier(nn.Module):
    """``net((resize(x) - mean) / std)``: an ImageNet network behind a [0, 1] RGB interface.

    Inputs of another size are resized (bilinear, antialiased) to ``size`` first, so a caller
    may pass any resolution; attacks get the native one from the adapter's ``input_shape``.
    """

    def __init__(self, net: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.net = net
        self.size = (preprocessing.crop_size, preprocessing.crop_size)
        self.register_buffer("mean", torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, as torchvision ships them (no download)."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_adapter(
    net: nn.Module,
    *,
    name: str,
    preprocessing: Preprocessing,
    description: str = "",
    metadata: dict | None = None,
    class_names: Sequence[str] | None = None,
) -> ModelAdapter:
    """A :class:`ModelAdapter` for an ImageNet network: inputs (3, S, S) RGB in [0, 1], 1000 classes."""
    module = ImageClassifier(net, preprocessing).eval()
    return ModelAdapter(
        module,
        name=name,
        bounds=(0.0, 1.0),
        input_shape=(3, preprocessing.crop_size, preprocessing.crop_size),
        class_names=list(class_names) if class_names is not None else list(imagenet_class_names()),
        dataset="imagenet",
        description=description,
        metadata={"preprocessing": preprocessing.to_dict(), **(metadata or {})},
    )


def preprocessing_of(model: ModelAdapter) -> Preprocessing:
    """The model's preprocessing (from its metadata), else a resize/crop to its input size at ratio 256/224."""
    stored = model.metadata.get("preprocessing")
    if stored:
        return Preprocessing.from_dict(stored)
    _, height, width = _image_shape(model)
    if height != width:
        raise ValueError(f"model {model.name!r} takes non-square inputs {model.input_shape}; give its preprocessing")
    return Preprocessing(crop_size=height, resize_size=round(height * 256 / 224))


def _image_shape(model: ModelAdapter) -> tuple[int, int, int]:
    shape = tuple(model.input_shape)
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(f"model {model.name!r} takes inputs of shape {shape}, not RGB images (3, H, W)")
    return shape  # type: ignore[return-value]


# ---------------------------------------------------------------- sample photos


def _skimage(name: str) -> Callable[[], object]:
    def load():
        import skimage.data
        from PIL import Image

        return Image.fromarray(getattr(skimage.data, name)())

    return load


def _skimage_file(filename: str) -> Callable[[], object]:
    def load():
        import skimage.data
        from PIL import Image

        return Image.open(Path(skimage.data.__file__).parent / filename)

    return load


def _matplotlib(filename: str) -> Callable[[], object]:
    def load():
        import matplotlib
        from PIL import Image

        return Image.open(Path(matplotlib.get_data_path()) / "sample_data" / filename)

    return load


@dataclass(frozen=True)
class SamplePhoto:
    """A photo shipped by an installed package, with the ImageNet classes that count as correct."""

    name: str
    description: str
    expected: tuple[int, ...]
    load: Callable[[], object] = field(repr=False, compare=False)


SAMPLES: dict[str, SamplePhoto] = {
    s.name: s
    for s in [
        SamplePhoto("chelsea", "scikit-image: Chelsea the cat", (281, 282, 285), _skimage("chelsea")),
        SamplePhoto("coffee", "scikit-image: a cup of coffee", (967, 968, 504), _skimage("coffee")),
        SamplePhoto("rocket", "scikit-image: a rocket on its launch pad", (657, 744), _skimage("rocket")),
        SamplePhoto(
            "motorcycle",
            "scikit-image: a motorcycle (stereo left view)",
            (665, 670),
            _skimage_file("motorcycle_left.png"),
        ),
        SamplePhoto(
            "camera",
            "scikit-image: the cameraman (grayscale) with his camera on a tripod",
            (872, 759),
            _skimage("camera"),
        ),
        SamplePhoto("grace_hopper", "matplotlib: Grace Hopper in uniform", (652,), _matplotlib("grace_hopper.jpg")),
    ]
}

#: The four photos of the S11/S12 figures (EfficientNet-Lite0 classifies each correctly).
DEFAULT_SAMPLES = ("chelsea", "coffee", "rocket", "motorcycle")


def sample_names() -> list[str]:
    """Names of the built-in sample photos."""
    return list(SAMPLES)


def _header_size(path: Path) -> tuple[int, int] | None:
    """An image file's (width, height) from its header alone, without PIL's decompression-bomb check (which
    raises before the size can be read for images above twice the limit); None if no PIL plugin reads it."""
    from PIL import Image

    Image.init()
    try:
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                accepted = accept(prefix) if accept else True
                if not accepted or isinstance(accepted, str):
                    continue
                fp.seek(0)
                try:
                    image = factory(fp, str(path))  # parses the header only; nothing is decoded
                except Exception:  # noqa: BLE001 - not this format; try the next one
                    continue
                return tuple(image.size)  # type: ignore[return-value]
    except OSError:
        return None
    return None


def _too_large(key: str, size: tuple[int, int] | None, pixels: int | None, limit: int) -> ImageLoadError:
    shown = (
        f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels"
        if size
        else f"{pixels:,} pixels"
        if pixels
        else "too many pixels"
    )
    return ImageLoadError(
        f"image {key!r} is {shown}, above the limit of {limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS, a guard against "
        "decompression bombs); downscale it first, e.g. to at most 4096 pixels a side (ImageMagick: "
        "magick IN -resize 4096x4096 OUT); ImageNet models see a few hundred pixels a side anyway"
    )


def load_pil(source: str | Path):
    """A PIL RGB image from a sample name or a JPEG/PNG path.

    Images with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 million) are refused
    from their header, before anything is decoded, with :class:`ImageLoadError`; PIL's own
    ``DecompressionBombWarning`` / ``DecompressionBombError`` never reach the caller.

    Raises:
        ImageLoadError: not a sample name nor a file, not a readable image, or too large.
    """
    import re
    import warnings

    from PIL import Image, UnidentifiedImageError

    key = str(source)
    if key in SAMPLES:
        image = SAMPLES[key].load()
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError(
                f"{key!r} is neither an image file nor a sample photo; samples: {', '.join(sample_names())}"
            )
        limit = Image.MAX_IMAGE_PIXELS  # read at call time: a caller may raise it, or set None for no limit
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, from the header
                image = Image.open(path)
                if limit is not None and image.size[0] * image.size[1] > limit:
                    image.close()
                    raise _too_large(key, tuple(image.size), None, limit)
                image.load()
        except Image.DecompressionBombError as error:  # above twice the limit: PIL refuses to even open it
            found = re.search(r"\((\d+) pixels\)", str(error))
            raise _too_large(key, _header_size(path), int(found.group(1)) if found else None, limit or 0) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            if isinstance(error, ImageLoadError):
                raise
            raise ImageLoadError(f"cannot read {key!r} as an image: {error}") from None
    return image.convert("RGB")


_INTERPOLATION = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}


def preprocess(image, preprocessing: Preprocessing) -> Tensor:
    """PIL image -> (3, S, S) float tensor in [0, 1]: resize the shorter side, center crop."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode[_INTERPOLATION.get(preprocessing.interpolation, "BILINEAR")]
    x = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
    x = TF.resize(x, [preprocessing.resize_size], interpolation=mode, antialias=True)
    x = TF.center_crop(x, [preprocessing.crop_size, preprocessing.crop_size])
    return x.clamp(0, 1).contiguous()


def load_image(source: str | Path, model: ModelAdapter | Preprocessing) -> Tensor:
    """(1, 3, S, S) tensor in the model's bounds for a sample name or image path, preprocessed as the model expects."""
    if isinstance(model, Preprocessing):
        return preprocess(load_pil(source), model).unsqueeze(0)
    _image_shape(model)
    x = preprocess(load_pil(source), preprocessing_of(model)).unsqueeze(0)
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        x = F.interpolate(x, size=tuple(model.input_shape[1:]), mode="bilinear", align_corners=False, antialias=True)
    low, high = model.bounds
    return (low + x * (high - low)).clamp(low, high)
