"""Gradient estimators for adaptive attacks: the model an attack differentiates, replaced where its gradient lies.

An estimator wraps a :class:`~advkit.models.ModelAdapter` in another adapter that every attack uses like the model
itself (so it works for every attack, engine-based or with its own loop); the runner's clean check, its re-check of
every returned point and ``predict`` still use the real model, so a reported success is a success on the model as it
is. ``run_attack(..., gradient="...")`` and ``advkit attack --gradient ...`` take a spec:

* ``eot:TRANSFORMS[,samples=K]`` (expectation over transformation, Athalye et al. 2018): the attack sees the average
  of the model's logits over K random draws of the transforms (``identity``, ``flip``, ``crop``, ``rotate``,
  ``grayscale``, ``noise``, ``jpeg``, composed in the order given, or with ``mix=1`` one of them per draw), so its
  gradient is the gradient of the averaged logits (the average of the loss gradients for losses linear in the
  logits, such as the margin). Each call costs K forward passes (and K backward when differentiated), counted at the
  model, the draws stacked into as few model calls as :data:`EOT_ROWS` and :data:`EOT_VALUES` allow. The draws are
  a function of each sample's content and the estimator's ``seed`` only, so a batch draws what its slices draw.
* ``bpda[:modules=Sign,surrogate=identity|clip]`` (backward pass differentiable approximation, Athalye et al. 2018):
  the forward pass is the model's; in the backward pass the named module types (class names; default advkit's
  ``Sign``) act as the identity or as ``clamp(x, -1, 1)`` (whose gradient is the hard-tanh straight-through
  estimator). Passes as the plain model.
* ``transfer:MODEL`` (a model spec): the forward value is the model's logits, the gradient comes from the surrogate
  ``MODEL``'s logits at the same point; each call costs one forward pass of the model and one forward (and backward)
  pass of the surrogate, all counted.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advkit.errors import ParameterError
from advkit.models import ModelAdapter, input_space_mismatch

__all__ = [
    "BPDA",
    "EOT",
    "ESTIMATORS",
    "EOT_TRANSFORMS",
    "EOTTransform",
    "TransferGradient",
    "eot_transforms",
    "parse_gradient",
    "with_gradient",
]

ESTIMATORS = ("eot", "bpda", "transfer")
#: EOT's largest number of draws per call.
MAX_SAMPLES = 1024
#: the key of the mixture's choice among the draws' random numbers
MIX = "<mix>"
#: The most rows (samples x draws) and input values EOT stacks into one model call; more draws take several calls.
#: Measured (``benchmarks/bench_eot.py``, CPU, one thread): stacking the 8 draws of one 28 x 28 digit makes an EOT call
#: on ``cnn`` 2x faster; on EfficientNet-Lite0 (3 x 224 x 224) stacking gains nothing (4 rows per call: 0.97x the
#: loop's speed) and 8 rows per call lose (0.81x), hence at most four such photos' values per call.
EOT_ROWS = 64
EOT_VALUES = 4 * 3 * 224 * 224


# ----------------------------------------------------------------------------- EOT's random transforms


def _row_uniforms(x: Tensor, seed: int, k: int, count: int) -> Tensor:
    """``count`` numbers in [0, 1) per row of ``x``, a function of the row's content, ``seed`` and draw ``k`` only
    (no generator state, so a batch draws what its slices draw)."""
    return _draw_uniforms(_row_keys(x, seed), k, count).to(x.dtype)


@functools.lru_cache(maxsize=8)
def _key_weights(seed: int, size: int, device: str) -> Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(size, generator=g, dtype=torch.float64).to(device)


def _row_keys(x: Tensor, seed: int) -> Tensor:
    """One float64 number per row of ``x``: its content weighted by ``seed``'s fixed random weights (cached, since
    drawing them costs more than an EOT draw's transforms on a 224 x 224 photo)."""
    flat = x.detach().flatten(1).to(torch.float64)
    return (flat * _key_weights(seed, flat.shape[1], str(flat.device))).sum(1, keepdim=True)


