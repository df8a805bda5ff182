"""``advkit transfer``: attack each source model, feed its successful examples to every model --to, the matrix."""

from __future__ import annotations

import sys

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
    n_option,
    open_data,
    open_model,
    out_options,
    parse_params,
    seed_option,
    torch_device,
)


@click.command("transfer")
@click.option(
    "--source",
    "source_specs",
    multiple=True,
    required=True,
    help="Model attacked white-box (a model spec; repeatable).",
)
@click.option(
    "--to",
    "target_specs",
    multiple=True,
    help="Model fed the sources' adversarial examples (a model spec; repeatable; default: the sources).",
)
@data_option
@click.option(
    "--attack", "attack_name", default="untargeted", show_default=True, help="Registered attack (see `advkit attacks`)."
)
@click.option("--eps", type=EPS, required=True, help="Perturbation radius in the models' units (e.g. 0.1 or 8/255).")
@click.option(
    "--constraints",
    "constraint_names",
    default="linf,box",
    show_default=True,
    help="Comma-separated constraint sets (see `advkit constraints`); the model's box always applies.",
)
@click.option("--target", default=None, help="Target class (index or name) for a targeted attack.")
@n_option()
@seed_option
@click.option("--budget", type=click.IntRange(min=1), default=None, help="Maximum backward passes per sample.")
@confidence_option
@click.option("-p", "--param", "params", multiple=True, help="Attack parameter key=value (repeatable).")
@gradient_option
@batch_size_option
@executor_options
@device_option
@out_options("Write transfer.csv, transfer_matrix.csv, transfer.png, masks.safetensors and summary.json here.")
@json_option
def transfer_command(
    source_specs, target_specs, data_spec, attack_name, eps, constraint_names, target, n, seed, budget, confidence,
    params, gradient, batch_size, executor, address, workers, gpus_per_worker, shard_size, device, out, overwrite,
    as_json,
):  # fmt: skip
    """Attack each source, feed its successful examples to every target; matrix of the share that still fools (S5)."""
    from advkit import registry
    from advkit.studies.transfer import format_summary, target_list, transfer_study

    check_confidence(confidence)
    torch_device(device)
    runner = executor_from_options(executor, address, workers, gpus_per_worker, shard_size)
    attack_cls = registry.get_attack(attack_name).obj
    if target is not None and not attack_cls.accepts_target:
        raise click.UsageError(f"--target: attack {attack_name!r} is untargeted (it ignores target classes)")
    fields = {f.name for f in attack_cls.param_fields()}
    gradient, params = gradient_from_params(gradient, params, fields)  # also -p gradient=..., checked before any load
    attack_params = parse_params(params, attack_cls)
    attack_cls(**attack_params)  # declared types and ranges checked before any work
    claim_out(out, "transfer", overwrite)
    loaded: dict[str, object] = {}
    for spec in [*target_list(source_specs), *target_list(target_specs)]:
        if spec not in loaded:  # a model both source and target is one adapter
            loaded[spec] = open_model(spec, device)
    sources = [loaded[s] for s in target_list(source_specs)]
    targets = [loaded[s] for s in target_list(target_specs)] or None
    from advkit.studies.transfer import check_compatible

    try:
        check_compatible(list(loaded.values()))
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    dataset = open_data(data_spec, sources[0])
    progress = (lambda line: click.echo(line, err=True)) if sys.stderr.isatty() else None
    study = transfer_study(
        sources, targets, dataset, attack_name, eps=eps,
        constraints=[c.strip() for c in constraint_names.split(",") if c.strip()], target=target,
        confidence=confidence, n=n, seed=seed, budget=budget, progress=progress, batch_size=batch_size,
        attack_params=attack_params, executor=runner, gradient=gradient,
    )  # fmt: skip
    if out is not None:
        study.write(out, overwrite=True)  # claimed before any work
    summary = study.summary()
    if as_json:
        emit_json(summary)
    else:
        click.echo(format_summary(summary))


COMMANDS = [transfer_command]
