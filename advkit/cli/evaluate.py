"""``advkit evaluate``: robust accuracy under advkit's attack cascade (see :mod:`advkit.evaluation`)."""

from __future__ import annotations

from pathlib import Path

import click

from advkit.cli.options import (
    EPS,
    batch_size_option,
    claim_out,
    data_option,
    device_option,
    emit_json,
    executor_from_options,
    executor_options,
    gradient_from_params,
    gradient_option,
    json_option,
    model_option,
    open_data,
    open_model,
    record_out,
    seed_option,
    torch_device,
)


@click.command("evaluate")
@model_option
@data_option
@click.option("--eps", type=EPS, required=True, help="Radius in model units (e.g. 0.3 or 8/255).")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option(
    "--version",
    type=click.Choice(["standard", "fast", "plus", "rand"]),
    default="standard",
    show_default=True,
    help="standard: APGD-CE, APGD-T on MALT's top 4 targets (75 steps each, the 4 at once), Square (200 queries); "
    "fast: APGD-CE, APGD-T on MALT's top target; plus: standard's gradient stages, FAB-T on 3 targets, Square at "
    "5,000 queries; rand (for randomized models): APGD-CE and APGD-DLR with EOT gradients, a sample robust only if "
    "it survives k re-evaluations.",
)
@click.option(
    "--eot-samples", type=click.IntRange(min=1, max=1024), default=None,
    help="With --version rand: EOT draws per gradient (K forward and K backward passes per step)  [default: 20]",
)  # fmt: skip
@click.option(
    "--reevaluations", type=click.IntRange(min=1, max=1000), default=None,
    help="With --version rand: forward passes per point; robust only if correct in all of them  [default: 10]",
)  # fmt: skip
@click.option(
    "-n", "--n", "n", type=click.IntRange(min=1), default=100, show_default=True,
    help="Test samples (class-interleaved); misclassified ones count as not robust.",
)  # fmt: skip
@seed_option
@click.option(
    "--budget", type=click.IntRange(min=1), default=None,
    help="Backward passes per sample over the whole cascade; each stage gets what the earlier ones left.",
)  # fmt: skip
@gradient_option
@click.option(
    "--indicators/--no-indicators", default=True, show_default=True,
    help="Probe the first stage on samples left robust for Pintor et al.'s indicators of attack failure.",
)  # fmt: skip
@click.option(
    "--adaptive", is_flag=True,
    help="Rerun the evaluation (into OUT/adaptive) with the fixes the raised checks and indicators carry; a sample "
    "either run broke is not robust.",
)  # fmt: skip
@batch_size_option
@executor_options
@device_option
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Report folder (samples.csv, stages.csv, summary.json, robust_accuracy.png, index.html); a rerun resumes "
    "from its finished stages.",
)
@click.option("--overwrite", is_flag=True, help="Replace a previous run's files in --out.")
@json_option
def evaluate_command(
    model_spec, weights, bounds, mean, std, input_shape, class_names, data_spec, eps, norm, version, eot_samples,
    reevaluations, n, seed, budget, gradient, indicators, adaptive, batch_size, executor, address, workers, gpus_per_worker, shard_size, device, out, overwrite,
    as_json,
):  # fmt: skip
    """Robust accuracy under a cascade of attacks, each on the samples still robust; resumable."""
    from advkit.datasets import class_interleaved_order
    from advkit.evaluation import cascade, evaluate
    from advkit.evaluation_report import write_evaluation_report

    cascade(version, norm)  # every stage's attack registered, before any model is loaded
    if version != "rand" and (eot_samples is not None or reevaluations is not None):
        given = "--eot-samples" if eot_samples is not None else "--reevaluations"
        raise click.UsageError(f"{given} belongs to --version rand (randomized models), not --version {version}")
    if version == "rand" and gradient is not None:
        raise click.UsageError(
            "--version rand differentiates through eot:identity,samples=K (set K with --eot-samples); drop --gradient"
        )
    gradient, _ = gradient_from_params(gradient, (), set())  # a bad spec is refused before any model is loaded
    runner = executor_from_options(executor, address, workers, gpus_per_worker, shard_size)
    dev = torch_device(device)
    model = open_model(
        model_spec, dev, weights=weights, bounds=bounds, mean=mean, std=std, input_shape=input_shape,
        class_names=class_names,
    )  # fmt: skip
    dataset = open_data(data_spec, model)
    if gradient is not None:  # every stage differentiates the model through it; the checks use the model itself
        from advkit.errors import ParameterError
        from advkit.gradients import with_gradient

        try:
            model = with_gradient(model, gradient, dev)
        except ParameterError as error:
            raise click.UsageError(str(error)) from None
    claim_out(out, "evaluate", overwrite, continues=("evaluate",))
    # owned from the start: a rerun after kill -9 resumes them
    record_out(out, [], folders=("stages", "shards", "adaptive"))
    index = class_interleaved_order(dataset.labels)[:n]
    x, y = dataset.take(index)
    result = evaluate(
        model, x.to(dev), y.to(dev), eps=eps, norm=norm, version=version, seed=seed, out=out, batch_size=batch_size,
        budget=budget, progress=not as_json, executor=runner, eot_samples=eot_samples, reevaluations=reevaluations,
        indicators=indicators, adaptive=adaptive,
    )  # fmt: skip
    summary = result.summary()
    if out is not None:
        paths = write_evaluation_report(result, out)
        record_out(out, paths, folders=("stages", "shards", "adaptive"))
    if as_json:
        emit_json(summary)
        return
    low, high = summary["robust_accuracy_95ci"]
    click.echo(
        f"{model.name}: robust accuracy {100 * summary['robust_accuracy']:.1f}% (95% CI {100 * low:.1f}-"
        f"{100 * high:.1f}%) at {norm} eps {eps:g}, clean {100 * summary['clean_accuracy']:.1f}%, n={result.n}, "
        f"{summary['seconds']:.1f} s"
    )
    click.echo(f"  evaluated {summary['evaluated']}")
    if result.randomized and result.reevaluations is None:
        click.echo(
            "  WARNING: the model's outputs are random and this number counts one draw per point: it may be too "
            "high; rerun with --version rand",
            err=True,
        )
    for c in summary["checks"]:
        click.echo(f"  {'FLAG' if c['status'] == 'flag' else 'ok  '} {c['check']}: {c['reason']}")
        if c.get("fix"):
            click.echo(f"       fix (--adaptive): {c['fix']['text']}")
    from advkit.indicators import format_indicators

    if summary.get("indicators") is not None:
        click.echo("\n".join(format_indicators(summary["indicators"], "the robust accuracy may be too high")))
    if "adaptive" in summary:
        a = summary["adaptive"]
        if not a["rerun"]:
            click.echo("  adaptive: no raised flag carries a fix - nothing rerun")
        else:
            low, high = a["robust_accuracy_both_95ci"]
            click.echo(
                f"  adaptive rerun with {a['fix_text']}: robust accuracy {100 * a['robust_accuracy_after']:.1f}%; "
                f"both runs together {100 * a['robust_accuracy_both']:.1f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%)"
                f", {a['seconds_after']:.1f} s"
            )
            still = [f for f in [*a["checks_after"], *(a["indicators_after"] or [])] if f["status"] == "flag"]
            click.echo("    after the rerun: " + ("nothing raised" if not still else
                       "; ".join(f["check"] for f in still) + " still raised"))  # fmt: skip
    from advkit.executors import describe_run

    where = describe_run(summary.get("executor"))
    if where:
        click.echo(where)
    if out is not None:
        click.echo(f"report: {out / 'index.html'}")


COMMANDS = [evaluate_command]
