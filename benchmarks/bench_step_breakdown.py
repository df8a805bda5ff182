"""Where an attack's time goes at a fixed window, against a plain loop in chunks of the same size.

Run:  python benchmarks/bench_step_breakdown.py [--model cnn] [--n 1000] [--attacks pgd,apgd,untargeted]
          [--batch-size 64[,96,...]] [--steps 20] [--eps 0.2] [--repeats 3] [--device cpu]

Each round runs, in one process, for each size of ``--batch-size``, the plain PyTorch PGD loop of ``bench_scaling.py``
in chunks of that size (in the layout advkit's runs use, :mod:`advkit.layout`, so that what differs is advkit's own
cost) and then each attack through ``run_attack`` with that batch size (the engine's window), timing
four parts of the attack:

- *full steps*: the engine's forward and backward passes in steps on a full window;
- *drain*: the same in steps on fewer rows (the window empties at the end of the run, and fewer rows cost more each);
- *no-gradient passes*: the model's calls without gradients (the last point of each sample that did not stop on
  success, the runner's re-check of every returned point, its output probe);
- *bookkeeping*: everything else (the engine's per-sample state, the attack's update, the runner's checks).

``--auto-first 32,64`` also runs each attack with ``--batch-size auto`` (the cache cleared before every run) climbing
from each of those first sizes, in the same rounds, and prints the median time per sample step against the best
plain chunk, the windows ``auto`` kept, and how many rounds each first size was the faster one.

It prints, per size, the median over ``--repeats`` rounds of the time per sample step (seconds over backward passes)
and of each part's share, the full steps' time per row against the plain loop's time per sample step, and how many
distinct row counts the attack's steps had (the kernels for each new row count are set up once per process, at a
cost; the plain loop has at most two: the chunk and the last chunk).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_pgd_overhead import plain_pgd
from bench_scaling import digits, sync
from machine import add_threads_argument, machine_line  # benchmarks/machine.py: threads and load next to every figure

from advkit import batching, engine
from advkit.layout import layout_for_run
from advkit.models import load_model
from advkit.runner import run_attack

#: The engine's step (one forward and one backward pass over the window's rows), timed here. Read at import, so a
#: renamed step fails this script's ``--help``, which the test suite runs.
ENGINE_STEP = engine._forward_backward
PARTS = ("full steps", "drain", "no-gradient passes", "bookkeeping")


class PartTimer:
    """Times the engine's steps (by rows) and the model's calls without gradients while installed."""

    def __init__(self, model, window: int, device: str) -> None:
        self.model, self.window, self.device = model, window, device
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.full_rows = 0
        self.row_counts: set[int] = set()
        self._started: float | None = None

    def step(self, *args, **kwargs):
        rows = args[2].shape[0]
        self.row_counts.add(rows)
        sync(self.device)
        start = time.perf_counter()
        out = ENGINE_STEP(*args, **kwargs)
        sync(self.device)
        part = "full steps" if rows >= self.window else "drain"
        self.seconds[part] += time.perf_counter() - start
        self.full_rows += rows if part == "full steps" else 0
        return out

    def _before(self, module, inputs) -> None:
        if not torch.is_grad_enabled():
            sync(self.device)
            self._started = time.perf_counter()

    def _after(self, module, inputs, output) -> None:
        if self._started is not None:
            sync(self.device)
            self.seconds["no-gradient passes"] += time.perf_counter() - self._started
            self._started = None

    def run(self, attack: str, x, y, eps: float, steps: int) -> tuple[float, int, int]:
        """Seconds, backward passes and window of one run, its parts in :attr:`seconds`."""
        for part in PARTS:
            self.seconds[part] = 0.0
        self.full_rows = 0
        self.row_counts = set()
        hooks = [
            self.model.module.register_forward_pre_hook(self._before),
            self.model.module.register_forward_hook(self._after),
        ]
        engine._forward_backward = self.step
        params = {"steps": steps} | ({"random_start": False} if attack in ("pgd", "apgd") else {})
        try:
            start = time.perf_counter()
            result = run_attack(self.model, attack, x, y, eps=eps, batch_size=self.window, **params)
            sync(self.device)
            seconds = time.perf_counter() - start
        finally:
            engine._forward_backward = ENGINE_STEP
            for hook in hooks:
                hook.remove()
        self.seconds["bookkeeping"] = seconds - sum(self.seconds[p] for p in PARTS[:3])
        return seconds, result.backward_passes, result.extra["batch_size"]["chosen"]


def auto_run(model, attack: str, x, y, eps: float, steps: int, first: int, device: str) -> tuple[float, int]:
    """Milliseconds per sample step and the window kept by one ``auto`` run climbing from ``first`` rows."""
    kind = "cpu" if model.device.type == "cpu" else "other"
    default = batching.FIRST_SIZE[kind]
    batching.clear_cache()  # every run measures its own window, as a fresh `advkit` command does
    batching.FIRST_SIZE[kind] = first
    params = {"steps": steps} | ({"random_start": False} if attack in ("pgd", "apgd") else {})
    try:
        start = time.perf_counter()
        result = run_attack(model, attack, x, y, eps=eps, batch_size="auto", **params)
        sync(device)
        seconds = time.perf_counter() - start
    finally:
        batching.FIRST_SIZE[kind] = default
        batching.clear_cache()
    return 1000 * seconds / result.backward_passes, result.extra["batch_size"]["chosen"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--n", type=int, default=1000, help="digits (training digits first, then test digits)")
    parser.add_argument("--attacks", default="pgd,apgd,untargeted")
    parser.add_argument(
        "--batch-size", default="64", help="comma-separated sizes: the engine's window and the plain loop's chunk"
    )
    parser.add_argument(
        "--auto-first", default="", help="comma-separated first sizes for auto runs beside the fixed ones (e.g. 32,64)"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the median")
    parser.add_argument("--device", default="cpu")
    add_threads_argument(parser)
    args = parser.parse_args()
    try:
        sizes = [int(v) for v in args.batch_size.split(",")]
        firsts = [int(v) for v in args.auto_first.split(",")] if args.auto_first else []
    except ValueError:
        parser.error(f"--batch-size and --auto-first take comma-separated numbers, got {args.batch_size!r}")
    if min(sizes + firsts) < 1 or args.repeats < 1:
        parser.error("--batch-size, --auto-first and --repeats must be at least 1")
    print(machine_line(args.threads))
    model = load_model(args.model, device=args.device)
    x, y = (t.to(args.device) for t in digits(args.n))
    low, high = model.bounds
    attacks = args.attacks.split(",")
    configs = [(size, attack) for size in sizes for attack in attacks]
    timers = {config: PartTimer(model, config[0], args.device) for config in configs}
    plain_ms: dict[int, list[float]] = {size: [] for size in sizes}
    ms: dict[tuple, list[float]] = {c: [] for c in configs}
    shares: dict[tuple, dict[str, list[float]]] = {c: {p: [] for p in PARTS} for c in configs}
    full_row_ms: dict[tuple, list[float]] = {c: [] for c in configs}
    row_counts: dict[tuple, list[int]] = {c: [] for c in configs}
    auto_ms: dict[tuple, list[float]] = {(a, f): [] for a in attacks for f in firsts}
    auto_kept: dict[tuple, list[int]] = {(a, f): [] for a in attacks for f in firsts}
    for round_ in range(args.repeats):
        for size in sizes:
            with layout_for_run(model, x):  # the layout advkit's runs use (channels-last for a conv net on a CPU)
                start = time.perf_counter()
                for i in range(0, len(y), size):
                    plain_pgd(model.module, x[i : i + size], y[i : i + size], args.eps, 2.5 * args.eps / args.steps,
                              args.steps, low, high)  # fmt: skip
                sync(args.device)
                plain_ms[size].append(1000 * (time.perf_counter() - start) / (len(y) * args.steps))
            for attack in attacks:
                timer = timers[size, attack]
                seconds, backward, _ = timer.run(attack, x, y, args.eps, args.steps)
                ms[size, attack].append(1000 * seconds / backward)
                for part in PARTS:
                    shares[size, attack][part].append(timer.seconds[part] / seconds)
                full_row_ms[size, attack].append(1000 * timer.seconds["full steps"] / max(timer.full_rows, 1))
                row_counts[size, attack].append(len(timer.row_counts))
        for attack in attacks:
            for first in firsts if round_ % 2 == 0 else firsts[::-1]:  # alternate which climb runs first
                ms_step, kept = auto_run(model, attack, x, y, args.eps, args.steps, first, args.device)
                auto_ms[attack, first].append(ms_step)
                auto_kept[attack, first].append(kept)
    print(
        f"model {args.model}, {args.n} digits, eps {args.eps}, {args.steps} steps, device {args.device}, median of "
        f"{args.repeats} rounds; x plain: against the plain loop in chunks of the same size"
    )
    print(
        f"| size | plain loop, ms per sample step | attack | ms per sample step | x plain | {' | '.join(PARTS)} "
        "| full steps per row, x plain | distinct step row counts |"
    )
    print("|---" * (len(PARTS) + 7) + "|")
    for size, attack in configs:
        plain = statistics.median(plain_ms[size])
        total = statistics.median(ms[size, attack])
        cells = [f"{100 * statistics.median(shares[size, attack][p]):.1f}%" for p in PARTS]
        per_row = statistics.median(full_row_ms[size, attack])
        print(
            f"| {size} | {plain:.4f} | {attack} | {total:.4f} | {total / plain:.2f}x | {' | '.join(cells)} | "
            f"{per_row:.4f} ms, {per_row / plain:.2f}x | {statistics.median(row_counts[size, attack]):g} |"
        )
    if firsts:
        best = min(sizes, key=lambda size: statistics.median(plain_ms[size]))
        reference = statistics.median(plain_ms[best])
        print(f"\nauto, against the best plain chunk ({best}: {reference:.4f} ms per sample step)")
        print("| attack | first size | ms per sample step | x best plain | rounds faster | windows kept |")
        print("|---|---|---|---|---|---|")
        for attack in attacks:
            for first in firsts:
                mine = auto_ms[attack, first]
                faster = sum(
                    all(v < auto_ms[attack, other][i] for other in firsts if other != first) for i, v in enumerate(mine)
                )
                total = statistics.median(mine)
                print(
                    f"| {attack} | {first} | {total:.4f} | {total / reference:.2f}x | {faster} of {len(mine)} | "
                    f"{', '.join(map(str, auto_kept[attack, first]))} |"
                )


if __name__ == "__main__":
    main()
