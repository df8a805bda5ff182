"""The studies on the command line: visualize, lookalike, universal, noise-study, fool. Each parses its options,
opens the model (and data), runs the study of :mod:`advkit.studies` and prints or writes what it returns."""

from __future__ import annotations

from pathlib import Path

import click

from advkit.cli.options import (
    EPS,
    STARTS,
    batch_size_option,
    check_confidence,
    claim_out,
    confidence_option,
    data_option,
    device_option,
    emit_json,
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


def _model(spec, device, weights, bounds, mean, std, input_shape, class_names):
    return open_model(
        spec, device, weights=weights, bounds=bounds, mean=mean, std=std, input_shape=input_shape,
        class_names=class_names,
    )  # fmt: skip


def _finish(study, out: Path | None, as_json: bool, print_text) -> None:
    """Write the report folder (claimed before any work), then print JSON or the text summary."""
    if out is not None:
        study.write(out, overwrite=True)  # claimed before any work; this run's files only
    summary = study.summary()
    if as_json:
        emit_json(summary)
        return
    print_text(summary)
    if summary.get("out"):
        click.echo(f"  wrote {', '.join(summary['out'])}")


@click.command()
@model_option
@click.option("--classes", default=None, help="Comma-separated class indices to visualize (default: every class).")
@click.option(
    "--start",
    type=click.Choice(STARTS),
    default="noise",
    show_default=True,
    help="noise: mid-range Gaussian noise (S6); blank: the zero image (S9); input: the zero image as given; random: a "
    "random point of the box.",
)
@click.option("--steps", type=int, default=200, show_default=True)
@click.option("--step-size", type=float, default=0.05, show_default=True)
@click.option("--step-rule", type=click.Choice(["std", "raw", "l2", "sign"]), default="std", show_default=True)
@click.option("--l2-penalty", type=float, default=0.0, show_default=True, help="lambda in J = C - lambda * ||x||^2.")
@click.option("--layer", default=None, help="Maximize this named layer's channel instead of a class logit.")
@click.option("--channel", type=int, default=None, help="Channel of --layer (default: the class index).")
@seed_option
@device_option
@out_options("Write images, figure and summary here.")
@json_option
def visualize(
    model_spec, weights, bounds, mean, std, input_shape, class_names, classes, start, steps, step_size, step_rule,
    l2_penalty, layer, channel, seed, device, out, overwrite, as_json,
):  # fmt: skip
    """One image per class by gradient ascent on its logit (or a layer's channel), with J over iterations."""
    from advkit.runner import make_attack
    from advkit.studies.visualize import visualize_study

    # the parameters checked before any work
    make_attack(
        "visualize", start=start, steps=steps, step_size=step_size, step_rule=step_rule, l2_penalty=l2_penalty,
        layer=layer, channel=channel,
    )  # fmt: skip
    try:
        wanted = None if classes is None else [int(c) for c in classes.split(",")]
    except ValueError:
        raise click.UsageError(f"--classes expects comma-separated class indices, got {classes!r}") from None
    torch_device(device)
    claim_out(out, "visualize", overwrite)
    model = _model(model_spec, device, weights, bounds, mean, std, input_shape, class_names)
    study = visualize_study(
        model, classes=wanted, start=start, steps=steps, step_size=step_size, step_rule=step_rule,
        l2_penalty=l2_penalty, layer=layer, channel=channel, seed=seed,
    )  # fmt: skip

    def text(s: dict) -> None:
        click.echo(
            f"advkit visualize on {s['model']}: {s['objective']}, start {start}, {steps} steps, lambda {l2_penalty:g}"
        )
        for c, p, conf, first, last in zip(
            s["classes"], s["predicted"], s["confidence"], s["objective_first"], s["objective_last"]
        ):
            click.echo(f"  class {c}: predicted {p} (p={conf:.2f}), J {first:.2f} -> {last:.2f}")

    _finish(study, out, as_json, text)


@click.command("lookalike")
@model_option
@data_option
@click.option(
    "--shift",
    type=int,
    default=3,
    show_default=True,
    help="Each class c's reference image is pushed towards class (c + shift) mod classes (3: a 2 read as 5).",
)
@click.option("--beta", type=float, default=1e-4, show_default=True, help="Weight of mse(x, reference) in C.")
@click.option(
    "--start",
    type=click.Choice(STARTS),
    default="input",
    show_default=True,
    help="input: the reference image; noise: mid-range Gaussian noise; blank: the zero image; random: a random point.",
)
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--step-size", type=float, default=0.02, show_default=True)
@seed_option
@batch_size_option
@device_option
@out_options("Write images, figure and summary here.")
@json_option
def lookalike_command(
    model_spec, weights, bounds, mean, std, input_shape, class_names, data_spec, shift, beta, start, steps, step_size,
    seed, batch_size, device, out, overwrite, as_json,
):  # fmt: skip
    """One look-alike per class: looks like class c, read as class c + shift; C over iterations (S7)."""
    from advkit.runner import make_attack
    from advkit.studies.visualize import lookalike_study

    make_attack("lookalike", beta=beta, steps=steps, step_size=step_size, start=start)  # checked before any work
    torch_device(device)
    claim_out(out, "lookalike", overwrite)
    model = _model(model_spec, device, weights, bounds, mean, std, input_shape, class_names)
    dataset = open_data(data_spec, model, class_names=class_names)
    study = lookalike_study(
        model, dataset, shift=shift, beta=beta, start=start, steps=steps, step_size=step_size, seed=seed,
        batch_size=batch_size,
    )  # fmt: skip

    def text(s: dict) -> None:
        click.echo(f"advkit lookalike on {s['model']}: beta {beta:g}, from {start}, {steps} steps [{s['data']}]")
        for c, t, p, conf, m in zip(
            s["reference_classes"], s["targets"], s["predicted"], s["confidence"], s["mse_to_reference"]
        ):
            click.echo(f"  looks like {c}, target {t}: predicted {p} (p={conf:.2f}), mse to reference {m:.4f}")

    _finish(study, out, as_json, text)


@click.command("universal")
@model_option
@data_option
@click.option(
    "--train-data",
    "train_spec",
    default=None,
    help="Data spec of the images the perturbation is optimized on (default: --data's train split).",
)
@click.option(
    "--eps", type=EPS, required=True, help="L-inf bound on the shared perturbation, model units (e.g. 0.5 or 64/255)."
)
@click.option("--target", default=None, help="Target class (index or name); default untargeted.")
@click.option(
    "--train",
    "n_train",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Correctly classified training images the perturbation is optimized on (class-interleaved).",
)
@n_option(default=None, help="Correctly classified held-out test images the fooling rate is measured on "
          "(class-interleaved) [default: all].")  # fmt: skip
@click.option("--steps", type=int, default=100, show_default=True)
@click.option(
    "--minibatch", type=click.IntRange(min=0), default=250, show_default=True, help="Images per step (0: all at once)."
)
@seed_option
@batch_size_option
@device_option
@out_options("Write the figure, tensor and summary here.")
@json_option
def universal_command(
    model_spec, weights, bounds, mean, std, input_shape, class_names, data_spec, train_spec, eps, target, n_train, n,
    steps, minibatch, seed, batch_size, device, out, overwrite, as_json,
):  # fmt: skip
    """One perturbation for every image: optimized on training images, fooling rate on the held-out test split."""
    from advkit.runner import make_attack
    from advkit.studies.universal import universal_perturbation_study

    make_attack("universal", steps=steps, minibatch=minibatch or None)  # checked before any work
    torch_device(device)
    claim_out(out, "universal", overwrite)
    model = _model(model_spec, device, weights, bounds, mean, std, input_shape, class_names)
    test = open_data(data_spec, model, "test", class_names=class_names)
    train = open_data(train_spec or data_spec, model, "train", class_names=class_names)
    study = universal_perturbation_study(
        model, train, test, eps=eps, target=target, n_train=n_train, n=n, steps=steps, minibatch=minibatch or None,
        seed=seed, batch_size=batch_size,
    )  # fmt: skip

    def text(s: dict) -> None:
        goal = "untargeted" if s["target"] is None else f"towards {model.class_names[s['target']]}"
        click.echo(
            f"advkit universal on {s['model']}: one L-inf {eps:g} perturbation, {goal}, {steps} steps [{s['data']}]"
        )
        click.echo(
            f"  fooling rate: {s['train_fooling_rate']:.2f} on {s['n_train']} training images, "
            f"{s['heldout_fooling_rate']:.2f} on {s['n_heldout']} held-out test images"
        )
        click.echo(
            f"  passes: {s['forward_passes']} forward, {s['backward_passes']} backward "
            f"(at most {s['max_backward_per_sample']} per image), {s['seconds']:.1f} s"
        )

    _finish(study, out, as_json, text)


@click.command("noise-study")
@model_option
@data_option
@click.option("--eps", type=EPS, default=0.3, show_default=True, help="L-inf bound on the noise, model units.")
@click.option("--steps", type=int, default=100, show_default=True)
@seed_option
@batch_size_option
@device_option
@out_options("Write the figure and tensors here.")
@json_option
def noise_study_command(
    model_spec, weights, bounds, mean, std, input_shape, class_names, data_spec, eps, steps, seed, batch_size, device,
    out, overwrite, as_json,
):  # fmt: skip
    """Noise per target class on one digit, and the 10 x 10 table of every noise on 10 test digits (S8)."""
    from advkit.runner import make_attack
    from advkit.studies.noise import noise_study

    make_attack("noise", steps=steps)  # checked before any work
    torch_device(device)
    claim_out(out, "noise-study", overwrite)
    model = _model(model_spec, device, weights, bounds, mean, std, input_shape, class_names)
    dataset = open_data(data_spec, model, class_names=class_names)
    study = noise_study(model, dataset, eps=eps, steps=steps, seed=seed, batch_size=batch_size)

    def text(s: dict) -> None:
        click.echo(
            f"advkit noise-study on {s['model']}: L-inf {eps:g}, base digit {s['base_label']}, {steps} steps [{s['data']}]"
        )
        click.echo("rows: noise towards t; columns: test digits of classes " + " ".join(map(str, s["fixed_labels"])))
        for t, row in enumerate(s["table"]):
            reached = s["targets_reached"].get(t)
            mark = "-" if reached is None else ("reached" if reached else "missed")
            click.echo(f"  {t}: " + " ".join(map(str, row)) + f"   ({mark} on the base digit)")

    _finish(study, out, as_json, text)


@click.command("fool")
@click.option(
    "--model",
    "model_spec",
    default="efficientnet_lite0",
    show_default=True,
    help="An ImageNet model spec (see `advkit models`); efficientnet_lite0 works offline.",
)
@click.option(
    "--image",
    "images",
    multiple=True,
    help="JPEG/PNG path or sample photo name (repeatable; default: chelsea, coffee, rocket, motorcycle). "
    "Samples: chelsea, coffee, rocket, motorcycle, camera, grace_hopper.",
)
@click.option("--target", default="space shuttle", show_default=True, help="Target class: index (812) or name.")
@click.option("--eps", type=EPS, default="2/255", show_default=True, help="L-inf bound on [0, 1] pixels, e.g. 2/255.")
@click.option(
    "--attack", "attack_name", default="targeted", show_default=True, help="A targeted attack (see `advkit attacks`)."
)
@click.option("--steps", type=int, default=100, show_default=True, help="Maximum steps per photo.")
@click.option("--step-size", type=EPS, default=None, help="Step size (default eps/10).")
@confidence_option
@seed_option
@click.option("--survival/--no-survival", default=True, show_default=True, help="Run the S12 transformation study.")
@click.option(
    "--eot",
    default=None,
    metavar="TRANSFORMS",
    help="Attack through EOT over these transforms, e.g. flip,crop,rotate,grayscale (also identity, noise, jpeg; "
    "options mix=, angle=, crop_area=, sigma=, seed=; default: one transform per draw (mix=1), rotations in +-45 "
    "degrees, crops keeping 64-100% of the area): the attack differentiates the logits averaged over --eot-samples "
    "random draws and stops once that average gives the target --eot-confidence; the same attack without EOT runs "
    "first, so survival is shown before and after.",
)
@click.option(
    "--eot-samples",
    type=int,
    default=None,
    help="EOT draws per step (K forward and K backward passes per step) [default: 8].",
)
@click.option(
    "--eot-confidence",
    type=float,
    default=None,
    help="With --eot: a photo's attack stops once the EOT-averaged prediction gives the target this probability "
    "(success is still judged on the untransformed photo at --confidence) [default: 0.99].",
)
@device_option
@out_options(
    "Write fool.png, survival.png, survival.csv and summary.json here (with --eot also survival_before_eot.*)."
)
@click.option(
    "--figure-format",
    type=click.Choice(["png", "jpg"]),
    default="png",
    show_default=True,
    help="Format of the figures (jpg: a fraction of the size).",
)
@json_option
def fool_command(
    model_spec, images, target, eps, attack_name, steps, step_size, confidence, seed, survival, eot, eot_samples,
    eot_confidence, device, out, overwrite, figure_format, as_json,
):  # fmt: skip
    """S11/S12: make photos read as a chosen ImageNet class within an L-inf bound; test survival under transforms.

    The same path as `advkit attack --data imagenet-samples --attack targeted --target ...`, plus the 4 x 3 figure of
    each photo before and after and the survival study."""
    from advkit import registry
    from advkit.errors import ParameterError
    from advkit.images import DEFAULT_SAMPLES
    from advkit.studies.fool import EOT_CONFIDENCE, eot_spec, fool_study, format_summary

    attack_cls = registry.get_attack(attack_name).obj
    if not attack_cls.targeted:
        raise click.UsageError(f"--attack {attack_name!r} is not a targeted attack")
    if not 0 < eps <= 1:
        raise click.UsageError(f"--eps must lie in (0, 1] on the 0-1 pixel scale, got {eps:g}")
    check_confidence(confidence)
    attack_cls(**parse_params((), attack_cls, **{"--steps": steps, "--step-size": step_size}))  # checked first
    for name, value in (("--eot-samples", eot_samples), ("--eot-confidence", eot_confidence)):
        if eot is None and value is not None:
            raise click.UsageError(f"{name} needs --eot TRANSFORMS")
    eot_samples = 8 if eot_samples is None else eot_samples
    eot_confidence = EOT_CONFIDENCE if eot_confidence is None else eot_confidence
    if not 0 <= eot_confidence < 1:
        raise click.UsageError(f"--eot-confidence must lie in [0, 1), got {eot_confidence:g}")
    if eot is not None:
        try:
            eot_spec(eot, eot_samples)
        except ParameterError as error:
            raise click.UsageError(f"--eot {eot!r} --eot-samples {eot_samples}: {error}") from None
    torch_device(device)
    claim_out(out, "fool", overwrite)
    model = open_model(model_spec, device)
    if len(model.input_shape) != 3 or model.input_shape[0] != 3:
        raise click.UsageError(f"model {model_spec!r} takes inputs {model.input_shape}, not RGB photos (3, H, W)")
    progress = (lambda line: click.echo(line, err=True)) if not as_json else None
    study = fool_study(
        model, list(images) or list(DEFAULT_SAMPLES), target=target, eps=eps, attack=attack_name, steps=steps,
        step_size=step_size, confidence=confidence, seed=seed, survival=survival, eot=eot, eot_samples=eot_samples,
        eot_confidence=eot_confidence, figure_format=figure_format, progress=progress,
    )  # fmt: skip
    if out is not None:
        study.write(out, overwrite=True)  # claimed before any work
    summary = study.summary()
    if as_json:
        emit_json(summary)
    else:
        click.echo(format_summary(summary))


COMMANDS = [visualize, lookalike_command, universal_command, noise_study_command, fool_command]
