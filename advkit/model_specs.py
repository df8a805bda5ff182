"""Model specs: one string names any model advkit can attack, on the command line (``--model SPEC``) and in Python.

==========================================  ===============================================================
spec                                        what it loads
==========================================  ===============================================================
``NAME[:key=value,...]``                    a registered model (``advkit models`` lists them) with its
                                            loader's options, e.g. ``bnn:straight_through=false``
``torchvision:NAME[:WEIGHTS]``              any torchvision classifier; ``WEIGHTS`` names a member of its
                                            weights enum (default ``DEFAULT``) or is ``none`` (untrained)
``timm:NAME[:none]``                        any timm model (``pip install 'advkit[timm]'``); pretrained
                                            weights from the local Hugging Face / torch hub cache only
``robustbench:NAME[:DATASET[:THREAT]]``     a RobustBench model (default ``cifar10``, ``Linf``), its
                                            checkpoint read from ``models/DATASET/THREAT/NAME.pt``
``path/to/file.py:FACTORY[:key=value,..]``  ``FACTORY(**options)`` from your file: an ``nn.Module`` or a
                                            :class:`~advkit.models.ModelAdapter`
``package.module:FACTORY[:key=value,..]``   the same from an importable module
==========================================  ===============================================================

:func:`load_model` takes a spec and the adapter options (``weights``, ``bounds``, ``mean``, ``std``,
``input_shape``, ``classes``, ``name``); :func:`wrap` puts your own ``nn.Module`` behind an adapter.

* Nothing is downloaded by timm or RobustBench models: their files must be in the local caches, and a
  missing one fails with :class:`~advkit.errors.WeightsLoadError` naming the exact path to put it at.
  torchvision files behave as for the registered torchvision models (``advkit.plugins.builtin.imagenet_models``):
  read from ``$TORCH_HOME/hub/checkpoints``, downloaded only where the network allows and never with
  ``ADVKIT_OFFLINE=1``.
* Every weights file (yours, or a cached one) is read by :mod:`advkit.safe_loading`: safetensors or a plain
  state dict, never pickled Python objects, loaded with strict keys. A file given as ``weights=`` has its
  path and SHA-256 in ``adapter.metadata["weights"]`` / ``["weights_sha256"]``.
* Normalization and resizing happen inside the adapter's module: attacks see raw inputs in ``bounds``.

This module imports neither torch nor any other part of advkit beyond :mod:`advkit.errors` until a model is
loaded, so the command line can show :func:`describe_specs` in its help without importing torch.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import operator
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advkit.errors import ModelLoadError, ParameterError, WeightsLoadError

if TYPE_CHECKING:
    from torch import nn

    from advkit.models import ModelAdapter

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "SPEC_FORMS",
    "MissingDependencyError",
    "ParsedSpec",
    "describe_specs",
    "load_model",
    "load_model_ref",
    "parse_spec",
    "resolve_classes",
    "robustbench_checkpoint_path",
    "wrap",
]


class MissingDependencyError(ParameterError, ModuleNotFoundError):
    """A spec that needs an optional package that is not installed; the message says what to ``pip install``.

    A :class:`~advkit.errors.ParameterError` (a usage error) and a ``ModuleNotFoundError``."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


#: (spec form, what it loads): the table of :func:`describe_specs`.
SPEC_FORMS: tuple[tuple[str, str], ...] = (
    (
        "NAME[:key=value,...]",
        "a registered model ('advkit models' lists them) with its options, e.g. bnn:straight_through=false",
    ),
    (
        "torchvision:NAME[:WEIGHTS]",
        "any torchvision classifier, e.g. torchvision:resnet50:IMAGENET1K_V2; WEIGHTS defaults to DEFAULT, "
        "'none' builds it untrained; files from the torch hub cache ($TORCH_HOME/hub/checkpoints)",
    ),
    (
        "timm:NAME[:none]",
        "any timm model, e.g. timm:resnet18.a1_in1k (pip install 'advkit[timm]'); pretrained weights from the local "
        "Hugging Face or torch hub cache only, never downloaded; 'none' builds it untrained",
    ),
    (
        "robustbench:NAME[:DATASET[:THREAT]]",
        "a RobustBench model (pip install robustbench), DATASET cifar10 (default), cifar100 or imagenet, THREAT Linf "
        "(default), L2 or corruptions; its checkpoint from models/DATASET/THREAT/NAME.pt under the working "
        "directory or $ROBUSTBENCH_MODELS, never downloaded",
    ),
    (
        "path/to/file.py:FACTORY[:key=value,...]",
        "FACTORY(key=value, ...) from your own file, returning an nn.Module or a ModelAdapter",
    ),
    (
        "package.module:FACTORY[:key=value,...]",
        "the same from an importable module (the working directory is searched too)",
    ),
)

_OPTIONS_HELP = (
    "Options (load_model's keyword arguments, the commands' --weights, --bounds, --mean, --std, --input-shape, "
    "--class-names, or inside a file or module spec: my.py:make:weights=w.safetensors,input_shape=1,28,28): "
    "weights=FILE (safetensors or a plain state dict, loaded with strict keys; its SHA-256 is recorded), "
    "classes (a list, a file with one name per line or a JSON list, or a number; default: the model's own, or "
    "the number of outputs). For your own nn.Module also input_shape (required, e.g. 3,32,32), "
    "bounds (default 0,1) and mean/std per channel (the normalization happens inside the model; attacks see raw "
    "inputs)."
)


def describe_specs() -> str:
    """The spec forms :func:`load_model` accepts and its options, as plain text (for ``advkit models --help``)."""
    width = max(len(form) for form, _ in SPEC_FORMS)
    lines = ["Model specs:"] + [f"  {form.ljust(width)}  {text}" for form, text in SPEC_FORMS]
    return "\n".join([*lines, "", _OPTIONS_HELP])


# ----------------------------------------------------------------------------- parsing

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*")
_FILE_SPEC = re.compile(rf"^(?P<path>.+?\.py):(?P<factory>{_IDENTIFIER}(?:\.{_IDENTIFIER})*)(?::(?P<options>.*))?$")
_PREFIXED = ("torchvision", "timm", "robustbench")


@dataclass(frozen=True)
class ParsedSpec:
    """What a spec names: its ``kind`` (registered, torchvision, timm, robustbench, file or module), its
    ``target`` (a model name, a file path or a module name) and the rest."""

    spec: str
    kind: str
    target: str
    factory: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    parts: tuple[str, ...] = ()


def _forms() -> str:
    return "model specs: " + "; ".join(form for form, _ in SPEC_FORMS)


