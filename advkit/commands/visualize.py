"""``advkit visualize``: one image per class by gradient ascent, with J over iterations (S6, S9)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from advkit.models import ModelAdapter


def start_images(model: ModelAdapter, start: str, n: int, seed: int, sigma: float = 0.1) -> torch.Tensor:
    """n starting images: Gaussian noise around mid-range (std sigma x range) or the zero image.

    "zeros" is the all-zero tensor when 0 lies in the model's bounds (mid-gray for [-1, 1],
    black for [0, 1]); "noise" is mid-range plus Gaussian noise, clipped to the bounds.
    """
    low, high = model.bounds
    shape = (n, *model.input_shape)
    if start == "zeros":
        return torch.zeros(shape).clamp(low, high)
    generator = torch.Generator().manual_seed(seed)
    mid = (low + high) / 2
    noise = torch.randn(shape, generator=generator) * sigma * (high - low)
    return (mid + noise).clamp(low, high)


def visualization_figure(result, history: torch.Tensor, class_names: list[str], title: str):
    """Top: the image for each class titled with prediction and probability; bottom: J over iterations."""
    from matplotlib.figure import Figure

    from advkit.figures import to_image

    n = result.x_adv.shape[0]
    fig = Figure(figsize=(1.6 * max(n, 5), 5.6), layout="constrained")
    grid = fig.add_gridspec(2, n, height_ratios=[1, 1.3])
    for i in range(n):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(to_image(result.x_adv[i], result.bounds), cmap="gray", vmin=0, vmax=1)
        target = class_names[int(result.target[i])]
        pred = class_names[int(result.pred[i])]
        ax.set_title(f"class {target}\npred {pred} p={float(result.confidence[i]):.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, :])
    steps = torch.arange(1, history.shape[0] + 1)
    for i in range(n):
        ax.plot(steps.numpy(), history[:, i].cpu().numpy(), label=class_names[int(result.target[i])])
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective J")
    ax.set_title("objective over iterations")
    ax.legend(ncol=min(n, 10), fontsize=8, title="class")
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return fig


def write_visualization(out: Path, result, history: torch.Tensor, model: ModelAdapter, summary: dict, title: str) -> list[Path]:
    from safetensors.torch import save_file

    from advkit.figures import save_figure

    images = out / "images.safetensors"
    save_file({"x_start": result.x.cpu().contiguous(), "x": result.x_adv.cpu().contiguous(),
               "target": result.target.cpu(), "pred": result.pred.cpu(), "history": history.cpu().contiguous()},
              str(images))
    figure = save_figure(visualization_figure(result, history, model.class_names, title), out / "visualization.png")
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    return [images, figure, summary_path]
