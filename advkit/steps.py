"""Step rules: how a gradient becomes a step direction (per sample)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

StepRule = Callable[[Tensor], Tensor]


def _per_sample(t: Tensor) -> Tensor:
    return t.flatten(1)


def sign_step(grad: Tensor) -> Tensor:
    """sign(g): the L-inf steepest ascent direction (FGSM, PGD, S2)."""
    return grad.sign()


def l2_step(grad: Tensor) -> Tensor:
    """g / ||g||_2 per sample: the L2 steepest ascent direction."""
    norms = _per_sample(grad).norm(dim=1).clamp_min(1e-12)
    return grad / norms.view(-1, *([1] * (grad.dim() - 1)))


def std_step(grad: Tensor) -> Tensor:
    """g / (std(g) + 1e-8) per sample: S8's alpha = 1 / (d.std() + 1e-8)."""
    std = _per_sample(grad).std(dim=1)
    return grad / (std + 1e-8).view(-1, *([1] * (grad.dim() - 1)))


def raw_step(grad: Tensor) -> Tensor:
    """g itself: plain gradient ascent, x <- x + step * dC/dx (S6)."""
    return grad


STEP_RULES: dict[str, StepRule] = {"sign": sign_step, "l2": l2_step, "std": std_step, "raw": raw_step}


def get_step_rule(name: str) -> StepRule:
    """Look up a step rule by name ('sign', 'l2', 'std', 'raw')."""
    if name not in STEP_RULES:
        raise ValueError(f"unknown step rule {name!r}; valid: {', '.join(STEP_RULES)}")
    return STEP_RULES[name]
