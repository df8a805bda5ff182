"""Target classes for a targeted attack run as an untargeted evaluation: the most promising wrong classes per sample.

``"logits"`` ranks the wrong classes by their clean logit (AutoAttack's APGD-T and FAB-T order). ``"malt"`` (Melamed,
Yehudai & Vardi, 2024, "MALT Powers Up Adversarial Attacks", arXiv:2407.02240) ranks them by the linearized
distance to each class' decision boundary, (z_y - z_t) / ||grad_x (z_y - z_t)||_* (the dual norm of the threat
model's: L1 for an L-inf ball, L2 for an L2 ball), among the ``candidates`` wrong classes with the highest logits,
so the few targets attacked are the ones a small perturbation is most likely to reach. MALT costs one forward pass
and one backward pass per candidate class and sample, counted at the model like every other pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from advkit.kernel import Problem

__all__ = ["TARGET_RANKINGS", "rank_targets"]

TARGET_RANKINGS = ("malt", "logits")


def _dual_norm(grad: Tensor, problem: Problem) -> Tensor:
    """The norm dual to the threat model's ball: L1 for L-inf (and sets without a radius), L2 for an L2 ball."""
    flat = grad.flatten(1)
    if problem.constraint.linf_radius is None and problem.constraint.l2_radius is not None:
        return flat.norm(dim=1)
    return flat.abs().sum(dim=1)


def rank_targets(problem: Problem, method: str, candidates: int, chunk: int | None = None) -> Tensor:
    """Wrong classes per sample, most promising first: shape (N, k), k = min(candidates, classes - 1).

    ``"logits"`` spends one forward pass per sample; ``"malt"`` one forward and k backward passes, added to
    ``problem.backward_counts`` (so a budget covers them). ``chunk``: at most that many samples per model call."""
    if method not in TARGET_RANKINGS:
        raise ValueError(f"unknown target ranking {method!r}; valid: {', '.join(TARGET_RANKINGS)}")
    x, y = problem.x, problem.y
    n = x.shape[0]
    if problem.backward_counts is None:
        problem.backward_counts = torch.zeros(n, dtype=torch.long, device=x.device)
    if not n:
        return torch.zeros(0, 0, dtype=torch.long, device=x.device)
    size = n if chunk is None else max(1, chunk)
    ranked = torch.cat(
        [_rank(problem, x[i : i + size], y[i : i + size], method, candidates) for i in range(0, n, size)]
    )
    if method == "malt":
        problem.backward_counts += ranked.shape[1]
    return ranked


def _rank(problem: Problem, x: Tensor, y: Tensor, method: str, candidates: int) -> Tensor:
    """:func:`rank_targets` for the samples ``x`` (labels ``y``), in one forward pass (and k backward for MALT)."""
    n = x.shape[0]
    if method == "logits":
        with torch.no_grad():
            logits = problem.model(x)
    else:
        x_grad = x.detach().clone().requires_grad_(True)
        logits = problem.model(x_grad)
    k = min(candidates, logits.shape[1] - 1)
    wrong = logits.detach().scatter(1, y.view(-1, 1), float("-inf"))
    by_logit = wrong.topk(k, dim=1).indices
    if method == "logits":
        return by_logit
    true_logit = logits.gather(1, y.view(-1, 1)).squeeze(1)
    distance = torch.empty(n, k, dtype=torch.float64, device=x.device)
    for j in range(k):  # one backward pass per candidate rank (each sample's own j-th class)
        gap = true_logit - logits.gather(1, by_logit[:, j : j + 1]).squeeze(1)
        (grad,) = torch.autograd.grad(gap.sum(), x_grad, retain_graph=j + 1 < k)
        norm = _dual_norm(grad, problem).double()
        distance[:, j] = gap.detach().double() / norm.clamp_min(1e-12)
    order = distance.argsort(dim=1, stable=True)  # ties keep the logit order
    return by_logit.gather(1, order)
