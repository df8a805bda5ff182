"""Loading a weights file that advkit did not write: safetensors, or a plain state dict, and nothing else.

Every loader of a user's or the torch hub's weights file goes through :func:`load_state_dict_file`:

* ``*.safetensors`` is read with :func:`safetensors.torch.load_file` (no code can run);
* anything else with ``torch.load(path, map_location="cpu", weights_only=True)``: torch's restricted
  unpickler, which builds tensors and plain containers only and refuses every other Python object
  (so a pickle that would run code when loaded is refused before any of it runs).

The result must be a state dict, ``{str: Tensor}``. Any failure -- a missing, empty, truncated or
corrupted file, a pickled module or other object, a checkpoint that wraps its state dict with other
entries -- raises :class:`advkit.errors.WeightsLoadError` with a one-line message that names the file
and says how to convert it. advkit never falls back to unrestricted unpickling and never suggests it.

This module imports only :mod:`advkit.errors` from advkit, so the zoo can use it too.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from advkit.errors import WeightsLoadError
from advkit.files import sha256_file

__all__ = [
    "CONVERT_HINT",
    "load_into",
    "load_state_dict_file",
    "sha256_file",
]

#: What to do with a file advkit refuses (it is part of every refusal's message).
CONVERT_HINT = (
    "advkit only loads weights saved as safetensors or as a plain state dict (tensors only), never pickled Python "
    "objects (unpickling them could run code); convert the file in the code that made it (where the model is at hand), e.g. "
    'safetensors.torch.save_file(model.state_dict(), "model.safetensors"), and pass that file'
)


def _refuse(path: Path, reason: str, hint: str = CONVERT_HINT) -> WeightsLoadError:
    if "weights_only" in reason:  # never pass on torch's advice to turn the safety off
        reason = reason.split(" (", 1)[0]
    return WeightsLoadError(f"cannot load weights file {path}: {reason}; {hint}")


def _unpickling_reason(error: BaseException) -> str:
    """Why torch's restricted unpickler refused a file, in advkit's words (never torch's own advice)."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds a pickled Python object ({found.group(1)}), not only tensors (e.g. a whole model saved "
            "with torch.save(model, path))"
        )
    return "it is not a torch.save file of tensors (a plain pickle of Python objects, or another format)"


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return "a tensor"
    if isinstance(value, dict):
        return f"a dict of {len(value)} entries"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _check_state_dict(path: Path, state: object, hint: str) -> dict[str, Tensor]:
    if not isinstance(state, dict):
        raise _refuse(path, f"it holds {_describe(state)}, not a state dict (a dict of parameter name -> tensor)", hint)
    if not state:
        raise _refuse(path, "it holds an empty dict, not a state dict of tensors", hint)
    bad = [(k, v) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        shown = ", ".join(f"{k!r}: {_describe(v)}" for k, v in bad[:3]) + (" ..." if len(bad) > 3 else "")
        wrapped = [k for k, v in bad if isinstance(v, dict) and k in ("state_dict", "model", "model_state_dict", "net")]
        wrapped_hint = (
            f" (it looks like a training checkpoint: save checkpoint[{wrapped[0]!r}] on its own)" if wrapped else ""
        )
        raise _refuse(
            path,
            f"it is a dict with {len(bad)} entries that are not name -> tensor ({shown}), "
            f"not a plain state dict{wrapped_hint}",
            hint,
        )
    return state  # type: ignore[return-value]


def load_state_dict_file(
    path: str | os.PathLike, *, safetensors_only: bool = False, hint: str = CONVERT_HINT
) -> dict[str, Tensor]:
    """The state dict in weights file ``path``, on the CPU, read without running any code from it.

    Args:
        path: a ``.safetensors`` file, or (unless ``safetensors_only``) a ``torch.save`` file of a state dict.
        safetensors_only: read the file as safetensors whatever its name (the zoo's committed weights).
        hint: what to do, at the end of a refusal's message (default :data:`CONVERT_HINT`).

    Raises:
        WeightsLoadError: the file is missing, unreadable, truncated or corrupted, holds pickled Python objects,
            or holds anything other than a ``{str: Tensor}`` dict. The message names the file and says how to
            convert it; it never suggests loading with the safety off.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsLoadError(f"no weights file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if safetensors_only or path.suffix.lower() == ".safetensors":
        import safetensors.torch

        try:
            state = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as error:  # SafetensorError, a bad header (ValueError), OSError...
            detail = " ".join(str(error).split())[:200]
            raise _refuse(
                path, f"it is not a valid safetensors file ({type(error).__name__}: {detail})", hint
            ) from None
        return _check_state_dict(path, state, hint)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols its restricted unpickler may not know; the load fails clearly anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refuse(path, _unpickling_reason(error), hint) from None
    except EOFError:
        raise _refuse(path, "it is empty or truncated", hint) from None
    except PermissionError as error:
        raise WeightsLoadError(f"cannot read weights file {path}: {error.strerror or error}") from None
    except (RuntimeError, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError) as error:
        # e.g. "PytorchStreamReader failed reading zip archive": a truncated or corrupted torch.save file.
        detail = "; ".join(part for part in re.split(r"\.\s", " ".join(str(error).split()))[:1] if part)[:160]
        raise _refuse(
            path, f"it is truncated, corrupted or not a torch.save file ({type(error).__name__}: {detail})", hint
        ) from None
    return _check_state_dict(path, state, hint)


def load_into(
    module: nn.Module, state: dict[str, Tensor], path: str | os.PathLike, *, what: str = "the model"
) -> nn.Module:
    """``module.load_state_dict(state, strict=True)``; a state dict of another architecture raises
    :class:`WeightsLoadError` naming the file and the first mismatching keys."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        expected = module.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        parts = (
            ([f"missing keys {few(missing)}"] if missing else [])
            + ([f"unexpected keys {few(unexpected)}"] if unexpected else [])
            + ([f"different shapes for {few(shapes)}"] if shapes else [])
        )
        detail = "; ".join(parts) or " ".join(str(error).split())[:200]
        raise WeightsLoadError(
            f"weights file {path} does not fit {what}: {detail}; pass a state dict saved from this exact architecture"
        ) from None
    return module
