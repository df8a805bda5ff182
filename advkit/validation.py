"""Checks on user input, each failing with a precise message (never a silent wrong number)."""

from __future__ import annotations

import torch
from torch import Tensor

from advkit.devices import is_out_of_memory
from advkit.errors import InputValidationError, ThreatModelError
from advkit.models import ModelAdapter

#: Rows per chunk of the input and membership checks (their temporaries stay this size, whatever the batch).
CHECK_ROWS = 256

__all__ = [
    "InputValidationError",
    "as_targets",
    "check_constraint",
    "check_eps_in_range",
    "check_inputs",
    "check_labels",
    "check_outputs",
]


def check_inputs(model: ModelAdapter, x: Tensor, atol: float = 1e-6) -> None:
    """x must be a finite float tensor (N, *model.input_shape) inside the model's bounds."""
    if not isinstance(x, Tensor):
        raise InputValidationError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputValidationError(
            f"inputs must be a floating-point tensor in the model's bounds {model.bounds}, got dtype {x.dtype}"
        )
    expected = tuple(model.input_shape)
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        hint = ""
        if x.dim() == len(expected) + 1 and tuple(x.shape[1:]) == expected[1:] + expected[:1]:
            hint = " (channels-last? permute to channels-first with x.permute(0, 3, 1, 2))"
        raise InputValidationError(
            f"inputs must have shape (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}{hint}"
        )
    if x.shape[0] == 0:
        raise InputValidationError("inputs are empty (N = 0)")
    if model.dtype is not None and x.dtype != model.dtype:
        cast = {
            torch.float32: "x.float()",
            torch.float64: "x.double()",
            torch.float16: "x.half()",
            torch.bfloat16: "x.bfloat16()",
        }.get(model.dtype, f"x.to({model.dtype})")
        raise InputValidationError(
            f"inputs are {x.dtype} but model {model.name!r} computes in {model.dtype}; convert them ({cast}) or the "
            "model (module.to(x.dtype)) so both agree"
        )
    finite, x_min, x_max = True, float("inf"), float("-inf")
    for chunk in x.split(CHECK_ROWS):  # the check's temporaries stay a chunk's size, whatever the batch
        finite = finite and bool(torch.isfinite(chunk).all())
        x_min, x_max = min(x_min, float(chunk.min())), max(x_max, float(chunk.max()))
    if not finite:
        raise InputValidationError("inputs contain NaN or inf")
    low, high = model.bounds
    if x_min < low - atol or x_max > high + atol:
        hint = " (0-255 data? scale it to the model's bounds)" if x_max > 2 * max(abs(high), 1.0) else ""
        raise InputValidationError(
            f"inputs lie in [{x_min:g}, {x_max:g}] but model {model.name!r} expects [{low:g}, {high:g}]{hint}"
        )


