"""``advkit noise-study`` (S8): one optimized noise per target class, then every noise on 10 fixed digits."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from advkit.models import ModelAdapter


def noise_study(model: ModelAdapter, x_all: torch.Tensor, y_all: torch.Tensor, *, eps: float, steps: int, seed: int):
    """Returns (base image, its label, noises (C, ...), adversarial results, fixed images, their labels, table).

    The base image is the first correctly classified test image; one noise is optimized towards
    each class other than its label (the label's own "noise" is zero). ``table[t, j]`` is the
    class predicted for fixed image j (one correctly classified image per class) plus noise t.
    """
    from advkit.commands.attack import select_correct
    from advkit.constraints import LinfBall
    from advkit.runner import run_attack

    classes = model.num_classes
    fixed_idx = select_correct(model, x_all, y_all, classes, None)  # class-interleaved: one per class
    fixed_x, fixed_y = x_all[fixed_idx], y_all[fixed_idx]
    base, label = fixed_x[:1], fixed_y[:1]
    targets = torch.tensor([t for t in range(classes) if t != int(label)])
    result = run_attack(model, "noise", base.expand(len(targets), *base.shape[1:]).contiguous(), label.expand(len(targets)),
                        constraint=LinfBall(eps), target=targets, steps=steps, seed=seed)
    noises = torch.zeros(classes, *base.shape[1:])
    noises[targets] = result.delta
    low, high = model.bounds
    with torch.no_grad():
        stacked = (fixed_x.unsqueeze(0) + noises.unsqueeze(1)).clamp(low, high)  # (noise t, image j, ...)
        table = model.predict(stacked.flatten(0, 1)).argmax(1).view(classes, len(fixed_y))
    return base, label, noises, result, fixed_x, fixed_y, table


def noise_figure(model: ModelAdapter, base, label, noises, result, table, fixed_y, eps: float):
    """Row 1: the noises; row 2: base + noise with prediction; right: the true-vs-predicted table."""
    from matplotlib.figure import Figure

    from advkit.figures import to_image

    classes = model.num_classes
    fig = Figure(figsize=(1.45 * classes + 5.5, 4.6), layout="constrained")
    grid = fig.add_gridspec(2, classes + 4)
    targets = result.target.tolist()
    for t in range(classes):
        ax_noise, ax_adv = fig.add_subplot(grid[0, t]), fig.add_subplot(grid[1, t])
        ax_noise.imshow(noises[t, 0].numpy(), cmap="RdBu_r", vmin=-eps, vmax=eps)
        ax_noise.set_title(f"noise -> {model.class_names[t]}", fontsize=8)
        if t in targets:
            i = targets.index(t)
            ax_adv.imshow(to_image(result.x_adv[i], model.bounds), cmap="gray", vmin=0, vmax=1)
            ax_adv.set_title(f"pred {model.class_names[int(result.pred[i])]} p={float(result.confidence[i]):.2f}", fontsize=8)
        else:
            ax_adv.imshow(to_image(base[0], model.bounds), cmap="gray", vmin=0, vmax=1)
            ax_adv.set_title(f"original {model.class_names[int(label)]}", fontsize=8)
        for ax in (ax_noise, ax_adv):
            ax.set_xticks([])
            ax.set_yticks([])
    ax = fig.add_subplot(grid[:, classes:])
    ax.imshow((table == fixed_y.view(1, -1)).numpy(), cmap="Greens", vmin=0, vmax=1.6)
    for t in range(classes):
        for j in range(len(fixed_y)):
            ax.text(j, t, str(int(table[t, j])), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(fixed_y)), [model.class_names[int(c)] for c in fixed_y], fontsize=8)
    ax.set_yticks(range(classes), [model.class_names[t] for t in range(classes)], fontsize=8)
    ax.set_xlabel("true class of the test image")
    ax.set_ylabel("noise optimized towards")
    ax.set_title("predicted class (green: still correct)", fontsize=9)
    fig.suptitle(f"{model.name}: optimized noise per target (L-inf {eps:g}) on the first digit, added to 10 test digits",
                 fontsize=10)
    return fig


def write_noise_study(out: Path, model, base, label, noises, result, table, fixed_y, eps, summary) -> list[Path]:
    from safetensors.torch import save_file

    from advkit.figures import save_figure

    tensors = out / "noise_study.safetensors"
    save_file({"base": base.contiguous(), "noises": noises.contiguous(), "table": table.contiguous(),
               "fixed_y": fixed_y.contiguous()}, str(tensors))
    figure = save_figure(noise_figure(model, base, label, noises, result, table, fixed_y, eps), out / "noise_study.png")
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    return [tensors, figure, summary_path]