def _draw_uniforms(keys: Tensor, k: int, count: int) -> Tensor:
    """Draw ``k``'s ``count`` float64 numbers in [0, 1) per row key."""
    key = keys * 12.9898 + 78.233 * (k + 1)
    j = torch.arange(1, count + 1, device=keys.device, dtype=torch.float64)
    values = torch.sin(key * j + 0.6180339887 * j * (k + 1)) * 43758.5453123
    return values - values.floor()


def _affine(x: Tensor, theta: Tensor, low: float) -> Tensor:
    """Each image moved by its own 2x3 affine map (bilinear), corners filled with the low bound."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low


def _flip(x: Tensor, u: Tensor, bounds, options) -> Tensor:
    return torch.where((u[:, 0] < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)


def _crop(x: Tensor, u: Tensor, bounds, options) -> Tensor:
    """A random crop keeping an area in [crop_area, 1] at a random place, resized back."""
    smallest = float(options.get("crop_area", 0.8))
    side = torch.sqrt(smallest + (1 - smallest) * u[:, 0])
    theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, 0, 2] = (1 - side) * (2 * u[:, 1] - 1)
    theta[:, 1, 2] = (1 - side) * (2 * u[:, 2] - 1)
    return _affine(x, theta, bounds[0])


def _rotate(x: Tensor, u: Tensor, bounds, options) -> Tensor:
    """A rotation by an angle uniform in [-angle, angle] degrees (default 30) about the centre."""
    angle = math.radians(float(options.get("angle", 30.0))) * (2 * u[:, 0] - 1)
    theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    return _affine(x, theta, bounds[0])


def _grayscale(x: Tensor, u: Tensor, bounds, options) -> Tensor:
    """ITU-R 601 luma on half of the draws (3-channel images)."""
    if x.shape[1] != 3:
        raise ParameterError(f"eot grayscale needs 3-channel images, got {x.shape[1]} channel(s)")
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    gray = (x * weights).sum(1, keepdim=True).expand_as(x)
    return torch.where((u[:, 0] < 0.5).view(-1, 1, 1, 1), gray, x)


def _noise(x: Tensor, u: Tensor, bounds, options) -> Tensor:
    """Gaussian noise of std ``sigma`` (default 0.05) x the range width, clipped to the bounds."""
    sigma = float(options.get("sigma", 0.05)) * (bounds[1] - bounds[0])
    index = torch.arange(x[0].numel(), device=x.device, dtype=torch.float64).view(1, -1)
    phase = u[:, :2].to(torch.float64) * 1000.0
    a = torch.sin(index * 12.9898 + phase[:, :1]) * 43758.5453
    b = torch.sin(index * 78.233 + phase[:, 1:]) * 24634.6345
    u1, u2 = (a - a.floor()).clamp_min(1e-12), b - b.floor()
    gauss = (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(x.dtype).view_as(x)
    return (x + sigma * gauss).clamp(*bounds)


def _jpeg(x: Tensor, u: Tensor, bounds, options) -> Tensor:
    """Quantization to between 8 and 32 levels per channel (JPEG-like loss of detail), straight-through in the
    backward pass."""
    low, high = bounds
    levels = (8 + (u[:, 0] * 25).floor()).view(-1, 1, 1, 1)
    scaled = (x - low) / (high - low) * (levels - 1)
    quantized = torch.round(scaled) / (levels - 1) * (high - low) + low
    return x + (quantized - x).detach()


#: name -> (function, random numbers per row, description)
EOT_TRANSFORMS: dict[str, tuple[Callable[..., Tensor], int, str]] = {
    "identity": (lambda x, u, bounds, options: x, 0, "the input unchanged (EOT then equals the plain gradient)"),
    "flip": (_flip, 1, "horizontal flip on half of the draws"),
    "crop": (_crop, 3, "random crop of area in [crop_area, 1] (0.8), resized back"),
    "rotate": (_rotate, 1, "rotation uniform in [-angle, angle] degrees (30)"),
    "grayscale": (_grayscale, 1, "grayscale on half of the draws (3 channels)"),
    "noise": (_noise, 2, "gaussian noise, std sigma (0.05) x the range width"),
    "jpeg": (_jpeg, 1, "quantization to 8-32 levels, straight-through"),
}


@dataclass(frozen=True)
class EOTTransform:
    """A random transform EOT can draw, registered by a plugin (``register_transforms``; advkit's own are
    :data:`EOT_TRANSFORMS`). ``apply(x, u, bounds, options)`` maps a batch ``x`` (N, C, H, W) in ``bounds`` to one
    of the same shape in the same bounds, differentiably (or straight-through), using ``u``: ``draws`` numbers in
    [0, 1) per row (row i's draw, a function of the row's content, the draw and the seed only, so a batch draws what
    its slices draw); ``options`` are the spec's numeric options (``eot:NAME,samples=8,angle=45``)."""

    name: str
    apply: Callable[..., Tensor]
    draws: int
    description: str = ""