def check_labels(model: ModelAdapter, y: Tensor, n: int, what: str = "labels") -> None:
    """y must be an int64 tensor of shape (N,) with classes in [0, num_classes)."""
    if not isinstance(y, Tensor):
        raise InputValidationError(f"{what} must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() == 2 and y.shape == (n, model.num_classes):
        raise InputValidationError(
            f"{what} look one-hot (shape {tuple(y.shape)}); pass class indices, e.g. y.argmax(1)"
        )
    if y.dtype != torch.long:
        raise InputValidationError(f"{what} must be class indices of dtype torch.int64, got {y.dtype}")
    if y.shape != (n,):
        raise InputValidationError(f"{what} must have shape ({n},) to match the inputs, got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= model.num_classes):
        raise InputValidationError(
            f"{what} must lie in [0, {model.num_classes - 1}], got values in [{int(y.min())}, {int(y.max())}]"
        )


#: Rows the output check runs through the model (cheap, and enough to tell probabilities from logits).
PROBE_ROWS = 2


#: Tolerances within which two eval-mode probes of the same inputs count as the same output
#: (room for nondeterministic GPU kernels, far below what dropout or injected noise changes).
REPEAT_ATOL, REPEAT_RTOL = 1e-6, 1e-5


def check_constraint(constraint, x: Tensor) -> None:
    """The set must fit the batch: per-sample radii need one entry per input (a ValueError naming both sizes).

    Asking whether the zero perturbation is a member makes every part resolve its radii against ``x``: the whole
    batch at once when it is small, else chunk by chunk (the set restricted to each chunk's rows) after the parts'
    radii were checked against the batch size, so the check's temporaries do not grow with the batch."""
    n = x.shape[0]
    if n <= CHECK_ROWS:
        constraint.contains(torch.zeros_like(x), x)
        return
    for part in _parts(constraint):
        for radius in (part.linf_radius, part.l2_radius):
            if isinstance(radius, Tensor) and radius.dim() == 1 and radius.shape[0] != n:
                raise ValueError(f"per-sample radius has {radius.shape[0]} entries for a batch of {n}")
    for begin in range(0, n, CHECK_ROWS):
        rows = torch.arange(begin, min(begin + CHECK_ROWS, n), device=x.device)
        chunk = x[begin : begin + CHECK_ROWS]
        part = constraint.select(rows) if hasattr(constraint, "select") else constraint
        part.contains(torch.zeros_like(chunk), chunk)


def _parts(constraint) -> list:
    """The set's leaves: the set itself, or an intersection's parts (recursively), each of which holds its own radii
    (an intersection's radius is their minimum, which would fail on mismatched lengths before naming them)."""
    inner = getattr(constraint, "parts", ())
    return [leaf for part in inner for leaf in _parts(part)] if inner else [constraint]


def _largest(radius) -> float | None:
    if radius is None:
        return None
    if isinstance(radius, Tensor):
        return float(radius.max()) if radius.numel() else None
    return float(radius)


def check_eps_in_range(model: ModelAdapter, constraint) -> None:
    """Refuse a radius beyond the model's range (the same rule for ``attack``, ``sweep`` and Python callers).

    An L-inf radius (or a binary perturbation's value) above the width of the model's bounds bounds nothing the box
    does not already bound, and is almost always eps given on the wrong scale (0-255, or 0-1 for a [-1, 1] model);
    likewise an L2 radius above width * sqrt(input size), the diameter of the box."""
    low, high = model.bounds
    width = model.range_width
    linf = _largest(getattr(constraint, "linf_radius", None))
    if linf is not None and linf > width * (1 + 1e-9):
        raise ThreatModelError(
            f"eps {linf:g} exceeds the range of model {model.name!r} ([{low:g}, {high:g}], width {width:g}); "
            "eps is in the model's units"
        )
    l2 = _largest(getattr(constraint, "l2_radius", None))
    dim = 1
    for size in model.input_shape:
        dim *= int(size)
    diameter = width * dim**0.5
    if l2 is not None and l2 > diameter * (1 + 1e-9):
        raise ThreatModelError(
            f"L2 eps {l2:g} exceeds the diameter of the box of model {model.name!r} (width {width:g} x sqrt({dim}) = "
            f"{diameter:g}); eps is in the model's units"
        )


def check_outputs(model: ModelAdapter, x: Tensor, atol: float = 1e-4) -> None:
    """The model must map x to logits of shape (N, num_classes), not to probabilities, and
    deterministically.

    Runs the first ``PROBE_ROWS`` inputs through the model in eval mode, without gradients and
    outside the pass counter, twice. Rows that are all in [0, 1] and sum to 1 (within ``atol``)
    are softmax outputs: attacks and success criteria apply their own softmax, so they would act
    on a doubly squashed output. Log-probabilities are fine (their softmax is the probabilities).
    Two probes that differ (beyond ``REPEAT_ATOL``/``REPEAT_RTOL``) mean dropout or noise is
    still active in eval mode (``F.dropout(training=True)``, a module calling ``.train()``...):
    the attack's gradients and the success re-check would then see different models. A model
    that is random on purpose (a randomized defense) opts out with ``metadata["stochastic"] = True``.
    An out-of-memory error on a probe skips the check (the attack handles memory itself).
    """
    probe = x[:PROBE_ROWS]
    try:
        with model.eval_mode():
            out = model.logits(probe)  # each probe runs on its own copy: an in-place model cannot touch x
            again = model.logits(probe) if isinstance(out, Tensor) else None
    except Exception as error:
        if is_out_of_memory(error):
            return
        raise
    rows = min(PROBE_ROWS, x.shape[0])
    if not isinstance(out, Tensor):
        raise InputValidationError(f"model {model.name!r} must return a tensor of logits, got {type(out).__name__}")
    if not out.is_floating_point():
        raise InputValidationError(
            f"model {model.name!r} returned {out.dtype} outputs; advkit needs floating-point logits (one score per "
            "class, before any softmax or argmax)"
        )
    if out.dim() != 2 or tuple(out.shape) != (rows, model.num_classes):
        raise InputValidationError(
            f"model {model.name!r} returned shape {tuple(out.shape)} for {rows} input(s); expected logits of shape "
            f"({rows}, {model.num_classes}) (one score per class)"
        )
    same = (
        isinstance(again, Tensor)
        and again.shape == out.shape
        and (torch.equal(out, again) or torch.allclose(out, again, atol=REPEAT_ATOL, rtol=REPEAT_RTOL, equal_nan=True))
    )
    if not same and not model.metadata.get("stochastic"):
        raise InputValidationError(
            f"model {model.name!r} gives different outputs for the same input in eval mode (dropout or noise still "
            "active, e.g. F.dropout(training=True) or a module that calls .train()?); attacks and the success "
            "re-check need a deterministic model (for a model that is random on purpose, set "
            "adapter.metadata['stochastic'] = True)"
        )
    if torch.isfinite(out).all() and bool((out >= 0).all()) and bool((out <= 1).all()):
        if bool(((out.sum(dim=1) - 1).abs() <= atol).all()):
            raise InputValidationError(
                f"model {model.name!r} seems to return probabilities (every output row lies in [0, 1] and sums to 1); "
                "advkit needs logits: remove the final softmax (log-probabilities also work)"
            )


def as_targets(model: ModelAdapter, target: int | Tensor, y: Tensor) -> Tensor:
    """Targets as an int64 tensor (N,); an int is broadcast. Each must differ from the true label."""
    n = y.shape[0]
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise InputValidationError(f"target must be a class index or an int64 tensor, got {type(target).__name__}")
    if isinstance(target, int):
        if not 0 <= target < model.num_classes:
            raise InputValidationError(f"target class {target} is out of range [0, {model.num_classes - 1}]")
        target = torch.full((n,), target, dtype=torch.long, device=y.device)
    check_labels(model, target, n, what="targets")
    same = target == y
    if bool(same.any()):
        first = int(same.nonzero()[0, 0])
        raise InputValidationError(
            f"target equals the true label for {int(same.sum())} sample(s) (first: index {first}, class {int(y[first])})"
        )
    return target.to(y.device)
