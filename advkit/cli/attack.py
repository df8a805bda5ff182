"""``advkit attack``: any model, any data set, any attack and threat model; the re-checked success rate."""

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
    gradient_from_params,
    gradient_option,
    json_option,
    model_option,
    n_option,
    open_data,
    open_model,
    out_options,
    parse_params,
    seed_option,
    torch_device,
)


@click.command()
@model_option
@data_option
@click.option("--eps", type=EPS, default=None, help="Perturbation radius in the model's units (e.g. 0.1 or 8/255).")
@click.option(
    "--unbounded",
    is_flag=True,
    help="No radius: only the --constraints given and the model's box bound the perturbation (instead of --eps).",
)
@click.option(
    "--attack", "attack_name", default="untargeted", show_default=True, help="Registered attack (see `advkit attacks`)."
)
@click.option(
    "--constraints",
    "constraint_names",
    default="linf,box",
    show_default=True,
    help="Comma-separated constraint sets (see `advkit constraints`); the model's box always applies.",
)
@click.option("--target", default=None, help="Target class (index or name) for a targeted attack.")
@click.option("--label", default=None, help="Attack only samples of this true class (index or name).")
@n_option()
@seed_option
@click.option("--steps", type=int, default=None, help="Steps per restart (attacks that have steps).")
@click.option("--step-size", type=EPS, default=None, help="Step size in model units (default: the attack's rule).")
@click.option("--budget", type=click.IntRange(min=1), default=None, help="Maximum backward passes per sample.")
@confidence_option
@click.option(
    "-p", "--param", "params", multiple=True, help="Attack parameter key=value (repeatable; see `advkit attacks NAME`)."
)
@gradient_option
@batch_size_option
@device_option
@click.option(
    "--survival", is_flag=True, help="Also check whether the examples survive flip, crop, rotation, grayscale."
)
@click.option(
    "--indicators/--no-indicators",
    default=True,
    show_default=True,
    help="Check the run for Pintor et al.'s indicators of attack failure (silent success, zero gradients, unstable "
    "predictions, incomplete optimization, transfer failure, unconstrained failure) on the first 20 samples.",
)
@click.option(
    "--adaptive",
    is_flag=True,
    help="Rerun the attack with the fixes the raised indicators carry (BPDA, EOT, more steps...) and show both runs.",
)
@out_options("Write examples, summary and figure here.")
@json_option
def attack(
    model_spec: str,
    weights: Path | None,
    bounds: str | None,
    mean: str | None,
    std: str | None,
    input_shape: str | None,
    class_names: str | None,
    data_spec: str | None,
    eps: float | None,
    unbounded: bool,
    attack_name: str,
    constraint_names: str,
    target: str | None,
    label: str | None,
    n: int,
    seed: int,
    steps: int | None,
    step_size: float | None,
    budget: int | None,
    confidence: float | None,
    params: tuple[str, ...],
    gradient: str | None,
    batch_size: int | str,
    device: str,
    survival: bool,
    indicators: bool,
    adaptive: bool,
    out: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Attack the first n correctly classified samples of a data set and report the re-checked success rate."""
    from advkit import registry
    from advkit.studies.attack import attack_study

    if (eps is None) == (not unbounded):
        raise click.UsageError(
            "give --eps (the radius), or --unbounded for a run bounded only by --constraints and the model's box"
            if eps is None
            else "give --eps or --unbounded, not both"
        )
    check_confidence(confidence)
    torch_device(device)
    attack_cls = registry.get_attack(attack_name).obj
    if target is not None and not attack_cls.accepts_target:
        raise click.UsageError(
            f"--target: attack {attack_name!r} is untargeted (it ignores target classes); use a targeted attack, "
            "e.g. --attack targeted or apgd_targeted"
        )
    fields = {f.name for f in attack_cls.param_fields()}
    gradient, params = gradient_from_params(gradient, params, fields)
    attack_params = parse_params(
        params,
        attack_cls,
        **{"--steps": steps, "--step-size": step_size, "--confidence": confidence if "confidence" in fields else None},
    )
    attack_obj = attack_cls(**attack_params)  # declared types and ranges checked here, before any work
    claim_out(out, "attack", overwrite)
    model = open_model(
        model_spec, device, weights=weights, bounds=bounds, mean=mean, std=std, input_shape=input_shape,
        class_names=class_names,
    )  # fmt: skip
    dataset = open_data(data_spec, model, class_names=class_names)
    study = attack_study(
        model,
        dataset,
        attack_obj,
        eps=eps,
        constraints=[c.strip() for c in constraint_names.split(",") if c.strip()],
        n=n,
        label=label,
        target=target,
        confidence=confidence,
        budget=budget,
        seed=seed,
        survival=survival,
        batch_size=batch_size,
        gradient=gradient,
        indicators=indicators,
        adaptive=adaptive,
    )
    summary = study.summary()
    if out is not None:
        summary["out"] = [str(p) for p in study.write(out, overwrite=True)]  # claimed above, before any work
    if as_json:
        emit_json(summary)
    else:
        from advkit.studies.attack import format_summary

        click.echo(format_summary(summary))


COMMANDS = [attack]
