"""``advkit attack``: pick correctly classified test samples, attack them, summarize, write outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from advkit.errors import AdvkitError
from advkit.models import ModelAdapter, ModelSpec
from advkit.provenance import write_summary


@dataclass
class AttackJob:
    """Everything ``advkit attack`` was asked to do, already validated for cheap mistakes."""

    model_spec: ModelSpec
    attack_cls: type
    attack_params: dict[str, Any]
    eps: float | None  # None: an unbounded run (only the named sets and the model's box)
    constraint_names: list[str]
    target: str | None
    label: int | None
    n: int
    seed: int
    budget: int | None
    confidence: float | None
    data_source: str
    device: str


def load_test_set(dataset: str | None, source: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Test inputs, labels and a description of where they came from, for a model's dataset."""
    return load_split(dataset, "test", source)


def load_split(dataset: str | None, split: str, source: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Inputs, labels and their origin for the ``split`` ("train" or "test") of a model's dataset."""
    if dataset == "mnist":
        from advkit.data import load_mnist

        try:
            data = load_mnist(split, source=source)
        except (FileNotFoundError, ValueError) as error:
            raise click.ClickException(f"--data {source}: {error}") from None
        return data.x, data.y, data.source
    if dataset == "imagenet" and split == "test":
        from advkit.images import sample_names

        raise click.ClickException(
            f"advkit has no ImageNet {split} set on this machine (nothing is downloaded); attack photos instead: "
            f"`advkit fool --model MODEL --image PATH` (JPEG/PNG files, or the sample photos {', '.join(sample_names())})"
        )
    raise click.ClickException(f"no built-in {split} set for dataset {dataset!r}")


def class_interleaved_order(y: torch.Tensor) -> torch.Tensor:
    """Indices ordered round-robin over classes (first of each class, then second of each...), so any
    prefix is class-balanced even when the data set is sorted by class."""
    rank = torch.zeros_like(y)
    for c in y.unique():
        members = (y == c).nonzero().squeeze(1)
        rank[members] = torch.arange(members.numel())
    return torch.argsort(rank * (int(y.max()) + 1) + y, stable=True)


def select_correct(model: ModelAdapter, x: torch.Tensor, y: torch.Tensor, n: int, label: int | None) -> torch.Tensor:
    """Indices of the first n correctly classified test samples (of class ``label`` if given), in
    class-interleaved order."""
    keep = torch.ones_like(y, dtype=torch.bool) if label is None else y == label
    pred = model.predict(x).argmax(1).cpu()
    order = class_interleaved_order(y)
    candidates = order[(keep & (pred == y))[order]]
    if candidates.numel() == 0:
        raise click.ClickException("the model classifies no test sample of the requested class correctly")
    return candidates[:n]


def run_attack_job(job: AttackJob, resolve_target: Callable[[str | None, list[str]], int | None]):
    """Run the job; returns (summary dict, AttackResult, model)."""
    from advkit import registry
    from advkit.constraints import build_constraints
    from advkit.errors import ThreatModelError
    from advkit.runner import run_attack
    from advkit.validation import check_eps_in_range

    try:
        model = job.model_spec.load().to(job.device)
    except AdvkitError:
        raise
    except (OSError, RuntimeError, ValueError) as error:
        raise click.ClickException(f"cannot load model {job.model_spec.name!r}: {error}") from None
    if job.label is not None and not 0 <= job.label < model.num_classes:
        raise click.UsageError(f"--label {job.label} is out of range: classes are 0..{model.num_classes - 1}")
    target = resolve_target(job.target, model.class_names)
    if target is not None and job.label is not None and target == job.label:
        raise click.UsageError(f"--target {target} equals the true label --label {job.label}")
    if job.attack_cls.targeted and target is None:
        raise click.UsageError(f"attack {job.attack_cls.name!r} is targeted: give --target")
    try:
        constraint = build_constraints(
            job.constraint_names, eps=job.eps, bounds=model.bounds, registry=registry.constraints()
        )
    except ThreatModelError:
        raise  # eps that bounds nothing: the message says how to ask for what was meant
    except ValueError as error:
        raise click.UsageError(f"--constraints: {error}") from None
    check_eps_in_range(model, constraint)  # before any data is loaded: the same rule as sweeps and run_attack

    x_all, y_all, source = load_test_set(model.dataset, job.data_source)
    if target is not None and job.label is None:
        keep = y_all != target  # a sample already of the target class cannot be turned into it
        x_all, y_all = x_all[keep], y_all[keep]
    idx = select_correct(model, x_all.to(job.device), y_all, job.n, job.label)
    x, y = x_all[idx].to(job.device), y_all[idx].to(job.device)
    try:
        result = run_attack(
            model,
            job.attack_cls(**job.attack_params),
            x,
            y,
            constraint=constraint,
            eps=job.eps,
            target=target,
            confidence=job.confidence,
            budget=job.budget,
            seed=job.seed,
        )
    except AdvkitError:
        raise  # the CLI prints it in one line (usage errors as such)
    except (ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    summary = result.summary()
    summary["data"] = source
    summary["target"] = target
    summary["label"] = job.label
    summary["n_requested"] = job.n
    summary["device"] = str(job.device)
    return summary, result, model


def format_summary(s: dict) -> str:
    """A short human summary of an attack run."""
    low, high = s["bounds"]
    eps01 = s["eps_01"]
    eps_line = (
        f"{s['eps']:g} in model units [{low:g}, {high:g}] = {eps01:.4f} on the 0-1 scale"
        if s["eps"] is not None
        else "none (unbounded: only the sets above bound the perturbation)"
    )
    fewer = f" (only {s['n']} available)" if s["n"] < s["n_requested"] else ""
    source = f" class {s['label']}" if s.get("label") is not None else ""
    target = (
        f"{source} -> target {s['target']}"
        if s["target"] is not None
        else (f" ({source.strip()} only)" if source else "")
    )
    succ_conf = s["mean_confidence_success"]
    lines = [
        f"advkit {s['attack']} on {s['model']}{target}: {s['n']} correctly classified test samples{fewer} [{s['data']}]",
        f"  threat model   {s['constraints']}",
        f"  eps            {eps_line}",
        f"  success        {s['n_success']}/{s['n']} = {100 * s['success_rate']:.1f}%  ({s['criterion']}, re-checked by a fresh forward pass)",
        f"  misclassified  {100 * s['misclassified_rate']:.1f}%   mean confidence {s['mean_confidence']:.3f}"
        + (f" (fooled: {succ_conf:.3f})" if succ_conf is not None else ""),
        f"  perturbation   mean L-inf {s['mean_linf']:.4f}, max L-inf {s['max_linf']:.4f}, mean L2 {s['mean_l2']:.4f}",
        f"  passes         {s['forward_passes']} forward, {s['backward_passes']} backward"
        + (
            f", at most {s['max_backward_per_sample']} per sample"
            if s.get("max_backward_per_sample") is not None
            else ""
        )
        + (f" (budget {s['budget']})" if s["budget"] else "")
        + f"; {s['seconds']:.2f} s; seed {s['seed']}",
        f"  plugin         {s['plugin']['name']} {s['plugin']['version'] or ''}".rstrip(),
    ]
    if s.get("survival"):
        survived = ", ".join(
            f"{row['transform']} {row['survival_rate']:.2f}"
            + (
                f" (still wrong {row['still_fooled_rate']:.2f}, clean {row['clean_accuracy']:.2f})"
                if "clean_accuracy" in row
                else ""
            )
            for row in s["survival"]
        )
        lines.append(f"  survival       {survived}")
        lines.append(
            "                 share of fooled examples still fooling after each transform while the transformed"
            " clean image is still right (still wrong: whatever the clean image does; clean: accuracy on the"
            " transformed clean images)"
        )
    if s.get("out"):
        lines.append(f"  wrote          {', '.join(s['out'])}")
    return "\n".join(lines)


def write_outputs(out: Path, result, model: ModelAdapter, summary: dict) -> list[Path]:
    """Adversarial examples (safetensors), the summary (JSON) and a PNG grid."""
    from advkit.figures import example_grid, save_figure
    from advkit.files import write_tensors

    tensors = {
        "x": result.x,
        "x_adv": result.x_adv,
        "y": result.y,
        "pred": result.pred,
        "confidence": result.confidence,
        "success": result.success,
    }
    examples = out / "examples.safetensors"
    write_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(examples))
    figure = save_figure(example_grid(result, model.class_names), out / "examples.png")
    summary_path = out / "summary.json"
    write_summary(summary_path, {**summary, "out": [str(examples), str(figure), str(summary_path)]})
    return [examples, figure, summary_path]


def survival_outputs(
    out: Path | None, result, model: ModelAdapter, summary: dict, max_figure_rows: int = 6
) -> list[Path]:
    """S12 on the successful examples: the per-transform survival table (into ``summary``) and,
    with ``out``, survival.csv and survival.png (a row per example, a column per transform)."""
    from advkit.commands.imagenet import survival_figure
    from advkit.figures import save_figure
    from advkit.survival import Survival

    fooled = result.success.nonzero().squeeze(1)
    if fooled.numel() == 0:
        summary["survival"] = None
        return []
    evaluator = Survival()
    target = None if result.target is None else result.target[fooled]
    names = [f"true {model.class_names[int(c)]}" for c in result.y[fooled]]
    frame = evaluator.evaluate(
        model, result.x_adv[fooled], target=target, labels=result.y[fooled], x=result.x[fooled], names=names
    )
    summary["survival"] = Survival.table(frame).round(3).to_dict(orient="records")
    if out is None:
        return []
    frame.to_csv(out / "survival.csv", index=False, float_format="%.4f")
    shown = frame[frame["sample"] < max_figure_rows]
    images = evaluator.transformed(result.x_adv[fooled[:max_figure_rows]], model.bounds)
    figure = save_figure(survival_figure(model, shown, images, evaluator, float(result.eps or 0)), out / "survival.png")
    return [out / "survival.csv", figure]
