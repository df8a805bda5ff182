"""How many samples go through the model at once: a size the user fixes, or one chosen by measurement.

Attacks whose model work is all :func:`advkit.engine.optimize` (``windowed = True``, every built-in per-sample
attack) get the whole batch, and the engine keeps a *window* of that many rows stepping: a row that leaves (fooled,
out of budget, done) is replaced by the next waiting sample, so every step's batch stays full. Other per-sample
attacks run in consecutive chunks; attacks that couple a batch's samples (``per_sample = False``, such as
``universal``) keep their own batching. ``batch_size="auto"``, the default everywhere, chooses the size on the
run's own work, so no pass is spent on measuring: the window (or the first chunks) grows (64, 96, 144, ... on a CPU;
32, 64, 128, ... on a GPU), the time per sample step at each size is measured (window: the median time per row
between :data:`STEPS_PER_SIZE` full steps; chunks: :func:`step_rate` on a CPU, the chunk's synchronized time per
step elsewhere), and the climb stops at the first size no faster than the best so far; the rest of the run uses the
best size (of those within 3% of the fastest, the largest for chunks, the smallest for a window).
A measurement inside the attack sees what a separate probe would miss (the attack's own state
in the cache next to the model's activations). The choice is cached per model, device, dtype
and thread count (:func:`cache_key`), so the next run in the process (the next sweep cell, the
next transfer source) starts at it. Runs of at most :data:`WHOLE_BELOW` samples are attacked
whole. On a CPU the best size is small (a chunk's working set should stay in cache); on a GPU it
grows until memory or the samples run out; an out-of-memory error halves it (the runner retries,
see :mod:`advkit.runner`).

Results do not depend on the size: the engine draws random starts per sample
(:mod:`advkit.rng`) and keeps per-sample step counters and budgets, so a sample gets the same result in any window or chunk
(up to the last-bit differences that batched kernels may show between batch sizes).

Passes without gradients (clean predictions, the runner's re-check, the sweep's checks of
carried points, the selection of correctly classified samples) use the same size: the model's
cached choice, else :data:`DEFAULT_BATCH_SIZE`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from advkit.params import check_batch_size

#: ``int`` fixes the chunk size; ``"auto"`` measures it (see the module docstring).
BatchSize = int | Literal["auto"]

AUTO = "auto"
#: The first size ``auto`` tries, on a CPU and on other devices. On a CPU a step's bookkeeping costs about the same
#: whatever its rows, so small windows pay it on few rows (``apgd`` on ``cnn``: 12% of its time at 48 rows, 6% at
#: 192), and a climb from 32 often stopped at 32 or 48 on a noisy measurement. From 64, ``auto`` runs of ``pgd``,
#: ``apgd`` and ``untargeted`` were the faster ones in 5 of 8 interleaved rounds each (docs/benchmarks.md,
#: ``benchmarks/bench_step_breakdown.py --auto-first 32,64``).
FIRST_SIZE = {"cpu": 64, "other": 32}
#: Runs of at most this many samples are attacked whole (too few to measure sizes on).
WHOLE_BELOW = 128
#: How much larger each size ``auto`` tries is than the one before, on a CPU and on other devices.
GROWTH = {"cpu": 1.5, "other": 2.0}
#: The largest size ``auto`` tries.
MAX_SIZE = 16384
#: Sizes within this factor of the fastest time per sample step count as equally fast; the largest is kept (fewer
#: chunks spend less on each chunk's own passes: the clean check, the re-check, the last step's evaluation).
TIE = 1.03
#: Full-window steps timed per size while a window-mode run measures (their median is the size's rate).
STEPS_PER_SIZE = 6
#: Chunk size of passes without gradients for a model whose attack size is not known yet.
DEFAULT_BATCH_SIZE = 256

_CHOSEN: dict[tuple, int] = {}


def cache_key(model) -> tuple:
    """What the best chunk size depends on: the architecture (class, name, parameter count, input shape), the
    device (its name on CUDA), the dtype and torch's thread count."""
    device = model.device
    device_name = str(device)
    if device.type == "cuda" and torch.cuda.is_available():
        device_name += ":" + torch.cuda.get_device_name(device)
    parameters = sum(p.numel() for p in model.module.parameters())
    return (
        type(model.module).__qualname__,
        model.name,
        parameters,
        tuple(model.input_shape),
        device_name,
        str(model.dtype),
        torch.get_num_threads(),
    )