def parse_model_ref(ref: str) -> tuple[str, dict[str, Any]]:
    """``"bnn:straight_through=false"`` -> ``("bnn", {"straight_through": False})``; a repeated key is refused.

    Options are separated by ``,`` or ``:`` (``bnn:a=1,b=2`` = ``bnn:a=1:b=2``). A list value keeps its commas: an
    item without ``=`` continues the value before it, so ``f.py:make:input_shape=1,28,28,bounds=0,1`` gives
    ``input_shape="1,28,28"`` and ``bounds="0,1"`` (and ``weights=C:/w.safetensors`` keeps its colon)."""
    name, _, rest = ref.partition(":")
    raw_values: dict[str, str] = {}
    last: str | None = None
    pieces = re.split(r"([,:])", rest)  # options are separated by ',' or ':' (as in data set specs)
    for separator, pair in zip(["", *pieces[1::2]], pieces[::2]):
        if not pair:
            continue
        key, sep, raw = pair.partition("=")
        if not sep:
            if last is None:
                raise ParameterError(f"model option {pair!r} in {ref!r} is not key=value")
            raw_values[last] += separator + pair
            continue
        key = key.strip()
        if not key:
            raise ParameterError(f"model option {pair!r} in {ref!r} has no key")
        if key in raw_values:
            raise ParameterError(f"model option {key!r} is given twice in {ref!r}; give each option once")
        raw_values[key] = raw
        last = key
    return name.strip(), {key: _option_value(raw) for key, raw in raw_values.items()}


def _option_value(raw: str) -> Any:
    """``true``/``false`` as booleans, a number as int or float, anything else (a list too) as its text."""
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for number in (int, float):
        try:
            return number(raw)
        except ValueError:
            pass
    return raw.strip()


def _parse_options(text: str, spec: str) -> dict[str, Any]:
    """``key=value,...`` exactly as :func:`parse_model_ref` reads them (a repeated key is refused)."""
    if not text:
        return {}
    try:
        return parse_model_ref(f"_:{text}")[1]
    except ParameterError as error:
        raise ParameterError(str(error).replace(repr(f"_:{text}"), repr(spec))) from None


def _is_registered(name: str) -> bool:
    from advkit.registry import models

    return name in models()  # a name two plugins registered raises its RegistrationError here


def parse_spec(spec: str) -> ParsedSpec:
    """Which form ``spec`` has (see :data:`SPEC_FORMS`); no model is built yet (only the registry is consulted).

    Raises:
        ParameterError: an empty spec, a ``.py`` file without a factory, or a malformed prefixed spec.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError(f"a model spec is a non-empty string, got {spec!r}; {_forms()}")
    spec = spec.strip()
    head, _, rest = spec.partition(":")
    if head in _PREFIXED:
        parts = tuple(p.strip() for p in rest.split(":")) if rest else ()
        limits = {"torchvision": 2, "timm": 2, "robustbench": 3}
        if not parts or not parts[0]:
            raise ParameterError(f"model spec {spec!r} names no model: write {head}:NAME (e.g. {_example(head)})")
        if len(parts) > limits[head] or not all(parts):
            wanted = next(f for f, _ in SPEC_FORMS if f.startswith(f"{head}:"))
            raise ParameterError(f"model spec {spec!r} is not of the form {wanted} (e.g. {_example(head)})")
        return ParsedSpec(spec, head, parts[0], parts=parts[1:])
    found = _FILE_SPEC.match(spec)
    if found:
        options = _parse_options(found.group("options") or "", spec)
        return ParsedSpec(spec, "file", found.group("path"), factory=found.group("factory"), options=options)
    if spec.endswith(".py") or re.search(r"\.py:", spec):
        raise ParameterError(
            f"model spec {spec!r} names a Python file but no factory in it: write {spec.split('.py')[0]}.py:make, "
            "where make() returns an nn.Module or a ModelAdapter (options after another colon: file.py:make:width=4)"
        )
    first = rest.split(":", 1)[0]
    factory_like = bool(rest) and "=" not in first and re.fullmatch(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*", first)
    if factory_like and _DOTTED.fullmatch(head) and not _is_registered(head):
        module_options = rest.split(":", 1)[1] if ":" in rest else ""
        return ParsedSpec(spec, "module", head, factory=first, options=_parse_options(module_options, spec))
    name, options = parse_model_ref(spec)
    return ParsedSpec(spec, "registered", name, options=options)


def _example(prefix: str) -> str:
    return {
        "torchvision": "torchvision:resnet18 or torchvision:resnet18:none",
        "timm": "timm:resnet18.a1_in1k or timm:resnet18:none",
        "robustbench": "robustbench:Standard:cifar10:Linf",
    }[prefix]


# ----------------------------------------------------------------------------- adapter options


def _numbers(value: Any, what: str) -> list[float]:
    """A number, a sequence of numbers or a comma-separated string as floats."""
    if isinstance(value, str):
        items: list[Any] = [v for v in re.split(r"[,\s]+", value.strip()) if v]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    else:
        try:
            items = [v.item() if hasattr(v, "item") else v for v in value]
        except TypeError:
            raise ParameterError(f"{what} must be a number or a sequence of numbers, got {value!r}") from None
    out = []
    for item in items:
        if isinstance(item, bool):
            raise ParameterError(f"{what} must be numbers, got {item!r} in {value!r}")
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise ParameterError(f"{what} must be numbers, got {item!r} in {value!r}") from None
        if not math.isfinite(number):
            raise ParameterError(f"{what} must be finite numbers, got {value!r}")
        out.append(number)
    if not out:
        raise ParameterError(f"{what} is empty")
    return out


def _check_bounds(bounds: Any) -> tuple[float, float]:
    values = _numbers(bounds, "bounds")
    if len(values) != 2:
        raise ParameterError(f"bounds are two numbers (low, high), got {bounds!r}")
    low, high = values
    if not low < high:
        raise ParameterError(f"bounds must satisfy low < high, got ({low:g}, {high:g})")
    return low, high


def _check_shape(input_shape: Any) -> tuple[int, ...]:
    if isinstance(input_shape, str):
        items: list[Any] = [v for v in re.split(r"[,x×\s]+", input_shape.strip().strip("()[]")) if v]
    else:
        try:
            items = list(input_shape)
        except TypeError:
            raise ParameterError(f"input_shape is a sequence of sizes, e.g. (3, 32, 32), got {input_shape!r}") from None
    shape = []
    for item in items:
        if isinstance(item, str) and item.isdigit():
            size = int(item)
        elif isinstance(item, (bool, str)) or not hasattr(item, "__index__"):
            raise ParameterError(f"input_shape holds whole sizes, e.g. (3, 32, 32), got {input_shape!r}")
        else:
            size = operator.index(item)
        if size < 1:
            raise ParameterError(f"input_shape holds positive sizes, got {input_shape!r}")
        shape.append(size)
    if not shape:
        raise ParameterError("input_shape is empty; give the shape of one input without the batch, e.g. (3, 32, 32)")
    return tuple(shape)


def _per_channel(value: Any, what: str, channels: int, shape: tuple[int, ...]) -> list[float] | None:
    if value is None:
        return None
    values = _numbers(value, what)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ParameterError(
            f"{what} has {len(values)} values but the input has {channels} channels (input_shape {shape}); "
            f"give one value per channel, or one for all"
        )
    return values


def resolve_classes(classes: Any, count: Callable[[], int] | None = None) -> list[str]:
    """Class names from a list of names, a path to a file (one name per line, or a JSON list), a number of
    classes (names ``"0"``..``"k-1"``, also as a string of digits), or ``None`` (then ``count()`` of them).

    Raises:
        ParameterError: an empty list, a missing or empty file, a non-positive number, or anything else.
    """
    if classes is None:
        if count is None:
            raise ParameterError("give the classes: a list of names, a file of names or a number of classes")
        return [str(i) for i in range(count())]
    if isinstance(classes, bool):
        raise ParameterError(f"classes is a list of names, a file of names or a number of classes, not {classes!r}")
    if isinstance(classes, str) and classes.strip().isdigit():
        classes = int(classes.strip())
    if isinstance(classes, int):
        if classes < 1:
            raise ParameterError(f"the number of classes must be positive, got {classes}")
        return [str(i) for i in range(classes)]
    if isinstance(classes, (str, os.PathLike)):
        return _classes_file(Path(classes))
    if isinstance(classes, Sequence):
        names = []
        for item in classes:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise ParameterError(f"class names are strings, got {item!r} in the classes list")
            names.append(str(item))
        if not names:
            raise ParameterError("the classes list is empty")
        return names
    raise ParameterError(f"classes is a list of names, a file of names or a number of classes, not {classes!r}")


def _classes_file(path: Path) -> list[str]:
    if not path.is_file():
        raise ParameterError(
            f"no class-names file at {path}" + (" (it is a folder)" if path.is_dir() else "") + "; classes is a list "
            "of names, a file with one name per line or a JSON list, or a number of classes"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ParameterError(f"cannot read class-names file {path}: {error}") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as error:
            raise ParameterError(f"class-names file {path} is not valid JSON: {error}") from None
        if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
            raise ParameterError(f"class-names file {path} must hold a non-empty JSON list of names")
        return [str(n) for n in names]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ParameterError(f"class-names file {path} is empty; write one class name per line")
    return names


# ----------------------------------------------------------------------------- wrap


def _build_normalize():
    import torch
    from torch import nn

    class Normalize(nn.Module):
        """``net((x - mean) / std)`` with ``mean`` and ``std`` per channel (dimension 1 of the input)."""

        def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], ndim: int) -> None:
            super().__init__()
            self.net = net
            shape = (1, len(mean), *([1] * (ndim - 1)))
            self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(shape))
            self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(shape))

        def forward(self, x):
            return self.net((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    Normalize.__module__ = __name__
    Normalize.__qualname__ = "Normalize"
    return Normalize


def _normalize_class():
    """``Normalize``, an nn.Module built on first use (so that importing this module does not import torch)."""
    cls = globals().get("Normalize")
    if cls is None:
        cls = globals()["Normalize"] = _build_normalize()
    return cls


def __getattr__(name: str) -> Any:
    if name == "Normalize":  # also how pickle finds the class
        return _normalize_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _first_tensor(module: nn.Module):
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor
    return None


def _count_outputs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The number of logits ``module`` returns for one input of ``input_shape`` (one forward pass on zeros)."""
    import torch

    first = _first_tensor(module)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    x = torch.zeros((1, *input_shape), dtype=dtype, device=device)
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as error:  # noqa: BLE001 - the user's module; say which input it was given
        detail = " ".join(str(error).split())[:300]
        raise ParameterError(
            f"the model fails on an input of shape {tuple(x.shape)} ({type(error).__name__}: {detail}); "
            "check input_shape (one input without the batch dimension)"
        ) from error
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        shown = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ParameterError(
            f"the model returns {shown} for an input of shape {tuple(x.shape)}; a classifier returns logits of "
            "shape (N, classes)"
        )
    return int(out.shape[1])