def eot_transforms() -> dict[str, EOTTransform]:
    """Every registered EOT transform, advkit's own and plugins', by name."""
    from advkit import registry

    return {name: entry.obj for name, entry in registry.transforms().items()}


# ----------------------------------------------------------------------------- the estimators


@dataclass(frozen=True)
class EOT:
    """Average the logits over ``samples`` random draws of ``transforms`` (applied in order)."""

    transforms: tuple[str, ...]
    samples: int = 8
    seed: int = 0
    options: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = eot_transforms()
        unknown = [t for t in self.transforms if t not in known]
        if not self.transforms or unknown:
            raise ParameterError(
                f"eot: unknown transform {unknown[0]!r}; transforms: {', '.join(known)}"
                if unknown
                else "eot: give at least one transform"
            )
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise ParameterError(f"eot: samples must lie in 1..{MAX_SAMPLES}, got {self.samples}")
        if self.options.get("mix", 0) not in (0, 1):
            raise ParameterError(
                f"eot: mix must be 0 (compose the transforms) or 1 (one per draw), got {self.options['mix']}"
            )

    def describe(self) -> str:
        """The spec, e.g. ``eot:flip,rotate,samples=8`` (a seed other than 0 and the options follow: a spec that
        :func:`parse_gradient` reads back to this estimator, so fingerprints tell draws of other ranges apart)."""
        extra = ([f"seed={self.seed}"] if self.seed else []) + [f"{k}={v:g}" for k, v in sorted(self.options.items())]
        return f"eot:{','.join((*self.transforms, f'samples={self.samples}', *extra))}"


@dataclass(frozen=True)
class BPDA:
    """Replace the backward pass of the named modules (class names, or a layer's name in ``named_modules()`` such as
    ``features.3``) by the identity, by clamp(x, -1, 1), or (in Python) by a differentiable function of the layer's
    input that approximates its output."""

    modules: tuple[str, ...] = ("Sign",)
    surrogate: str | Callable[[Tensor], Tensor] = "identity"

    def __post_init__(self) -> None:
        if not callable(self.surrogate) and self.surrogate not in ("identity", "clip"):
            raise ParameterError(
                f"bpda: surrogate must be identity, clip or (in Python) a function, got {self.surrogate!r}"
            )

    def describe(self) -> str:
        surrogate = (
            self.surrogate if isinstance(self.surrogate, str) else getattr(self.surrogate, "__qualname__", "function")
        )
        return f"bpda:modules={'+'.join(self.modules)},surrogate={surrogate}"


@dataclass(frozen=True)
class TransferGradient:
    """The forward value of the model, the gradient of a surrogate model at the same point."""

    surrogate: ModelAdapter

    def describe(self) -> str:
        return f"transfer:{self.surrogate.name}"


Estimator = EOT | BPDA | TransferGradient


