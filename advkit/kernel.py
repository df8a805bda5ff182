"""What the attack engine and the universal-perturbation loop share: the problem, the result, the update protocol,
starting points and the NaN/inf guards of a step (so :mod:`advkit.engine` and :mod:`advkit.universal` need not import
each other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from advkit.constraints import Constraint
from advkit.criteria import Criterion
from advkit.models import ModelAdapter
from advkit.rng import SampleStreams, draw
from advkit.steps import StepRule

#: Where optimization starts. "zeros": the input itself (zero perturbation); "random": a random
#: feasible perturbation; "blank": the zero image of the model's units (clipped to the box);
#: "noise": Gaussian noise around the middle of the model's range (std 0.1 x range, clipped).
Init = Literal["zeros", "random", "blank", "noise"]
#: What is optimized: one perturbation per sample, a whole image per sample (the input is then
#: only the reference for regularizers such as beta * mse(x_adv, x)), or one perturbation
#: shared by every sample of the batch (see :mod:`advkit.universal`).
Variable = Literal["perturbation", "image", "universal"]
#: What a sample returns at the end: its best evaluated point, or its last point unevaluated.
Final = Literal["best", "last"]
NOISE_STD = 0.1
#: Starting points as image-optimizing attacks name them ("input": the images passed in).
START_TO_INIT = {"input": "zeros", "noise": "noise", "blank": "blank", "random": "random"}


@dataclass
class Problem:
    """What to attack: a model, a batch, a threat model, a success criterion and a budget."""

    model: ModelAdapter
    x: Tensor
    y: Tensor
    constraint: Constraint
    criterion: Criterion
    target: Tensor | None = None
    budget: int | None = None  # backward passes per sample, over all steps and restarts
    generator: torch.Generator | None = None
    #: Per-sample backward passes spent by the engine, accumulated over every optimize() call
    #: on this problem (the runner reports the maximum and enforces the budget per sample).
    backward_counts: Tensor | None = None
    #: Tensors an attack wants to hand back besides x_adv (e.g. the universal perturbation).
    artifacts: dict[str, Any] = field(default_factory=dict)
    #: A warm start (e.g. the result of a smaller eps in a sweep): the first restart of every
    #: optimize() call starts at this point, projected onto the set, instead of its ``init``.
    start: Tensor | None = None
    #: Per-sample count of engine steps whose logits or input gradient had a NaN or inf,
    #: accumulated over every optimize() call on this problem (None until the engine runs).
    nonfinite_counts: Tensor | None = None
    #: How many rows the engine steps at once: None (every sample), an int, or a plan with ``window_size()`` and
    #: ``step_began(rows)`` that measures sizes (:class:`advkit.batching.ChunkPlan`). A row that leaves (fooled, out
    #: of budget, done) is replaced by the next waiting sample, so each step's batch stays full.
    window: Any = None
    #: Rows per group: rows ``[g * k, (g + 1) * k)`` attack the same sample several ways (e.g. one row per target
    #: class). The engine admits and steps a group's rows together; with early stopping every row of a group leaves
    #: when one of them succeeds, and a group restarts only if none of its rows succeeded. 1: each row on its own.
    group_size: int = 1
    #: Where the engine records the model's logits at the inputs when a step evaluates exactly them (a zero start's
    #: first step), so the runner's clean check need not pass those samples again (see :class:`CleanLogits`).
    clean: CleanLogits | None = None

    def streams(self, label: str) -> SampleStreams:
        """Per-sample random numbers for an attack's own draws (``streams.rand(shape)``, ``.randn(shape)``, shape
        ``(N, ...)``): row ``i`` depends only on the run's seed, ``label`` and sample ``i``'s content (its bytes, label
        and target), so a batch draws what any slice of it draws and an out-of-memory split changes nothing. Each call
        starts new streams (a new base seed from ``generator``); successive draws from one object continue them."""
        seed = stream_seed(self.generator)
        return SampleStreams(self.x, 0 if seed is None else seed, label, (self.y, self.target))

    @property
    def n(self) -> int:
        return self.x.shape[0]


@dataclass
class CleanLogits:
    """The model's logits at the unperturbed inputs, as the engine's own steps evaluate them.

    ``reference`` is the runner's own copy of the inputs (an attack never sees it). When a step of an optimization of
    this very ``model`` on this very ``x`` tensor (not a sub-problem over other rows, not another model) evaluates a
    point equal, element for element, to a sample's reference row (a zero start's first step does), the engine keeps
    that sample's logits; ``known`` says which rows hold them. The runner passes only the other rows in its clean
    check, so a zero-start attack costs one forward pass per sample less and reports the same clean predictions,
    whatever the attack did to ``x``.
    """

    model: Any
    x: Tensor | None
    reference: Tensor | None
    logits: Tensor | None = None
    known: Tensor | None = None

    def accepts(self, model: Any, x: Tensor) -> bool:
        """Whether an optimization of ``model`` on ``x`` evaluates the rows this record is about."""
        return model is self.model and x is self.x

    def record(self, idx: Tensor, points: Tensor, logits: Tensor) -> None:
        """Keep the logits of the rows of ``idx`` whose evaluated point is exactly the sample's reference input."""
        at_x = (points == self.reference[idx]).flatten(1).all(1)
        if self.logits is None:
            n = self.reference.shape[0]
            self.logits = logits.new_zeros((n, *logits.shape[1:]))
            self.known = torch.zeros(n, dtype=torch.bool, device=logits.device)
        rows = at_x.view(-1, *([1] * (logits.dim() - 1)))
        self.logits[idx] = torch.where(rows, logits, self.logits[idx])
        self.known[idx] = self.known[idx] | at_x