def wrap(
    module: nn.Module,
    *,
    bounds: Sequence[float] = (0.0, 1.0),
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    input_shape: Sequence[int] | None = None,
    classes: Any = None,
    name: str | None = None,
    dataset: str | None = None,
    description: str = "",
    metadata: dict | None = None,
) -> ModelAdapter:
    """Your own classifier behind a :class:`~advkit.models.ModelAdapter`, in eval mode.

    Args:
        module: an ``nn.Module`` mapping ``(N, *input_shape)`` inputs to ``(N, classes)`` logits.
        bounds: ``(low, high)`` of valid inputs (default ``(0, 1)``); attacks stay inside them.
        mean, std: per-channel normalization (one value per channel of ``input_shape[0]``, or one for all). It
            happens inside the adapter's module (``module((x - mean) / std)``), so attacks see raw inputs.
            Only one of them given: the other is 0 (mean) or 1 (std).
        input_shape: the shape of one input without the batch dimension, e.g. ``(3, 32, 32)``; required.
        classes: a list of names, a path to a file (one name per line, or a JSON list), a number of classes, or
            ``None`` (the number of outputs, found by one forward pass on zeros).
        name, dataset, description, metadata: stored on the adapter.

    Raises:
        ParameterError: no ``input_shape``, ``low >= high``, mean/std of the wrong length, a std that is not
            positive, bad classes, or a module that does not return ``(1, k)`` logits for one input.
    """
    from torch import nn

    from advkit.models import ModelAdapter

    if isinstance(module, ModelAdapter):
        raise ParameterError("wrap() takes an nn.Module; this is already a ModelAdapter")
    if not isinstance(module, nn.Module):
        raise ParameterError(f"wrap() takes an nn.Module, got {type(module).__name__}")
    if input_shape is None:
        raise ParameterError(
            "input_shape is required for a bare nn.Module: the shape of one input without the batch dimension, "
            "e.g. input_shape=(3, 32, 32) (--input-shape 3,32,32)"
        )
    shape = _check_shape(input_shape)
    low, high = _check_bounds(bounds)
    channels = shape[0]
    means = _per_channel(mean, "mean", channels, shape)
    stds = _per_channel(std, "std", channels, shape)
    if stds is not None:
        bad = [i for i, s in enumerate(stds) if s <= 0]
        if bad:
            raise ParameterError(f"std must be positive for every channel, got {stds[bad[0]]:g} for channel {bad[0]}")
    module.eval()
    name = name or type(module).__name__
    info = dict(metadata or {})
    if means is not None or stds is not None:
        means = means if means is not None else [0.0] * channels
        stds = stds if stds is not None else [1.0] * channels
        module = _normalize_class()(module, means, stds, len(shape))
        first = _first_tensor(module.net)
        if first is not None:
            module.to(device=first.device)
        module.eval()
        info["normalization"] = {"mean": means, "std": stds}
    class_names = resolve_classes(classes, lambda: _count_outputs(module, shape))
    return ModelAdapter(
        module,
        name=name,
        bounds=(low, high),
        input_shape=shape,
        class_names=class_names,
        dataset=dataset,
        description=description,
        metadata=info,
    )


