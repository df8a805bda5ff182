"""``advkit universal``: one perturbation optimized on training images, scored on held-out ones."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from advkit.models import ModelAdapter
from advkit.provenance import write_summary
from advkit.result import AttackResult
from advkit.studies import StudyResult


def universal_study(
    model: ModelAdapter,
    train: tuple[Tensor, Tensor],
    heldout: tuple[Tensor, Tensor],
    *,
    eps: float,
    target: int | None,
    steps: int,
    minibatch: int | None,
    seed: int,
) -> dict:
    """Optimize one L-inf perturbation on ``train`` (correctly classified, not of the target class)
    and measure its fooling rate on ``heldout`` (likewise filtered). Returns tensors and numbers."""
    from advkit.constraints import Box, LinfBall
    from advkit.runner import run_attack
    from advkit.universal import fooling_rate

    def usable(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        keep = model.predict(x).argmax(1) == y
        if target is not None:
            keep &= y != target
        return x[keep], y[keep]

    x_train, y_train = usable(*train)
    x_held, y_held = usable(*heldout)
    result = run_attack(
        model, "universal", x_train, y_train, eps=eps, target=target, steps=steps, minibatch=minibatch, seed=seed
    )
    perturbation = result.artifacts["perturbation"]
    rate, fooled = fooling_rate(model, perturbation, x_held, y_held, LinfBall(eps) & Box(*model.bounds), target)
    from advkit.universal import apply_shared

    with torch.no_grad():
        x_adv_held = apply_shared(perturbation, x_held, LinfBall(eps) & Box(*model.bounds))
        probs = model.predict(x_adv_held).softmax(1)
    return {
        "result": result,
        "perturbation": perturbation,
        "x_held": x_held,
        "y_held": y_held,
        "x_adv_held": x_adv_held,
        "probs_held": probs,
        "fooled_held": fooled,
        "heldout_rate": rate,
    }


def universal_summary(model: ModelAdapter, study: dict, *, eps: float, target: int | None, source: str) -> dict:
    result: AttackResult = study["result"]
    pred_held = study["probs_held"].argmax(1)
    predicted_share = torch.bincount(pred_held[study["fooled_held"]], minlength=model.num_classes).float()
    predicted_share = predicted_share / max(1, int(study["fooled_held"].sum()))
    return {
        "model": model.name,
        "eps": eps,
        "eps_01": eps / model.range_width,
        "target": target,
        "data": source,
        "n_train": result.n,
        "train_fooling_rate": round(result.success_rate, 4),
        "n_heldout": int(study["y_held"].numel()),
        "heldout_fooling_rate": round(study["heldout_rate"], 4),
        "heldout_fooled_predicted_as": {
            model.class_names[c]: round(float(v), 3) for c, v in enumerate(predicted_share) if v > 0
        },
        "perturbation_linf": round(float(study["perturbation"].abs().max()), 4),
        "steps": result.attack_params["steps"],
        "minibatch": result.attack_params["minibatch"],
        "forward_passes": result.forward_passes,
        "backward_passes": result.backward_passes,
        "max_backward_per_sample": result.summary()["max_backward_per_sample"],
        "seconds": round(result.seconds, 2),
        "seed": result.seed,
    }


def universal_figure(model: ModelAdapter, study: dict, summary: dict, examples: int = 8):
    """Left: the shared perturbation; right: held-out images before and after, with class and probability."""
    from matplotlib.figure import Figure

    from advkit.figures import to_image

    eps = summary["eps"]
    fig = Figure(figsize=(3.2 + 1.6 * examples, 4.4), layout="constrained")
    grid = fig.add_gridspec(2, examples + 2)
    ax = fig.add_subplot(grid[:, :2])
    u = study["perturbation"][0].float().cpu()
    shown = u.mean(0) if u.shape[0] > 1 else u[0]
    im = ax.imshow(shown.numpy(), cmap="RdBu_r", vmin=-eps, vmax=eps)
    ax.set_title(f"universal perturbation\nL-inf {summary['perturbation_linf']:g}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks([])
    ax.set_yticks([])
    order = torch.argsort((~study["fooled_held"]).to(torch.int8), stable=True)
    picks = order[torch.linspace(0, len(order) - 1, examples).long()] if len(order) > examples else order
    clean_probs = model.predict(study["x_held"][picks]).softmax(1)
    for col, i in enumerate(picks.tolist()):
        top, bottom = fig.add_subplot(grid[0, col + 2]), fig.add_subplot(grid[1, col + 2])
        p_clean, c_clean = clean_probs[col].max(0)
        p_adv, c_adv = study["probs_held"][i].max(0)
        top.imshow(to_image(study["x_held"][i], model.bounds), cmap="gray", vmin=0, vmax=1)
        top.set_title(f"{model.class_names[int(c_clean)]} (p={float(p_clean):.2f})", fontsize=9)
        bottom.imshow(to_image(study["x_adv_held"][i], model.bounds), cmap="gray", vmin=0, vmax=1)
        verdict = "fooled" if bool(study["fooled_held"][i]) else "held"
        bottom.set_title(
            f"{model.class_names[int(c_adv)]} (p={float(p_adv):.2f}) {verdict}",
            fontsize=9,
            color="firebrick" if verdict == "fooled" else "black",
        )
        for a in (top, bottom):
            a.set_xticks([])
            a.set_yticks([])
    goal = "untargeted" if summary["target"] is None else f"towards {model.class_names[summary['target']]}"
    fig.suptitle(
        f"{model.name}: one perturbation ({goal}, L-inf {eps:g}) - fooling rate "
        f"{summary['train_fooling_rate']:.2f} on {summary['n_train']} training images, "
        f"{summary['heldout_fooling_rate']:.2f} on {summary['n_heldout']} held-out images "
        "(top: clean, bottom: with the perturbation)",
        fontsize=10,
    )
    return fig


def write_universal(out: Path, model: ModelAdapter, study: dict, summary: dict) -> list[Path]:
    from advkit.figures import save_figure
    from advkit.files import write_tensors

    tensors = out / "universal.safetensors"
    write_tensors({"perturbation": study["perturbation"].cpu().contiguous()}, str(tensors))
    figure = save_figure(universal_figure(model, study, summary), out / "universal.png")
    summary_path = write_summary(out / "summary.json", summary)
    return [tensors, figure, summary_path]


def universal_perturbation_study(
    model: ModelAdapter,
    train,
    test,
    *,
    eps: float,
    target: int | str | None = None,
    n_train: int = 1000,
    n: int | None = None,
    steps: int = 100,
    minibatch: int | None = 250,
    seed: int = 0,
    batch_size: int | str = "auto",
) -> StudyResult:
    """One L-inf perturbation optimized on the first ``n_train`` training samples (class-interleaved) the model
    classifies correctly, its fooling rate measured on the first ``n`` such test samples (None: all of them); for a
    target, samples of the target class are left out of both. ``minibatch``: images per optimization step (None:
    all); ``batch_size``: samples per forward pass while selecting and scoring."""
    from advkit.classes import resolve_class
    from advkit.constraints import LinfBall
    from advkit.validation import check_eps_in_range

    check_eps_in_range(model, LinfBall(eps))
    target_index = None if target is None else resolve_class(model.class_names, target, what="--target")
    _, x_train, y_train = train.select(model, n_train, exclude_class=target_index, batch_size=batch_size)
    _, x_test, y_test = test.select(model, n or max(len(test), 1), exclude_class=target_index, batch_size=batch_size)
    study = universal_study(
        model, (x_train, y_train), (x_test, y_test), eps=eps, target=target_index, steps=steps,
        minibatch=minibatch, seed=seed,
    )  # fmt: skip
    summary = universal_summary(model, study, eps=eps, target=target_index, source=train.source or train.name)
    return StudyResult("universal", summary, lambda out: write_universal(out, model, study, summary), study)
