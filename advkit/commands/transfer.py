"""``advkit transfer``: attack each source model, feed its successful examples to every target, write the matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from advkit.errors import AdvkitError
from advkit.models import ModelAdapter, ModelSpec
from advkit.provenance import write_summary
from advkit.transfer import TransferResult, check_compatible, transfer_figure, transfer_matrix


@dataclass
class TransferJob:
    """Everything ``advkit transfer`` was asked to do, already validated for cheap mistakes."""

    source_specs: list[ModelSpec]
    target_specs: list[ModelSpec] | None
    attack_cls: type
    attack_params: dict[str, Any]
    eps: float
    constraint_names: list[str]
    target_class: str | None
    confidence: float | None
    n: int
    seed: int
    budget: int | None
    data_source: str
    device: str


def load_models(specs: list[ModelSpec], device: str) -> dict[str, ModelAdapter]:
    """Each named model loaded once (a model both source and target is the same adapter)."""
    models: dict[str, ModelAdapter] = {}
    for spec in specs:
        if spec.name in models:
            continue
        try:
            models[spec.name] = spec.load().to(device)
        except AdvkitError:
            raise
        except (OSError, RuntimeError, ValueError, ModuleNotFoundError) as error:
            raise click.ClickException(f"cannot load model {spec.name!r}: {error}") from None
    return models


def run_transfer_job(
    job: TransferJob,
    resolve_target: Callable[[str | None, list[str]], int | None],
    progress: Callable[[str], None] | None = None,
) -> tuple[dict, TransferResult]:
    """Load the models and the test set, check them, run :func:`advkit.transfer.transfer_matrix`; (summary, result)."""
    from advkit import registry
    from advkit.commands.attack import class_interleaved_order, load_test_set
    from advkit.constraints import build_constraints
    from advkit.validation import check_eps_in_range

    models = load_models(job.source_specs + (job.target_specs or []), job.device)
    sources = [models[s.name] for s in job.source_specs]
    targets = None if job.target_specs is None else [models[s.name] for s in job.target_specs]
    try:
        check_compatible(list(models.values()))
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    first = sources[0]
    try:
        target_class = resolve_target(job.target_class, first.class_names)
    except click.UsageError as error:  # the shared resolver names the attack command's --target option
        raise click.UsageError(error.message.replace("--target", "--target-class", 1)) from None
    if job.attack_cls.targeted and target_class is None:
        raise click.UsageError(f"attack {job.attack_cls.name!r} is targeted: give --target-class")
    try:
        constraint = build_constraints(
            job.constraint_names, eps=job.eps, bounds=first.bounds, registry=registry.constraints()
        )
    except AdvkitError:
        raise  # e.g. eps that bounds nothing: the message says what to ask for
    except ValueError as error:
        raise click.UsageError(f"--constraints: {error}") from None
    check_eps_in_range(first, constraint)  # the same rule as attack and sweep, before any data is loaded

    x_all, y_all, data = load_test_set(first.dataset, job.data_source)
    order = class_interleaved_order(y_all)  # any prefix is class-balanced
    try:
        result = transfer_matrix(
            sources,
            targets,
            x_all[order],
            y_all[order],
            attack=job.attack_cls.name,
            eps=job.eps,
            constraints=job.constraint_names,
            target_class=target_class,
            confidence=job.confidence,
            n=job.n,
            seed=job.seed,
            budget=job.budget,
            progress=progress,
            **job.attack_params,
        )
    except AdvkitError:
        raise
    except (ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    result.test_indices = order[result.indices]
    summary = result.summary()
    summary.update(data=data, n_requested=job.n, device=str(job.device))
    return summary, result


def write_transfer(out: Path, result: TransferResult, summary: dict) -> list[Path]:
    """transfer.csv (one row per pair), transfer_matrix.csv, transfer.png, masks.safetensors, summary.json, index.html."""
    from advkit.figures import save_figure
    from advkit.files import write_tensors
    from advkit.report import build_transfer_index

    table = out / "transfer.csv"
    result.table.to_csv(table, index=False, float_format="%.6g")
    matrix = out / "transfer_matrix.csv"
    result.matrix.to_csv(matrix, float_format="%.6g")
    figure = save_figure(transfer_figure(result), out / "transfer.png")
    masks = out / "masks.safetensors"
    tensors = {"test_index": result.indices if result.test_indices is None else result.test_indices, "y": result.y}
    for source, ok in result.source_success.items():
        tensors[f"source_success/{source}"] = ok
    for (source, target), pred in result.target_pred.items():
        tensors[f"target_pred/{source}/{target}"] = pred
        tensors[f"target_fooled/{source}/{target}"] = result.target_fooled[source, target]
    write_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(masks))
    summary_path = out / "summary.json"
    index = out / "index.html"
    paths = [table, matrix, figure, masks, summary_path, index]
    write_summary(summary_path, {**summary, "out": [str(p) for p in paths]})
    build_transfer_index(out)
    return paths


def format_summary(s: dict) -> str:
    """A short human summary: the setting, each source's white-box success, then every cell."""
    eps01 = "" if s["eps_01"] is None else f" ({s['eps_01']:.4g} on the 0-1 scale)"
    goal = "" if s["target_class"] is None else f" towards class {s['target_class']}"
    lines = [
        f"advkit transfer: {s['attack']}{goal}, eps {s['eps']:g}{eps01}, {s['constraints']} [{s['data']}]",
        f"  samples   {s['n_attacked']} test samples that every model classifies correctly "
        f"({s['n_common_correct']} of {s['n_candidates']} qualify); all sources attack the same ones",
    ]
    for name, a in s["source_attacks"].items():
        lines.append(
            f"  source    {name}: {a['n_success']}/{s['n_attacked']} fooled white-box ({s['criterion']}), "
            f"{a['backward_passes']} backward passes, {a['seconds']:.1f} s"
        )
    lines.append(
        "  transfer  share of the source's successful examples that the target misclassifies (95% Wilson interval)"
    )
    width = max(len(c["source"]) + len(c["target"]) for c in s["cells"]) + 4
    for c in s["cells"]:
        pair = f"{c['source']} -> {c['target']}"
        if c["transfer_rate"] is None:
            lines.append(
                f"    {pair:<{width}} {c['n_target_fooled']:>4}/{c['n_source_fooled']:<4} = n/a   (no successful example on the source)"
            )
            continue
        note = "  (white-box)" if c["white_box"] else ""
        if c.get("n_target_hit") is not None and not c["white_box"]:
            note += f"  {c['n_target_hit']} read as class {c['target_class']}"
        lines.append(
            f"    {pair:<{width}} {c['n_target_fooled']:>4}/{c['n_source_fooled']:<4} = {c['transfer_rate']:.2f}  "
            f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]{note}"
        )
    if s.get("out"):
        lines.append(f"  wrote     {', '.join(s['out'])}")
    return "\n".join(lines)


def target_list(names: tuple[str, ...]) -> list[str]:
    """Names in order, each once."""
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


__all__ = ["TransferJob", "format_summary", "load_models", "run_transfer_job", "target_list", "write_transfer"]