# ----------------------------------------------------------------------------- load_model


def load_model(
    spec: str,
    device: Any = "cpu",
    *,
    weights: str | os.PathLike | None = None,
    bounds: Sequence[float] | None = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    input_shape: Sequence[int] | None = None,
    classes: Any = None,
    name: str | None = None,
) -> ModelAdapter:
    """The model ``spec`` names (see :data:`SPEC_FORMS` / :func:`describe_specs`), in eval mode, on ``device``.

    Args:
        spec: a registered name (with ``:key=value,...`` options), ``torchvision:NAME[:WEIGHTS]``,
            ``timm:NAME[:none]``, ``robustbench:NAME[:DATASET[:THREAT]]``, ``path/to/file.py:FACTORY[:options]``
            or ``package.module:FACTORY[:options]``.
        weights: a weights file (safetensors or a plain state dict) loaded into the model with strict keys; its
            path and SHA-256 go into ``metadata["weights"]`` and ``metadata["weights_sha256"]``. For a registered
            model it is passed as the loader's ``weights_path`` (models without one refuse it); for torchvision and
            timm it replaces the pretrained weights (nothing is fetched).
        bounds, mean, std, input_shape: for a factory that returns a bare ``nn.Module`` (see :func:`wrap`);
            every other spec knows its own and refuses them.
        classes: class names (see :func:`resolve_classes`); they replace the model's own (same count). For
            torchvision and timm models without pretrained weights their count sets the number of outputs.
        name: the adapter's name (default: the spec).

    Raises:
        ParameterError: a malformed spec, an unknown option, an option the spec does not take, bad adapter
            options (:class:`MissingDependencyError` when timm or robustbench is not installed).
        advkit.registry.UnknownNameError: a name that is neither registered nor another form.
        WeightsLoadError: a weights file that is missing, unsafe or of another architecture; pretrained weights
            that are not in the local cache (the message names the path to put them at).
        ModelLoadError: your file or module fails to import, its factory raises or returns something else.
    """
    parsed = parse_spec(spec)
    if parsed.kind in ("file", "module"):
        parsed, in_spec = _adapter_options_in_spec(parsed)
        arguments = {"weights": weights, "bounds": bounds, "mean": mean, "std": std, "input_shape": input_shape}
        arguments["classes"] = classes
        for key, value in in_spec.items():
            if arguments[key] is not None:
                raise ParameterError(f"{key} is given twice for {parsed.spec!r}: in the spec and as an option")
            arguments[key] = value
        weights, bounds, mean, std = arguments["weights"], arguments["bounds"], arguments["mean"], arguments["std"]
        input_shape, classes = arguments["input_shape"], arguments["classes"]
    given = {"bounds": bounds, "mean": mean, "std": std, "input_shape": input_shape}
    if parsed.kind not in ("file", "module"):
        _refuse_module_options(parsed, given)
    weights_path = Path(weights).expanduser() if weights is not None else None
    if parsed.kind == "registered":
        adapter = _load_registered(parsed, weights_path)
    elif parsed.kind == "torchvision":
        adapter = _load_torchvision(parsed, weights_path, classes)
    elif parsed.kind == "timm":
        adapter = _load_timm(parsed, weights_path, classes)
    elif parsed.kind == "robustbench":
        adapter = _load_robustbench(parsed, weights_path)
    else:
        adapter, own = _load_factory(parsed, weights_path, given, classes)
        if own:  # the factory's own adapter: classes may rename its classes
            _replace_classes(adapter, classes)
    if parsed.kind in ("registered", "robustbench"):
        _replace_classes(adapter, classes)
    adapter.name = name or parsed.spec
    adapter.metadata["spec"] = parsed.spec
    adapter.module.eval()
    return adapter.to(device)


#: Options of a ``file.py:FACTORY`` / ``package.module:FACTORY`` spec that are advkit's, not the factory's: one
#: string then says everything, e.g. ``my_model.py:make:weights=w.safetensors,input_shape=1,28,28,bounds=0,1``
#: (what ``advkit sweep --model`` needs, as it takes several models).
ADAPTER_OPTIONS = ("weights", "bounds", "mean", "std", "input_shape", "classes")


def _adapter_options_in_spec(parsed: ParsedSpec) -> tuple[ParsedSpec, dict[str, Any]]:
    """Split a factory spec's options into the factory's keyword arguments and advkit's :data:`ADAPTER_OPTIONS`."""
    in_spec = {key: parsed.options[key] for key in ADAPTER_OPTIONS if key in parsed.options}
    if not in_spec:
        return parsed, {}
    if isinstance(in_spec.get("classes"), str) and "," in in_spec["classes"]:
        in_spec["classes"] = [name.strip() for name in in_spec["classes"].split(",")]
    if "weights" in in_spec:
        in_spec["weights"] = str(in_spec["weights"])  # a file named 1 is still a path
    factory_options = {key: value for key, value in parsed.options.items() if key not in in_spec}
    return ParsedSpec(parsed.spec, parsed.kind, parsed.target, parsed.factory, factory_options, parsed.parts), in_spec


def _refuse_module_options(parsed: ParsedSpec, given: dict[str, Any]) -> None:
    named = [key for key, value in given.items() if value is not None]
    if named:
        label = {"registered": "registered model"}.get(parsed.kind, f"{parsed.kind} model")
        raise ParameterError(
            f"{', '.join(named)} only apply to your own nn.Module (file.py:factory or package.module:factory); "
            f"{label} {parsed.spec!r} has its own bounds, input shape and preprocessing"
        )


def _replace_classes(adapter: ModelAdapter, classes: Any) -> None:
    if classes is None:
        return
    names = resolve_classes(classes)
    if len(names) != adapter.num_classes:
        raise ParameterError(
            f"{len(names)} class names for model {adapter.name!r}, which has {adapter.num_classes} classes"
        )
    adapter.class_names = names


