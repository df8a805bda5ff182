"""Success criteria: when an example counts as adversarial (and, if asked, when the attack may stop)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Misclassified:
    """Success when the predicted class is wrong and its probability is at least ``confidence``."""

    confidence: float = 0.0
    targeted = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence < 1.0:
            raise ValueError(f"confidence must lie in [0, 1), got {self.confidence}")

    def reached(self, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        probs = logits.softmax(dim=1)
        confidence, pred = probs.max(dim=1)
        return (pred != y) & (confidence >= self.confidence)

    def describe(self) -> str:
        return f"wrong class with p >= {self.confidence:.2f}" if self.confidence > 0 else "wrong class"

    def to_dict(self) -> dict:
        return {"type": "misclassified", "confidence": self.confidence}


@dataclass(frozen=True)
class TargetReached:
    """Success when the predicted class is the target and its probability is at least ``confidence``."""

    confidence: float = 0.0
    targeted = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence < 1.0:
            raise ValueError(f"confidence must lie in [0, 1), got {self.confidence}")

    def reached(self, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        if target is None:
            raise ValueError("TargetReached needs target classes")
        probs = logits.softmax(dim=1)
        confidence, pred = probs.max(dim=1)
        return (pred == target) & (confidence >= self.confidence)

    def describe(self) -> str:
        return f"target class with p >= {self.confidence:.2f}" if self.confidence > 0 else "target class"

    def to_dict(self) -> dict:
        return {"type": "target", "confidence": self.confidence}


Criterion = Misclassified | TargetReached


def criterion_for(targeted: bool, confidence: float = 0.0) -> Criterion:
    """The criterion for an untargeted or targeted attack at a given confidence."""
    return TargetReached(confidence) if targeted else Misclassified(confidence)


__all__ = ["Criterion", "Misclassified", "TargetReached", "criterion_for"]