@dataclass
class EngineResult:
    """The engine's output. Its ``success`` is the engine's own claim; the runner re-checks it."""

    x_adv: Tensor
    success: Tensor
    best_objective: Tensor
    forward_counts: Tensor
    backward_counts: Tensor
    #: objective per step (rows) and sample (columns) of the first restart, NaN where a sample
    #: was not active; only when ``optimize(record=True)``.
    history: Tensor | None = None
    #: The shared perturbation, shape (1, *x.shape[1:]), when ``variable="universal"``.
    shared: Tensor | None = None
    #: Per-sample steps of this call whose logits or input gradient were not finite.
    nonfinite_counts: Tensor | None = None


class Update(Protocol):
    """Turns the current (latent) perturbation and its gradient into the next one.

    ``idx`` holds the global indices of the active samples, so a stateful update (momentum,
    step-size schedules) can keep per-sample state. If it has a ``start(idx, n)`` method,
    the engine calls it at the beginning of every restart; if it has ``observe(idx, delta, loss)``,
    the engine reports each evaluated (latent) perturbation and its objective before asking for
    the next one (adaptive step-size schedules use this).
    """

    def __call__(self, delta: Tensor, grad: Tensor, x: Tensor, idx: Tensor, constraint: Constraint) -> Tensor: ...


def _per_sample(values: Tensor | float, idx: Tensor, like: Tensor) -> Tensor | float:
    """Per-sample values (e.g. step sizes from per-sample radii) for the active samples, in like's dtype."""
    if isinstance(values, Tensor) and values.dim() > 0:
        return values.to(device=like.device)[idx].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
    if isinstance(values, Tensor):
        return values.to(device=like.device, dtype=like.dtype)
    return values


def select(constraint: Constraint, idx: Tensor) -> Constraint:
    """The constraint restricted to the samples ``idx`` (per-sample radii are indexed)."""
    return constraint.select(idx) if hasattr(constraint, "select") else constraint


@dataclass
class GradientStep:
    """delta <- project(delta + step_size * rule(grad)); ``step_size`` is a float or a per-sample tensor."""

    rule: StepRule
    step_size: Tensor | float

    def __call__(self, delta: Tensor, grad: Tensor, x: Tensor, idx: Tensor, constraint: Constraint) -> Tensor:
        step = _per_sample(self.step_size, idx, delta)
        return constraint.project(delta + step * self.rule(grad), x)


def starting_delta(
    problem: Problem, x: Tensor, search: Constraint, init: str, stream: tuple[int, str, tuple] | None = None
) -> Tensor:
    """The first (latent) perturbation for inputs ``x``, projected onto the search set ``search``.

    With ``stream = (seed, label, tags)`` random starts are drawn per sample (see
    :class:`advkit.rng.SampleStreams`; ``tags``: per-sample labels and targets of ``x``'s rows):
    each sample's start depends only on the seed, the label and its own content. Without it they
    are drawn batch-wise from ``problem.generator``.
    """
    if init == "zeros":
        return torch.zeros_like(x)
    generator = problem.generator
    if stream is not None and init in ("random", "noise"):
        generator = SampleStreams(x, stream[0], f"{stream[1]}:{init}", stream[2])
    if init == "random":
        return search.random_start(x, generator)
    low, high = problem.model.bounds
    if init == "blank":
        start = torch.zeros_like(x).clamp(low, high)
    elif init == "noise":
        noise = draw("randn", x.shape, generator, dtype=x.dtype, device=x.device)
        start = ((low + high) / 2 + NOISE_STD * (high - low) * noise).clamp(low, high)
    else:
        raise ValueError(f"unknown init {init!r}; valid: zeros, random, blank, noise")
    return search.project(start - x, x)


def stream_seed(generator: torch.Generator | None) -> int | None:
    """One base seed for this optimize() call's per-sample streams, drawn from ``generator``
    (None without a generator: starts then come batch-wise from the global RNG, as before)."""
    if generator is None:
        return None
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)[0])


def finite_rows(t: Tensor) -> Tensor:
    """Per-sample: every element of the row is finite (bool (N,))."""
    return torch.isfinite(t.flatten(1)).all(1)


def finite_sums(t: Tensor) -> Tensor:
    """Per-sample: the row's sum is finite, i.e. no element is NaN or inf (one reduction instead of an
    elementwise check; a row of finite values whose sum overflows also counts as not finite).
    Half-precision rows are summed in float32."""
    wide = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype
    return torch.isfinite(t.flatten(1).sum(1, dtype=wide))


def zero_nonfinite_rows(logits: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample: were the logits finite, and did the step meet a NaN/inf (logits or input gradient)?
    The gradient rows of such samples are zeroed in place, so they make no step."""
    finite = finite_rows(logits)
    bad = ~(finite & finite_sums(grad))
    grad.masked_fill_(bad.view(-1, *([1] * (grad.dim() - 1))), 0.0)
    return finite, bad


def finite_objective(value: Tensor, finite: Tensor) -> Tensor:
    """The objective with -inf where the logits were not finite or the value is NaN."""
    return torch.where(finite & ~torch.isnan(value), value, torch.full_like(value, float("-inf")))