def _read_weights(path: Path) -> tuple[dict, str]:
    from advkit.files import sha256_file
    from advkit.safe_loading import load_state_dict_file

    state = load_state_dict_file(path)
    return state, sha256_file(path)


def _record_weights(adapter: ModelAdapter, path: Path, sha256: str) -> None:
    adapter.metadata["weights"] = str(path)
    adapter.metadata["weights_sha256"] = sha256


def _load_into(module: nn.Module, state: dict, path: Path, what: str) -> None:
    from advkit.safe_loading import load_into

    try:
        load_into(module, state, path, what=what)
    except WeightsLoadError as error:
        if "different shapes" in str(error):
            raise WeightsLoadError(f"{error} (another number of classes? pass classes=K)") from None
        raise


def _check_options(func: Callable, options: dict[str, Any], what: str) -> None:
    """Refuse options ``func`` does not take (naming those it does), non-booleans for boolean options, and
    missing required ones."""
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [n for n, p in parameters.items() if p.kind in kinds]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ParameterError(f"{what} has no option {key!r}{hint}; its options: {', '.join(names) or '(none)'}")
    for key, value in options.items():
        default = parameters[key].default if key in parameters else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ParameterError(f"option {key!r} of {what} is true or false, got {value!r}")
    missing = [n for n in names if parameters[n].default is inspect.Parameter.empty and n not in options]
    if missing:
        raise ParameterError(f"{what} needs the option {missing[0]}=... (its options: {', '.join(names)})")


# ----------------------------------------------------------------------------- registered names


def _load_registered(parsed: ParsedSpec, weights: Path | None) -> ModelAdapter:
    from advkit.models import load_model as load_registered
    from advkit.registry import UnknownNameError, get_model_spec

    try:
        registered = get_model_spec(parsed.target)
    except UnknownNameError as error:
        error.args = (
            f"{error.args[0]}; or a spec: torchvision:NAME, timm:NAME, robustbench:NAME, file.py:FACTORY, "
            "package.module:FACTORY",
        )
        raise
    loader = registered.obj.load
    options = dict(parsed.options)
    what = f"model {parsed.target!r}"
    _check_options(loader, options, what)
    sha256 = None
    if weights is not None:
        try:
            takes = "weights_path" in inspect.signature(loader).parameters
        except (TypeError, ValueError):
            takes = False
        if not takes:
            raise ParameterError(f"{what} takes no weights file (its weights come with it)")
        if "weights_path" in options:
            raise ParameterError(f"give the weights of {what} once: weights= or the option weights_path, not both")
        from advkit.files import sha256_file

        if not weights.is_file():
            raise WeightsLoadError(f"no weights file at {weights}")
        sha256 = sha256_file(weights)
        options["weights_path"] = str(weights)
    adapter = load_registered(parsed.target, "cpu", **options)
    if weights is not None:
        _record_weights(adapter, weights, sha256)
    return adapter


# ----------------------------------------------------------------------------- torchvision


def _torchvision_builder_args(name: str, weights, *, pretrained_like: bool) -> dict[str, Any]:
    """The builder arguments torchvision itself sets when it builds ``name`` with ``weights`` (beyond
    ``num_classes``), so ``weights=None`` + ``load_state_dict`` rebuilds the same network."""
    kwargs: dict[str, Any] = {}
    if weights is not None and name.startswith("vit_"):
        kwargs["image_size"] = weights.meta["min_size"][0]
    if weights is not None and name.startswith("maxvit"):
        kwargs["input_size"] = weights.meta["min_size"]
    if name in ("googlenet", "inception_v3"):
        kwargs["transform_input"] = pretrained_like
        kwargs["init_weights"] = not pretrained_like
    return kwargs


def _drop_aux(net) -> None:
    """googlenet / inception_v3 without their auxiliary heads (as torchvision leaves them when pretrained)."""
    if hasattr(net, "aux_logits"):
        net.aux_logits = False
    for head in ("AuxLogits", "aux1", "aux2"):
        if getattr(net, head, None) is not None:
            setattr(net, head, None)


def _torchvision_weights(name: str, choice: str | None, spec: str):
    """The weights enum member ``choice`` names for model ``name`` (DEFAULT when None), or None for ``none``."""
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        enum = None
    if choice is not None and choice.lower() == "none":
        return None, enum
    if enum is None:
        raise ParameterError(f"torchvision model {name!r} has no pretrained weights; use torchvision:{name}:none")
    key = choice or "DEFAULT"
    if "." in key:
        try:
            member = tvm.get_weight(key)
        except (ValueError, KeyError, AttributeError):
            member = None
        if member is not None and isinstance(member, enum):
            return member, enum
    else:
        for candidate in (key, key.upper()):
            if candidate in enum.__members__:
                return enum[candidate], enum
    raise ParameterError(
        f"torchvision model {name!r} has no weights {key!r} (in {spec!r}); its weights: "
        f"{', '.join(enum.__members__)}, or none (untrained)"
    )


def _load_torchvision(parsed: ParsedSpec, weights_file: Path | None, classes: Any) -> ModelAdapter:
    import torchvision.models as tvm

    from advkit.images import Preprocessing, imagenet_adapter, imagenet_class_names
    from advkit.plugins.builtin.imagenet_models import torchvision_preprocessing, torchvision_weights_file

    name = parsed.target
    available = tvm.list_models(module=tvm)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ParameterError(
            f"torchvision has no classification model {name!r}{hint}; torchvision.models.list_models() lists them"
        )
    choice = parsed.parts[0] if parsed.parts else None
    weights, enum = _torchvision_weights(name, choice, parsed.spec)
    shape_of = weights if weights is not None else (enum.DEFAULT if enum is not None else None)
    categories = list(shape_of.meta["categories"]) if shape_of is not None else list(imagenet_class_names())
    names = resolve_classes(classes) if classes is not None else categories
    if weights is not None and weights_file is None and len(names) != len(categories):
        raise ParameterError(
            f"{len(names)} classes for {parsed.spec!r}, whose pretrained weights have {len(categories)}; "
            f"use torchvision:{name}:none with your own weights for another number of classes"
        )
    kwargs = _torchvision_builder_args(name, shape_of, pretrained_like=weights is not None)
    metadata: dict[str, Any] = {"source": "torchvision", "architecture": name}
    sha256 = None
    if weights_file is not None:
        path = weights_file
        state, sha256 = _read_weights(path)
    elif weights is not None:
        path = torchvision_weights_file(name, weights)
        state, file_sha256 = _read_weights(path)
        metadata.update(
            weights=str(weights),
            file=str(path),
            url=weights.url,
            sha256=file_sha256,
            imagenet_top1=weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
        )
    else:
        state = None
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = bool(state) and any(k.startswith(("AuxLogits.", "aux1.", "aux2.")) for k in state)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # inception_v3/googlenet's note on init_weights
        net = tvm.get_model(name, weights=None, num_classes=len(names), **kwargs)
    if state is not None:
        _load_into(net, state, path, what=f"torchvision model {name!r} ({len(names)} classes)")
    _drop_aux(net)
    preprocessing = torchvision_preprocessing(shape_of) if shape_of is not None else Preprocessing()
    adapter = imagenet_adapter(
        net.eval(),
        name=parsed.spec,
        preprocessing=preprocessing,
        description=f"torchvision {name} ({'untrained' if state is None else weights or 'your weights'})",
        metadata=metadata,
        class_names=names,
    )
    if len(names) != 1000:
        adapter.dataset = None
    if weights_file is not None:
        _record_weights(adapter, weights_file, sha256)
    return adapter


