"""Class visualization and look-alikes: one image per class by gradient ascent, with J over the iterations (S6, S7,
S9)."""

from __future__ import annotations

from pathlib import Path

import torch

from advkit.models import ModelAdapter
from advkit.provenance import write_summary
from advkit.studies import StudyResult


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


def visualize_study(
    model: ModelAdapter,
    *,
    classes: list[int] | None = None,
    start: str = "noise",
    steps: int = 200,
    step_size: float = 0.05,
    step_rule: str = "std",
    l2_penalty: float = 0.0,
    layer: str | None = None,
    channel: int | None = None,
    seed: int = 0,
) -> StudyResult:
    """One image per class by gradient ascent on its logit (or a layer's channel), J over the iterations."""
    from advkit.constraints import Box
    from advkit.errors import ParameterError
    from advkit.runner import make_attack, run_attack

    attack = make_attack(
        "visualize", start=start, steps=steps, step_size=step_size, step_rule=step_rule, l2_penalty=l2_penalty,
        layer=layer, channel=channel,
    )  # fmt: skip
    wanted = list(range(model.num_classes)) if classes is None else list(classes)
    bad = [c for c in wanted if not 0 <= c < model.num_classes]
    if bad:
        raise ParameterError(f"--classes {bad} out of range: classes are 0..{model.num_classes - 1}")
    device = model.device
    # The whole image is optimized from the attack's own start; the zero inputs are only placeholders (the start
    # "input" begins from them, the zero image clipped to the box).
    x = torch.zeros(len(wanted), *model.input_shape, device=device).clamp(*model.bounds)
    target = torch.tensor(wanted, device=device)
    y = (target + 1) % model.num_classes  # the start images carry no label: any other class makes the run valid
    result = run_attack(model, attack, x, y, constraint=Box(*model.bounds), target=target, seed=seed)
    history = attack.history_
    what = f"layer {layer} channel {channel if channel is not None else '= class'}" if layer else "class logit"
    summary = {
        "model": model.name,
        "objective": what,
        "start": start,
        "l2_penalty": l2_penalty,
        "steps": steps,
        "classes": wanted,
        "predicted": result.pred.tolist(),
        "confidence": [round(float(c), 4) for c in result.confidence],
        "objective_first": [round(float(v), 4) for v in history[0]],
        "objective_last": [round(float(v), 4) for v in history[-1]],
        "forward_passes": result.forward_passes,
        "backward_passes": result.backward_passes,
        "seconds": round(result.seconds, 3),
        "seed": seed,
    }
    title = f"{model.name}: ascent on {what} from {start}, {steps} steps, lambda={l2_penalty:g}"
    return StudyResult(
        "visualize",
        summary,
        lambda out: write_visualization(out, result, history, model, summary, title),
        {"result": result, "history": history},
    )


def lookalike_study(
    model: ModelAdapter,
    dataset,
    *,
    shift: int = 3,
    beta: float = 1e-4,
    start: str = "input",
    steps: int = 100,
    step_size: float = 0.02,
    seed: int = 0,
    batch_size: int | str = "auto",
) -> StudyResult:
    """One look-alike per class: the first correctly classified sample of class c, read as class c + shift."""
    from advkit.constraints import Box
    from advkit.errors import ParameterError
    from advkit.runner import make_attack, run_attack

    attack = make_attack("lookalike", beta=beta, steps=steps, step_size=step_size, start=start)
    if shift % model.num_classes == 0:
        raise ParameterError(f"--shift {shift} maps every class to itself; use 1..{model.num_classes - 1}")
    picked = [dataset.select(model, 1, label=c, batch_size=batch_size) for c in range(model.num_classes)]
    x = torch.cat([p[1] for p in picked])
    y = torch.cat([p[2] for p in picked])
    target = (y + shift) % model.num_classes
    result = run_attack(
        model, attack, x, y, constraint=Box(*model.bounds), target=target, seed=seed, batch_size=batch_size
    )
    history = attack.history_
    mse = (result.x_adv - x).flatten(1).pow(2).mean(1)
    summary = {
        "model": model.name,
        "beta": beta,
        "start": start,
        "steps": steps,
        "data": dataset.source or dataset.name,
        "reference_classes": y.tolist(),
        "targets": target.tolist(),
        "predicted": result.pred.tolist(),
        "confidence": [round(float(c), 4) for c in result.confidence],
        "reached": result.success.tolist(),
        "mse_to_reference": [round(float(v), 4) for v in mse],
        "objective_first": [round(float(v), 4) for v in history[0]],
        "objective_last": [round(float(v), 4) for v in history[-1]],
        "forward_passes": result.forward_passes,
        "backward_passes": result.backward_passes,
        "seconds": round(result.seconds, 3),
        "seed": seed,
    }
    title = (
        f"{model.name}: look-alikes, C = logit[target] - {beta:g} * mse(x, reference), from {start}, "
        f"up to {steps} steps (stop at p >= 0.9); {int(result.success.sum())}/{len(y)} read as their target"
    )
    return StudyResult(
        "lookalike",
        summary,
        lambda out: write_visualization(out, result, history, model, summary, title, references=True),
        {"result": result, "history": history},
    )
