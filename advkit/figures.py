"""Figures made with ``matplotlib.figure.Figure`` (no pyplot state), saved as PNG."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from advkit.result import AttackResult


def to_image(x: Tensor, bounds: tuple[float, float]):
    """(C, H, W) in bounds -> (H, W[, 3]) in [0, 1] as a NumPy array for imshow."""
    low, high = bounds
    img = ((x.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def pick_examples(result: AttackResult, k: int) -> list[int]:
    """Up to k sample indices, in order: mostly fooled ones, and unfooled ones too when there are any (a third of the
    rows, at least one), so a figure never suggests that every sample was fooled."""
    fooled = result.success.nonzero().squeeze(1).tolist()
    unfooled = (~result.success).nonzero().squeeze(1).tolist()
    n_unfooled = min(len(unfooled), max(1, k // 3)) if unfooled else 0
    n_fooled = min(len(fooled), k - n_unfooled)
    n_unfooled = min(len(unfooled), k - n_fooled)
    return sorted(fooled[:n_fooled] + unfooled[:n_unfooled])


def example_grid(result: AttackResult, class_names: list[str], max_rows: int = 6):
    """Rows of original / perturbation / adversarial, titled with class and probability.

    One colour scale per column: the images on the model's range, the perturbation on one symmetric scale for every
    row (with its colour bar, in model units). Unfooled samples are shown too, marked in red."""
    from matplotlib.figure import Figure

    rows = pick_examples(result, max_rows)
    fig = Figure(figsize=(8.2, 2.5 * len(rows) + 0.9), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    bounds = result.bounds
    deltas = [result.delta[i].float().cpu() for i in rows]
    peak = max((float(d.abs().max()) for d in deltas), default=0.0) or 1.0  # one scale for the whole column
    image = None
    for row, i, delta in zip(axes, rows, deltas):
        label = class_names[int(result.y[i])]
        pred = class_names[int(result.pred[i])]
        row[0].imshow(to_image(result.x[i], bounds), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"original: true {label}", fontsize=10)
        shown = delta.mean(0).numpy() if delta.shape[0] > 1 else delta[0].numpy()
        image = row[1].imshow(shown, cmap="RdBu_r", vmin=-peak, vmax=peak)
        row[1].set_title(f"perturbation, L-inf {float(delta.abs().max()):.3f}", fontsize=10)
        fooled = bool(result.success[i])
        row[2].imshow(to_image(result.x_adv[i], bounds), cmap="gray", vmin=0, vmax=1)
        row[2].set_title(
            f"adversarial: {pred} (p={float(result.confidence[i]):.2f}), {'fooled' if fooled else 'NOT fooled'}",
            fontsize=10,
            color="black" if fooled else "firebrick",
        )
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            if not fooled:
                for spine in ax.spines.values():
                    spine.set_edgecolor("firebrick")
                    spine.set_linewidth(2.5)
    if image is not None:
        fig.colorbar(
            image,
            ax=axes[:, 1].tolist(),
            location="bottom",
            fraction=0.04,
            pad=0.02,
            shrink=0.9,
            label=f"perturbation (model units; range of the model {bounds[1] - bounds[0]:g})",
        )
    n_fooled = int(result.success.sum())
    fig.suptitle(
        f"{result.attack} on {result.model}: {result.constraints}\n{n_fooled}/{result.n} fooled "
        f"({result.criterion}); shown: "
        f"{sum(bool(result.success[i]) for i in rows)} fooled, {sum(not bool(result.success[i]) for i in rows)} "
        "not fooled (red)",
        fontsize=11,
    )
    return fig


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