# ----------------------------------------------------------------------------- timm


def _require(module: str, extra: str, spec: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingDependencyError(
            f"model spec {spec!r} needs the {module} package, which is not installed: pip install {extra}",
            name=module,
        ) from None


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as ``huggingface_hub`` finds it (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
    else ``~/.cache/huggingface/hub``), read now (not when huggingface_hub was imported)."""
    env = os.environ
    folder = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not folder:
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
        )
        folder = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(folder)))


def _safe_alternatives(filename: str) -> list[str]:
    if filename.endswith(".safetensors"):
        return []
    if filename == "pytorch_model.bin":
        return ["model.safetensors"]
    if filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors"]
    return [filename.rsplit(".", 1)[0] + ".safetensors"] if filename.endswith(".bin") else []


def _timm_weights_file(name: str, cfg) -> Path:
    """The local file of timm model ``name``'s pretrained weights: its Hugging Face hub cache entry, else the torch
    hub cache file of its URL, else its ``file``. Nothing is downloaded."""
    from advkit.plugins.builtin.imagenet_models import WeightsUnavailableError, hub_checkpoint_path

    expected: list[str] = []
    where = ""
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        filename = getattr(cfg, "hf_hub_filename", None) or "pytorch_model.bin"
        cache = _hf_cache_dir()
        for candidate in [*_safe_alternatives(filename), filename]:
            found = try_to_load_from_cache(repo, candidate, cache_dir=str(cache), revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        first = ([*_safe_alternatives(filename), filename])[0]
        folder = cache / f"models--{repo.replace('/', '--')}"
        expected.append(f"{folder}/snapshots/<commit>/{first} (with refs/{revision or 'main'} holding <commit>)")
        where = (
            f'Where the network allows, fetch them into the Hugging Face cache (python -c "import timm; '
            f"timm.create_model('{name}', pretrained=True)\", or: hf download {repo} {first}) and copy the folder "
            f"{folder.name} into {cache} here (the folder follows $HF_HUB_CACHE or $HF_HOME); or download "
            f"https://huggingface.co/{repo}/resolve/{revision or 'main'}/{first} and pass it: "
            f"--model timm:{name}:none --weights {first}"
        )
    if getattr(cfg, "url", None):
        path = hub_checkpoint_path(cfg.url)
        if path.is_file():
            return path
        expected.append(str(path))
        where = where or f"Download {cfg.url} where the network allows and put the file at {path}"
    if getattr(cfg, "file", None):
        path = Path(cfg.file).expanduser()
        if path.is_file():
            return path
        expected.append(str(path))
    if not expected:
        raise ParameterError(f"timm model {name!r} has no pretrained weights; use timm:{name}:none")
    raise WeightsUnavailableError(
        f"the pretrained weights of timm model {name!r} are not on this machine (advkit never downloads them); "
        f"looked for {' and '.join(expected)}. {where}".rstrip()
    )


def _timm_class_names(timm, net, count: int) -> list[str]:
    from advkit.images import imagenet_class_names

    if count == 1000:
        return list(imagenet_class_names())
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(net)
        if subset:
            info = ImageNetInfo(subset)
            names = [info.index_to_description(i) for i in range(count)]
            if len(names) == count:
                return names
    except Exception:  # noqa: BLE001 - label names are a nicety; fall back to numbers
        pass
    return [str(i) for i in range(count)]


def _load_timm(parsed: ParsedSpec, weights_file: Path | None, classes: Any) -> ModelAdapter:
    timm = _require("timm", "'advkit[timm]'", parsed.spec)
    from advkit.images import Preprocessing, imagenet_adapter

    name = parsed.target
    mode = parsed.parts[0].lower() if parsed.parts else "pretrained"
    if mode not in ("none", "pretrained"):
        raise ParameterError(
            f"timm model spec {parsed.spec!r}: after the name comes 'none' (untrained) or nothing; a pretrained tag "
            f"goes in the name, e.g. timm:resnet18.a1_in1k"
        )
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:6] if not name.startswith(("hf", "local")) else []
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ParameterError(f"timm has no model {name!r}{hint}; timm.list_models() lists them")
    pretrained = mode == "pretrained" and weights_file is None
    names = resolve_classes(classes) if classes is not None else None
    metadata: dict[str, Any] = {"source": "timm", "architecture": name}
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # an unknown pretrained tag
        raise ParameterError(f"timm model spec {parsed.spec!r}: {error}") from None
    if pretrained:
        if cfg is None:
            raise ParameterError(f"timm model {name!r} has no pretrained weights; use timm:{name}:none")
        if names is not None and len(names) != cfg.num_classes:
            raise ParameterError(
                f"{len(names)} classes for {parsed.spec!r}, whose pretrained weights have {cfg.num_classes}; "
                f"use timm:{name}:none with your own weights for another number of classes"
            )
        path = _timm_weights_file(name, cfg)
        state, file_sha256 = _read_weights(path)
        try:
            # timm's own loading of an in-memory state dict (its checkpoint filter, strict keys), no download.
            net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
        except RuntimeError as error:
            detail = " ".join(str(error).split())[:300]
            raise WeightsLoadError(f"weights file {path} does not fit timm model {name!r}: {detail}") from None
        net.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights
        metadata.update(file=str(path), sha256=file_sha256, pretrained=cfg.hf_hub_id or cfg.url)
    else:
        kwargs = {"num_classes": len(names)} if names is not None else {}
        net = timm.create_model(name, pretrained=False, **kwargs)
        if weights_file is not None:
            state, sha256 = _read_weights(weights_file)
            _load_into(net, state, weights_file, what=f"timm model {name!r}")
    net.eval()
    count = int(getattr(net, "num_classes", 0) or 0) or None
    data = timm.data.resolve_data_config({}, model=net)
    channels, height, width = (int(s) for s in data["input_size"])
    if names is None:
        names = _timm_class_names(timm, net, count) if count else None
    description = f"timm {name} ({'pretrained' if pretrained else 'your weights' if weights_file else 'untrained'})"
    if channels == 3 and height == width and names is not None:
        crop_pct = float(data.get("crop_pct") or 0.875)
        preprocessing = Preprocessing(
            crop_size=height,
            resize_size=int(math.floor(height / crop_pct)),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            interpolation=str(data.get("interpolation") or "bilinear"),
        )
        adapter = imagenet_adapter(
            net,
            name=parsed.spec,
            preprocessing=preprocessing,
            description=description,
            metadata=metadata,
            class_names=names,
        )
        if len(names) != 1000:
            adapter.dataset = None
    else:
        adapter = wrap(
            net,
            mean=data["mean"],
            std=data["std"],
            input_shape=(channels, height, width),
            classes=names,
            name=parsed.spec,
            description=description,
            metadata=metadata,
        )
    if weights_file is not None:
        _record_weights(adapter, weights_file, sha256)
    return adapter


# ----------------------------------------------------------------------------- robustbench

#: The CIFAR-10 class names, in label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

#: The CIFAR-100 fine class names, in label order.
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
    elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
    man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
    pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
    tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)

_RB_DATASETS = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagenet": (3, 224, 224)}
_RB_THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions", "corruptions_3d": "corruptions_3d"}
#: The env variable that points at the RobustBench models folder (default: ``models`` in the working directory).
ROBUSTBENCH_MODELS_ENV = "ROBUSTBENCH_MODELS"


def _robustbench_parts(parsed: ParsedSpec) -> tuple[str, str, str]:
    dataset = (parsed.parts[0] if parsed.parts else "cifar10").lower().replace("-", "").replace("_", "")
    threat_text = parsed.parts[1] if len(parsed.parts) > 1 else "Linf"
    if dataset not in _RB_DATASETS:
        raise ParameterError(
            f"robustbench model spec {parsed.spec!r}: unknown dataset {parsed.parts[0]!r}; datasets: "
            f"{', '.join(_RB_DATASETS)}"
        )
    threat = _RB_THREATS.get(threat_text.lower())
    if threat is None:
        raise ParameterError(
            f"robustbench model spec {parsed.spec!r}: unknown threat model {threat_text!r}; threat models: "
            f"{', '.join(_RB_THREATS.values())}"
        )
    return parsed.target, dataset, threat


def robustbench_checkpoint_path(name: str, dataset: str = "cifar10", threat: str = "Linf") -> Path:
    """Where RobustBench keeps model ``name``'s checkpoint: ``models/<dataset>/<threat>/<name>.pt`` under the
    working directory (its ``load_model`` default ``model_dir='./models'``), or under ``$ROBUSTBENCH_MODELS``.
    The ``corruptions_3d`` models share the ``corruptions`` folder, as in RobustBench."""
    root = Path(os.environ.get(ROBUSTBENCH_MODELS_ENV) or "models").expanduser()
    return (Path.cwd() / root if not root.is_absolute() else root) / dataset / threat.replace("_3d", "") / f"{name}.pt"


def _read_checkpoint(path: Path) -> Any:
    """A torch.save file read by torch's restricted unpickler (tensors and plain containers only); a refusal
    is :func:`advkit.safe_loading.load_state_dict_file`'s own message."""
    import torch

    from advkit.safe_loading import load_state_dict_file

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-read by the safe loader for its precise message
        try:
            load_state_dict_file(path)
        except WeightsLoadError as refusal:
            raise refusal from None
        raise WeightsLoadError(f"cannot load weights file {path}: {type(error).__name__}: {error}") from None


_NORMALIZATION_KEYS = {"mu", "sigma", "mean", "std"}


def _robustbench_state(checkpoint: Any, name: str, net, path: Path, dataset: str) -> dict:
    """RobustBench's unwrapping of a checkpoint (its ``load_model``): ``['last']`` for two model families,
    ``['state_dict']`` where there is one, the prefixes ``module.`` and ``model.`` dropped, ``model.`` added for
    ImageNet models that expect it."""
    import torch

    if isinstance(checkpoint, dict) and (
        "Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding"
    ):
        checkpoint = checkpoint.get("last", checkpoint)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise WeightsLoadError(f"weights file {path} holds a {type(checkpoint).__name__}, not a RobustBench checkpoint")
    state = {}
    for key, value in checkpoint.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsLoadError(
                f"weights file {path} has an entry {key!r} that is not a tensor; not a RobustBench checkpoint"
            )
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    expected = net.state_dict()
    if dataset == "imagenet" and expected and all(k.startswith("model.") for k in expected):
        state = {k if k.startswith("model.") else f"model.{k}": v for k, v in state.items()}
    # RobustBench loads a few models without their normalization constants (set by the constructor): so do we.
    for key, value in expected.items():
        if key not in state and key.rsplit(".", 1)[-1] in _NORMALIZATION_KEYS:
            state[key] = value
    return state


def _load_robustbench(parsed: ParsedSpec, weights_file: Path | None) -> ModelAdapter:
    from advkit.images import imagenet_class_names
    from advkit.plugins.builtin.imagenet_models import WeightsUnavailableError

    name, dataset, threat = _robustbench_parts(parsed)
    path = weights_file or robustbench_checkpoint_path(name, dataset, threat)
    if importlib.util.find_spec("robustbench") is None:
        raise MissingDependencyError(
            f"model spec {parsed.spec!r} needs the robustbench package for its architecture, which is not "
            f"installed: pip install robustbench (its checkpoint is read from {path}; advkit never downloads it)",
            name="robustbench",
        )
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ModuleNotFoundError as error:
        fix = "pip install 'setuptools<81'" if error.name == "pkg_resources" else f"pip install {error.name}"
        raise MissingDependencyError(
            f"robustbench is installed but cannot be imported ({error}): {fix} (the checkpoint of {parsed.spec!r} "
            f"is read from {path})",
            name=error.name,
        ) from None
    except Exception as error:  # noqa: BLE001 - a broken install
        raise ModelLoadError(
            f"robustbench is installed but cannot be imported: {type(error).__name__}: {error}"
        ) from None
    models = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat.replace("_3d", ""))]
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ParameterError(f"RobustBench has no {dataset} {threat} model {name!r}{hint}")
    entry = models[name]
    if isinstance(entry.get("gdrive_id"), (list, tuple)):
        raise ParameterError(f"RobustBench model {name!r} is an ensemble of several checkpoints; advkit loads one")
    if dataset == "imagenet" and "Standard" in name:
        raise ParameterError(
            f"RobustBench model {name!r} is torchvision's pretrained network: use torchvision:resnet50 (or the "
            "matching torchvision model)"
        )
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the checkpoint of RobustBench model {name!r} ({dataset}, {threat}) is not at {path} (advkit never "
            f'downloads it). Where the network allows, python -c "from robustbench.utils import load_model; '
            f"load_model('{name}', dataset='{dataset}', threat_model='{threat}')\" saves it as "
            f"models/{dataset}/{threat.replace('_3d', '')}/{name}.pt under the working directory: copy that file "
            f"to {path} (or point ${ROBUSTBENCH_MODELS_ENV} at the models folder)"
        )
    net = entry["model"]()
    state = _robustbench_state(_read_checkpoint(path), name, net, path, dataset)
    _load_into(net, state, path, what=f"RobustBench model {name!r}")
    classes = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}.get(dataset) or imagenet_class_names()
    from advkit.files import sha256_file

    sha256 = sha256_file(path)
    adapter = wrap(
        net,
        bounds=(0.0, 1.0),
        input_shape=_RB_DATASETS[dataset],
        classes=list(classes),
        name=parsed.spec,
        dataset=dataset,
        description=f"RobustBench {name} ({dataset}, {threat})",
        metadata={"source": "robustbench", "threat_model": threat, "file": str(path), "sha256": sha256},
    )
    if weights_file is not None:
        _record_weights(adapter, weights_file, sha256)
    return adapter


