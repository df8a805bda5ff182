"""``advkit transfer``: attack each source model, feed its successful examples to every target, write the matrix."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from advkit.errors import AdvkitError, AttackError
from advkit.executors import describe_run
from advkit.models import ModelAdapter
from advkit.provenance import write_summary
from advkit.studies import StudyResult
from advkit.transfer import TransferResult, check_compatible, transfer_figure, transfer_matrix


def transfer_study(
    sources: list[ModelAdapter],
    targets: list[ModelAdapter] | None,
    dataset,
    attack: str,
    *,
    eps: float,
    constraints: list[str] | str = "linf,box",
    target: int | str | None = None,
    confidence: float | None = None,
    n: int = 100,
    seed: int = 0,
    budget: int | None = None,
    progress: Callable[[str], None] | None = None,
    batch_size: int | str = "auto",
    attack_params: Mapping[str, Any] | None = None,
    executor: Any = None,
    gradient: str | None = None,
    **more_params: Any,
) -> StudyResult:
    """Attack each source on the first ``n`` samples of ``dataset`` (class-interleaved) every model classifies
    correctly, and feed its successful examples to every target (``targets=None``: the sources); the matrix of the
    share that still fools. Candidates are read and checked ``batch_size`` at a time, only until ``n`` are found; the sources are
    attacked in chunks of ``batch_size`` (``"auto"``: see :mod:`advkit.batching`). ``executor``: see
    :func:`advkit.transfer.transfer_matrix` (None: in this process)."""
    from advkit import registry
    from advkit.classes import resolve_class
    from advkit.constraints import build_constraints
    from advkit.errors import ParameterError
    from advkit.validation import check_eps_in_range

    models = list({id(m): m for m in [*sources, *(targets or [])]}.values())
    try:
        check_compatible(models)
    except ValueError as error:
        raise ParameterError(str(error)) from None
    first = sources[0]
    attack_cls = registry.get_attack(attack).obj
    attack_params = {**(attack_params or {}), **more_params}  # a dict, so a parameter may be named like ours
    # its parameters decide whether it needs a target (targets=malt picks its own)
    configured = attack_cls(**attack_params)
    target_class = None if target is None else resolve_class(first.class_names, target, what="--target")
    if configured.requires_target and target_class is None:
        raise ParameterError(f"attack {attack!r} is targeted: give --target")
    if target_class is not None and attack_cls.targeted and not configured.requires_target:
        raise ParameterError(f"--target: attack {attack!r} picks its own targets with these parameters")
    if target_class is not None and not attack_cls.accepts_target:
        raise ParameterError(f"--target: attack {attack!r} is untargeted (it ignores target classes)")
    constraint = build_constraints(constraints, eps=eps, bounds=first.bounds, registry=registry.constraints())
    check_eps_in_range(first, constraint)  # the same rule as attack and sweep, before any data is read
    chosen, x_sel, y_sel = dataset.select(models, n, exclude_class=target_class, batch_size=batch_size)
    try:
        result = transfer_matrix(
            sources,
            targets,
            x_sel,
            y_sel,
            attack=attack,
            eps=eps,
            constraints=constraints,
            target_class=target_class,
            confidence=confidence,
            n=n,
            seed=seed,
            budget=budget,
            progress=progress,
            batch_size=batch_size,
            attack_params=attack_params,
            executor=executor,
            gradient=gradient,
        )
    except AdvkitError:
        raise
    except (ValueError, RuntimeError) as error:
        raise AttackError(str(error)) from None
    result.test_indices = chosen[result.indices.cpu()]
    labels = dataset.labels
    result.n_candidates = int(len(labels) if target_class is None else int((labels != target_class).sum()))
    result.n_common_correct = None  # only the first n were looked for
    summary = result.summary()
    summary.update(data=dataset.source or dataset.name, n_requested=n, device=str(first.device))
    return StudyResult("transfer", summary, lambda out: write_transfer(out, result, summary), {"result": result})


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
        + (
            f"({s['n_common_correct']} of {s['n_candidates']} qualify)"
            if s.get("n_common_correct") is not None
            else f"(the first in class-interleaved order of {s['n_candidates']})"
        )
        + "; all sources attack the same ones",
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
    where = describe_run(s.get("executor"))
    if where:
        lines.append(f"  ran on    {where}")
    if s.get("out"):
        lines.append(f"  wrote     {', '.join(s['out'])}")
    return "\n".join(lines)


def target_list(names: tuple[str, ...]) -> list[str]:
    """Names in order, each once."""
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


__all__ = ["format_summary", "target_list", "transfer_study", "write_transfer"]
