"""The result of an attack: adversarial inputs, the independent re-check, norms and pass counts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class AttackResult:
    """Per-sample tensors plus the run's metadata. ``success`` comes from a fresh forward pass."""

    model: str
    attack: str
    attack_params: dict
    bounds: tuple[float, float]
    constraints: str
    constraints_dict: dict
    criterion: str
    eps: float | None
    seed: int
    x: Tensor
    x_adv: Tensor
    y: Tensor
    target: Tensor | None
    pred: Tensor
    confidence: Tensor  # probability of the predicted class on x_adv
    success: Tensor
    forward_passes: int
    backward_passes: int
    budget: int | None
    seconds: float
    plugin: dict
    #: Backward passes per sample when the engine accounted for all of them (else None).
    backward_counts: Tensor | None = None
    #: Tensors the attack handed back besides x_adv (e.g. ``"perturbation"`` for universal).
    artifacts: dict = field(default_factory=dict)
    #: Per sample: the re-check logits on x_adv had a NaN or inf. Such samples are neither a
    #: success nor robust (their ``pred`` and ``confidence`` mean nothing). None: not checked.
    nonfinite: Tensor | None = None
    #: Per sample: the model classified the clean input correctly (its label) before the attack. A sample it
    #: already got wrong counts as a success of an untargeted criterion without any attack; the summary reports
    #: success over the correctly classified samples next to the raw rate. None: not checked.
    clean_correct: Tensor | None = None
    #: Run facts that go into the summary as they are (the runner adds ``nonfinite_logits``,
    #: ``nonfinite_gradients`` and ``oom_retries``).
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def delta(self) -> Tensor:
        return self.x_adv - self.x

    def linf(self) -> Tensor:
        return self.delta.flatten(1).abs().amax(dim=1)

    def l2(self) -> Tensor:
        return self.delta.flatten(1).norm(dim=1)

    @property
    def correct(self) -> Tensor:
        """Per sample: classified correctly before the attack (all True when not checked)."""
        return self.clean_correct if self.clean_correct is not None else self.success.new_ones(self.success.shape)

    @property
    def success_rate(self) -> float:
        """Success among the samples the model classified correctly before the attack (NaN if there are none)."""
        correct = self.correct
        n = int(correct.sum())
        return float((self.success & correct).sum()) / n if n else float("nan")

    @property
    def raw_success_rate(self) -> float:
        """Success over every sample, misclassified ones included (they succeed without an attack)."""
        return float(self.success.float().mean())

    @property
    def finite(self) -> Tensor:
        """Per sample: the re-check logits were finite."""
        return ~self.nonfinite if self.nonfinite is not None else self.success.new_ones(self.success.shape)

    @property
    def robust(self) -> Tensor:
        """Per sample: still classified as its label, with finite logits, and not a success."""
        return (self.pred == self.y) & self.finite & ~self.success

    def summary(self) -> dict:
        """The JSON-able summary that ``advkit attack --json`` prints."""
        width = self.bounds[1] - self.bounds[0]
        linf, l2 = self.linf(), self.l2()
        misclassified = (self.pred != self.y) & self.finite
        return {
            "model": self.model,
            "attack": self.attack,
            "attack_params": self.attack_params,
            "eps": self.eps,
            "eps_01": None if self.eps is None else self.eps / width,
            "bounds": list(self.bounds),
            "n": self.n,
            "criterion": self.criterion,
            "success_rate": self.success_rate,
            "n_success": int((self.success & self.correct).sum()),
            "n_clean_correct": int(self.correct.sum()),
            "clean_accuracy": float(self.correct.float().mean()),
            "raw_success_rate": self.raw_success_rate,
            "misclassified_rate": float(misclassified.float().mean()),
            "robust_accuracy": float(self.robust.float().mean()),
            "mean_confidence": float(self.confidence.mean()),
            "mean_confidence_success": float(self.confidence[self.success].mean())
            if bool(self.success.any())
            else None,
            "mean_linf": float(linf.mean()),
            "max_linf": float(linf.max()),
            "mean_l2": float(l2.mean()),
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "budget": self.budget,
            "max_backward_per_sample": None if self.backward_counts is None else int(self.backward_counts.max()),
            "mean_backward_per_sample": None
            if self.backward_counts is None
            else float(self.backward_counts.float().mean()),
            "seconds": round(self.seconds, 4),
            "seed": self.seed,
            "constraints": self.constraints,
            "constraints_detail": self.constraints_dict,
            "plugin": self.plugin,
            **self.extra,
        }


def merge_results(parts: list[AttackResult]) -> AttackResult:
    """One result from the results of consecutive sample shards of one run (same model, attack, threat model and
    seed): per-sample tensors concatenated in order, passes, seconds and counts summed. Per-sample random streams make
    it the result of the whole run (see :mod:`advkit.rng`)."""
    if not parts:
        raise ValueError("no results to merge")
    first = parts[0]
    if len(parts) == 1:
        return first
    settings = ("model", "attack", "attack_params", "bounds", "constraints", "criterion", "eps", "seed", "budget")
    for part in parts[1:]:
        differ = [k for k in settings if getattr(part, k) != getattr(first, k)]
        if differ:
            raise ValueError(f"results of different runs cannot be merged (they differ in {', '.join(differ)})")

    def cat(name: str) -> Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    artifacts: dict = {}
    for key in dict.fromkeys(k for p in parts for k in p.artifacts):
        values = [p.artifacts.get(key) for p in parts]
        per_sample = all(isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == p.n for v, p in zip(values, parts))
        artifacts[key] = torch.cat(values) if per_sample else values
    gradients = [p.extra.get("nonfinite_gradients") for p in parts]
    extra = {
        **first.extra,
        "nonfinite_logits": sum(int(p.extra.get("nonfinite_logits", 0)) for p in parts),
        "nonfinite_gradients": None if any(g is None for g in gradients) else sum(gradients),
        "oom_retries": sum(int(p.extra.get("oom_retries", 0)) for p in parts),
        "batch_size": [p.extra.get("batch_size") for p in parts],
        "shards": len(parts),
    }
    return replace(
        first,
        **{k: cat(k) for k in ("x", "x_adv", "y", "target", "pred", "confidence", "success", "backward_counts")},
        nonfinite=cat("nonfinite"),
        clean_correct=cat("clean_correct"),
        forward_passes=sum(p.forward_passes for p in parts),
        backward_passes=sum(p.backward_passes for p in parts),
        seconds=sum(p.seconds for p in parts),
        artifacts=artifacts,
        extra=extra,
    )


__all__ = ["AttackResult", "merge_results"]
