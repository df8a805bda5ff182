"""PGD through advkit versus a plain PyTorch loop, and what early stopping saves.

Run:  python benchmarks/bench_pgd_overhead.py [--model cnn] [--n 256] [--steps 50] [--repeats 5]

Part 1 times advkit's ``pgd`` (fixed steps, zero start so both do identical work, the whole batch at once) against a
hand-written loop doing the same steps on the same model and batch (in the layout advkit's runs use,
:mod:`advkit.layout`, so that what differs is advkit's own cost), interleaved, and prints
the median times, their ratio and both pass counts. Part 2 runs ``untargeted`` (S2 settings,
bnn, eps 0.1) and prints the backward passes early stopping saved against its budget.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from machine import add_threads_argument, machine_line  # benchmarks/machine.py: threads and load next to every figure

from advkit.data import load_mnist
from advkit.datasets import load_dataset
from advkit.layout import layout_for_run
from advkit.models import load_model
from advkit.runner import run_attack


def plain_pgd(module, x, y, eps, alpha, steps, low, high):
    """The ceiling: a raw PGD loop (zero start, sign steps, L-inf and box projection)."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        x_adv = (x + delta).requires_grad_(True)
        loss = F.cross_entropy(module(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(low, high) - x
    return x + delta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    add_threads_argument(parser)
    args = parser.parse_args()
    print(machine_line(args.threads))

    model = load_model(args.model, device=args.device)
    data = load_mnist("test")
    x, y = data.x[: args.n].to(args.device), data.y[: args.n].to(args.device)
    alpha = 2.5 * args.eps / args.steps
    low, high = model.bounds
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def time_it(fn):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - start, out

    def run_advkit():
        return run_attack(
            model, "pgd", x, y, eps=args.eps, steps=args.steps, step_size=alpha, random_start=False, batch_size=args.n
        )  # the whole batch, as the plain loop: this measures the engine's overhead (chunking: bench_scaling.py)

    def run_plain():
        model.module.eval()
        with layout_for_run(model, x):  # the layout advkit's runs use (channels-last for a conv net on a CPU)
            return plain_pgd(model.module, x, y, args.eps, alpha, args.steps, low, high)

    run_advkit(), run_plain()  # warm-up
    advkit_times, plain_times = [], []
    for _ in range(args.repeats):
        t, result = time_it(run_advkit)
        advkit_times.append(t)
        t, plain_x = time_it(run_plain)
        plain_times.append(t)
    t_advkit, t_plain = statistics.median(advkit_times), statistics.median(plain_times)
    with torch.no_grad():
        plain_fooled = float((model.module(plain_x).argmax(1) != y).float().mean())
    print(
        f"PGD, model {args.model}, batch {args.n}, {args.steps} steps, eps {args.eps}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    print(
        f"  plain PyTorch loop  {t_plain:8.3f} s   forward {args.steps * args.n:6d}  backward {args.steps * args.n:6d}  "
        f"success {plain_fooled:.3f}"
    )
    print(
        f"  advkit pgd          {t_advkit:8.3f} s   forward {result.forward_passes:6d}  backward {result.backward_passes:6d}  "
        f"success {result.raw_success_rate:.3f}"
    )  # over all digits, as the plain loop counts
    print(f"  ratio advkit / plain = {t_advkit / t_plain:.3f}  (target <= 1.05)")

    bnn = load_model("bnn", device=args.device)
    # the first 100 correctly classified test digits, class-interleaved (10 per class), as `advkit attack`
    idx, xb, yb = load_dataset("mnist").select(bnn, 100, device=args.device)
    budget_steps = 100
    res = run_attack(bnn, "untargeted", xb, yb, eps=0.1, steps=budget_steps)
    budget = budget_steps * len(idx)
    print(f"untargeted (S2 settings), bnn, eps 0.1, {len(idx)} digits, at most {budget_steps} steps each:")
    print(
        f"  backward passes used {res.backward_passes} of a budget of {budget}: saved {budget - res.backward_passes} "
        f"({100 * (budget - res.backward_passes) / budget:.1f}%) by early stopping; success {res.success_rate:.2f}"
    )


if __name__ == "__main__":
    main()
