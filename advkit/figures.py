"""Figures made with ``matplotlib.figure.Figure`` (no pyplot state), saved as PNG."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from advkit.result import AttackResult


def to_image(x: Tensor, bounds: tuple[float, float]):
    """(C, H, W) in bounds -> (H, W[, 3]) in [0, 1] as a NumPy array for imshow."""
    low, high = bounds
    img = ((x.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def pick_examples(result: AttackResult, k: int) -> list[int]:
    """Up to k sample indices: successful ones first, in order."""
    order = torch.argsort((~result.success).to(torch.int8), stable=True)
    return order[:k].tolist()


def example_grid(result: AttackResult, class_names: list[str], max_rows: int = 6):
    """Rows of original / perturbation / adversarial, titled with class and probability."""
    from matplotlib.figure import Figure

    rows = pick_examples(result, max_rows)
    fig = Figure(figsize=(7.5, 2.5 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    bounds = result.bounds
    for row, i in zip(axes, rows):
        delta = result.delta[i].float().cpu()
        peak = float(delta.abs().max()) or 1.0
        label = class_names[int(result.y[i])]
        pred = class_names[int(result.pred[i])]
        row[0].imshow(to_image(result.x[i], bounds), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"original: true {label}", fontsize=10)
        shown = delta.mean(0).numpy() if delta.shape[0] > 1 else delta[0].numpy()
        im = row[1].imshow(shown, cmap="RdBu_r", vmin=-peak, vmax=peak)
        row[1].set_title(f"perturbation, L-inf {float(delta.abs().max()):.3f}", fontsize=10)
        fig.colorbar(im, ax=row[1], fraction=0.046, pad=0.04)
        verdict = "fooled" if bool(result.success[i]) else "not fooled"
        row[2].imshow(to_image(result.x_adv[i], bounds), cmap="gray", vmin=0, vmax=1)
        row[2].set_title(f"adversarial: {pred} (p={float(result.confidence[i]):.2f}), {verdict}", fontsize=10)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{result.attack} on {result.model}: {result.constraints}", fontsize=11)
    return fig


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