def parse_gradient(spec: str | Estimator | None, device: Any = "cpu") -> Estimator | None:
    """An estimator from ``eot:flip,crop,samples=8``, ``bpda``, ``bpda:modules=Sign+Hardtanh,surrogate=clip`` or
    ``transfer:MODEL`` (None passes through; an estimator object is returned as it is)."""
    if spec is None or isinstance(spec, (EOT, BPDA, TransferGradient)):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError(
            f"gradient: expected a spec such as eot:flip,samples=8, bpda or transfer:MODEL, got {spec!r}"
        )
    kind, _, rest = spec.strip().partition(":")
    if kind not in ESTIMATORS:
        raise ParameterError(f"gradient: unknown estimator {kind!r}; valid: {', '.join(ESTIMATORS)}")
    if kind == "transfer":
        if not rest:
            raise ParameterError("gradient: transfer needs a surrogate model, e.g. transfer:cnn")
        from advkit.model_specs import load_model_ref

        return TransferGradient(load_model_ref(rest, device))
    names, options = [], {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if sep:
            options[key.strip()] = value.strip()
        else:
            names.append(item)
    if kind == "bpda":
        if names:
            raise ParameterError(f"gradient: bpda takes modules=... and surrogate=..., got {names[0]!r}")
        unknown = sorted(set(options) - {"modules", "surrogate"})
        if unknown:
            raise ParameterError(f"gradient: bpda has no option {unknown[0]!r} (valid: modules, surrogate)")
        modules = tuple(m for m in options.get("modules", "Sign").split("+") if m)
        return BPDA(modules=modules, surrogate=options.get("surrogate", "identity"))
    numeric = {}
    for key, value in options.items():
        if key not in ("samples", "seed", "crop_area", "angle", "sigma", "mix"):
            raise ParameterError(
                f"gradient: eot has no option {key!r} (valid: samples, seed, crop_area, angle, sigma, mix)"
            )
        try:
            numeric[key] = float(value)
        except ValueError:
            raise ParameterError(f"gradient: eot {key}={value!r} is not a number") from None
        if not math.isfinite(numeric[key]):
            raise ParameterError(f"gradient: eot {key}={value!r} must be finite")
    for key in ("samples", "seed"):
        if key in numeric and numeric[key] != int(numeric[key]):
            raise ParameterError(f"gradient: eot {key} must be an integer, got {options[key]}")
    extra = {k: v for k, v in numeric.items() if k not in ("samples", "seed")}
    return EOT(
        transforms=tuple(names), samples=int(numeric.get("samples", 8)), seed=int(numeric.get("seed", 0)), options=extra
    )


class _Estimated(ModelAdapter):
    """An adapter that an attack uses like ``base``; its calls go through the estimator, while ``module`` (hence the
    runner's clean check, re-check and ``predict``) is the real model's. Every pass is counted on ``base.counter``."""

    calls_are_logits = False  # EOT's calls average transformed copies: the runner checks x itself

    def __init__(self, base: ModelAdapter, estimator: Estimator) -> None:
        super().__init__(
            base.module, name=base.name, bounds=base.bounds, input_shape=base.input_shape, class_names=base.class_names,
            dataset=base.dataset, description=base.description, metadata={**base.metadata, "gradient": estimator.describe()},
        )  # fmt: skip
        self.base, self.estimator = base, estimator
        self.counter = base.counter  # every pass counted where the runner reads it
        #: backward passes one differentiated call costs per sample (the runner sizes budgets and counts by it)
        self.backward_per_call = estimator.samples if isinstance(estimator, EOT) else 1
        self.guide = None
        if isinstance(estimator, TransferGradient):
            self.guide = copy.copy(estimator.surrogate)  # the surrogate, counting into this model's counter
            self.guide.counter = base.counter

    def __call__(self, x: Tensor) -> Tensor:
        if self.call_times is not None:  # the runner times calls to size chunks
            self.call_times.append((time.perf_counter(), x.shape[0]))
        e = self.estimator
        if isinstance(e, EOT):
            return self._eot(x, e)
        if isinstance(e, BPDA):
            with _bpda_hooks(self.base.module, e):
                return self.base(x)
        value = self.base(x.detach())  # TransferGradient: the model's logits, the surrogate's gradient
        if not x.requires_grad:
            return value
        guide = self.guide(x)
        return value + (guide - guide.detach())

    def _eot(self, x: Tensor, e: EOT) -> Tensor:
        """The logits averaged over ``e.samples`` draws, stacked into as few model calls as :data:`EOT_ROWS` and
        :data:`EOT_VALUES` allow: K forward (and K backward) passes per sample however they are grouped."""
        table = eot_transforms()
        moved = [t for t in e.transforms if t != "identity"]
        if moved and x.dim() != 4:
            raise ParameterError(f"eot: {moved[0]} needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
        n = x.shape[0]
        rows = min(EOT_ROWS, EOT_VALUES // max(x[0].numel(), 1)) if n else 1
        per_call = max(1, min(e.samples, rows // max(n, 1)))  # draws per model call
        keys = {t: _row_keys(x, e.seed + 1000 * e.transforms.index(t)) for t in moved}
        if e.options.get("mix"):
            keys[MIX] = _row_keys(x, e.seed + 999)
        total = None
        for first in range(0, e.samples, per_call):
            draws = range(first, min(first + per_call, e.samples))
            point = x.unsqueeze(0).expand(len(draws), *x.shape).reshape(len(draws) * n, *x.shape[1:])
            if e.options.get("mix"):  # one transform per draw, chosen uniformly among those listed
                pick = torch.cat([_draw_uniforms(keys[MIX], k, 1) for k in draws])[:, 0]
                pick = (pick * len(e.transforms)).long().clamp_max(len(e.transforms) - 1).view(-1, 1, 1, 1)
                source = point  # every transform moves the draw's input; the pick keeps one
            for t in moved:
                fn, count = table[t].apply, table[t].draws
                u = torch.cat([_draw_uniforms(keys[t], k, count) for k in draws]).to(x.dtype)
                if e.options.get("mix"):
                    point = torch.where(pick == e.transforms.index(t), fn(source, u, self.bounds, e.options), point)
                else:
                    point = fn(point, u, self.bounds, e.options)
            logits = self.base(point)
            logits = logits.view(len(draws), n, *logits.shape[1:]).sum(0)
            total = logits if total is None else total + logits
        return total / e.samples


class _bpda_hooks:
    """Forward hooks on the modules ``estimator.modules`` names (types or layer names) making their output
    ``s + (out - s).detach()``, with ``s`` the surrogate of their input (the identity, ``clamp(x, -1, 1)`` or the
    given function): the same forward value, the surrogate's gradient."""

    def __init__(self, module: nn.Module, estimator: BPDA) -> None:
        wanted = set(estimator.modules)
        self.targets = [m for name, m in module.named_modules() if type(m).__name__ in wanted or name in wanted]
        if not self.targets:
            found = sorted({type(m).__name__ for m in module.modules()})
            raise ParameterError(
                f"bpda: the model has no module of type or name {', '.join(estimator.modules)} (its types: "
                f"{', '.join(found)})"
            )
        surrogate = estimator.surrogate
        self.surrogate = (lambda x: x.clamp(-1, 1)) if surrogate == "clip" else (
            (lambda x: x) if surrogate == "identity" else surrogate)  # fmt: skip
        self.handles: list[Any] = []

    def _hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        surrogate = self.surrogate(inputs[0])
        return surrogate + (output - surrogate).detach()

    def __enter__(self) -> _bpda_hooks:
        self.handles = [m.register_forward_hook(self._hook) for m in self.targets]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def with_gradient(model: ModelAdapter, gradient: str | Estimator | None, device: Any = None) -> ModelAdapter:
    """``model`` as an attack should differentiate it under ``gradient`` (a spec or an estimator; None: ``model``)."""
    estimator = parse_gradient(gradient, model.device if device is None else device)
    if estimator is None:
        return model
    if isinstance(estimator, TransferGradient):
        surrogate = estimator.surrogate
        mismatch = input_space_mismatch(model, surrogate, dataset=False)  # any surrogate of the same inputs
        if mismatch is not None:
            raise ParameterError(f"gradient transfer: the surrogate {surrogate.name!r} differs in {mismatch}")
        surrogate.module.eval()
    return _Estimated(model, estimator)
