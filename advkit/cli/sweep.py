"""``advkit sweep`` (success versus eps, resumable) and ``advkit report`` (rebuild a sweep's report folder)."""

from __future__ import annotations

from pathlib import Path

import click

from advkit.cli.options import (
    EPS,
    batch_size_option,
    check_confidence,
    claim_out,
    confidence_option,
    data_option,
    device_option,
    emit_json,
    executor_from_options,
    executor_options,
    gradient_from_params,
    gradient_option,
    json_option,
    parse_params,
    record_out,
    seed_option,
    torch_device,
)


def _eps_item(text: str) -> float:
    """One --eps value of a sweep; a bad one is named in the error."""
    try:
        return EPS.convert(text, None, None)
    except click.BadParameter as error:
        raise click.UsageError(f"--eps {text!r}: {error.message}") from None


@click.command("sweep")
@click.option(
    "--model",
    "model_refs",
    multiple=True,
    required=True,
    help="Model spec (repeatable): a registered name with options as name:key=value (bnn:straight_through=false), "
    "torchvision:NAME, timm:NAME, file.py:factory...",
)
@data_option
@click.option(
    "--attack", "attack_names", multiple=True, default=("pgd",), show_default=True, help="Attack (repeatable)."
)
@click.option(
    "--eps",
    "eps_values",
    multiple=True,
    required=True,
    help="Epsilons in model units, comma-separated or repeated (e.g. 0.1,0.2 or 8/255).",
)
@click.option(
    "--constraints",
    "constraint_names",
    default="linf",
    show_default=True,
    help="Comma-separated constraint sets; the model's box always applies.",
)
@click.option(
    "-n",
    "--n",
    "n",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Test samples (class-interleaved), the same for every model: each model's correctly classified ones are "
    "attacked, and robust accuracy counts the others as not robust.",
)
@seed_option
@click.option("--budget", type=click.IntRange(min=1), default=None, help="Maximum backward passes per sample and cell.")
@confidence_option
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    help="Attack parameter: attack.key=value, or key=value for every attack that has it.",
)
@click.option("--no-reuse", is_flag=True, help="Run every eps from scratch (no carry-over or warm start).")
@click.option(
    "--search",
    type=click.Choice(["ascending", "descending", "minimal"]),
    default="ascending",
    show_default=True,
    help="Order of the eps. descending: from the largest down, a sample not fooled at a larger eps counts as "
    "robust at smaller ones without being attacked (the table's 'inferred' column); faster. minimal: one fmn run "
    "(minimal norm, its rows first; its parameters with -p fmn.KEY=VALUE) gives success at every eps, then each attack "
    "runs from its own start only where fmn did not succeed: success at least the attack's own at every eps.",
)
@click.option("--no-checks", is_flag=True, help="Skip the sanity checks.")
@click.option(
    "--adaptive",
    is_flag=True,
    help="Rerun every model and attack whose flags carry a fix (BPDA for zero gradients, EOT for unstable "
    "predictions, more steps for incomplete optimization, a surrogate's gradient when transfer beats white-box) "
    "with that fix, into OUT/adaptive/; the report shows each cell before and after.",
)
@batch_size_option
@gradient_option
@executor_options
@device_option
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Report folder; a rerun with the same arguments resumes from its finished cells.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a previous sweep in --out (its cells and files go; other files are kept unless replaced).",
)
@json_option
def sweep_command(
    model_refs, data_spec, attack_names, eps_values, constraint_names, n, seed, budget, confidence, params, no_reuse,
    search, no_checks, adaptive, batch_size, gradient, executor, address, workers, gpus_per_worker, shard_size, device, out,
    overwrite, as_json,
):  # fmt: skip
    """Success rate versus eps for several models and attacks: table, plots, sanity flags, resumable."""
    from advkit import registry
    from advkit.studies.sweep import parse_eps_list, split_params, sweep_study
    from advkit.sweep import SweepSpec

    for name in attack_names:
        registry.get_attack(name)
    check_confidence(confidence)
    known = registry.constraints()  # built-ins and plugin sets
    unknown = [c.strip() for c in constraint_names.split(",") if c.strip() and c.strip() not in known]
    if unknown:
        raise click.UsageError(
            f"--constraints: unknown constraint {unknown[0]!r}; valid constraints: {', '.join(sorted(known))}"
        )
    torch_device(device)
    eps = parse_eps_list(eps_values, _eps_item)
    from advkit.sweep import MINIMAL_ATTACK

    if search == "minimal" and MINIMAL_ATTACK in attack_names:
        raise click.UsageError(
            f"--search minimal runs {MINIMAL_ATTACK} itself (its rows come first); do not pass --attack {MINIMAL_ATTACK} "
            f"(set its parameters with -p {MINIMAL_ATTACK}.KEY=VALUE)"
        )
    if adaptive and no_checks:
        raise click.UsageError("--adaptive reruns what the checks flag: it cannot go with --no-checks")
    gradient, _ = gradient_from_params(gradient, (), set())  # a bad spec is refused before any model is loaded
    cell_attacks = [*([MINIMAL_ATTACK] if search == "minimal" else []), *attack_names]
    attack_params = split_params(params, cell_attacks, parse_params)
    # every attack's parameters checked before any model is loaded or --out touched
    configured = {name: registry.get_attack(name).obj(**attack_params.get(name, {})) for name in cell_attacks}
    targeted = [name for name, attack in configured.items() if attack.requires_target]
    if targeted:
        raise click.UsageError(
            f"sweeps run untargeted attacks; {', '.join(targeted)} need a target class"
            + (
                " (apgd_targeted picks its own with -p apgd_targeted.targets=malt)"
                if "apgd_targeted" in targeted
                else ""
            )
        )
    from advkit.cli.options import LEGACY_DATA

    spec = SweepSpec(
        models=list(model_refs), attacks=list(attack_names), eps=eps, constraints=constraint_names, n=n, seed=seed,
        budget=budget, confidence=confidence, reuse=not no_reuse,
        data=LEGACY_DATA.get(data_spec, data_spec) if data_spec not in (None, "auto") else "auto", search=search,
        attack_params=attack_params, gradient=gradient,
    )  # fmt: skip
    runner = executor_from_options(executor, address, workers, gpus_per_worker, shard_size)
    summary = sweep_study(
        spec, out, device, checks=not no_checks, progress=not as_json, overwrite=overwrite, batch_size=batch_size,
        executor=runner, adaptive=adaptive,
    )  # fmt: skip
    table = summary.pop("table")
    if as_json:
        emit_json(summary)
        return
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    raised = [f for f in summary["flags"] if f["status"] == "flag"]
    click.echo(f"sanity checks: {len(raised)} flag(s)" + ("" if raised else " - none raised"))
    for f in raised:
        click.echo(f"  FLAG {f['check']} [{f['model']}{' ' + f['attack'] if f['attack'] else ''}]: {f['reason']}")
        if f.get("fix"):
            click.echo(f"       fix: {f['fix']['text']}")
    if "adaptive" in summary:
        _echo_adaptive(summary)
    from advkit.executors import describe_run

    where = describe_run(summary.get("executor"))
    if where:
        click.echo(where)
    click.echo(f"report: {out / 'index.html'}")


