"""``advkit noise-study`` (S8): one optimized noise per target class, then every noise on 10 fixed digits."""

from __future__ import annotations

from pathlib import Path

import torch

from advkit.models import ModelAdapter
from advkit.provenance import write_summary
from advkit.studies import StudyResult


def noise_study(
    model: ModelAdapter, dataset, *, eps: float, steps: int = 100, seed: int = 0, batch_size: int | str = "auto"
):
    """One optimized noise per target class on the first correctly classified sample, then every noise added to one
    correctly classified sample per class: ``table[t, j]`` is the class predicted for fixed sample j plus noise t.

    The noise of the base sample's own class is zero. Returns a :class:`~advkit.studies.StudyResult`."""
    from advkit.constraints import LinfBall
    from advkit.runner import run_attack
    from advkit.validation import check_eps_in_range

    check_eps_in_range(model, LinfBall(eps))
    classes = model.num_classes
    _, fixed_x, fixed_y = dataset.select(model, classes, batch_size=batch_size)  # class-interleaved: one per class
    fixed_x, fixed_y = fixed_x.cpu(), fixed_y.cpu()
    base, label = fixed_x[:1], fixed_y[:1]
    targets = torch.tensor([t for t in range(classes) if t != int(label)])
    device = model.device
    result = run_attack(
        model,
        "noise",
        base.expand(len(targets), *base.shape[1:]).contiguous().to(device),
        label.expand(len(targets)).to(device),
        constraint=LinfBall(eps),
        target=targets.to(device),
        steps=steps,
        seed=seed,
        batch_size=batch_size,
    )
    noises = torch.zeros(classes, *base.shape[1:])
    noises[targets] = result.delta.cpu()
    low, high = model.bounds
    with torch.no_grad():
        stacked = (fixed_x.unsqueeze(0) + noises.unsqueeze(1)).clamp(low, high)  # (noise t, image j, ...)
        table = model.predict(stacked.flatten(0, 1).to(device)).argmax(1).view(classes, len(fixed_y)).cpu()
    still_correct = (table == fixed_y.view(1, -1)).float().mean(1)
    summary = {
        "model": model.name,
        "eps": eps,
        "steps": steps,
        "seed": seed,
        "data": dataset.source or dataset.name,
        "base_label": int(label),
        "targets_reached": {int(t): bool(s) for t, s in zip(result.target, result.success)},
        "fixed_labels": fixed_y.tolist(),
        "table": table.tolist(),
        "share_still_correct_per_noise": [round(float(v), 2) for v in still_correct],
    }
    return StudyResult(
        "noise-study",
        summary,
        lambda out: write_noise_study(out, model, base, label, noises, result, table, fixed_x, fixed_y, eps, summary),
        {"result": result, "table": table, "noises": noises},
    )


def noise_figure(model: ModelAdapter, base, label, noises, result, table, fixed_x, fixed_y, eps: float):
    """Row 1: the noises (one colour scale, with its bar); row 2: base + noise with prediction; row 3: the 10 test
    digits of the table; right: the true-vs-predicted table."""
    from matplotlib.figure import Figure

    from advkit.figures import to_image

    classes = model.num_classes
    fig = Figure(figsize=(1.45 * classes + 5.5, 6.6), layout="constrained")
    grid = fig.add_gridspec(3, classes + 4, height_ratios=[1, 1, 1])
    targets = result.target.tolist()
    noise_image, noise_axes = None, []
    for t in range(classes):
        ax_noise, ax_adv = fig.add_subplot(grid[0, t]), fig.add_subplot(grid[1, t])
        noise_axes.append(ax_noise)
        noise_image = ax_noise.imshow(noises[t, 0].numpy(), cmap="RdBu_r", vmin=-eps, vmax=eps)
        ax_noise.set_title(f"noise -> {model.class_names[t]}", fontsize=8)
        if t in targets:
            i = targets.index(t)
            ax_adv.imshow(to_image(result.x_adv[i], model.bounds), cmap="gray", vmin=0, vmax=1)
            reached = bool(result.success[i])
            ax_adv.set_title(
                f"pred {model.class_names[int(result.pred[i])]} p={float(result.confidence[i]):.2f}",
                fontsize=8,
                color="black" if reached else "firebrick",
            )
        else:
            ax_adv.imshow(to_image(base[0], model.bounds), cmap="gray", vmin=0, vmax=1)
            ax_adv.set_title(f"original {model.class_names[int(label)]}", fontsize=8)
        for ax in (ax_noise, ax_adv):
            ax.set_xticks([])
            ax.set_yticks([])
    if noise_image is not None:
        fig.colorbar(noise_image, ax=noise_axes, location="left", fraction=0.02, pad=0.01, label="noise (model units)")
    digits = len(fixed_y)
    for j in range(min(digits, classes)):
        ax = fig.add_subplot(grid[2, j])
        ax.imshow(to_image(fixed_x[j], model.bounds), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"test digit {j}: {model.class_names[int(fixed_y[j])]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[:, classes:])
    correct = (table == fixed_y.view(1, -1)).float()
    cells = ax.imshow(correct.numpy(), cmap="Greens", vmin=0, vmax=1.6)
    for t in range(classes):
        for j in range(digits):
            ax.text(j, t, str(int(table[t, j])), ha="center", va="center", fontsize=8)
    ax.set_xticks(
        range(digits), [f"{j}: {model.class_names[int(c)]}" for j, c in enumerate(fixed_y)], fontsize=7, rotation=90
    )
    ax.set_yticks(range(classes), [model.class_names[t] for t in range(classes)], fontsize=8)
    ax.set_xlabel("test digit (number: true class), shown bottom left")
    ax.set_ylabel("noise optimized towards")
    ax.set_title("predicted class (green: still correct)", fontsize=9)
    bar = fig.colorbar(cells, ax=ax, location="right", fraction=0.05, ticks=[0, 1])
    bar.ax.set_yticklabels(["changed", "still correct"], fontsize=7)
    fig.suptitle(
        f"{model.name}: optimized noise per target (L-inf {eps:g}) on the first digit, added to 10 test digits",
        fontsize=10,
    )
    return fig


def write_noise_study(
    out: Path, model, base, label, noises, result, table, fixed_x, fixed_y, eps, summary
) -> list[Path]:
    from advkit.figures import save_figure
    from advkit.files import write_tensors

    tensors = out / "noise_study.safetensors"
    write_tensors({"base": base, "noises": noises, "table": table, "fixed_x": fixed_x, "fixed_y": fixed_y}, tensors)
    figure = save_figure(
        noise_figure(model, base, label, noises, result, table, fixed_x, fixed_y, eps), out / "noise_study.png"
    )
    summary_path = write_summary(out / "summary.json", summary)
    return [tensors, figure, summary_path]