# ----------------------------------------------------------------------------- your own code


@contextlib.contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the duration (so a model file can import its neighbours)."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise ParameterError(
            f"no model file at {path}" + (" (it is a folder)" if path.is_dir() else "") + f" (in model spec {spec!r})"
        )
    resolved = path.resolve()
    module_name = "advkit_user_model_" + hashlib.sha256(str(resolved).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ParameterError(f"cannot import model file {path} as Python code")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"importing model file {path} failed: {type(error).__name__}: {error}") from error
    return module


def _import_module(name: str, spec: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and (name == error.name or name.startswith(error.name + ".")):
            raise ParameterError(
                f"cannot import module {name!r} (model spec {spec!r}): {error}; is it installed, in the working "
                "directory or on PYTHONPATH? (a file is given as path/to/file.py:FACTORY)"
            ) from None
        raise ModelLoadError(f"importing module {name!r} failed: {type(error).__name__}: {error}") from error
    except Exception as error:
        raise ModelLoadError(f"importing module {name!r} failed: {type(error).__name__}: {error}") from error


def _load_factory(
    parsed: ParsedSpec, weights: Path | None, given: dict[str, Any], classes: Any
) -> tuple[ModelAdapter, bool]:
    """The adapter of a file or module spec, and whether the factory made it itself."""
    from torch import nn

    from advkit.models import ModelAdapter

    if parsed.kind == "file":
        path = Path(parsed.target).expanduser()
        folder = str(path.resolve().parent) if path.is_file() else os.getcwd()
    else:
        folder = os.getcwd()
    with _on_sys_path(folder):
        module = (
            _import_file(path, parsed.spec) if parsed.kind == "file" else _import_module(parsed.target, parsed.spec)
        )
        factory: Any = module
        for attribute in parsed.factory.split("."):
            if not hasattr(factory, attribute):
                found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
                close = difflib.get_close_matches(attribute, found, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ParameterError(f"{parsed.target} has no {parsed.factory!r} (model spec {parsed.spec!r}){hint}")
            factory = getattr(factory, attribute)
        if not callable(factory):
            raise ParameterError(f"{parsed.factory!r} in {parsed.target} is not callable (model spec {parsed.spec!r})")
        _check_options(factory, parsed.options, f"factory {parsed.factory!r} of {parsed.target}")
        try:
            made = factory(**parsed.options)
        except Exception as error:
            raise ModelLoadError(
                f"{parsed.factory}() in {parsed.target} raised {type(error).__name__}: {error}"
            ) from error
    if weights is not None:
        state, sha256 = _read_weights(weights)
    code = _code_sha256(module)
    if isinstance(made, ModelAdapter):
        named = [key for key, value in given.items() if value is not None]
        if named:
            raise ParameterError(
                f"{', '.join(named)} only apply to a bare nn.Module; {parsed.factory}() returned a ModelAdapter, "
                "which has its own"
            )
        if weights is not None:
            _load_into(made.module, state, weights, what=f"the model of {parsed.spec!r}")
            _record_weights(made, weights, sha256)
        made.metadata.setdefault("source", parsed.kind)
        if code is not None:
            made.metadata["code_sha256"] = code
        return made, True
    if not isinstance(made, nn.Module):
        raise ModelLoadError(
            f"{parsed.factory}() in {parsed.target} returned a {type(made).__name__}; it must return an nn.Module "
            "or a ModelAdapter"
        )
    if weights is not None:
        _load_into(made, state, weights, what=f"the module of {parsed.spec!r}")
    if given["input_shape"] is None:
        raise ParameterError(
            f"{parsed.factory}() in {parsed.target} returned a bare nn.Module: give its input_shape (e.g. "
            "--input-shape 3,32,32 or input_shape=(3, 32, 32)), or return advkit.wrap(module, input_shape=...)"
        )
    adapter = wrap(
        made,
        bounds=given["bounds"] if given["bounds"] is not None else (0.0, 1.0),
        mean=given["mean"],
        std=given["std"],
        input_shape=given["input_shape"],
        classes=classes,
        name=parsed.spec,
        description=f"{parsed.factory}() from {parsed.target}",
        metadata={"source": parsed.kind, **({"code_sha256": code} if code is not None else {})},
    )
    if weights is not None:
        _record_weights(adapter, weights, sha256)
    return adapter, False


def _code_sha256(module: Any) -> str | None:
    """The SHA-256 of the file that defines your factory: a sweep resumes only on the same code (editing an
    activation changes the results without changing a single weight)."""
    path = getattr(module, "__file__", None)
    if not path or not Path(path).is_file():
        return None
    from advkit.files import sha256_file

    return sha256_file(Path(path))


def load_model_ref(ref: str, device: str = "cpu") -> ModelAdapter:
    """Load any model spec (``name:key=value``, ``torchvision:NAME``, ``file.py:factory``...); the adapter keeps the
    full reference as its name (how sweeps and workers name the models they load)."""
    model = load_model(ref, device)
    model.name = ref
    return model