def _echo_adaptive(summary: dict) -> None:
    """Each adaptive rerun: its fix, success before -> after at every eps, the flags still raised."""
    reruns = summary["adaptive"]
    if not reruns:
        click.echo("adaptive: no raised flag carries a fix - nothing rerun")
        return
    for r in reruns:
        click.echo(f"adaptive rerun [{r['model']} {r['attack']}] with {r['fix_text']}:")
        for row in summary["adaptive_rows"]:
            if row["model"] == r["model"] and row["attack"] == r["attack"]:
                click.echo(
                    f"  eps {row['eps']:g}: success {row['success_before']:.3f} -> {row['success_after']:.3f}, "
                    f"robust accuracy {row['robust_before']:.3f} -> {row['robust_after']:.3f}"
                )
        still = [f for f in r["flags_after"] if f["status"] == "flag"]
        click.echo(
            "  flags after: none raised"
            if not still
            else "  flags after: " + "; ".join(f"{f['check']} ({f['reason']})" for f in still)
        )


@click.command("report")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--overwrite", is_flag=True, help="Rebuild even where the folder holds files advkit did not write (they are kept)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def report_command(folder, overwrite, as_json):
    """Rebuild the figures and index.html of a sweep's report folder from its results."""
    from advkit.errors import AdvkitError
    from advkit.report import build_index

    if not (folder / "results.csv").exists():
        raise click.UsageError(f"{folder} has no results.csv: not an advkit sweep report")
    # the sweep's files are the report's input: --overwrite lets it write next to foreign files, removing none
    claim_out(folder, "report", overwrite, continues=("sweep", "report"), rebuilds=True)
    try:
        paths = build_index(folder)
    except AdvkitError:
        raise
    except (ValueError, KeyError) as error:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise click.ClickException(
            f"cannot rebuild the report in {folder}: its results.csv, flags.json or config.json is not what "
            f"`advkit sweep` writes ({type(error).__name__}: {error})"
        ) from None
    except OSError as error:
        raise click.ClickException(f"cannot write the report in {folder}: {error}") from None
    record_out(folder, paths)
    if as_json:
        emit_json({"folder": str(folder), "out": [str(p) for p in paths]})
        return
    for path in paths:
        click.echo(f"wrote {path}")


COMMANDS = [sweep_command, report_command]