def cached_batch_size(model) -> int | None:
    """The chunk size ``auto`` chose for this model, device, dtype and thread count in this process, if any."""
    return _CHOSEN.get(cache_key(model))


def remember_batch_size(model, size: int) -> None:
    """Cache ``size`` as the model's chunk size (what a measured run found, or what fit after out-of-memory)."""
    _CHOSEN[cache_key(model)] = int(size)


def clear_cache() -> None:
    """Forget every chunk size chosen so far (benchmarks measure the first run; tests start clean)."""
    _CHOSEN.clear()


def inference_batch_size(model, batch_size: BatchSize = AUTO) -> int:
    """Chunk size for passes without gradients: the size given, else the model's cached choice, else the default."""
    batch_size = check_batch_size(batch_size)
    if batch_size != AUTO:
        return batch_size
    return cached_batch_size(model) or DEFAULT_BATCH_SIZE


def chunked(function: Callable[[Tensor], Tensor], x: Tensor, size: int) -> Tensor:
    """``function`` applied to consecutive chunks of ``size`` rows of ``x``, the outputs concatenated."""
    if x.shape[0] <= size:
        return function(x)
    return torch.cat([function(part) for part in x.split(size)])


def step_rate(call_times: list[tuple[float, int]]) -> float | None:
    """Seconds per sample step from one chunk's model calls (``(time, rows)`` per call): the median, over
    consecutive calls, of the time between them divided by the first one's rows (a step is a forward pass, its
    backward pass and the attack's update). The median ignores a one-off stall (a new shape setting up its kernels,
    another process taking the core for a moment). None with fewer than three calls."""
    if len(call_times) < 3:
        return None
    rates = sorted((t1 - t0) / rows for (t0, rows), (t1, _) in zip(call_times, call_times[1:]) if rows > 0)
    return rates[len(rates) // 2] if rates else None


@dataclass
class ChunkPlan:
    """The chunk sizes of one run: given, cached, whole, or found by climbing (see the module docstring).

    The runner asks :meth:`next_size` before each chunk, records the model's call times while :attr:`measuring`,
    reports each chunk through :meth:`observe` and each out-of-memory error through :meth:`out_of_memory`, and
    calls :meth:`finish` at the end.
    """

    model: object
    requested: BatchSize
    n: int
    splittable: bool = True
    size: int = 0
    how: str = ""
    measuring: bool = False
    measured: dict[int, float] = field(default_factory=dict)  # rows -> seconds per sample step
    chunks: int = 0
    limit: int = MAX_SIZE
    #: "chunks": the runner attacks consecutive chunks of ``size`` rows; "window": the engine keeps a window of
    #: ``size`` rows full (the attack declares ``windowed``) and reports each step through :meth:`step_began`.
    mode: str = "chunks"
    steps: int = 0  # window mode: the engine's steps
    #: Window mode: the engine admits rows in groups of this many (one sample attacked several ways at once,
    #: :attr:`advkit.kernel.Problem.group_size`), so a full window holds the size rounded down to whole groups.
    group: int = 1
    _intervals: list[float] = field(default_factory=list)
    _last: tuple[float, int] | None = None

    def __post_init__(self) -> None:
        self.requested = check_batch_size(self.requested)
        n = max(self.n, 1)
        if not self.splittable:
            self.size, self.how = n, "whole batch (the attack couples its samples)"
        elif self.requested != AUTO:
            self.size, self.how = min(self.requested, n), "given"
        elif (cached := cached_batch_size(self.model)) is not None:
            self.size, self.how = min(cached, n), "cached (chosen by an earlier run in this process)"
        elif n <= WHOLE_BELOW:
            self.size, self.how = n, f"whole batch (runs of at most {WHOLE_BELOW} samples are not measured)"
        else:
            first = "steps" if self.mode == "window" else "chunks"
            size = FIRST_SIZE[self._device_kind()]
            self.size, self.how, self.measuring = size, f"measured on this run's first {first}", True

    def _device_kind(self) -> str:
        """The key of :data:`FIRST_SIZE` and :data:`GROWTH` for the model's device: "cpu" or "other"."""
        return "cpu" if self.model.device.type == "cpu" else "other"

    def next_size(self, remaining: int) -> int:
        """Rows of the next chunk. A chosen size (not a given one) takes a short tail along: a chunk of fewer than
        half the size costs more per sample than the few rows it adds to the one before."""
        if (
            self.requested == AUTO
            and self.splittable
            and not self.measuring
            and remaining < self.size * 3 // 2
            and remaining <= self.limit  # never past a size that ran out of memory
        ):
            return remaining
        return min(self.size, remaining)

    def observe(self, rows: int, rate: float | None) -> None:
        """A chunk of ``rows`` samples ran at ``rate`` seconds per sample step (None: not measured)."""
        if self.mode == "chunks":
            self.chunks += 1
        if not self.measuring or rows != self.size or rate is None or rate <= 0:
            return
        best_before = min(self.measured.values(), default=None)
        self.measured[rows] = rate
        growth = GROWTH[self._device_kind()]
        larger = max(rows + 1, int(rows * growth))
        if (best_before is None or rate < best_before) and larger <= self.limit:
            self.size = larger
            return
        self._settle(self._best())

    def window_size(self) -> int:
        """Rows the engine steps at once now (window mode)."""
        return self.size

    def step_began(self, rows: int) -> None:
        """Window mode: the engine starts a step on ``rows`` rows. While measuring, the time since the previous
        step's start, per row, is recorded for full windows; after :data:`STEPS_PER_SIZE` of them their median
        decides the climb (:meth:`observe`)."""
        self.steps += 1
        if not self.measuring:
            return
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)  # time the work, not its queueing (only while measuring)
        now = time.perf_counter()
        if self._last is not None and self._last[1] == max(self.group, self.size - self.size % self.group):
            self._intervals.append((now - self._last[0]) / self._last[1])
        self._last = (now, rows)
        if len(self._intervals) >= STEPS_PER_SIZE:
            rates = sorted(self._intervals)
            size = self.size
            self._intervals, self._last = [], None
            self.observe(size, rates[len(rates) // 2])

    def out_of_memory(self, rows: int) -> None:
        """``rows`` samples did not fit: halve, stop climbing, and cache what fits (for a chosen size)."""
        self.limit = max(1, (rows + 1) // 2)
        self.size = min(self.size, self.limit)
        if self.requested == AUTO and self.splittable:
            fitting = [k for k in self.measured if k <= self.limit]
            self._settle(self._best(fitting) if fitting else self.size)
            self.how += ", halved after running out of memory"

    def finish(self) -> None:
        """The run is done: a climb cut short by the end of the samples still caches its best size."""
        if self.measuring and self.measured:
            self._settle(self._best())

    def _best(self, sizes: list[int] | None = None) -> int:
        """Of the measured sizes (of ``sizes``) within :data:`TIE` of the fastest: in chunk mode the largest (fewer
        chunks, fewer per-chunk passes), in window mode the smallest (a window has no per-chunk passes; fewer rows in
        flight hold less memory)."""
        sizes = list(self.measured) if sizes is None else sizes
        fastest = min(self.measured[k] for k in sizes)
        tied = [k for k in sizes if self.measured[k] <= TIE * fastest]
        return min(tied) if self.mode == "window" else max(tied)

    def _settle(self, size: int) -> None:
        self.size, self.measuring = size, False
        remember_batch_size(self.model, size)

    def to_dict(self) -> dict:
        """What the run's summary says about its chunks."""
        return {
            "requested": self.requested,
            "chosen": self.size,
            "how": self.how,
            "mode": self.mode,
            "chunks": self.chunks,
            **({"steps": self.steps} if self.mode == "window" else {}),
            "ms_per_sample_step": {str(k): round(1000 * v, 4) for k, v in sorted(self.measured.items())},
        }


__all__ = [
    "AUTO",
    "DEFAULT_BATCH_SIZE",
    "BatchSize",
    "ChunkPlan",
    "cache_key",
    "cached_batch_size",
    "check_batch_size",
    "chunked",
    "clear_cache",
    "inference_batch_size",
    "remember_batch_size",
    "step_rate",
]
