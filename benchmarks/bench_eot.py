"""EOT speed: K draws stacked into one model call against K calls of one draw each (the loop advkit had before).

Run:  python benchmarks/bench_eot.py [--model efficientnet_lite0] [--image coffee] [--samples 8] [--n 1]
          [--transforms flip,crop,rotate,grayscale] [--rows 2,4,64] [--repeats 5] [--threads N]
      python benchmarks/bench_eot.py --model cnn --transforms flip,crop,rotate --n 1   # noise digits

One EOT call with gradient (the cost of one attack step): the logits averaged over ``--samples`` draws of the
transforms, differentiated to the input. ``stacked`` is ``advkit.gradients`` as it is (the draws of up to
``EOT_ROWS`` rows in one forward and one backward pass); ``loop`` calls the model once per draw with the same
draws. Both make K forward and K backward passes per sample (checked on the pass counter) and the same gradient
(checked to 1e-4 relative). Prints the median seconds per call of ``--repeats`` and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import add_threads_argument, machine_line  # benchmarks/machine.py: threads and load next to every figure

from advkit import gradients
from advkit.gradients import EOT_TRANSFORMS, _row_uniforms, with_gradient
from advkit.images import load_image
from advkit.models import load_model


def loop_eot(wrapped, x: torch.Tensor) -> torch.Tensor:
    """The per-draw loop: one model call per draw, the same draws as advkit's stacked calls."""
    e = wrapped.estimator
    total = None
    for k in range(e.samples):
        point = x
        for t in e.transforms:
            fn, count, _ = EOT_TRANSFORMS[t]
            point = fn(
                point, _row_uniforms(x, e.seed + 1000 * e.transforms.index(t), k, count), wrapped.bounds, e.options
            )
        logits = wrapped.base(point)
        total = logits if total is None else total + logits
    return total / e.samples


def one_call(call, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    point = x.clone().requires_grad_(True)
    start = time.perf_counter()
    (grad,) = torch.autograd.grad(call(point).logsumexp(1).sum(), point)
    return time.perf_counter() - start, grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image", default="coffee")
    parser.add_argument("--transforms", default="flip,crop,rotate,grayscale")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--n", type=int, default=1, help="photos per call (the same photo, slightly brightened)")
    parser.add_argument("--rows", default="", help="also stack at most this many rows per call, e.g. 2,8,64")
    parser.add_argument("--repeats", type=int, default=5)
    add_threads_argument(parser)
    args = parser.parse_args()
    print(machine_line(args.threads))
    model = load_model(args.model)
    model.module.eval()
    if len(model.input_shape) == 3 and model.input_shape[0] == 3:  # a photo model: --image, slightly brightened
        x = load_image(args.image, model)
        x = torch.cat([(x + 0.002 * i).clamp(0, 1) for i in range(args.n)])
    else:  # e.g. cnn (give --transforms flip,crop,rotate): uniform noise in the model's bounds
        low, high = model.bounds
        x = low + (high - low) * torch.rand(args.n, *model.input_shape, generator=torch.Generator().manual_seed(0))
    wrapped = with_gradient(model, f"eot:{args.transforms},samples={args.samples}")
    default = (gradients.EOT_ROWS, gradients.EOT_VALUES)
    variants = {"loop": None, "advkit's stacking": default}
    variants.update({f"stacked, {r} rows": (int(r), 1 << 62) for r in filter(None, args.rows.split(","))})
    times: dict[str, list[float]] = {name: [] for name in variants}
    grads: dict[str, torch.Tensor] = {}
    for repeat in range(args.repeats + 1):  # interleaved, so a change in the machine's load hits every variant
        for name, rows in variants.items():
            before = model.counter.snapshot()
            if rows is None:
                seconds, grads[name] = one_call(lambda p: loop_eot(wrapped, p), x)
            else:
                gradients.EOT_ROWS, gradients.EOT_VALUES = rows
                seconds, grads[name] = one_call(wrapped, x)
            passes = tuple(now - then for now, then in zip(model.counter.snapshot(), before))
            assert passes == (args.samples * args.n,) * 2, (name, passes)  # K forward and K backward per photo
            if repeat:  # the first round warms up
                times[name].append(seconds)
    loop_s = statistics.median(times["loop"])
    print(f"{args.samples} draws x {args.n} photo(s) per EOT call, median of {args.repeats} interleaved calls:")
    for name, values in times.items():
        error = float((grads[name] - grads["loop"]).norm() / grads["loop"].norm())
        assert error < 1e-4, (name, error)
        seconds = statistics.median(values)
        print(
            f"  {name:<22} {seconds:.3f} s per call (min {min(values):.3f}), {loop_s / seconds:.2f}x the loop's speed, "
            f"gradient within {error:.0e} of the loop's"
        )


if __name__ == "__main__":
    main()
