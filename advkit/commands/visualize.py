"""``advkit visualize``: one image per class by gradient ascent, with J over iterations (S6, S9)."""

from __future__ import annotations

from pathlib import Path

import torch

from advkit.models import ModelAdapter
from advkit.provenance import write_summary


def visualization_figure(result, history: torch.Tensor, class_names: list[str], title: str, references: bool = False):
    """Top: the image for each class titled with prediction and probability (above it, with
    ``references``, the look-alike reference image and its true class); bottom: J over iterations."""
    from matplotlib.figure import Figure

    from advkit.figures import to_image

    n = result.x_adv.shape[0]
    rows = [result.x, result.x_adv] if references else [result.x_adv]
    fig = Figure(figsize=(1.6 * max(n, 5), 3.0 + 2.4 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(len(rows) + 1, n, height_ratios=[1] * len(rows) + [1.3])
    for r, images in enumerate(rows):
        for i in range(n):
            ax = fig.add_subplot(grid[r, i])
            ax.imshow(to_image(images[i], result.bounds), cmap="gray", vmin=0, vmax=1)
            target = class_names[int(result.target[i])]
            pred = class_names[int(result.pred[i])]
            if references and r == 0:
                ax.set_title(f"reference: {class_names[int(result.y[i])]}", fontsize=9)
            else:
                read_as_target = int(result.pred[i]) == int(result.target[i])
                mark = "" if read_as_target else "\nNOT read as the target"
                ax.set_title(
                    f"{'target' if references else 'class'} {target}\npred {pred} p={float(result.confidence[i]):.2f}"
                    f"{mark}",
                    fontsize=9,
                    color="black" if read_as_target else "firebrick",
                )
                if not read_as_target:  # a class image the model reads as another class says so
                    for spine in ax.spines.values():
                        spine.set_edgecolor("firebrick")
                        spine.set_linewidth(2.5)
            ax.set_xticks([])
            ax.set_yticks([])
    ax = fig.add_subplot(grid[len(rows), :])
    steps = torch.arange(1, history.shape[0] + 1)
    for i in range(n):
        ax.plot(steps.numpy(), history[:, i].cpu().numpy(), label=class_names[int(result.target[i])])
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective J")
    ax.set_title("objective over iterations")
    ax.legend(ncol=min(n, 10), fontsize=8, title="target class")
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return fig


def write_visualization(
    out: Path, result, history: torch.Tensor, model: ModelAdapter, summary: dict, title: str, references: bool = False
) -> list[Path]:
    from advkit.figures import save_figure
    from advkit.files import write_tensors

    images = out / "images.safetensors"
    write_tensors(
        {
            "x": result.x_adv.cpu().contiguous(),
            "target": result.target.cpu(),
            "pred": result.pred.cpu(),
            "history": history.cpu().contiguous(),
        },
        str(images),
    )
    figure = save_figure(
        visualization_figure(result, history, model.class_names, title, references), out / "visualization.png"
    )
    summary_path = write_summary(out / "summary.json", summary)
    return [images, figure, summary_path]
